//! `cargo bench --bench engine`: the engine's hot path, in three layers.
//!
//! 1. isolate creation from the startup snapshot (p50, p99);
//! 2. a warm run of the hello webtask through the library API (p50, p99);
//! 3. a warm HTTP request against a release node in its own process, with
//!    a built-in closed-loop load generator at 32 connections, and with
//!    `wrk -t2 -c32` when it is installed (`make bench` installs it).
//!
//! Figures are printed and written to `target/bench/engine.json`, next to the
//! goals they are read against.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use webtask::{Context, Engine, EngineConfig, Limits};

const HELLO: &str = r#"return function (context, cb) { cb(null, "Hello, " + context.data.name); }"#;
const CONNECTIONS: usize = 32;
const HTTP_SECONDS: u64 = 10;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // gets a quick check that the harness starts instead of a full run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine benchmark: run with `cargo bench --bench engine`");
        return;
    }
    let isolate = bench_isolate_creation();
    let core = bench_engine_core();
    let warm = bench_warm_in_process();
    let node = Node::start();
    let http = bench_http(node.addr);
    let wrk = bench_wrk(node.addr);
    drop(node);

    let report = json!({
        "machine": machine(),
        "snapshot_bytes": webtask::engine::probe::snapshot_bytes(),
        "isolate_from_snapshot_us": isolate,
        "warm_in_process_us": warm,
        "warm_isolate_only_ns": core,
        "http_builtin": http,
        "http_wrk": wrk,
        "goals": {
            "isolate_from_snapshot_p50_us_max": 3000,
            "warm_in_process_p50_us_max": 20,
            "http_requests_per_s_min": 40000,
        },
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("engine.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).expect("write report");
    println!("\nwritten to {}", path.display());
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "samples": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn bench_isolate_creation() -> Value {
    let (ours, bare) = isolates_interleaved(300);
    let mut s = summary(&micros(&ours[20..]));
    let bare = summary(&micros(&bare[20..]));
    println!("isolate from snapshot   p50 {:>6} µs   p99 {:>6} µs", s["p50"], s["p99"]);
    println!("  bare deno_core, interleaved: p50 {:>6} µs   p99 {:>6} µs", bare["p50"], bare["p99"]);
    s["bare_deno_core"] = bare;
    s
}

fn micros(samples: &[Duration]) -> Histogram<u64> {
    let mut h = histogram();
    for d in samples {
        h.record(d.as_micros().max(1) as u64).unwrap();
    }
    h
}

/// Our isolates, and plain `deno_core` runtimes from deno_core's own
/// snapshot (the floor ours is compared with), created alternately on one
/// thread so that machine noise hits both alike.
fn isolates_interleaved(samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    use deno_core::{JsRuntime, JsRuntimeForSnapshot, RuntimeOptions};
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _enter = rt.enter();
        let limits = Limits::default();
        webtask::engine::probe::create_isolate(&limits);
        let snapshot: &'static [u8] = Box::leak(JsRuntimeForSnapshot::new(RuntimeOptions::default()).snapshot());
        let bare = || {
            let t = Instant::now();
            let runtime = JsRuntime::new(RuntimeOptions { startup_snapshot: Some(snapshot), ..Default::default() });
            let took = t.elapsed();
            drop(runtime);
            took
        };
        (0..samples).map(|_| (webtask::engine::probe::create_isolate(&limits), bare())).unzip()
    })
    .join()
    .unwrap()
}

fn bench_engine_core() -> Value {
    let ctx = Context::new().query("name", "webtask");
    let samples = webtask::engine::probe::warm_runs(&Limits::default(), HELLO, ctx, 50_000);
    let mut h = histogram();
    for d in samples.iter().skip(2_000) {
        h.record(d.as_nanos().max(1) as u64).unwrap();
    }
    let s = json!({"p50_ns": h.value_at_quantile(0.5), "p99_ns": h.value_at_quantile(0.99), "samples": h.len()});
    println!("warm run, isolate only  p50 {:>6} ns   p99 {:>6} ns", s["p50_ns"], s["p99_ns"]);
    s
}

fn bench_warm_in_process() -> Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let engine = Engine::new(EngineConfig::default());
        let ctx = || Context::new().query("name", "webtask");
        for _ in 0..2_000 {
            engine.run_in("bench", HELLO, ctx()).await.unwrap();
        }
        let mut h = histogram();
        let started = Instant::now();
        let n = 50_000;
        for _ in 0..n {
            let t = Instant::now();
            let out = engine.run_in("bench", HELLO, ctx()).await.unwrap();
            h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            debug_assert_eq!(&out.body[..], br#""Hello, webtask""#);
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let mut s = summary(&h);
        s["runs_per_s_one_caller"] = json!(rate.round());
        println!("warm run, in process    p50 {:>6} µs   p99 {:>6} µs   ({rate:.0} runs/s, one caller)", s["p50"], s["p99"]);
        s
    })
}

