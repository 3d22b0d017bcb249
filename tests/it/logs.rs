//! Logs: guest console lines as bunyan records on per-container SSE
//! streams, the operator's system stream, slow readers, the CLI. Through
//! the HTTP API of nodes running webtasks in worker processes and in-process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::support::{sample, test_config, workers_config_from, TestNode};

pub const ADMIN_KEY: &str = "test-admin-key-0123";

/// A client following one SSE stream.
pub struct Reader {
    body: Incoming,
    buf: BytesMut,
}

impl Reader {
    /// Attaches to `path` on `addr`; returns once the node has answered,
    /// i.e. once the reader is attached.
    pub async fn open(addr: std::net::SocketAddr, path: &str, key: Option<&str>) -> Result<Reader, (u16, Value)> {
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        let res = tokio::time::timeout(Duration::from_secs(30), client.request(req.body(Empty::<Bytes>::new()).unwrap()))
            .await
            .expect("attach hung")
            .expect("attach failed");
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        }
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Ok(Reader { body: res.into_body(), buf: BytesMut::new() })
    }

    pub async fn tenant(node: &TestNode, container: &str) -> Reader {
        Self::open(node.addr, &format!("/api/logs/tenant/{container}"), None).await.expect("tenant stream")
    }

    pub async fn system(node: &TestNode) -> Reader {
        Self::open(node.addr, "/api/logs/system", Some(ADMIN_KEY)).await.expect("system stream")
    }

    /// The next record (comments skipped), or `None` if none comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }

    /// The next record; waits as long as it takes.
    pub async fn next(&mut self) -> Value {
        let text = self.next_event().await;
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
        serde_json::from_str(data).unwrap_or_else(|e| panic!("bad record ({e}): {data}"))
    }

    /// The next event that is not a comment, as sent (without its blank line).
    pub async fn next_event(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = self.buf.split_to(end + 2);
                let text = std::str::from_utf8(&event[..end]).expect("UTF-8 event").to_owned();
                if text.lines().any(|l| l.starts_with("data: ")) {
                    return text;
                }
                assert!(text.starts_with(':'), "neither data nor comment: {text:?}");
                continue;
            }
            let frame = self.body.frame().await.expect("stream ended").expect("stream broke");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Records until one whose `msg` satisfies `until` (included).
    /// Records up to and including the first whose `msg` satisfies
    /// `until`; a test fails, rather than hangs, if none comes in 60 s.
    pub async fn until(&mut self, until: impl Fn(&str) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let Ok(r) = tokio::time::timeout_at(deadline, self.next()).await else {
                panic!("the awaited record did not come in 60 s; {} came: {:?}", got.len(), msgs(&got).iter().rev().take(5).collect::<Vec<_>>());
            };
            let stop = until(r["msg"].as_str().unwrap_or(""));
            got.push(r);
            if stop {
                return got;
            }
        }
    }
}

pub fn msgs(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["msg"].as_str().unwrap_or("")).collect()
}

fn logs_config() -> webtask::config::Config {
    let mut config = test_config();
    config.logs.admin_key = Some(ADMIN_KEY.into());
    config
}

/// A node with webtasks in worker processes and one with them in-process.
async fn both_nodes(config: webtask::config::Config) -> [TestNode; 2] {
    [TestNode::with_config(workers_config_from(config.clone())).await, TestNode::with_config(config).await]
}

const THREE_LINES: &str = r#"return function (context, cb) {
    console.log("one", 1);
    console.warn("two %d", 2);
    console.error({ three: [3] });
    cb(null, "logged");
}"#;

#[tokio::test]
async fn three_lines_reach_a_reader_attached_before_the_request() {
    for node in both_nodes(logs_config()).await {
        let mut reader = Reader::tenant(&node, "three").await;
        let res = node.run("three", "", THREE_LINES).await;
        assert_eq!(res.json(), json!("logged"));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(reader.next_within(Duration::from_secs(1)).await.expect("a record within 1 s"));
        }
        assert_eq!(msgs(&got), ["one 1", "two 2", "{ three: [ 3 ] }"]);
        assert_eq!(got.iter().map(|r| r["level"].as_u64().unwrap()).collect::<Vec<_>>(), [30, 40, 50]);
        let req_id = got[0]["req_id"].as_str().expect("req_id").to_owned();
        assert!(!req_id.is_empty());
        for r in &got {
            assert_eq!(r["container"], "three");
            assert_eq!(r["req_id"], req_id.as_str());
            assert_eq!((r["v"].as_u64(), r["name"].as_str(), r["source"].as_str()), (Some(0), Some("webtask"), Some("tenant")));
            assert!(r["pid"].as_u64().is_some() && r["hostname"].as_str().is_some() && r["time"].as_str().is_some());
        }
        // Exactly those three: nothing else on the container's stream.
        assert_eq!(reader.next_within(Duration::from_millis(300)).await, None);
    }
}

