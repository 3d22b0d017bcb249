//! One worker process as the node sees it: spawned with its socket and the
//! snapshot, waited on until `Ready`, then fed runs. Replies are matched to
//! requests by id; anything a worker sends about an id it does not own, or
//! any frame that does not decode, ends the worker (the node never trusts a
//! worker beyond the request it owns). When the process ends, every request
//! still waiting on it fails with `worker_crashed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::egress::Egress;
use crate::engine::fetch::{AbortOnDrop, FetchError, FetchRequest, RequestHead};
use crate::engine::{Code, Context, Error, Permit, Reply, ReplyBody};
use crate::logs::Logs;
use crate::worker::channel::Channel;
use crate::worker::protocol::{self, FromWorker, NodeCodec, ToWorker};
use crate::worker::Spec;

use super::zygote::{Child, Spawned, Zygote};

/// Fetches one worker may have in flight at the node.
const MAX_FETCHES: usize = 64;

/// Bytes of frames the node may have queued for one worker that has not
/// read them yet (see [`Outbox`]); past it, the worker is ended.
const MAX_BACKLOG: usize = 64 * 1024 * 1024;

/// The node's side of a worker's frame queue, counting the bytes waiting
/// in it (by [`weight`]) until the writer takes them.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<ToWorker>,
    queued: Arc<AtomicUsize>,
}

/// The worker's frame writer has ended (the worker is gone or going).
#[derive(Debug)]
struct WriterGone;

impl Outbox {
    fn new() -> (Outbox, mpsc::UnboundedReceiver<ToWorker>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox { tx, queued: Arc::default() }, rx)
    }

    /// Queues `msg`; `Err` once the worker's writer is gone.
    fn send(&self, msg: ToWorker) -> Result<(), WriterGone> {
        self.queued.fetch_add(weight(&msg), Ordering::Relaxed);
        self.tx.send(msg).map_err(|_| WriterGone)
    }

    fn taken(&self, msg: &ToWorker) {
        self.queued.fetch_sub(weight(msg), Ordering::Relaxed);
    }

    fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// About what a frame takes in memory: its variable parts and a little more.
fn weight(msg: &ToWorker) -> usize {
    64 + match msg {
        ToWorker::Run { code, req_id, .. } => code.len() + req_id.len(),
        ToWorker::Assign { container } => container.len(),
        ToWorker::FetchChunk { data, .. } => data.len(),
        ToWorker::FetchHead { result: Ok(head), .. } => head.headers.iter().map(|(k, v)| k.len() + v.len()).sum(),
        ToWorker::FetchHead { result: Err(e), .. } | ToWorker::FetchDone { result: Err(e), .. } => e.message.len(),
        _ => 0,
    }
}

/// How long a new worker has to jail itself, load the snapshot and say Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

enum Pending {
    Waiting(oneshot::Sender<Result<Reply, Error>>),
    /// With the bytes streamed so far.
    Streaming(mpsc::UnboundedSender<Result<Bytes, Error>>, u64),
}

impl Pending {
    /// Ends the request with `err`: as its answer, or where its body stops.
    fn fail(self, err: Error) {
        match self {
            Pending::Waiting(tx) => drop(tx.send(Err(err))),
            Pending::Streaming(tx, _) => drop(tx.send(Err(err))),
        }
    }
}

/// A request the node gave this worker and still waits on.
struct Owned {
    /// Its request id: the only one the worker's log lines and fetches may carry.
    req_id: Arc<str>,
    /// Fetches the worker started for it, counted here whatever the
    /// worker's own engine counted.
    fetches: u32,
    state: Pending,
    /// Its place among the worker's concurrent requests, held until the
    /// worker is done with it (its whole body streamed, or failed), not
    /// just until its head: the worker is busy until then.
    _permit: Option<Permit>,
    /// When the node stops waiting for it (wall clock limit and grace).
    deadline: tokio::time::Instant,
    /// Held while the node watches its deadline (its body streams, or its
    /// caller is gone): dropped, with this entry, it ends that watch.
    _watch: Option<oneshot::Sender<()>>,
}

/// Counts a fetch the worker says request `req_id` makes; the request it
/// names as the node knows it, or why the worker broke the protocol. The
/// worker's engine refuses a fetch past the cap or for a finished request
/// before it asks (and asks before it reports the request done), so either
/// here is a worker that no longer follows its engine.
fn count_fetch(pending: &mut HashMap<u64, Owned>, req_id: &str, limit: u32) -> Result<Arc<str>, String> {
    let Some(owned) = pending.values_mut().find(|o| *o.req_id == *req_id) else {
        return Err("fetch for no request of its own".to_owned());
    };
    owned.fetches += 1;
    if owned.fetches > limit {
        return Err(format!("more than {limit} subrequests in request {req_id}"));
    }
    Ok(owned.req_id.clone())
}

/// What a worker holds on the host for its life: a transient uid and its
/// cgroup. Released when the process has been reaped.
pub struct Lease {
    pub uid: u32,
    pub uids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    pub cgroup: Option<crate::jail::cgroup::WorkerCgroup>,
    /// The cgroup memory limit, for reporting an OOM kill.
    pub memory_mb: Option<u64>,
    /// The host-wide hold on the uid (none with the jail off).
    pub claim: Option<crate::jail::uid::Claim>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Cgroup first (its directory goes with the process), then the uid.
        self.cgroup.take();
        self.claim.take();
        self.uids.lock().unwrap().remove(&self.uid);
    }
}

