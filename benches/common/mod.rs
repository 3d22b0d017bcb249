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
        "p999": h.value_at_quantile(0.999),
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
    /// `WEBTASK_BENCH_BIN` names another build to run instead of this one
    /// (to measure two builds alternately under the same conditions).
    pub fn start(config: &str) -> Node {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("webtask-bench-{}-{seq}.toml", std::process::id()));
        std::fs::File::create(&path).and_then(|mut f| f.write_all(config.as_bytes())).expect("bench config");
        let bin = std::env::var_os("WEBTASK_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_webtask").into());
        let mut child = Command::new(bin)
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

/// One request a load generator sends over and over: a webtask's hello
/// (POST with the code) or a peer's (GET).
#[derive(Clone, Debug)]
pub struct Target {
    pub method: http::Method,
    pub uri: http::Uri,
    pub body: Bytes,
}

impl Target {
    /// The hello webtask posted to `/api/run/{container}` on `addr`.
    pub fn webtask(addr: SocketAddr, container: &str) -> Target {
        Target::webtask_code(addr, container, Bytes::from_static(HELLO.as_bytes()))
    }

    pub fn webtask_code(addr: SocketAddr, container: &str, code: Bytes) -> Target {
        let uri = format!("http://{addr}/api/run/{container}?name=bench").parse().unwrap();
        Target { method: http::Method::POST, uri, body: code }
    }

    /// A peer's hello: `GET /?name=bench`.
    pub fn get(addr: SocketAddr) -> Target {
        Target { method: http::Method::GET, uri: format!("http://{addr}/?name=bench").parse().unwrap(), body: Bytes::new() }
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
        let target = Target { method: http::Method::POST, uri: uri.clone(), body: Bytes::from_static(HELLO.as_bytes()) };
        self.send(&target).await
    }

    /// Sends `target`; asserts a 200 and returns how long the whole
    /// response took.
    pub async fn send(&mut self, target: &Target) -> Duration {
        let (t, status) = self.try_send(target).await;
        assert_eq!(status, 200, "{} {}", target.method, target.uri);
        t
    }

    /// Sends `target`; returns how long the whole response took and its status.
    pub async fn try_send(&mut self, target: &Target) -> (Duration, u16) {
        let req = http::Request::builder()
            .method(target.method.clone())
            .uri(target.uri.clone())
            .header("host", "bench")
            .header("content-type", "application/javascript")
            .body(Full::new(target.body.clone()))
            .unwrap();
        self.0.ready().await.unwrap();
        let t = Instant::now();
        let res = self.0.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        res.into_body().collect().await.unwrap();
        (t.elapsed(), status)
    }
}

/// Threads the closed loop drives its connections from, as `wrk -t2`.
pub const GENERATOR_THREADS: usize = 2;

/// Closed loop over `targets` (connection i sends `targets[i % len]`).
///
/// Built as wrk is: [`GENERATOR_THREADS`] threads, each with its own
/// single-threaded runtime and an equal share of the connections, so a
/// request and its connection never wake each other across threads. On
/// this 2-core machine every cycle the generator spends is one the server
/// does not get: on one work-stealing runtime it read 17% below `wrk`
/// (medians of three alternating runs), built like this 1% apart. The
/// price, which `wrk` pays too: a generator thread the kernel preempts
/// stalls all its connections, so with dozens of busy worker processes
/// (`cold_start`'s 50 containers) p99 reads 8–27 ms instead of 4–6 ms.
pub async fn closed_loop_targets(addr: SocketAddr, targets: &[Target], connections: usize, duration: Duration) -> (Histogram<u64>, u64, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let threads: Vec<_> = (0..GENERATOR_THREADS.min(connections))
        .map(|t| {
            let mine: Vec<Target> =
                (t..connections).step_by(GENERATOR_THREADS).map(|i| targets[i % targets.len()].clone()).collect();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = mine
                        .into_iter()
                        .map(|target| {
                            tokio::spawn(async move {
                                let mut client = Client::connect(addr).await;
                                let mut h = histogram();
                                while Instant::now() < deadline {
                                    h.record(client.send(&target).await.as_micros().max(1) as u64).unwrap();
                                }
                                h
                            })
                        })
                        .collect();
                    merged(futures::future::join_all(tasks).await.into_iter().map(Result::unwrap))
                })
            })
        })
        .collect();
    let total = tokio::task::spawn_blocking(move || merged(threads.into_iter().map(|t| t.join().expect("generator thread"))))
        .await
        .unwrap();
    let n = total.len();
    (total, n, started.elapsed())
}