/// A release node in its own process on an ephemeral loopback port.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start() -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_webtask"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("WEBTASK_LOG", "warn,webtask=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("node exited before listening").unwrap();
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if let Some(addr) = v["addr"].as_str() {
                break addr.parse().unwrap();
            }
        };
        // Keep draining stderr so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Node { child, addr }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_http(addr: SocketAddr) -> Value {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let uri: http::Uri = format!("http://{addr}/api/run/bench?name=webtask").parse().unwrap();
        // Warm the container (first request compiles).
        closed_loop(addr, &uri, 4, Duration::from_millis(500)).await;
        let (h, n, elapsed) = closed_loop(addr, &uri, CONNECTIONS, Duration::from_secs(HTTP_SECONDS)).await;
        let rps = n as f64 / elapsed.as_secs_f64();
        let mut s = summary(&h);
        s["connections"] = json!(CONNECTIONS);
        s["requests_per_s"] = json!(rps.round());
        println!(
            "HTTP warm, built-in     p50 {:>6} µs   p99 {:>6} µs   {rps:.0} req/s at {CONNECTIONS} connections",
            s["p50"], s["p99"]
        );
        s
    })
}

/// `connections` keep-alive connections, each sending the next request as
/// soon as the previous answer is read, for `duration`.
async fn closed_loop(addr: SocketAddr, uri: &http::Uri, connections: usize, duration: Duration) -> (Histogram<u64>, u64, Duration) {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let uri = uri.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let mut h = histogram();
                let body = Bytes::from_static(HELLO.as_bytes());
                while Instant::now() < deadline {
                    let req = http::Request::post(uri.clone())
                        .header("host", "bench")
                        .header("content-type", "application/javascript")
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let t = Instant::now();
                    let res = send.send_request(req).await.unwrap();
                    assert_eq!(res.status(), 200);
                    res.into_body().collect().await.unwrap();
                    h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                }
                h
            })
        })
        .collect();
    let mut total = histogram();
    for t in tasks {
        total.add(t.await.unwrap()).unwrap();
    }
    let n = total.len();
    (total, n, started.elapsed())
}

fn bench_wrk(addr: SocketAddr) -> Value {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("HTTP warm, wrk          skipped: wrk is not installed (make bench installs it)");
        return json!({"skipped": "wrk is not installed"});
    }
    let script = std::env::temp_dir().join(format!("webtask-hello-{}.lua", std::process::id()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = [[{HELLO}]]\nwrk.headers[\"Content-Type\"] = \"application/javascript\"\n"
    );
    std::fs::write(&script, lua).unwrap();
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{HTTP_SECONDS}s"), "--latency", "-s"])
        .arg(&script)
        .arg(format!("http://{addr}/api/run/bench?name=webtask"))
        .output()
        .expect("run wrk");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = field(&text, "Requests/sec:").and_then(|v| v.parse::<f64>().ok());
    let p50 = field(&text, "50%").map(wrk_micros);
    let p99 = field(&text, "99%").map(wrk_micros);
    println!(
        "HTTP warm, wrk -t2 -c{CONNECTIONS} p50 {:>6} µs   p99 {:>6} µs   {:.0} req/s",
        p50.unwrap_or_default(),
        p99.unwrap_or_default(),
        rps.unwrap_or_default()
    );
    json!({"requests_per_s": rps.map(f64::round), "p50": p50, "p99": p99, "connections": CONNECTIONS, "threads": 2})
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(key)).map(str::trim)
}

/// `1.23ms` / `456.00us` / `2.1s` → µs.
fn wrk_micros(v: &str) -> u64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        (v, 1.0)
    };
    (num.parse::<f64>().unwrap_or(0.0) * scale).round() as u64
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())));
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    json!({"cpus": cpus, "cpu_model": model, "commit": commit})
}
