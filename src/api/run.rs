//! `POST /api/run/{container}`: the code is the body (`application/javascript`,
//! `text/plain`, anything but JSON) with the query string as `context.data`,
//! or a JSON envelope `{"code", "data", "secrets", "meta"}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{reply, Body, Node};
use crate::engine::console::truncate;
use crate::engine::{valid_container, Code, Context, Error, Reply, ScriptError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    code: String,
    #[serde(default)]
    data: Map<String, Value>,
    #[serde(default)]
    secrets: Map<String, Value>,
    #[serde(default)]
    meta: Map<String, Value>,
    /// The webtask's own request body, as `context.body` (merged into
    /// `context.data` when it is an object).
    #[serde(default)]
    body: Option<Value>,
}

pub async fn handle(node: &Arc<Node>, container: String, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let req_id = crate::engine::new_req_id();
    let response = match run(node, &container, req, req_id.clone()).await {
        Ok(reply) => {
            // A streamed body that fails after its head went out (a limit
            // fired, the worker died) can only be cut short; it is still
            // counted and logged as any failed request is.
            let node = node.clone();
            reply::from_reply(reply, move |err| report(&node, &container, &req_id, err))
        }
        Err(err) => {
            report(node, &container, &req_id, &err);
            let mut res = reply::error(&err);
            if let Error::BodyTimeout { .. } = err {
                // The rest of the body may still come; no request follows it.
                res.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            res
        }
    };
    node.metrics.observe(response.status().as_u16(), started.elapsed());
    response
}

/// Counts a request's failure in `/metrics` (a limit, by kind) and, when it
/// is the node's or a limit's doing (5xx), writes it to the system log.
fn report(node: &Node, container: &str, req_id: &str, err: &Error) {
    if let Some(kind) = err.limit_kind() {
        node.metrics.limit_fired(kind);
    }
    if err.status() >= 500 {
        // `figures` carries the error's numbers (limit_ms, used_ms, ...)
        // into the system log record.
        // The message is the node's own words: a script error's text
        // is the guest's, and goes in the figures (as `error_message`).
        // The guest's own text in it is cut short: a guest could
        // otherwise write ~200 KB into the node's log per request.
        let figures = serde_json::to_string(&guest_text_cut(err)).unwrap_or_default();
        let msg: std::borrow::Cow<'_, str> = match err {
            Error::Script(_) => "script error".into(),
            Error::SyntaxError { .. } => "syntax error".into(),
            err => err.to_string().into(),
        };
        tracing::warn!(container, req_id, code = err.code(), figures, "{msg}");
    }
}

/// A header value as Node hands it over: each byte one character (latin1),
/// so a value that is not ASCII arrives, if not as its sender meant it.
/// Visible ASCII, nearly every value, is copied as it is.
fn header_text(v: &http::HeaderValue) -> String {
    match v.to_str() {
        Ok(ascii) => ascii.to_owned(),
        Err(_) => v.as_bytes().iter().map(|&b| b as char).collect(),
    }
}

async fn run(node: &Node, container: &str, req: Request<Incoming>, req_id: Arc<str>) -> Result<Reply, Error> {
    if !valid_container(container) {
        return Err(Error::bad_request(format!(
            "invalid container name {container:?}: use 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
        )));
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts, body, node.http.body_bytes, node.http.body_timeout_ms).await?;
    let media = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut context = Context {
        query: parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default(),
        headers: parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), header_text(v))).collect(),
        method: parts.method.as_str().to_owned(),
        url: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        ..Context::default()
    };
    let code = if is_json(media) {
        let env: Envelope = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("invalid JSON envelope: {e}")))?;
        context.data = env.data;
        context.secrets = env.secrets;
        context.meta = env.meta;
        if let Some(body) = env.body {
            context.body = Some(serde_json::to_vec(&body).unwrap_or_default().into());
            context.content_type = Some("application/json".to_owned());
        }
        Code::from(env.code)
    } else {
        Code::new(body)?
    };
    node.runner.dispatch(container, code, context, req_id).await
}

fn is_json(media: &str) -> bool {
    media.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads the body up to `limit` bytes within `timeout_ms`: a declared
/// length over the limit is refused before reading, a streamed one as soon
/// as it passes the limit, and one still incomplete after `timeout_ms`
/// (a client that stalls mid-body) is `body_timeout`.
async fn read_body(parts: &http::request::Parts, body: Incoming, limit: u64, timeout_ms: u64) -> Result<Bytes, Error> {
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::BodyLimit { limit_bytes: limit });
    }
    let read = Limited::new(body, limit as usize).collect();
    let Ok(read) = tokio::time::timeout(Duration::from_millis(timeout_ms), read).await else {
        return Err(Error::BodyTimeout { limit_ms: timeout_ms });
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyLimit { limit_bytes: limit }),
        Err(e) => Err(Error::bad_request(format!("could not read request body: {e}"))),
    }
}

/// Longest guest-written text (each of a script error's name, message,
/// stack and details; a syntax error's message) the node's own log record
/// of an error keeps. The caller's response keeps it whole.
const LOGGED_GUEST_TEXT: usize = 1024;

/// `err` with the text its guest wrote cut to `LOGGED_GUEST_TEXT` bytes
/// each, marked `… [truncated N bytes]`, for the node's log.
fn guest_text_cut(err: &Error) -> std::borrow::Cow<'_, Error> {
    let cut = |s: &str| truncate(s, LOGGED_GUEST_TEXT).into_owned();
    match err {
        Error::Script(e) => std::borrow::Cow::Owned(Error::Script(ScriptError {
            name: e.name.as_deref().map(cut),
            message: cut(&e.message),
            stack: e.stack.as_deref().map(cut),
            details: cut(&e.details),
        })),
        Error::SyntaxError { message, line, column } => {
            std::borrow::Cow::Owned(Error::SyntaxError { message: cut(message), line: *line, column: *column })
        }
        err => std::borrow::Cow::Borrowed(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_log_keeps_a_kilobyte_of_each_guest_text() {
        let long = "a".repeat(64 * 1024);
        let err = Error::Script(ScriptError {
            name: Some(long.clone()),
            message: long.clone(),
            stack: Some(long.clone()),
            details: long.clone(),
        });
        let figures = serde_json::to_value(guest_text_cut(&err)).unwrap();
        assert_eq!(figures["code"], "script_error");
        for key in ["name", "message", "stack", "details"] {
            let s = figures[key].as_str().unwrap();
            assert!(s.starts_with(&"a".repeat(LOGGED_GUEST_TEXT)) && s.ends_with(&format!("… [truncated {} bytes]", 63 * 1024)), "{key}: {s}");
        }
        let limit = Error::CpuLimit { limit_ms: 50, used_ms: 51 };
        assert!(matches!(guest_text_cut(&limit), std::borrow::Cow::Borrowed(_)));
    }
}
