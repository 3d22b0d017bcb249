//! One log record, bunyan-compatible: `v`, `level`, `name`, `hostname`,
//! `pid`, `time` (ISO 8601), `msg`, plus `container`, `req_id` and
//! `source`, and for system records whatever figures the event carried.
//! Owns the record's shape and its JSON; not where records go.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The bunyan `name` of every record a node writes.
pub const NAME: &str = "webtask";

/// Who wrote a record: guest code (`console.*`) or the node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Tenant,
    System,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Bunyan format version, always 0.
    pub v: u8,
    /// Bunyan level: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal.
    pub level: u8,
    pub name: Cow<'static, str>,
    pub hostname: Arc<str>,
    /// The process that produced it: the worker for tenant records from
    /// workers, the node otherwise.
    pub pid: u32,
    #[serde(with = "iso_time")]
    pub time: SystemTime,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<Arc<str>>,
    pub source: Source,
    /// Figures of a system record (`code`, `limit_ms`, `pid`, ...).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Record {
    /// A record stamped now by this process.
    pub fn new(source: Source, level: u8, msg: impl Into<String>) -> Self {
        Record {
            v: 0,
            level,
            name: Cow::Borrowed(NAME),
            hostname: hostname(),
            pid: std::process::id(),
            time: SystemTime::now(),
            msg: msg.into(),
            container: None,
            req_id: None,
            source,
            fields: Map::new(),
        }
    }

    /// A guest console line of `container`.
    pub fn tenant(container: Arc<str>, req_id: Option<Arc<str>>, level: u8, msg: String) -> Self {
        Record { container: Some(container), req_id, ..Record::new(Source::Tenant, level, msg) }
    }

    /// The marker a reader gets in place of records it was too slow for.
    pub fn dropped(container: Option<Arc<str>>, n: u64) -> Self {
        let msg = format!("dropped {n} records");
        let mut record = Record { container, ..Record::new(Source::System, crate::engine::console::level::WARN, msg) };
        record.fields.insert("dropped".into(), n.into());
        record
    }

    /// The record as one line of JSON (no newline: JSON escapes them).
    pub fn to_json(&self) -> Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// This host's name, looked up once.
pub fn hostname() -> Arc<str> {
    static NAME: OnceLock<Arc<str>> = OnceLock::new();
    NAME.get_or_init(|| {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into()).into()
    })
    .clone()
}

/// A record as stores keep and readers receive it: serialized once.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    /// The container stream it goes to besides the system stream: tenant
    /// records only. System records about a container (its worker's pid, a
    /// kill) are the operator's, so a tenant's stream holds exactly what
    /// its code logged.
    pub tenant: Option<Arc<str>>,
    pub json: Bytes,
}

impl From<&Record> for Entry {
    fn from(record: &Record) -> Self {
        let tenant = match record.source {
            Source::Tenant => record.container.clone(),
            Source::System => None,
        };
        Entry { time: record.time, tenant, json: record.to_json() }
    }
}

/// `time` as RFC 3339 / ISO 8601 UTC with milliseconds, as bunyan writes it.
mod iso_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_record_is_bunyan_shaped() {
        let r = Record::tenant("acme".into(), Some("1-2".into()), 30, "hello".into());
        let v: Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["v"], 0);
        assert_eq!(v["level"], 30);
        assert_eq!(v["name"], "webtask");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["msg"], "hello");
        assert_eq!(v["container"], "acme");
        assert_eq!(v["req_id"], "1-2");
        assert_eq!(v["source"], "tenant");
        assert!(v["hostname"].as_str().is_some_and(|h| !h.is_empty()));
        let time = v["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == "2026-01-01T00:00:00.000Z".len(), "{time}");
    }

    #[test]
    fn records_round_trip_with_their_figures() {
        let mut r = Record::new(Source::System, 40, "cpu_limit");
        r.fields.insert("limit_ms".into(), 100.into());
        let back: Record = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(back.fields["limit_ms"], 100);
        assert_eq!(back.source, Source::System);
        assert_eq!(back.container, None);
        let ms = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.time), ms(r.time));
    }
}
