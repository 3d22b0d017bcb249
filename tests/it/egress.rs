//! Guest `fetch` through the node's egress: denied by default for loopback
//! and the node itself, allowed where `egress.allow` says, capped per
//! request. Every server here listens on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::{json, Value};

use crate::support::{every_target_with, test_config, TestNode};

/// A loopback server that echoes method, path, the `x-test` and
/// `authorization` headers, the content type, how the body was framed
/// (`length N`, `chunked` or `none`) and the body. `/redirect/<status>?<url>`
/// answers `status` with `location: <url>` instead; `/brotli`, to a client
/// that accepts it, answers [`BROTLI_JSON`] brotli-encoded (as Node made it).
pub(crate) async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    });
    addr
}

/// The same echo over TLS, with a fresh self-signed certificate for
/// `localhost`; returns the address and the certificate's PEM file.
pub(crate) async fn tls_echo_server() -> (SocketAddr, std::path::PathBuf) {
    use tokio_rustls::rustls;
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pem = std::env::temp_dir().join(format!("webtask-test-ca-{}-{seq}.pem", std::process::id()));
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    echo(tls).await;
                }
            });
        }
    });
    (addr, pem)
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(stream: S) {
    let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        if let Some(status) = req.uri().path().strip_prefix("/redirect/") {
            let mut res = http::Response::new(Full::new(Bytes::from_static(b"moved")));
            *res.status_mut() = status.parse::<u16>().unwrap().try_into().unwrap();
            let to = req.uri().query().unwrap_or("/");
            res.headers_mut().insert("location", percent_decode(to).parse().unwrap());
            // Read first: a server that answers and closes with a body
            // unread resets the connection, which may beat its answer.
            let _ = req.into_body().collect().await;
            return Ok::<_, Infallible>(res);
        }
        if req.uri().path() == "/brotli" {
            let accepts = req.headers().get("accept-encoding").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let mut res = if accepts.split(',').any(|e| e.trim() == "br") {
                use base64::Engine as _;
                let packed = base64::engine::general_purpose::STANDARD.decode(BROTLI_PACKED).unwrap();
                let mut res = http::Response::new(Full::new(Bytes::from(packed)));
                res.headers_mut().insert("content-encoding", "br".parse().unwrap());
                res
            } else {
                http::Response::new(Full::new(Bytes::from(format!("no br in accept-encoding {accepts:?}"))))
            };
            res.headers_mut().insert("content-type", "application/json".parse().unwrap());
            return Ok::<_, Infallible>(res);
        }
        let method = req.method().to_string();
        let path = req.uri().to_string();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (test, content_type, auth) = (header("x-test").unwrap_or_default(), header("content-type"), header("authorization"));
        let framing = match (header("content-length"), header("transfer-encoding")) {
            (_, Some(te)) => te,
            (Some(n), None) => format!("length {n}"),
            (None, None) => "none".to_owned(),
        };
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut out = json!({"method": method, "path": path, "x-test": test, "content-type": content_type, "framing": framing,
                             "body": String::from_utf8_lossy(&body)});
        if let Some(auth) = auth {
            out["authorization"] = json!(auth);
        }
        let mut res = http::Response::new(Full::new(Bytes::from(out.to_string())));
        res.headers_mut().insert("x-echo", "yes".parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
}

/// What `/brotli` answers, and the same brotli-encoded by Node 20's
/// `zlib.brotliCompressSync` (quality 11).
pub(crate) const BROTLI_JSON: &str = r#"{"compressed":"brotli","items":["item 0","item 1","item 2","item 3","item 4","item 5","item 6","item 7","item 8","item 9","item 10","item 11","item 12","item 13","item 14","item 15","item 16","item 17","item 18","item 19","item 20","item 21","item 22","item 23","item 24","item 25","item 26","item 27","item 28","item 29"]}"#;
const BROTLI_PACKED: &str = "G0IBUB0Hdkzj7ii5MV+EcLJU7bWqBJvQjA4OyQPa6yWLThcF7sD+MJAAPcjStoiDDTjKYk55/D+D+uuS8+jdQdpKZ6DElEvdtF2/CJBYtLGuHwISizbWnfcD";

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("u={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// The test config with `server` allowlisted and, for https, `ca` trusted.
pub(crate) fn allowing(server: SocketAddr, ca: Option<std::path::PathBuf>) -> webtask::config::Config {
    let mut config = test_config();
    config.egress.allow = vec![server.to_string()];
    config.egress.ca_file = ca;
    config
}

const CATCH: &str = r#"module.exports = async (ctx) => {
    try { const r = await fetch(ctx.data.url); return { status: r.status }; }
    catch (e) { return { name: e.name, code: e.code, message: e.message }; }
};"#;

#[tokio::test]
async fn loopback_is_denied_by_default_naming_the_address() {
    let server = echo_server().await;
    for node in every_target_with(test_config()).await {
        let url = format!("http://{server}/x");
        let res = node.run("egress", &format!("?url={url}"), CATCH).await;
        let v = res.json();
        assert_eq!(v["code"], json!("egress_denied"), "{v}");
        assert_eq!(v["name"], json!("TypeError"));
        assert!(v["message"].as_str().unwrap().contains(&server.to_string()), "{v}");
    }
}

#[tokio::test]
async fn allowlisted_server_is_reachable() {
    let server = echo_server().await;
    let config = allowing(server, None);
    let code = r#"module.exports = async (ctx) => {
        const r = await fetch(ctx.data.url, { method: 'post', headers: { 'X-Test': 'hdr' }, body: 'payload' });
        return { status: r.status, ok: r.ok, echo: r.headers.get('X-Echo'), body: await r.json() };
    };"#;
    for node in every_target_with(config.clone()).await {
        let res = node.run("egress", &format!("?url=http://{server}/path?q=1"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v: Value = res.json();
        assert_eq!(v["status"], json!(200));
        assert_eq!(v["ok"], json!(true));
        assert_eq!(v["echo"], json!("yes"));
        let echo = json!({"method": "POST", "path": "/path?q=1", "x-test": "hdr", "content-type": "text/plain;charset=UTF-8",
                          "framing": "length 7", "body": "payload"});
        assert_eq!(v["body"], echo);
    }
}

#[tokio::test]
async fn the_node_itself_is_never_reachable() {
    let mut config = test_config();
    config.egress.allow = vec!["127.0.0.0/8".into()];
    let node = TestNode::with_config(crate::support::workers_config_from(config)).await;
    let url = node.url("/healthz");
    let res = node.run("egress", &format!("?url={url}"), CATCH).await;
    assert_eq!(res.json()["code"], json!("egress_denied"), "{}", res.text());
    // Nor by another spelling of its address: IPv4-mapped IPv6, which the
    // allowed range covers once canonical.
    let port = node.addr.port();
    for host in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]"] {
        let encoded = host.replace('[', "%5B").replace(']', "%5D");
        let res = node.run("egress", &format!("?url=http://{encoded}:{port}/healthz"), CATCH).await;
        assert_eq!(res.json()["code"], json!("egress_denied"), "{host}: {}", res.text());
    }
}

