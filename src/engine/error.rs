//! The one error type of a webtask run. Every variant is something a caller
//! can act on, carries the figures that explain it, and maps to exactly one
//! HTTP status and JSON body (see `api::reply`), so the library and the HTTP
//! API report failures identically.

use serde::{Deserialize, Serialize};

/// Why a webtask run did not produce a response.
///
/// The JSON `code` of every variant is its [`Error::code`]: where the
/// snake_case variant name differs, a `rename` says so (a test holds them
/// equal).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Error {
    /// The code does not parse.
    #[error("syntax error at webtask.js:{line}:{column}: {message}")]
    SyntaxError { message: String, line: u32, column: u32 },

    /// The code threw, rejected, or passed an error to its callback.
    #[error("script error: {}", .0.details)]
    #[serde(rename = "script_error")]
    Script(ScriptError),

    /// The request is malformed (bad container name, unreadable body...).
    #[error("bad request: {message}")]
    BadRequest { message: String },

    /// The request body is larger than the node accepts.
    #[error("request body exceeds {limit_bytes} bytes")]
    BodyLimit { limit_bytes: u64 },

    /// The client did not send the whole request body in time.
    #[error("request body not received within {limit_ms} ms")]
    BodyTimeout { limit_ms: u64 },

    /// The request used more CPU time than allowed.
    #[error("CPU limit of {limit_ms} ms exceeded ({used_ms} ms used)")]
    CpuLimit { limit_ms: u64, used_ms: u64 },

    /// The request did not finish within its wall-clock deadline.
    #[error("wall-clock limit of {limit_ms} ms exceeded")]
    WallLimit { limit_ms: u64 },

    /// The isolate's JavaScript heap reached its limit.
    #[error("memory limit of {limit_mb} MiB exceeded")]
    MemoryLimit { limit_mb: u64 },

    /// The response grew past the allowed size.
    #[error("response exceeds {limit_bytes} bytes")]
    ResponseLimit { limit_bytes: u64 },

    /// The container already runs as many requests as it may.
    #[error("container runs {limit} concurrent requests already")]
    ConcurrencyLimit { limit: usize },

    /// Another request of the same container exceeded a limit and its isolate
    /// was discarded while this one was running in it.
    #[error("isolate recycled after another request hit {reason}")]
    IsolateRecycled { reason: String },

    /// The container's worker process died while running this request
    /// (killed, crashed, or broke the protocol and was killed).
    #[error("worker process {pid} ended: {reason}")]
    WorkerCrashed { pid: u32, reason: String },

    /// Every worker slot is busy; the request could not be placed.
    #[error("all {limit} workers are busy")]
    NoWorker { limit: usize },

    /// The engine itself failed; never caused by guest code alone.
    #[error("internal error: {message}")]
    #[serde(rename = "internal_error")]
    Internal { message: String },
}

/// An error raised by guest code, as the guest described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptError {
    /// `Error.name`, when the guest raised an `Error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub message: String,
    /// Stack trace naming only `webtask.js:LINE:COL` frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// `"Name: message"`, or the thrown value as a string.
    pub details: String,
}

impl Error {
    /// Stable machine-readable code of this error (`"cpu_limit"`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::SyntaxError { .. } => "syntax_error",
            Error::Script(_) => "script_error",
            Error::BadRequest { .. } => "bad_request",
            Error::BodyLimit { .. } => "body_limit",
            Error::BodyTimeout { .. } => "body_timeout",
            Error::CpuLimit { .. } => "cpu_limit",
            Error::WallLimit { .. } => "wall_limit",
            Error::MemoryLimit { .. } => "memory_limit",
            Error::ResponseLimit { .. } => "response_limit",
            Error::ConcurrencyLimit { .. } => "concurrency_limit",
            Error::IsolateRecycled { .. } => "isolate_recycled",
            Error::WorkerCrashed { .. } => "worker_crashed",
            Error::NoWorker { .. } => "no_worker",
            Error::Internal { .. } => "internal_error",
        }
    }

    /// The HTTP status this error is reported with.
    pub fn status(&self) -> u16 {
        match self {
            Error::SyntaxError { .. } | Error::BadRequest { .. } => 400,
            Error::WorkerCrashed { .. } => 502,
            Error::NoWorker { .. } => 503,
            Error::BodyLimit { .. } => 413,
            Error::BodyTimeout { .. } => 408,
            Error::ConcurrencyLimit { .. } => 429,
            Error::WallLimit { .. } => 504,
            Error::Script(_)
            | Error::CpuLimit { .. }
            | Error::MemoryLimit { .. }
            | Error::ResponseLimit { .. }
            | Error::IsolateRecycled { .. }
            | Error::Internal { .. } => 500,
        }
    }

    /// Whether this error is a resource limit that fired (for metrics).
    pub fn limit_kind(&self) -> Option<&'static str> {
        match self {
            Error::CpuLimit { .. }
            | Error::WallLimit { .. }
            | Error::MemoryLimit { .. }
            | Error::ResponseLimit { .. }
            | Error::BodyLimit { .. }
            | Error::BodyTimeout { .. }
            | Error::ConcurrencyLimit { .. } => Some(self.code()),
            _ => None,
        }
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Error::Internal { message: message.to_string() }
    }

    pub(crate) fn bad_request(message: impl std::fmt::Display) -> Self {
        Error::BadRequest { message: message.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant. The match has no wildcard: a new variant
    /// does not compile until it is listed here too.
    fn one_of_each() -> Vec<Error> {
        let script = ScriptError { name: Some("Error".into()), message: "m".into(), stack: None, details: "Error: m".into() };
        let all = vec![
            Error::SyntaxError { message: "m".into(), line: 1, column: 2 },
            Error::Script(script),
            Error::bad_request("m"),
            Error::BodyLimit { limit_bytes: 1 },
            Error::BodyTimeout { limit_ms: 1 },
            Error::CpuLimit { limit_ms: 1, used_ms: 2 },
            Error::WallLimit { limit_ms: 1 },
            Error::MemoryLimit { limit_mb: 1 },
            Error::ResponseLimit { limit_bytes: 1 },
            Error::ConcurrencyLimit { limit: 1 },
            Error::IsolateRecycled { reason: "r".into() },
            Error::WorkerCrashed { pid: 1, reason: "r".into() },
            Error::NoWorker { limit: 1 },
            Error::internal("m"),
        ];
        for err in &all {
            match err {
                Error::SyntaxError { .. }
                | Error::Script(_)
                | Error::BadRequest { .. }
                | Error::BodyLimit { .. }
                | Error::BodyTimeout { .. }
                | Error::CpuLimit { .. }
                | Error::WallLimit { .. }
                | Error::MemoryLimit { .. }
                | Error::ResponseLimit { .. }
                | Error::ConcurrencyLimit { .. }
                | Error::IsolateRecycled { .. }
                | Error::WorkerCrashed { .. }
                | Error::NoWorker { .. }
                | Error::Internal { .. } => {}
            }
        }
        all
    }

    #[test]
    fn json_code_is_code_and_round_trips() {
        let all = one_of_each();
        let codes: std::collections::HashSet<_> = all.iter().map(Error::code).collect();
        assert_eq!(codes.len(), all.len(), "two variants share a code");
        for err in all {
            let v = serde_json::to_value(&err).unwrap();
            assert_eq!(v["code"].as_str(), Some(err.code()), "{v}");
            // The worker protocol sends errors as this JSON.
            assert_eq!(serde_json::from_value::<Error>(v).unwrap(), err);
        }
    }
}
