//! `cargo bench --bench compare` (run by `make bench`): webtask beside the
//! runtimes users would pick instead, on this machine, in this run.
//!
//! Systems (columns): webtask as shipped (jailed worker processes), workerd,
//! Deno (`Deno.serve`), Node with a fresh `vm` context per request, and
//! Node with a child process per request, all answering the same hello
//! function. The peers come from the package registries through
//! `benches/peers/install.sh` (see `benches/peers/README.md`).
//!
//! Scenarios (rows): `warm`, `new-container`, `pool-miss`, `churn`,
//! `code-change`, `noisy-neighbour`; each cell is the median of [`RUNS`]
//! runs with their min–max, or the reason it cannot be measured. The runs
//! go in rounds (one of every system, then the next round), so every
//! column of a row is measured across the same stretch of time. Written to
//! `target/bench/report.json`, `report.md` and `new_container_cdf.svg`.
//! `COMPARE_SCENARIOS` and `COMPARE_SYSTEMS` (comma-separated) narrow a run.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use common::{closed_loop_targets, histogram, machine, open_loop, summary, Client, Node, Target, CONNECTIONS, HELLO};

const RUNS: usize = 3;
const WARM_SECONDS: u64 = 5;

const PRODUCT: &str = "[workers]\nmode = \"process\"\npool_size = 4\nmax = 512\n";
const BIG_POOL: &str = "[workers]\nmode = \"process\"\npool_size = 64\nmax = 512\n";
const NO_POOL: &str = "[workers]\nmode = \"process\"\npool_size = 0\nmax = 512\n";
/// Churn: the worker cap well under the container count, and short
/// worker lives, so assignments, evictions and retirements all happen.
const CHURN: &str = "[workers]\nmode = \"process\"\npool_size = 4\nmax = 256\nmax_requests = 200\n";
/// Noisy neighbour: a tighter CPU limit so the hog is killed (and comes
/// back) several times a second.
const NOISY: &str = "[engine.limits]\ncpu_ms = 200\n[workers]\nmode = \"process\"\npool_size = 4\nmax = 64\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Webtask,
    Workerd,
    Deno,
    NodeVm,
    NodeProcess,
}

const SYSTEMS: [System; 5] = [System::Webtask, System::Workerd, System::Deno, System::NodeVm, System::NodeProcess];

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Webtask => "webtask",
            System::Workerd => "workerd",
            System::Deno => "deno",
            System::NodeVm => "node_vm",
            System::NodeProcess => "node_process",
        }
    }

    fn title(self) -> &'static str {
        match self {
            System::Webtask => "webtask",
            System::Workerd => "workerd",
            System::Deno => "Deno.serve",
            System::NodeVm => "Node vm/request",
            System::NodeProcess => "Node process/request",
        }
    }
}

/// One run of one scenario on one system.
struct Run {
    value: f64,
    detail: Value,
    /// Per-request latencies in µs (kept for the new-container CDF).
    samples: Vec<u64>,
}

enum Cell {
    Runs(Vec<Run>),
    /// Not measurable for this system, and why.
    Na(String),
}

impl Cell {
    fn values(&self) -> Option<(f64, f64, f64)> {
        let Cell::Runs(runs) = self else { return None };
        spread(runs.iter().map(|r| r.value).collect())
    }
}

/// Median, min and max of `v`; None when it is empty.
fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, v[0], v[v.len() - 1]))
}

struct Row {
    scenario: &'static str,
    metric: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    note: &'static str,
    cells: Vec<(System, Cell)>,
}

