//! System records: a `tracing` layer that turns the node's own events
//! (assignments, retirements, limit kills with their figures, errors) into
//! records of the same shape as tenant ones. System records go to the
//! system stream only (they name the `container` they are about, but what a
//! node says about a worker is the operator's to read).
//!
//! The layer is installed with the process's subscriber before a node
//! exists; the node's [`Logs`] is attached to it once started.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::{Logs, Record, Source};
use crate::engine::console::level;

/// Target of guest console events; those reach the store directly, not here.
const GUEST_TARGET: &str = "webtask::guest";

#[derive(Clone, Default)]
pub struct SystemLayer {
    logs: Arc<OnceLock<Logs>>,
}

impl SystemLayer {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on system events become records in `logs`. Once only.
    pub fn attach(&self, logs: Logs) {
        let _ = self.logs.set(logs);
    }
}

impl<S: Subscriber> Layer<S> for SystemLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(logs) = self.logs.get() else { return };
        let meta = event.metadata();
        // Only the node's own events: not guest lines, not chatty libraries.
        if !meta.target().starts_with("webtask") || meta.target() == GUEST_TARGET || *meta.level() > Level::INFO {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut record = Record::new(Source::System, bunyan_level(meta.level()), fields.msg);
        record.container = fields.container.map(Arc::from);
        record.req_id = fields.req_id.map(Arc::from);
        record.fields = fields.rest;
        logs.publish(record);
    }
}

fn bunyan_level(l: &Level) -> u8 {
    match *l {
        Level::TRACE => level::TRACE,
        Level::DEBUG => level::DEBUG,
        Level::INFO => level::INFO,
        Level::WARN => level::WARN,
        _ => level::ERROR,
    }
}

/// An event's fields: the message, the two that route it, and its figures.
#[derive(Default)]
struct Fields {
    msg: String,
    container: Option<String>,
    req_id: Option<String>,
    rest: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        self.put_named(field.name(), value)
    }

    fn put_named(&mut self, name: &str, value: Value) {
        match (name, value) {
            ("message", Value::String(s)) => self.msg = s,
            ("container", Value::String(s)) if !s.is_empty() => self.container = Some(s),
            ("req_id", Value::String(s)) if !s.is_empty() => self.req_id = Some(s),
            // An error's own JSON (`{"code":"cpu_limit","limit_ms":100,...}`):
            // its numbers become the record's.
            ("figures", Value::String(s)) => {
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&s) {
                    for (k, v) in map {
                        self.put_named(&k, v);
                    }
                }
            }
            // Never let a figure overwrite a field of the record itself.
            // The node's events name a worker's pid `pid`; the record's own
            // `pid` is the node's.
            ("pid", value) => {
                self.rest.insert("worker_pid".into(), value);
            }
            ("v" | "level" | "name" | "hostname" | "time" | "msg" | "source" | "container" | "req_id", value) => {
                self.rest.insert(format!("{name}_"), value);
            }
            (name, value) => {
                self.rest.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::logs::{Event as LogEvent, LogsConfig, StreamId};

    fn json(event: LogEvent) -> Value {
        match event {
            LogEvent::Record(bytes) => serde_json::from_slice(&bytes).unwrap(),
            LogEvent::Dropped(n) => panic!("dropped {n}"),
        }
    }

    #[tokio::test]
    async fn node_events_become_system_records_with_their_figures() {
        let logs = Logs::start(&LogsConfig::default()).unwrap();
        let mut system = logs.subscribe(StreamId::System, None).await.unwrap();
        let mut tenant = logs.subscribe(StreamId::Tenant("acme".into()), None).await.unwrap();
        let layer = SystemLayer::new();
        layer.attach(logs.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "webtask::pool", "too detailed");
            tracing::info!(target: "hyper", "not ours");
            let figures = r#"{"code":"cpu_limit","limit_ms":100}"#;
            tracing::warn!(target: "webtask::api", container = "acme", req_id = "1-2", figures, "cpu_limit");
            tracing::info!(target: "webtask::pool", pid = 42u64, "node-wide");
        });
        let r = json(system.next().await.unwrap());
        assert_eq!((r["source"].as_str(), r["level"].as_u64(), r["msg"].as_str()), (Some("system"), Some(40), Some("cpu_limit")));
        assert_eq!((r["container"].as_str(), r["req_id"].as_str()), (Some("acme"), Some("1-2")));
        assert_eq!((r["code"].as_str(), r["limit_ms"].as_u64()), (Some("cpu_limit"), Some(100)));
        let r = json(system.next().await.unwrap());
        assert_eq!((r["msg"].as_str(), r["worker_pid"].as_u64(), r["pid"].as_u64()), (Some("node-wide"), Some(42), Some(std::process::id() as u64)));
        // The tenant's own stream got none of it: its first record is its own.
        logs.publish(Record::tenant("acme".into(), None, 30, "mine".into()));
        assert_eq!(json(tenant.next().await.unwrap())["msg"], "mine");
    }
}
