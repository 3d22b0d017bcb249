//! Worker processes: one container per process, pre-warmed pool, lifetime
//! policy, crashes. Through the HTTP API of a node in `process` mode.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually_within, sample, workers_config, TestNode};

const HELLO: &str = "return function (cb) { cb(null, 'alive'); }";
const PID: &str = "return function (cb) { cb(null, 'pid'); }";

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(5), check).await
}

/// The worker pid `/metrics` reports for `container`.
async fn worker_pid(node: &TestNode, container: &str) -> Option<u32> {
    worker_pid_in(&node.metrics().await, container)
}

/// The worker pid `metrics` (a `/metrics` page) reports for `container`.
pub(crate) fn worker_pid_in(metrics: &str, container: &str) -> Option<u32> {
    let prefix = format!("webtask_worker{{container=\"{container}\",pid=\"");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.split('"').next()?.parse().ok())
}

/// A node whose `container` has a worker that then stops dead (SIGSTOP
/// to the engine process under its pid namespace's supervisor): it neither
/// answers nor enforces its own limits. The supervisor's pid, as `/metrics`
/// reports it, and a function that freezes the worker.
async fn worker_to_freeze(container: &str) -> (TestNode, u32, impl Fn()) {
    let mut config = workers_config();
    config.engine.limits.wall_ms = 1000;
    let node = TestNode::with_config(config).await;
    node.run(container, "", HELLO).await;
    let supervisor = worker_pid(&node, container).await.unwrap();
    let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let engine: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on a worker process this test's node spawned.
    let freeze = move || assert_eq!(unsafe { libc::kill(engine, libc::SIGSTOP) }, 0);
    (node, supervisor, freeze)
}


#[tokio::test]
async fn containers_never_share_a_process() {
    let node = TestNode::workers().await;
    for c in ["tenant-a", "tenant-b"] {
        assert_eq!(node.run(c, "", PID).await.json(), json!("pid"));
    }
    let a = worker_pid(&node, "tenant-a").await.expect("a has a worker");
    let b = worker_pid(&node, "tenant-b").await.expect("b has a worker");
    assert_ne!(a, b);
    assert_ne!(a, std::process::id());
    // Both are live processes of their own.
    assert!(std::path::Path::new(&format!("/proc/{a}")).exists());
    assert!(std::path::Path::new(&format!("/proc/{b}")).exists());
}

#[tokio::test]
async fn a_worker_runs_as_pid_1_of_its_own_namespace_under_a_bare_supervisor() {
    let node = TestNode::workers().await;
    node.run("pid-ns", "", HELLO).await;
    let supervisor = worker_pid(&node, "pid-ns").await.unwrap();
    let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let engine: Vec<u32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(engine.len(), 1, "one worker under the supervisor: {children:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", engine[0])).unwrap();
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap();
    let ids: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "one namespace below the host's: {nspid}");
    assert_eq!(ids[1], "1", "the worker is pid 1 inside: {nspid}");
    // The supervisor holds nothing of the node's: stdio only.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{supervisor}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|fd| fd.parse::<u32>().unwrap() > 2)
        .collect();
    assert!(fds.len() <= 1, "the supervisor keeps only its liveness pipe: {fds:?}");
    // Killing what the node knows as the worker takes the engine with it.
    assert_eq!(unsafe { libc::kill(supervisor as i32, libc::SIGKILL) }, 0);
    eventually("engine gone with its supervisor", || async { !process_alive(engine[0]) }).await;
}

/// A process's `/proc/<pid>/status` field.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_owned()))
}

/// Inode of the image memfd (snapshot and code cache) `pid` has mapped.
fn image_inode(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find(|l| l.contains("memfd:webtask-image"))?.split_whitespace().nth(4)?.parse().ok()
}

/// Targets of `pid`'s descriptors, with the inode of each.
fn descriptors(pid: u32) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        Some((std::fs::read_link(&path).ok()?.display().to_string(), std::fs::metadata(&path).ok()?.ino()))
    })
    .collect()
}

/// The zygote `engine` was forked from: a root child of this process that
/// holds the image memfd `engine` maps.
fn zygote_of(engine: u32) -> Option<u32> {
    let image = image_inode(engine)?;
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok()).find(|p| {
        status_field(*p, "PPid").as_deref() == Some(me.as_str())
            && status_field(*p, "Uid").is_some_and(|u| u.starts_with("0\t"))
            && process_alive(*p)
            && descriptors(*p).iter().any(|(_, ino)| *ino == image)
    })
}

