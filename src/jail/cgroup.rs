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