#[tokio::test]
async fn subrequests_are_capped_per_request() {
    let server = echo_server().await;
    let mut config = allowing(server, None);
    config.engine.limits.subrequests = 3;
    let code = r#"module.exports = async (ctx) => {
        let done = 0;
        try { for (let i = 0; i < 5; i++) { await fetch(ctx.data.url); done++; } }
        catch (e) { return { done, code: e.code, message: e.message }; }
        return { done };
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("egress", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v["done"], json!(3), "{v}");
        assert_eq!(v["code"], json!("egress_limit"));
        // The budget is per request: the next request starts afresh.
        let v = node.run("egress", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v["done"], json!(3), "{v}");
    }
}

/// Work a request leaves behind (a timer) cannot fetch once the request
/// has answered, and says so; the container's next request still can.
#[tokio::test]
async fn work_left_behind_cannot_fetch() {
    let server = echo_server().await;
    let config = allowing(server, None);
    let leave = r#"module.exports = (ctx, cb) => {
        setTimeout(() => fetch(ctx.data.url).then(
            () => { global.late = "fetched"; },
            (e) => { global.late = [e.code, e.message]; }), 20);
        cb(null, "answered");
    };"#;
    let look = r#"module.exports = async (ctx) => {
        for (let i = 0; i < 100 && global.late === undefined; i++) await new Promise((r) => setTimeout(r, 10));
        const now = await fetch(ctx.data.url);
        return { late: global.late, now: now.status };
    };"#;
    for node in every_target_with(config.clone()).await {
        let query = format!("?url=http://{server}/");
        assert_eq!(node.run("leftover", &query, leave).await.json(), json!("answered"));
        let v = node.run("leftover", &query, look).await.json();
        assert_eq!(v["late"][0], json!("request_finished"), "{v}");
        assert!(v["late"][1].as_str().unwrap().contains("has finished"), "{v}");
        assert_eq!(v["now"], json!(200), "{v}");
    }
}

#[tokio::test]
async fn only_http_urls_leave() {
    for node in every_target_with(test_config()).await {
        let res = node.run("egress", "?url=file:///etc/passwd", CATCH).await;
        assert_eq!(res.json()["code"], json!("egress_denied"), "{}", res.text());
    }
}

const POST: &str = r#"module.exports = async (ctx) => {
    try {
        const r = await fetch(ctx.data.url, { method: 'post', headers: { 'X-Test': 'tls' }, body: 'sealed' });
        return { status: r.status, body: await r.json() };
    } catch (e) { return { name: e.name, code: e.code, message: e.message }; }
};"#;

#[tokio::test]
async fn https_to_a_trusted_certificate_goes_through() {
    let (server, ca) = tls_echo_server().await;
    let config = allowing(server, Some(ca));
    for node in every_target_with(config.clone()).await {
        let url = format!("https://localhost:{}/secure?x=1", server.port());
        let v = node.run("egress", &format!("?url={url}"), POST).await.json();
        assert_eq!(v["status"], json!(200), "{v}");
        let echo = json!({"method": "POST", "path": "/secure?x=1", "x-test": "tls", "content-type": "text/plain;charset=UTF-8",
                          "framing": "length 6", "body": "sealed"});
        assert_eq!(v["body"], echo);
    }
}

#[tokio::test]
async fn https_to_an_untrusted_certificate_is_refused() {
    let (server, _ca) = tls_echo_server().await;
    let config = allowing(server, None);
    for node in every_target_with(config.clone()).await {
        let url = format!("https://localhost:{}/", server.port());
        let v = node.run("egress", &format!("?url={url}"), POST).await.json();
        assert_eq!(v["code"], json!("egress_failed"), "{v}");
        assert!(v["message"].as_str().unwrap().contains("certificate"), "{v}");
    }
}

#[tokio::test]
async fn https_certificate_must_name_the_host() {
    let (server, ca) = tls_echo_server().await;
    let config = allowing(server, Some(ca));
    // Same server, trusted CA, but the certificate names localhost only.
    let node = TestNode::with_config(config).await;
    let v = node.run("egress", &format!("?url=https://{server}/"), POST).await.json();
    assert_eq!(v["code"], json!("egress_failed"), "{v}");
    assert!(v["message"].as_str().unwrap().contains("certificate"), "{v}");
}

