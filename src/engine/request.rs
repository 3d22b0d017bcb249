//! What goes into a webtask run and what comes out, independent of any
//! transport: the HTTP API builds a [`Context`] from a request, an embedder
//! builds one by hand, and both get a [`Reply`] whose body may stream.

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::Error;

/// The request a webtask sees as `context` (and `req` in the
/// `function (context, req, res)` model).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Query parameters in order; repeated names become arrays in `context.query`.
    pub query: Vec<(String, String)>,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Raw request body for the webtask, if it has one of its own.
    pub body: Option<Bytes>,
    /// Media type of `body` (`application/json` and
    /// `application/x-www-form-urlencoded` bodies are parsed into `context.body`).
    pub content_type: Option<String>,
    /// Extra values merged into `context.data` after query and body.
    pub data: Map<String, Value>,
    /// `context.secrets`.
    pub secrets: Map<String, Value>,
    /// `context.meta`.
    pub meta: Map<String, Value>,
    /// HTTP method the webtask sees in `req.method`.
    pub method: String,
    /// Path and query the webtask sees in `req.url`.
    pub url: String,
}

impl Context {
    /// An empty `GET /` context.
    pub fn new() -> Self {
        Context { method: "GET".into(), url: "/".into(), ..Default::default() }
    }

    /// Adds a query parameter (also visible in `context.data`).
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets `context.data[name]`.
    pub fn data(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.insert(name.into(), value.into());
        self
    }

    /// Sets `context.secrets[name]`.
    pub fn secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.secrets.insert(name.into(), Value::String(value.into()));
        self
    }

    /// Sets the raw body and its media type.
    pub fn body(mut self, content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        self.content_type = Some(content_type.into());
        self.body = Some(body.into());
        self
    }
}

/// Status line and headers of a webtask's response, with its body to follow.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
}

/// The body of a [`Reply`]: whole (callback results) or streamed
/// (`res.write` in the `(context, req, res)` model).
#[derive(Debug)]
pub enum ReplyBody {
    Full(Bytes),
    /// Chunks as the webtask writes them; an `Err` ends the stream early
    /// (response limit, isolate killed mid-stream).
    Stream(mpsc::UnboundedReceiver<Result<Bytes, Error>>),
}

/// A finished run, body collected: what [`crate::Engine::run`] returns.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Output {
    /// The body parsed as JSON (callback-model webtasks always answer JSON).
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The value of a response header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Reply {
    /// Collects a streamed body.
    pub async fn collect(self) -> Result<Output, Error> {
        let body = match self.body {
            ReplyBody::Full(b) => b,
            ReplyBody::Stream(mut rx) => {
                let mut buf = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    buf.extend_from_slice(&chunk?);
                }
                Bytes::from(buf)
            }
        };
        Ok(Output { status: self.status, headers: self.headers, body })
    }
}
