//! `webtask code-cache`: builds the shared code cache
//! (`engine::code_cache`) for a node's workers, in a process that starts V8
//! exactly as they do. V8 takes a cache only from an isolate with the same
//! flags, and a worker's (`--single-threaded`, its stack size) are not the
//! node's. The node starts it once per configuration and reads the cache
//! from its stdout; users never do.
//!
//! It runs this binary's own code only (the Node shim and the module set),
//! never a byte of any tenant's, so what it hands back is as trusted as the
//! binary, which is what lets every container's isolate consume it.
//!
//! Why it is not jailed as a worker is: the module set's JavaScript runs
//! here with the host surface a guest has, minus the network (an offline
//! isolate: no files, no processes, no sockets); reaching the host from it
//! takes a V8 escape in code pinned by our lockfile and embedded in this
//! binary, as trusted as the binary's own Rust, which the node runs
//! unjailed anyway.

use std::io::Write;

use anyhow::Context as _;

use crate::engine::{self, Limits};

/// The builder's main: the image (snapshot, no cache yet) on stdin, the
/// pipe for the cache on stdout, the node's log pipe on stderr.
pub fn main(node_pid: i32, limits: Limits) -> anyhow::Result<()> {
    super::bind_to_node(node_pid)?;
    let (image, out) = super::take_channels()?;
    let image = super::image::map(image)?;
    engine::install_snapshot(image.snapshot, &limits);
    let cache = engine::code_cache::build(&limits);
    anyhow::ensure!(!cache.is_empty(), "no code cache was built");
    std::fs::File::from(out).write_all(&cache).context("writing the code cache")?;
    Ok(())
}
