//! The jail a worker applies to itself before it reads a byte of tenant
//! code, one layer per file, in this order: cgroup (join), namespaces,
//! rlimits, transient uid/gid, no_new_privs, PID namespace (the fork into
//! it), Landlock, seccomp. The node
//! prepares what needs its privileges (cgroup directories, a free uid) and
//! hands the worker a [`JailSpec`]; the worker applies and reports every
//! layer, and a node configured `required` refuses workers (and refuses to
//! start) without all of them. Nothing here knows of V8 or of requests.

pub mod cgroup;
pub mod check;
pub mod landlock;
pub mod namespaces;
pub mod pidns;
pub mod rlimits;
pub mod seccomp;
pub mod uid;

use serde::{Deserialize, Serialize};

/// `[jail]` in webtask.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JailConfig {
    pub mode: JailMode,
    /// First uid/gid of the range transient worker identities come from.
    pub uid_base: u32,
    /// How many ids the range has (at least `workers.max`).
    pub uid_count: u32,
    /// Memory of one worker process, V8 heap and buffers included.
    pub memory_mb: u64,
    /// Tasks (threads) one worker may have.
    pub pids_max: u64,
    /// CPU one worker may use, in percent of one core (100 = one core).
    pub cpu_percent: u64,
    /// Parent cgroup (under each controller's mount) for worker cgroups.
    pub cgroup_parent: String,
    /// Set `favordynmods` on the host's cgroup2 hierarchy at start, so a
    /// worker joins its cgroup in µs rather than ms (see
    /// [`cgroup::favor_dynmods`]). A host-wide kernel switch: off leaves
    /// the host as it is, and pool misses pay the slow path.
    pub favor_dynmods: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum JailMode {
    /// Every layer must apply, or the worker (and the node) refuses to run.
    Required,
    /// Apply what this host supports, report the rest.
    BestEffort,
    /// No jail (development only).
    Off,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            mode: JailMode::BestEffort,
            uid_base: 2_000_000,
            uid_count: 65_536,
            memory_mb: 512,
            pids_max: 64,
            cpu_percent: 100,
            cgroup_parent: "webtask".into(),
            favor_dynmods: true,
        }
    }
}

/// What one worker is told to apply to itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JailSpec {
    pub mode: JailMode,
    /// `cgroup.procs` files to join (one per v1 controller, or one for v2).
    pub cgroup_procs: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Largest thread count (RLIMIT_NPROC, per transient uid).
    pub threads_max: u64,
}

/// Node side: the cgroup (if the mode wants one and the host has it) and
/// the spec for a worker that will run as `uid_offset` within the range.
pub fn prepare(config: &JailConfig, name: &str, uid_offset: u32) -> Result<(JailSpec, Option<cgroup::WorkerCgroup>), String> {
    let mut cg = None;
    if config.mode != JailMode::Off {
        let limits = cgroup::Limits { memory_bytes: config.memory_mb << 20, pids_max: config.pids_max, cpu_percent: config.cpu_percent };
        match cgroup::WorkerCgroup::create(&config.cgroup_parent, name, &limits) {
            Ok(created) => cg = Some(created),
            Err(e) if config.mode == JailMode::Required => return Err(format!("worker cgroup: {e}")),
            Err(e) => tracing::debug!(error = %e, "no cgroup for worker"),
        }
    }
    let id = config.uid_base + uid_offset;
    let spec = JailSpec {
        mode: config.mode,
        cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
        uid: id,
        gid: id,
        threads_max: config.pids_max,
    };
    Ok((spec, cg))
}

/// The layers, in the order they are applied.
pub const LAYERS: [&str; 8] = ["cgroup", "namespaces", "rlimits", "uid", "no_new_privs", "pid", "landlock", "seccomp"];

/// One layer's step: what it did, or why it could not.
type Layer<'a> = dyn Fn() -> Result<String, String> + 'a;

/// What happened to one layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerReport {
    pub layer: String,
    pub applied: bool,
    pub detail: String,
}

/// Applies `spec` to the calling process, which must still be
/// single-threaded (Landlock binds the calling thread and its future
/// children; seccomp is synchronised to all threads anyway). Returns a
/// report per layer; in `required` mode the first failure is an error.
pub fn apply(spec: &JailSpec) -> Result<Vec<LayerReport>, String> {
    if spec.mode == JailMode::Off {
        return Ok(LAYERS.iter().map(|l| report(l, Err("jail is off".into()))).collect());
    }
    let steps: [(&str, &Layer); 8] = [
        ("cgroup", &|| cgroup::join(&spec.cgroup_procs)),
        ("namespaces", &namespaces::enter),
        ("rlimits", &|| rlimits::apply(spec.threads_max)),
        ("uid", &|| uid::drop_to(spec.uid, spec.gid)),
        ("no_new_privs", &no_new_privs),
        // After the uid drop, so the supervisor left outside is unprivileged.
        ("pid", &pidns::enter),
        ("landlock", &landlock::restrict),
        ("seccomp", &seccomp::apply),
    ];
    let mut reports = Vec::with_capacity(steps.len());
    for (layer, step) in steps {
        let outcome = step();
        if let (JailMode::Required, Err(e)) = (spec.mode, &outcome) {
            return Err(format!("jail layer {layer} failed: {e}"));
        }
        reports.push(report(layer, outcome));
    }
    Ok(reports)
}

/// Work every worker's jail would repeat, done once ahead by the process
/// workers are forked from (compiling the seccomp filters).
pub fn precompute() {
    seccomp::precompute();
}

fn report(layer: &str, outcome: Result<String, String>) -> LayerReport {
    match outcome {
        Ok(detail) => LayerReport { layer: layer.into(), applied: true, detail },
        Err(detail) => LayerReport { layer: layer.into(), applied: false, detail },
    }
}

fn no_new_privs() -> Result<String, String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| e.to_string())?;
    Ok("set".into())
}
