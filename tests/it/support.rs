//! A node on an ephemeral loopback port, and a small HTTP client for it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;
use webtask::api::{self, Node};
use webtask::config::Config;
use webtask::pool::{Mode, Runner};
use webtask::Engine;

/// Limits small enough to trip in a test, large enough for normal code.
pub fn test_config() -> Config {
    Config::parse(
        r#"
        listen = "127.0.0.1:0"
        [http]
        body_bytes = 4096
        header_bytes = 4096
        header_timeout_ms = 500
        [jail]
        mode = "required"
        [workers]
        mode = "in-process"
        pool_size = 2
        [engine]
        max_concurrency = 8
        [engine.limits]
        cpu_ms = 100
        wall_ms = 1000
        heap_mb = 64
        array_buffer_mb = 32
        response_bytes = 65536
        "#,
    )
    .map(|mut config: Config| {
        config.workers.exe = Some(env!("CARGO_BIN_EXE_webtask").into());
        config
    })
    .unwrap()
}

/// Room for slow work (a debug build on a busy CI machine): `cpu_ms` of
/// CPU and twice that of wall-clock time, so the wall clock, which also
/// counts the time the machine gives to other tests, does not trip first.
pub fn with_room(mut config: Config, cpu_ms: u64) -> Config {
    config.engine.limits.cpu_ms = cpu_ms;
    config.engine.limits.wall_ms = config.engine.limits.wall_ms.max(2 * cpu_ms);
    config
}

/// A loopback address that refuses connections, and the socket that holds
/// it: bound but not listening, so nothing else (another test's server)
/// can take the port while the test expects `ECONNREFUSED` there, as it
/// could once a listener bound only to learn a free port is dropped.
pub fn refusing_addr() -> (std::os::fd::OwnedFd, SocketAddr) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket calls on a descriptor this function owns, with
    // a sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa = &mut sin as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(fd.as_raw_fd(), sa, len), 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(libc::getsockname(fd.as_raw_fd(), sa, &mut len), 0, "getsockname: {}", std::io::Error::last_os_error());
        (fd, SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port))))
    }
}

pub struct TestNode {
    pub addr: SocketAddr,
    pub node: std::sync::Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestNode {
    pub async fn start() -> Self {
        Self::with_config(test_config()).await
    }

    pub async fn with_config(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let egress = webtask::egress::Egress::new(&config.egress, vec![addr]).unwrap();
        let logs = webtask::logs::Logs::start(&config.logs).unwrap();
        let runner = Runner::start(&config.workers, &config.engine, &config.jail, egress, &logs).await.unwrap();
        let node = Node::new(runner, config.http.clone(), logs);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(api::serve(node.clone(), listener, async {
            let _ = stopped.await;
        }));
        // The test node closes a keep-alive connection after 500 ms without
        // a request (`header_timeout_ms`); a client reusing one at that very
        // moment gets `IncompleteMessage`. Idle connections go sooner here.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(200))
            .build_http();
        TestNode { addr, node, stop: Some(stop), client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: impl Into<Bytes>) -> Resp {
        let mut req = http::Request::builder().method(method).uri(self.url(path));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request hung")
            .expect("request failed");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    /// POSTs `code` as the body of `/api/run/{container}{query}`.
    pub async fn run(&self, container: &str, query: &str, code: &str) -> Resp {
        let path = format!("/api/run/{container}{query}");
        self.request("POST", &path, Some("application/javascript"), code.to_owned()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, Bytes::new()).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of a Prometheus sample line `name{labels} value`.
pub fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Where a test sends its webtasks: a node running them in worker
/// processes, a node running them in-process, or the library API. All three
/// answer with the same status and JSON body, so a test written once checks
/// every path.
pub enum Target {
    Http(TestNode),
    Lib(Engine),
}

/// Every target, with the test configuration.
pub async fn every_target() -> [Target; 3] {
    every_target_with(test_config()).await
}

pub async fn every_target_with(config: Config) -> [Target; 3] {
    let egress = webtask::egress::Egress::new(&config.egress, vec![]).unwrap();
    let engine = Engine::with_fetcher(config.engine.clone(), std::sync::Arc::new(egress));
    let mut workers = config.clone();
    workers.workers.mode = Mode::Process;
    [
        Target::Http(TestNode::with_config(workers).await),
        Target::Http(TestNode::with_config(config).await),
        Target::Lib(engine),
    ]
}

/// The test configuration with webtasks in (jailed) worker processes.
pub fn workers_config() -> Config {
    workers_config_from(test_config())
}

pub fn workers_config_from(mut config: Config) -> Config {
    config.workers.mode = Mode::Process;
    config
}

impl TestNode {
    /// A node whose webtasks run in worker processes.
    pub async fn workers() -> Self {
        Self::with_config(workers_config()).await
    }
}

impl Target {
    pub async fn run(&self, container: &str, query: &str, code: &str) -> Resp {
        match self {
            Target::Http(node) => node.run(container, query, code).await,
            Target::Lib(engine) => {
                let mut ctx = webtask::Context::new();
                ctx.method = "POST".into();
                ctx.url = format!("/api/run/{container}{query}");
                ctx.query = form_urlencoded::parse(query.trim_start_matches('?').as_bytes()).into_owned().collect();
                match engine.run_in(container, code, ctx).await {
                    Ok(out) => {
                        let mut headers = http::HeaderMap::new();
                        for (k, v) in &out.headers {
                            headers.append(http::HeaderName::try_from(k.as_str()).unwrap(), v.parse().unwrap());
                        }
                        Resp { status: out.status, headers, body: out.body }
                    }
                    Err(err) => Resp {
                        status: err.status(),
                        headers: http::HeaderMap::new(),
                        body: serde_json::to_vec(&api::error_json(&err)).unwrap().into(),
                    },
                }
            }
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// `within`. For state that settles in the background (processes ending,
/// metrics catching up, brokers coming back).
pub async fn eventually_within<F, Fut>(what: &str, within: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {within:?}");
}