fn main() {
    if !common::benchmarking("compare") {
        return;
    }
    let peers = Peers::find();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (rows, wrk) = rt.block_on(async {
        let mut rows = Vec::new();
        rows.push(row("warm", "requests/s, 32 connections", "req/s", true, "closed loop, one container, same code", |s| {
            warm(s, &peers)
        })
        .await);
        rows.push(row("new-container", "first request p50", "ms", false, NEW_CONTAINER_NOTE, |s| new_container(s, &peers)).await);
        rows.push(row("pool-miss", "first request p50, pool empty", "ms", false, "spawn + jail + V8 on the request path", pool_miss).await);
        rows.push(row("churn", "p99, 1,000 containers, Zipf", "ms", false, "open loop 100 req/s, at most 256 workers, each retired after 200 requests", churn).await);
        rows.push(row("code-change", "p50, new code every request", "ms", false, "open loop 200 req/s, one container", code_change).await);
        rows.push(row("noisy-neighbour", "quiet container p99 beside a hog", "ms", false, NOISY_NOTE, noisy).await);
        let wrk = wrk_spot_check().await;
        (rows, wrk)
    });
    let report = report_json(&rows, &peers, &wrk);
    common::write_report("report", &report);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::write(dir.join("report.md"), report_md(&rows, &peers, &wrk)).expect("report.md");
    match cdf_svg(&rows, &dir.join("new_container_cdf.svg")) {
        Ok(()) => println!("written {}", dir.join("new_container_cdf.svg").display()),
        Err(e) => println!("no chart: {e}"),
    }
    println!("written {}", dir.join("report.md").display());
}

const NEW_CONTAINER_NOTE: &str = "webtask: 60 containers never seen, back to back, each next to a warm request, pool of 64 pre-warmed workers; workerd and Deno: a fresh process to its first answer; \
     Node vm: a fresh context (every request); Node process: a fresh process (every request)";
const NOISY_NOTE: &str = "open loop 100 req/s on the quiet container while another burns CPU to its limit and allocates to its memory limit";

/// Runs `scenario` RUNS times per system, in rounds: one run of every
/// system, then the next round. A slow spell of this shared VM then lands
/// on every column alike instead of on whichever system ran during it, so
/// the ratios between columns are read from runs made at the same time.
/// A system answers `Err` once to mark its cell not applicable.
async fn row<F, Fut>(
    scenario: &'static str,
    metric: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    note: &'static str,
    mut run: F,
) -> Row
where
    F: FnMut(System) -> Fut,
    Fut: std::future::Future<Output = Result<Run, String>>,
{
    let mut cells: Vec<(System, Cell)> = SYSTEMS
        .into_iter()
        .map(|system| {
            let chosen = selected("COMPARE_SCENARIOS", scenario) && selected("COMPARE_SYSTEMS", system.key());
            (system, if chosen { Cell::Runs(Vec::new()) } else { Cell::Na("not selected in this run".into()) })
        })
        .collect();
    for _ in 0..RUNS {
        for (system, cell) in &mut cells {
            let Cell::Runs(runs) = cell else { continue };
            // The system before may have left workers or processes the
            // kernel is still tearing down; that is not this run's cost.
            common::settle(Duration::from_secs(10)).await;
            match run(*system).await {
                Ok(r) => runs.push(r),
                Err(why) => *cell = Cell::Na(why),
            }
        }
    }
    for (system, cell) in &cells {
        match cell.values() {
            Some((median, min, max)) => {
                println!("{scenario:16} {:22} {median:>10.2} {unit} ({min:.2}–{max:.2})", system.title())
            }
            None => println!("{scenario:16} {:22} n/a", system.title()),
        }
    }
    Row { scenario, metric, unit, higher_is_better, note, cells }
}

/// Whether `name` is in the comma-separated `var` (all when unset), so a
/// run can be narrowed: `COMPARE_SCENARIOS=warm,churn COMPARE_SYSTEMS=webtask`.
fn selected(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |list| list.split(',').any(|s| s.trim() == name))
}

// ---- scenarios -------------------------------------------------------

