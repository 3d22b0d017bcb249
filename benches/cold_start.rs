//! `cargo bench --bench cold_start`: what a new tenant costs, with webtasks
//! in jailed worker processes (a release node in its own process).
//!
//! - warm request: one container, one connection, back to back;
//! - new container, pool warm: every request names a container never seen,
//!   spaced so the pool refills between them, each one paired with a warm
//!   request under the same spacing. An idle gap alone costs a request
//!   about a millisecond here (sleeping threads, cold caches), so the
//!   overhead of a new container is read against the paced warm request,
//!   not against the back-to-back one;
//! - new container, pool empty (`pool_size = 0`): spawn + jail + snapshot +
//!   isolate on the request path, back to back. Measured first, once the
//!   machine is quiet (`common::settle`), so it is not charged with the
//!   teardown of other rows' workers;
//! - requests/s at 32 connections over 1 and over 50 containers;
//! - RSS and PSS of an idle assigned worker.
//!
//! Figures are printed and written to `target/bench/cold_start.json`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use common::{closed_loop, histogram, machine, summary, write_report, Client, Node, CONNECTIONS};

const WORKERS: &str = "[workers]\nmode = \"process\"\npool_size = 4\nmax = 512\n";
const IN_PROCESS: &str = "[workers]\nmode = \"in-process\"\n";
const WORKERS_NO_POOL: &str = "[workers]\nmode = \"process\"\npool_size = 0\nmax = 512\n";

fn main() {
    if !common::benchmarking("cold_start") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let report = rt.block_on(async {
        // First, on a quiet machine: the later rows leave hundreds of
        // workers whose teardown (memory, cgroups, network namespaces)
        // the kernel finishes in the background for seconds after.
        common::settle(Duration::from_secs(20)).await;
        let node = Node::start(WORKERS_NO_POOL);
        let cold = sequential(node.addr, 40, |i| format!("cold{i}"), Duration::ZERO).await;
        print_row("new container, pool empty", &cold);
        drop(node);
        common::settle(Duration::from_secs(20)).await;

        let node = Node::start(WORKERS);
        let warm = sequential(node.addr, 2000, |_| "warm".to_owned(), Duration::ZERO).await;
        print_row("warm request", &warm);
        let (paced, new_warm) = paired(node.addr, 150, Duration::from_millis(30)).await;
        print_row("warm request, paced", &paced);
        print_row("new container, pool warm", &new_warm);
        let express = first_express(node.addr, 40, Duration::from_millis(100)).await;
        print_row("new container, express app", &express);
        let one = throughput(node.addr, 1).await;
        let fifty = throughput(node.addr, 50).await;
        let memory = idle_worker_memory(node.addr).await;

        let in_process_node = Node::start(IN_PROCESS);
        let in_process = throughput(in_process_node.addr, 1).await;
        // The ratio to in-process is read from wrk: at these rates the
        // built-in generator's one thread saturates before the node does,
        // which would flatter the slower side. Runs alternate between the
        // two nodes and the medians are compared, so a noisy spell on this
        // shared VM cannot land on one side only.
        let (mut one_wrk, mut in_process_wrk) = (Vec::new(), Vec::new());
        for _ in 0..WRK_ROUNDS {
            for (addr, runs) in [(node.addr, &mut one_wrk), (in_process_node.addr, &mut in_process_wrk)] {
                runs.push(tokio::task::spawn_blocking(move || common::bench_wrk(addr, 5)).await.unwrap());
            }
        }
        drop((node, in_process_node));
        let rps = |v: &Value| v["requests_per_s"].as_f64();
        let (one_wrk, in_process_wrk) = (median_run(one_wrk), median_run(in_process_wrk));
        let ratio = match (rps(&one_wrk), rps(&in_process_wrk)) {
            (Some(w), Some(i)) => w / i,
            _ => rps(&one).unwrap_or(0.0) / rps(&in_process).unwrap_or(1.0),
        };
        println!("workers / in-process requests/s (1 container, wrk when installed): {ratio:.2}");


        let above = |q: &str| new_warm[q].as_u64().unwrap_or(0) as i64 - paced[q].as_u64().unwrap_or(0) as i64;
        let (extra_p50, extra_p99) = (above("p50"), above("p99"));
        println!("new container above warm (same pacing): p50 {extra_p50} µs, p99 {extra_p99} µs");
        json!({
            "machine": machine(),
            "warm_us": warm,
            "warm_paced_us": paced,
            "new_container_pool_warm_us": new_warm,
            "new_container_pool_warm_above_warm_us": {"p50": extra_p50, "p99": extra_p99},
            "new_container_pool_empty_us": cold,
            "new_container_express_app_us": express,
            "requests_per_s": {
                "one_container": one,
                "fifty_containers": fifty,
                "in_process_one_container": in_process,
                "one_container_wrk": one_wrk,
                "in_process_one_container_wrk": in_process_wrk,
                "workers_vs_in_process": ratio,
                "connections": CONNECTIONS,
            },
            "idle_worker_memory_kb": memory,
            "goals": {
                "new_container_pool_warm_above_warm_p50_us_max": 1000,
                "new_container_pool_warm_above_warm_p99_us_max": 5000,
                "new_container_pool_empty_p50_us_max": 15000,
                "workers_vs_in_process_requests_per_s_min": 0.7,
                "pss_per_idle_worker_kb_max": 20480,
            },
        })
    });
    write_report("cold_start", &report);
}

