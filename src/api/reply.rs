//! Responses the API builds itself: JSON errors (one shape per engine error,
//! see `Error`), health, and the plumbing from an engine `Reply` to a body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};

use super::Body;
use crate::engine::{Error, Reply, ReplyBody};

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn json(status: u16, value: &Value) -> Response<Body> {
    let mut res = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The JSON body of an engine error. Script errors keep the Webtask shape
/// (`{"code":500,"error":"Script returned an error.",...}`); every other
/// error is `{"code":"<kind>","error":"<sentence>", <figures>}`.
pub fn error_body(err: &Error) -> Value {
    if let Error::Script(e) = err {
        let mut v = json!({
            "code": 500,
            "error": "Script returned an error.",
            "details": e.details,
            "message": e.message,
        });
        if let Some(name) = &e.name {
            v["name"] = json!(name);
        }
        if let Some(stack) = &e.stack {
            v["stack"] = json!(stack);
        }
        return v;
    }
    let mut v = serde_json::to_value(err).unwrap_or_else(|_| json!({"code": err.code()}));
    v["error"] = json!(err.to_string());
    v
}

pub fn error(err: &Error) -> Response<Body> {
    json(err.status(), &error_body(err))
}

pub fn not_found(path: &str) -> Response<Body> {
    json(404, &json!({"code": "not_found", "error": format!("no route for {path}")}))
}

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = json(405, &json!({"code": "method_not_allowed", "error": format!("use {allow}")}));
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

pub fn health(draining: bool) -> Response<Body> {
    match draining {
        false => json(200, &json!({"status": "ok"})),
        true => json(503, &json!({"status": "draining"})),
    }
}

/// `GET /api/env/node/modules`: `[{"name", "version"}]` of the fixed module
/// set every webtask can require, sorted by name.
pub fn node_modules() -> Response<Body> {
    let list: Vec<Value> =
        crate::engine::node::modules::list().into_iter().map(|(name, version)| json!({"name": name, "version": version})).collect();
    json(200, &Value::Array(list))
}

/// A streamed body and who hears of its failure: when hyper reads it, or,
/// if the body is dropped first (its client left, or stalled and was cut
/// off), from what was already queued, so a client cannot hide a limit
/// that fired from the metrics and the log by not reading.
struct Reported<F: FnOnce(&Error)> {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, Error>>,
    on_error: Option<F>,
}

impl<F: FnOnce(&Error)> Reported<F> {
    fn report(&mut self, err: &Error) {
        if let Some(report) = self.on_error.take() {
            report(err);
        }
    }
}

impl<F: FnOnce(&Error)> Drop for Reported<F> {
    fn drop(&mut self) {
        while self.on_error.is_some() {
            match self.rx.try_recv() {
                Ok(Err(err)) => self.report(&err),
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
}

const HOP_BY_HOP: [&str; 6] = ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"];

/// An engine reply as an HTTP response; a streamed body stays streamed,
/// and one that fails midway is cut short (hyper ends the connection, the
/// client sees a body that never finished) after `on_error` has seen why.
pub fn from_reply(reply: Reply, on_error: impl FnOnce(&Error) + Send + Sync + 'static) -> Response<Body> {
    let body = match reply.body {
        ReplyBody::Full(bytes) => full(bytes),
        ReplyBody::Stream(rx) => {
            let chunks = futures::stream::unfold(Reported { rx, on_error: Some(on_error) }, |mut body| async move {
                let chunk = body.rx.recv().await?;
                if let Err(err) = &chunk {
                    body.report(err);
                }
                Some((chunk.map(Frame::data), body))
            });
            BodyExt::boxed(StreamBody::new(chunks))
        }
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = res.headers_mut();
    for (k, v) in reply.headers {
        // Framing and connection headers are the server's, whoever claims them.
        if HOP_BY_HOP.iter().any(|h| k.eq_ignore_ascii_case(h)) {
            continue;
        }
        // Every callback result carries this one; skip parsing it.
        if k == "content-type" && v == "application/json" {
            headers.append(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        } else if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.append(k, v);
        }
    }
    res
}