#[tokio::test]
async fn https_obeys_the_same_address_policy() {
    let (server, ca) = tls_echo_server().await;
    let mut config = test_config();
    config.egress.ca_file = Some(ca);
    let node = TestNode::with_config(config).await;
    let v = node.run("egress", &format!("?url=https://localhost:{}/", server.port()), POST).await.json();
    assert_eq!(v["code"], json!("egress_denied"), "{v}");
}

#[test]
fn a_missing_ca_file_is_a_config_error() {
    let config = webtask::egress::EgressConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
    let err = webtask::egress::Egress::new(&config, vec![]).unwrap_err();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn fetch_request_bodies_are_capped() {
    let server = echo_server().await;
    // Room for building and encoding 9 MiB on a busy machine (it once took
    // 112 ms against the test build's 100).
    let config = crate::support::with_room(allowing(server, None), 2_000);
    let code = r#"module.exports = async (ctx) => {
        try { await fetch(ctx.data.url, { method: 'POST', body: 'x'.repeat(9 * 1024 * 1024) }); return 'sent'; }
        catch (e) { return { code: e.code, message: e.message }; }
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("egress", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v["code"], json!("egress_limit"), "{v}");
        assert!(v["message"].as_str().unwrap().contains("8388608"), "{v}");
    }
}

// ---------------------------------------------------------------------------
// Streaming, cancellation, redirects and body defaults.
// ---------------------------------------------------------------------------

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::eventually_within;

/// A loopback server that hands each connection, once its request head
/// (request line and headers) has arrived, to `script`: for exchanges a
/// test has to time byte by byte, or watch being cut.
pub(crate) async fn raw_server<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(String, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                script(String::from_utf8_lossy(&head).into_owned(), stream).await;
            });
        }
    });
    addr
}

/// A request body that does not fit in what is left of the ArrayBuffer
/// limit is refused before anything goes out, with the figures.
#[tokio::test]
async fn a_request_body_past_the_arraybuffer_limit_is_refused_with_its_figures() {
    let server = echo_server().await;
    let mut config = crate::support::with_room(allowing(server, None), 2_000);
    config.engine.limits.array_buffer_mb = 16;
    let code = r#"module.exports = async (ctx) => {
        const body = new Uint8Array(6 << 20);
        try { await fetch(ctx.data.url, { method: "POST", body }); return "sent"; }
        catch (e) { return { name: e.name, code: e.code, message: e.message, kept: body.length }; }
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("big", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v["code"], json!("arraybuffer_limit"), "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.starts_with("6291456 bytes of request body would pass this container's ArrayBuffer memory limit of 16 MiB ("), "{v}");
    }
}

/// Request bodies the host holds until the upstream takes them count
/// against the container's ArrayBuffer limit: uploads stuck on an upstream
/// that reads nothing cannot hold memory outside it. Once the exchanges
/// end, the memory is the container's again.
#[tokio::test]
async fn request_bodies_held_for_an_upstream_count_against_the_arraybuffer_limit() {
    let addr = raw_server(|_head, stream| async move {
        // Reads nothing more: every upload stays with the sender.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(stream);
    })
    .await;
    let mut config = crate::support::with_room(allowing(addr, None), 2_000);
    config.engine.limits.array_buffer_mb = 64;
    let code = r#"module.exports = async (ctx) => {
        const aborter = new AbortController();
        const pending = [];
        for (let i = 0; i < 3; i++) {
            const body = new Uint8Array(8 << 20);
            pending.push(fetch(ctx.data.url, { method: "POST", body, signal: aborter.signal }).catch((e) => e.name));
        }
        await new Promise((r) => setTimeout(r, 200));
        const alloc = () => { try { return new Uint8Array(28 << 20).length; } catch (e) { return e.name; } };
        // Held now: the fetches' own copies (24 MiB) and the bytes the
        // host holds for the upstream (24 MiB, more than the sockets take):
        // 28 more do not fit in 64. Held outside the limit, they would.
        const held = alloc();
        aborter.abort();
        const ended = await Promise.all(pending);
        await new Promise((r) => setTimeout(r, 100));
        return { held, after: alloc(), ended };
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("stuck", &format!("?url=http://{addr}/"), code).await.json();
        assert_eq!(v["held"], json!("RangeError"), "{v}");
        assert_eq!(v["after"], json!(28 << 20), "{v}");
        assert_eq!(v["ended"], json!(["AbortError", "AbortError", "AbortError"]), "{v}");
    }
}

/// The path of a raw request head.
pub(crate) fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

pub(crate) const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";

pub(crate) async fn write_chunk(stream: &mut tokio::net::TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await?;
    stream.write_all(data).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

/// Waits until the peer closes the connection (or 10 s pass).
pub(crate) async fn until_closed(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed).await.is_ok()
}

