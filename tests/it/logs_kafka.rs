//! Logs in Kafka: two nodes sharing a real Kafka-protocol broker (tansu,
//! memory storage) on loopback, started and stopped by the tests. The
//! broker binary comes from `make tansu` (WEBTASK_TANSU, else
//! target/tools/tansu).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use webtask::config::Config;
use webtask::logs::BackendKind;

use crate::logs::{msgs, Reader, ADMIN_KEY};
use crate::support::{sample, test_config, workers_config_from, TestNode};

/// A tansu broker on a loopback port of its own; killed on drop.
struct Broker {
    addr: SocketAddr,
    /// Holds the port while no broker listens on it (see [`reserve_port`]).
    _reserved: tokio::net::TcpSocket,
    child: Option<Child>,
}

/// A loopback port bound, not listening, with SO_REUSEADDR: no connection
/// anywhere on the host is given it as its own port while the broker is
/// down (a probe listener dropped at once would leave it free for that,
/// and the broker's bind would fail), a client connecting to it is refused
/// as by a stopped broker, and the broker (which binds with SO_REUSEADDR
/// too, as tokio does) can still listen on it.
fn reserve_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

impl Broker {
    /// A broker not started yet, on a port of its own.
    fn unstarted() -> Broker {
        let (addr, reserved) = reserve_port();
        Broker { addr, _reserved: reserved, child: None }
    }

    fn binary() -> PathBuf {
        let path = std::env::var_os("WEBTASK_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/tansu")));
        assert!(path.exists(), "no tansu broker at {}: run `make tansu` (or `make test`)", path.display());
        path
    }

    async fn start() -> Broker {
        let mut broker = Broker::unstarted();
        broker.restart().await;
        broker
    }

    /// Starts the broker at its address (empty: memory storage) and waits
    /// until it accepts connections.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        use std::os::unix::process::CommandExt;
        let url = format!("tcp://{}", self.addr);
        let mut command = Command::new(Self::binary());
        // SAFETY: only prctl between fork and exec. The broker dies with the
        // test thread that started it, even if the test process crashes.
        unsafe {
            command.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tansu did not listen on {} within 10 s", self.addr);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kafka_config(broker: &Broker, buffer: usize) -> Config {
    let mut config = test_config();
    config.logs.backend = BackendKind::Kafka;
    config.logs.kafka.brokers = broker.addr.to_string();
    config.logs.kafka.buffer = buffer;
    config.logs.admin_key = Some(ADMIN_KEY.into());
    config
}

async fn metric(node: &TestNode, name: &str) -> f64 {
    sample(&node.metrics().await, name).unwrap_or_else(|| panic!("no {name}"))
}


async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crate::support::eventually_within(what, Duration::from_secs(60), check).await
}

fn logging(line: &str) -> String {
    format!("return function (cb) {{ console.log({line:?}); cb(null, 1); }}")
}

/// Records until every message of `want` was seen (others ignored).
async fn collect(reader: &mut Reader, want: &BTreeSet<String>) -> Vec<serde_json::Value> {
    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    while !want.is_subset(&seen) {
        let Ok(r) = tokio::time::timeout(Duration::from_secs(60), reader.next()).await else {
            panic!("records from Kafka: still missing {:?}", want.difference(&seen).collect::<Vec<_>>());
        };
        if let Some(m) = r["msg"].as_str().filter(|m| want.contains(*m)) {
            seen.insert(m.to_owned());
            records.push(r);
        }
    }
    records
}

fn set(items: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    items.into_iter().collect()
}

