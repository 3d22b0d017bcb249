//! Worker processes for containers: a pool of pre-warmed, unassigned
//! workers (forked by the zygote, jailed, snapshot loaded, isolate ready), the
//! assignment of a worker to a container on its first request, and the
//! controller that retires workers by lifetime policy. A worker serves one
//! container for its whole life; retiring kills it, and the pool replaces
//! it with a fresh process, never a used one.

mod image;
mod process;
mod zygote;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;

use crate::egress::Egress;
use crate::engine::{self, valid_container, Code, Context, EngineConfig, Error, Reply};
use crate::jail::{JailConfig, JailMode};
use crate::logs::Logs;
use crate::placement::{Memory, Placement};
use crate::worker::Spec;
pub use process::Worker;

/// `[workers]` in webtask.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// `process` (one jailed worker process per container: the product) or
    /// `in-process` (isolates in the node; for development and embedding).
    pub mode: Mode,
    /// Pre-warmed unassigned workers kept ready.
    pub pool_size: usize,
    /// Live worker processes at most, pool included.
    pub max: usize,
    /// A worker with no request for this long is retired.
    pub idle_timeout_ms: u64,
    /// A worker older than this takes no new request; it is retired once
    /// idle.
    pub max_age_ms: u64,
    /// A worker that served this many requests takes no new one; it is
    /// retired once idle.
    pub max_requests: u64,
    /// Pooled workers left unassigned for 50 ms load the Node built-ins
    /// (about 8 ms of CPU each), so a container's first `require` of one
    /// is free. Off by default: under churn that background work raises
    /// the p99 of every request (`compare`'s churn: 17 ms off, 19–41 ms
    /// on; 28 and 87 ms before the code cache made it a fifth of the work).
    pub warm_node_builtins: bool,
    /// Modules of the set that pooled workers left unassigned for 50 ms
    /// load, so a new container's first `require` of them is free: memory
    /// (express: about 20 MB per pooled worker) and background CPU
    /// (express: about 30 ms per worker) for first requests as fast as
    /// warm ones. Loaded before any tenant's code, as a request under the
    /// engine's limits (with a `cpu_ms` too small for them, the load is cut
    /// off and its isolate replaced); what they keep counts against the
    /// container's `heap_mb`. A module that fails to load is left for the
    /// container's own `require`. A module that reads something at load
    /// time reads it before the container's code has run. Workers spawned
    /// for a waiting request (pool empty), and in-process mode, preload
    /// nothing.
    pub preload_modules: Vec<String>,
    /// The `webtask` binary workers run as; this executable when unset
    /// (set it when the node is embedded in another program).
    pub exe: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Process,
    InProcess,
}

/// The built-ins `warm_node_builtins` loads: those most code requires.
const COMMON_BUILTINS: [&str; 7] = ["buffer", "events", "util", "stream", "url", "http", "crypto"];

impl PoolConfig {
    /// Every preloaded module must be in the module set.
    pub fn validate(&self) -> Result<(), String> {
        if self.preload_modules.is_empty() {
            return Ok(());
        }
        let set = engine::node::modules::list();
        match self.preload_modules.iter().find(|m| !set.iter().any(|(name, _)| name == *m)) {
            Some(m) => Err(format!("workers.preload_modules: {m:?} is not in the module set (GET /api/env/node/modules lists it)")),
            None => Ok(()),
        }
    }

    /// Whether pooled workers load anything while idle.
    fn warms_up(&self) -> bool {
        self.warm_node_builtins || !self.preload_modules.is_empty()
    }

    /// What a pooled worker loads while idle, in order.
    fn warm_up(&self) -> Vec<String> {
        let builtins = COMMON_BUILTINS.iter().filter(|_| self.warm_node_builtins).map(|b| b.to_string());
        builtins.chain(self.preload_modules.iter().cloned()).collect()
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: Mode::Process,
            pool_size: 2,
            max: 64,
            idle_timeout_ms: 5 * 60_000,
            max_age_ms: 60 * 60_000,
            max_requests: 100_000,
            warm_node_builtins: false,
            preload_modules: Vec::new(),
            exe: None,
        }
    }
}