async fn warm(system: System, peers: &Peers) -> Result<Run, String> {
    let (_server, target) = match system {
        System::Webtask => {
            let node = Node::start(PRODUCT);
            let t = Target::webtask(node.addr, "warm");
            (Server::Node(node), t)
        }
        peer => {
            let p = peers.start(peer)?;
            let t = Target::get(p.addr);
            (Server::Peer(p), t)
        }
    };
    let addr = socket(&target);
    closed_loop_targets(addr, std::slice::from_ref(&target), CONNECTIONS, Duration::from_secs(1)).await;
    let (h, n, elapsed) = closed_loop_targets(addr, &[target], CONNECTIONS, Duration::from_secs(WARM_SECONDS)).await;
    let rps = n as f64 / elapsed.as_secs_f64();
    let mut detail = summary(&h);
    detail["requests_per_s"] = json!(rps.round());
    Ok(Run { value: rps, detail, samples: Vec::new() })
}

async fn new_container(system: System, peers: &Peers) -> Result<Run, String> {
    match system {
        System::Webtask => {
            // A pool deep enough that a burst of first requests never
            // drains it, so every one is measured with the pool warm.
            let node = Node::start(BIG_POOL);
            let addr = node.addr;
            wait_for_pool(addr, 64.0).await;
            let mut client = Client::connect(addr).await;
            let (mut warm, mut fresh) = (histogram(), Vec::new());
            let warm_target = Target::webtask(addr, "warm");
            client.send(&warm_target).await;
            // Back to back, as the peers' figures are taken, each first
            // request next to a warm one under the same conditions.
            for i in 0..60 {
                warm.record(us(client.send(&warm_target).await)).unwrap();
                fresh.push(us(client.send(&Target::webtask(addr, &format!("new{i}"))).await));
            }
            let mut run = latency_run(fresh);
            run.detail["warm_interleaved_p50_us"] = json!(warm.value_at_quantile(0.5));
            Ok(run)
        }
        System::Workerd | System::Deno => {
            let mut samples = Vec::new();
            for _ in 0..10 {
                let started = Instant::now();
                let _peer = peers.start(system)?;
                samples.push(us(started.elapsed()));
            }
            Ok(latency_run(samples))
        }
        System::NodeVm | System::NodeProcess => {
            let peer = peers.start(system)?;
            let target = Target::get(peer.addr);
            let mut client = Client::connect(peer.addr).await;
            client.send(&target).await;
            let mut samples = Vec::new();
            for _ in 0..30 {
                samples.push(us(client.send(&target).await));
            }
            Ok(latency_run(samples))
        }
    }
}

async fn pool_miss(system: System) -> Result<Run, String> {
    if system != System::Webtask {
        return Err("no pool: its new-container figure is already a full start".into());
    }
    // Not while the kernel still tears down the workers of earlier rows.
    common::settle(Duration::from_secs(20)).await;
    let node = Node::start(NO_POOL);
    let mut client = Client::connect(node.addr).await;
    let mut samples = Vec::new();
    for i in 0..20 {
        samples.push(us(client.send(&Target::webtask(node.addr, &format!("miss{i}"))).await));
    }
    Ok(latency_run(samples))
}

async fn churn(system: System) -> Result<Run, String> {
    if system != System::Webtask {
        return Err("one tenant per process: no per-tenant code to churn".into());
    }
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let node = Node::start(CHURN);
    let addr = node.addr;
    let zipf = rand_distr::Zipf::new(1000.0, 1.1).unwrap();
    let picks: Vec<u64> = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..10_000).map(|_| zipf.sample(&mut rng) as u64).collect()
    };
    let spawned_before = metric(addr, "webtask_workers_spawned_total").await;
    let (h, statuses) = open_loop(addr, 100.0, 16, Duration::from_secs(10), move |i| {
        Target::webtask(addr, &format!("z{}", picks[i as usize % picks.len()]))
    })
    .await;
    let spawned = metric(addr, "webtask_workers_spawned_total").await - spawned_before;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let mut detail = summary(&h);
    // Every assignment takes a pooled worker and makes the pool spawn one.
    detail["cold_share"] = json!(spawned / statuses.len() as f64);
    detail["ok_share"] = json!(ok as f64 / statuses.len() as f64);
    detail["statuses"] = status_counts(&statuses);
    Ok(Run { value: h.value_at_quantile(0.99) as f64 / 1000.0, detail, samples: Vec::new() })
}

