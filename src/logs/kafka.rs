//! The cluster log store: Kafka (rdkafka). One topic per container,
//! `<prefix>.tenant.<container>`, and `<prefix>.system` with every record;
//! every message goes to partition 0, so a stream keeps its order. Readers
//! consume the topic themselves, so records any node wrote reach a reader on
//! any node.
//!
//! Writing only enqueues; it never waits for the network. While Kafka is
//! unreachable (and until it first answers) records are held in order, up
//! to `buffer` messages and `buffer_bytes` bytes (librdkafka's queue has
//! the same bounds); later ones are dropped and counted. Once Kafka answers
//! again the node (re)creates its topics and sends what it held.
//!
//! Only writers create topics: a reader never does (nor lets the broker
//! auto-create one), so following streams costs the cluster nothing. A
//! reader of a topic that does not exist yet waits, checking again now and
//! then; readers whose broker went away attach a fresh consumer when it is
//! back and resume by time.
//!
//! Owns the Kafka mapping of streams; knows nothing of HTTP.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Backend, Entry, Event, LogError, LogStats, Loss, StreamId, Subscription};

/// `[logs.kafka]` in webtask.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic names are `<prefix>.tenant.<container>` and `<prefix>.system`.
    pub prefix: String,
    /// Messages held while Kafka is unreachable; past this they are dropped.
    pub buffer: usize,
    /// ...and bytes of them at most.
    pub buffer_bytes: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { brokers: "127.0.0.1:9092".into(), prefix: "webtask".into(), buffer: 100_000, buffer_bytes: 64 * 1024 * 1024 }
    }
}

/// What a reader's consumer prefetches at most: a reader that does not keep
/// up holds back its own consumer, which must not hoard the records meanwhile.
const READER_QUEUE_KBYTES: &str = "1024";

/// How long a reader waits for Kafka to answer while it attaches.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Kafka {
    writer: Arc<Writer>,
    config: KafkaConfig,
    reader_buffer: usize,
}

/// The producing side. While Kafka is unreachable, records wait in `gate`
/// (ours, in order) rather than in librdkafka's queue: a broker that comes
/// back without its topics (restarted empty, or a cluster rebuilt) gets them
/// created again before any held record is sent, so nothing is written to
/// a topic that is not there.
struct Writer {
    producer: ThreadedProducer<Counting>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Every topic this node writes to.
    topics: Mutex<HashSet<String>>,
    gate: Arc<Mutex<Gate>>,
    wake: Arc<tokio::sync::Notify>,
    /// Messages held at most, ours and librdkafka's together.
    buffer: usize,
    /// Bytes we hold at most (librdkafka bounds its own queue the same).
    buffer_bytes: usize,
    stats: Arc<LogStats>,
}

#[derive(Default)]
struct Gate {
    /// Kafka answered since it was last lost.
    up: bool,
    held: std::collections::VecDeque<(String, Bytes, i64)>,
    /// Payload bytes in `held`.
    held_bytes: usize,
}

/// Counts what the broker acknowledged and what it refused for good, and
/// closes the gate when every broker is gone.
struct Counting {
    stats: Arc<LogStats>,
    gate: Arc<Mutex<Gate>>,
    wake: Arc<tokio::sync::Notify>,
}

impl ClientContext for Counting {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.gate.lock().unwrap().up = false;
            self.wake.notify_one();
        }
        tracing::debug!(error = %error, reason, "log producer: kafka");
    }
}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => drop(self.stats.kafka_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            Err(_) => self.stats.lost(Loss::KafkaFailed, 1),
        }
    }
}

/// Between checks whether Kafka is back.
const RETRY: Duration = Duration::from_millis(500);

