//! The engine: runs webtask code for containers in V8 isolates with every
//! per-request limit enforced. It knows nothing of HTTP; the API layer and
//! embedders call [`Engine::dispatch`] / [`Engine::run`].
//!
//! Layout: `snapshot` builds the startup snapshot, `isolate` wraps one
//! `JsRuntime`, `host` is the loop that owns it (on a thread of its own in
//! process, or on a worker process's main thread), `inflight` tracks the
//! requests running in it, `ops` is the host surface the guest runner
//! calls, `stack` filters guest stack traces, `watchdog` and `alloc`
//! enforce CPU and ArrayBuffer limits.

mod alloc;
pub mod code_cache;
pub mod console;
mod error;
mod exchange;
pub mod fetch;
pub(crate) mod host;
mod inflight;
mod isolate;
pub mod node;
mod ops;
mod request;
mod script;
mod snapshot;
mod stack;
mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub use error::{Error, ScriptError};
pub use request::{Context, Output, Reply, ReplyBody};
pub use host::Permit;
pub(crate) use watchdog::{on_overrun, Kill};

use host::Job;

/// Per-request limits. Every one that fires is reported with its figure.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// CPU time of the isolate thread per request.
    pub cpu_ms: u64,
    /// Wall-clock deadline per request.
    pub wall_ms: u64,
    /// V8 heap of one container's isolate.
    pub heap_mb: u64,
    /// ArrayBuffer memory of one container's isolate (outside the V8 heap).
    pub array_buffer_mb: u64,
    /// Largest response body.
    pub response_bytes: u64,
    /// V8 stack size; process-wide, the first engine's value wins.
    pub stack_kb: u32,
    /// `fetch` calls one request may make.
    pub subrequests: u32,
}

impl Limits {
    /// A limit of 0 would refuse every request (or, for the CPU budget,
    /// keep the watchdog scanning without pause): a configuration mistake,
    /// said so at load.
    pub fn validate(&self) -> Result<(), String> {
        let figures = [
            ("cpu_ms", self.cpu_ms),
            ("wall_ms", self.wall_ms),
            ("heap_mb", self.heap_mb),
            ("array_buffer_mb", self.array_buffer_mb),
            ("response_bytes", self.response_bytes),
            ("stack_kb", u64::from(self.stack_kb)),
        ];
        match figures.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(format!("engine.limits.{name} must be at least 1")),
            None => Ok(()),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 1_000,
            wall_ms: 30_000,
            heap_mb: 128,
            array_buffer_mb: 256,
            response_bytes: 8 * 1024 * 1024,
            stack_kb: 984,
            subrequests: 50,
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub limits: Limits,
    /// Containers kept with a live isolate; past this the least recently
    /// used idle one is retired.
    pub max_isolates: usize,
    /// Requests one container may run at once; more get `concurrency_limit`.
    pub max_concurrency: usize,
    /// How long an idle isolate thread keeps looking for its next job
    /// before it parks. Saves two thread wake-ups per call for an embedder
    /// calling in a loop; costs CPU on a node whose cores also serve HTTP.
    /// Unset: 20 µs for an embedded engine, 0 in a node.
    pub idle_wait_us: Option<u64>,
    /// Compile the Node shim and the module set from a V8 code cache built
    /// once when the engine (or a node's pool) starts: about half a second
    /// of CPU then, and each container's first `require` of a module
    /// about twice as fast. Off for one-shot runs (`webtask run`).
    pub code_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { limits: Limits::default(), max_isolates: 256, max_concurrency: 64, idle_wait_us: None, code_cache: true }
    }
}

/// What every isolate of an engine (or a worker) is made with.
#[derive(Clone)]
pub struct IsolateSpec {
    pub limits: Limits,
    /// See [`EngineConfig::idle_wait_us`].
    pub idle_wait: std::time::Duration,
    pub stats: Arc<Stats>,
    /// Where guest `fetch` goes.
    pub fetcher: Arc<dyn fetch::Fetcher>,
    /// Where guest `console.*` lines go.
    pub console: Arc<dyn console::ConsoleSink>,
}

impl IsolateSpec {
    /// Isolates with `limits` and no network.
    pub fn offline(limits: Limits) -> Self {
        IsolateSpec {
            limits,
            idle_wait: Default::default(),
            stats: Arc::default(),
            fetcher: Arc::new(fetch::NoNetwork),
            console: Arc::new(console::TracingSink),
        }
    }
}

/// Counters the engine keeps for whoever exports metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub live_isolates: AtomicUsize,
    pub isolates_created: AtomicU64,
    /// Webtask compilations (compile-cache misses).
    pub compilations: AtomicU64,
}

/// Webtask source, checked to be UTF-8 once at the edge.
#[derive(Debug, Clone)]
pub struct Code(Bytes);

