//! The HTTP API (hyper 1.x): accepts connections, applies the HTTP-level
//! limits (head size, head timeout, body size), routes, and turns engine
//! replies and errors into responses. It owns no execution policy; that
//! lives in the engine.
//!
//! Routes: `POST /api/run/{container}`, `GET /api/logs/tenant/{container}`,
//! `GET /api/logs/system`, `GET /healthz`, `GET /metrics`.

mod logs;
mod metrics;
mod reply;
mod run;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::config::HttpConfig;
use crate::engine::Error;
use crate::logs::Logs;
use crate::pool::Runner;

pub use metrics::Metrics;

/// The JSON body the API answers `err` with.
pub fn error_json(err: &Error) -> serde_json::Value {
    reply::error_body(err)
}

pub type Body = BoxBody<Bytes, Error>;

/// Everything a request handler needs.
pub struct Node {
    pub runner: Runner,
    pub http: HttpConfig,
    pub metrics: Metrics,
    /// The log store the runner writes console lines to.
    pub logs: Logs,
    draining: AtomicBool,
    /// Cancelled when draining begins: ends log streams, which would
    /// otherwise hold shutdown for its whole grace period.
    drain: tokio_util::sync::CancellationToken,
}

impl Node {
    pub fn new(runner: Runner, http: HttpConfig, logs: Logs) -> Arc<Self> {
        Arc::new(Node {
            runner,
            http,
            metrics: Metrics::new(logs.connected().is_some()),
            logs,
            draining: AtomicBool::new(false),
            drain: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// From now on `/healthz` reports draining, so load balancers move away.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Resolves once the node has begun draining.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.drain.clone().cancelled_owned()
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then reports
/// draining, closes `listener` (answering connections already queued on it
/// `503 draining`), and waits up to the grace period for requests in flight.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(node.http.header_timeout_ms))
        // hyper's own refusal is a bare 431 with no body: it stops only heads
        // far past the limit, and `handle` answers the rest in JSON.
        .max_header_size(node.http.header_bytes.saturating_mul(4).max(16 * 1024))
        .keep_alive(true)
        // Responses are small: one flattened write beats writev.
        .writev(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            // Shutdown first: what is queued then is answered `draining`.
            biased;
            _ = &mut shutdown => break,
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let service = service_fn(move |req| handle(node.clone(), req));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    node.start_draining();
    // Draining closes the listening socket rather than keep it open to
    // answer 503: a connection refused is what a load balancer or proxy
    // retries on another node for any request, a POST included, since
    // nothing was sent (a 503 to a POST it passes on to the client); a
    // health check fails at once just the same; and the port is free for
    // the node that replaces this one (`systemctl restart`, a new
    // deployment) while this one still finishes its requests. Connections
    // the kernel already accepted into the backlog are not reset: each
    // gets `503 draining` with `Connection: close`.
    let queued = answer_queued(&builder, listener);
    let grace = Duration::from_millis(node.http.shutdown_grace_ms);
    let drained = async {
        graceful.shutdown().await;
        queued.join_all().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// Takes every connection already queued on `listener`, answers each
/// `503 draining` (in the tasks returned), and closes `listener`.
fn answer_queued(builder: &hyper::server::conn::http1::Builder, listener: TcpListener) -> tokio::task::JoinSet<()> {
    let mut queued = tokio::task::JoinSet::new();
    // The std listener keeps tokio's non-blocking mode: `accept` takes what
    // is queued and stops at `WouldBlock`; dropping it closes the socket.
    let Ok(listener) = listener.into_std() else { return queued };
    while let Ok((stream, _)) = listener.accept() {
        let Ok(stream) = stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream)) else {
            continue;
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service_fn(draining));
        queued.spawn(async move {
            let _ = conn.await;
        });
    }
    queued
}

/// The answer to a request that came in after draining began.
async fn draining(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut res = match req.uri().path() {
        "/healthz" => reply::health(true),
        _ => reply::json(503, &serde_json::json!({"code": "draining", "error": "the node is shutting down; retry on another"})),
    };
    res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    Ok(res)
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if head_bytes(&req) > node.http.header_bytes {
        let limit = node.http.header_bytes;
        let error = format!("request head exceeds {limit} bytes");
        let mut res = reply::json(431, &serde_json::json!({"code": "header_limit", "limit_bytes": limit, "error": error}));
        // Whatever body follows is not read: the connection cannot go on.
        res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        node.metrics.limit_fired("header_limit");
        if req.uri().path().starts_with("/api/run/") {
            node.metrics.observe(431, Duration::ZERO);
        }
        return Ok(res);
    }
    let path = req.uri().path();
    let response = if let Some(container) = path.strip_prefix("/api/run/") {
        match *req.method() {
            Method::POST => {
                // `/api/run/{container}/{path...}`: the path is the webtask's
                // own (Express routes), the container its first segment.
                let container = container.split('/').next().unwrap_or_default().to_owned();
                run::handle(&node, container, req).await
            }
            _ => reply::method_not_allowed("POST"),
        }
    } else if let Some(rest) = path.strip_prefix("/api/logs/") {
        match *req.method() {
            // HEAD as any GET route: hyper sends the head and drops the stream.
            Method::GET | Method::HEAD => logs::handle(&node, rest, &req).await,
            _ => reply::method_not_allowed("GET"),
        }
    } else {
        match path {
            "/healthz" => only_get(&req, || reply::health(node.draining.load(Ordering::Relaxed))),
            "/metrics" => only_get(&req, || node.metrics.render(&node.runner, &node.logs)),
            "/api/env/node/modules" => only_get(&req, reply::node_modules),
            _ => reply::not_found(path),
        }
    };
    Ok(response)
}

/// The request head's size as it came in, near enough: request line and
/// header lines with their separators.
fn head_bytes(req: &Request<Incoming>) -> usize {
    // From the URI's parts: formatting it whole would allocate per request.
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    line + req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
}

fn only_get(req: &Request<Incoming>, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD => f(),
        _ => reply::method_not_allowed("GET"),
    }
}
