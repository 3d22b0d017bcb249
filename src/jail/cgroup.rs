//! A cgroup per worker with a memory limit, a task limit and a CPU quota,
//! on cgroup v2 (one unified hierarchy) or v1 (one hierarchy per
//! controller under /sys/fs/cgroup/<controller>). The node creates and
//! removes the directories; the worker joins them first thing, so every
//! page it touches afterwards is charged to its own cgroup.

use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup layout this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub fn detect() -> Option<Version> {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Some(Version::V2)
    } else if Path::new(ROOT).join("memory/memory.limit_in_bytes").exists() {
        Some(Version::V1)
    } else {
        None
    }
}

/// Limits for one worker cgroup.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    pub cpu_percent: u64,
}

/// One worker's cgroup directories (one per v1 controller, one on v2);
/// removed on drop once the worker has exited.
#[derive(Debug)]
pub struct WorkerCgroup {
    dirs: Vec<PathBuf>,
    version: Version,
}

impl WorkerCgroup {
    /// Creates `<parent>/<name>` with `limits` under every controller.
    pub fn create(parent: &str, name: &str, limits: &Limits) -> std::io::Result<WorkerCgroup> {
        let version = detect().ok_or_else(|| std::io::Error::other("no cgroup v1 or v2 hierarchy at /sys/fs/cgroup"))?;
        let cg = match version {
            Version::V2 => {
                let parent = Path::new(ROOT).join(parent);
                fs::create_dir_all(&parent)?;
                // Controllers must be enabled for the parent's children.
                let _ = fs::write(Path::new(ROOT).join("cgroup.subtree_control"), "+memory +pids +cpu");
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(name);
                fs::create_dir_all(&dir)?;
                let cg = WorkerCgroup { dirs: vec![dir.clone()], version };
                fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                fs::write(dir.join("memory.swap.max"), "0").or_else(ignore_missing)?;
                fs::write(dir.join("pids.max"), limits.pids_max.to_string())?;
                fs::write(dir.join("cpu.max"), format!("{} {CPU_PERIOD_US}", quota(limits)))?;
                cg
            }
            Version::V1 => {
                let mut cg = WorkerCgroup { dirs: Vec::new(), version };
                for controller in ["memory", "pids", "cpu"] {
                    let dir = Path::new(ROOT).join(controller).join(parent).join(name);
                    fs::create_dir_all(&dir)?;
                    cg.dirs.push(dir);
                }
                let [memory, pids, cpu] = [&cg.dirs[0], &cg.dirs[1], &cg.dirs[2]];
                fs::write(memory.join("memory.limit_in_bytes"), limits.memory_bytes.to_string())?;
                fs::write(memory.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string()).or_else(ignore_missing)?;
                fs::write(pids.join("pids.max"), limits.pids_max.to_string())?;
                fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                fs::write(cpu.join("cpu.cfs_quota_us"), quota(limits).to_string())?;
                cg
            }
        };
        Ok(cg)
    }

    /// The `cgroup.procs` files a worker writes itself into.
    pub fn procs_files(&self) -> Vec<String> {
        self.dirs.iter().map(|d| d.join("cgroup.procs").to_string_lossy().into_owned()).collect()
    }

    /// Whether the kernel's OOM killer ended a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 => ("memory.oom_control", "oom_kill"),
        };
        fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok()))
            .is_some_and(|n| n > 0)
    }

    /// No process left in it (then it can be removed).
    pub fn is_empty(&self) -> bool {
        self.dirs.iter().all(|dir| fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |procs| procs.trim().is_empty()))
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Fails while a process is still inside; the caller drops this
            // after the worker is reaped.
            let _ = fs::remove_dir(dir);
        }
    }
}

fn quota(limits: &Limits) -> u64 {
    CPU_PERIOD_US * limits.cpu_percent.max(1) / 100
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Ok(()),
        _ => Err(e),
    }
}

/// Worker side: moves the calling process into its cgroups.
pub fn join(procs: &[String]) -> Result<String, String> {
    if procs.is_empty() {
        return Err("no cgroup prepared by the node".into());
    }
    let pid = std::process::id().to_string();
    for file in procs {
        fs::write(file, &pid).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(procs.iter().map(|p| p.trim_end_matches("/cgroup.procs")).collect::<Vec<_>>().join(", "))
}

/// Removes worker cgroups left by nodes that are gone (a node killed with
/// SIGKILL cannot clean up after itself). Names carry the node's pid:
/// `w<pid>-<n>` and `check<pid>-<n>`; a directory still holding a process
/// is never removed (rmdir refuses).
pub fn sweep_stale(parent: &str) -> usize {
    let roots: Vec<PathBuf> = match detect() {
        Some(Version::V2) => vec![Path::new(ROOT).join(parent)],
        Some(Version::V1) => ["memory", "pids", "cpu"].iter().map(|c| Path::new(ROOT).join(c).join(parent)).collect(),
        None => return 0,
    };
    let mut removed = 0;
    for root in roots {
        let Ok(entries) = fs::read_dir(&root) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("check").or_else(|| name.strip_prefix('w')).and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Whether moving a task between cgroups is cheap on this host: true when
/// the cgroup2 hierarchy is mounted with `favordynmods`.
pub fn favors_dynmods() -> bool {
    cgroup2_mount().is_some_and(|(_, opts)| opts.split(',').any(|o| o == "favordynmods"))
}

/// Turns on `favordynmods` on the host's cgroup2 hierarchy (the kernel's
/// switch is global, so it speeds up v1 migrations too).
///
/// Every worker joins its cgroup as its first act; by default the kernel
/// pays an RCU grace period per move (several ms here, per controller),
/// which lands on the request path when the pool is empty. With the flag,
/// a move costs a few hundred µs and forks and exits cost a little more;
/// the kernel documents it for hosts that move tasks often, which a
/// webtask host does. The hierarchy's other options are kept as they are.
pub fn favor_dynmods() -> Result<String, String> {
    let (path, opts) = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted; migrations stay slow")?;
    if opts.split(',').any(|o| o == "favordynmods") {
        return Ok(format!("{path}: already set"));
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| e.to_string());
    let target = c(&path)?;
    // SAFETY: fspick and fsconfig with valid C strings; the descriptor is
    // owned and closed below. These reconfigure the superblock only, so
    // the mount's own flags (nosuid, ...) are untouched.
    unsafe {
        let fd = libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, target.as_ptr(), 1 /* FSPICK_CLOEXEC */);
        if fd < 0 {
            return Err(format!("fspick {path}: {}", std::io::Error::last_os_error()));
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let flags = opts.split(',').filter(|o| !matches!(*o, "rw" | "ro")).chain(["favordynmods"]);
        for flag in flags {
            let key = c(flag)?;
            let rc = libc::syscall(libc::SYS_fsconfig, raw, 0 /* SET_FLAG */, key.as_ptr(), std::ptr::null::<u8>(), 0);
            if rc < 0 {
                return Err(format!("fsconfig {flag}: {}", std::io::Error::last_os_error()));
            }
        }
        let rc = libc::syscall(libc::SYS_fsconfig, raw, 7 /* CMD_RECONFIGURE */, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0);
        if rc < 0 {
            return Err(format!("reconfiguring {path}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(format!("{path}: favordynmods set"))
}

/// Mount point and superblock options of the cgroup2 hierarchy.
fn cgroup2_mount() -> Option<(String, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        (fs.next()? == "cgroup2").then_some(())?;
        let opts = fs.nth(1)?.to_owned();
        Some((mount.split(' ').nth(4)?.to_owned(), opts))
    })
}