struct Shared {
    pid: u32,
    lease: Mutex<Option<Lease>>,
    pending: Mutex<HashMap<u64, Owned>>,
    /// The container it serves, once assigned: what its log lines belong to.
    container: OnceLock<Arc<str>>,
    logs: Logs,
    alive: AtomicBool,
    /// Why the process ended, once it has.
    ended: Mutex<Option<String>>,
    child: Mutex<Option<Child>>,
    /// The response limit the worker was told to enforce, checked again here.
    response_bytes: u64,
    /// The subrequest limit per request, likewise.
    subrequests: u32,
    /// The wall clock limit per request, for the error of one that overran it.
    wall_ms: u64,
    /// Console bytes a second this worker may send (`logs.worker_log_rate`):
    /// a worker that ignores its engine's budgets still cannot flood the node.
    log_rate: Mutex<crate::engine::console::Rate>,
    /// Why the node killed it, if it did (see `pool::RETIRE_REASONS`).
    killed_for: OnceLock<&'static str>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropped without the I/O task having reaped it (e.g. the runtime
        // shut down): kill and reap now (dropping the child does both), so
        // the lease's cgroup can go.
        drop(self.child.get_mut().unwrap().take());
    }
}

impl Shared {
    /// Whether its cgroup (if it has one) holds no process any more.
    fn cgroup_empty(&self) -> bool {
        let lease = self.lease.lock().unwrap();
        lease.as_ref().and_then(|l| l.cgroup.as_ref()).is_none_or(|cg| cg.is_empty())
    }

    /// Kills the process. From now on it takes no request: one that finds
    /// it before its connection is seen to close gets the container's next
    /// worker, not this one's crash.
    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            child.start_kill();
        }
    }

    fn kill_for(&self, reason: &'static str) {
        let _ = self.killed_for.set(reason);
        self.kill();
    }

    fn fail_all(&self, err: &Error) {
        for (_, p) in self.pending.lock().unwrap().drain() {
            p.state.fail(err.clone());
        }
    }

    fn crashed(&self) -> Error {
        if let Some(Lease { cgroup: Some(cg), memory_mb: Some(limit_mb), .. }) = self.lease.lock().unwrap().as_ref() {
            if cg.oom_killed() {
                return Error::MemoryLimit { limit_mb: *limit_mb };
            }
        }
        let reason = self.ended.lock().unwrap().clone().unwrap_or_else(|| "connection lost".into());
        Error::WorkerCrashed { pid: self.pid, reason }
    }
}

pub struct Worker {
    pub pid: u32,
    pub started: Instant,
    /// Requests running now.
    pub running: Arc<AtomicUsize>,
    /// Requests served in all.
    pub requests: AtomicU64,
    last_used: Mutex<Instant>,
    container: Mutex<Option<Arc<str>>>,
    out: Outbox,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Worker {
    /// Starts a worker process (forked by `zygote`) and waits until it is
    /// ready to serve.
    pub async fn spawn(zygote: &Zygote, spec: &Spec, lease: Lease, egress: Egress, logs: Logs) -> Result<Arc<Worker>, Error> {
        let Spawned { mut child, channel, stderr } = zygote.fork(spec).await?;
        let pid = child.id();
        tokio::spawn(relay_stderr(stderr, pid));
        let stream = Channel::new(channel.into()).map_err(Error::internal)?;
        let mut framed = Framed::new(stream, NodeCodec::with_max_frame(protocol::max_worker_frame(spec.limits.response_bytes)));

        let refused = match tokio::time::timeout(READY_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(FromWorker::Ready { version: protocol::VERSION, jail, .. }))) => {
                let missing: Vec<_> = jail.iter().filter(|l| !l.applied).map(|l| format!("{}: {}", l.layer, l.detail)).collect();
                let required = spec.jail.mode == crate::jail::JailMode::Required;
                (required && (!missing.is_empty() || jail.len() < crate::jail::LAYERS.len()))
                    .then(|| format!("is not fully jailed: {}", missing.join("; ")))
            }
            Ok(Some(other)) => Some(format!("did not start: {other:?}")),
            Ok(None) => Some("did not start".to_owned()),
            Err(_) => Some(format!("was not ready after {READY_TIMEOUT:?}")),
        };
        if let Some(why) = refused {
            // Reaped before the lease goes, so its cgroup and uid are free
            // for real when they are handed out again.
            child.start_kill();
            let status = child.wait().await.map(describe_exit).unwrap_or_else(|e| e.to_string());
            drop(lease);
            return Err(Error::internal(format!("worker {pid} {why} ({status})")));
        }

