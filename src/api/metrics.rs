//! `GET /metrics` in Prometheus text format: requests by status, latency
//! histogram, live isolates, limit kills by kind. Engine figures are read
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
use crate::engine::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<StatusLabel, Counter>,
    latency: Histogram,
    live_isolates: Gauge,
    isolates_created: Counter,
    compilations: Counter,
    kills: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<StatusLabel, Counter>::default();
        // 50 µs .. ~26 s
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let live_isolates = Gauge::default();
        let isolates_created = Counter::default();
        let compilations = Counter::default();
        let kills = Family::<KindLabel, Counter>::default();
        let mut registry = Registry::with_prefix("webtask");
        registry.register("http_requests", "Run requests by response status", requests.clone());
        registry.register("http_request_duration_seconds", "Run request latency to response head", latency.clone());
        registry.register("live_isolates", "V8 isolates alive", live_isolates.clone());
        registry.register("isolates_created", "V8 isolates created from the snapshot", isolates_created.clone());
        registry.register("compilations", "Webtask compilations (compile-cache misses)", compilations.clone());
        registry.register("limit_kills", "Requests ended by a limit, by kind", kills.clone());
        Metrics { registry: Mutex::new(registry), requests, latency, live_isolates, isolates_created, compilations, kills }
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&StatusLabel { status }).inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn limit_fired(&self, kind: &str) {
        self.kills.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    pub fn render(&self, stats: &Stats) -> Response<Body> {
        use std::sync::atomic::Ordering::Relaxed;
        self.live_isolates.set(stats.live_isolates.load(Relaxed) as i64);
        sync_counter(&self.isolates_created, stats.isolates_created.load(Relaxed));
        sync_counter(&self.compilations, stats.compilations.load(Relaxed));
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

/// Brings a Prometheus counter up to an engine counter's value.
fn sync_counter(counter: &Counter, value: u64) {
    counter.inc_by(value.saturating_sub(counter.get()));
}