#[tokio::test]
async fn a_line_with_line_breaks_is_one_data_line_of_json() {
    for node in both_nodes(logs_config()).await {
        let mut reader = Reader::tenant(&node, "breaks").await;
        let res = node.run("breaks", "", r#"return function (cb) { console.log("a\nb\rc"); cb(null, 1); }"#).await;
        assert_eq!(res.status, 200);
        let event = reader.next_event().await;
        let lines: Vec<&str> = event.split(['\n', '\r']).collect();
        assert_eq!(lines.len(), 1, "{event:?}");
        let data = lines[0].strip_prefix("data: ").expect("a data line");
        let record: Value = serde_json::from_str(data).unwrap();
        assert_eq!(record["msg"], "a\nb\rc");
    }
}

#[tokio::test]
async fn readers_past_the_cap_get_429() {
    let mut config = logs_config();
    config.logs.max_readers = 2;
    let node = TestNode::with_config(config).await;
    let _a = Reader::tenant(&node, "a").await;
    let _b = Reader::system(&node).await;
    let (status, body) = Reader::open(node.addr, "/api/logs/tenant/c", None).await.err().expect("refused");
    assert_eq!((status, body["code"].as_str(), body["limit"].as_u64()), (429, Some("too_many_readers"), Some(2)));
}

#[tokio::test]
async fn worker_records_carry_the_worker_pid_and_requests_their_own_id() {
    let node = TestNode::with_config(workers_config_from(logs_config())).await;
    let mut reader = Reader::tenant(&node, "ids").await;
    for _ in 0..2 {
        node.run("ids", "", "return function (cb) { console.log('hi'); cb(null, 1); }").await;
    }
    let (a, b) = (reader.next().await, reader.next().await);
    assert_ne!(a["req_id"], b["req_id"]);
    let metrics = node.metrics().await;
    let pid = sample(&metrics, &format!("webtask_worker{{container=\"ids\",pid=\"{}\"}}", a["pid"])).expect("pid of the worker");
    assert_eq!(pid, 1.0);
    assert_ne!(a["pid"].as_u64(), Some(std::process::id() as u64));
}

#[tokio::test]
async fn a_container_never_sees_another_containers_records() {
    for node in both_nodes(logs_config()).await {
        let mut a = Reader::tenant(&node, "tenant-a").await;
        let mut b = Reader::tenant(&node, "tenant-b").await;
        let mut system = Reader::system(&node).await;
        for c in ["tenant-a", "tenant-b"] {
            let code = format!("return function (cb) {{ console.log('secret of {c}'); cb(null, 1); }}");
            assert_eq!(node.run(c, "", &code).await.status, 200);
        }
        let all = system.until(|m| m == "secret of tenant-b").await;
        let all: Vec<_> = all.iter().filter(|r| r["source"] == "tenant").collect();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0]["container"].as_str(), all[1]["container"].as_str()), (Some("tenant-a"), Some("tenant-b")));
        // The store writes a record to its container's stream before the
        // system stream: anything misrouted would be waiting by now.
        assert_eq!(a.next().await["msg"], "secret of tenant-a");
        assert_eq!(b.next().await["msg"], "secret of tenant-b");
        assert_eq!(a.next_within(Duration::from_millis(300)).await, None);
        assert_eq!(b.next_within(Duration::from_millis(300)).await, None);
    }
}

#[tokio::test]
async fn since_replays_recent_records_first() {
    let node = TestNode::with_config(logs_config()).await;
    node.run("replay", "", "return function (cb) { console.log('before'); cb(null, 1); }").await;
    let mut reader = Reader::open(node.addr, "/api/logs/tenant/replay?since=60", None).await.unwrap();
    assert_eq!(reader.next().await["msg"], "before");
    node.run("replay", "", "return function (cb) { console.log('after'); cb(null, 1); }").await;
    assert_eq!(reader.next().await["msg"], "after");
    // Without since, only what comes next.
    let mut live = Reader::tenant(&node, "replay").await;
    node.run("replay", "", "return function (cb) { console.log('later'); cb(null, 1); }").await;
    assert_eq!(live.next().await["msg"], "later");
}