        let log_rate = Mutex::new(crate::engine::console::Rate::new(logs.config().worker_log_rate));
        let shared = Arc::new(Shared {
            pid,
            lease: Mutex::new(Some(lease)),
            pending: Mutex::default(),
            container: OnceLock::new(),
            logs,
            alive: AtomicBool::new(true),
            ended: Mutex::default(),
            child: Mutex::new(Some(child)),
            response_bytes: spec.limits.response_bytes,
            subrequests: spec.limits.subrequests,
            wall_ms: spec.limits.wall_ms,
            log_rate,
            killed_for: OnceLock::new(),
        });
        let (out, out_rx) = Outbox::new();
        tokio::spawn(io(framed, out.clone(), out_rx, shared.clone(), egress));
        Ok(Arc::new(Worker {
            pid,
            started: Instant::now(),
            running: Arc::default(),
            requests: AtomicU64::new(0),
            last_used: Mutex::new(Instant::now()),
            container: Mutex::default(),
            out,
            shared,
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    pub fn container(&self) -> Option<Arc<str>> {
        self.container.lock().unwrap().clone()
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap().elapsed()
    }

    /// Binds this worker to `container` for the rest of its life.
    pub fn assign(&self, container: Arc<str>) -> Result<(), Error> {
        let mut slot = self.container.lock().unwrap();
        assert!(slot.is_none(), "a worker is assigned once");
        *slot = Some(container.clone());
        let _ = self.shared.container.set(container.clone());
        self.out.send(ToWorker::Assign { container: container.to_string() }).map_err(|_| self.shared.crashed())
    }

    /// Runs a request on this worker. `permit` is held until the worker is
    /// done with the request, whether or not the caller still waits. Still
    /// running at `deadline` (a streamed body, or a request its caller no
    /// longer waits for), it is failed with `wall_limit` and the worker
    /// killed; the caller waiting for the head applies the deadline itself.
    pub async fn run(&self, code: Code, context: Context, req_id: Arc<str>, permit: Permit, deadline: tokio::time::Instant) -> Result<Reply, Error> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.last_used.lock().unwrap() = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let state = Pending::Waiting(tx);
        let owned = Owned { req_id: req_id.clone(), fetches: 0, state, _permit: Some(permit), deadline, _watch: None };
        self.shared.pending.lock().unwrap().insert(id, owned);
        let msg = ToWorker::Run {
            id,
            req_id: req_id.to_string(),
            code: ByteBuf::from(code.as_bytes().to_vec()),
            context: context.into(),
        };
        if self.out.send(msg).is_err() || !self.is_alive() {
            self.shared.pending.lock().unwrap().remove(&id);
            return Err(self.shared.crashed());
        }
        let mut abandoned = Abandoned { shared: &self.shared, id, deadline, armed: true };
        let reply = rx.await.unwrap_or_else(|_| Err(self.shared.crashed()));
        abandoned.armed = false;
        reply
    }

    /// Ends the process now (SIGKILL); requests on it fail with `worker_crashed`.
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// As [`Worker::kill`], for `reason`, which its retirement is then
    /// counted under instead of `crashed`.
    pub fn kill_for(&self, reason: &'static str) {
        self.shared.kill_for(reason);
    }

    /// Why a dead worker ended, for metrics: what the node killed it for,
    /// or `crashed`.
    pub fn end_reason(&self) -> &'static str {
        self.shared.killed_for.get().copied().unwrap_or("crashed")
    }

    /// Reaped, its cgroup and uid given back (the lease goes last).
    pub fn reaped(&self) -> bool {
        self.shared.lease.lock().unwrap().is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request whose caller may stop waiting for its head (its client left):
/// then the node watches its deadline instead (see [`watch`]), so a worker
/// that never answers does not keep its permit forever.
struct Abandoned<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    deadline: tokio::time::Instant,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if let Some(owned) = self.shared.pending.lock().unwrap().get_mut(&self.id) {
            if matches!(owned.state, Pending::Waiting(_)) {
                owned._watch = Some(watch(self.shared, self.id, self.deadline));
            }
        }
    }
}

/// Moves frames between the node and one worker until either side ends.
async fn io(
    framed: Framed<Channel, NodeCodec>,
    out: Outbox,
    out_rx: mpsc::UnboundedReceiver<ToWorker>,
    shared: Arc<Shared>,
    egress: Egress,
) {
    let (sink, mut frames) = framed.split();
    // Busy: another request of this worker is still out (running, or
    // streaming its response), so its container's traffic is concurrent
    // and more frames are likely due.
    let busy = || shared.pending.lock().unwrap().len() > 1;
    let writer = protocol::write_batched(out_rx, sink, |msg| out.taken(msg), busy);
    let fetches = Arc::new(tokio::sync::Semaphore::new(MAX_FETCHES));
    let upstreams: Arc<Mutex<Upstreams>> = Arc::default();
    let reader = async {
        loop {
            let frame = frames.next().await;
            // What the node answers a worker waits in its queue until the
            // worker reads it; one that keeps sending but stops reading
            // would grow the node's memory without bound.
            if out.backlog() > MAX_BACKLOG {
                return format!("not reading its socket ({} bytes queued for it, limit {MAX_BACKLOG})", out.backlog());
            }
            match frame {
                Some(Ok(FromWorker::FetchStart { fid, req_id, head, body })) => {
                    // Policy applies here, in the node, whatever the worker
                    // says; and only for one of its running requests, within
                    // that request's subrequests, a bounded number at a time.
                    let counted = count_fetch(&mut shared.pending.lock().unwrap(), &req_id, shared.subrequests);
                    let req_id = match counted {
                        Ok(req_id) => req_id,
                        Err(violation) => return violation,
                    };
                    if let Err(violation) = start_fetch(&upstreams, &fetches, &egress, &out, Start { fid, req_id, head, body }) {
                        return violation;
                    }
                }
                Some(Ok(
                    msg @ (FromWorker::FetchBody { .. }
                    | FromWorker::FetchEnd { .. }
                    | FromWorker::FetchCredit { .. }
                    | FromWorker::FetchAbort { .. }),
                )) => {
                    if let Err(violation) = fetch_frame(&upstreams, msg) {
                        return violation;
                    }
                }
                Some(Ok(msg)) => {
                    if let Err(violation) = deliver(&shared, msg) {
                        return violation;
                    }
                }
                Some(Err(e)) if peer_gone(&e) => return "exited".to_owned(),
                Some(Err(e)) => return format!("protocol error: {e}"),
                None => return "exited".to_owned(),
            }
        }
    };
    let reason = tokio::select! {
        reason = reader => reason,
        written = writer => match written {
            Ok(()) => "node side closed".to_owned(),
            Err(e) if peer_gone(&e) => "exited".to_owned(),
            Err(e) => format!("writing to it failed: {e}"),
        },
    };
    // Its exchanges end with it, upstream connections included.
    let exchanges = std::mem::take(&mut upstreams.lock().unwrap().map);
    drop(exchanges);
    shared.alive.store(false, Ordering::Release);
    // Exited, or broke the protocol: either way it is gone for good.
    shared.kill();
    let child = shared.child.lock().unwrap().take();
    let reason = match child {
        Some(mut child) => match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) if reason == "exited" => describe_exit(status),
            _ => reason,
        },
        None => reason,
    };
    *shared.ended.lock().unwrap() = Some(reason);
    shared.fail_all(&shared.crashed());
    // Reaped: its cgroup can go, its uid is free again. What the node reaped
    // is the pid namespace's supervisor; the worker under it, killed with
    // it, may still be exiting, and a cgroup with a process in it stays.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until && !shared.cgroup_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shared.lease.lock().unwrap().take();
}