async fn code_change(system: System) -> Result<Run, String> {
    if system != System::Webtask {
        return Err("code is fixed at start; changing it is a new process (see new-container)".into());
    }
    let node = Node::start(PRODUCT);
    let addr = node.addr;
    let (h, statuses) = open_loop(addr, 200.0, 4, Duration::from_secs(3), move |i| {
        Target::webtask_code(addr, "changing", Bytes::from(format!("{HELLO} // v{i}")))
    })
    .await;
    if statuses.iter().any(|s| *s != 200) {
        return Err("requests failed".into());
    }
    let detail = summary(&h);
    Ok(Run { value: h.value_at_quantile(0.5) as f64 / 1000.0, detail, samples: Vec::new() })
}

async fn noisy(system: System) -> Result<Run, String> {
    if system != System::Webtask {
        return Err("one tenant per process: no neighbour to isolate from".into());
    }
    let node = Node::start(NOISY);
    let addr = node.addr;
    let quiet = move |_| Target::webtask(addr, "quiet");
    let (alone, _) = open_loop(addr, 100.0, 1, Duration::from_secs(3), quiet).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = [
        "return function (cb) { while (true) {} }",
        "return function (cb) { const a = []; while (true) a.push(new Array(1e5).fill(1)); }",
    ]
    .into_iter()
    .map(|code| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let target = Target::webtask_code(addr, "noisy", Bytes::from_static(code.as_bytes()));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.try_send(&target).await;
            }
        })
    })
    .collect();
    let (loaded, statuses) = open_loop(addr, 100.0, 1, Duration::from_secs(5), quiet).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        let _ = h.await;
    }
    let mut detail = summary(&loaded);
    detail["alone_p99_us"] = json!(alone.value_at_quantile(0.99));
    detail["p99_vs_alone"] = json!(loaded.value_at_quantile(0.99) as f64 / alone.value_at_quantile(0.99).max(1) as f64);
    detail["quiet_failures"] = json!(statuses.iter().filter(|s| **s != 200).count());
    Ok(Run { value: loaded.value_at_quantile(0.99) as f64 / 1000.0, detail, samples: Vec::new() })
}