#[tokio::test]
async fn workers_are_the_nodes_children_forked_by_a_zygote_that_is_replaced_when_it_dies() {
    let node = TestNode::workers().await;
    node.run("zy-a", "", HELLO).await;
    let supervisor = worker_pid(&node, "zy-a").await.unwrap();
    // The node's own child (CLONE_PARENT), so the node reaps and signals it.
    assert_eq!(status_field(supervisor, "PPid"), Some(std::process::id().to_string()));
    let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let engine: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let zygote = zygote_of(engine).expect("the zygote holding this worker's image");
    // The worker holds none of the zygote's sockets (its line to the node).
    let zygote_sockets: Vec<u64> =
        descriptors(zygote).into_iter().filter(|(t, _)| t.starts_with("socket:")).map(|(_, ino)| ino).collect();
    assert!(!zygote_sockets.is_empty());
    for pid in [supervisor, engine] {
        let leaked: Vec<_> = descriptors(pid).into_iter().filter(|(_, ino)| zygote_sockets.contains(ino)).collect();
        assert!(leaked.is_empty(), "worker {pid} holds the zygote's socket: {leaked:?}");
    }

    // SAFETY: kill(2) on the zygote this test's node started.
    assert_eq!(unsafe { libc::kill(zygote as i32, libc::SIGKILL) }, 0);
    eventually("zygote gone", || async { !process_alive(zygote) }).await;
    // Running workers do not depend on it ...
    assert_eq!(node.run("zy-a", "", HELLO).await.json(), json!("alive"));
    // ... and new ones come from a new zygote.
    for c in ["zy-b", "zy-c", "zy-d"] {
        assert_eq!(node.run(c, "", HELLO).await.json(), json!("alive"));
    }
    let mut engines = Vec::new();
    for c in ["zy-a", "zy-b", "zy-c", "zy-d"] {
        let supervisor = worker_pid(&node, c).await.unwrap();
        let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
        engines.push(children.split_whitespace().next().unwrap().parse::<u32>().unwrap());
    }
    let next = zygote_of(engines[3]).expect("a new zygote");
    assert_ne!(next, zygote);
    // Forked workers still get a network namespace each, shared with no one.
    let netns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let mut seen = vec![netns(std::process::id()), netns(next)];
    for engine in engines {
        let ns = netns(engine);
        assert!(!seen.contains(&ns), "worker {engine} shares network namespace {ns:?}");
        seen.push(ns);
    }
}

/// Names of the threads of `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    tasks.iter().filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok()).map(|c| c.trim().to_owned()).collect()
}

#[tokio::test]
async fn workers_run_v8_without_platform_threads_and_still_run_its_queued_tasks() {
    // Room for the garbage that makes V8 collect the registered objects.
    let node = TestNode::with_config(crate::support::with_room(workers_config(), 2000)).await;
    // Async WebAssembly compilation and FinalizationRegistry callbacks reach
    // guest code only through V8's foreground task queue.
    let code = r#"return async function () {
        const add = new Uint8Array([0,97,115,109,1,0,0,0,1,7,1,96,2,127,127,1,127,3,2,1,0,7,7,1,3,97,100,100,0,0,10,9,1,7,0,32,0,32,1,106,11]);
        const { instance } = await WebAssembly.instantiate(add);
        let finalized = 0;
        const registry = new FinalizationRegistry(() => finalized++);
        (() => { for (let i = 0; i < 1000; i++) registry.register({ pad: new Array(1000) }, i); })();
        for (let round = 0; round < 20; round++) { const junk = []; for (let i = 0; i < 200; i++) junk.push(new Array(10000).fill(i)); }
        await new Promise((resolve) => setTimeout(resolve, 50));
        return { sum: instance.exports.add(2, 40), finalized: finalized > 0 };
    }"#;
    assert_eq!(node.run("v8-tasks", "", code).await.json(), json!({ "sum": 42, "finalized": true }));
    let supervisor = worker_pid(&node, "v8-tasks").await.unwrap();
    let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let engine: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let zygote = zygote_of(engine).expect("the zygote");
    // The zygote forks: it must be one thread. A worker's V8 has no
    // background threads (GC and compilation are charged to its own thread).
    assert_eq!(thread_names(zygote).len(), 1, "zygote threads: {:?}", thread_names(zygote));
    let names = thread_names(engine);
    assert!(!names.is_empty());
    assert!(!names.iter().any(|n| n.starts_with("V8 ")), "worker threads: {names:?}");
}