/// The worker's end of the socket closed: its exit status says why, not
/// the error the node's side got (a reset if it died with frames unread).
fn peer_gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
}

/// Hands one frame to the request it belongs to; Err ends the worker.
fn deliver(shared: &Arc<Shared>, msg: FromWorker) -> Result<(), String> {
    let mut pending = shared.pending.lock().unwrap();
    match msg {
        FromWorker::Head { id, status, .. } if !(200..=599).contains(&status) => {
            // The engine only ever answers with these; hyper would take
            // others (a 101 switches protocols) at the worker's word.
            return Err(format!("reply to request {id} with status {status}"));
        }
        FromWorker::Head { id, status, headers, body } => {
            let Some(Owned { req_id, fetches, state: Pending::Waiting(tx), _permit, deadline, .. }) = pending.remove(&id) else {
                return Err(format!("reply for request {id} it does not own"));
            };
            // The worker's engine enforces the response limit; a reply past
            // it means the worker no longer does what it should.
            let head: u64 = headers.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
            let sent = body.as_ref().map_or(0, |b| b.len() as u64);
            if head.max(sent) > shared.response_bytes {
                return Err(format!("reply of {head} + {sent} bytes past the response limit"));
            }
            let body = match body {
                Some(b) => ReplyBody::Full(Bytes::from(b.into_vec())),
                None => {
                    let (stream_tx, stream_rx) = mpsc::unbounded_channel();
                    let state = Pending::Streaming(stream_tx, sent);
                    let _watch = Some(watch(shared, id, deadline));
                    pending.insert(id, Owned { req_id, fetches, state, _permit, deadline, _watch });
                    ReplyBody::Stream(stream_rx)
                }
            };
            let _ = tx.send(Ok(Reply { status, headers, body }));
        }
        FromWorker::Chunk { id, data } => match pending.get_mut(&id).map(|o| &mut o.state) {
            Some(Pending::Streaming(tx, sent)) => {
                *sent += data.len() as u64;
                if *sent > shared.response_bytes {
                    return Err(format!("streamed {sent} bytes past the response limit"));
                }
                drop(tx.send(Ok(Bytes::from(data.into_vec()))));
            }
            _ => return Err(format!("chunk for request {id} it does not own")),
        },
        FromWorker::End { id } => match pending.remove(&id).map(|o| o.state) {
            Some(Pending::Streaming(..)) => {}
            _ => return Err(format!("end of request {id} it does not own")),
        },
        FromWorker::Failed { id, error } => {
            let err = match protocol::error_from_bytes(&error) {
                // What only the node can know, a worker cannot claim.
                Error::WorkerCrashed { .. } | Error::NoWorker { .. } | Error::BodyLimit { .. } | Error::BodyTimeout { .. } => {
                    return Err("reported an error only the node can report".to_owned());
                }
                err => err,
            };
            match pending.remove(&id) {
                Some(owned) => owned.state.fail(err),
                None => return Err(format!("failure of request {id} it does not own")),
            }
        }
        FromWorker::Log { req_id, level, msg } => {
            // Attributed by the node: the container it assigned, the
            // request only if it is one of this worker's own.
            let Some(container) = shared.container.get() else { return Ok(()) };
            let cost = msg.len().saturating_add(crate::engine::console::LINE_COST) as u64;
            if !shared.log_rate.lock().unwrap().take(cost) {
                shared.logs.stats().lost(crate::logs::Loss::WorkerRate, 1);
                return Ok(());
            }
            let req_id = pending.values().find(|o| *o.req_id == *req_id).map(|o| o.req_id.clone());
            shared.logs.worker_line(container.clone(), req_id, shared.pid, level, &msg);
        }
        FromWorker::Overrun { error } => {
            // Its last frame: the oldest request (the one the figure is
            // measured on) fails with the limit, the others as recycled,
            // and the worker, exiting already, is done.
            let err = match protocol::error_from_bytes(&error) {
                err @ (Error::CpuLimit { .. } | Error::MemoryLimit { .. }) => err,
                _ => return Err("reported an overrun of something other than a limit".to_owned()),
            };
            let recycled = Error::IsolateRecycled { reason: err.code().to_owned() };
            let oldest = pending.keys().min().copied();
            for (id, owned) in pending.drain() {
                owned.state.fail(if Some(id) == oldest { err.clone() } else { recycled.clone() });
            }
            return Err(format!("ended itself: {err}"));
        }
        FromWorker::Ready { .. } => return Err("second Ready".to_owned()),
        FromWorker::FetchStart { .. }
        | FromWorker::FetchBody { .. }
        | FromWorker::FetchEnd { .. }
        | FromWorker::FetchCredit { .. }
        | FromWorker::FetchAbort { .. } => unreachable!("handled by io"),
    }
    Ok(())
}