/// `wrk -t2 -c32` against webtask's warm scenario, on the same node as the
/// built-in generator, to check one against the other. Runs alternate and
/// medians are compared: on this VM consecutive runs of either tool move
/// by 10–15%, so one run of each would compare two moments, not two tools.
async fn wrk_spot_check() -> Value {
    if !selected("COMPARE_SCENARIOS", "warm") || !selected("COMPARE_SYSTEMS", "webtask") {
        return json!({"skipped": "not selected in this run"});
    }
    let node = Node::start(PRODUCT);
    let addr = node.addr;
    let target = Target::webtask(addr, "bench");
    closed_loop_targets(addr, std::slice::from_ref(&target), CONNECTIONS, Duration::from_secs(1)).await;
    let (mut ours, mut theirs, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SPOT_CHECK_ROUNDS {
        let (_, n, elapsed) = closed_loop_targets(addr, std::slice::from_ref(&target), CONNECTIONS, Duration::from_secs(WARM_SECONDS)).await;
        ours.push(n as f64 / elapsed.as_secs_f64());
        let wrk = tokio::task::spawn_blocking(move || common::bench_wrk(addr, WARM_SECONDS)).await.unwrap();
        theirs.extend(wrk["requests_per_s"].as_f64());
        runs.push(wrk);
    }
    let builtin = spread(ours.clone()).map_or(0.0, |(median, ..)| median);
    let mut out = json!({"wrk_runs": runs, "builtin_requests_per_s": ours, "builtin_median": builtin.round()});
    let complete = theirs.len() == SPOT_CHECK_ROUNDS;
    if let Some((wrk, ..)) = spread(theirs).filter(|_| complete) {
        let difference = (builtin - wrk).abs() / wrk;
        out["wrk_median"] = json!(wrk.round());
        out["difference"] = json!(difference);
        out["within_15_percent"] = json!(difference <= 0.15);
    }
    out
}

/// Alternating runs of each tool in the wrk spot check.
const SPOT_CHECK_ROUNDS: usize = 3;

// ---- measurement helpers ----------------------------------------------

/// Whatever serves a scenario, kept alive until the scenario ends.
#[allow(dead_code)]
enum Server {
    Node(Node),
    Peer(PeerProcess),
}

fn us(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

fn socket(target: &Target) -> SocketAddr {
    let auth = target.uri.authority().unwrap();
    format!("{}:{}", auth.host(), auth.port_u16().unwrap()).parse().unwrap()
}

fn status_counts(statuses: &[u16]) -> Value {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(s.to_string()).or_insert(0u64) += 1;
    }
    json!(counts)
}

fn latency_run(samples: Vec<u64>) -> Run {
    let mut h = histogram();
    for s in &samples {
        h.record(*s).unwrap();
    }
    Run { value: h.value_at_quantile(0.5) as f64 / 1000.0, detail: summary(&h), samples }
}

/// Waits until the node has `n` pre-warmed workers ready (at most 30 s).
async fn wait_for_pool(addr: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(addr, "webtask_workers_idle").await < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last spawns' CPU settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A counter's value from the node's /metrics.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = common::fetch_metrics(addr).await;
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

// ---- peers -------------------------------------------------------------

/// The peer runtimes `benches/peers/install.sh` installed.
struct Peers {
    dir: PathBuf,
    versions: Value,
}

struct PeerProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peers {
    fn find() -> Peers {
        let dir = std::env::var_os("PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers"));
        let versions = std::fs::read_to_string(dir.join("versions.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        Peers { dir, versions }
    }

    /// The command line that serves hello for `system` on `port`.
    fn command(&self, system: System, port: u16) -> Result<std::process::Command, String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
        let need = |p: PathBuf| if p.exists() { Ok(p) } else { Err(format!("{} is not installed (make bench installs it)", p.display())) };
        let mut cmd = match system {
            System::Webtask => unreachable!("webtask is not a peer"),
            System::Workerd => {
                let mut c = std::process::Command::new(need(self.dir.join("bin/workerd"))?);
                c.arg("serve").arg(src.join("workerd/config.capnp")).args(["--socket-addr", &format!("http=127.0.0.1:{port}")]);
                c
            }
            System::Deno => {
                let mut c = std::process::Command::new(need(self.dir.join("bin/deno"))?);
                // The module cache install.sh warmed; nothing fetched or checked at start.
                c.env("DENO_DIR", self.dir.join("deno-dir")).env("DENO_NO_UPDATE_CHECK", "1");
                c.args(["run", "--no-config", "--no-lock", "--no-npm", "--cached-only", "--no-prompt"]);
                c.args(["--allow-net=127.0.0.1", "--allow-env=PORT"]).arg(src.join("deno/hello.ts"));
                c
            }
            System::NodeVm | System::NodeProcess => {
                let script = if system == System::NodeVm { "node/vm.js" } else { "node/process.js" };
                let mut c = std::process::Command::new("node");
                c.arg(src.join(script));
                c
            }
        };
        // A clean environment, as webtask's workers get: variables such as
        // NODE_EXTRA_CA_CERTS would otherwise add tens of ms to every start.
        let keep: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))).collect();
        cmd.env_clear().envs(keep).env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("PORT", port.to_string());
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        cmd.stderr(std::process::Stdio::null());
        Ok(cmd)
    }

    /// Starts `system` on a free loopback port; returns once it has
    /// answered a hello (so the time this takes is its cold start).
    fn start(&self, system: System) -> Result<PeerProcess, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = self.command(system, port)?.spawn().map_err(|e| format!("{}: {e}", system.title()))?;
        let mut peer = PeerProcess { child, addr: ([127, 0, 0, 1], port).into() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if hello_once(peer.addr) {
                return Ok(peer);
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(format!("{} exited: {status}", system.title()));
            }
            std::thread::sleep(Duration::from_micros(250));
        }
        Err(format!("{} did not answer within 20 s", system.title()))
    }
}

