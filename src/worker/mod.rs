//! The worker: the process that runs one container's code. The node has
//! the zygote fork it (users never start one), it jails itself, maps the
//! startup snapshot and code cache the node handed down ([`image`]),
//! creates its isolate, says
//! `Ready`, and then serves exactly one container until the node shuts it
//! down or kills it.
//!
//! It trusts nothing it receives beyond the protocol, and the node trusts
//! nothing it says beyond the request it owns (see `pool`).

pub(crate) mod channel;
pub mod code_cache;
pub mod image;
pub mod protocol;
pub mod zygote;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::engine::console::{ConsoleLine, ConsoleSink};
use crate::engine::fetch::{FetchError, FetchFuture, FetchRequest, FetchResponse, Fetcher, ResponseHead};
use crate::engine::host::{self, Job, Permit};
use crate::engine::{self, Code, Context, Error, Limits, Reply, ReplyBody};
use protocol::{FromWorker, ToWorker, WorkerCodec};

/// What the node tells a worker (through the zygote) before it starts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub limits: Limits,
    pub jail: crate::jail::JailSpec,
    /// Longest console line sent to the node; longer ones are cut and marked.
    pub log_line_bytes: usize,
    /// What to `require` while pooled and idle, before any assignment
    /// (`workers.warm_node_builtins`, `workers.preload_modules`).
    pub warm_up: Vec<String>,
    /// Waits in the pool: runs a warm-up request before `Ready`. One
    /// spawned for a waiting request skips it: that request's run warms
    /// the same paths, and making it wait for both cost the pool miss
    /// about 0.3 ms.
    pub pooled: bool,
}

/// The worker's main, in a child just forked by the zygote. The unix
/// socket to the node is on stdin, the node's [`image`] (snapshot and code
/// cache) on stdout, the pipe the node relays as its log on stderr.
pub fn main(node_pid: i32, spec: Spec) -> anyhow::Result<()> {
    bind_to_node(node_pid)?;
    let (socket, image) = take_channels()?;
    // First, while this process is one thread and has read nothing from
    // the node: every thread created after this (V8's, tokio's) inherits it.
    let jail = crate::jail::apply(&spec.jail).map_err(anyhow::Error::msg)?;
    let image = image::map(image)?;
    engine::install_snapshot(image.snapshot, &spec.limits);
    engine::code_cache::install(image.code_cache);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(socket, spec, jail))
}

/// The worker (and the zygote) dies with its node, never outlives it.
fn bind_to_node(node_pid: i32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("parent-death signal")?;
    // The node may have died before the signal was armed.
    anyhow::ensure!(nix::unistd::getppid().as_raw() == node_pid, "the node (pid {node_pid}) is gone");
    Ok(())
}

/// Moves what the node passed on stdin and stdout (for a worker: its
/// socket and the image) off them, points those at /dev/null, and closes
/// anything else a careless embedder let leak.
fn take_channels() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::AsFd;
    // SAFETY: closes descriptors nothing in this process has taken yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().context("descriptor on stdin")?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().context("descriptor on stdout")?;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").context("/dev/null")?;
    for stdio in [0, 1] {
        // SAFETY: replaces stdin/stdout, whose originals were duplicated
        // above. The result is stdin/stdout itself: kept open (a closed
        // 0 or 1 would be the next descriptor anything opens).
        let _ = std::os::fd::IntoRawFd::into_raw_fd(unsafe { nix::unistd::dup2_raw(&null, stdio) }?);
    }
    Ok((stdin, stdout))
}