/// Where a node runs webtasks: in worker processes (the product) or in
/// isolates inside the node (development, embedding, `webtask run`).
#[derive(Clone)]
pub enum Runner {
    Workers(Pool),
    InProcess(engine::Engine),
}

impl Runner {
    /// Starts the runner `config` asks for (inside a tokio runtime). With
    /// `jail.mode = "required"` a first worker is started and checked
    /// before this returns, so a host that cannot jail fails here.
    /// Guest console lines go to `logs`.
    pub async fn start(config: &PoolConfig, engine: &EngineConfig, jail: &JailConfig, egress: Egress, logs: &Logs) -> Result<Runner, Error> {
        Ok(match config.mode {
            Mode::Process => Runner::Workers(Pool::start(config.clone(), engine.clone(), jail.clone(), egress, logs.clone()).await?),
            Mode::InProcess => {
                // A node's cores serve HTTP too: its isolate threads park at once.
                let config = EngineConfig { idle_wait_us: Some(engine.idle_wait_us.unwrap_or(0)), ..engine.clone() };
                Runner::InProcess(engine::Engine::with_io(config, Arc::new(egress), Arc::new(logs.clone())))
            }
        })
    }

    pub async fn dispatch(&self, container: &str, code: Code, context: Context, req_id: Arc<str>) -> Result<Reply, Error> {
        match self {
            Runner::Workers(pool) => pool.dispatch(container, code, context, req_id).await,
            Runner::InProcess(engine) => engine.dispatch(container, code, context, req_id).await,
        }
    }

    /// At node shutdown, once requests are done: see [`Pool::shutdown`].
    pub async fn shutdown(&self, within: Duration) {
        if let Runner::Workers(pool) = self {
            pool.shutdown(within).await;
        }
    }
}

/// `Worker::running` of a worker being retired: far above any concurrency
/// limit, so a request that counts itself in after it sees the mark.
const RETIRING: usize = usize::MAX / 2;

/// How long the pool waits, after a worker was taken, before forking its
/// replacement (while it still has others to give).
const REFILL_DELAY: Duration = Duration::from_millis(10);

/// Who a new worker is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The pool: it warms up before it says it is ready.
    Pool,
    /// A request waiting for it (pool empty), whose run warms it anyway.
    Request,
}

/// What happens to a retired worker's process slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Back to the pool (the refill may use it).
    Release,
    /// Passed straight to the caller, who spawns in it.
    Keep,
}

/// Controller ticks (100 ms) between sweeps of dead nodes' cgroups.
const SWEEP_EVERY_TICKS: u64 = 600;

/// How long past a request's wall-clock limit the node waits for its
/// worker before killing it.
const WORKER_GRACE: Duration = Duration::from_secs(2);

/// Why workers end, for metrics: the lifetime policy (`idle`, `max_age`,
/// `max_requests`), room for another container (`evicted`), the node
/// killing one that overran a request's wall-clock limit (`wall_limit`),
/// dying on its own (`crashed`), or spawned for a request whose client
/// left before it was ready (`abandoned`).
pub const RETIRE_REASONS: [&str; 7] = ["idle", "max_age", "max_requests", "evicted", "wall_limit", "crashed", "abandoned"];

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub spawned: AtomicU64,
    pub retired: [AtomicU64; RETIRE_REASONS.len()],
}

impl PoolStats {
    fn retired(&self, reason: &str) {
        let i = RETIRE_REASONS.iter().position(|r| *r == reason).expect("known reason");
        self.retired[i].fetch_add(1, Ordering::Relaxed);
    }
}

