//! Links the `webtask` binary as a fixed-address (non-PIE) executable.
//!
//! Every worker is a fresh exec of this binary, and V8 makes it large: as a
//! PIE, the dynamic loader applies ~65,000 relative relocations at each
//! start (about 2 ms here) and every page it touches becomes a private
//! copy in every worker. Non-PIE, those addresses are fixed at link time,
//! and the pages stay shared with the page cache. Address randomisation
//! of the stack, heap, mmap regions and V8's own code space is unaffected.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