impl Kafka {
    /// Starts the producer closed: records are held until Kafka has
    /// answered once (and the system topic exists).
    pub fn new(config: &KafkaConfig, reader_buffer: usize, stats: Arc<LogStats>) -> Result<Self, LogError> {
        let gate = Arc::new(Mutex::new(Gate::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let context = Counting { stats: stats.clone(), gate: gate.clone(), wake: wake.clone() };
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("queue.buffering.max.messages", config.buffer.max(1).to_string())
            .set("queue.buffering.max.kbytes", (config.buffer_bytes / 1024).clamp(1, i32::MAX as usize).to_string())
            // Held until delivered, however long Kafka is away.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(context)?;
        let system = topic_name(&config.prefix, &StreamId::System);
        let writer = Arc::new(Writer {
            producer,
            admin: Arc::new(client_config(&config.brokers).create()?),
            topics: Mutex::new(HashSet::from([system])),
            gate,
            wake,
            buffer: config.buffer.max(1),
            buffer_bytes: config.buffer_bytes.max(1),
            stats,
        });
        tokio::spawn(reopen(Arc::downgrade(&writer)));
        writer.wake.notify_one();
        Ok(Kafka { writer, config: config.clone(), reader_buffer: reader_buffer.max(1) })
    }

    /// The topic of a stream.
    pub fn topic(&self, stream: &StreamId) -> String {
        topic_name(&self.config.prefix, stream)
    }
}

impl Writer {
    /// Asks Kafka, in the background, to create a topic this node has not
    /// written before, with one partition.
    fn ensure_topic(&self, topic: &str) {
        {
            let mut topics = self.topics.lock().unwrap();
            if topics.contains(topic) {
                return;
            }
            topics.insert(topic.to_owned());
        }
        let (admin, topic) = (self.admin.clone(), topic.to_owned());
        tokio::spawn(async move {
            if let Err(e) = create_topic(&admin, &topic).await {
                tracing::debug!(topic, error = %e, "could not create topic");
            }
        });
    }

    fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    /// Sends now, or holds while the gate is closed (within the bound).
    fn write(&self, topic: &str, json: &Bytes, ms: i64) {
        let mut gate = self.gate.lock().unwrap();
        if gate.up {
            return self.send(topic, json, ms);
        }
        if gate.held.len() + self.in_flight() >= self.buffer || gate.held_bytes + json.len() > self.buffer_bytes {
            return self.stats.lost(Loss::KafkaQueueFull, 1);
        }
        gate.held_bytes += json.len();
        gate.held.push_back((topic.to_owned(), json.clone(), ms));
    }

    fn send(&self, topic: &str, json: &Bytes, ms: i64) {
        let record = BaseRecord::<(), [u8]>::to(topic).payload(&json[..]).partition(0).timestamp(ms);
        if let Err((e, _)) = self.producer.send(record) {
            let why = match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Loss::KafkaQueueFull,
                _ => Loss::KafkaFailed,
            };
            self.stats.lost(why, 1);
        }
    }

    /// Whether Kafka answers; (re)creates every topic this node writes on the way.
    async fn reachable(&self) -> bool {
        let topics: Vec<String> = self.topics.lock().unwrap().iter().cloned().collect();
        let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
        let options = AdminOptions::new().request_timeout(Some(ATTACH_TIMEOUT));
        self.admin.create_topics(&new, &options).await.is_ok()
    }

    /// Sends what was held, in order, and opens the gate.
    fn reopen(&self) {
        let mut gate = self.gate.lock().unwrap();
        while let Some((topic, json, ms)) = gate.held.pop_front() {
            self.send(&topic, &json, ms);
        }
        gate.held_bytes = 0;
        gate.up = true;
    }
}

/// Whenever the gate closes: waits for Kafka to answer, then reopens it.
async fn reopen(writer: std::sync::Weak<Writer>) {
    loop {
        let Some(wake) = writer.upgrade().map(|w| w.wake.clone()) else { return };
        wake.notified().await;
        loop {
            let Some(w) = writer.upgrade() else { return };
            if w.gate.lock().unwrap().up {
                break;
            }
            if w.reachable().await {
                w.reopen();
                tracing::info!("log store: kafka reachable");
                break;
            }
            drop(w);
            tokio::time::sleep(RETRY).await;
        }
    }
}

impl Backend for Kafka {
    fn write(&self, entry: Entry) {
        let ms = millis(entry.time);
        if let Some(container) = &entry.tenant {
            let topic = self.topic(&StreamId::Tenant(container.clone()));
            self.writer.ensure_topic(&topic);
            self.writer.write(&topic, &entry.json, ms);
        }
        self.writer.write(&self.topic(&StreamId::System), &entry.json, ms);
    }

