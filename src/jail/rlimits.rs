//! Resource limits: no core dumps, no files written, few descriptors, and
//! a thread cap per transient uid. Not RLIMIT_AS: V8 reserves far more
//! address space than it ever touches.

use nix::sys::resource::{setrlimit, Resource};

/// Descriptors a worker needs: its socket (and the duplicate it waits for
/// room on, `worker::channel`), the snapshot, epoll, eventfds.
const FILES: u64 = 64;

pub fn apply(threads_max: u64) -> Result<String, String> {
    let limits = [
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_FSIZE, 0),
        (Resource::RLIMIT_NOFILE, FILES),
        (Resource::RLIMIT_NPROC, threads_max),
        (Resource::RLIMIT_MEMLOCK, 0),
    ];
    for (resource, value) in limits {
        setrlimit(resource, value, value).map_err(|e| format!("{resource:?}: {e}"))?;
    }
    Ok(format!("core=0 fsize=0 nofile={FILES} nproc={threads_max} memlock=0"))
}
