//! Egress: the node's side of guest `fetch`. It resolves the name itself,
//! refuses addresses tenants must not reach (loopback, private, link-local,
//! CGNAT, multicast, unspecified, the node's own listen address) unless
//! `egress.allow` names them, and connects to exactly the address it
//! checked, so a DNS answer cannot change between the check and the
//! connection. Timeouts and a response size cap apply to every fetch.
//!
//! `https:` is verified with rustls against the host's trust store
//! (`/etc/ssl/certs`, as curl uses) plus `egress.ca_file`, if set. The
//! certificate must name the URL's host; the TCP connection still goes to
//! the one address the policy checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

use crate::engine::fetch::{FetchError, FetchFuture, FetchRequest, FetchResponse, Fetcher};

/// `[egress]` in webtask.toml.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Addresses tenants may reach although the default policy refuses
    /// them: `"10.1.2.3"`, `"10.0.0.0/8"`, `"127.0.0.1:9000"` (one port).
    pub allow: Vec<String>,
    /// Connect, send and receive, per fetch.
    pub timeout_ms: u64,
    /// Largest response body a fetch returns.
    pub max_response_bytes: u64,
    /// PEM file of extra certificate authorities trusted for `https:`
    /// besides the host's store (a private CA, a test server's).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig { allow: Vec::new(), timeout_ms: 10_000, max_response_bytes: 10 * 1024 * 1024, ca_file: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Allowed {
    Net(IpNet),
    Addr(SocketAddr),
}

/// The policy and client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Egress {
    /// Where connections run: the node's runtime (isolate threads have
    /// timers but no I/O driver).
    runtime: Option<tokio::runtime::Handle>,
    allow: Arc<Vec<Allowed>>,
    /// The node's own addresses: refused even when a range allows them.
    node: Arc<Vec<SocketAddr>>,
    timeout: Duration,
    max_response: u64,
    tls: Arc<rustls::ClientConfig>,
}