/// One blocking `GET /?name=bench`; true on a 200.
fn hello_once(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /?name=bench HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

// ---- report ------------------------------------------------------------

fn versions(peers: &Peers) -> Value {
    json!({
        "webtask": match std::env::var("WEBTASK_BENCH_BIN") {
            Ok(bin) => format!("{bin} (WEBTASK_BENCH_BIN, not this checkout)"),
            Err(_) => format!("{} ({})", env!("CARGO_PKG_VERSION"), machine()["commit"].as_str().unwrap_or("?")),
        },
        "workerd": peers.versions["workerd"],
        "deno": peers.versions["deno"],
        "node": peers.versions["node"],
    })
}

fn ratio(row: &Row, peer: &Cell) -> Option<f64> {
    let (ours, _, _) = row.cells[0].1.values()?;
    let (theirs, _, _) = peer.values()?;
    Some(ours / theirs)
}

fn report_json(rows: &[Row], peers: &Peers, wrk: &Value) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut cells = serde_json::Map::new();
            for (system, cell) in &row.cells {
                let v = match (cell, cell.values()) {
                    (Cell::Runs(runs), Some((median, min, max))) => json!({
                        "median": median, "min": min, "max": max,
                        "runs": runs.iter().map(|r| &r.detail).collect::<Vec<_>>(),
                        "webtask_over_this": if *system == System::Webtask { Value::Null } else { json!(ratio(row, cell)) },
                    }),
                    (Cell::Na(why), _) => json!({"not_measured": why}),
                    _ => Value::Null,
                };
                cells.insert(system.key().into(), v);
            }
            json!({"scenario": row.scenario, "metric": row.metric, "unit": row.unit, "higher_is_better": row.higher_is_better,
                   "note": row.note, "cells": cells})
        })
        .collect();
    json!({
        "machine": machine(),
        "versions": versions(peers),
        "command": "make bench   (or: cargo bench --bench compare)",
        "runs_per_cell": RUNS,
        "rows": rows,
        "wrk_spot_check": wrk,
    })
}

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "req/s" => format!("{:.0}", v),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ if v >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn report_md(rows: &[Row], peers: &Peers, wrk: &Value) -> String {
    let m = machine();
    let mut md = String::from("# webtask beside its peers\n\n");
    md += &format!(
        "Machine: {} × {} · commit {} · versions: {}\n\n",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?"),
        versions(peers).as_object().unwrap().iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?"))).collect::<Vec<_>>().join(", ")
    );
    md += &format!("Reproduce: `make bench` (or `cargo bench --bench compare`). Each cell: median of {RUNS} runs (min–max), made in rounds across the systems; \
                    peer cells also compare webtask with that peer.\n\n");
    md += "| scenario | metric |";
    for s in SYSTEMS {
        md += &format!(" {} |", s.title());
    }
    md += "\n|---|---|";
    md += &"---|".repeat(SYSTEMS.len());
    md += "\n";
    for row in rows {
        md += &format!("| {} | {} ({}{}) |", row.scenario, row.metric, row.unit, if row.higher_is_better { ", higher is better" } else { "" });
        for (system, cell) in &row.cells {
            let text = match cell.values() {
                Some((median, min, max)) => {
                    let base = format!("{} ({}–{})", fmt(median, row.unit), fmt(min, row.unit), fmt(max, row.unit));
                    match (*system != System::Webtask).then(|| ratio(row, cell)).flatten() {
                        Some(r) => format!("{base} · {}", compared(r, row.higher_is_better)),
                        None => base,
                    }
                }
                None => match cell {
                    Cell::Na(why) => format!("n/a: {why}"),
                    Cell::Runs(_) => "n/a".into(),
                },
            };
            md += &format!(" {text} |");
        }
        md += "\n";
    }
    md += "\nNotes:\n\n";
    for row in rows {
        md += &format!("- **{}**: {}.\n", row.scenario, row.note);
    }
    if let Some(d) = wrk["difference"].as_f64() {
        md += &format!(
            "- **wrk spot check** (`wrk -t2 -c32`, webtask warm, {SPOT_CHECK_ROUNDS} runs of each alternating on one node): median {:.0} req/s against the built-in generator's {:.0}; {:.1}% apart.\n",
            wrk["wrk_median"].as_f64().unwrap_or(0.0),
            wrk["builtin_median"].as_f64().unwrap_or(0.0),
            d * 100.0
        );
    }
    md += &goals_md(rows);
    md += "\n![new-container latency CDF](new_container_cdf.svg)\n";
    md
}