    fn subscribe(&self, stream: StreamId, since: Option<SystemTime>) -> BoxFuture<'static, Result<Subscription, LogError>> {
        let topic = self.topic(&stream);
        let brokers = self.config.brokers.clone();
        let buffer = self.reader_buffer;
        Box::pin(async move {
            // Attached now if the topic exists; if not (a container that has
            // not logged yet), the reader waits for its first writer.
            let start = since.map_or(Start::End, Start::At);
            let first = attach(brokers.clone(), topic.clone(), start).await?;
            let (tx, rx) = mpsc::channel(buffer);
            let source = Source { brokers, topic };
            tokio::spawn(forward(source, first, since, tx));
            let events = futures::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
            Ok(Box::pin(events) as Subscription)
        })
    }

    fn held(&self) -> u64 {
        (self.writer.gate.lock().unwrap().held.len() + self.writer.in_flight()) as u64
    }

    fn connected(&self) -> Option<bool> {
        Some(self.writer.gate.lock().unwrap().up)
    }

    fn flush(&self, timeout: Duration) -> u64 {
        // Held behind a closed gate, nothing can go now; what librdkafka
        // has gets until the timeout.
        let _ = self.writer.producer.flush(timeout);
        self.held()
    }
}

/// Where a reader's consumers read from.
struct Source {
    brokers: String,
    topic: String,
}

/// `<prefix>.system`, `<prefix>.tenant.<container>`. Kafka takes `.` and `_`
/// for the same character in topic names; container names hold `_` but never
/// `.`, so folding one into the other keeps them apart, and nothing under
/// `tenant.` can fold into `system`.
fn topic_name(prefix: &str, stream: &StreamId) -> String {
    match stream {
        StreamId::System => format!("{prefix}.system"),
        StreamId::Tenant(c) => format!("{prefix}.tenant.{c}"),
    }
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

async fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<(), KafkaError> {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(ATTACH_TIMEOUT));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// Notices a reader's consumer losing the broker. The consumer is then
/// dropped and a new one attached once Kafka is back: a consumer kept
/// across a broker that came back with different topic state (a restarted
/// in-memory broker, a re-created topic) is not something librdkafka
/// reliably survives.
#[derive(Default)]
struct ReaderContext {
    lost: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "log reader: kafka");
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.lost.store(true, std::sync::atomic::Ordering::Release);
            self.wake.notify_one();
        }
    }
}

impl ConsumerContext for ReaderContext {}

type Reader = StreamConsumer<ReaderContext>;

/// Where a reader starts: the current end, or the first record at or after
/// a time.
#[derive(Clone, Copy)]
enum Start {
    End,
    At(SystemTime),
}

type Attached = (Reader, Arc<ReaderContext>);