struct Inner {
    config: PoolConfig,
    engine: EngineConfig,
    jail: JailConfig,
    egress: Egress,
    /// Where workers' console lines go.
    logs: Logs,
    /// Transient uids in use (offsets from `jail.uid_base`).
    uids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    /// What every worker is forked from (and holds the image).
    zygote: zygote::Zygote,
    /// The size of the code cache in the image (0: none).
    code_cache_bytes: usize,
    idle: Mutex<VecDeque<Arc<Worker>>>,
    assigned: Mutex<HashMap<Arc<str>, Arc<Worker>>>,
    /// Workers past `max_requests` or `max_age` while busy: no longer
    /// assigned (their container's next request gets a new worker), ended
    /// once the requests still on them are done.
    draining: Mutex<Vec<(Arc<Worker>, &'static str)>>,
    /// Serialises first requests of one container while a worker is found.
    assigning: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    /// Live processes, pooled and assigned, plus those being spawned.
    live: Arc<AtomicUsize>,
    /// The node is shutting down: no more workers.
    closing: AtomicBool,
    placement: Box<dyn Placement>,
    refill: Arc<Notify>,
    stats: PoolStats,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the refill task see the pool is gone and end.
        self.refill.notify_one();
    }
}

/// The node's workers. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Builds the workers' image (the snapshot and the code cache, see
    /// `image`), fills the pool in the background and starts the
    /// controller. Must be called inside a tokio runtime.
    pub async fn start(config: PoolConfig, engine: EngineConfig, jail: JailConfig, egress: Egress, logs: Logs) -> Result<Pool, Error> {
        config.validate().map_err(Error::internal)?;
        let exe = match &config.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(Error::internal)?,
        };
        let (image, code_cache_bytes) = image::for_workers(&exe, &engine.limits, engine.code_cache).await?;
        let zygote = zygote::Zygote::new(exe, image);
        let required = jail.mode == JailMode::Required;
        if jail.mode != JailMode::Off {
            let swept = crate::jail::cgroup::sweep_stale(&jail.cgroup_parent);
            if swept > 0 {
                tracing::info!(swept, "removed worker cgroups of nodes that are gone");
            }
            if jail.favor_dynmods {
                // A speed-up, not a layer: the jail holds without it.
                match crate::jail::cgroup::favor_dynmods() {
                    Ok(done) => tracing::info!("cgroup migrations: {done}"),
                    Err(e) => tracing::warn!("cgroup migrations stay slow: {e}"),
                }
            }
        }
        let pool = Pool {
            inner: Arc::new(Inner {
                config,
                engine,
                jail,
                egress,
                logs,
                uids: Arc::default(),
                zygote,
                code_cache_bytes,
                idle: Mutex::default(),
                assigned: Mutex::default(),
                draining: Mutex::default(),
                assigning: Mutex::default(),
                live: Arc::default(),
                closing: AtomicBool::new(false),
                placement: Box::new(Memory::default()),
                refill: Arc::default(),
                stats: PoolStats::default(),
            }),
        };
        if required {
            // Proves this host can jail before the node takes any traffic.
            let Some(slot) = pool.inner.reserve_slot() else {
                return Err(Error::NoWorker { limit: 0 });
            };
            let first = pool.inner.spawn_reserved(Purpose::Pool, slot).await?;
            pool.inner.idle.lock().unwrap().push_back(first.keep());
        }
        tokio::spawn(refill(Arc::downgrade(&pool.inner)));
        tokio::spawn(control(Arc::downgrade(&pool.inner)));
        pool.inner.refill.notify_one();
        Ok(pool)
    }

    /// The size of the code cache workers share; 0 without one.
    pub fn code_cache_bytes(&self) -> usize {
        self.inner.code_cache_bytes
    }

    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }

    /// (container, pid) of every assigned worker.
    pub fn assignments(&self) -> Vec<(Arc<str>, u32)> {
        let mut v: Vec<_> = self.inner.assigned.lock().unwrap().iter().map(|(c, w)| (c.clone(), w.pid)).collect();
        v.sort();
        v
    }

    /// Workers pre-warmed and waiting for a container.
    pub fn idle_workers(&self) -> usize {
        self.inner.idle.lock().unwrap().len()
    }

    /// Ends every worker, pooled and assigned, and waits up to `within`
    /// for them to be reaped, so their cgroups and uids go with this node
    /// (left behind, the next node's start sweeps them). No worker is
    /// spawned after this.
    pub async fn shutdown(&self, within: Duration) {
        self.inner.closing.store(true, Ordering::Release);
        let mut workers: Vec<Arc<Worker>> = self.inner.idle.lock().unwrap().drain(..).collect();
        workers.extend(self.inner.assigned.lock().unwrap().drain().map(|(_, w)| w));
        workers.extend(self.inner.draining.lock().unwrap().drain(..).map(|(w, _)| w));
        for worker in &workers {
            worker.kill();
        }
        let deadline = tokio::time::Instant::now() + within;
        while workers.iter().any(|w| !w.reaped()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a request on `container`'s worker, assigning one first if needed.
    pub async fn dispatch(&self, container: &str, code: Code, context: Context, req_id: Arc<str>) -> Result<Reply, Error> {
        if !valid_container(container) {
            return Err(Error::bad_request("container names are 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"));
        }
        let worker = self.claim(container).await?;
        // Held by the request's entry at the worker until the worker is done
        // with it (a streamed body included), even if this caller goes.
        let permit = engine::Permit::from_counter(worker.running.clone());
        // The worker enforces the wall clock itself; this is the node not
        // trusting it to. A worker that overruns by the grace period, with
        // the head or with a streamed body, is killed (its other requests
        // fail with worker_crashed).
        let wall = Duration::from_millis(self.inner.engine.limits.wall_ms);
        let deadline = tokio::time::Instant::now() + wall + WORKER_GRACE;
        match tokio::time::timeout_at(deadline, worker.run(code, context, req_id, permit, deadline)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(container, pid = worker.pid, "worker overran the wall-clock limit; killing it");
                worker.kill_for("wall_limit");
                Err(Error::WallLimit { limit_ms: self.inner.engine.limits.wall_ms })
            }
        }
    }

    /// `container`'s worker, with this request counted in its `running`.
    /// A worker retired between being found and being counted (the
    /// controller or an eviction got there first) is passed over for the
    /// container's next one, never used dying.
    async fn claim(&self, container: &str) -> Result<Arc<Worker>, Error> {
        let limit = self.inner.engine.max_concurrency;
        loop {
            let worker = self.worker_for(container).await?;
            if let Some(reason) = self.inner.past_lifetime(&worker) {
                self.inner.drain(container, &worker, reason);
                continue;
            }
            let before = worker.running.fetch_add(1, Ordering::Acquire);
            if before >= RETIRING {
                worker.running.fetch_sub(1, Ordering::Release);
                continue;
            }
            if before >= limit {
                worker.running.fetch_sub(1, Ordering::Release);
                return Err(Error::ConcurrencyLimit { limit });
            }
            return Ok(worker);
        }
    }

    async fn worker_for(&self, container: &str) -> Result<Arc<Worker>, Error> {
        if let Some(w) = self.assigned(container) {
            return Ok(w);
        }
        let gate = Gate::join(&self.inner.assigning, container);
        let _turn = gate.turn().await;
        if let Some(w) = self.assigned(container) {
            return Ok(w);
        }
        let fresh = match self.take_idle() {
            Some(w) => w,
            None => self.spawn_on_request_path().await?,
        };
        let name: Arc<str> = container.into();
        // Failed (it died), the worker is dropped (killed) and its slot
        // given back.
        if let Err(e) = fresh.worker.assign(name.clone()) {
            self.inner.stats.retired("crashed");
            return Err(e);
        }
        let worker = fresh.keep();
        log_assigned(name.clone(), worker.pid);
        {
            // Claimed under the map's lock: a worker ending now (`forget`)
            // sees this one and leaves the claim alone.
            let mut assigned = self.inner.assigned.lock().unwrap();
            self.inner.placement.claim(container);
            assigned.insert(name, worker.clone());
        }
        self.inner.refill.notify_one();
        Ok(worker)
    }

    /// The live worker assigned to `container`; a dead one is cleared away.
    fn assigned(&self, container: &str) -> Option<Arc<Worker>> {
        let mut assigned = self.inner.assigned.lock().unwrap();
        let worker = assigned.get(container)?.clone();
        if worker.is_alive() {
            return Some(worker);
        }
        assigned.remove(container);
        drop(assigned);
        self.inner.forget(&worker, worker.end_reason(), Slot::Release);
        None
    }

    /// The most recently readied pooled worker, whose caches are the
    /// warmest (a new container's first request, above a warm one: 0.35–0.37
    /// ms in `cold_start` runs, against 0.38–0.53 ms taking the longest
    /// idle). Except while pooled workers load modules when idle
    /// (`warm_node_builtins`, `preload_modules`): then the oldest, which is
    /// the likeliest to have finished.
    fn take_idle(&self) -> Option<Fresh> {
        let mut idle = self.inner.idle.lock().unwrap();
        let newest = !self.inner.config.warms_up();
        while let Some(w) = if newest { idle.pop_back() } else { idle.pop_front() } {
            if w.is_alive() {
                return Some(Fresh { worker: w, slot: self.inner.held_slot() });
            }
            self.inner.forget(&w, "crashed", Slot::Release);
        }
        None
    }

    /// Pool empty: spawn now, making room by retiring the least recently
    /// used idle container if the node is at `workers.max`.
    async fn spawn_on_request_path(&self) -> Result<Fresh, Error> {
        let inner = &self.inner;
        // At the cap, the evicted worker's slot passes straight to this
        // request, so the refill task cannot take it in between.
        let Some(slot) = inner.reserve_slot().or_else(|| inner.evict_lru()) else {
            return Err(Error::NoWorker { limit: inner.config.max });
        };
        // Spawned in a task of its own, which a request that goes away
        // (its client left) cannot cut short. A worker spawned for no one
        // any more is dropped on the way, with its slot.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = self.inner.clone();
        tokio::spawn(async move {
            if let Err(Ok(abandoned)) = tx.send(task.spawn_reserved(Purpose::Request, slot).await) {
                task.stats.retired("abandoned");
                drop(abandoned);
            }
        });
        rx.await.unwrap_or_else(|_| Err(Error::internal("the worker spawn task ended")))
    }
}

