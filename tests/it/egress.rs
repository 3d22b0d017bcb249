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

/// A loopback server that echoes method, path, a header and the body.
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
async fn tls_echo_server() -> (SocketAddr, std::path::PathBuf) {
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
        let method = req.method().to_string();
        let path = req.uri().to_string();
        let header = req.headers().get("x-test").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let out = json!({"method": method, "path": path, "x-test": header, "body": String::from_utf8_lossy(&body)});
        let mut res = http::Response::new(Full::new(Bytes::from(out.to_string())));
        res.headers_mut().insert("x-echo", "yes".parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
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
        assert_eq!(v["body"], json!({"method": "POST", "path": "/path?q=1", "x-test": "hdr", "body": "payload"}));
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
        assert_eq!(v["body"], json!({"method": "POST", "path": "/secure?x=1", "x-test": "tls", "body": "sealed"}));
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
    let config = allowing(server, None);
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