/// wrk runs per node for the workers / in-process ratio.
const WRK_ROUNDS: usize = 5;

/// The run with the median requests/s (wrk's own figures kept whole).
fn median_run(mut runs: Vec<Value>) -> Value {
    runs.sort_by(|a, b| a["requests_per_s"].as_f64().partial_cmp(&b["requests_per_s"].as_f64()).unwrap());
    let all: Vec<_> = runs.iter().map(|r| r["requests_per_s"].clone()).collect();
    let mut median = runs.get(runs.len() / 2).cloned().unwrap_or(Value::Null);
    if median.is_object() {
        median["runs_requests_per_s"] = Value::Array(all);
    }
    median
}

fn print_row(name: &str, s: &Value) {
    println!("{name:28} p50 {:>7} µs   p99 {:>7} µs   ({} samples)", s["p50"], s["p99"], s["samples"]);
}

/// `n` requests one after the other on one connection per request's
/// container, each to the container `name(i)`, `gap` apart.
async fn sequential(addr: SocketAddr, n: usize, name: impl Fn(usize) -> String, gap: Duration) -> Value {
    let mut client = Client::connect(addr).await;
    let mut h: Histogram<u64> = histogram();
    for i in 0..n {
        let uri: http::Uri = format!("http://{addr}/api/run/{}?name=bench", name(i)).parse().unwrap();
        h.record(client.hello(&uri).await.as_micros().max(1) as u64).unwrap();
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    summary(&h)
}

/// A webtask as most real ones start: an Express app through webtask-tools.
const EXPRESS_APP: &str = "const app = require('express')();\n\
    app.all('/', (req, res) => res.json('Hello, ' + req.query.name));\n\
    module.exports = require('webtask-tools').fromExpress(app);";

/// `n` first requests of new containers running [`EXPRESS_APP`], `gap`
/// apart: what loading modules costs a container (the module set's code
/// cache at work).
async fn first_express(addr: SocketAddr, n: usize, gap: Duration) -> Value {
    let mut client = Client::connect(addr).await;
    let mut h: Histogram<u64> = histogram();
    for i in 0..n {
        let target = common::Target::webtask_code(addr, &format!("express{i}"), bytes::Bytes::from_static(EXPRESS_APP.as_bytes()));
        h.record(client.send(&target).await.as_micros().max(1) as u64).unwrap();
        tokio::time::sleep(gap).await;
    }
    summary(&h)
}

/// `n` rounds of: a warm request, a pause, a request to a new container,
/// a pause. Returns (warm, new) latencies.
async fn paired(addr: SocketAddr, n: usize, gap: Duration) -> (Value, Value) {
    let mut client = Client::connect(addr).await;
    let (mut warm, mut new): (Histogram<u64>, Histogram<u64>) = (histogram(), histogram());
    let warm_uri: http::Uri = format!("http://{addr}/api/run/warm?name=bench").parse().unwrap();
    for i in 0..n {
        warm.record(client.hello(&warm_uri).await.as_micros().max(1) as u64).unwrap();
        tokio::time::sleep(gap).await;
        let uri: http::Uri = format!("http://{addr}/api/run/fresh{i}?name=bench").parse().unwrap();
        new.record(client.hello(&uri).await.as_micros().max(1) as u64).unwrap();
        tokio::time::sleep(gap).await;
    }
    (summary(&warm), summary(&new))
}

async fn throughput(addr: SocketAddr, containers: usize) -> Value {
    let uris: Vec<http::Uri> =
        (0..containers).map(|i| format!("http://{addr}/api/run/load{i}?name=bench").parse().unwrap()).collect();
    closed_loop(addr, &uris, CONNECTIONS, Duration::from_secs(2)).await;
    let (h, n, elapsed) = closed_loop(addr, &uris, CONNECTIONS, Duration::from_secs(8)).await;
    let rps = (n as f64 / elapsed.as_secs_f64()).round();
    println!("{:28} {rps} req/s   p50 {} µs   p99 {} µs", format!("{containers} container(s), 32 conns"), h.value_at_quantile(0.5), h.value_at_quantile(0.99));
    let mut s = summary(&h);
    s["requests_per_s"] = json!(rps);
    s
}

/// RSS and PSS (kB) of the workers assigned so far, from /proc: each is
/// the process the node spawned (its PID-namespace supervisor) plus the
/// worker under it.
async fn idle_worker_memory(addr: SocketAddr) -> Value {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = common::fetch_metrics(addr).await;
    let pids: Vec<u32> = metrics
        .lines()
        .filter(|l| l.starts_with("webtask_worker{"))
        .filter_map(|l| l.split("pid=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect();
    let mut rss = histogram();
    let mut pss = histogram();
    for pid in &pids {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let tree = std::iter::once(*pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok()));
        let (r, p) = tree.filter_map(memory_kb).fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2));
        if r > 0 {
            rss.record(r).unwrap();
            pss.record(p.max(1)).unwrap();
        }
    }
    println!("idle assigned worker          RSS p50 {} kB   PSS p50 {} kB   ({} workers)", rss.value_at_quantile(0.5), pss.value_at_quantile(0.5), pids.len());
    json!({"workers": pids.len(), "rss_p50": rss.value_at_quantile(0.5), "pss_p50": pss.value_at_quantile(0.5), "pss_max": pss.max()})
}

/// (RSS, PSS) of one process in kB.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<u64>().ok());
    Some((kb("Rss:")?, kb("Pss:")?))
}

