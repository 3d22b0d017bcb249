//! System records: a `tracing` layer that turns the node's own events
//! (assignments, retirements, limit kills with their figures, errors) into
//! records of the same shape as tenant ones. System records go to the
//! system stream only (they name the `container` they are about, but what a
//! node says about a worker is the operator's to read).
//!
//! The layer is installed, with [`SystemLayer::filter`] as its per-layer
//! filter, by `serve` only (worker, run, logs and doctor processes never have
//! one), before a node exists; the node's [`Logs`] is attached once started.
//! The filter, not `on_event`, is what keeps every other crate's and every
//! debug/trace callsite disabled: an unfiltered layer would enable them all.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::{Logs, Record, Source};
use crate::engine::console::{level, truncate};

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

    /// What the layer keeps: the node's own events at INFO and above, not
    /// guest lines (those reach the store directly). Everything else stays
    /// disabled at its callsite.
    pub fn filter() -> Targets {
        Targets::new().with_target("webtask", LevelFilter::INFO).with_target(GUEST_TARGET, LevelFilter::OFF)
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
        // The filter keeps these out already; this holds for an unfiltered use too.
        if !meta.target().starts_with("webtask") || meta.target() == GUEST_TARGET || *meta.level() > Level::INFO {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Some figures are a guest's own text (a script error's message and
        // stack): no field may be longer than a console line may.
        let cap = logs.config().line_bytes;
        let mut record = Record::new(Source::System, bunyan_level(meta.level()), capped(&fields.msg, cap));
        record.container = fields.container.map(|s| Arc::from(capped(&s, cap)));
        record.req_id = fields.req_id.map(|s| Arc::from(capped(&s, cap)));
        record.fields = fields.rest.into_iter().map(|(k, v)| (k, cap_value(v, cap))).collect();
        logs.publish(record);
    }
}

fn capped(s: &str, cap: usize) -> String {
    truncate(s, cap).into_owned()
}

/// A figure cut to `cap` bytes: strings as console lines are, anything
/// larger as its cut JSON text.
fn cap_value(value: Value, cap: usize) -> Value {
    match value {
        Value::String(s) if s.len() > cap => Value::String(capped(&s, cap)),
        v @ (Value::Array(_) | Value::Object(_)) => {
            let text = v.to_string();
            if text.len() > cap {
                Value::String(capped(&text, cap))
            } else {
                v
            }
        }
        v => v,
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

/// Names of the record's own fields (and tracing's `message`). A figure by
/// one of these names is kept as `error_<name>`: figures come from an error's
/// JSON, parts of which (a script error's `message`, `name`) the guest wrote,
/// and must never pose as what the node says.
const RESERVED: [&str; 11] = ["message", "msg", "container", "req_id", "source", "level", "time", "v", "name", "hostname", "pid"];

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
        match (field.name(), value) {
            ("message", Value::String(s)) => self.msg = s,
            ("container", Value::String(s)) if !s.is_empty() => self.container = Some(s),
            ("req_id", Value::String(s)) if !s.is_empty() => self.req_id = Some(s),
            // An error's own JSON (`{"code":"cpu_limit","limit_ms":100,...}`):
            // its figures become the record's.
            ("figures", Value::String(s)) => {
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&s) {
                    for (k, v) in map {
                        self.put_figure(k, v);
                    }
                }
            }
            // The node's events name a worker's pid `pid`; the record's own
            // `pid` is the node's.
            ("pid", value) => {
                self.rest.insert("worker_pid".into(), value);
            }
            // Never let a field of the event overwrite one of the record.
            (name, value) if RESERVED.contains(&name) => {
                self.rest.insert(format!("{name}_"), value);
            }
            (name, value) => {
                self.rest.insert(name.to_owned(), value);
            }
        }
    }

    /// One figure of an error: never a field of the record, never one the
    /// event set itself.
    fn put_figure(&mut self, name: String, value: Value) {
        let name = if RESERVED.contains(&name.as_str()) { format!("error_{name}") } else { name };
        self.rest.entry(name).or_insert(value);
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
    use tracing_subscriber::Layer as _;

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
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(SystemLayer::filter()));
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

    #[tokio::test]
    async fn guest_text_in_figures_can_neither_pose_as_the_record_nor_flood_it() {
        let config = LogsConfig { line_bytes: 64, ..LogsConfig::default() };
        let logs = Logs::start(&config).unwrap();
        let mut system = logs.subscribe(StreamId::System, None).await.unwrap();
        let layer = SystemLayer::new();
        layer.attach(logs.clone());
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(SystemLayer::filter()));
        let long = "x".repeat(1000);
        let figures = serde_json::json!({
            "code": "script_error", "name": "Error", "message": "CPU limit fake", "msg": "forged",
            "container": "other", "req_id": "forged", "source": "tenant", "level": 60, "time": "then",
            "v": 9, "hostname": "elsewhere", "pid": 1, "stack": long, "details": long,
        })
        .to_string();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "webtask::api", container = "acme", req_id = "1-2", figures, "script error");
            tracing::warn!(target: "webtask::guest", "a guest line never becomes a system record");
        });
        let r = json(system.next().await.unwrap());
        assert_eq!((r["msg"].as_str(), r["container"].as_str(), r["req_id"].as_str()), (Some("script error"), Some("acme"), Some("1-2")));
        assert_eq!((r["source"].as_str(), r["level"].as_u64(), r["v"].as_u64(), r["name"].as_str()), (Some("system"), Some(40), Some(0), Some("webtask")));
        assert_eq!(r["pid"].as_u64(), Some(std::process::id() as u64));
        assert_eq!((r["error_message"].as_str(), r["error_msg"].as_str(), r["error_container"].as_str()), (Some("CPU limit fake"), Some("forged"), Some("other")));
        assert_eq!((r["error_level"].as_u64(), r["error_pid"].as_u64(), r["error_hostname"].as_str()), (Some(60), Some(1), Some("elsewhere")));
        for key in ["stack", "details"] {
            let s = r[key].as_str().unwrap();
            assert!(s.starts_with(&"x".repeat(64)) && s.ends_with("[truncated 936 bytes]"), "{key}: {s}");
        }
        // Nothing else came: the guest-target event was filtered out.
        logs.publish(Record::new(Source::System, 30, "next"));
        assert_eq!(json(system.next().await.unwrap())["msg"], "next");
    }
}