impl Egress {
    pub fn new(config: &EgressConfig, node_addrs: Vec<SocketAddr>) -> Result<Egress, String> {
        let allow = config
            .allow
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map(Allowed::Addr)
                    .or_else(|_| a.parse::<IpNet>().map(Allowed::Net))
                    .or_else(|_| a.parse::<IpAddr>().map(|ip| Allowed::Net(IpNet::from(ip))))
                    .map_err(|_| format!("egress.allow: {a:?} is not an address, a network or address:port"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Egress {
            runtime: tokio::runtime::Handle::try_current().ok(),
            allow: Arc::new(allow),
            node: Arc::new(node_addrs),
            timeout: Duration::from_millis(config.timeout_ms),
            max_response: config.max_response_bytes,
            tls: tls_config(config.ca_file.as_deref())?,
        })
    }

    /// Whether a tenant may connect to `addr`.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        if self.node.iter().any(|n| n.port() == addr.port() && (n.ip() == addr.ip() || n.ip().is_unspecified())) {
            return false;
        }
        let ip = canonical(addr.ip());
        let allowed = self.allow.iter().any(|a| match a {
            Allowed::Net(net) => net.contains(&ip),
            Allowed::Addr(sa) => canonical(sa.ip()) == ip && sa.port() == addr.port(),
        });
        allowed || is_public(ip)
    }

    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        let url = deno_core::url::Url::parse(&req.url).map_err(|e| FetchError::new("egress_failed", format!("invalid URL {:?}: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::new("egress_denied", format!("scheme {}: is not allowed", url.scheme())));
        }
        let host = url.host_str().ok_or_else(|| FetchError::new("egress_failed", "URL has no host"))?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let timeout = self.timeout;
        let work = async {
            let addr = self.resolve(host.trim_matches(['[', ']']), port).await?;
            self.send(addr, &url, req).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(FetchError::new("egress_timeout", format!("{} took longer than {} ms", url, timeout.as_millis()))))
    }

    /// The first address of `host` the policy permits; refused naming the
    /// address when none is.
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, FetchError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| FetchError::new("egress_failed", format!("cannot resolve {host}: {e}")))?
            .collect();
        if let Some(ok) = addrs.iter().find(|a| self.permits(**a)) {
            return Ok(*ok);
        }
        let named = addrs.first().map(|a| a.to_string()).unwrap_or_else(|| host.to_owned());
        Err(FetchError::new("egress_denied", format!("egress to {named} is not allowed")))
    }

    async fn send(&self, addr: SocketAddr, url: &deno_core::url::Url, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        let failed = |e: &dyn std::fmt::Display| FetchError::new("egress_failed", format!("{url}: {e}"));
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
        if url.scheme() == "https" {
            let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
            let name = ServerName::try_from(host.to_owned()).map_err(|e| failed(&e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, stream).await.map_err(|e| failed(&e))?;
            return self.exchange(tls, url, req).await;
        }
        self.exchange(stream, url, req).await
    }

    /// One HTTP/1.1 request and its whole (capped) response over `io`.
    async fn exchange<S>(&self, io: S, url: &deno_core::url::Url, req: FetchRequest) -> Result<FetchResponse, FetchError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |e: &dyn std::fmt::Display| FetchError::new("egress_failed", format!("{url}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| failed(&e))?;
        tokio::spawn(conn);
        let path = &url[url::Position::BeforePath..];
        let mut builder = http::Request::builder().method(req.method.as_str()).uri(path);
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        builder = builder.header(http::header::HOST, host_header);
        for (k, v) in &req.headers {
            if !k.eq_ignore_ascii_case("host") {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
        let request = builder.body(Full::new(Bytes::from(req.body))).map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, self.max_response as usize)
            .collect()
            .await
            .map_err(|_| FetchError::new("egress_limit", format!("{url}: response larger than {} bytes", self.max_response)))?;
        let headers = parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
        Ok(FetchResponse { status: parts.status.as_u16(), headers, body: body.to_bytes().to_vec() })
    }
}

/// The TLS client: the host's trust store plus `ca_file`; HTTP/1.1 only.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A host without a store (a bare container) still works with ca_file.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("egress.ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("egress.ca_file {}: no certificate in it", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("egress.ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Fetcher for Egress {
    fn fetch(&self, request: FetchRequest) -> FetchFuture {
        let egress = self.clone();
        let Some(runtime) = self.runtime.clone() else {
            return Box::pin(async { Err(FetchError::new("egress_failed", "egress was created outside a tokio runtime")) });
        };
        let task = runtime.spawn(async move { egress.fetch(request).await });
        Box::pin(async move { task.await.unwrap_or_else(|e| Err(FetchError::new("egress_failed", e.to_string()))) })
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Globally routable unicast: everything a tenant may reach by default.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            // Global unicast (2000::/3) only, less the ranges that embed or
            // tunnel to IPv4 (6to4, Teredo, ORCHID...) and documentation.
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000 && s[0] != 0x2002 && !(s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str]) -> Egress {
        let config = EgressConfig { allow: allow.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        Egress::new(&config, vec!["127.0.0.1:8080".parse().unwrap()]).unwrap()
    }

    #[test]
    fn refuses_what_tenants_must_not_reach() {
        let e = egress(&[]);
        for addr in [
            "127.0.0.1:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:10.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[2002:7f00:1::]:80",
            "[fec0::1]:80",
            "[2001::1]:80",
            "[100::1]:80",
        ] {
            assert!(!e.permits(addr.parse().unwrap()), "{addr} permitted");
        }
        for addr in ["93.184.216.34:80", "[2606:4700::1111]:443", "8.8.8.8:53"] {
            assert!(e.permits(addr.parse().unwrap()), "{addr} refused");
        }
    }

    #[test]
    fn allow_list_opens_exactly_what_it_names() {
        let e = egress(&["127.0.0.1:9000", "10.0.0.0/8"]);
        assert!(e.permits("127.0.0.1:9000".parse().unwrap()));
        assert!(!e.permits("127.0.0.1:9001".parse().unwrap()));
        assert!(e.permits("10.9.9.9:1".parse().unwrap()));
        assert!(!e.permits("192.168.0.1:1".parse().unwrap()));
    }

    #[test]
    fn the_node_itself_is_never_reachable() {
        let e = egress(&["127.0.0.0/8"]);
        assert!(!e.permits("127.0.0.1:8080".parse().unwrap()));
        assert!(e.permits("127.0.0.1:8081".parse().unwrap()));
    }

    #[test]
    fn bad_allow_entries_are_config_errors() {
        let config = EgressConfig { allow: vec!["not-an-ip".into()], ..Default::default() };
        assert!(Egress::new(&config, vec![]).unwrap_err().contains("not-an-ip"));
    }
}
