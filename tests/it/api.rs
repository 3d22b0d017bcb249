//! Node endpoints other than run: health and metrics.

use serde_json::json;

use crate::support::{sample, TestNode};

#[tokio::test]
async fn healthz_reports_ok_then_draining() {
    let node = TestNode::start().await;
    let res = node.get("/healthz").await;
    assert_eq!((res.status, res.json()), (200, json!({"status": "ok"})));
    node.node.start_draining();
    let res = node.get("/healthz").await;
    assert_eq!((res.status, res.json()), (503, json!({"status": "draining"})));
}

#[tokio::test]
async fn metrics_count_requests_latency_isolates_and_kills() {
    let node = TestNode::start().await;
    node.run("m1", "", "return function (cb) { cb(null, 1); }").await;
    node.run("m2", "", "return function (cb) { cb(new Error('x')); }").await;
    node.run("m3", "", "return function (cb) { while (true) {} }").await;
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"webtask_http_requests_total{status="200"}"#), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"webtask_http_requests_total{status="500"}"#), Some(2.0), "{m}");
    assert_eq!(sample(&m, "webtask_http_request_duration_seconds_count"), Some(3.0), "{m}");
    // m1 and m2 live; m3's isolate was discarded and not yet rebuilt.
    assert_eq!(sample(&m, "webtask_live_isolates"), Some(2.0), "{m}");
    assert_eq!(sample(&m, r#"webtask_limit_kills_total{kind="cpu_limit"}"#), Some(1.0), "{m}");
    assert!(m.contains("# TYPE webtask_http_request_duration_seconds histogram"));
}

#[test]
fn example_config_is_the_embedded_default() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/webtask.example.toml")).unwrap();
    let parsed = webtask::config::Config::parse(&text).unwrap();
    assert_eq!(parsed, webtask::config::Config::default());
}

#[test]
fn zero_limits_are_config_errors() {
    let err = webtask::config::Config::parse("[engine.limits]\ncpu_ms = 0\n").unwrap_err();
    assert_eq!(format!("{err:#}"), "engine.limits.cpu_ms must be at least 1");
    assert!(webtask::config::Config::parse("[engine.limits]\nsubrequests = 0\n").is_ok(), "no fetch at all is a choice");
}

#[test]
fn unknown_config_fields_are_errors() {
    let err = webtask::config::Config::parse("[engine.limits]\ncpu_msec = 5\n").unwrap_err();
    assert!(format!("{err:#}").contains("cpu_msec"), "{err:#}");
}