#[tokio::test]
async fn the_system_stream_is_for_operators_only() {
    let node = TestNode::with_config(logs_config()).await;
    for key in [None, Some("wrong"), Some(""), Some("test-admin-key-012")] {
        let (status, body) = Reader::open(node.addr, "/api/logs/system", key).await.err().expect("refused");
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{key:?}");
    }
    assert!(Reader::open(node.addr, "/api/logs/system", Some(ADMIN_KEY)).await.is_ok());
    // No key configured: closed to everyone.
    let closed = TestNode::with_config(test_config()).await;
    let (status, _) = Reader::open(closed.addr, "/api/logs/system", Some(ADMIN_KEY)).await.err().expect("refused");
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_log_requests_get_json_errors() {
    let node = TestNode::with_config(logs_config()).await;
    for path in ["/api/logs/tenant/a?since=-5", "/api/logs/tenant/a?since=soon", "/api/logs/tenant/bad.name", "/api/logs/tenant/"] {
        let res = node.get(path).await;
        assert_eq!((res.status, res.json()["code"].as_str()), (400, Some("bad_request")), "{path}");
    }
    assert_eq!(node.get("/api/logs/other").await.status, 404);
    let res = node.request("POST", "/api/logs/tenant/a", None, "").await;
    assert_eq!((res.status, res.json()["code"].as_str()), (405, Some("method_not_allowed")));
    // HEAD answers as GET would, without the stream.
    let res = node.request("HEAD", "/api/logs/tenant/a", None, "").await;
    assert_eq!((res.status, res.headers["content-type"].to_str().unwrap(), res.body.len()), (200, "text/event-stream", 0));
    assert_eq!(node.request("HEAD", "/api/logs/system", None, "").await.status, 401);
}

#[tokio::test]
async fn console_arguments_are_formatted_as_node_does() {
    let mut config = logs_config();
    config.logs.line_bytes = 100;
    let node = TestNode::with_config(config).await;
    let mut reader = Reader::tenant(&node, "fmt").await;
    let code = r#"return function (cb) {
        console.log("a %s b %d c %i d %f e %j %% %c|", "x", 42, "42.9", "1.5", { k: 1 }, "color: red");
        console.log({ a: 1, b: 'x', 'c-d': [1, 2, { d: { e: { f: 1 } } }] });
        console.log("s", 1, null, undefined, true, -0, 10n, Symbol("y"));
        console.info(new Map([[1, 'a']]), new Set([1]), [], {});
        const o = { name: "o" }; o.self = o; console.debug(o);
        console.trace(function foo() {}, class Bar {}, () => 1);
        console.log("100%", "%s");
        console.log("%s and %s", "one");
        console.log(new Error("boom").message, Object.create(null), new Uint8Array([1, 2]));
        console.log("x".repeat(500));
        cb(null, 1);
    }"#;
    assert_eq!(node.run("fmt", "", code).await.status, 200);
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(reader.next().await);
    }
    let expected = [
        r#"a x b 42 c 42 d 1.5 e {"k":1} % |"#,
        "{ a: 1, b: 'x', 'c-d': [ 1, 2, { d: [Object] } ] }",
        "s 1 null undefined true -0 10n Symbol(y)",
        "Map(1) { 1 => 'a' } Set(1) { 1 } [] {}",
        "{ name: 'o', self: [Circular] }",
        "[Function: foo] [class Bar] [Function (anonymous)]",
        "100% %s",
        "one and %s",
        "boom [Object: null prototype] {} Uint8Array(2) [ 1, 2 ]",
    ];
    assert_eq!(&msgs(&got)[..9], expected);
    assert_eq!(got[4]["level"], 20);
    assert_eq!(got[5]["level"], 10);
    assert_eq!(got[9]["msg"], format!("{}… [truncated 400 bytes]", "x".repeat(100)));
}

