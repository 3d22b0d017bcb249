//! Logs: bunyan records from guest `console.*` and from the node itself,
//! one stream per container plus a system stream that sees everything, kept
//! by a [`Backend`] (`memory`: a ring per stream with live fan-out; `kafka`:
//! a topic per stream, shared by every node of a cluster).
//!
//! Writing never blocks and never waits: a record is handed to a bounded
//! queue with `try_send` (counted as dropped when full) and a pump task
//! serializes it once and gives it to the backend. Readers subscribe to a
//! stream and get records (and drop markers) as an async stream.
//!
//! Owns records, streams and their storage; knows nothing of HTTP (the API
//! serves streams as SSE) nor of V8 (the engine hands console lines to
//! [`Logs`] as a [`ConsoleSink`]).

pub mod kafka;
pub mod layer;
pub mod memory;
pub mod record;
pub mod tail;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::engine::console::{ConsoleLine, ConsoleSink};
pub use record::{Entry, Record, Source};

/// `[logs]` in webtask.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// `memory` (a single node) or `kafka` (a cluster).
    pub backend: BackendKind,
    /// Records kept per stream for `?since=` replay (memory backend)...
    pub ring_records: usize,
    /// ...and bytes of JSON at most.
    pub ring_bytes: usize,
    /// Longest console line; longer ones are cut and marked.
    pub line_bytes: usize,
    /// Records a reader may fall behind by before it loses some (and gets
    /// one "dropped N records" marker).
    pub reader_buffer: usize,
    /// Tenant records waiting to be stored; past this new ones are dropped
    /// (counted). System records have a queue of their own, so a tenant's
    /// flood never costs the operator the node's own records.
    pub queue: usize,
    /// Console bytes a second one worker process may hand the node, each
    /// line counted 256 bytes more than its text; past it lines are dropped
    /// (counted as `worker_rate`).
    pub worker_log_rate: u64,
    /// Readers (SSE streams) a node serves at once, over every stream and
    /// backend; past it a new one gets `429 too_many_readers`.
    pub max_readers: usize,
    /// Bearer key for `GET /api/logs/system`; without one the system stream
    /// is refused to everyone. At least 16 characters.
    pub admin_key: Option<String>,
    pub kafka: kafka::KafkaConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Memory,
    Kafka,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            backend: BackendKind::Memory,
            ring_records: 1000,
            ring_bytes: 256 * 1024,
            line_bytes: crate::engine::console::DEFAULT_LINE_BYTES,
            reader_buffer: 1024,
            queue: 8192,
            worker_log_rate: 4 * 1024 * 1024,
            max_readers: 256,
            admin_key: None,
            kafka: kafka::KafkaConfig::default(),
        }
    }
}

/// Which stream a reader follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamId {
    Tenant(Arc<str>),
    System,
}

/// What a reader receives.
#[derive(Debug, Clone)]
pub enum Event {
    /// One record's JSON.
    Record(Bytes),
    /// This many records were lost because the reader fell behind.
    Dropped(u64),
}

pub type Subscription = Pin<Box<dyn futures::Stream<Item = Event> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the log store has stopped")]
    Stopped,
    #[error("this node serves {0} log readers at most, and has that many")]
    TooManyReaders(usize),
}

/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY: usize = 16;

impl LogsConfig {
    /// What a config file cannot mean: an admin key anyone could guess.
    pub fn validate(&self) -> Result<(), String> {
        match &self.admin_key {
            Some(key) if key.trim().chars().count() < MIN_ADMIN_KEY => Err(format!(
                "logs.admin_key must be at least {MIN_ADMIN_KEY} characters (it guards every tenant's records); leave it unset to close the system stream"
            )),
            _ => Ok(()),
        }
    }
}

/// Why records were lost, for metrics.
pub const DROP_REASONS: [&str; 6] = ["queue_full", "reader_lagged", "kafka_queue_full", "kafka_failed", "worker_rate", "unflushed"];

