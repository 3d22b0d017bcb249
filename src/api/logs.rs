//! `GET /api/logs/tenant/{container}` and `GET /api/logs/system`: a log
//! stream as Server-Sent Events for as long as the client stays. Each event's
//! `data:` is one JSON record; a comment line every 15 s keeps proxies and
//! clients from timing the stream out. `?since=<seconds>` replays recent
//! records first. The system stream needs the admin key as a bearer token.
//!
//! Owns the HTTP face of logs only; records and their storage are `logs`'.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{reply, Body, Node};
use crate::engine::valid_container;
use crate::logs::{Event, LogError, Record, StreamId};

/// Between comment lines on an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Longest replay a reader may ask for (a week).
const MAX_SINCE_SECS: u64 = 7 * 24 * 3600;

pub async fn handle(node: &Node, rest: &str, req: &Request<Incoming>) -> Response<Body> {
    let stream = match rest {
        "system" => {
            if let Err(res) = authorize(node, req) {
                return res;
            }
            StreamId::System
        }
        _ => match rest.strip_prefix("tenant/") {
            Some(c) if valid_container(c) => StreamId::Tenant(c.into()),
            Some(c) => return bad_request(format!("invalid container name {c:?}: use 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")),
            None => return reply::not_found(req.uri().path()),
        },
    };
    let since = match since(req.uri().query()) {
        Ok(since) => since,
        Err(msg) => return bad_request(msg),
    };
    match node.logs.subscribe(stream.clone(), since).await {
        Ok(events) => sse(node, stream, events),
        Err(LogError::TooManyReaders(limit)) => {
            reply::json(429, &json!({"code": "too_many_readers", "limit": limit, "error": format!("this node serves {limit} log readers at most")}))
        }
        Err(e) => reply::json(503, &json!({"code": "logs_unavailable", "error": e.to_string()})),
    }
}

fn bad_request(message: String) -> Response<Body> {
    reply::json(400, &json!({"code": "bad_request", "error": message}))
}

/// Checks `Authorization: Bearer <admin key>`; the answer to send if not.
#[allow(clippy::result_large_err)]
fn authorize(node: &Node, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let error = match (&node.logs.config().admin_key, given) {
        (Some(key), Some(given)) if same_secret(key, given.trim()) => return Ok(()),
        (None, _) => "this node has no admin key ([logs] admin_key); the system stream is closed",
        (Some(_), None) => "the system stream needs Authorization: Bearer <admin key>",
        (Some(_), Some(_)) => "wrong admin key",
    };
    let mut res = reply::json(401, &json!({"code": "unauthorized", "error": error}));
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(res)
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Compares digests, so the time taken says nothing about the key.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `since=<seconds>` from the query string.
fn since(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(query) = query else { return Ok(None) };
    let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "since") else { return Ok(None) };
    match value.trim().parse::<u64>() {
        Ok(secs) if secs <= MAX_SINCE_SECS => Ok(Some(Duration::from_secs(secs))),
        _ => Err(format!("since must be a whole number of seconds from 0 to {MAX_SINCE_SECS}, not {value:?}")),
    }
}

/// Chunks queued between a stream's task and the connection; a client that
/// stops reading fills this, then the store's reader buffer, then loses
/// records (and is told), while writers go on.
const CHUNKS_QUEUED: usize = 16;

/// The stream as an SSE response, ended when the client goes or the node
/// drains. A task of its own moves events into the body, so a stream with
/// nothing to say still notices a client that left.
fn sse(node: &Node, stream: StreamId, events: crate::logs::Subscription) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    tokio::spawn(pump(stream, events, tx, node.stopping()));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, crate::engine::Error>(Frame::data(chunk)), rx))
    });
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(body)));
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer (nginx) would hold records back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Moves one reader's events, as SSE text, to its connection.
async fn pump(
    stream: StreamId,
    mut events: crate::logs::Subscription,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    stopping: tokio_util::sync::WaitForCancellationFutureOwned,
) {
    let container = match stream {
        StreamId::Tenant(c) => Some(c),
        StreamId::System => None,
    };
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    tokio::pin!(stopping);
    if tx.send(Bytes::from_static(b": webtask logs\n\n")).await.is_err() {
        return;
    }
    loop {
        let chunk = tokio::select! {
            event = events.next() => match event {
                Some(Event::Record(json)) => data(&json),
                Some(Event::Dropped(n)) => data(&Record::dropped(container.clone(), n).to_json()),
                None => return,
            },
            _ = heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
            () = tx.closed() => return,
            () = &mut stopping => return,
        };
        // A client that stopped reading must not hold shutdown up either.
        tokio::select! {
            sent = tx.send(chunk) => if sent.is_err() { return },
            () = &mut stopping => return,
        }
    }
}

/// One SSE event carrying a JSON record (JSON holds no raw newline).
fn data(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_whole_seconds_within_a_week() {
        assert_eq!(since(None), Ok(None));
        assert_eq!(since(Some("x=1")), Ok(None));
        assert_eq!(since(Some("since=30")), Ok(Some(Duration::from_secs(30))));
        assert!(since(Some("since=-1")).is_err());
        assert!(since(Some("since=abc")).is_err());
        assert!(since(Some("since=99999999")).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer k3y"), Some("k3y"));
        assert_eq!(bearer("bearer k3y"), Some("k3y"));
        assert_eq!(bearer("BEARER k3y"), Some("k3y"));
        assert_eq!(bearer("Basic k3y"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("k3y", "k3y"));
        assert!(!same_secret("k3y", "k3y "));
        assert!(!same_secret("k3y", ""));
    }
}
