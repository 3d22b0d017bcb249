//! `webtask zygote`: the process workers are forked from. The node starts
//! one per pool (users never do) and asks it for a worker whenever it needs
//! one; the zygote forks, and the child becomes that worker (`worker::main`)
//! without an exec.
//!
//! Why: a worker that starts with an exec pays for it every time — the
//! kernel mapping a large binary, the dynamic loader, the allocator's and
//! the Rust runtime's start-up, compiling the seccomp filter — about 3 ms
//! of a pool-empty request. Forked from a process that already did all of
//! that once, it pays for copying a small process's page tables instead.
//!
//! What the zygote holds: nothing of any tenant. It never runs V8: V8
//! reserves its sandbox and lays out its heap when it starts, so a V8
//! started here would give every worker the same layout, and it maps its
//! memory do-not-fork anyway. Each worker starts V8 itself, after the fork.
//! The zygote never reads a request and stays one thread (checked at
//! start), so the fork is safe. It is not jailed — each child jails
//! itself, exactly as an exec'd worker does, before it reads anything from
//! the node — and it dies with the node. Its children share its address-space layout (libc, stack and heap
//! bases), the usual cost of a zygote; V8's heap, where guest objects
//! live, is laid out afresh in each worker.
//!
//! The exchange on the zygote's socket (SOCK_SEQPACKET, one request at a
//! time): the node sends the worker's [`Spec`] as JSON with two descriptors
//! attached, the worker's end of its channel to the node and the write end
//! of its stderr pipe, numbered ([`Request`]); the zygote answers with
//! [`Forked`] and the same number as JSON ([`Answer`]).
//! The child is forked with `CLONE_PARENT`, so it is the node's child, not
//! the zygote's: the node reaps it, signals it and sees its exit status as
//! if it had spawned it itself.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::Context as _;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};

use super::Spec;

/// Largest request (a spec) the zygote reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request: the spec of the worker to fork, and a number the answer
/// repeats, so the node never takes an answer for another request's.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Request<S> {
    pub seq: u64,
    pub spec: S,
}

/// The zygote's answer to request `seq`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    pub seq: u64,
    pub forked: Forked,
}

/// What the zygote did for one request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Forked {
    Pid(u32),
    Failed(String),
}

/// The zygote's main: the node's socket on stdin, the image (`super::image`) on stdout.
pub fn main(node_pid: i32) -> anyhow::Result<()> {
    super::bind_to_node(node_pid)?;
    let (control, image) = super::take_channels()?;
    // Computed once here, inherited by every worker forked after.
    crate::jail::precompute();
    crate::engine::node::modules::preload();
    ensure_single_threaded()?;
    loop {
        let Some((request, fds)) = receive(&control)? else { return Ok(()) };
        // A request without a number gets an answer no request has.
        let seq = serde_json::from_slice::<Request<serde::de::IgnoredAny>>(&request).map_or(u64::MAX, |r| r.seq);
        let forked = match <[OwnedFd; 2]>::try_from(fds) {
            Ok(fds) => fork_worker(node_pid, &request, &image, fds),
            Err(fds) => Forked::Failed(format!("expected 2 descriptors, got {}", fds.len())),
        };
        let answer = serde_json::to_vec(&Answer { seq, forked }).context("encoding answer")?;
        sendmsg::<()>(control.as_raw_fd(), &[IoSlice::new(&answer)], &[], MsgFlags::empty(), None)
            .context("answering the node")?;
    }
}

/// Forking is sound only while this is the process's one thread.
fn ensure_single_threaded() -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").context("/proc/self/task")?.count();
    anyhow::ensure!(threads == 1, "the zygote must have one thread, it has {threads}");
    Ok(())
}

/// One request: payload and attached descriptors; None when the node is gone.
fn receive(control: &OwnedFd) -> anyhow::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(control.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.context("reading from the node")?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: descriptors the kernel just installed for this process.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let len = msg.bytes;
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

fn fork_worker(node_pid: i32, request: &[u8], image: &OwnedFd, fds: [OwnedFd; 2]) -> Forked {
    let spec: Spec = match serde_json::from_slice::<Request<Spec>>(request) {
        Ok(request) => request.spec,
        Err(e) => return Forked::Failed(format!("worker spec: {e}")),
    };
    // SAFETY: a raw clone with no new stack is a fork; this process is
    // single-threaded (checked at start), so the child may run anything.
    // CLONE_PARENT makes the node its parent (and the receiver of its
    // SIGCHLD).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
    match pid {
        -1 => Forked::Failed(format!("clone: {}", std::io::Error::last_os_error())),
        0 => {
            let [socket, stderr] = fds;
            child(node_pid, spec, socket, image, stderr)
        }
        pid => Forked::Pid(pid as u32),
    }
}

/// The forked child: lays out its descriptors as an exec'd worker finds
/// them and becomes that worker. Never returns into the zygote's loop.
fn child(node_pid: i32, spec: Spec, socket: OwnedFd, image: &OwnedFd, stderr: OwnedFd) -> ! {
    for (target, fd) in [socket.as_raw_fd(), image.as_raw_fd(), stderr.as_raw_fd()].into_iter().enumerate() {
        // SAFETY: dup2 onto the standard descriptors of this new process;
        // every source is >= 3 (the zygote keeps 0-2 open), so none is
        // overwritten before it is copied.
        if fd < 3 || unsafe { libc::dup2(fd, target as RawFd) } < 0 {
            std::process::exit(71);
        }
    }
    let code = match super::main(node_pid, spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    std::process::exit(code)
}
