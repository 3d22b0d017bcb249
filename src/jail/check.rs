//! `webtask jail-check`: a jailed process that tries one thing guest code
//! cannot express (fork, exec, a TCP socket, ptrace, a file, many threads)
//! and reports what happened. Tests use it to prove each layer holds;
//! `webtask doctor` uses it to show which layers this host enforces. It
//! applies the jail through the same [`super::apply`] a worker uses.

use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::{JailConfig, JailSpec, LayerReport};

/// What a check reports, as one JSON line on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub layers: Vec<LayerReport>,
    pub action: String,
    /// Whether the action succeeded (for an attack: whether the jail failed).
    pub succeeded: bool,
    pub detail: String,
}

/// Runs in the jailed child: applies `spec`, tries `action`, prints the outcome.
pub fn main(spec: &JailSpec, action: &str) -> anyhow::Result<()> {
    let layers = super::apply(spec).map_err(anyhow::Error::msg)?;
    let (succeeded, detail) = attempt(action);
    let outcome = Outcome { layers, action: action.into(), succeeded, detail };
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

fn errno(rc: i64) -> (bool, String) {
    if rc < 0 {
        (false, std::io::Error::last_os_error().to_string())
    } else {
        (true, format!("returned {rc}"))
    }
}

fn attempt(action: &str) -> (bool, String) {
    // SAFETY: each call is a plain syscall with valid arguments; a child of
    // fork exits at once.
    unsafe {
        match action {
            "nothing" => (true, "no action".into()),
            "pid" => (true, format!("pid={}", libc::getpid())),
            "fork" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                errno(pid as i64)
            }
            "clone3" => errno(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize)),
            "execve" => {
                let path = c"/bin/sh";
                let argv = [path.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                errno(libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) as i64)
            }
            "socket-inet" => errno(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64),
            "socket-inet6" => errno(libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) as i64),
            "socket-netlink" => errno(libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) as i64),
            "socket-unix" => errno(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64),
            "ptrace" => errno(libc::ptrace(libc::PTRACE_ATTACH, libc::getppid(), 0, 0)),
            "kill-parent" => errno(libc::kill(libc::getppid(), 0) as i64),
            "setuid-root" => errno(libc::setuid(0) as i64),
            "ioctl-tiocsti" => {
                let c: libc::c_char = b'x' as libc::c_char;
                errno(libc::ioctl(2, libc::TIOCSTI, &c) as i64)
            }
            "threads" => threads(),
            _ => match action.split_once(':') {
                Some(("read", path)) => file(path, libc::O_RDONLY),
                Some(("write", path)) => file(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
                _ => (false, format!("unknown action {action}")),
            },
        }
    }
}

fn file(path: &str, flags: i32) -> (bool, String) {
    let Ok(c) = std::ffi::CString::new(path) else { return (false, "bad path".into()) };
    // SAFETY: valid NUL-terminated path.
    errno(unsafe { libc::open(c.as_ptr(), flags, 0o600) } as i64)
}

/// Starts threads until refused (the pids cgroup and RLIMIT_NPROC cap them).
fn threads() -> (bool, String) {
    let mut handles = Vec::new();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    for _ in 0..1000 {
        let rx = stop_rx.clone();
        match std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let _ = rx.lock().map(|r| r.recv());
        }) {
            Ok(h) => handles.push(h),
            Err(e) => {
                drop(stop_tx);
                let n = handles.len();
                for h in handles {
                    let _ = h.join();
                }
                return (false, format!("{n} threads, then: {e}"));
            }
        }
    }
    (true, "1000 threads".into())
}

/// Node side: prepares a jail as for a worker and runs `exe jail-check`
/// inside it with `action`.
pub fn run(exe: &std::path::Path, config: &JailConfig, action: &str) -> anyhow::Result<Outcome> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("check{}-{seq}", std::process::id());
    // An id of its own, claimed host-wide like a worker's (from the top of
    // the range, where workers come last): probes running side by side
    // must not share RLIMIT_NPROC, which counts per uid.
    let (offset, _claim) = super::uid::claim_first(config.uid_base, (0..config.uid_count).rev())?
        .ok_or_else(|| anyhow::anyhow!("every uid of the range is taken"))?;
    let (spec, cgroup) = super::prepare(config, &name, offset).map_err(anyhow::Error::msg)?;
    let out = std::process::Command::new(exe)
        .args(["jail-check", "--spec", &serde_json::to_string(&spec)?, "--action", action])
        .stdin(Stdio::null())
        .output()?;
    drop(cgroup);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!("jail-check {action}: {e}; status {}, stderr: {}", out.status, String::from_utf8_lossy(&out.stderr))
    })
}