/// A consumer of `topic`'s partition 0 from `start`, or `None` if the topic
/// does not exist (yet). With `Start::End` the end is resolved before this
/// returns, so a reader that has attached misses nothing written after.
async fn attach(brokers: String, topic: String, start: Start) -> Result<Option<Attached>, LogError> {
    tokio::task::spawn_blocking(move || {
        let consumer: Reader = client_config(&brokers)
            // librdkafka assigns partitions only to a consumer with a group;
            // nothing is ever committed for it.
            .set("group.id", format!("webtask-reader-{}", crate::engine::new_req_id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("queued.max.messages.kbytes", READER_QUEUE_KBYTES)
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(ReaderContext::default())?;
        // Fails while Kafka is unreachable, so a reader attaches for real or not at all.
        let metadata = consumer.fetch_metadata(Some(topic.as_str()), ATTACH_TIMEOUT)?;
        let exists = metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            return Ok(None);
        }
        let (_, high) = consumer.fetch_watermarks(&topic, 0, ATTACH_TIMEOUT)?;
        let offset = match start {
            Start::At(since) => offset_at(&consumer, &topic, since),
            Start::End => Offset::Offset(high),
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, offset)?;
        consumer.assign(&assignment)?;
        let context = consumer.context().clone();
        Ok(Some((consumer, context)))
    })
    .await
    .map_err(|_| LogError::Stopped)?
}

/// The offset of the first message at or after `since` (the beginning if
/// the broker cannot say).
fn offset_at(consumer: &Reader, topic: &str, since: SystemTime) -> Offset {
    let ms = millis(since);
    let mut query = TopicPartitionList::new();
    if query.add_partition_offset(topic, 0, Offset::Offset(ms)).is_err() {
        return Offset::Beginning;
    }
    let found = consumer.offsets_for_times(query, ATTACH_TIMEOUT).ok();
    let offset = found.and_then(|tpl| tpl.find_partition(topic, 0).map(|p| p.offset()));
    match offset {
        Some(o @ Offset::Offset(_)) | Some(o @ Offset::End) => o,
        _ => Offset::Beginning,
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How far back a reader attached again looks, for records another node
/// stamped a little earlier but wrote a little later.
const CLOCK_SKEW_MS: i64 = 5_000;

/// Messages a reader remembers having been given, to skip them when it is
/// attached again and the window replays.
const REMEMBERED: usize = 4096;

/// What a reader has been given, so that a reader attached again after an
/// outage resumes by time with nothing lost and nothing repeated.
struct Position {
    /// Older messages are not for this reader (`since`, or where a reader
    /// without one attached).
    floor_ms: i64,
    /// Newest message time given.
    last_ms: i64,
    /// (time, payload hash) of the messages given lately, with counts.
    given: std::collections::HashMap<(i64, u64), u32>,
    order: std::collections::VecDeque<(i64, u64)>,
    /// After attaching again: what was given already, to skip once each.
    skip: std::collections::HashMap<(i64, u64), u32>,
}

impl Position {
    fn new(floor_ms: i64) -> Self {
        Position { floor_ms, last_ms: i64::MIN, given: Default::default(), order: Default::default(), skip: Default::default() }
    }

    /// Whether a message is for the reader; remembers it if so.
    fn admit(&mut self, ms: i64, payload: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        if ms < self.floor_ms {
            return false;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        payload.hash(&mut hasher);
        let key = (ms, hasher.finish());
        if let Some(n) = self.skip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.skip.remove(&key);
            }
            return false;
        }
        *self.given.entry(key).or_default() += 1;
        self.order.push_back(key);
        if self.order.len() > REMEMBERED {
            let old = self.order.pop_front().expect("not empty");
            if let Some(n) = self.given.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.given.remove(&old);
                }
            }
        }
        self.last_ms = self.last_ms.max(ms);
        true
    }

    /// Where a new consumer starts, and from then on skip what was given.
    fn resume(&mut self) -> SystemTime {
        self.skip = self.given.clone();
        let from = self.last_ms.max(self.floor_ms).saturating_sub(CLOCK_SKEW_MS).max(0);
        UNIX_EPOCH + Duration::from_millis(from as u64)
    }
}

/// Moves messages from Kafka to the reader until the reader goes, attaching
/// a fresh consumer whenever the broker was lost. A reader that does not
/// keep up holds its consumer back (Kafka keeps the records), never the
/// writers.
/// A reader whose topic did not exist yet starts with `first` = `None` and
/// attaches, from its floor, once a writer has created it.
async fn forward(source: Source, first: Option<Attached>, since: Option<SystemTime>, tx: mpsc::Sender<Event>) {
    let floor = since.map_or_else(|| millis(SystemTime::now()).saturating_sub(CLOCK_SKEW_MS), millis);
    let mut position = Position::new(if since.is_some() { floor } else { i64::MIN });
    let mut current = first;
    loop {
        let (consumer, context) = match current.take() {
            Some(attached) => attached,
            None => {
                position.floor_ms = position.floor_ms.max(floor);
                match reattach(&source, position.resume(), &tx).await {
                    Some(attached) => attached,
                    None => return,
                }
            }
        };
        let reading = relay(&consumer, &context, &mut position, &tx).await;
        // Closing a consumer waits on the broker: never on a runtime thread.
        tokio::task::spawn_blocking(move || drop(consumer));
        if !reading {
            return;
        }
    }
}

