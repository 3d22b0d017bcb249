//! `cargo bench --bench engine`: the engine's hot path, in three layers.
//!
//! 1. isolate creation from the startup snapshot (p50, p99): beside a live
//!    isolate, as every container's isolate but an engine's first is made
//!    (the goal is read against this), and as a process's first isolate;
//!    each next to bare `deno_core` under the same conditions;
//! 2. a warm run of the hello webtask through the library API (p50, p99);
//! 3. a warm HTTP request against a release node in its own process, with
//!    a built-in closed-loop load generator at 32 connections, and with
//!    `wrk -t2 -c32` when it is installed (`make bench` installs it).
//!
//! Figures are printed and written to `target/bench/engine.json`, next to the
//! goals they are read against.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use webtask::{Context, Engine, EngineConfig, Limits};

mod common;

use common::{bench_wrk, closed_loop, histogram, machine, micros, summary, write_report, Node, CONNECTIONS, HELLO};

const HTTP_SECONDS: u64 = 10;

/// The engine's HTTP figures are for isolates inside the node; the worker
/// figures are in the cold_start bench.
const IN_PROCESS: &str = "[workers]\nmode = \"in-process\"\n";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // gets a quick check that the harness starts instead of a full run.
    if !common::benchmarking("engine") {
        return;
    }
    let isolate = bench_isolate_creation();
    let core = bench_engine_core();
    let warm = bench_warm_in_process();
    let node = Node::start(IN_PROCESS);
    let http = bench_http(node.addr);
    let wrk = bench_wrk(node.addr, HTTP_SECONDS);
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
    write_report("engine", &report);
}

fn bench_isolate_creation() -> Value {
    let (ours, bare) = isolates_interleaved(300);
    let mut first = summary(&micros(&ours[20..]));
    first["bare_deno_core"] = summary(&micros(&bare[20..]));
    let (ours, bare) = isolates_beside_a_live_one(6, 50);
    let mut s = summary(&micros(&ours));
    s["bare_deno_core"] = summary(&micros(&bare));
    println!("isolate from snapshot   p50 {:>6} µs   p99 {:>6} µs", s["p50"], s["p99"]);
    println!("  bare deno_core, same conditions: p50 {:>6} µs   p99 {:>6} µs", s["bare_deno_core"]["p50"], s["bare_deno_core"]["p99"]);
    println!("first isolate of a process p50 {:>6} µs   p99 {:>6} µs", first["p50"], first["p99"]);
    println!("  bare deno_core, interleaved: p50 {:>6} µs   p99 {:>6} µs", first["bare_deno_core"]["p50"], first["bare_deno_core"]["p99"]);
    s["first_in_process"] = first;
    s
}

/// Plain `deno_core` runtimes from deno_core's own snapshot: the floor
/// ours is compared with.
fn bare_snapshot() -> &'static [u8] {
    use deno_core::{JsRuntimeForSnapshot, RuntimeOptions};
    static BARE: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    BARE.get_or_init(|| std::thread::spawn(|| &*Box::leak(JsRuntimeForSnapshot::new(RuntimeOptions::default()).snapshot())).join().unwrap())
}

fn bare_isolate() -> deno_core::JsRuntime {
    use deno_core::{JsRuntime, RuntimeOptions};
    JsRuntime::new(RuntimeOptions { startup_snapshot: Some(bare_snapshot()), ..Default::default() })
}

fn time_bare() -> Duration {
    let t = Instant::now();
    let runtime = bare_isolate();
    let took = t.elapsed();
    drop(runtime);
    took
}

/// Runs `f` inside a tokio runtime of its own, as isolates need.
fn in_runtime<R>(f: impl FnOnce() -> R) -> R {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _enter = rt.enter();
    f()
}

/// Runs `f` on a fresh thread inside a tokio runtime.
fn on_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || in_runtime(f)).join().unwrap()
}

/// The first isolate of a process, ours and bare `deno_core`'s created
/// alternately on one thread so that machine noise hits both alike. With
/// no other isolate alive, each one sets up V8's shared read-only heap
/// and string table again: what a worker process pays once, in the pool.
fn isolates_interleaved(samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    on_thread(move || {
        let limits = Limits::default();
        // Ours first: it sets the V8 flags, which the first isolate freezes.
        webtask::engine::probe::create_isolate(&limits);
        bare_snapshot();
        (0..samples).map(|_| (webtask::engine::probe::create_isolate(&limits), time_bare())).unzip()
    })
}

/// Isolates created while another of the same snapshot lives on another
/// thread: every container's isolate but the first in an engine. Ours and
/// bare `deno_core`'s alternate in blocks (V8 cannot hold isolates of two
/// different snapshots at once).
fn isolates_beside_a_live_one(blocks: usize, per_block: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..blocks {
        let hold_ours = |park: &mut dyn FnMut()| webtask::engine::probe::with_isolate(&Limits::default(), park);
        ours.extend(beside(hold_ours, move || {
            let limits = Limits::default();
            (0..per_block).map(|_| webtask::engine::probe::create_isolate(&limits)).collect::<Vec<_>>()
        }));
        let hold_bare = |park: &mut dyn FnMut()| {
            let _runtime = bare_isolate();
            park();
        };
        bare.extend(beside(hold_bare, move || (0..per_block).map(|_| time_bare()).collect::<Vec<_>>()));
    }
    (ours, bare)
}

/// Runs `measure` on a thread of its own while `hold` keeps an isolate
/// alive on another (both inside a tokio runtime); `hold` calls `park`
/// once its isolate lives and drops it when `park` returns, which is when
/// `measure` is done.
fn beside<T: Send + 'static>(hold: fn(&mut dyn FnMut()), measure: impl FnOnce() -> T + Send + 'static) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (live, is_live) = std::sync::mpsc::channel::<()>();
    let resident = std::thread::spawn(move || {
        in_runtime(|| {
            hold(&mut || {
                let _ = live.send(());
                let _ = stopped.recv();
            })
        })
    });
    is_live.recv().expect("the resident isolate's thread died");
    let out = on_thread(measure);
    drop(stop);
    resident.join().unwrap();
    out
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

fn bench_http(addr: SocketAddr) -> Value {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let uri: http::Uri = format!("http://{addr}/api/run/bench?name=webtask").parse().unwrap();
        // Warm the container (first request compiles).
        let uris = [uri];
        closed_loop(addr, &uris, 4, Duration::from_millis(500)).await;
        let (h, n, elapsed) = closed_loop(addr, &uris, CONNECTIONS, Duration::from_secs(HTTP_SECONDS)).await;
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