/// Fails request `id` with `wall_limit` and kills the worker if the request
/// is still running at `deadline`; ends early when the returned sender is
/// dropped (with the request's entry: the request is over, or its head
/// came and a new watch took over for its body).
fn watch(shared: &Arc<Shared>, id: u64, deadline: tokio::time::Instant) -> oneshot::Sender<()> {
    let (watch, over) = oneshot::channel::<()>();
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        tokio::select! {
            _ = over => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        let Some(overran) = shared.pending.lock().unwrap().remove(&id) else { return };
        tracing::warn!(pid = shared.pid, "worker overran the wall-clock limit; killing it");
        overran.state.fail(Error::WallLimit { limit_ms: shared.wall_ms });
        shared.kill_for("wall_limit");
    });
    watch
}

/// A worker's egress exchanges running at the node.
#[derive(Default)]
struct Upstreams {
    map: HashMap<u64, Upstream>,
    /// The highest exchange id seen: ids only increase, so a frame about a
    /// lower one that is gone crossed its end, and a higher one is a lie.
    last: Option<u64>,
}

struct Upstream {
    /// The request body on its way upstream, until its end.
    upload: Option<mpsc::UnboundedSender<Option<Bytes>>>,
    /// Request body bytes received and not yet taken by the connection.
    unacked: Arc<AtomicUsize>,
    uploaded: usize,
    /// Response body bytes the worker will take now (its credit).
    credit: Arc<tokio::sync::Semaphore>,
    /// Response body bytes sent and not yet credited.
    outstanding: Arc<AtomicUsize>,
    /// The task streaming the response; aborted with this entry.
    task: AbortOnDrop,
    /// One of the worker's fetches in flight, returned with this entry.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Upstreams {
    /// Whether a frame about `fid`, which is not running, crossed its end.
    fn ended(&self, fid: u64) -> Result<(), String> {
        match self.last {
            Some(last) if fid <= last => Ok(()),
            _ => Err(format!("fetch frame for exchange {fid} it never started")),
        }
    }
}

/// A `FetchStart` counted against one of the worker's requests.
struct Start {
    fid: u64,
    req_id: Arc<str>,
    head: RequestHead,
    body: bool,
}

/// `FetchStart`: the exchange goes to the egress; a task streams its
/// response back within the worker's credit.
fn start_fetch(
    upstreams: &Arc<Mutex<Upstreams>>,
    fetches: &Arc<tokio::sync::Semaphore>,
    egress: &Egress,
    out: &Outbox,
    Start { fid, req_id, head, body }: Start,
) -> Result<(), String> {
    let mut table = upstreams.lock().unwrap();
    if table.last.is_some_and(|last| fid <= last) {
        return Err(format!("reused exchange id {fid}"));
    }
    table.last = Some(fid);
    let Ok(permit) = fetches.clone().try_acquire_owned() else {
        let result = Err(FetchError::new("egress_limit", format!("more than {MAX_FETCHES} fetches in flight")));
        let _ = out.send(ToWorker::FetchHead { fid, result });
        return Ok(());
    };
    let unacked = Arc::new(AtomicUsize::new(0));
    let (upload, body) = if body {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = WorkerUpload { rx, fid, out: out.clone(), unacked: unacked.clone(), done: false };
        (Some(tx), Some(Box::pin(stream) as crate::engine::fetch::BodyStream))
    } else {
        (None, None)
    };
    let exchange = egress.start(FetchRequest { req_id, head, body });
    let credit = Arc::new(tokio::sync::Semaphore::new(protocol::FETCH_WINDOW));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(respond(fid, exchange, out.clone(), credit.clone(), outstanding.clone(), upstreams.clone(), egress.timeout()));
    let task = AbortOnDrop::new(task.abort_handle());
    table.map.insert(fid, Upstream { upload, unacked, uploaded: 0, credit, outstanding, task, _permit: permit });
    Ok(())
}