#[tokio::test]
async fn a_node_makes_cgroup_moves_cheap_where_the_host_has_cgroup2() {
    let _node = TestNode::workers().await;
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(" - cgroup2 ");
    assert_eq!(webtask::jail::cgroup::favors_dynmods(), cgroup2);
}

#[tokio::test]
async fn new_container_takes_a_prewarmed_worker_and_the_pool_refills() {
    let node = TestNode::workers().await;
    let idle = || async { sample(&node.metrics().await, "webtask_workers_idle") };
    eventually("pool filled", || async { idle().await == Some(2.0) }).await;
    let spawned_before = sample(&node.metrics().await, "webtask_workers_spawned_total").unwrap();
    assert_eq!(node.run("fresh", "", HELLO).await.json(), json!("alive"));
    // The request took a pooled worker: nothing was spawned for it, and the
    // pool then replaced what was taken.
    eventually("pool refilled", || async { idle().await == Some(2.0) }).await;
    let spawned_after = sample(&node.metrics().await, "webtask_workers_spawned_total").unwrap();
    assert_eq!(spawned_after - spawned_before, 1.0);
}

/// Runs `request` while SIGKILL goes to worker `pid` `after` it starts;
/// asserts the request failed as a crashed worker and returns its body.
async fn crashed_by_kill(request: impl std::future::Future<Output = crate::support::Resp>, pid: u32, after: Duration) -> serde_json::Value {
    let kill = async {
        tokio::time::sleep(after).await;
        // SAFETY: kill(2) on a worker process this test's node spawned.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    };
    let (res, ()) = tokio::join!(request, kill);
    assert_eq!(res.status, 502, "{}", res.text());
    let v = res.json();
    assert_eq!(v["code"], json!("worker_crashed"));
    v
}

/// Gives `container` a worker (one request), then stops (SIGSTOP) the
/// process that runs its isolate, under the pid namespace's supervisor;
/// returns the supervisor's pid.
async fn stop_engine(node: &TestNode, container: &str) -> u32 {
    node.run(container, "", HELLO).await;
    let supervisor = worker_pid(node, container).await.unwrap();
    let children = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).unwrap();
    let engine: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on a worker process this test's node spawned.
    assert_eq!(unsafe { libc::kill(engine, libc::SIGSTOP) }, 0);
    supervisor
}

#[tokio::test]
async fn a_worker_that_dies_while_the_node_waits_to_write_to_it_is_reported_by_its_exit() {
    let mut config = workers_config();
    config.http.body_bytes = 1 << 20;
    let node = TestNode::with_config(config).await;
    // A stopped worker reads nothing: a frame bigger than its socket holds
    // leaves the node's write waiting for room.
    let supervisor = stop_engine(&node, "stuck").await;
    let big = format!("{HELLO} //{}", "x".repeat(900 * 1024));
    // The stopped worker dies with its supervisor.
    let v = crashed_by_kill(node.run("stuck", "", &big), supervisor, Duration::from_millis(300)).await;
    // Not "node side closed" or "connection reset": the worker's own end.
    assert_eq!(v["reason"], json!("killed by signal 9"), "{v}");
}

#[tokio::test]
async fn killed_worker_fails_only_its_request_and_is_replaced() {
    let node = TestNode::workers().await;
    node.run("victim", "", HELLO).await;
    let pid = worker_pid(&node, "victim").await.unwrap();
    let slow = node.run("victim", "", "return function (cb) { setTimeout(() => cb(null, 'late'), 2000); }");
    let v = crashed_by_kill(slow, pid, Duration::from_millis(200)).await;
    assert_eq!(v["pid"], json!(pid));
    assert_eq!(v["reason"], json!("killed by signal 9"));
    // The next request gets a new worker.
    assert_eq!(node.run("victim", "", HELLO).await.json(), json!("alive"));
    let new_pid = worker_pid(&node, "victim").await.unwrap();
    assert_ne!(new_pid, pid);
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"webtask_workers_retired_total{reason="crashed"}"#), Some(1.0), "{m}");
}