/// One histogram of all of `parts`' samples.
fn merged(parts: impl IntoIterator<Item = Histogram<u64>>) -> Histogram<u64> {
    let mut total = histogram();
    for part in parts {
        total.add(part).unwrap();
    }
    total
}

/// Open loop: `rate` requests per second for `duration`, spread over
/// `connections` connections (each on its own fixed schedule). A request
/// the server held back (its connection's previous answer came after it
/// was due) is counted from when it was *due*, so a stalled server is
/// charged for the queue it causes (no coordinated omission); any other
/// from when it went out, so the generator's own timer, which may fire a
/// millisecond late, is not charged to the server. `next(i)` picks the
/// target of the i-th request.
pub async fn open_loop<F>(addr: SocketAddr, rate: f64, connections: usize, duration: Duration, next: F) -> (Histogram<u64>, Vec<u16>)
where
    F: Fn(u64) -> Target + Send + Sync + 'static,
{
    let next = std::sync::Arc::new(next);
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let (mut h, mut statuses) = (histogram(), Vec::new());
                // Connections start staggered across one interval.
                let offset = interval.mul_f64(c as f64 / connections as f64);
                let mut answered = start;
                for k in 0..per_connection {
                    let due = start + offset + interval * k as u32;
                    tokio::time::sleep_until(due).await;
                    let (took, status) = client.try_send(&next(k * connections as u64 + c as u64)).await;
                    let latency = if answered > due { due.elapsed() } else { took };
                    h.record(latency.as_micros().max(1) as u64).unwrap();
                    statuses.push(status);
                    answered = tokio::time::Instant::now();
                }
                (h, statuses)
            })
        })
        .collect();
    let (mut total, mut statuses) = (histogram(), Vec::new());
    for t in tasks {
        let (h, s) = t.await.unwrap();
        total.add(h).unwrap();
        statuses.extend(s);
    }
    (total, statuses)
}

/// `connections` keep-alive connections (connection i posting the hello
/// webtask to `uris[i % len]`), each sending the next request as soon as
/// the previous answer is read, for `duration`.
pub async fn closed_loop(addr: SocketAddr, uris: &[http::Uri], connections: usize, duration: Duration) -> (Histogram<u64>, u64, Duration) {
    let hello = Bytes::from_static(HELLO.as_bytes());
    let targets: Vec<Target> = uris.iter().map(|uri| Target { method: http::Method::POST, uri: uri.clone(), body: hello.clone() }).collect();
    closed_loop_targets(addr, &targets, connections, duration).await
}

/// The node's `/metrics` text.
pub async fn fetch_metrics(addr: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/metrics")).header("host", "bench").body(Full::new(Bytes::new())).unwrap();
    let res = send.send_request(req).await.unwrap();
    String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
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

/// Waits (at most `within`) until the machine is quiet: at least 90% of
/// CPU time idle over a 300 ms window. Workers of an earlier scenario keep
/// the kernel busy after they exit (their memory, cgroups and network
/// namespaces are torn down in the background); a row measured during
/// that would charge their teardown to itself.
pub async fn settle(within: Duration) {
    fn idle_and_total() -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // idle + iowait against everything.
        (cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0), cpu.iter().sum())
    }
    let deadline = Instant::now() + within;
    loop {
        let (idle0, total0) = idle_and_total();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (idle1, total1) = idle_and_total();
        let quiet = total1 > total0 && (idle1 - idle0) * 10 >= (total1 - total0) * 9;
        if quiet || Instant::now() >= deadline {
            return;
        }
    }
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
    let other_build = std::env::var("WEBTASK_BENCH_BIN").ok();
    json!({"cpus": cpus, "cpu_model": model, "commit": commit, "webtask_bench_bin": other_build})
}