/// One of the `workers.max` process slots (counted in `live`), given back
/// when dropped unless a pooled or assigned worker keeps it ([`Fresh::keep`]).
struct SlotGuard {
    live: Arc<AtomicUsize>,
    refill: Arc<Notify>,
    kept: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.kept {
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.refill.notify_one();
        }
    }
}

/// A worker that holds a slot but is neither pooled nor assigned yet:
/// dropped (its spawner gone, or its assignment failed), it is killed and
/// its slot is free again.
struct Fresh {
    worker: Arc<Worker>,
    slot: SlotGuard,
}

impl Fresh {
    /// The worker, to be pooled or assigned: its slot goes with it (given
    /// back by `Inner::forget` or `take_idle`).
    fn keep(self) -> Arc<Worker> {
        let Fresh { worker, mut slot } = self;
        slot.kept = true;
        worker
    }
}

/// The first requests of one new container, taking turns while a worker is
/// found for it. The entry in `assigning` goes with the last of them,
/// however each ends (assigned, failed, or its caller gone).
struct Gate<'a> {
    map: &'a Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    container: Arc<str>,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl<'a> Gate<'a> {
    fn join(map: &'a Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>, container: &str) -> Gate<'a> {
        let container: Arc<str> = container.into();
        let lock = map.lock().unwrap().entry(container.clone()).or_default().clone();
        Gate { map, container, lock: Some(lock) }
    }

    async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.as_ref().expect("held until dropped").lock().await
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap();
        // Clones are made and (here) dropped only under the map's lock, so
        // the last holder sees the map's own reference alone.
        drop(self.lock.take());
        if map.get(&self.container).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            map.remove(&self.container);
        }
    }
}