/// Relays until the reader goes (false) or the broker is lost (true).
async fn relay(consumer: &Reader, context: &ReaderContext, position: &mut Position, tx: &mpsc::Sender<Event>) -> bool {
    use std::sync::atomic::Ordering::Acquire;
    while !context.lost.load(Acquire) {
        let message = tokio::select! {
            () = tx.closed() => return false,
            () = context.wake.notified() => continue,
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let ms = message.timestamp().to_millis().unwrap_or(i64::MAX);
        let Some(payload) = message.payload() else { continue };
        // Only nodes write these topics, but a reader's stream must stay
        // one event per record, each a JSON record, whatever a topic holds.
        if !sse_safe(payload) || !position.admit(ms, payload) {
            continue;
        }
        if tx.send(Event::Record(Bytes::copy_from_slice(payload))).await.is_err() {
            return false;
        }
    }
    true
}

/// Whether a payload can go out as one SSE `data:` line: UTF-8 JSON with
/// no raw line break (JSON allows them between tokens; SSE would split there).
fn sse_safe(payload: &[u8]) -> bool {
    !payload.contains(&b'\n')
        && !payload.contains(&b'\r')
        && std::str::from_utf8(payload).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// A new consumer from `from`, once Kafka answers again and the topic
/// exists (a writer creates it; a reader never does); `None` if the reader
/// left meanwhile.
async fn reattach(source: &Source, from: SystemTime, tx: &mpsc::Sender<Event>) -> Option<Attached> {
    use std::sync::atomic::Ordering::Acquire;
    loop {
        if tx.is_closed() {
            return None;
        }
        match attach(source.brokers.clone(), source.topic.clone(), Start::At(from)).await {
            Ok(Some(attached)) if !attached.1.lost.load(Acquire) => return Some(attached),
            Ok(Some((consumer, _))) => drop(tokio::task::spawn_blocking(move || drop(consumer))),
            Ok(None) | Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_attached_again_skips_what_it_was_given_once_each() {
        let mut p = Position::new(i64::MIN);
        assert!(p.admit(1000, b"a"));
        assert!(p.admit(1000, b"a")); // the same line twice in one millisecond
        assert!(p.admit(900, b"b")); // another node's clock, a little behind
        let from = p.resume();
        assert_eq!(from, UNIX_EPOCH);
        // The window replays: given ones are skipped, new ones pass.
        assert!(!p.admit(1000, b"a"));
        assert!(!p.admit(900, b"b"));
        assert!(!p.admit(1000, b"a"));
        assert!(p.admit(1000, b"a"));
        assert!(p.admit(1001, b"c"));
    }

    #[test]
    fn since_is_a_floor() {
        let mut p = Position::new(500);
        assert!(!p.admit(499, b"old"));
        assert!(p.admit(500, b"new"));
    }

    #[test]
    fn no_container_shares_a_topic_even_with_dots_and_underscores_folded() {
        // Kafka refuses a topic whose name differs from another's only in
        // `.` against `_`.
        let fold = |s: StreamId| topic_name("wt", &s).replace('.', "_");
        assert_eq!(topic_name("wt", &StreamId::System), "wt.system");
        assert_eq!(topic_name("wt", &StreamId::Tenant("acme".into())), "wt.tenant.acme");
        let long = "x".repeat(64);
        let names = ["system", "tenant", "system_tenant", "tenant_system", "a_b", "a-b", "ab", "a__b", "_", "-", "tenant_a", "a", "A", &long];
        let mut seen = HashSet::from([fold(StreamId::System)]);
        for name in names {
            assert!(crate::engine::valid_container(name), "{name}");
            assert!(seen.insert(fold(StreamId::Tenant(name.into()))), "{name} collides");
        }
    }

    #[test]
    fn only_one_line_json_goes_out_as_sse_data() {
        assert!(sse_safe(br#"{"msg":"a\nb"}"#));
        assert!(!sse_safe(b"{\"msg\":\n1}"));
        assert!(!sse_safe(b"not json"));
        assert!(!sse_safe(b"{\"msg\":\"\xff\"}"));
        assert!(!sse_safe(b""));
    }
}