/// `/stream` sends "first", then holds "rest" back until `/release` is
/// requested (or 5 s pass); the log says in which order things happened.
pub(crate) async fn gated_server() -> (SocketAddr, Arc<Mutex<Vec<&'static str>>>) {
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let server_log = log.clone();
    let addr = raw_server(move |head, mut stream| {
        let (log, gate) = (server_log.clone(), gate.clone());
        async move {
            if path_of(&head) == "/release" {
                log.lock().unwrap().push("release requested");
                gate.notify_one();
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                return;
            }
            stream.write_all(CHUNKED_HEAD).await.unwrap();
            write_chunk(&mut stream, b"first").await.unwrap();
            log.lock().unwrap().push("first sent");
            let released = tokio::time::timeout(Duration::from_secs(5), gate.notified()).await.is_ok();
            log.lock().unwrap().push(if released { "released" } else { "gave up waiting" });
            let _ = write_chunk(&mut stream, b"rest").await;
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
    })
    .await;
    (addr, log)
}

#[tokio::test]
async fn response_chunks_reach_the_guest_as_the_upstream_sends_them() {
    // The guest asks for the rest only once it has the first chunk: with
    // the body delivered whole at its end, this could never finish.
    let fetch = r#"module.exports = async (ctx) => {
        const res = await fetch(ctx.data.url + '/stream');
        const reader = res.body.getReader();
        const chunks = [];
        for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            chunks.push(new TextDecoder().decode(value));
            if (chunks.length === 1) await (await fetch(ctx.data.url + '/release')).text();
        }
        return chunks;
    };"#;
    let node_http = r#"module.exports = function (ctx, cb) {
        const http = require('http');
        http.get(ctx.data.url + '/stream', (res) => {
            const chunks = [];
            res.on('data', (c) => {
                chunks.push(c.toString());
                if (chunks.length === 1) http.get(ctx.data.url + '/release', (r) => r.resume());
            });
            res.on('end', () => cb(null, chunks));
        }).on('error', cb);
    };"#;
    for code in [fetch, node_http] {
        let (server, log) = gated_server().await;
        for node in every_target_with(allowing(server, None)).await {
            let res = node.run("stream", &format!("?url=http://{server}"), code).await;
            assert_eq!(res.status, 200, "{}", res.text());
            assert_eq!(res.json(), json!(["first", "rest"]));
            let log = std::mem::take(&mut *log.lock().unwrap());
            assert_eq!(log, ["first sent", "release requested", "released"]);
        }
    }
}

/// `/upload` records each request body chunk as it arrives and answers
/// with them all; `/seen` answers "yes" once `/upload` has had its first
/// chunk (while that request is still open), "no" after 3 s without.
async fn upload_server() -> SocketAddr {
    let seen = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    if req.uri().path() == "/seen" {
                        let yes = tokio::time::timeout(Duration::from_secs(3), seen.notified()).await.is_ok();
                        return Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(if yes { "yes" } else { "no" }))));
                    }
                    let framing = req.headers().get("transfer-encoding").map(|v| v.to_str().unwrap().to_owned());
                    let mut body = req.into_body();
                    let mut chunks = Vec::new();
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.unwrap().into_data() {
                            if chunks.is_empty() {
                                seen.notify_one();
                            }
                            chunks.push(String::from_utf8_lossy(&data).into_owned());
                        }
                    }
                    let out = json!({ "chunks": chunks, "framing": framing });
                    Ok(http::Response::new(Full::new(Bytes::from(out.to_string()))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        }
    });
    addr
}

#[tokio::test]
async fn request_bodies_go_out_as_they_are_written() {
    // The second chunk is written only once the server says it has the
    // first: a body held back until end() would never get there.
    let node_http = r#"module.exports = function (ctx, cb) {
        const http = require('http');
        const req = http.request(ctx.data.url + '/upload', { method: 'POST' }, (res) => {
            let body = '';
            res.on('data', (d) => body += d);
            res.on('end', () => cb(null, JSON.parse(body)));
        });
        req.on('error', cb);
        req.write('first', () => {
            http.get(ctx.data.url + '/seen', (r) => {
                let seen = '';
                r.on('data', (d) => seen += d);
                r.on('end', () => req.end('second:' + seen));
            });
        });
    };"#;
    let fetch = r#"module.exports = async (ctx) => {
        const enc = (s) => new TextEncoder().encode(s);
        let step = 0;
        const body = new ReadableStream({
            async pull(c) {
                if (step === 0) c.enqueue(enc('first'));
                else if (step === 1) c.enqueue(enc('second:' + await (await fetch(ctx.data.url + '/seen')).text()));
                else c.close();
                step++;
            },
        }, { highWaterMark: 0 });
        const res = await fetch(ctx.data.url + '/upload', { method: 'POST', body, duplex: 'half' });
        return await res.json();
    };"#;
    let server = upload_server().await;
    for node in every_target_with(allowing(server, None)).await {
        for code in [node_http, fetch] {
            let res = node.run("upload", &format!("?url=http://{server}"), code).await;
            assert_eq!(res.status, 200, "{}", res.text());
            assert_eq!(res.json(), json!({"chunks": ["first", "second:yes"], "framing": "chunked"}));
        }
    }
}