impl Inner {
    /// Takes one of `max` process slots (none once the node is closing).
    fn reserve_slot(&self) -> Option<SlotGuard> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.config.max).then_some(n + 1))
            .ok()
            .map(|_| self.held_slot())
    }

    /// The guard of a slot already counted in `live`.
    fn held_slot(&self) -> SlotGuard {
        SlotGuard { live: self.live.clone(), refill: self.refill.clone(), kept: false }
    }

    /// Spawns a worker in `slot`; failed (or dropped), the slot is given back.
    async fn spawn_reserved(&self, purpose: Purpose, slot: SlotGuard) -> Result<Fresh, Error> {
        let (spec, lease) = self.prepare_jail(purpose)?;
        let (egress, logs) = (self.egress.clone(), self.logs.clone());
        let worker = Worker::spawn(&self.zygote, &spec, lease, egress, logs).await?;
        self.stats.spawned.fetch_add(1, Ordering::Relaxed);
        Ok(Fresh { worker, slot })
    }

    /// A uid and a cgroup for the next worker, as far as the jail mode wants.
    fn prepare_jail(&self, purpose: Purpose) -> Result<(Spec, process::Lease), Error> {
        let jail = &self.jail;
        let (uid, claim) = self.claim_uid()?;
        let mut lease = process::Lease { uid, uids: self.uids.clone(), cgroup: None, memory_mb: None, claim };
        // Unique per process, not per pool: cgroups are host-wide.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!("w{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let (jail_spec, cgroup) = crate::jail::prepare(jail, &name, uid).map_err(Error::internal)?;
        lease.memory_mb = cgroup.as_ref().map(|_| jail.memory_mb);
        lease.cgroup = cgroup;
        let log_line_bytes = self.logs.config().line_bytes;
        let warm_up = self.config.warm_up();
        let pooled = purpose == Purpose::Pool;
        Ok((Spec { limits: self.engine.limits.clone(), jail: jail_spec, log_line_bytes, warm_up, pooled }, lease))
    }

    /// The first id of the range that neither this node nor another node
    /// (nor a `jail-check` probe) on the host holds.
    fn claim_uid(&self) -> Result<(u32, Option<crate::jail::uid::Claim>), Error> {
        let jail = &self.jail;
        let mut used = self.uids.lock().unwrap();
        let mut free = (0..jail.uid_count).filter(|i| !used.contains(i));
        let found = match jail.mode {
            JailMode::Off => free.next().map(|i| (i, None)),
            _ => crate::jail::uid::claim_first(jail.uid_base, free)
                .map_err(|e| Error::internal(format!("claiming a transient uid: {e}")))?
                .map(|(i, claim)| (i, Some(claim))),
        };
        let (offset, claim) = found.ok_or(Error::NoWorker { limit: jail.uid_count as usize })?;
        used.insert(offset);
        Ok((offset, claim))
    }

    /// Retires the least recently used assigned worker with nothing running,
    /// keeping its process slot for the caller.
    fn evict_lru(&self) -> Option<SlotGuard> {
        let victim = {
            let assigned = self.assigned.lock().unwrap();
            assigned
                .iter()
                .filter(|(_, w)| w.running.load(Ordering::Acquire) == 0)
                .max_by_key(|(_, w)| w.idle_for())
                .map(|(c, _)| c.clone())
        };
        let evicted = victim.is_some_and(|container| self.retire(&container, "evicted", Slot::Keep));
        evicted.then(|| self.held_slot())
    }

    /// Removes `container`'s worker and kills it.
    fn retire(&self, container: &str, reason: &'static str, slot: Slot) -> bool {
        let worker = {
            let mut assigned = self.assigned.lock().unwrap();
            let Some(worker) = assigned.get(container) else { return false };
            // A live worker is retired only if nothing runs on it, decided
            // in one step with any request counting itself (see `claim`):
            // one that just did keeps its worker, retired another time.
            if !retirable(worker) {
                return false;
            }
            assigned.remove(container).expect("found under the same lock")
        };
        worker.kill();
        self.forget(&worker, reason, slot);
        tracing::info!(container, pid = worker.pid, reason, "worker retired");
        true
    }

    /// Why `worker` should take no more requests: past `max_requests` or
    /// `max_age`. A worker that has served none yet is never past (a
    /// pooled one may be older than `max_age`): it serves one first.
    fn past_lifetime(&self, worker: &Worker) -> Option<&'static str> {
        let served = worker.requests.load(Ordering::Relaxed);
        if served == 0 {
            return None;
        }
        if served >= self.config.max_requests {
            return Some("max_requests");
        }
        (worker.started.elapsed() >= Duration::from_millis(self.config.max_age_ms)).then_some("max_age")
    }

    /// Takes `worker` off `container` (if still its worker), so the next
    /// request gets a new one; it ends once what runs on it is done
    /// ([`Inner::end_drained`]), counted under `reason`.
    fn drain(&self, container: &str, worker: &Arc<Worker>, reason: &'static str) {
        {
            let mut assigned = self.assigned.lock().unwrap();
            if !assigned.get(container).is_some_and(|w| Arc::ptr_eq(w, worker)) {
                return;
            }
            assigned.remove(container);
        }
        // Idle, it ends now: its slot is free for the worker that replaces
        // it (at `workers.max`, that request would otherwise be refused).
        if retirable(worker) {
            return self.end_drained_worker(worker, reason);
        }
        tracing::info!(container, pid = worker.pid, reason, "worker draining");
        self.draining.lock().unwrap().push((worker.clone(), reason));
    }

    /// Ends the draining workers with nothing left running (or dead).
    fn end_drained(&self) {
        let done: Vec<(Arc<Worker>, &'static str)> = {
            let mut draining = self.draining.lock().unwrap();
            let (done, busy) = std::mem::take(&mut *draining).into_iter().partition(|(w, _)| retirable(w));
            *draining = busy;
            done
        };
        for (worker, reason) in done {
            self.end_drained_worker(&worker, reason);
        }
    }

    fn end_drained_worker(&self, worker: &Worker, reason: &'static str) {
        let reason = if worker.is_alive() { reason } else { worker.end_reason() };
        worker.kill();
        self.forget(worker, reason, Slot::Release);
        tracing::info!(container = worker.container().as_deref(), pid = worker.pid, reason, "worker retired");
    }

    /// Drops pooled workers that died while they waited (killed, or
    /// crashed): each is counted as crashed, its slot freed and the refill
    /// woken, so the pool does not stay short by it.
    fn prune_pooled(&self) {
        let dead: Vec<Arc<Worker>> = {
            let mut idle = self.idle.lock().unwrap();
            let dead: Vec<_> = idle.iter().filter(|w| !w.is_alive()).cloned().collect();
            if !dead.is_empty() {
                idle.retain(|w| w.is_alive());
            }
            dead
        };
        for worker in dead {
            self.forget(&worker, "crashed", Slot::Release);
        }
    }

    /// Counts `worker`'s end and gives back its slot and its container's
    /// placement. The placement goes only with the container's last
    /// worker, not from under one that replaced it (a drained worker
    /// ending, or a retirement racing a new assignment, which claims under
    /// the same lock). Callers hold no lock of the pool's.
    fn forget(&self, worker: &Worker, reason: &'static str, slot: Slot) {
        if let Some(c) = worker.container() {
            let assigned = self.assigned.lock().unwrap();
            if !assigned.contains_key(&c) {
                self.placement.release(&c);
            }
        }
        self.stats.retired(reason);
        if slot == Slot::Release {
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.refill.notify_one();
        }
    }
}

