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

/// Serves the API on `listener` until `shutdown` resolves, then stops
/// accepting, reports draining, and waits up to the grace period for
/// requests in flight.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(node.http.header_timeout_ms))
        .max_header_size(node.http.header_bytes)
        .keep_alive(true)
        // Responses are small: one flattened write beats writev.
        .writev(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
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
    let grace = Duration::from_millis(node.http.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
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
            Method::GET => logs::handle(&node, rest, &req).await,
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

fn only_get(req: &Request<Incoming>, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD => f(),
        _ => reply::method_not_allowed("GET"),
    }
}