/// The rest of Node 20's console: tables, groups, counters, timers,
/// assertions, dir; each line as Node 20.20 prints it (stderr ones at warn).
#[tokio::test]
async fn the_rest_of_nodes_console_prints_as_node_does() {
    let node = TestNode::with_config(logs_config()).await;
    let mut reader = Reader::tenant(&node, "con").await;
    let code = r#"return function (cb) {
        console.table([{ a: 1, b: "Y" }, { a: "Z", b: 2 }]);
        console.table({ x: 1, y: "s", z: { p: 1 } });
        console.table(new Map([["k", 1]]));
        console.table([{ a: { b: 1, c: 2, d: 3 } }], ["a"]);
        console.group("G"); console.log("in\nside"); console.groupEnd(); console.log("out");
        console.count(); console.count(); console.count("x"); console.countReset(); console.count(); console.countReset("nope");
        console.assert(1 === 2, "oops %s", "here"); console.assert(false); console.assert(true, "no");
        console.dir("str"); console.dir({ a: "b" });
        console.dir({ a: { b: { c: { d: 1 } } } }, { depth: 0 }); console.dir({ a: { b: { c: { d: 1 } } } });
        console.time("t"); console.time("t"); console.timeEnd("t"); console.timeEnd("t");
        cb(null, 1);
    }"#;
    assert_eq!(node.run("con", "", code).await.status, 200);
    let got = reader.until(|m| m.starts_with("Warning: No such label")).await;
    let lines = msgs(&got);
    let table = |rows: &[&str]| rows.join("\n");
    assert_eq!(lines[0], table(&[
        "┌─────────┬─────┬─────┐",
        "│ (index) │ a   │ b   │",
        "├─────────┼─────┼─────┤",
        "│ 0       │ 1   │ 'Y' │",
        "│ 1       │ 'Z' │ 2   │",
        "└─────────┴─────┴─────┘",
    ]));
    assert_eq!(lines[1], table(&[
        "┌─────────┬───┬────────┐",
        "│ (index) │ p │ Values │",
        "├─────────┼───┼────────┤",
        "│ x       │   │ 1      │",
        "│ y       │   │ 's'    │",
        "│ z       │ 1 │        │",
        "└─────────┴───┴────────┘",
    ]));
    assert_eq!(lines[2], table(&[
        "┌───────────────────┬─────┬────────┐",
        "│ (iteration index) │ Key │ Values │",
        "├───────────────────┼─────┼────────┤",
        "│ 0                 │ 'k' │ 1      │",
        "└───────────────────┴─────┴────────┘",
    ]));
    assert_eq!(lines[3], table(&[
        "┌─────────┬──────────┐",
        "│ (index) │ a        │",
        "├─────────┼──────────┤",
        "│ 0       │ [Object] │",
        "└─────────┴──────────┘",
    ]));
    let rest = [
        "G", "  in\n  side", "out",
        "default: 1", "default: 2", "x: 1", "default: 1", "Warning: Count for 'nope' does not exist",
        "Assertion failed: oops here", "Assertion failed",
        "'str'", "{ a: 'b' }", "{ a: [Object] }", "{ a: { b: { c: [Object] } } }",
        "Warning: Label 't' already exists for console.time()",
    ];
    assert_eq!(&lines[4..19], rest);
    assert!(lines[19].starts_with("t: ") && lines[19].ends_with("ms"), "{}", lines[19]);
    assert_eq!(lines[20], "Warning: No such label 't' for console.timeEnd()");
    let levels: Vec<_> = got.iter().map(|r| r["level"].as_u64().unwrap()).collect();
    assert_eq!((levels[11], levels[12], levels[18], levels[20], levels[14]), (40, 40, 40, 40, 30), "{levels:?}");
}

#[tokio::test]
async fn a_reader_that_never_reads_slows_nothing_and_learns_what_it_lost() {
    let mut config = workers_config_from(logs_config());
    config.logs.reader_buffer = 16;
    config.engine.limits.cpu_ms = 1000;
    config.engine.limits.wall_ms = 10_000;
    let node = TestNode::with_config(config).await;
    // Attached, then never read while the requests run.
    let mut stuck = Reader::tenant(&node, "flood").await;
    // 16 requests of 50 lines of 16000 bytes: far more than the socket,
    // the stream's queue and the reader buffer hold.
    let code = r#"return function (cb) {
        const line = "y".repeat(16000);
        for (let i = 0; i < 50; i++) console.log(line);
        cb(null, "done");
    }"#;
    for _ in 0..16 {
        let res = node.run("flood", "", code).await;
        assert_eq!((res.status, res.json()), (200, json!("done")));
    }
    // Another container's requests are not held up either.
    assert_eq!(node.run("other", "", "return function (cb) { console.log('x'); cb(null, 2); }").await.json(), json!(2));
    let records = stuck.until(|m| m.starts_with("dropped ")).await;
    let marker = records.last().unwrap();
    let n: u64 = marker["msg"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(n > 0);
    assert_eq!(marker["dropped"], n);
    assert_eq!(marker["container"], "flood");
    assert_eq!(marker["source"], "system");
    let lagged = sample(&node.metrics().await, "webtask_log_records_dropped_total{reason=\"reader_lagged\"}").unwrap();
    assert!(lagged >= n as f64);
}

