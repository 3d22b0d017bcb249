//! The cluster log store: Kafka (rdkafka). One topic per container,
//! `<prefix>.<container>`, and `<prefix>.system` with every record; every
//! message goes to partition 0, so a stream keeps its order. Readers consume
//! the topic themselves, so records any node wrote reach a reader on any node.
//!
//! The producer's queue is the bound: while Kafka is unreachable records
//! wait there (never expiring) up to `buffer` messages, later ones are
//! dropped and counted, and what was held is delivered once Kafka is back.
//! Writing only enqueues; it never waits for the network.
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
use rdkafka::consumer::{Consumer, StreamConsumer};
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
    /// Topic names are `<prefix>.<container>` and `<prefix>.system`.
    pub prefix: String,
    /// Messages held while Kafka is unreachable; past this they are dropped.
    pub buffer: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { brokers: "127.0.0.1:9092".into(), prefix: "webtask".into(), buffer: 100_000 }
    }
}

/// How long a reader waits for Kafka to answer while it attaches.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Kafka {
    producer: ThreadedProducer<Counting>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Topics this node has asked Kafka to create.
    created: Mutex<HashSet<String>>,
    config: KafkaConfig,
    reader_buffer: usize,
    stats: Arc<LogStats>,
}

/// Counts what the broker acknowledged and what it refused for good.
struct Counting {
    stats: Arc<LogStats>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => drop(self.stats.kafka_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            Err(_) => self.stats.lost(Loss::KafkaFailed, 1),
        }
    }
}

impl Kafka {
    pub fn new(config: &KafkaConfig, reader_buffer: usize, stats: Arc<LogStats>) -> Result<Self, LogError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("queue.buffering.max.messages", config.buffer.max(1).to_string())
            // Held until delivered, however long Kafka is away.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(Counting { stats: stats.clone() })?;
        let admin = client_config(&config.brokers).create()?;
        let kafka = Kafka {
            producer,
            admin: Arc::new(admin),
            created: Mutex::default(),
            config: config.clone(),
            reader_buffer: reader_buffer.max(1),
            stats,
        };
        kafka.ensure_topic(kafka.topic(&StreamId::System));
        Ok(kafka)
    }

    /// The topic of a stream. Container names never hold a dot, so only a
    /// container called `system` needs a name of its own.
    pub fn topic(&self, stream: &StreamId) -> String {
        let prefix = &self.config.prefix;
        match stream {
            StreamId::System => format!("{prefix}.system"),
            StreamId::Tenant(c) if &**c == "system" => format!("{prefix}.system.tenant"),
            StreamId::Tenant(c) => format!("{prefix}.{c}"),
        }
    }

    /// Asks Kafka, in the background, to create `topic` with one partition
    /// (once per node; brokers that create topics on first use need not).
    fn ensure_topic(&self, topic: String) {
        if !self.created.lock().unwrap().insert(topic.clone()) {
            return;
        }
        let admin = self.admin.clone();
        tokio::spawn(async move {
            if let Err(e) = create_topic(&admin, &topic).await {
                tracing::debug!(topic, error = %e, "could not create topic");
            }
        });
    }

    fn send(&self, topic: &str, entry: &Entry) {
        let ms = entry.time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let record = BaseRecord::<(), [u8]>::to(topic).payload(&entry.json[..]).partition(0).timestamp(ms);
        if let Err((e, _)) = self.producer.send(record) {
            let why = match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Loss::KafkaQueueFull,
                _ => Loss::KafkaFailed,
            };
            self.stats.lost(why, 1);
        }
    }
}

impl Backend for Kafka {
    fn write(&self, entry: Entry) {
        if let Some(container) = &entry.tenant {
            let topic = self.topic(&StreamId::Tenant(container.clone()));
            self.ensure_topic(topic.clone());
            self.send(&topic, &entry);
        }
        self.send(&self.topic(&StreamId::System), &entry);
    }

    fn subscribe(&self, stream: StreamId, since: Option<SystemTime>) -> BoxFuture<'static, Result<Subscription, LogError>> {
        let topic = self.topic(&stream);
        let brokers = self.config.brokers.clone();
        let admin = self.admin.clone();
        let buffer = self.reader_buffer;
        Box::pin(async move {
            // Created before the first record if need be, so a reader can
            // attach to a container that has not logged yet.
            let _ = create_topic(&admin, &topic).await;
            let consumer = attach(brokers, topic, since).await?;
            let (tx, rx) = mpsc::channel(buffer);
            tokio::spawn(forward(consumer, since, tx));
            let events = futures::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
            Ok(Box::pin(events) as Subscription)
        })
    }

    fn held(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
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

/// A consumer of `topic`'s partition 0 from where this reader starts: the
/// first record at or after `since`, else the current end (so a reader that
/// has attached misses nothing written after).
async fn attach(brokers: String, topic: String, since: Option<SystemTime>) -> Result<StreamConsumer, LogError> {
    tokio::task::spawn_blocking(move || {
        let consumer: StreamConsumer = client_config(&brokers)
            .set("group.id", format!("webtask-reader-{}", crate::engine::new_req_id()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A broker that lost its data (restarted empty) starts again at 0.
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "true")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "2000")
            .create()?;
        let start = match since {
            Some(since) => offset_at(&consumer, &topic, since),
            None => consumer.fetch_watermarks(&topic, 0, ATTACH_TIMEOUT).map(|(_, high)| Offset::Offset(high))?,
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, start)?;
        consumer.assign(&assignment)?;
        Ok(consumer)
    })
    .await
    .map_err(|_| LogError::Stopped)?
}

/// The offset of the first message at or after `since` (the beginning if
/// the broker cannot say).
fn offset_at(consumer: &StreamConsumer, topic: &str, since: SystemTime) -> Offset {
    let ms = since.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
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

/// Moves messages from Kafka to the reader until the reader goes. A reader
/// that does not keep up holds the consumer back (Kafka keeps the records),
/// never the writers.
async fn forward(consumer: StreamConsumer, since: Option<SystemTime>, tx: mpsc::Sender<Event>) {
    let since_ms = since.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(i64::MIN, |d| d.as_millis() as i64);
    loop {
        let message = tokio::select! {
            () = tx.closed() => return,
            message = consumer.recv() => message,
        };
        let json = match message {
            Ok(m) if m.timestamp().to_millis().unwrap_or(i64::MAX) < since_ms => continue,
            Ok(m) => match m.payload() {
                // Only nodes write these topics, but a reader's stream must
                // stay one event per record whatever a topic holds.
                Some(p) if !p.contains(&b'\n') && !p.contains(&b'\r') => Bytes::copy_from_slice(p),
                _ => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "log reader: kafka");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if tx.send(Event::Record(json)).await.is_err() {
            return;
        }
    }
}
