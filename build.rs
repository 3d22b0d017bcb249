//! Embeds the fixed module set's file table (`modules/dist/`, written by
//! `make modules`; empty when it is absent, so a plain `cargo build` works,
//! without the set), stamps the code the engine caches, and links the `webtask` binary as a fixed-address (non-PIE) executable.
//!
//! The node, its worker zygote and every jail probe exec this binary, and
//! V8 makes it large: as a PIE, the dynamic loader applies ~65,000
//! relative relocations at each start (about 2 ms here) and every page it
//! touches becomes a private copy in each process (workers forked from the
//! zygote would inherit the zygote's copies). Non-PIE, those addresses are fixed at link time,
//! and the pages stay shared with the page cache. Address randomisation
//! of the stack, heap, mmap regions and V8's own code space is unaffected.

fn main() {
    embed_modules();
    stamp_shared_code();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

/// A digest of the shared code the engine keeps V8 code caches for (the
/// module set's files, the Node shim's bundle, streams.js): a cache built
/// for other sources is refused, since V8 itself checks only their length.
fn stamp_shared_code() {
    use sha2::Digest;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut digest = sha2::Sha256::new();
    // modules-files.bin is rewritten by every run of this script, so it is
    // not watched itself (that would rebuild the crate every time): its
    // source, modules/dist/files.bin, is.
    let sources = ["js_runtime/node/dist/builtins.js", "js_runtime/node/streams.js"];
    for path in sources {
        println!("cargo:rerun-if-changed={path}");
    }
    for path in [out.join("modules-files.bin")].into_iter().chain(sources.map(Into::into)) {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
    }
    let stamp = u64::from_le_bytes(digest.finalize()[..8].try_into().unwrap());
    println!("cargo:rustc-env=WEBTASK_SHARED_CODE_STAMP={stamp}");
}

fn embed_modules() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for (src, dst, empty) in [
        ("modules/dist/index.json", "modules-index.json", &br#"{"set":{},"files":[],"packages":{}}"#[..]),
        ("modules/dist/files.bin", "modules-files.bin", &[0u8, 0, 0, 0][..]),
    ] {
        println!("cargo:rerun-if-changed={src}");
        let bytes = std::fs::read(src).unwrap_or_else(|_| {
            println!("cargo:warning={src} is missing: building without the module set (run `make modules`)");
            empty.to_vec()
        });
        std::fs::write(out.join(dst), bytes).unwrap();
    }
}