async fn serve(socket: OwnedFd, spec: Spec, jail: Vec<crate::jail::LayerReport>) -> anyhow::Result<()> {
    let mut channel = channel::Channel::new(socket)?;
    end_on_overrun(channel.last_words()?);
    let framed = Framed::new(channel, WorkerCodec::default());
    let (sink, mut frames) = framed.split();

    let (out, out_rx) = mpsc::unbounded_channel::<FromWorker>();
    // On this one-thread runtime a woken task waits its turn behind those
    // already woken, so answers batch up without waiting for one.
    let writer = tokio::spawn(protocol::write_batched(out_rx, sink, |_| {}, || false));

    let (jobs, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let table = FetchTable { out: out.clone(), pending: Default::default(), next: Default::default() };
    let fetcher = Arc::new(NodeFetcher { inner: Arc::new(table) });
    let isolate_spec = engine::IsolateSpec {
        limits: spec.limits,
        idle_wait: Default::default(),
        stats: Default::default(),
        fetcher: fetcher.clone(),
        console: Arc::new(NodeConsole { out: out.clone(), line_bytes: spec.log_line_bytes }),
    };
    let (warm_up_list, pooled) = (spec.warm_up, spec.pooled);
    let host = host::serve(isolate_spec, jobs_rx, Some(ready_tx));
    let node = async move {
        ready_rx.await.context("isolate host ended")?.context("creating the isolate")?;
        if pooled {
            warm_up(&jobs).await?;
        }
        out.send(FromWorker::Ready { version: protocol::VERSION, pid: std::process::id(), jail })?;
        let mut container: Option<Arc<str>> = None;
        // Idle in the pool, unassigned: load the Node built-ins most code
        // requires. Not before Ready, where a pool miss would wait for it.
        let node_warm_up = tokio::time::sleep(NODE_WARM_UP_AFTER);
        tokio::pin!(node_warm_up);
        let mut warmed = warm_up_list.is_empty();
        loop {
            let msg = tokio::select! {
                msg = frames.next() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
                () = &mut node_warm_up, if !warmed => {
                    warmed = true;
                    if container.is_none() {
                        warm_up_node(&jobs, &warm_up_list)?;
                    }
                    continue;
                }
            };
            match msg.context("reading from the node")? {
                ToWorker::Assign { container: c } if container.is_none() => container = Some(c.into()),
                ToWorker::Assign { .. } => anyhow::bail!("a worker serves one container for life"),
                ToWorker::Run { id, req_id, code, context } => {
                    let container = container.clone().context("run before assignment")?;
                    run(&jobs, &out, container, id, req_id, code, context)?;
                }
                ToWorker::Shutdown => break,
                msg @ (ToWorker::FetchHead { .. }
                | ToWorker::FetchChunk { .. }
                | ToWorker::FetchDone { .. }
                | ToWorker::FetchCredit { .. }) => fetcher.deliver(msg),
            }
        }
        // Node gone or shutdown: let the host finish what runs, then exit.
        drop(jobs);
        anyhow::Ok(())
    };
    let (node, ()) = tokio::join!(node, host);
    drop(writer);
    node
}

/// How a worker ends when its isolate thread cannot be stopped (see
/// `engine::on_overrun`): it tells the node which limit fired, with the
/// figure, and exits at once. The isolate thread is still in a native
/// built-in, and the event loop with it: nothing else would answer.
fn end_on_overrun(last_words: channel::LastWords) {
    use tokio_util::codec::Encoder as _;
    let last_words = std::sync::Mutex::new(Some(last_words));
    engine::on_overrun(move |kill, used_ms| {
        let error = match kill {
            engine::Kill::Cpu { limit_ms, .. } => Error::CpuLimit { limit_ms, used_ms },
            engine::Kill::Memory { limit_mb } => Error::MemoryLimit { limit_mb },
        };
        let mut frame = bytes::BytesMut::new();
        let overrun = FromWorker::Overrun { error: protocol::error_bytes(&error) };
        let said = WorkerCodec::default().encode(overrun, &mut frame).is_ok()
            && last_words.lock().unwrap_or_else(|p| p.into_inner()).take().is_some_and(|words| words.say(&frame));
        tracing::error!(code = error.code(), said, "{error}: the isolate could not be stopped; the worker ends");
        // SAFETY: ends the process without unwinding or running destructors,
        // which would wait for the isolate thread.
        unsafe { libc::_exit(OVERRUN_EXIT) }
    });
}

/// A worker's exit status after [`end_on_overrun`].
pub const OVERRUN_EXIT: i32 = 86;

/// Guest egress in a worker: frames to the node, whose egress decides and
/// connects. The request body goes out as the node grants credit; response
/// chunks are acknowledged as the guest reads them (see `protocol`).
struct NodeFetcher {
    inner: Arc<FetchTable>,
}

struct FetchTable {
    out: mpsc::UnboundedSender<FromWorker>,
    pending: std::sync::Mutex<std::collections::HashMap<u64, PendingFetch>>,
    next: std::sync::atomic::AtomicU64,
}

/// An exchange the node has not finished.
struct PendingFetch {
    head: Option<oneshot::Sender<Result<ResponseHead, FetchError>>>,
    /// Response chunks for the guest: bounded by the credit this worker
    /// grants, not by the channel.
    body: mpsc::UnboundedSender<Piece>,
    /// Request body bytes the node will take now.
    credit: Arc<tokio::sync::Semaphore>,
}

enum Piece {
    Data(Bytes),
    Done(Result<(), FetchError>),
}

fn node_gone() -> FetchError {
    FetchError::new("egress_failed", "node connection closed")
}

impl FetchTable {
    /// Forgets exchange `fid`; true if it was still pending.
    fn remove(&self, fid: u64) -> bool {
        let Some(p) = self.pending.lock().unwrap().remove(&fid) else { return false };
        // An upload waiting for credit stops.
        p.credit.close();
        true
    }

    /// Cancels exchange `fid` at the node, unless it is over already.
    fn abort(&self, fid: u64) {
        if self.remove(fid) {
            let _ = self.out.send(FromWorker::FetchAbort { fid });
        }
    }

    fn is_pending(&self, fid: u64) -> bool {
        self.pending.lock().unwrap().contains_key(&fid)
    }
}

impl NodeFetcher {
    /// A frame from the node about an exchange; frames about exchanges
    /// that are over (they crossed an abort) are dropped.
    fn deliver(&self, msg: ToWorker) {
        let table = &self.inner;
        match msg {
            ToWorker::FetchHead { fid, result } => {
                let failed = result.is_err();
                if failed {
                    let Some(mut p) = table.pending.lock().unwrap().remove(&fid) else { return };
                    p.credit.close();
                    if let Some(tx) = p.head.take() {
                        let _ = tx.send(result);
                    }
                    return;
                }
                if let Some(tx) = table.pending.lock().unwrap().get_mut(&fid).and_then(|p| p.head.take()) {
                    let _ = tx.send(result);
                }
            }
            ToWorker::FetchChunk { fid, data } => {
                if let Some(p) = table.pending.lock().unwrap().get(&fid) {
                    let _ = p.body.send(Piece::Data(Bytes::from(data.into_vec())));
                }
            }
            ToWorker::FetchDone { fid, result } => {
                if let Some(p) = table.pending.lock().unwrap().remove(&fid) {
                    p.credit.close();
                    let _ = p.body.send(Piece::Done(result));
                }
            }
            ToWorker::FetchCredit { fid, bytes } => {
                if let Some(p) = table.pending.lock().unwrap().get(&fid) {
                    p.credit.add_permits(bytes as usize);
                }
            }
            _ => {}
        }
    }
}

impl Fetcher for NodeFetcher {
    fn fetch(&self, request: FetchRequest) -> FetchFuture {
        let table = self.inner.clone();
        let fid = table.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::unbounded_channel();
        let credit = Arc::new(tokio::sync::Semaphore::new(protocol::FETCH_WINDOW));
        let pending = PendingFetch { head: Some(head_tx), body: body_tx, credit: credit.clone() };
        table.pending.lock().unwrap().insert(fid, pending);
        let start = FromWorker::FetchStart { fid, req_id: request.req_id.to_string(), head: request.head, body: request.body.is_some() };
        if table.out.send(start).is_err() {
            table.remove(fid);
            return Box::pin(async { Err(node_gone()) });
        }
        if let Some(body) = request.body {
            tokio::spawn(upload(table.clone(), fid, body, credit));
        }
        // Dropped before the head arrives, or with the body unread: aborted.
        let guard = AbortGuard { table, fid };
        Box::pin(async move {
            let head = head_rx.await.unwrap_or_else(|_| Err(node_gone()))?;
            Ok(FetchResponse { head, body: Box::pin(NodeBody { rx: body_rx, guard, done: false }) })
        })
    }
}

/// Sends a request body to the node, a chunk at a time, as credit allows.
async fn upload(table: Arc<FetchTable>, fid: u64, mut body: crate::engine::fetch::BodyStream, credit: Arc<tokio::sync::Semaphore>) {
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            // The guest failed its own body: the exchange is abandoned.
            return table.abort(fid);
        };
        for piece in chunk.chunks(protocol::FETCH_CHUNK) {
            // Closed when the exchange is over.
            let Ok(permit) = credit.acquire_many(piece.len() as u32).await else { return };
            permit.forget();
            let data = ByteBuf::from(piece.to_vec());
            if !table.is_pending(fid) || table.out.send(FromWorker::FetchBody { fid, data }).is_err() {
                return;
            }
        }
    }
    if table.is_pending(fid) {
        let _ = table.out.send(FromWorker::FetchEnd { fid });
    }
}