/// Streams one exchange's response to the worker: the head, then body
/// chunks as the worker's credit allows, then how it ended.
async fn respond(
    fid: u64,
    exchange: crate::egress::Exchange,
    out: Outbox,
    credit: Arc<tokio::sync::Semaphore>,
    outstanding: Arc<AtomicUsize>,
    upstreams: Arc<Mutex<Upstreams>>,
    timeout: Duration,
) {
    // The egress ends the exchange at its timeout; a worker that stops
    // crediting (and so reading) does not hold this task past it either.
    let deadline = tokio::time::Instant::now() + timeout;
    let last = match exchange.response().await {
        Ok(response) => {
            let _ = out.send(ToWorker::FetchHead { fid, result: Ok(response.head) });
            let mut body = response.body;
            let forward = async {
                while let Some(chunk) = body.next().await {
                    for piece in chunk?.chunks(protocol::FETCH_CHUNK) {
                        let Ok(permit) = credit.acquire_many(piece.len() as u32).await else { return Ok(()) };
                        permit.forget();
                        outstanding.fetch_add(piece.len(), Ordering::AcqRel);
                        let data = ByteBuf::from(piece.to_vec());
                        if out.send(ToWorker::FetchChunk { fid, data }).is_err() {
                            return Ok(());
                        }
                    }
                }
                Ok(())
            };
            let result = tokio::time::timeout_at(deadline, forward).await.unwrap_or_else(|_| {
                let ms = timeout.as_millis();
                Err(FetchError::new("egress_timeout", format!("the response was not read within {ms} ms")).with_syscode("ETIMEDOUT"))
            });
            ToWorker::FetchDone { fid, result }
        }
        Err(e) => ToWorker::FetchHead { fid, result: Err(e) },
    };
    // Over: forgotten first (without aborting this very task), then told.
    if let Some(mut up) = upstreams.lock().unwrap().map.remove(&fid) {
        up.task.disarm();
    }
    let _ = out.send(last);
}

/// A request body frame, an end, a credit or an abort from the worker.
fn fetch_frame(upstreams: &Mutex<Upstreams>, msg: FromWorker) -> Result<(), String> {
    let mut table = upstreams.lock().unwrap();
    match msg {
        // A worker never sends an empty chunk or a zero credit: each would
        // cost the node a queued frame for nothing, without limit.
        FromWorker::FetchBody { fid, data } if data.is_empty() => return Err(format!("empty request body chunk of exchange {fid}")),
        FromWorker::FetchCredit { fid, bytes: 0 } => return Err(format!("zero credit for exchange {fid}")),
        FromWorker::FetchBody { fid, data } => {
            let Some(up) = table.map.get_mut(&fid) else { return table.ended(fid) };
            let Some(upload) = &up.upload else { return Err(format!("request body of exchange {fid} past its end")) };
            let unacked = up.unacked.fetch_add(data.len(), Ordering::AcqRel) + data.len();
            if unacked > protocol::FETCH_WINDOW {
                return Err(format!("sent {unacked} request body bytes of exchange {fid} past its window"));
            }
            up.uploaded += data.len();
            if up.uploaded > crate::engine::fetch::MAX_REQUEST_BODY {
                return Err(format!("request body of exchange {fid} past the limit"));
            }
            // Gone when the connection no longer reads it: the exchange failed.
            let _ = upload.send(Some(Bytes::from(data.into_vec())));
        }
        FromWorker::FetchEnd { fid } => {
            let Some(up) = table.map.get_mut(&fid) else { return table.ended(fid) };
            let Some(upload) = up.upload.take() else { return Err(format!("second end of exchange {fid}'s request body")) };
            let _ = upload.send(None);
        }
        FromWorker::FetchCredit { fid, bytes } => {
            let Some(up) = table.map.get_mut(&fid) else { return table.ended(fid) };
            let bytes = bytes as usize;
            let credited = up.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(bytes));
            if credited.is_err() {
                return Err(format!("credit for {bytes} bytes of exchange {fid} it was never sent"));
            }
            up.credit.add_permits(bytes);
        }
        FromWorker::FetchAbort { fid } => {
            // Its task and the upstream connection go with the entry.
            if table.map.remove(&fid).is_none() {
                return table.ended(fid);
            }
        }
        _ => unreachable!("not an exchange frame"),
    }
    Ok(())
}

/// A request body arriving from a worker, as the egress takes it: every
/// chunk taken is credited back to the worker.
struct WorkerUpload {
    rx: mpsc::UnboundedReceiver<Option<Bytes>>,
    fid: u64,
    out: Outbox,
    unacked: Arc<AtomicUsize>,
    done: bool,
}

impl futures::Stream for WorkerUpload {
    type Item = Result<Bytes, FetchError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Some(data))) => {
                self.unacked.fetch_sub(data.len(), Ordering::AcqRel);
                let _ = self.out.send(ToWorker::FetchCredit { fid: self.fid, bytes: data.len() as u32 });
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                // The worker aborted or is gone: never a short body sent as whole.
                self.done = true;
                Poll::Ready(Some(Err(FetchError::new("aborted", "the request body was abandoned"))))
            }
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exited with status {code}"),
        _ => status.to_string(),
    }
}

/// Longest line of a worker's (or the zygote's) stderr the node relays;
/// the rest of a longer line is dropped. A worker writes one tracing record
/// per line there, far shorter; guest output travels over the protocol.
const RELAYED_LINE_BYTES: usize = 16 * 1024;