#[tokio::test]
async fn fetch_sets_the_content_type_its_body_implies() {
    let server = echo_server().await;
    let code = r#"module.exports = async (ctx) => {
        const send = async (body, headers) => {
            const r = await fetch(ctx.data.url, { method: 'POST', body, headers });
            const e = await r.json();
            return [e['content-type'], e.framing, e.body];
        };
        const form = new FormData();
        form.append('a', 'b');
        form.append('f', new Blob(['file'], { type: 'text/x-thing' }), 'f.txt');
        const multipart = await send(form);
        const boundary = /boundary=(.*)$/.exec(multipart[0])[1];
        return {
            string: await send('text'),
            params: await send(new URLSearchParams({ a: '1 2', b: 'x' })),
            blob: await send(new Blob(['blob'], { type: 'Application/X-Blob' })),
            untypedBlob: await send(new Blob(['blob'])),
            bytes: await send(new Uint8Array([104, 105])),
            explicit: await send('text', { 'Content-Type': 'application/json' }),
            multipart: [...multipart, boundary],
            parsed: [...(await new Response(form).formData()).entries()].map(([k, v]) => [k, typeof v === 'string' ? v : [v.name, v.type, v.size]]),
        };
    };"#;
    for node in every_target_with(allowing(server, None)).await {
        let res = node.run("defaults", &format!("?url=http://{server}/"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        assert_eq!(v["string"], json!(["text/plain;charset=UTF-8", "length 4", "text"]));
        assert_eq!(v["params"], json!(["application/x-www-form-urlencoded;charset=UTF-8", "length 9", "a=1+2&b=x"]));
        assert_eq!(v["blob"], json!(["application/x-blob", "length 4", "blob"]));
        assert_eq!(v["untypedBlob"], json!([null, "length 4", "blob"]));
        assert_eq!(v["bytes"], json!([null, "length 2", "hi"]));
        assert_eq!(v["explicit"], json!(["application/json", "length 4", "text"]));
        let boundary = v["multipart"][3].as_str().unwrap();
        assert!(boundary.starts_with("----formdata-webtask-"), "{v}");
        let body = "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n\
                    --B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.txt\"\r\nContent-Type: text/x-thing\r\n\r\nfile\r\n--B--\r\n"
            .replace('B', boundary);
        let expected = [format!("multipart/form-data; boundary={boundary}"), format!("length {}", body.len()), body];
        assert_eq!(v["multipart"].as_array().unwrap()[..3], expected.map(|e| json!(e)));
        assert_eq!(v["parsed"], json!([["a", "b"], ["f", ["f.txt", "text/x-thing", 4]]]));
    }
}

/// `/flood` streams 64 KiB chunks as fast as the connection takes them,
/// counting what it wrote, until the connection is cut.
async fn flood_server() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let (sent, cut) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (server_sent, server_cut) = (sent.clone(), cut.clone());
    let addr = raw_server(move |_head, mut stream| {
        let (sent, cut) = (server_sent.clone(), server_cut.clone());
        async move {
            stream.write_all(CHUNKED_HEAD).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            while write_chunk(&mut stream, &chunk).await.is_ok() {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            cut.store(true, Ordering::Release);
        }
    })
    .await;
    (addr, sent, cut)
}

#[tokio::test]
async fn a_guest_that_stops_reading_holds_the_upstream_back_and_its_abort_cuts_it() {
    // A guest that read one chunk and then stalls: the upstream gets no
    // further than what a few buffers hold (without back-pressure the node
    // would take the whole flood, at loopback speed, for as long as the
    // guest waits). Then the guest gives up, and the connection is cut.
    let node_http = r#"module.exports = function (ctx, cb) {
        const req = require('http').get(ctx.data.url + '/flood', (res) => {
            res.once('data', () => {
                res.pause();
                setTimeout(() => { req.destroy(); cb(null, 'stalled'); }, 400);
            });
        });
        req.on('error', () => {});
    };"#;
    let fetch = r#"module.exports = async (ctx) => {
        const res = await fetch(ctx.data.url + '/flood');
        const reader = res.body.getReader();
        await reader.read();
        await new Promise((resolve) => setTimeout(resolve, 400));
        await reader.cancel();
        return 'stalled';
    };"#;
    for code in [node_http, fetch] {
        let (server, sent, cut) = flood_server().await;
        let mut config = allowing(server, None);
        config.egress.max_response_bytes = 1 << 40;
        for node in every_target_with(config).await {
            sent.store(0, Ordering::Relaxed);
            cut.store(false, Ordering::Release);
            let res = node.run("flood", &format!("?url=http://{server}"), code).await;
            assert_eq!(res.json(), json!("stalled"), "{}", res.text());
            let flooded = sent.load(Ordering::Relaxed);
            assert!(flooded < 32 << 20, "the upstream wrote {flooded} bytes to a guest that read one chunk");
            eventually_within("the upstream connection is cut", Duration::from_secs(5), || {
                let cut = cut.clone();
                async move { cut.load(Ordering::Acquire) }
            })
            .await;
        }
    }
}

#[tokio::test]
async fn response_chunks_a_guest_keeps_count_against_its_arraybuffer_limit() {
    // Chunks land in buffers the guest allocates: keeping a flood of them
    // ends in the same RangeError as any buffer past the cap (32 MiB in
    // the test config), not in memory the limit does not see.
    let keep = r#"module.exports = async (ctx) => {
        const res = await fetch(ctx.data.url + '/flood');
        const reader = res.body.getReader();
        const kept = [];
        let bytes = 0;
        try {
            for (;;) { const { value } = await reader.read(); kept.push(value); bytes += value.length; }
        } catch (e) {
            return { name: e.name, mib: Math.floor(bytes / 1048576), message: e.message };
        }
    };"#;
    let keep_http = r#"module.exports = (ctx, cb) => {
        let bytes = 0;
        const kept = [];
        require('http').get(ctx.data.url + '/flood', (res) => {
            res.on('data', (c) => { kept.push(c); bytes += c.length; });
            res.on('error', (e) => cb(null, { name: e.name, mib: Math.floor(bytes / 1048576), message: e.message }));
        }).on('error', () => {});
    };"#;
    let (server, _, _) = flood_server().await;
    // A thousand reads in a debug build.
    let mut config = crate::support::with_room(allowing(server, None), 10_000);
    config.egress.max_response_bytes = 1 << 40;
    for node in every_target_with(config).await {
        for code in [keep, keep_http] {
            let res = node.run("keep-chunks", &format!("?url=http://{server}"), code).await;
            let v = res.json();
            assert_eq!((v["name"].as_str(), v["message"].as_str()), (Some("RangeError"), Some("Array buffer allocation failed")), "{v}");
            assert!((28..=32).contains(&v["mib"].as_u64().unwrap()), "{v}");
            // The container goes on.
            assert_eq!(node.run("keep-chunks", "", "module.exports = (ctx, cb) => cb(null, 1);").await.json(), json!(1));
        }
    }
}

