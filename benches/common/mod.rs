//! Shared by the benches: a release node in its own process, a closed-loop
//! HTTP load generator with HDR histograms, wrk when installed, and the
//! JSON report under `target/bench/`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

pub const HELLO: &str = r#"return function (context, cb) { cb(null, "Hello, " + context.data.name); }"#;
pub const CONNECTIONS: usize = 32;

/// True under `cargo bench`; `cargo test --benches` gets a quick no-op.
pub fn benchmarking(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("{name} benchmark: run with `cargo bench --bench {name}`");
    }
    yes
}

pub fn write_report(name: &str, report: &Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report).unwrap()).expect("write report");
    println!("\nwritten to {}", path.display());
}

pub fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "samples": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

pub fn micros(samples: &[Duration]) -> Histogram<u64> {
    let mut h = histogram();
    for d in samples {
        h.record(d.as_micros().max(1) as u64).unwrap();
    }
    h
}

/// A release node in its own process on an ephemeral loopback port.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    config: std::path::PathBuf,
}

impl Node {
    /// Starts `webtask serve` with `config` (TOML) on an ephemeral port.
    pub fn start(config: &str) -> Node {
        let path = std::env::temp_dir().join(format!("webtask-bench-{}-{}.toml", std::process::id(), config.len()));
        std::fs::File::create(&path).and_then(|mut f| f.write_all(config.as_bytes())).expect("bench config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_webtask"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
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
        Node { child, addr, config: path }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One keep-alive HTTP/1 connection to a node.
pub struct Client(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client(send)
    }

    /// Posts the hello webtask to `uri`; asserts a 200 and returns how long
    /// the whole response took.
    pub async fn hello(&mut self, uri: &http::Uri) -> Duration {
        let req = http::Request::post(uri.clone())
            .header("host", "bench")
            .header("content-type", "application/javascript")
            .body(Full::new(Bytes::from_static(HELLO.as_bytes())))
            .unwrap();
        self.0.ready().await.unwrap();
        let t = Instant::now();
        let res = self.0.send_request(req).await.unwrap();
        let status = res.status();
        res.into_body().collect().await.unwrap();
        assert_eq!(status, 200);
        t.elapsed()
    }
}

/// `connections` keep-alive connections (connection i posting to
/// `uris[i % len]`), each sending the next request as soon as the previous
/// answer is read, for `duration`.
pub async fn closed_loop(addr: SocketAddr, uris: &[http::Uri], connections: usize, duration: Duration) -> (Histogram<u64>, u64, Duration) {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let uri = uris[i % uris.len()].clone();
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut h = histogram();
                while Instant::now() < deadline {
                    h.record(client.hello(&uri).await.as_micros().max(1) as u64).unwrap();
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

pub fn bench_wrk(addr: SocketAddr, seconds: u64) -> Value {
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
        .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s"), "--latency", "-s"])
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

pub fn machine() -> Value {
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
