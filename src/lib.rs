//! webtask: run untrusted JavaScript for many tenants, per HTTP request, in
//! V8 isolates with per-request limits.
//!
//! Embed the engine with [`Engine`] (no HTTP involved), or serve the HTTP API
//! with [`api::serve`]. See `README.md` for the programming models.

pub mod api;
pub mod config;
pub mod egress;
pub mod engine;
pub mod jail;
pub mod logs;
pub mod placement;
pub mod pool;
pub mod worker;

pub use engine::{Code, Context, Engine, EngineConfig, Error, Limits, Output, Reply, ReplyBody, ScriptError};