#[derive(Debug, Clone, Copy)]
pub enum Loss {
    QueueFull = 0,
    ReaderLagged = 1,
    KafkaQueueFull = 2,
    KafkaFailed = 3,
    /// A worker sent console lines faster than `worker_log_rate`.
    WorkerRate = 4,
    /// Still held for Kafka when the node stopped.
    Unflushed = 5,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records accepted by the store.
    pub written: AtomicU64,
    /// Records lost, by [`DROP_REASONS`].
    pub dropped: [AtomicU64; 6],
    /// Kafka messages acknowledged by the broker.
    pub kafka_delivered: AtomicU64,
}

impl LogStats {
    pub fn lost(&self, why: Loss, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// Where records are kept and read from.
pub trait Backend: Send + Sync + 'static {
    /// Stores one record. Called by the pump only; must not block.
    fn write(&self, entry: Entry);
    /// Follows `stream`, first replaying records written at or after
    /// `since`. Resolves once the reader is attached: every record written
    /// after that reaches it.
    fn subscribe(&self, stream: StreamId, since: Option<SystemTime>) -> BoxFuture<'static, Result<Subscription, LogError>>;
    /// Messages accepted but not yet stored for good (Kafka's producer queue).
    fn held(&self) -> u64 {
        0
    }
    /// Whether the store's service answers (`None`: nothing to reach).
    fn connected(&self) -> Option<bool> {
        None
    }
    /// Waits up to `timeout` for what is held to be stored; blocks. Returns
    /// how many messages were still held.
    fn flush(&self, _timeout: Duration) -> u64 {
        0
    }
}

/// The node's log service. Cheap to clone.
#[derive(Clone)]
pub struct Logs {
    inner: Arc<Inner>,
}

/// System records waiting to be stored: few, and never behind tenant ones.
const SYSTEM_QUEUE: usize = 1024;

struct Inner {
    /// Tenant records.
    tx: mpsc::Sender<Record>,
    /// The node's own records, apart so tenant floods cannot crowd them out.
    system_tx: mpsc::Sender<Record>,
    backend: Arc<dyn Backend>,
    stats: Arc<LogStats>,
    config: LogsConfig,
    /// One permit per reader attached.
    readers: Arc<tokio::sync::Semaphore>,
}

impl Logs {
    /// Starts the configured backend and the pump (inside a tokio runtime).
    pub fn start(config: &LogsConfig) -> Result<Logs, LogError> {
        let stats = Arc::new(LogStats::default());
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::Memory => Arc::new(memory::Memory::new(config.ring_records, config.ring_bytes, config.reader_buffer, stats.clone())),
            BackendKind::Kafka => Arc::new(kafka::Kafka::new(&config.kafka, config.reader_buffer, stats.clone())?),
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (system_tx, system_rx) = mpsc::channel(SYSTEM_QUEUE);
        tokio::spawn(pump(system_rx, rx, backend.clone(), stats.clone()));
        let readers = Arc::new(tokio::sync::Semaphore::new(config.max_readers));
        Ok(Logs { inner: Arc::new(Inner { tx, system_tx, backend, stats, config: config.clone(), readers }) })
    }

    /// Hands `record` to the store; never blocks (a full queue drops it).
    pub fn publish(&self, record: Record) {
        let queue = match record.source {
            Source::Tenant => &self.inner.tx,
            Source::System => &self.inner.system_tx,
        };
        if queue.try_send(record).is_err() {
            self.inner.stats.lost(Loss::QueueFull, 1);
        }
    }

