//! The node's side of the zygote (`worker::zygote`): starts it, asks it
//! for workers, and starts it again if it died. What it hands back is a
//! [`Child`]: a worker process that is the node's own child, known by a
//! pidfd, with the node's ends of its channel and its stderr.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::engine::Error;
use crate::worker::zygote::{Answer, Forked, Request, MAX_REQUEST};
use crate::worker::Spec;

/// The zygote process and the socket the node asks it on.
struct Running {
    process: tokio::process::Child,
    control: tokio::net::UnixStream,
}

pub struct Zygote {
    state: Arc<State>,
}

struct State {
    exe: std::path::PathBuf,
    image: OwnedFd,
    /// One request at a time; None until started or after it died.
    running: tokio::sync::Mutex<Option<Running>>,
    /// The number of the next request.
    seq: AtomicU64,
}

/// A worker forked for the node.
pub struct Spawned {
    pub child: Child,
    /// The node's end of the worker's channel.
    pub channel: std::os::unix::net::UnixStream,
    /// The read end of the worker's stderr.
    pub stderr: tokio::net::unix::pipe::Receiver,
}

impl Zygote {
    /// `exe` is the `webtask` binary to run the zygote from; `image` the
    /// memfd every worker maps (`worker::image`).
    pub fn new(exe: std::path::PathBuf, image: OwnedFd) -> Zygote {
        let state = State { exe, image, running: tokio::sync::Mutex::new(None), seq: AtomicU64::new(0) };
        Zygote { state: Arc::new(state) }
    }

    /// A new worker process for `spec`, started (not yet ready).
    pub async fn fork(&self, spec: &Spec) -> Result<Spawned, Error> {
        let seq = self.state.seq.fetch_add(1, Ordering::Relaxed);
        let request = serde_json::to_vec(&Request { seq, spec }).map_err(Error::internal)?;
        if request.len() > MAX_REQUEST {
            return Err(Error::internal("worker spec too large for the zygote"));
        }
        // In a task of its own: a caller that stops waiting (its client
        // left) cannot cut the exchange between request and answer, which
        // would leave the answer for the next request to read. What a
        // caller no longer waits for is dropped (the child killed and reaped).
        let state = self.state.clone();
        let exchange = tokio::spawn(async move { state.fork(seq, &request).await });
        exchange.await.map_err(|e| Error::internal(format!("forking a worker: {e}")))?
    }
}

/// How long the zygote may take to fork a worker (about a millisecond).
const FORK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl State {
    async fn fork(&self, seq: u64, request: &[u8]) -> Result<Spawned, Error> {
        let mut running = self.running.lock().await;
        // A zygote that died (killed, or the host reaped it) is replaced once.
        for attempt in 0..2 {
            if running.is_none() {
                *running = Some(self.start()?);
            }
            let zygote = running.as_mut().expect("started above");
            // A zygote that does not answer (stopped, stuck) is replaced as
            // a dead one is: a spawn must not wait on it for ever, holding
            // its slot and every spawn queued behind it.
            let answer = tokio::time::timeout(FORK_TIMEOUT, ask(&zygote.control, seq, request))
                .await
                .unwrap_or_else(|_| Err(Asked::Gone(std::io::Error::other(format!("no answer in {FORK_TIMEOUT:?}")))));
            match answer {
                Ok(forked) => return Ok(forked),
                Err(Asked::Refused(why)) => return Err(Error::internal(format!("forking a worker: {why}"))),
                Err(Asked::Gone(e)) => {
                    tracing::warn!(error = %e, attempt, "worker zygote gone; starting a new one");
                    if let Some(mut dead) = running.take() {
                        let _ = dead.process.start_kill();
                        let _ = dead.process.wait().await;
                    }
                }
            }
        }
        Err(Error::internal("the worker zygote keeps dying"))
    }

    fn start(&self) -> Result<Running, Error> {
        let (node_end, zygote_end) = seqpacket_pair()?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(["zygote", "--node-pid", &std::process::id().to_string()])
            // Nothing of the node's environment but the log filter.
            .env_clear()
            .envs(std::env::var_os("WEBTASK_LOG").map(|v| ("WEBTASK_LOG", v)))
            // The socket and the image travel as stdin and stdout, the
            // only descriptors a spawn without a pre-exec hook can place;
            // every other descriptor of the node stays close-on-exec.
            .stdin(Stdio::from(zygote_end))
            .stdout(Stdio::from(self.image.try_clone().map_err(Error::internal)?))
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut process = cmd.spawn().map_err(|e| Error::internal(format!("starting the worker zygote: {e}")))?;
        if let Some(stderr) = process.stderr.take() {
            tokio::spawn(super::process::relay_stderr(stderr, process.id().unwrap_or(0)));
        }
        let control = std::os::unix::net::UnixStream::from(node_end);
        control.set_nonblocking(true).map_err(Error::internal)?;
        let control = tokio::net::UnixStream::from_std(control).map_err(Error::internal)?;
        Ok(Running { process, control })
    }
}