/// `/hang` answers nothing and reports when its connection is closed;
/// `/half` sends "first" and then nothing.
async fn hanging_server() -> (SocketAddr, Arc<tokio::sync::Semaphore>) {
    let closed = Arc::new(tokio::sync::Semaphore::new(0));
    let server_closed = closed.clone();
    let addr = raw_server(move |head, mut stream| {
        let closed = server_closed.clone();
        async move {
            if path_of(&head) == "/half" {
                stream.write_all(CHUNKED_HEAD).await.unwrap();
                write_chunk(&mut stream, b"first").await.unwrap();
            }
            if until_closed(&mut stream).await {
                closed.add_permits(1);
            }
        }
    })
    .await;
    (addr, closed)
}

async fn cut_within(closed: &tokio::sync::Semaphore, what: &str) {
    let permit = tokio::time::timeout(Duration::from_secs(5), closed.acquire()).await;
    permit.unwrap_or_else(|_| panic!("{what}: the upstream connection was not cut")).unwrap().forget();
}

#[tokio::test]
async fn aborts_cancel_the_upstream_exchange() {
    let cases = [
        (
            "fetch aborted before its response",
            r#"module.exports = async (ctx) => {
                const c = new AbortController();
                setTimeout(() => c.abort(), 100);
                try { await fetch(ctx.data.url + '/hang', { signal: c.signal }); return 'answered'; }
                catch (e) { return [e.name, e.message, e.code, e instanceof DOMException]; }
            };"#,
            json!(["AbortError", "This operation was aborted", 20, true]),
        ),
        (
            "fetch aborted while its body streams",
            r#"module.exports = async (ctx) => {
                const c = new AbortController();
                const res = await fetch(ctx.data.url + '/half', { signal: c.signal });
                const reader = res.body.getReader();
                const first = new TextDecoder().decode((await reader.read()).value);
                c.abort(new Error('enough'));
                try { await reader.read(); return 'read on'; } catch (e) { return [first, e.message]; }
            };"#,
            json!(["first", "enough"]),
        ),
        (
            "fetch with a timeout signal",
            r#"module.exports = async (ctx) => {
                try { await fetch(ctx.data.url + '/hang', { signal: AbortSignal.timeout(100) }); return 'answered'; }
                catch (e) { return [e.name, e.code]; }
            };"#,
            json!(["TimeoutError", 23]),
        ),
        (
            "http request destroyed before its response",
            r#"module.exports = function (ctx, cb) {
                const req = require('http').get(ctx.data.url + '/hang');
                req.on('error', (e) => cb(null, [e.code, e.message]));
                setTimeout(() => req.destroy(), 100);
            };"#,
            json!(["ECONNRESET", "socket hang up"]),
        ),
        (
            "http request aborted while its body streams",
            r#"module.exports = function (ctx, cb) {
                const req = require('http').get(ctx.data.url + '/half', (res) => {
                    res.on('error', (e) => cb(null, [res.aborted, e.code, e.message]));
                    res.once('data', () => req.abort());
                });
            };"#,
            json!([true, "ECONNRESET", "aborted"]),
        ),
    ];
    let (server, closed) = hanging_server().await;
    for node in every_target_with(allowing(server, None)).await {
        for (what, code, expected) in &cases {
            let res = node.run("abort", &format!("?url=http://{server}"), code).await;
            assert_eq!(res.json(), *expected, "{what}: {}", res.text());
            cut_within(&closed, what).await;
        }
    }
}

#[tokio::test]
async fn the_egress_timeout_covers_a_streaming_body() {
    let (server, closed) = hanging_server().await;
    let mut config = allowing(server, None);
    config.egress.timeout_ms = 300;
    let code = r#"module.exports = async (ctx) => {
        const res = await fetch(ctx.data.url + '/half');
        const reader = res.body.getReader();
        const first = new TextDecoder().decode((await reader.read()).value);
        let fetchErr;
        try { await reader.read(); } catch (e) { fetchErr = [e.name, e.code]; }
        const httpErr = await new Promise((resolve) => {
            require('http').get(ctx.data.url + '/half', (r) => r.on('error', (e) => resolve([r.aborted, e.code, e.egress])).resume());
        });
        return { first, fetchErr, httpErr };
    };"#;
    for node in every_target_with(config).await {
        let v = node.run("timeout", &format!("?url=http://{server}"), code).await.json();
        assert_eq!(v, json!({"first": "first", "fetchErr": ["TypeError", "egress_timeout"], "httpErr": [true, "ETIMEDOUT", "egress_timeout"]}));
        cut_within(&closed, "fetch").await;
        cut_within(&closed, "http").await;
    }
}

