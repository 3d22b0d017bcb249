//! `cargo bench --bench cold_start`: what a new tenant costs, with webtasks
//! in jailed worker processes (a release node in its own process).
//!
//! - warm request: one container, one connection, sequential;
//! - new container, pool warm: every request names a container never seen,
//!   spaced so the pool refills between them;
//! - new container, pool empty (`pool_size = 0`): spawn + jail + snapshot +
//!   isolate on the request path;
//! - requests/s at 32 connections over 1 and over 50 containers;
//! - RSS and PSS of an idle assigned worker.
//!
//! Figures are printed and written to `target/bench/cold_start.json`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use common::{closed_loop, histogram, machine, summary, write_report, Client, Node, CONNECTIONS};

const WORKERS: &str = "[workers]\nmode = \"process\"\npool_size = 4\nmax = 512\n";
const WORKERS_NO_POOL: &str = "[workers]\nmode = \"process\"\npool_size = 0\nmax = 512\n";

fn main() {
    if !common::benchmarking("cold_start") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let report = rt.block_on(async {
        let node = Node::start(WORKERS);
        let warm = sequential(node.addr, 2000, |_| "warm".to_owned(), Duration::ZERO).await;
        print_row("warm request", &warm);
        let new_warm = sequential(node.addr, 150, |i| format!("fresh{i}"), Duration::from_millis(30)).await;
        print_row("new container, pool warm", &new_warm);
        let one = throughput(node.addr, 1).await;
        let fifty = throughput(node.addr, 50).await;
        let memory = idle_worker_memory(node.addr).await;
        drop(node);

        let node = Node::start(WORKERS_NO_POOL);
        let cold = sequential(node.addr, 40, |i| format!("cold{i}"), Duration::ZERO).await;
        print_row("new container, pool empty", &cold);
        drop(node);

        let extra_p50 = new_warm["p50"].as_u64().unwrap_or(0) as i64 - warm["p50"].as_u64().unwrap_or(0) as i64;
        let extra_p99 = new_warm["p99"].as_u64().unwrap_or(0) as i64 - warm["p99"].as_u64().unwrap_or(0) as i64;
        println!("new container above warm: p50 {extra_p50} µs, p99 {extra_p99} µs");
        json!({
            "machine": machine(),
            "warm_us": warm,
            "new_container_pool_warm_us": new_warm,
            "new_container_pool_warm_above_warm_us": {"p50": extra_p50, "p99": extra_p99},
            "new_container_pool_empty_us": cold,
            "requests_per_s": {"one_container": one, "fifty_containers": fifty, "connections": CONNECTIONS},
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

/// RSS and PSS (kB) of the workers assigned so far, from /proc.
async fn idle_worker_memory(addr: SocketAddr) -> Value {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = fetch_metrics(addr).await;
    let pids: Vec<u32> = metrics
        .lines()
        .filter(|l| l.starts_with("webtask_worker{"))
        .filter_map(|l| l.split("pid=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect();
    let mut rss = histogram();
    let mut pss = histogram();
    for pid in &pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
        let kb = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<u64>().ok());
        if let (Some(r), Some(p)) = (kb("Rss:"), kb("Pss:")) {
            rss.record(r.max(1)).unwrap();
            pss.record(p.max(1)).unwrap();
        }
    }
    println!("idle assigned worker          RSS p50 {} kB   PSS p50 {} kB   ({} workers)", rss.value_at_quantile(0.5), pss.value_at_quantile(0.5), pids.len());
    json!({"workers": pids.len(), "rss_p50": rss.value_at_quantile(0.5), "pss_p50": pss.value_at_quantile(0.5), "pss_max": pss.max()})
}

async fn fetch_metrics(addr: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/metrics")).header("host", "bench").body(Full::new(Bytes::new())).unwrap();
    let res = send.send_request(req).await.unwrap();
    String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
}