    /// Follows `stream`, replaying the records of the last `since` first;
    /// refused past `max_readers` readers at once.
    pub async fn subscribe(&self, stream: StreamId, since: Option<Duration>) -> Result<Subscription, LogError> {
        let permit = self.inner.readers.clone().try_acquire_owned().map_err(|_| LogError::TooManyReaders(self.inner.config.max_readers))?;
        let since = since.map(|d| SystemTime::now().checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
        let events = self.inner.backend.subscribe(stream, since).await?;
        // The permit goes when the reader does.
        Ok(Box::pin(futures::StreamExt::map(events, move |event| {
            let _reader = &permit;
            event
        })))
    }

    /// When the node stops: waits up to `timeout` for the store to take
    /// what it holds (Kafka's producer queue); what is still held then is
    /// counted as dropped (`unflushed`).
    pub async fn shutdown(&self, timeout: Duration) {
        let backend = self.inner.backend.clone();
        let left = tokio::task::spawn_blocking(move || backend.flush(timeout)).await.unwrap_or(0);
        if left > 0 {
            self.inner.stats.lost(Loss::Unflushed, left);
        }
    }

    pub fn stats(&self) -> &LogStats {
        &self.inner.stats
    }

    pub fn held(&self) -> u64 {
        self.inner.backend.held()
    }

    pub fn connected(&self) -> Option<bool> {
        self.inner.backend.connected()
    }

    pub fn config(&self) -> &LogsConfig {
        &self.inner.config
    }

    /// A console line of a worker process: `container` and `pid` are what
    /// the node knows of the worker, never what the worker said.
    pub fn worker_line(&self, container: Arc<str>, req_id: Option<Arc<str>>, pid: u32, level: u8, msg: &str) {
        let msg = crate::engine::console::truncate(msg, self.inner.config.line_bytes).into_owned();
        let mut record = Record::tenant(container, req_id, crate::engine::console::level::clamp(level.into()), msg);
        record.pid = pid;
        self.publish(record);
    }
}

impl ConsoleSink for Logs {
    fn line_bytes(&self) -> usize {
        self.inner.config.line_bytes
    }

    fn log(&self, line: ConsoleLine) {
        self.publish(Record::tenant(line.container, line.req_id, line.level, line.msg));
    }
}

/// Serializes each record once and stores it, in batches as they come,
/// system records first.
async fn pump(mut system: mpsc::Receiver<Record>, mut tenant: mpsc::Receiver<Record>, backend: Arc<dyn Backend>, stats: Arc<LogStats>) {
    let (mut system_batch, mut tenant_batch) = (Vec::with_capacity(64), Vec::with_capacity(256));
    loop {
        let batch = tokio::select! {
            biased;
            n = system.recv_many(&mut system_batch, 64) => (n > 0).then_some(&mut system_batch),
            n = tenant.recv_many(&mut tenant_batch, 256) => (n > 0).then_some(&mut tenant_batch),
        };
        // Both senders go with the last Logs.
        let Some(batch) = batch else { return };
        for record in batch.drain(..) {
            backend.write(Entry::from(&record));
            stats.written.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_tenant_flood_never_crowds_out_system_records() {
        let logs = Logs::start(&LogsConfig { queue: 4, ..LogsConfig::default() }).unwrap();
        let mut system = logs.subscribe(StreamId::System, None).await.unwrap();
        // No await in between: the pump has not run, the tenant queue is full.
        for i in 0..100 {
            logs.publish(Record::tenant("flood".into(), None, 30, i.to_string()));
        }
        logs.publish(Record::new(Source::System, 40, "the node's own"));
        assert_eq!(logs.stats().dropped[Loss::QueueFull as usize].load(Ordering::Relaxed), 96);
        let mut msgs = Vec::new();
        for _ in 0..5 {
            let Some(Event::Record(json)) = system.next().await else { panic!("a record") };
            msgs.push(serde_json::from_slice::<serde_json::Value>(&json).unwrap()["msg"].as_str().unwrap().to_owned());
        }
        assert_eq!(msgs, ["the node's own", "0", "1", "2", "3"]);
    }

    #[tokio::test]
    async fn readers_past_the_cap_are_refused_until_one_goes() {
        let logs = Logs::start(&LogsConfig { max_readers: 2, ..LogsConfig::default() }).unwrap();
        let a = logs.subscribe(StreamId::System, None).await.unwrap();
        let _b = logs.subscribe(StreamId::Tenant("b".into()), None).await.unwrap();
        assert!(matches!(logs.subscribe(StreamId::System, None).await, Err(LogError::TooManyReaders(2))));
        drop(a);
        assert!(logs.subscribe(StreamId::System, None).await.is_ok());
    }

    #[test]
    fn admin_keys_are_long_enough_to_guard_something() {
        let with = |key: &str| LogsConfig { admin_key: Some(key.into()), ..LogsConfig::default() }.validate();
        assert!(with("").is_err());
        assert!(with("short-key").is_err());
        assert!(with("a-key-of-16-char").is_ok());
        assert!(LogsConfig::default().validate().is_ok());
    }
}