#[tokio::test]
async fn the_response_cap_counts_a_body_as_it_streams() {
    let server = raw_server(|head, mut stream| async move {
        if path_of(&head) == "/declared" {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n").await;
            let _ = stream.write_all(&[b'x'; 5000]).await;
            return;
        }
        stream.write_all(CHUNKED_HEAD).await.unwrap();
        let _ = write_chunk(&mut stream, &[b'a'; 600]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = write_chunk(&mut stream, &[b'b'; 600]).await;
        let _ = stream.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let mut config = allowing(server, None);
    config.egress.max_response_bytes = 1000;
    let code = r#"module.exports = async (ctx) => {
        const out = {};
        const res = await fetch(ctx.data.url + '/chunked');
        const reader = res.body.getReader();
        out.first = (await reader.read()).value.length;
        try { await reader.read(); out.second = 'read'; } catch (e) { out.second = [e.code, /larger than 1000 bytes/.test(e.message)]; }
        try { await fetch(ctx.data.url + '/declared'); out.declared = 'answered'; } catch (e) { out.declared = e.code; }
        return out;
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("cap", &format!("?url=http://{server}"), code).await.json();
        assert_eq!(v, json!({"first": 600, "second": ["egress_limit", true], "declared": "egress_limit"}));
    }
}

#[tokio::test]
async fn fetch_follows_redirects_as_undici_does() {
    let server = echo_server().await;
    let mut config = allowing(server, None);
    // Room for loading whatwg-url (URL) on a debug build.
    config.engine.limits.cpu_ms = 2_000;
    config.engine.limits.wall_ms = 5_000;
    let code = r#"module.exports = async (ctx) => {
        const base = ctx.data.url;
        const to = (status, target) => base + '/redirect/' + status + '?' + encodeURIComponent(target);
        const show = async (url, init) => {
            try {
                const r = await fetch(url, init);
                const text = await r.text();
                return [r.status, r.redirected, r.url.replace(base, ''), text.startsWith('{') ? JSON.parse(text) : text];
            } catch (e) { return [e.name, e.code, e.message]; }
        };
        const post = { method: 'POST', body: 'payload', headers: { authorization: 'secret' } };
        let chain = base + '/end';
        for (let i = 0; i < 21; i++) chain = to(302, chain);
        return {
            seeOther: await show(to(303, '/final'), post),
            found: await show(to(302, base + '/final'), post),
            temporary: await show(to(307, '/final'), post),
            crossOrigin: await show(to(308, base.replace('127.0.0.1', 'localhost') + '/final'), post),
            manual: await show(to(301, '/final'), { redirect: 'manual' }),
            error: await show(to(301, '/final'), { redirect: 'error' }),
            tooMany: await show(chain),
            scheme: await show(to(302, 'ftp://example.com/')),
            streamed: await show(to(307, '/final'), { method: 'POST', body: new Blob(['x']).stream(), duplex: 'half' }),
        };
    };"#;
    let echo = |method: &str, ct: Option<&str>, framing: &str, body: &str, auth: Option<&str>| {
        let mut e = json!({"method": method, "path": "/final", "x-test": "", "content-type": ct, "framing": framing, "body": body});
        if let Some(a) = auth {
            e["authorization"] = json!(a);
        }
        e
    };
    for node in every_target_with(config.clone()).await {
        let res = node.run("redirects", &format!("?url=http://{server}"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        assert_eq!(v["seeOther"], json!([200, true, "/final", echo("GET", None, "none", "", Some("secret"))]));
        assert_eq!(v["found"], json!([200, true, "/final", echo("GET", None, "none", "", Some("secret"))]));
        assert_eq!(v["temporary"], json!([200, true, "/final", echo("POST", Some("text/plain;charset=UTF-8"), "length 7", "payload", Some("secret"))]));
        let cross = format!("http://localhost:{}/final", server.port());
        assert_eq!(v["crossOrigin"], json!([200, true, cross, echo("POST", Some("text/plain;charset=UTF-8"), "length 7", "payload", None)]));
        assert_eq!(v["manual"], json!([301, false, "/redirect/301?%2Ffinal", "moved"]));
        assert_eq!(v["error"][1], "egress_redirect", "{v}");
        assert_eq!(v["tooMany"], json!(["TypeError", "egress_redirect", "redirect count exceeded (20)"]));
        assert_eq!(v["scheme"][1], "egress_redirect", "{v}");
        assert_eq!(v["streamed"][1], "egress_redirect", "{v}");
    }
}

#[tokio::test]
async fn every_redirect_hop_is_checked_and_counted() {
    let server = echo_server().await;
    let elsewhere = echo_server().await;
    let mut config = allowing(server, None);
    config.engine.limits.subrequests = 3;
    let code = r#"module.exports = async (ctx) => {
        const to = (target) => ctx.data.url + '/redirect/302?' + encodeURIComponent(target);
        const code = async (url) => { try { await fetch(url); return 'answered'; } catch (e) { return [e.code, e.message]; } };
        return {
            denied: await code(to(ctx.data.elsewhere + '/x')),
        };
    };"#;
    let counted = r#"module.exports = async (ctx) => {
        const to = (target) => ctx.data.url + '/redirect/302?' + encodeURIComponent(target);
        try { await fetch(to(to(to(ctx.data.url + '/end')))); return 'answered'; } catch (e) { return e.code; }
    };"#;
    for node in every_target_with(config.clone()).await {
        let query = format!("?url=http://{server}&elsewhere=http://{elsewhere}");
        let v = node.run("hops", &query, code).await.json();
        assert_eq!(v["denied"][0], "egress_denied", "{v}");
        assert!(v["denied"][1].as_str().unwrap().contains(&elsewhere.to_string()), "{v}");
        // Three redirects and the final answer: four exchanges, one over.
        assert_eq!(node.run("hops", &query, counted).await.json(), json!("egress_limit"));
    }
}

#[tokio::test]
async fn an_unread_exchange_ends_with_its_requests_wall_clock_limit() {
    // The request answers at once and never reads the body: the exchange
    // is dropped at the request's deadline (1 s here), not left to hold the
    // upstream until the egress timeout (10 s).
    let (server, closed) = hanging_server().await;
    let fetch = r#"module.exports = async (ctx) => { await fetch(ctx.data.url + '/half'); return 'answered'; };"#;
    let node_http = r#"module.exports = function (ctx, cb) { require('http').get(ctx.data.url + '/half', () => cb(null, 'answered')); };"#;
    for node in every_target_with(allowing(server, None)).await {
        for code in [fetch, node_http] {
            let started = std::time::Instant::now();
            assert_eq!(node.run("unread", &format!("?url=http://{server}"), code).await.json(), json!("answered"));
            let permit = tokio::time::timeout(Duration::from_secs(4), closed.acquire()).await;
            permit.expect("the upstream connection was not cut").unwrap().forget();
            assert!(started.elapsed() < Duration::from_secs(4));
        }
    }
}

/// A name server on loopback that takes every query and never answers;
/// counts the queries it got.
async fn silent_name_server() -> (SocketAddr, Arc<AtomicU64>) {
    // TCP on the same port too, accepting and never answering, so a
    // resolver that tries TCP waits as it does on UDP. The kernel picks the
    // UDP port without looking at TCP's, so that port may be taken for TCP
    // by another test's connection: pick again until both are ours.
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        match tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
            Ok(tcp) => break (udp, tcp),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding the name server's TCP port: {e}"),
        }
    };
    let addr = udp.local_addr().unwrap();
    let queries = Arc::new(AtomicU64::new(0));
    let counted = queries.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                Ok(_) = udp.recv_from(&mut buf) => { counted.fetch_add(1, Ordering::Relaxed); }
                Ok((conn, _)) = tcp.accept() => held.push(conn),
                else => break,
            }
        }
    });
    (addr, queries)
}