/// Dead, or live with nothing running, and then claimed for retirement in
/// one step with any request counting itself (see `Pool::claim`).
fn retirable(worker: &Worker) -> bool {
    !worker.is_alive() || worker.running.compare_exchange(0, RETIRING, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Logs an assignment once the request that caused it has gone out to
/// the worker. The log line is a write to the node's stderr (a pipe to
/// journald or a supervisor, which it wakes): about 30 µs on the 2-core
/// bench VM, which would otherwise sit between a new container's first
/// request and its worker. Spawned, then one `yield_now`: the request's
/// task queues its frames and parks on the answer, the frame writer runs,
/// and only then this task (a yielded task runs after those already
/// scheduled).
fn log_assigned(container: Arc<str>, pid: u32) {
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        tracing::info!(container = &*container, pid, "worker assigned");
    });
}

/// Keeps `pool_size` workers ready, within `max`.
async fn refill(pool: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let idle = inner.idle.lock().unwrap().len();
        if idle > 0 && idle < inner.config.pool_size {
            // Workers are still pooled: let the request that just took one
            // run before the node forks a replacement next to it.
            drop(inner);
            tokio::time::sleep(REFILL_DELAY).await;
            continue_refill(&pool).await;
        } else {
            drop(inner);
            continue_refill(&pool).await;
        }
        let Some(inner) = pool.upgrade() else { return };
        let full = inner.idle.lock().unwrap().len() >= inner.config.pool_size;
        let wake = inner.refill.clone();
        drop(inner);
        if full || pool.upgrade().is_none() {
            wake.notified().await;
        } else {
            // Failed or at the cap: retry later rather than spin.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Spawns pooled workers until the pool is full, the cap is reached or a
/// spawn fails.
async fn continue_refill(pool: &std::sync::Weak<Inner>) {
    let Some(inner) = pool.upgrade() else { return };
    while inner.idle.lock().unwrap().len() < inner.config.pool_size {
        let Some(slot) = inner.reserve_slot() else { return };
        match inner.spawn_reserved(Purpose::Pool, slot).await {
            Ok(fresh) => inner.idle.lock().unwrap().push_back(fresh.keep()),
            Err(e) => {
                tracing::error!(error = %e, "could not spawn a pooled worker");
                return;
            }
        }
    }
}

/// Applies the lifetime policy: idle timeout, maximum age, maximum requests,
/// and clears workers that died on their own.
async fn control(pool: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        ticks += 1;
        if ticks % SWEEP_EVERY_TICKS == 0 && inner.jail.mode != JailMode::Off {
            // Orphans of a node that died may still have been exiting when
            // this node started.
            crate::jail::cgroup::sweep_stale(&inner.jail.cgroup_parent);
        }
        inner.prune_pooled();
        inner.end_drained();
        let cfg = &inner.config;
        let due: Vec<(Arc<str>, &'static str)> = {
            let assigned = inner.assigned.lock().unwrap();
            assigned
                .iter()
                .filter_map(|(c, w)| {
                    let idle = w.running.load(Ordering::Acquire) == 0;
                    let reason = if !w.is_alive() {
                        w.end_reason()
                    } else if w.requests.load(Ordering::Relaxed) >= cfg.max_requests && idle {
                        "max_requests"
                    } else if idle && w.idle_for() >= Duration::from_millis(cfg.idle_timeout_ms) {
                        "idle"
                    } else if idle && w.started.elapsed() >= Duration::from_millis(cfg.max_age_ms) {
                        "max_age"
                    } else {
                        return None;
                    };
                    Some((c.clone(), reason))
                })
                .collect()
        };
        for (container, reason) in due {
            inner.retire(&container, reason, Slot::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_gate_goes_with_the_last_of_its_holders_however_they_end() {
        let map = Mutex::default();
        let first = Gate::join(&map, "c");
        let second = Gate::join(&map, "c");
        assert!(Arc::ptr_eq(first.lock.as_ref().unwrap(), second.lock.as_ref().unwrap()));
        drop(first);
        assert_eq!(map.lock().unwrap().len(), 1, "still held by the second");
        drop(second);
        assert!(map.lock().unwrap().is_empty());
        // One that never had its turn (its caller gone) cleans up too.
        drop(Gate::join(&map, "d"));
        assert!(map.lock().unwrap().is_empty());
    }
}