struct AbortGuard {
    table: Arc<FetchTable>,
    fid: u64,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.table.abort(self.fid);
    }
}

/// A response body arriving from the node; each chunk the guest takes is
/// credited back, so the node sends more.
struct NodeBody {
    rx: mpsc::UnboundedReceiver<Piece>,
    guard: AbortGuard,
    done: bool,
}

impl futures::Stream for NodeBody {
    type Item = Result<Bytes, FetchError>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        let piece = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(piece) => piece,
        };
        match piece {
            Some(Piece::Data(data)) => {
                let fid = self.guard.fid;
                let _ = self.guard.table.out.send(FromWorker::FetchCredit { fid, bytes: data.len() as u32 });
                Poll::Ready(Some(Ok(data)))
            }
            Some(Piece::Done(result)) => {
                self.done = true;
                Poll::Ready(result.err().map(Err))
            }
            None => {
                self.done = true;
                Poll::Ready(Some(Err(node_gone())))
            }
        }
    }
}

/// Guest console lines in a worker: a frame to the node, which owns the
/// log store. Never blocks (the frame queue is the worker's outbound one;
/// each request's console output is budgeted by the engine).
struct NodeConsole {
    out: mpsc::UnboundedSender<FromWorker>,
    line_bytes: usize,
}

impl ConsoleSink for NodeConsole {
    fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    fn log(&self, line: ConsoleLine) {
        let req_id = line.req_id.as_deref().unwrap_or("").to_owned();
        let _ = self.out.send(FromWorker::Log { req_id, level: line.level, msg: line.msg });
    }
}