#[tokio::test]
async fn metrics_count_records_written() {
    let node = TestNode::with_config(logs_config()).await;
    let mut reader = Reader::tenant(&node, "counted").await;
    node.run("counted", "", "return function (cb) { console.log(1); console.log(2); cb(null, 1); }").await;
    reader.next().await;
    reader.next().await;
    let metrics = node.metrics().await;
    assert!(sample(&metrics, "webtask_log_records_total").unwrap() >= 2.0);
    assert_eq!(sample(&metrics, "webtask_log_records_dropped_total{reason=\"queue_full\"}"), Some(0.0));
    // Nothing to connect to: no connection gauge.
    assert!(!metrics.contains("webtask_log_kafka_connected"), "{metrics}");
}

#[tokio::test]
async fn the_cli_follows_and_pretty_prints_a_container() {
    let node = TestNode::with_config(logs_config()).await;
    let code = "return function (cb) { console.log('hello from cli'); console.error('bad thing'); cb(null, 1); }";
    assert_eq!(node.run("cli-logs", "", code).await.status, 200);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_webtask"))
        .args(["logs", "cli-logs", "--since", "60", "--url", &node.url("")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let read = async {
        let (a, b) = (lines.next_line().await.unwrap().unwrap(), lines.next_line().await.unwrap().unwrap());
        (a, b)
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(20), read).await.expect("cli printed nothing");
    // Not a terminal here: no colour codes.
    assert!(a.ends_with(" INFO  hello from cli") && a.contains('T'), "{a}");
    assert!(b.ends_with(" ERROR bad thing"), "{b}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn an_embedded_engine_hands_console_lines_to_its_sink() {
    use std::sync::{Arc, Mutex};
    use webtask::engine::console::{ConsoleLine, ConsoleSink};

    #[derive(Default)]
    struct Collect(Mutex<Vec<ConsoleLine>>);
    impl ConsoleSink for Collect {
        fn line_bytes(&self) -> usize {
            8
        }
        fn log(&self, line: ConsoleLine) {
            self.0.lock().unwrap().push(line);
        }
    }
    let sink = Arc::new(Collect::default());
    let engine = webtask::Engine::with_io(Default::default(), Arc::new(webtask::engine::fetch::NoNetwork), sink.clone());
    let code = "return function (cb) { console.info('a', 1); console.error('0123456789'); cb(null, 1); }";
    engine.run_in("lib", code, webtask::Context::new()).await.unwrap();
    let lines = sink.0.lock().unwrap();
    let got: Vec<_> = lines.iter().map(|l| (&*l.container, l.level, l.msg.as_str())).collect();
    assert_eq!(got, [("lib", 30, "a 1"), ("lib", 50, "01234567… [truncated 2 bytes]")]);
    assert!(lines.iter().all(|l| l.req_id.as_deref().is_some_and(|id| !id.is_empty())));
}

/// POSTs `code` to a node at `addr`.
async fn post(addr: std::net::SocketAddr, container: &str, code: &str) -> u16 {
    post_for_body(addr, container, code).await.0
}

/// Runs `code` in `container` on the node at `addr`: status and body.
pub(crate) async fn post_for_body(addr: std::net::SocketAddr, container: &str, code: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/api/run/{container}"))
        .header("content-type", "application/javascript")
        .body(http_body_util::Full::new(Bytes::from(code.to_owned())))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.expect("hung").expect("request");
    let status = res.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect()).await.expect("hung").expect("body");
    (status, String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// A `webtask serve` process (the only kind with a system layer) with
/// `toml` as its config; killed on drop.
pub(crate) struct ServeNode {
    child: tokio::process::Child,
    pub(crate) addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    /// Every line the node (and the workers it relays) wrote to stderr.
    stderr: Arc<Mutex<Vec<String>>>,
    drain: tokio::task::JoinHandle<()>,
}

impl ServeNode {
    pub(crate) async fn start(name: &str, toml: &str) -> ServeNode {
        use tokio::io::AsyncBufReadExt;
        let dir = std::env::temp_dir().join(format!("webtask-logs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\n{toml}")).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_webtask"))
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let addr: std::net::SocketAddr = loop {
            let line = lines.next_line().await.unwrap().expect("node exited before listening");
            let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| v["addr"].as_str()?.parse().ok());
            stderr.lock().unwrap().push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        // The node's stderr must keep draining while it runs.
        let kept = stderr.clone();
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        ServeNode { child, addr, dir, stderr, drain }
    }

    /// SIGTERM, then the node must stop by itself, successfully.
    pub(crate) async fn stop(self) {
        self.stop_and_read_stderr().await;
    }

    /// As [`ServeNode::stop`]; then every line the node (and the workers it
    /// relays) wrote to stderr.
    pub(crate) async fn stop_and_read_stderr(mut self) -> Vec<String> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id().unwrap() as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("node did not stop").unwrap();
        assert!(status.success(), "{status:?}");
        // Its workers die with it: the pipe ends, and so does the drain.
        tokio::time::timeout(Duration::from_secs(20), &mut self.drain).await.expect("stderr still open").unwrap();
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }

    pub(crate) async fn metrics(&self) -> String {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let req = http::Request::get(format!("http://{}/metrics", self.addr)).body(Empty::<Bytes>::new()).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.expect("hung").expect("metrics");
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}

impl Drop for ServeNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_nodes_own_events_reach_the_system_stream_only() {
    let toml = format!("[http]\nshutdown_grace_ms = 120000\n[engine.limits]\ncpu_ms = 100\n[workers]\npool_size = 1\n[logs]\nadmin_key = \"{ADMIN_KEY}\"\n");
    let node = ServeNode::start("own", &toml).await;
    let addr = node.addr;

    let mut system = Reader::open(addr, "/api/logs/system", Some(ADMIN_KEY)).await.unwrap();
    let mut tenant = Reader::open(addr, "/api/logs/tenant/sys", None).await.unwrap();
    assert_eq!(post(addr, "sys", "return function (cb) { console.log('hello'); cb(null, 1); }").await, 200);
    assert_eq!(post(addr, "sys", "return function (cb) { while (true) {} }").await, 500);
    let records = system.until(|m| m.starts_with("CPU limit")).await;
    let find = |msg: &str| records.iter().find(|r| r["msg"].as_str().is_some_and(|m| m.starts_with(msg))).cloned();
    let assigned = find("worker assigned").expect("assignment record");
    assert_eq!((assigned["source"].as_str(), assigned["container"].as_str()), (Some("system"), Some("sys")));
    assert!(assigned["worker_pid"].as_u64().is_some());
    let hello = find("hello").expect("the tenant record");
    assert_eq!((hello["source"].as_str(), hello["pid"].as_u64()), (Some("tenant"), assigned["worker_pid"].as_u64()));
    let kill = records.last().unwrap();
    assert_eq!((kill["level"].as_u64(), kill["code"].as_str(), kill["limit_ms"].as_u64()), (Some(40), Some("cpu_limit"), Some(100)));
    assert!(kill["used_ms"].as_u64().is_some_and(|ms| ms >= 100));
    assert!(kill["req_id"].as_str().is_some_and(|id| !id.is_empty()));
    // The tenant's stream has its own line and nothing the node said.
    assert_eq!(tenant.next().await["msg"], "hello");
    assert_eq!(tenant.next_within(Duration::from_millis(300)).await, None);

    // Open streams do not hold shutdown up (for the two-minute grace).
    node.stop().await;
}

#[tokio::test]
async fn a_guest_can_neither_forge_nor_drown_the_nodes_own_records() {
    let toml = format!(
        "[engine.limits]\ncpu_ms = 30000\nwall_ms = 60000\n[workers]\npool_size = 1\n[logs]\nline_bytes = 200\nworker_log_rate = 16384\nadmin_key = \"{ADMIN_KEY}\"\n"
    );
    let node = ServeNode::start("forge", &toml).await;
    let addr = node.addr;
    let mut system = Reader::open(addr, "/api/logs/system", Some(ADMIN_KEY)).await.unwrap();

    // An error whose text is what the node would say, and far too long.
    let forger = r#"return function (cb) { throw new Error("CPU limit fake" + "x".repeat(5000)); }"#;
    assert_eq!(post(addr, "forger", forger).await, 500);
    let records = system.until(|m| m == "script error").await;
    assert!(records.iter().all(|r| !r["msg"].as_str().unwrap_or("").starts_with("CPU limit")), "{records:?}");
    let error = records.last().unwrap();
    assert_eq!((error["source"].as_str(), error["code"].as_str(), error["container"].as_str()), (Some("system"), Some("script_error"), Some("forger")));
    let message = error["error_message"].as_str().expect("the guest's message, under a name of its own");
    assert!(message.starts_with("CPU limit fakexxx") && message.ends_with(" bytes]") && message.len() < 250, "{message}");
    for field in ["details", "stack"] {
        assert!(error[field].as_str().is_none_or(|s| s.len() < 250), "{field}: {}", error[field]);
    }

    // A million empty lines: the request ends normally...
    let flood = r#"return function (cb) { for (let i = 0; i < 1e6; i++) console.log(); cb(null, "done"); }"#;
    assert_eq!(post(addr, "flood", flood).await, 200);
    // ...and the node's own record of what comes next still arrives.
    assert_eq!(post(addr, "after", "return function (cb) { cb(null, 1); }").await, 200);
    loop {
        let r = system.next().await;
        if r["msg"].as_str().is_some_and(|m| m.starts_with("worker assigned")) && r["container"] == "after" {
            assert_eq!(r["source"], "system");
            break;
        }
    }
    let metrics = node.metrics().await;
    let dropped = sample(&metrics, "webtask_log_records_dropped_total{reason=\"worker_rate\"}").expect("counted");
    assert!(dropped > 0.0, "{metrics}");
    node.stop().await;
}

#[tokio::test]
async fn console_honours_custom_inspectors_and_quotes_as_node() {
    // `[util.inspect.custom]` (Buffer, URL, a library's own), `%s` of an
    // object with its own toString, Node's quotes and escapes, runs of
    // holes: each line as Node 20 formats the same arguments on one line
    // (`util.formatWithOptions({ breakLength: Infinity }, ...)`).
    let node = TestNode::with_config(logs_config()).await;
    let mut reader = Reader::tenant(&node, "custom").await;
    let code = r##"return function (cb) {
        const rows = (function () {
            const rows = [
              [Buffer.from('ab')],
              ['%s', Buffer.from('hi')],
              [{ b: Buffer.from('x') }],
              ['a\nb', { s: 'a\nb', q: "it's", d: 'say "hi"', both: `'"` }],
              [[1, , , 2, , 3]],
              [new URL('http://x.com/a')],
              [{ [Symbol.for('nodejs.util.inspect.custom')]() { return 'CUSTOM'; } }],
              [{ [Symbol.for('nodejs.util.inspect.custom')](depth, opts) { return { depth, colors: opts.colors }; } }],
              [new URLSearchParams('a=1')],
              [new AbortController().signal],
              [{ k: '\t\u0001' }],
              ['%s|%s|%s|%s', { toString() { return 'T'; } }, new (class A { toString() { return 'A!'; } })(), [1, 2], new Error('e').message],
              ['%s', { a: 1 }],
              [Object.create({ constructor: Map })],
            ];
            return rows;
        })();
        for (const row of rows) console.log(...row);
        cb(null, 1);
    }"##;
    assert_eq!(node.run("custom", "", code).await.status, 200);
    let want: Vec<String> = serde_json::from_str(r##"["<Buffer 61 62>","hi","{ b: <Buffer 78> }","a\nb { s: 'a\\nb', q: \"it's\", d: 'say \"hi\"', both: `'\"` }","[ 1, <2 empty items>, 2, <1 empty item>, 3 ]","URL { href: 'http://x.com/a', origin: 'http://x.com', protocol: 'http:', username: '', password: '', host: 'x.com', hostname: 'x.com', port: '', pathname: '/a', search: '', searchParams: URLSearchParams {}, hash: '' }","CUSTOM","{ depth: 2, colors: false }","URLSearchParams { 'a' => '1' }","AbortSignal { aborted: false }","{ k: '\\t\\x01' }","T|A!|[ 1, 2 ]|e","{ a: 1 }","{}"]"##).unwrap();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(reader.next().await);
    }
    assert_eq!(msgs(&got), want);
}