#[tokio::test]
async fn other_containers_are_untouched_by_a_crash() {
    let node = TestNode::workers().await;
    node.run("a", "", HELLO).await;
    node.run("b", "", "return function (cb) { global.kept = 'b state'; cb(null, 1); }").await;
    let a = worker_pid(&node, "a").await.unwrap();
    unsafe { libc::kill(a as i32, libc::SIGKILL) };
    let res = node.run("b", "", "return function (cb) { cb(null, global.kept); }").await;
    assert_eq!(res.json(), json!("b state"));
}

#[tokio::test]
async fn idle_workers_are_retired() {
    let mut config = workers_config();
    config.workers.idle_timeout_ms = 300;
    let node = TestNode::with_config(config).await;
    node.run("sleepy", "", HELLO).await;
    let pid = worker_pid(&node, "sleepy").await.unwrap();
    eventually("idle retirement", || async {
        sample(&node.metrics().await, r#"webtask_workers_retired_total{reason="idle"}"#) == Some(1.0)
    })
    .await;
    assert_eq!(worker_pid(&node, "sleepy").await, None);
    eventually("process gone", || async { !process_alive(pid) }).await;
    // A re-assigned container gets a new process.
    node.run("sleepy", "", HELLO).await;
    assert_ne!(worker_pid(&node, "sleepy").await, Some(pid));
}

#[tokio::test]
async fn workers_are_retired_after_max_requests() {
    let mut config = workers_config();
    config.workers.max_requests = 3;
    let node = TestNode::with_config(config).await;
    for _ in 0..3 {
        node.run("busy", "", HELLO).await;
    }
    let pid = worker_pid(&node, "busy").await;
    eventually("max_requests retirement", || async {
        sample(&node.metrics().await, r#"webtask_workers_retired_total{reason="max_requests"}"#) == Some(1.0)
    })
    .await;
    node.run("busy", "", HELLO).await;
    assert_ne!(worker_pid(&node, "busy").await, pid);
}

/// A request always in flight does not keep a worker past `max_requests`:
/// the worker takes no new request, the container's next one gets a new
/// worker, and the old one ends once its last request is done.
#[tokio::test]
async fn a_worker_kept_busy_is_still_retired_after_max_requests() {
    let mut config = workers_config();
    config.workers.max_requests = 3;
    config.engine.limits.wall_ms = 10_000;
    let node = TestNode::with_config(config).await;
    let long = node.run("kept", "", "return function (cb) { setTimeout(() => cb(null, 'long'), 1500); }");
    let rest = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = worker_pid(&node, "kept").await.expect("assigned");
        for _ in 0..2 {
            assert_eq!(node.run("kept", "", HELLO).await.json(), json!("alive"));
        }
        assert_eq!(worker_pid(&node, "kept").await, Some(first), "three requests, one worker");
        assert_eq!(node.run("kept", "", HELLO).await.json(), json!("alive"));
        let second = worker_pid(&node, "kept").await.expect("assigned");
        assert_ne!(second, first, "a fourth request went to the worker past max_requests");
        first
    };
    let (long, first) = tokio::join!(long, rest);
    assert_eq!(long.json(), json!("long"), "the draining worker finished what it had");
    eventually("the drained worker retired", || async {
        sample(&node.metrics().await, r#"webtask_workers_retired_total{reason="max_requests"}"#) == Some(1.0)
    })
    .await;
    eventually("its process gone", || async { !process_alive(first) }).await;
}

/// At `workers.max`, a worker past `max_requests` and idle ends at once,
/// so its successor has its slot: no request is refused at the boundary.
#[tokio::test]
async fn at_the_cap_a_worker_past_max_requests_makes_room_for_its_successor() {
    let mut config = workers_config();
    config.workers.max = 1;
    config.workers.pool_size = 1;
    config.workers.max_requests = 3;
    let node = TestNode::with_config(config).await;
    for i in 0..7 {
        let res = node.run("full", "", HELLO).await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
    }
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"webtask_workers_retired_total{reason="max_requests"}"#), Some(2.0), "{m}");
}

/// A worker the node kills for overrunning a request's wall clock (it does
/// not answer: stopped here) is counted as such, not as a crash.
#[tokio::test]
async fn a_worker_killed_for_the_wall_clock_is_counted_under_wall_limit() {
    let mut config = workers_config();
    config.engine.limits.wall_ms = 300;
    let node = TestNode::with_config(config).await;
    stop_engine(&node, "frozen").await;
    let res = node.run("frozen", "", HELLO).await;
    assert_eq!((res.status, res.json()["code"].as_str()), (504, Some("wall_limit")), "{}", res.text());
    assert_eq!(node.run("frozen", "", HELLO).await.json(), json!("alive"));
    eventually("counted under wall_limit", || async {
        let m = node.metrics().await;
        sample(&m, r#"webtask_workers_retired_total{reason="wall_limit"}"#) == Some(1.0)
            && sample(&m, r#"webtask_workers_retired_total{reason="crashed"}"#) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn at_the_cap_the_least_recently_used_container_makes_room() {
    let mut config = workers_config();
    config.workers.max = 2;
    config.workers.pool_size = 0;
    let node = TestNode::with_config(config).await;
    // Each is spawned on the request path, with no warm-up run of its own.
    assert_eq!(node.run("first", "", HELLO).await.json(), json!("alive"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(node.run("second", "", HELLO).await.json(), json!("alive"));
    assert_eq!(node.run("third", "", HELLO).await.json(), json!("alive"));
    assert_eq!(worker_pid(&node, "first").await, None, "least recently used was evicted");
    assert!(worker_pid(&node, "second").await.is_some());
    assert!(worker_pid(&node, "third").await.is_some());
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"webtask_workers_retired_total{reason="evicted"}"#), Some(1.0), "{m}");
}

#[tokio::test]
async fn memory_bomb_in_one_container_costs_another_nothing() {
    let node = TestNode::with_config(crate::support::with_room(workers_config(), 10_000)).await;
    node.run("steady", "", HELLO).await;
    let bomb = node.run("bomb", "", "return function (cb) { a = []; for (;;) a.push(new Array(1e6).fill(1)); }");
    let steady = async {
        let mut ok = 0;
        for _ in 0..40 {
            assert_eq!(node.run("steady", "", HELLO).await.json(), json!("alive"));
            ok += 1;
        }
        ok
    };
    let (bomb, ok) = tokio::join!(bomb, steady);
    assert_eq!(bomb.json()["code"], json!("memory_limit"), "{}", bomb.text());
    assert_eq!(ok, 40);
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state field says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[tokio::test]
async fn memory_outside_the_v8_heap_is_bounded_by_the_worker_cgroup() {
    let mut config = crate::support::with_room(workers_config(), 10_000);
    config.jail.memory_mb = 256;
    let node = TestNode::with_config(config).await;
    node.run("steady", "", HELLO).await;
    // Wasm memories are not ArrayBuffer allocations: only the cgroup sees them.
    let code = r#"return function (cb) {
        const kept = [];
        for (;;) { const m = new WebAssembly.Memory({ initial: 512 }); new Uint8Array(m.buffer).fill(1); kept.push(m); }
    }"#;
    let res = node.run("wasm-bomb", "", code).await;
    assert_eq!(res.status, 500, "{}", res.text());
    assert_eq!(res.json(), json!({"code": "memory_limit", "limit_mb": 256, "error": "memory limit of 256 MiB exceeded"}));
    // Only that container's worker died.
    assert_eq!(node.run("steady", "", HELLO).await.json(), json!("alive"));
    assert_eq!(node.run("wasm-bomb", "", HELLO).await.json(), json!("alive"));
}

#[tokio::test]
async fn two_nodes_on_one_host_never_hand_out_the_same_uid() {
    let (a, b) = (TestNode::workers().await, TestNode::workers().await);
    for (node, c) in [(&a, "uid-a1"), (&a, "uid-a2"), (&b, "uid-b1"), (&b, "uid-b2")] {
        node.run(c, "", HELLO).await;
    }
    let mut uids = Vec::new();
    for (node, c) in [(&a, "uid-a1"), (&a, "uid-a2"), (&b, "uid-b1"), (&b, "uid-b2")] {
        let pid = worker_pid(node, c).await.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid: u32 = status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok()).unwrap();
        uids.push(uid);
    }
    let distinct: std::collections::BTreeSet<_> = uids.iter().collect();
    assert_eq!(distinct.len(), uids.len(), "uids shared between nodes: {uids:?}");
}

/// CPU time is read from each worker thread's own clock whatever made the
/// process: with the jail off (no pid namespace, so the worker is the
/// zygote's raw clone, whose C library still holds the zygote's thread id)
/// a CPU hog still ends as cpu_limit, not at the wall clock.
#[tokio::test]
async fn the_cpu_limit_holds_in_workers_with_the_jail_off() {
    let mut config = crate::support::workers_config();
    config.jail.mode = webtask::jail::JailMode::Off;
    config.engine.limits.wall_ms = 5_000;
    let node = TestNode::with_config(config).await;
    let res = node.run("hog", "", "return function (cb) { while (true) {} }").await;
    let v = res.json();
    assert_eq!(v["code"], json!("cpu_limit"), "{v}");
    assert_eq!(v["limit_ms"], json!(100), "{v}");
}

/// A response read as it streams: its status, and its whole body or why
/// the body broke off.
async fn fetch_streamed(url: String) -> (u16, Result<bytes::Bytes, String>) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(url)
        .header("content-type", "application/javascript")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(STREAM.as_bytes())))
        .unwrap();
    let res = client.request(req).await.expect("response head");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| format!("{e:?}"));
    (status, body)
}

/// Streams ten chunks, one every 100 ms.
const STREAM: &str = "module.exports = (ctx, req, res) => { res.writeHead(200); let i = 0; \
    const t = setInterval(() => { res.write('x'); if (++i === 10) { clearInterval(t); res.end(); } }, 100); };";

#[tokio::test]
async fn clients_that_leave_during_pool_miss_spawns_leak_no_slots_and_mix_up_no_pids() {
    let mut config = workers_config();
    config.workers.max = 3;
    config.workers.pool_size = 0;
    let node = TestNode::with_config(config).await;
    // Clients that give up after a few ms, two at a time, while their new
    // containers' workers are being forked or started: their request
    // futures are dropped at the node.
    for i in 0..60u64 {
        let leave = |c: String, wait: Duration| {
            let node = &node;
            async move {
                let _ = tokio::time::timeout(wait, node.run(&c, "", HELLO)).await;
            }
        };
        let wait = Duration::from_micros(1000 + 500 * (i % 30));
        tokio::join!(leave(format!("leaver-{i}-a"), wait), leave(format!("leaver-{i}-b"), wait + wait / 3));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every slot is back: new containers still get workers (evicting others).
    for i in 0..5 {
        let res = node.run(&format!("after-{i}"), "", HELLO).await;
        assert_eq!(res.status, 200, "after-{i}: {}", res.text());
    }
    // Each container's worker is its own live process.
    let mut pids = Vec::new();
    for i in 2..5 {
        let c = format!("after-{i}");
        assert_eq!(node.run(&c, "", HELLO).await.json(), json!("alive"));
        let pid = worker_pid(&node, &c).await.expect("a worker");
        assert!(process_alive(pid), "{c}'s worker {pid} is not a live process");
        assert_eq!(status_field(pid, "PPid"), Some(std::process::id().to_string()));
        pids.push(pid);
    }
    let distinct: std::collections::BTreeSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), pids.len(), "workers share a pid: {pids:?}");
    // Killing one container's worker takes no other's.
    // SAFETY: kill(2) on a worker process this test's node spawned.
    assert_eq!(unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) }, 0, "{}", std::io::Error::last_os_error());
    eventually("worker gone", || async { !process_alive(pids[0]) }).await;
    for (i, pid) in (3..5).zip(&pids[1..]) {
        assert_eq!(node.run(&format!("after-{i}"), "", HELLO).await.json(), json!("alive"));
        assert_eq!(worker_pid(&node, &format!("after-{i}")).await, Some(*pid));
    }
}