/// Runs one trivial webtask before saying Ready: V8 compiles the runtime's
/// functions lazily, and a container's first request should not pay for it.
async fn warm_up(jobs: &mpsc::UnboundedSender<Job>) -> anyhow::Result<()> {
    const WARM_UP: &str = "return function (context, cb) { cb(null, [context.data.x, JSON.stringify(context)]); }";
    let (reply, reply_rx) = oneshot::channel();
    let context = Context::new().query("x", "1").header("x-warm-up", "1");
    let job = Job {
        container: "".into(),
        code: Code::from(WARM_UP),
        context,
        req_id: "warm-up".into(),
        reply,
        permit: Permit::from_counter(Default::default()),
    };
    jobs.send(job).map_err(|_| anyhow::anyhow!("isolate host ended"))?;
    let reply = reply_rx.await.context("warm-up dropped")?.map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))?;
    reply.collect().await.map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))?;
    Ok(())
}

/// How long a Ready worker waits unassigned before [`warm_up_node`].
const NODE_WARM_UP_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Requires each of `modules` (built-ins and modules of the set). Runs
/// only while the worker is unassigned, so nothing of a tenant is in them;
/// its result is dropped, and a module that fails is left for the
/// container's own `require`.
fn warm_up_node(jobs: &mpsc::UnboundedSender<Job>, modules: &[String]) -> anyhow::Result<()> {
    let list = serde_json::to_string(modules)?;
    let code = format!("return function (cb) {{ for (const m of {list}) {{ try {{ require(m); }} catch (e) {{}} }} cb(null, 1); }}");
    let (reply, _) = oneshot::channel();
    let job = Job {
        container: "".into(),
        code: Code::new(code.into_bytes())?,
        context: Context::new(),
        req_id: "warm-up".into(),
        reply,
        permit: Permit::from_counter(Default::default()),
    };
    jobs.send(job).map_err(|_| anyhow::anyhow!("isolate host ended"))
}

fn run(
    jobs: &mpsc::UnboundedSender<Job>,
    out: &mpsc::UnboundedSender<FromWorker>,
    container: Arc<str>,
    id: u64,
    req_id: String,
    code: ByteBuf,
    context: protocol::WireContext,
) -> anyhow::Result<()> {
    let (reply, reply_rx) = oneshot::channel();
    let out = out.clone();
    let prepared = Code::new(code.into_vec()).and_then(|code| Ok((code, Context::try_from(context)?)));
    match prepared {
        Ok((code, context)) => {
            let job = Job { container, code, context, req_id: req_id.into(), reply, permit: Permit::from_counter(Default::default()) };
            jobs.send(job).map_err(|_| anyhow::anyhow!("isolate host ended"))?;
        }
        Err(err) => {
            let _ = reply.send(Err(err));
        }
    }
    tokio::spawn(async move {
        let outcome = reply_rx.await.unwrap_or_else(|_| Err(Error::internal("isolate host dropped the request")));
        forward(&out, id, outcome).await;
    });
    Ok(())
}

/// Sends one run's outcome to the node as frames.
async fn forward(out: &mpsc::UnboundedSender<FromWorker>, id: u64, outcome: Result<Reply, Error>) {
    let reply = match outcome {
        Ok(reply) => reply,
        Err(err) => {
            let _ = out.send(FromWorker::Failed { id, error: protocol::error_bytes(&err) });
            return;
        }
    };
    match reply.body {
        ReplyBody::Full(body) => {
            let body = Some(ByteBuf::from(Vec::from(body)));
            let _ = out.send(FromWorker::Head { id, status: reply.status, headers: reply.headers, body });
        }
        ReplyBody::Stream(mut rx) => {
            let _ = out.send(FromWorker::Head { id, status: reply.status, headers: reply.headers, body: None });
            while let Some(chunk) = rx.recv().await {
                let msg = match chunk {
                    Ok(data) => FromWorker::Chunk { id, data: ByteBuf::from(Vec::from(data)) },
                    Err(err) => {
                        let _ = out.send(FromWorker::Failed { id, error: protocol::error_bytes(&err) });
                        return;
                    }
                };
                if out.send(msg).is_err() {
                    return;
                }
            }
            let _ = out.send(FromWorker::End { id });
        }
    }
}
