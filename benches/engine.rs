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
    let mut s = summary(&micros(&ours[20..]));
    let bare = summary(&micros(&bare[20..]));
    println!("isolate from snapshot   p50 {:>6} µs   p99 {:>6} µs", s["p50"], s["p99"]);
    println!("  bare deno_core, interleaved: p50 {:>6} µs   p99 {:>6} µs", bare["p50"], bare["p99"]);
    s["bare_deno_core"] = bare;
    s
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

