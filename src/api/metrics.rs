//! `GET /metrics` in Prometheus text format: requests by status, latency
//! histogram, live isolates, limit kills by kind, log records written and
//! lost, Kafka messages held and delivered. Engine figures are read
//! from `engine::Stats` at scrape time, so the engine stays free of any
//! metrics library.

use std::sync::Mutex;
use std::time::Duration;

use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Body;
use crate::logs::{Logs, DROP_REASONS};
use crate::pool::{Runner, RETIRE_REASONS};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    container: String,
    pid: u32,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<StatusLabel, Counter>,
    latency: Histogram,
    live_isolates: Gauge,
    isolates_created: Counter,
    compilations: Counter,
    code_cache_bytes: Gauge,
    kills: Family<KindLabel, Counter>,
    workers_spawned: Counter,
    workers_retired: Family<ReasonLabel, Counter>,
    workers_idle: Gauge,
    worker: Family<WorkerLabel, Gauge>,
    log_records: Counter,
    log_dropped: Family<ReasonLabel, Counter>,
    kafka_held: Gauge,
    kafka_delivered: Counter,
    kafka_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// `kafka`: whether the log store has a service to reach, whose
    /// connection is then reported; a memory store has none to report.
    pub fn new(kafka: bool) -> Self {
        let requests = Family::<StatusLabel, Counter>::default();
        // 50 µs .. ~26 s
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let live_isolates = Gauge::default();
        let isolates_created = Counter::default();
        let compilations = Counter::default();
        let code_cache_bytes = Gauge::default();
        let kills = Family::<KindLabel, Counter>::default();
        let workers_spawned = Counter::default();
        let workers_retired = Family::<ReasonLabel, Counter>::default();
        let workers_idle = Gauge::default();
        let worker = Family::<WorkerLabel, Gauge>::default();
        let log_records = Counter::default();
        let log_dropped = Family::<ReasonLabel, Counter>::default();
        let kafka_held = Gauge::default();
        let kafka_delivered = Counter::default();
        let kafka_connected = Gauge::default();
        let mut registry = Registry::with_prefix("webtask");
        registry.register("http_requests", "Run requests by response status", requests.clone());
        registry.register("http_request_duration_seconds", "Run request latency to response head", latency.clone());
        registry.register("live_isolates", "V8 isolates alive", live_isolates.clone());
        registry.register("isolates_created", "V8 isolates created from the snapshot", isolates_created.clone());
        registry.register("compilations", "Webtask compilations (compile-cache misses)", compilations.clone());
        registry.register(
            "code_cache_bytes",
            "Size of the V8 code cache for the Node shim and module set; 0 without one (building, off, or failed)",
            code_cache_bytes.clone(),
        );
        registry.register("limit_kills", "Requests ended by a limit, by kind", kills.clone());
        registry.register("workers_spawned", "Worker processes started", workers_spawned.clone());
        registry.register("workers_retired", "Worker processes ended, by reason", workers_retired.clone());
        registry.register("workers_idle", "Pre-warmed workers waiting for a container", workers_idle.clone());
        registry.register("worker", "The worker process serving each container (value 1)", worker.clone());
        registry.register("log_records", "Log records stored", log_records.clone());
        registry.register("log_records_dropped", "Log records lost, by reason", log_dropped.clone());
        registry.register("log_kafka_held", "Kafka messages waiting in the producer queue", kafka_held.clone());
        registry.register("log_kafka_delivered", "Kafka messages acknowledged by the broker", kafka_delivered.clone());
        if kafka {
            registry.register("log_kafka_connected", "1 while Kafka answers (kafka backend)", kafka_connected.clone());
        }
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            live_isolates,
            isolates_created,
            compilations,
            code_cache_bytes,
            kills,
            workers_spawned,
            workers_retired,
            workers_idle,
            worker,
            log_records,
            log_dropped,
            kafka_held,
            kafka_delivered,
            kafka_connected,
        }
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn limit_fired(&self, kind: &str) {
        self.kills.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    pub fn render(&self, runner: &Runner, logs: &Logs) -> Response<Body> {
        use std::sync::atomic::Ordering::Relaxed;
        self.sync_logs(logs);
        match runner {
            Runner::InProcess(engine) => {
                let stats = engine.stats();
                self.live_isolates.set(stats.live_isolates.load(Relaxed) as i64);
                sync_counter(&self.isolates_created, stats.isolates_created.load(Relaxed));
                sync_counter(&self.compilations, stats.compilations.load(Relaxed));
                self.code_cache_bytes.set(crate::engine::code_cache::installed_bytes() as i64);
            }
            Runner::Workers(pool) => {
                let stats = pool.stats();
                sync_counter(&self.workers_spawned, stats.spawned.load(Relaxed));
                for (reason, n) in RETIRE_REASONS.iter().zip(&stats.retired) {
                    sync_counter(&self.workers_retired.get_or_create(&ReasonLabel { reason }), n.load(Relaxed));
                }
                self.workers_idle.set(pool.idle_workers() as i64);
                self.code_cache_bytes.set(pool.code_cache_bytes() as i64);
                self.worker.clear();
                for (container, pid) in pool.assignments() {
                    self.worker.get_or_create(&WorkerLabel { container: container.to_string(), pid }).set(1);
                }
            }
        }
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry.lock().unwrap());
        let mut res = Response::new(Full::new(text.into()).map_err(|never| match never {}).boxed());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        res
    }
}

impl Metrics {
    fn sync_logs(&self, logs: &Logs) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = logs.stats();
        sync_counter(&self.log_records, stats.written.load(Relaxed));
        for (reason, n) in DROP_REASONS.iter().zip(&stats.dropped) {
            sync_counter(&self.log_dropped.get_or_create(&ReasonLabel { reason }), n.load(Relaxed));
        }
        self.kafka_held.set(logs.held() as i64);
        sync_counter(&self.kafka_delivered, stats.kafka_delivered.load(Relaxed));
        self.kafka_connected.set(logs.connected().unwrap_or(false) as i64);
    }
}

/// Brings a Prometheus counter up to an engine counter's value.
fn sync_counter(counter: &Counter, value: u64) {
    counter.inc_by(value.saturating_sub(counter.get()));
}