/// webtask against a peer, in words: `r` is webtask's figure over the peer's.
fn compared(r: f64, higher_is_better: bool) -> String {
    let better = if higher_is_better { r } else { 1.0 / r };
    let times = |x: f64| if x >= 10.0 { format!("{x:.0}×") } else { format!("{x:.2}×") };
    match (higher_is_better, better >= 1.0) {
        (true, _) => format!("webtask {}", times(r)),
        (false, true) => format!("webtask {} faster", times(better)),
        (false, false) => format!("webtask {} slower", times(1.0 / better)),
    }
}

/// The goals the report is read against, met or not.
fn goals_md(rows: &[Row]) -> String {
    let median = |scenario: &str, system: System| {
        rows.iter().find(|r| r.scenario == scenario)?.cells.iter().find(|(s, _)| *s == system)?.1.values().map(|v| v.0)
    };
    let warm_paced = rows.iter().find(|r| r.scenario == "new-container").and_then(|r| match &r.cells[0].1 {
        Cell::Runs(runs) => {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| r.detail["warm_interleaved_p50_us"].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).map(|us| us / 1000.0)
        }
        Cell::Na(_) => None,
    });
    let mut out = String::from("\nGoals:\n\n");
    let mut goal = |text: String, met: Option<bool>| {
        let mark = match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        out += &format!("- {text}: **{mark}**\n");
    };
    let new = median("new-container", System::Webtask);
    let above = new.zip(warm_paced).map(|(n, w)| n - w);
    goal(format!("new-container p50 ≤ 1 ms above warm p50 (warm interleaved): {:.2} ms above", above.unwrap_or(f64::NAN)), above.map(|a| a <= 1.0));
    let warm = median("warm", System::Webtask);
    for (peer, factor, op) in [(System::Workerd, 3.0, "≥ 3×"), (System::Deno, 0.4, "≥ 0.4×")] {
        let r = warm.zip(median("warm", peer)).map(|(w, p)| w / p);
        goal(format!("warm req/s {op} {}'s: {:.2}×", peer.title(), r.unwrap_or(f64::NAN)), r.map(|r| r >= factor));
    }
    for (peer, factor) in [(System::NodeProcess, 80.0), (System::Deno, 15.0), (System::Workerd, 15.0)] {
        let r = median("new-container", peer).zip(new).map(|(p, w)| p / w);
        goal(format!("new-container p50 ≥ {factor}× faster than {}: {:.1}×", peer.title(), r.unwrap_or(f64::NAN)), r.map(|r| r >= factor));
    }
    out
}

/// Latency CDF of the new-container scenario, every system on one chart.
fn cdf_svg(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let row = rows.iter().find(|r| r.scenario == "new-container").ok_or("no new-container row")?;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("new-container: first-request latency CDF", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((0.05f64..500f64).log_scale(), 0f64..1f64)?;
    chart.configure_mesh().x_desc("latency (ms, log scale)").y_desc("share of requests").draw()?;
    for (i, (system, cell)) in row.cells.iter().enumerate() {
        let Cell::Runs(runs) = cell else { continue };
        let mut samples: Vec<f64> = runs.iter().flat_map(|r| r.samples.iter().map(|us| *us as f64 / 1000.0)).collect();
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(samples.iter().enumerate().map(|(k, ms)| (*ms, (k + 1) as f64 / n)), color.stroke_width(2)))?
            .label(system.title())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw()?;
    root.present()?;
    Ok(())
}