#[tokio::test]
async fn a_streaming_response_is_not_cut_by_an_eviction_at_the_cap() {
    let mut config = workers_config();
    config.workers.max = 2;
    config.workers.pool_size = 0;
    config.engine.limits.wall_ms = 5000;
    let node = TestNode::with_config(config).await;
    let stream = fetch_streamed(node.url("/api/run/streamer"));
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The streamer is the least recently used, but busy: the other
        // container goes when a third needs room.
        for c in ["other-1", "other-2"] {
            let res = node.run(c, "", HELLO).await;
            assert_eq!(res.status, 200, "{c}: {}", res.text());
        }
    };
    let ((status, body), ()) = tokio::join!(stream, others);
    assert_eq!(status, 200);
    assert_eq!(body.as_deref(), Ok(&b"xxxxxxxxxx"[..]));
    assert!(worker_pid(&node, "other-1").await.is_none());
}

#[tokio::test]
async fn a_streaming_response_is_not_cut_by_max_requests_retirement() {
    let mut config = workers_config();
    config.workers.max_requests = 1;
    config.engine.limits.wall_ms = 5000;
    let node = TestNode::with_config(config).await;
    let (status, body) = fetch_streamed(node.url("/api/run/streamer")).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_deref(), Ok(&b"xxxxxxxxxx"[..]));
    eventually("max_requests retirement once the stream is over", || async {
        sample(&node.metrics().await, r#"webtask_workers_retired_total{reason="max_requests"}"#) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_running_stream_counts_against_max_concurrency() {
    let mut config = workers_config();
    config.engine.max_concurrency = 1;
    config.engine.limits.wall_ms = 5000;
    let node = TestNode::with_config(config).await;
    let stream = fetch_streamed(node.url("/api/run/streamer"));
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.run("streamer", "", HELLO).await
    };
    let ((status, body), second) = tokio::join!(stream, second);
    assert_eq!(status, 200);
    assert_eq!(body.as_deref(), Ok(&b"xxxxxxxxxx"[..]));
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.json()["code"], json!("concurrency_limit"));
    // Over: the permit is back.
    assert_eq!(node.run("streamer", "", HELLO).await.json(), json!("alive"));
}

