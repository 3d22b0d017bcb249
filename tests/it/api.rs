//! Node endpoints other than run: health and metrics; the HTTP layer's own
//! limits and shutdown, over raw connections.

use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{sample, test_config, TestNode};

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

/// Reads what the node sends until it closes the connection, within `within`,
/// and splits it into status line, lower-cased head, and body.
async fn read_response(conn: &mut TcpStream, within: Duration) -> (String, String, String) {
    let mut buf = Vec::new();
    // A reset after the response still leaves the response in `buf`.
    let _ = tokio::time::timeout(within, conn.read_to_end(&mut buf)).await.expect("connection hung");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let (status, head) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn a_stalled_body_gets_408_body_timeout_in_time() {
    let mut config = test_config();
    config.http.body_timeout_ms = 300;
    let node = TestNode::with_config(config).await;
    let mut conn = TcpStream::connect(node.addr).await.unwrap();
    // 9 of the 100 bytes promised, then nothing.
    conn.write_all(b"POST /api/run/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/javascript\r\nContent-Length: 100\r\n\r\nreturn fu")
        .await
        .unwrap();
    let started = Instant::now();
    let (status, head, body) = read_response(&mut conn, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(head.contains("connection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"code": "body_timeout", "limit_ms": 300, "error": "request body not received within 300 ms"}));
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "answered after {took:?}");
    // The node still serves.
    assert_eq!(node.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_connection_during_the_drain_is_refused_at_once() {
    let mut config = test_config();
    config.engine.limits.wall_ms = 10_000;
    let node = TestNode::with_config(config).await;
    let addr = node.addr;
    // A request in flight holds the drain open for a second.
    let code = "return function (cb) { setTimeout(() => cb(null, 'done'), 1000); }";
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/run/busy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/javascript\r\nContent-Length: {}\r\n\r\n{code}",
        code.len()
    );
    busy.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = node.node.clone();
    drop(node); // the shutdown signal
    tokio::time::timeout(Duration::from_secs(2), state.stopping()).await.expect("draining did not begin");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    match TcpStream::connect(addr).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        // Should the node still take it, it must answer it, and promptly.
        Ok(mut conn) => {
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
            let (status, head, _) = read_response(&mut conn, Duration::from_secs(2)).await;
            assert!(status.starts_with("HTTP/1.1 503") && head.contains("connection: close"), "{status}\n{head}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // The request in flight still finishes.
    let (status, _, body) = read_response(&mut busy, Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {body}");
    assert_eq!(body, "\"done\"");
}

#[tokio::test]
async fn connections_queued_when_the_drain_begins_get_503_draining() {
    use std::io::Write;
    let node = TestNode::start().await;
    // Blocking connects and writes: on this single-threaded runtime the
    // node's accept loop does not run until the test awaits, after the
    // shutdown signal, so both connections are still queued then.
    let mut health = std::net::TcpStream::connect(node.addr).unwrap();
    health.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut run = std::net::TcpStream::connect(node.addr).unwrap();
    run.write_all(b"POST /api/run/late HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    let state = node.node.clone();
    drop(node); // the shutdown signal
    for (conn, key) in [(health, "status"), (run, "code")] {
        conn.set_nonblocking(true).unwrap();
        let mut conn = TcpStream::from_std(conn).unwrap();
        let (status, head, body) = read_response(&mut conn, Duration::from_secs(2)).await;
        assert!(status.starts_with("HTTP/1.1 503") && head.contains("connection: close"), "{status}\n{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[key], "draining", "{v}");
    }
    assert!(state.stopping().now_or_never().is_some(), "the node is draining");
}