/// One tenant fetching hundreds of names whose server never answers holds
/// nothing another tenant's fetch needs: lookups wait without a thread
/// each, the other tenant's fetch goes through while they wait, and they
/// end as the egress timeout says.
#[tokio::test]
async fn names_whose_server_never_answers_hold_nothing_another_tenant_needs() {
    let server = echo_server().await;
    let (dns, queries) = silent_name_server().await;
    let mut config = allowing(server, None);
    config.egress.nameservers = vec![dns];
    config.egress.timeout_ms = 3000;
    config.engine.limits.wall_ms = 8000;
    config.engine.limits.cpu_ms = 2000;
    let node = TestNode::with_config(config).await;
    let lookups = r#"module.exports = async (ctx) => {
        const names = Array.from({ length: 50 }, (_, i) => `http://n${i}-${ctx.data.c}.silent.webtask-test/`);
        const out = await Promise.allSettled(names.map((u) => fetch(u)));
        return [...new Set(out.map((o) => o.status === 'rejected' ? o.reason.code : 'answered'))];
    };"#;
    let done = Arc::new(AtomicBool::new(false));
    let stuck = async {
        let names: Vec<(String, String)> = (0..12).map(|i| (format!("stuck{}", i % 3), format!("?c={i}"))).collect();
        let runs = names.iter().map(|(container, query)| node.run(container, query, lookups));
        let answers = futures::future::join_all(runs).await;
        done.store(true, Ordering::Release);
        answers
    };
    let other = async {
        // Hundreds of lookups are waiting on the silent server...
        eventually_within("lookups in flight", Duration::from_secs(10), || async { queries.load(Ordering::Relaxed) >= 300 }).await;
        // ...while another tenant's fetch goes through.
        let res = node.run("other", &format!("?url=http://{server}/x"), CATCH).await;
        let still_waiting = !done.load(Ordering::Acquire);
        (res, still_waiting)
    };
    let (answers, (res, still_waiting)) = tokio::join!(stuck, other);
    assert_eq!(res.json(), json!({"status": 200}));
    assert!(still_waiting, "the other tenant's fetch waited for the lookups to end");
    for a in answers {
        assert_eq!(a.status, 200, "{}", a.text());
        let codes = a.json();
        assert!(codes.as_array().unwrap().iter().all(|c| c == "egress_timeout" || c == "egress_failed"), "{codes}");
    }
}

/// A name server on loopback that answers every query "no such name".
async fn nxdomain_name_server() -> SocketAddr {
    use hickory_resolver::proto::op::{Message, ResponseCode};
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::error_msg(query.id(), query.op_code(), ResponseCode::NXDomain);
            answer.add_queries(query.queries().to_vec());
            let _ = udp.send_to(&answer.to_vec().unwrap(), from).await;
        }
    });
    addr
}

/// A name that does not exist fails as Node says it does (`ENOTFOUND`),
/// and the message names the name only: not the node's search domains or
/// the query its resolver sent last.
#[tokio::test]
async fn a_name_that_does_not_exist_fails_as_in_node_naming_only_the_name() {
    let mut config = test_config();
    config.egress.nameservers = vec![nxdomain_name_server().await];
    let code = r#"module.exports = async () => {
        let viaFetch, viaHttp;
        try { await fetch('http://nope.webtask-test/'); } catch (e) { viaFetch = [e.code, e.cause?.code, e.message]; }
        viaHttp = await new Promise((resolve) => require('http').get('http://nope.webtask-test/', () => resolve('answered'))
            .on('error', (e) => resolve([e.code, e.message])));
        return { viaFetch, viaHttp };
    };"#;
    for node in every_target_with(config).await {
        let v = node.run("nx", "", code).await.json();
        assert_eq!(v["viaFetch"], json!(["egress_failed", "ENOTFOUND", "cannot resolve nope.webtask-test: no such name"]), "{v}");
        assert_eq!(v["viaHttp"], json!(["ENOTFOUND", "getaddrinfo ENOTFOUND nope.webtask-test"]), "{v}");
    }
}