#[tokio::test]
async fn a_stream_that_outlives_the_wall_clock_limit_is_ended_and_its_worker_killed() {
    let (node, supervisor, freeze_worker) = worker_to_freeze("frozen").await;
    let stream = fetch_streamed(node.url("/api/run/frozen"));
    let freeze = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        freeze_worker();
    };
    let started = std::time::Instant::now();
    let (streamed, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(10), stream), freeze);
    let (status, body) = streamed.expect("the node ends the stream at the wall clock limit and its grace");
    assert_eq!(status, 200);
    assert!(body.is_err(), "a stream cut short is not a whole body: {body:?}");
    assert!(started.elapsed() >= Duration::from_millis(2900), "{:?}", started.elapsed());
    eventually("worker killed", || async { !process_alive(supervisor) }).await;
    assert_eq!(node.run("frozen", "", HELLO).await.json(), json!("alive"));
    assert_ne!(worker_pid(&node, "frozen").await, Some(supervisor));
}

#[tokio::test]
async fn a_request_its_client_left_on_a_stuck_worker_ends_at_the_wall_clock_limit() {
    let (node, supervisor, freeze) = worker_to_freeze("left").await;
    freeze();
    // The client gives up long before the node's deadline (wall clock
    // limit and grace); the node does not forget the request.
    let gone = tokio::time::timeout(Duration::from_millis(300), node.run("left", "", HELLO)).await;
    assert!(gone.is_err());
    assert!(process_alive(supervisor));
    eventually_within("stuck worker killed at the deadline", Duration::from_secs(6), || async { !process_alive(supervisor) }).await;
    assert_eq!(node.run("left", "", HELLO).await.json(), json!("alive"));
}