impl Code {
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, Error> {
        let bytes = bytes.into();
        std::str::from_utf8(&bytes).map_err(|_| Error::bad_request("code is not valid UTF-8"))?;
        Ok(Code(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: checked in `new`, immutable since.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Code {
    fn from(s: &str) -> Self {
        Code(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Code {
    fn from(s: String) -> Self {
        Code(Bytes::from(s))
    }
}

/// A fresh request id, `<pid>-<counter>` in hex: unique per node.
pub fn new_req_id() -> Arc<str> {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let pid = *PID.get_or_init(std::process::id);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{pid:x}-{n:x}").into()
}

/// The startup snapshot, built once per process (a node hands it to its
/// worker processes). Sets V8's flags from `limits` first.
pub fn snapshot_blob(limits: &Limits) -> &'static [u8] {
    snapshot::init_v8(limits.stack_kb, limits.array_buffer_mb);
    snapshot::get()
}


/// In a worker process: start V8 single-threaded and use the snapshot the
/// node built.
pub fn install_snapshot(blob: &'static [u8], limits: &Limits) {
    snapshot::start_v8_single_threaded(limits.stack_kb, limits.array_buffer_mb);
    snapshot::install(blob);
}

/// Checks a container name: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_container(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct HostHandle {
    /// The container's name, shared with every job instead of copied.
    name: Arc<str>,
    tx: mpsc::UnboundedSender<Job>,
    running: Arc<AtomicUsize>,
    last_used: u64,
}

struct Inner {
    config: EngineConfig,
    fetcher: Arc<dyn fetch::Fetcher>,
    console: Arc<dyn console::ConsoleSink>,
    hosts: Mutex<HashMap<Arc<str>, HostHandle>>,
    stats: Arc<Stats>,
    clock: AtomicU64,
}

/// Runs webtasks. Cheap to clone; all clones share isolates.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), webtask::Error> {
/// use webtask::{Context, Engine};
///
/// let engine = Engine::new(Default::default());
/// let code = r#"return function (context, cb) { cb(null, "Hello, " + context.data.name); }"#;
/// let out = engine.run(code, Context::new().query("name", "webtask")).await?;
/// assert_eq!(out.status, 200);
/// assert_eq!(out.json().unwrap(), "Hello, webtask");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The container [`Engine::run`] uses.
pub const DEFAULT_CONTAINER: &str = "default";

impl Engine {
    /// An engine with `config` and no network; builds the startup snapshot
    /// on first use.
    pub fn new(config: EngineConfig) -> Self {
        Self::with_fetcher(config, Arc::new(fetch::NoNetwork))
    }

    /// An engine whose guest `fetch` goes through `fetcher`; console lines
    /// are `tracing` events (target `webtask::guest`).
    pub fn with_fetcher(config: EngineConfig, fetcher: Arc<dyn fetch::Fetcher>) -> Self {
        Self::with_io(config, fetcher, Arc::new(console::TracingSink))
    }

    /// An engine whose guest `fetch` goes through `fetcher` and whose
    /// console lines go to `console`.
    pub fn with_io(config: EngineConfig, fetcher: Arc<dyn fetch::Fetcher>, console: Arc<dyn console::ConsoleSink>) -> Self {
        snapshot::init_v8(config.limits.stack_kb, config.limits.array_buffer_mb);
        snapshot::get();
        node::modules::preload();
        if config.code_cache {
            code_cache::build_in_background(&config.limits);
        }
        Engine {
            inner: Arc::new(Inner {
                config,
                fetcher,
                console,
                hosts: Mutex::new(HashMap::new()),
                stats: Arc::new(Stats::default()),
                clock: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Runs `code` in the default container and collects its response.
    pub async fn run(&self, code: impl Into<Code>, context: Context) -> Result<Output, Error> {
        self.run_in(DEFAULT_CONTAINER, code, context).await
    }

    /// Runs `code` in `container` and collects its response.
    pub async fn run_in(&self, container: &str, code: impl Into<Code>, context: Context) -> Result<Output, Error> {
        let req_id = new_req_id();
        self.dispatch(container, code.into(), context, req_id).await?.collect().await
    }

    /// Starts `code` in `container`; resolves when the status and headers
    /// are known, with the body to follow.
    pub async fn dispatch(&self, container: &str, code: Code, context: Context, req_id: Arc<str>) -> Result<Reply, Error> {
        if !valid_container(container) {
            return Err(Error::bad_request("container names are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"));
        }
        let (reply, rx) = oneshot::channel();
        self.submit(container, |container, permit| Job { container, code, context, req_id, reply, permit })?;
        rx.await.unwrap_or_else(|_| Err(Error::internal("isolate thread ended before answering")))
    }

    /// Hands the job `make` builds (with the shared container name and a
    /// concurrency permit) to `container`'s isolate thread.
    fn submit(&self, container: &str, make: impl FnOnce(Arc<str>, Permit) -> Job) -> Result<(), Error> {
        let inner = &self.inner;
        let mut hosts = inner.hosts.lock().unwrap();
        let now = inner.clock.fetch_add(1, Ordering::Relaxed);
        if !hosts.contains_key(container) {
            self.evict_lru(&mut hosts);
            let handle = self.spawn_host(container)?;
            hosts.insert(handle.name.clone(), handle);
        }
        let handle = hosts.get_mut(container).unwrap();
        handle.last_used = now;
        let limit = inner.config.max_concurrency;
        if handle.running.fetch_add(1, Ordering::Acquire) >= limit {
            handle.running.fetch_sub(1, Ordering::Release);
            return Err(Error::ConcurrencyLimit { limit });
        }
        let job = make(handle.name.clone(), Permit(handle.running.clone()));
        handle.tx.send(job).map_err(|_| Error::internal("isolate thread is gone"))
    }

    fn spawn_host(&self, container: &str) -> Result<HostHandle, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = IsolateSpec {
            idle_wait: std::time::Duration::from_micros(self.inner.config.idle_wait_us.unwrap_or(20)),
            limits: self.inner.config.limits.clone(),
            stats: self.inner.stats.clone(),
            fetcher: self.inner.fetcher.clone(),
            console: self.inner.console.clone(),
        };
        let stack_kb = spec.limits.stack_kb as usize;
        std::thread::Builder::new()
            .name(format!("wt-{container}"))
            // V8's own stack limit is `stack_kb`; the thread gets ample room
            // above it for Rust frames.
            .stack_size((stack_kb + 4096) * 1024)
            .spawn(move || host::run(spec, rx))
            .map_err(Error::internal)?;
        Ok(HostHandle { name: container.into(), tx, running: Arc::default(), last_used: 0 })
    }

    /// Keeps at most `max_isolates` containers: retires the least recently
    /// used one with nothing running (its thread ends when its channel closes).
    fn evict_lru(&self, hosts: &mut HashMap<Arc<str>, HostHandle>) {
        if hosts.len() < self.inner.config.max_isolates {
            return;
        }
        let victim = hosts
            .iter()
            .filter(|(_, h)| h.running.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, h)| h.last_used)
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            hosts.remove(&victim);
        }
    }
}

/// Measurements of engine internals, for benchmarks and diagnostics.
pub mod probe {
    use std::time::{Duration, Instant};

    use super::{isolate::Isolate, snapshot, watchdog::CpuGuard, IsolateSpec, Limits};

    /// Creates and drops one isolate from the startup snapshot on the
    /// calling thread, which must have no isolate of its own and be inside
    /// a tokio runtime; returns how long creation took (drop excluded).
    pub fn create_isolate(limits: &Limits) -> Duration {
        snapshot::init_v8(limits.stack_kb, limits.array_buffer_mb);
        snapshot::get();
        thread_local! {
            static GUARD: std::cell::OnceCell<std::sync::Arc<CpuGuard>> = const { std::cell::OnceCell::new() };
        }
        let guard = GUARD.with(|g| g.get_or_init(|| CpuGuard::for_current_thread(limits.cpu_ms)).clone());
        let start = Instant::now();
        let isolate = Isolate::new(&IsolateSpec::offline(limits.clone()), &guard, "probe".into()).expect("isolate");
        let took = start.elapsed();
        drop(isolate);
        took
    }

    /// Runs `f` on the calling thread (inside a tokio runtime, with no
    /// isolate of its own) while an isolate of ours lives there. V8 shares
    /// its read-only heap and string table among a process's isolates and
    /// frees them with the last one: an isolate created while another lives
    /// skips deserialising them, as every container's isolate but the
    /// first in an engine does.
    pub fn with_isolate<R>(limits: &Limits, f: impl FnOnce() -> R) -> R {
        snapshot::init_v8(limits.stack_kb, limits.array_buffer_mb);
        let guard = CpuGuard::for_current_thread(limits.cpu_ms);
        let _isolate = Isolate::new(&IsolateSpec::offline(limits.clone()), &guard, "probe".into()).expect("isolate");
        f()
    }

    /// Runs `code` `samples` times on one warm isolate on a fresh thread,
    /// with no thread hand-off: the cost of a run inside the engine itself.
    /// Returns each run's time from start to settled result.
    pub fn warm_runs(limits: &Limits, code: &str, context: super::Context, samples: usize) -> Vec<Duration> {
        snapshot::init_v8(limits.stack_kb, limits.array_buffer_mb);
        snapshot::get();
        let limits = limits.clone();
        let code = super::Code::from(code);
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
            let _enter = tokio.enter();
            let guard = CpuGuard::for_current_thread(limits.cpu_ms);
            let mut isolate = Isolate::new(&IsolateSpec::offline(limits.clone()), &guard, "probe".into()).expect("isolate");
            let req_id: std::sync::Arc<str> = "probe".into();
            (0..samples)
                .map(|_| {
                    let (tx, mut rx) = tokio::sync::oneshot::channel();
                    let permit = super::host::Permit(Default::default());
                    let start = Instant::now();
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.wall_ms);
                    let id = isolate.inflight().insert(tx, req_id.clone(), guard.now_ns(), deadline, permit);
                    isolate.start(id, &code, &context);
                    let took = start.elapsed();
                    rx.try_recv().expect("a synchronous webtask settles during start").expect("run");
                    took
                })
                .collect()
        })
        .join()
        .expect("probe thread")
    }

    /// Size of the startup snapshot in bytes.
    pub fn snapshot_bytes() -> usize {
        snapshot::get().len()
    }
}