#[tokio::test]
async fn two_nodes_share_streams_and_hold_records_while_kafka_is_away() {
    let mut broker = Broker::start().await;
    let a = TestNode::with_config(workers_config_from(kafka_config(&broker, 100_000))).await;
    let b = TestNode::with_config(kafka_config(&broker, 100_000)).await;

    // A reader on node a sees what both nodes wrote; b's system stream too.
    let mut reader = Reader::tenant(&a, "shared").await;
    let mut system = Reader::system(&b).await;
    let mut other = Reader::tenant(&b, "elsewhere").await;
    assert_eq!(a.run("shared", "", &logging("from node a")).await.status, 200);
    assert_eq!(b.run("shared", "", &logging("from node b")).await.status, 200);
    assert_eq!(b.run("elsewhere", "", &logging("not for shared")).await.status, 200);
    let want = set(["from node a".into(), "from node b".into()]);
    let merged = collect(&mut reader, &want).await;
    assert!(merged.iter().all(|r| r["container"] == "shared" && r["source"] == "tenant"), "{merged:?}");
    let all = collect(&mut system, &set(["from node a".into(), "from node b".into(), "not for shared".into()])).await;
    assert_eq!(all.len(), 3);
    assert_eq!(msgs(&collect(&mut other, &set(["not for shared".into()])).await), ["not for shared"]);

    // Kafka goes away: both nodes notice, keep serving and hold their records.
    broker.stop();
    for node in [&a, &b] {
        eventually("kafka seen gone", || async { metric(node, "webtask_log_kafka_connected").await == 0.0 }).await;
    }
    let mut held = Vec::new();
    for i in 0..5 {
        for (name, node) in [("a", &a), ("b", &b)] {
            let line = format!("held {name} {i}");
            assert_eq!(node.run("shared", "", &logging(&line)).await.status, 200);
            held.push(line);
        }
    }
    for node in [&a, &b] {
        eventually("records held", || async { metric(node, "webtask_log_kafka_held").await >= 10.0 }).await;
    }

    // Back (empty: memory storage): what was held arrives, none lost.
    broker.restart().await;
    for node in [&a, &b] {
        eventually("kafka seen back", || async { metric(node, "webtask_log_kafka_connected").await == 1.0 }).await;
        eventually("held records delivered", || async { metric(node, "webtask_log_kafka_held").await == 0.0 }).await;
        for reason in ["kafka_queue_full", "kafka_failed", "queue_full"] {
            let name = format!("webtask_log_records_dropped_total{{reason=\"{reason}\"}}");
            assert_eq!(metric(node, &name).await, 0.0, "{reason}");
        }
        assert!(metric(node, "webtask_log_kafka_delivered_total").await >= 10.0);
    }
    // The reader that stayed attached through the outage gets them too.
    let stayed = collect(&mut reader, &set(held.clone())).await;
    assert_eq!(stayed.len(), held.len());
    // And so does one attached now, replaying the last minutes.
    let mut after = Reader::open(a.addr, "/api/logs/tenant/shared?since=600", None).await.expect("reader after the outage");
    let arrived = collect(&mut after, &set(held.clone())).await;
    assert_eq!(arrived.len(), held.len());
    let mut system = Reader::open(b.addr, "/api/logs/system?since=600", Some(ADMIN_KEY)).await.expect("system after the outage");
    collect(&mut system, &set(held)).await;

    // Only writers create topics: a stream followed but never written has none.
    let _never = Reader::tenant(&a, "never-written").await;
    let topics = topics(&broker).await;
    assert!(topics.contains("webtask.tenant.shared") && topics.contains("webtask.system"), "{topics:?}");
    assert!(!topics.iter().any(|t| t.contains("never")), "{topics:?}");
}

/// The topics the broker has.
async fn topics(broker: &Broker) -> BTreeSet<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = broker.addr.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
        metadata.topics().iter().map(|t| t.name().to_owned()).collect()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn past_the_bound_records_are_dropped_and_counted_and_the_rest_delivered() {
    // Nothing listens yet: every message waits in the producer's queue.
    let mut broker = Broker::unstarted();
    // Six messages: three records, each to its container's topic and the system topic.
    let node = TestNode::with_config(kafka_config(&broker, 6)).await;
    let code = "return function (cb) { for (let i = 0; i < 10; i++) console.log('line ' + i); cb(null, 'served'); }";
    let res = node.run("bounded", "", code).await;
    assert_eq!((res.status, res.json()), (200, serde_json::json!("served")));
    eventually("ten records stored or dropped", || async { metric(&node, "webtask_log_records_total").await >= 10.0 }).await;
    assert_eq!(metric(&node, "webtask_log_kafka_held").await, 6.0);
    assert_eq!(metric(&node, "webtask_log_records_dropped_total{reason=\"kafka_queue_full\"}").await, 14.0);

    broker.restart().await;
    eventually("held messages delivered", || async { metric(&node, "webtask_log_kafka_delivered_total").await == 6.0 }).await;
    assert_eq!(metric(&node, "webtask_log_kafka_held").await, 0.0);
    assert_eq!(metric(&node, "webtask_log_records_dropped_total{reason=\"kafka_failed\"}").await, 0.0);
    let mut reader = Reader::open(node.addr, "/api/logs/tenant/bounded?since=600", None).await.unwrap();
    let first = set((0..3).map(|i| format!("line {i}")));
    assert_eq!(msgs(&collect(&mut reader, &first).await), ["line 0", "line 1", "line 2"]);
}