/// A node stopped with SIGTERM ends its workers and waits for them to be
/// reaped, so their cgroups go with it; before, they stayed until the next
/// node's start swept them.
#[tokio::test]
async fn a_stopped_node_leaves_no_worker_cgroups_behind() {
    let node = crate::logs::ServeNode::start("cgroups", "[workers]\nmode = \"process\"\npool_size = 2\n[jail]\nmode = \"required\"\n").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{}/api/run/kept", node.addr))
        .header("content-type", "application/javascript")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(HELLO.as_bytes())))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
    let pid = worker_pid_in(&node.metrics().await, "kept").expect("the worker's pid");
    // Every cgroup directory the worker is in, under each hierarchy.
    let dirs: Vec<std::path::PathBuf> = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            let root = match controllers.split(',').find(|c| ["memory", "pids", "cpu"].contains(c)) {
                Some(c) => std::path::Path::new("/sys/fs/cgroup").join(c),
                None if controllers.is_empty() => std::path::PathBuf::from("/sys/fs/cgroup"),
                None => return None,
            };
            path.contains("webtask").then(|| root.join(path.trim_start_matches('/')))
        })
        .filter(|d| d.exists())
        .collect();
    assert!(!dirs.is_empty(), "the worker is in no webtask cgroup");
    node.stop().await;
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