/// Copies a worker's log lines to the node's stderr, whole lines at a time
/// so records of different workers never interleave mid-line.
///
/// The worker is not trusted with the node's log: each line is bounded,
/// and every relayed record carries `worker_pid`, set here, so nothing a
/// worker writes can pass for one of the node's own records. A line that is
/// not one JSON object (or was cut) is relayed as the `line` of a record.
pub(super) async fn relay_stderr(stderr: impl tokio::io::AsyncRead + Unpin, pid: u32) {
    use std::io::Write;
    relay_lines(stderr, pid, |record| drop(writeln!(std::io::stderr().lock(), "{record}"))).await;
}

/// [`relay_stderr`]'s reading: each bounded line of `stderr` as a record.
async fn relay_lines(stderr: impl tokio::io::AsyncRead + Unpin, pid: u32, mut emit: impl FnMut(serde_json::Value)) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let Ok(n) = (&mut reader).take(RELAYED_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf).await else { return };
        if n == 0 {
            return;
        }
        let cut = buf.last() != Some(&b'\n') && buf.len() > RELAYED_LINE_BYTES;
        if cut {
            buf.truncate(RELAYED_LINE_BYTES);
            // The rest of the line, up to its newline, goes unread into the void.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(RELAYED_LINE_BYTES as u64).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        emit(relayed_record(&buf, cut, pid));
    }
}

