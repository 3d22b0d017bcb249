//! PID namespace: the worker runs as pid 1 of a namespace of its own, so it
//! can name, signal or trace no process outside it, and it sees none.
//!
//! `unshare(CLONE_NEWPID)` (done with the other namespaces, while the
//! process is still privileged) moves only the caller's *next child* into
//! the new namespace. So this layer forks once: the child goes on to be
//! the worker; the parent, the process the zygote forked and the node knows by pid,
//! becomes its supervisor. The supervisor holds no descriptor of the
//! node's, runs as the worker's transient uid without privileges inside
//! the worker's empty root and network namespace, and only waits, then
//! exits the way the worker did; killing it
//! kills the worker (parent-death signal), so the node's kill, reap and
//! crash report work unchanged. Nothing here knows of V8.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Forks into the PID namespace made by [`super::namespaces::enter`].
/// Returns in the child (the worker, pid 1); the parent never returns.
/// The caller must still be single-threaded.
pub fn enter() -> Result<String, String> {
    // The supervisor holds the write end for its whole life: the child
    // sees a hang-up if it died before the parent-death signal was armed.
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: single-threaded here (see `jail::apply`), so the child may
    // run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            supervise(child, alive_w)
        }
        ForkResult::Child => {
            drop(alive_w);
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
            let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&alive_r), PollFlags::POLLIN)];
            let hung_up = poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0);
            if hung_up {
                return Err("the supervisor is gone".into());
            }
            let pid = std::process::id();
            if pid != 1 {
                return Err(format!("pid {pid}, not 1: no new PID namespace"));
            }
            Ok("pid 1 of its own namespace".into())
        }
    }
}

/// The parent's life after the fork: wait for the worker, exit as it did.
fn supervise(worker: Pid, alive: OwnedFd) -> ! {
    let keep = alive.as_raw_fd() as u32;
    // SAFETY: plain close_range; the socket to the node and the snapshot
    // belong to the worker alone, so its death is the node's EOF.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
    // No Landlock here: its signal scoping would stop the parent-death
    // signal this process sends the worker when the node kills it.
    loop {
        match waitpid(worker, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => die_like(sig),
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            Err(_) => std::process::exit(70),
        }
    }
}

/// Ends this process by the signal that ended the worker, so the node
/// reports "killed by signal N" as it would without the namespace.
fn die_like(sig: Signal) -> ! {
    // SAFETY: restoring the default action of a signal.
    unsafe {
        let _ = signal::signal(sig, SigHandler::SigDfl);
    }
    let _ = signal::sigprocmask(signal::SigmaskHow::SIG_UNBLOCK, Some(&signal::SigSet::from(sig)), None);
    let _ = signal::raise(sig);
    std::process::exit(128 + sig as i32)
}