enum Asked {
    /// The zygote answered, but could not fork.
    Refused(String),
    /// The zygote is gone or broke the exchange.
    Gone(std::io::Error),
}

async fn ask(control: &tokio::net::UnixStream, seq: u64, request: &[u8]) -> Result<Spawned, Asked> {
    let (node_end, worker_end) = std::os::unix::net::UnixStream::pair().map_err(Asked::Gone)?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Asked::Gone(e.into()))?;
    let fds = [worker_end.as_raw_fd(), stderr_w.as_raw_fd()];
    control
        .async_io(Interest::WRITABLE, || {
            let rights = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(control.as_raw_fd(), &[IoSlice::new(request)], &rights, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        })
        .await
        .map_err(Asked::Gone)?;
    // The zygote holds its own copies now; the node keeps only its ends.
    drop((worker_end, stderr_w));
    let mut buf = [0u8; 4096];
    let n = control.async_io(Interest::READABLE, || nix::unistd::read(control, &mut buf).map_err(std::io::Error::from)).await;
    let n = n.map_err(Asked::Gone)?;
    if n == 0 {
        return Err(Asked::Gone(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let answer: Answer = serde_json::from_slice(&buf[..n]).map_err(|e| Asked::Gone(std::io::Error::other(e)))?;
    // An answer to another request is never taken: its pid is not this
    // worker's. The exchange is out of step; the zygote is replaced.
    if answer.seq != seq {
        return Err(Asked::Gone(std::io::Error::other(format!("answer to request {} for request {seq}", answer.seq))));
    }
    let pid = match answer.forked {
        Forked::Pid(pid) => pid,
        Forked::Failed(why) => return Err(Asked::Refused(why)),
    };
    let child = Child::adopt(pid).map_err(Asked::Gone)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_r).map_err(Asked::Gone)?;
    Ok(Spawned { child, channel: node_end, stderr })
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(Error::internal)
}

/// A worker process that is the node's child, held by a pidfd: signalled
/// and reaped through it, so its pid is never mistaken for another's.
/// Dropped unreaped, it is killed and reaped.
pub struct Child {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Takes charge of the node's child `pid`. It cannot have been reaped
    /// yet (only this type reaps it), so the pid still names it.
    fn adopt(pid: u32) -> std::io::Result<Child> {
        // SAFETY: plain syscall; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, libc::PIDFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned to us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the descriptor, which stays open (and
        // registered) for as long as the AsyncFd lives.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(Child { pid, pidfd, status: None })
    }

    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends SIGKILL (a no-op once it has exited).
    pub fn start_kill(&self) {
        if self.status.is_none() {
            // SAFETY: plain syscall on a pidfd we own.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), libc::SIGKILL, 0, 0) };
        }
    }

    /// Waits for the process to end and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            // A pidfd turns readable when its process has exited.
            self.pidfd.readable().await?.clear_ready();
        }
    }

    fn try_reap(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waitpid on our own unreaped child.
        match unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, libc::WNOHANG) } {
            0 => Ok(None),
            -1 => Err(std::io::Error::last_os_error()),
            _ => {
                let status = std::os::unix::process::ExitStatusExt::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.start_kill();
            let mut raw = 0;
            // SAFETY: reaps our own child after SIGKILL; it exits promptly.
            unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw, 0) };
        }
    }
}