/// One relayed stderr line as a node log record (see [`relay_stderr`]).
fn relayed_record(line: &[u8], cut: bool, pid: u32) -> serde_json::Value {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    let parsed = if cut { None } else { serde_json::from_str::<serde_json::Value>(text).ok() };
    match parsed {
        Some(serde_json::Value::Object(mut record)) => {
            record.insert("worker_pid".into(), pid.into());
            serde_json::Value::Object(record)
        }
        _ => serde_json::json!({ "level": "INFO", "message": "worker output", "worker_pid": pid, "line": text, "cut": cut }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relayed_worker_lines_are_bounded_and_marked_as_the_workers() {
        let long = "x".repeat(RELAYED_LINE_BYTES * 3);
        let input = format!(
            "{{\"level\":\"WARN\",\"message\":\"worker retired\",\"container\":\"victim\",\"worker_pid\":1}}\nplain text\n{long}\n{{\"message\":\"after\"}}\nno newline at the end"
        );
        let mut records = Vec::new();
        relay_lines(input.as_bytes(), 42, |r| records.push(r)).await;
        assert_eq!(records.len(), 5, "{records:?}");
        // A worker's JSON record passes, but says whose it is: a worker
        // cannot pass for the node or for another worker.
        assert_eq!(records[0]["message"], "worker retired");
        assert_eq!(records[0]["worker_pid"], 42);
        assert_eq!((records[1]["line"].as_str(), records[1]["worker_pid"].as_u64()), (Some("plain text"), Some(42)));
        // A line past the bound is cut, and the rest of it dropped, not
        // read as lines of its own.
        assert_eq!(records[2]["line"].as_str().map(str::len), Some(RELAYED_LINE_BYTES));
        assert_eq!(records[2]["cut"], true);
        assert_eq!(records[3]["message"], "after");
        assert_eq!(records[4]["line"], "no newline at the end");
    }

    fn upstream(upload: bool) -> (Upstream, mpsc::UnboundedReceiver<Option<Bytes>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = AbortOnDrop::new(tokio::spawn(std::future::pending::<()>()).abort_handle());
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let up = Upstream {
            upload: upload.then_some(tx),
            unacked: Arc::default(),
            uploaded: 0,
            credit: Arc::new(tokio::sync::Semaphore::new(0)),
            outstanding: Arc::default(),
            task,
            _permit: permit,
        };
        (up, rx)
    }

    fn body(fid: u64, n: usize) -> FromWorker {
        FromWorker::FetchBody { fid, data: ByteBuf::from(vec![b'x'; n]) }
    }

    #[tokio::test]
    async fn request_bodies_stay_within_their_window_limit_and_end() {
        let table = Mutex::new(Upstreams::default());
        let (up, mut rx) = upstream(true);
        let unacked = up.unacked.clone();
        table.lock().unwrap().map.insert(1, up);
        table.lock().unwrap().last = Some(1);
        assert!(fetch_frame(&table, body(1, protocol::FETCH_WINDOW)).is_ok());
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), protocol::FETCH_WINDOW);
        // Not yet taken upstream, so not yet credited: one byte more is a lie.
        assert!(fetch_frame(&table, body(1, 1)).unwrap_err().contains("window"));
        // Taken: the window is open again, up to the body limit.
        unacked.store(0, Ordering::Release);
        let mut sent = protocol::FETCH_WINDOW;
        while sent + protocol::FETCH_WINDOW <= crate::engine::fetch::MAX_REQUEST_BODY {
            assert!(fetch_frame(&table, body(1, protocol::FETCH_WINDOW)).is_ok());
            unacked.store(0, Ordering::Release);
            sent += protocol::FETCH_WINDOW;
        }
        assert!(fetch_frame(&table, body(1, protocol::FETCH_WINDOW)).unwrap_err().contains("limit"));

        let (up, mut rx) = upstream(true);
        table.lock().unwrap().map.insert(2, up);
        table.lock().unwrap().last = Some(2);
        assert!(fetch_frame(&table, FromWorker::FetchEnd { fid: 2 }).is_ok());
        assert_eq!(rx.recv().await.unwrap(), None);
        assert!(fetch_frame(&table, FromWorker::FetchEnd { fid: 2 }).is_err());
        assert!(fetch_frame(&table, body(2, 1)).unwrap_err().contains("past its end"));
    }

    #[tokio::test]
    async fn credit_is_only_for_bytes_sent() {
        let table = Mutex::new(Upstreams::default());
        let (up, _rx) = upstream(false);
        let (outstanding, credit) = (up.outstanding.clone(), up.credit.clone());
        table.lock().unwrap().map.insert(1, up);
        table.lock().unwrap().last = Some(1);
        assert!(fetch_frame(&table, FromWorker::FetchCredit { fid: 1, bytes: 1 }).is_err());
        outstanding.store(100, Ordering::Release);
        assert!(fetch_frame(&table, FromWorker::FetchCredit { fid: 1, bytes: 60 }).is_ok());
        assert_eq!(credit.available_permits(), 60);
        assert!(fetch_frame(&table, FromWorker::FetchCredit { fid: 1, bytes: 41 }).is_err());
        // A request without a body takes none.
        assert!(fetch_frame(&table, body(1, 1)).is_err());
    }

    fn owned(req_id: &str) -> Owned {
        let deadline = tokio::time::Instant::now();
        Owned { req_id: req_id.into(), fetches: 0, state: Pending::Waiting(oneshot::channel().0), _permit: None, deadline, _watch: None }
    }

    #[test]
    fn fetches_count_against_the_request_they_name_up_to_its_limit() {
        let mut pending = HashMap::from([(1, owned("a")), (2, owned("b"))]);
        for _ in 0..3 {
            assert_eq!(count_fetch(&mut pending, "a", 3).as_deref(), Ok("a"));
        }
        assert_eq!(count_fetch(&mut pending, "a", 3), Err("more than 3 subrequests in request a".to_owned()));
        // Another request has its own count.
        assert_eq!(count_fetch(&mut pending, "b", 3).as_deref(), Ok("b"));
    }

    #[test]
    fn a_fetch_for_a_request_the_worker_was_not_given_is_a_violation() {
        let mut pending = HashMap::from([(1, owned("a"))]);
        assert!(count_fetch(&mut pending, "someone-else", 50).is_err());
        assert!(count_fetch(&mut HashMap::new(), "a", 50).is_err());
    }

    #[test]
    fn the_backlog_counts_frames_until_the_writer_takes_them() {
        let (out, mut rx) = Outbox::new();
        out.send(ToWorker::FetchChunk { fid: 1, data: ByteBuf::from(vec![0; 1000]) }).unwrap();
        out.send(ToWorker::Shutdown).unwrap();
        assert_eq!(out.backlog(), 1064 + 64);
        let first = rx.try_recv().unwrap();
        out.taken(&first);
        assert_eq!(out.backlog(), 64);
    }

    #[tokio::test]
    async fn empty_chunks_and_zero_credits_end_the_worker() {
        let table = Mutex::new(Upstreams::default());
        let (up, mut rx) = upstream(true);
        up.outstanding.store(100, Ordering::Release);
        table.lock().unwrap().map.insert(1, up);
        table.lock().unwrap().last = Some(1);
        assert!(fetch_frame(&table, body(1, 0)).unwrap_err().contains("empty"));
        assert!(fetch_frame(&table, FromWorker::FetchCredit { fid: 1, bytes: 0 }).unwrap_err().contains("zero credit"));
        // Nothing was queued for the upstream.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn frames_of_ended_exchanges_are_dropped_and_of_unknown_ones_refused() {
        let table = Mutex::new(Upstreams::default());
        let (up, _rx) = upstream(true);
        table.lock().unwrap().map.insert(3, up);
        table.lock().unwrap().last = Some(3);
        assert!(fetch_frame(&table, FromWorker::FetchAbort { fid: 3 }).is_ok());
        assert!(table.lock().unwrap().map.is_empty());
        // Crossed the abort (or the end) on the wire: ignored.
        for msg in [body(3, 1), FromWorker::FetchEnd { fid: 2 }, FromWorker::FetchCredit { fid: 1, bytes: 9 }, FromWorker::FetchAbort { fid: 3 }] {
            assert!(fetch_frame(&table, msg).is_ok());
        }
        // Never started: a worker making things up.
        assert!(fetch_frame(&table, body(4, 1)).is_err());
        assert!(fetch_frame(&table, FromWorker::FetchAbort { fid: 4 }).is_err());
        let (out, _out_rx) = Outbox::new();
        let egress = Egress::new(&Default::default(), vec![]).unwrap();
        let fetches = Arc::new(tokio::sync::Semaphore::new(1));
        let upstreams = Arc::new(table);
        let head = crate::engine::fetch::RequestHead { url: "http://127.0.0.1:9/".into(), method: "GET".into(), headers: vec![] };
        let reused = start_fetch(&upstreams, &fetches, &egress, &out, Start { fid: 3, req_id: "a".into(), head, body: false });
        assert!(reused.unwrap_err().contains("reused"));
    }
}
