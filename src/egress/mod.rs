//! Egress: the node's side of guest `fetch`. It resolves the name itself,
//! refuses addresses tenants must not reach (loopback, private, link-local,
//! CGNAT, multicast, unspecified, the node's own listen address) unless
//! `egress.allow` names them, and connects to exactly the address it
//! checked, so a DNS answer cannot change between the check and the
//! connection. Timeouts and a response size cap apply to every fetch.
//!
//! An exchange streams: the request body goes upstream as the guest writes
//! it (chunked unless the guest declared its length), the response head
//! comes back as soon as the upstream sends it, and the body follows in
//! chunks, read from the connection no faster than the guest consumes them
//! (a few chunks are buffered here, never the whole body). The timeout
//! covers the whole exchange, body included, and the size cap counts the
//! body as it streams (a declared `content-length` over it is refused
//! before the guest sees the head).
//!
//! Names are resolved asynchronously (hickory-resolver): getaddrinfo would
//! hold one of tokio's blocking threads per lookup for as long as a slow
//! name server takes, so one tenant fetching names that never resolve could
//! hold all of them and stall every other tenant's fetches. It is set up to
//! answer as glibc would: `/etc/hosts` first, read per lookup, then the
//! name servers, search list and options of `/etc/resolv.conf` (read as
//! glibc reads it) or `egress.nameservers`; an IP address is never asked
//! of DNS. Nothing is cached here: a cache shared by tenants would tell
//! one, by timing, which names another looked up (the name server's own
//! cache is as it always was).
//!
//! `https:` is verified with rustls against the host's trust store
//! (`/etc/ssl/certs`, as curl uses) plus `egress.ca_file`, if set. The
//! certificate must name the URL's host; the TCP connection still goes to
//! the one address the policy checked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::engine::fetch::{body_channel, AbortOnDrop, BodyReceiver, BodySender, FetchError, FetchFuture, FetchRequest, FetchResponse, Fetcher, ResponseHead};

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
    /// Name servers egress asks (`"10.0.0.2:53"`), over UDP and TCP,
    /// instead of `/etc/resolv.conf`'s; `/etc/hosts` still applies.
    pub nameservers: Vec<SocketAddr>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig { allow: Vec::new(), timeout_ms: 10_000, max_response_bytes: 10 * 1024 * 1024, ca_file: None, nameservers: Vec::new() }
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
    resolver: Resolver,
}

/// The name resolver, shared by clones of one [`Egress`].
#[derive(Clone)]
struct Resolver(Arc<hickory_resolver::TokioResolver>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// Asking `nameservers`, or those of `/etc/resolv.conf`.
    fn new(nameservers: &[SocketAddr]) -> Resolver {
        use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
        let (config, mut options) = match nameservers {
            [] => system_config(),
            _ => (ResolverConfig::from_parts(None, vec![], name_servers(nameservers)), ResolverOpts::default()),
        };
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        // `/etc/hosts` is read here, first and per lookup (`hosts_file`).
        options.use_hosts_file = ResolveHosts::Never;
        // Both families: the first address the policy permits is taken.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let provider = hickory_resolver::name_server::TokioConnectionProvider::default();
        Resolver(Arc::new(hickory_resolver::TokioResolver::builder_with_config(config, provider).with_options(options).build()))
    }

    /// The addresses of the domain `name`: `/etc/hosts` first, as glibc's
    /// `files` before `dns`, then DNS. Errors name the name, never the
    /// node's search domains.
    async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, FetchError> {
        if let Some(found) = hosts_file(name) {
            return Ok(found);
        }
        match self.0.lookup_ip(name).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(FetchError::new("egress_failed", format!("cannot resolve {name}: no such name")).with_syscode("ENOTFOUND"))
            }
            Err(_) => Err(FetchError::new("egress_failed", format!("cannot resolve {name}: the name servers did not answer"))
                .with_syscode("EAI_AGAIN")),
        }
    }
}

/// `name`'s entries in `/etc/hosts`, read now (an edit applies at once, as
/// with glibc).
fn hosts_file(name: &str) -> Option<Vec<IpAddr>> {
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::{RData, RecordType};
    let hosts = hickory_resolver::Hosts::from_system().ok()?;
    let name = hickory_resolver::Name::from_str_relaxed(name).ok()?;
    let found: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(|t| hosts.lookup_static_host(&Query::query(name.clone(), t)))
        .flat_map(|lookup| lookup.iter().cloned().collect::<Vec<_>>())
        .filter_map(|r| match r {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// Name servers, search list and options of `/etc/resolv.conf`, read as
/// glibc reads it: lines it does not know are skipped (logged), and with no
/// `nameserver` line it asks 127.0.0.1. The search list is `search`'s, or
/// `domain`'s without one, never a domain guessed from the hostname.
fn system_config() -> (hickory_resolver::config::ResolverConfig, hickory_resolver::config::ResolverOpts) {
    use hickory_resolver::config::{ResolverConfig, ResolverOpts};
    let text = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let (parsed, errors) = resolv_conf::Config::parse_with_errors(&text);
    if !errors.is_empty() {
        let skipped: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        tracing::warn!(skipped = skipped.join("; "), "egress skips lines of /etc/resolv.conf it cannot read");
    }
    let mut servers: Vec<SocketAddr> = parsed.nameservers.iter().map(|ip| SocketAddr::new(ip.into(), 53)).collect();
    if servers.is_empty() {
        servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    let search = parsed
        .get_last_search_or_domain()
        .filter(|d| *d != "--")
        .filter_map(|d| hickory_resolver::Name::from_str_relaxed(d).ok())
        .collect();
    let mut options = ResolverOpts::default();
    options.ndots = parsed.ndots as usize;
    options.timeout = Duration::from_secs(u64::from(parsed.timeout));
    options.attempts = parsed.attempts as usize;
    options.edns0 = parsed.edns0;
    (ResolverConfig::from_parts(None, search, name_servers(&servers)), options)
}

/// Each server over UDP, and over TCP for answers too long for UDP.
fn name_servers(addrs: &[SocketAddr]) -> Vec<hickory_resolver::config::NameServerConfig> {
    use hickory_resolver::config::NameServerConfig;
    use hickory_resolver::proto::xfer::Protocol;
    addrs.iter().flat_map(|a| [NameServerConfig::new(*a, Protocol::Udp), NameServerConfig::new(*a, Protocol::Tcp)]).collect()
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
            resolver: Resolver::new(&config.nameservers),
        })
    }

    /// How long one exchange may take, all of it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a tenant may connect to `addr`.
    pub fn permits(&self, addr: SocketAddr) -> bool {
        // Every comparison is on the canonical form: `[::ffff:127.0.0.1]`
        // reaches what `127.0.0.1` does, so it must be refused as that.
        let ip = canonical(addr.ip());
        let is_node = |n: &SocketAddr| n.port() == addr.port() && (canonical(n.ip()) == ip || n.ip().is_unspecified());
        if self.node.iter().any(is_node) {
            return false;
        }
        let allowed = self.allow.iter().any(|a| match a {
            Allowed::Net(net) => net.contains(&ip),
            Allowed::Addr(sa) => canonical(sa.ip()) == ip && sa.port() == addr.port(),
        });
        allowed || is_public(ip)
    }

    /// Starts one exchange on the node's runtime: connects, sends the head
    /// and streams the request body as it comes, and hands back the
    /// response head and then its body as the upstream sends it. Dropping
    /// the [`Exchange`] (or, once answered, the response body) cancels it,
    /// connection and all.
    pub fn start(&self, req: FetchRequest) -> Exchange {
        let (head_tx, head) = oneshot::channel();
        let (body_tx, body) = body_channel(BODY_CHUNKS);
        let Some(runtime) = self.runtime.clone() else {
            let _ = head_tx.send(Err(FetchError::new("egress_failed", "egress was created outside a tokio runtime")));
            return Exchange { head, body };
        };
        let egress = self.clone();
        let task = runtime.spawn(async move { egress.run(req, head_tx, body_tx).await });
        Exchange { head, body: body.keeping(AbortOnDrop::new(task.abort_handle())) }
    }

    /// One exchange, all of it (connect, upload, head and body) within the
    /// egress timeout: past it the guest gets `egress_timeout` and the
    /// connection is closed, whether or not anyone reads the body.
    async fn run(self, req: FetchRequest, head_tx: oneshot::Sender<Result<ResponseHead, FetchError>>, body_tx: BodySender) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = {
            let (url, ms) = (req.head.url.clone(), self.timeout.as_millis());
            move || FetchError::new("egress_timeout", format!("{url} took longer than {ms} ms")).with_syscode("ETIMEDOUT")
        };
        let url = match self.check(&req.head.url) {
            Ok(url) => url,
            Err(e) => return drop(head_tx.send(Err(e))),
        };
        let (sender, conn) = match tokio::time::timeout_at(deadline, self.connect(&url)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return drop(head_tx.send(Err(e))),
            Err(_) => return drop(head_tx.send(Err(timed_out()))),
        };
        let exchange = async {
            let response = match tokio::time::timeout_at(deadline, self.send(sender, &url, req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return drop(head_tx.send(Err(e))),
                Err(_) => return drop(head_tx.send(Err(timed_out()))),
            };
            let (parts, mut incoming) = response.into_parts();
            let too_large = || FetchError::new("egress_limit", format!("{url}: response larger than {} bytes", self.max_response));
            // Refused before the guest sees a byte when the upstream says so.
            let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_response) {
                return drop(head_tx.send(Err(too_large())));
            }
            let headers = parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
            if head_tx.send(Ok(ResponseHead { status: parts.status.as_u16(), headers })).is_err() {
                return;
            }
            let mut received: u64 = 0;
            loop {
                let frame = match tokio::time::timeout_at(deadline, incoming.frame()).await {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(None) => return body_tx.finish(Ok(())),
                    Ok(Some(Err(e))) => return body_tx.finish(Err(failure(&url, &e))),
                    Err(_) => return body_tx.finish(Err(timed_out())),
                };
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                received += data.len() as u64;
                if received > self.max_response {
                    return body_tx.finish(Err(too_large()));
                }
                // Waits while the guest has BODY_CHUNKS unread: the
                // connection is read no faster than the guest reads.
                match tokio::time::timeout_at(deadline, body_tx.send(data)).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => return body_tx.finish(Err(timed_out())),
                }
            }
        };
        // The connection is driven only while the exchange runs: when it
        // ends (or is cancelled) the socket closes with it.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(exchange);
        let mut conn_done = false;
        std::future::poll_fn(|cx| {
            if !conn_done && conn.as_mut().poll(cx).is_ready() {
                conn_done = true;
            }
            exchange.as_mut().poll(cx)
        })
        .await;
    }

    /// The URL, if the scheme may leave at all.
    fn check(&self, url: &str) -> Result<deno_core::url::Url, FetchError> {
        let url = deno_core::url::Url::parse(url).map_err(|e| FetchError::new("egress_failed", format!("invalid URL {url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::new("egress_denied", format!("scheme {}: is not allowed", url.scheme())));
        }
        if url.host_str().is_none() {
            return Err(FetchError::new("egress_failed", "URL has no host"));
        }
        Ok(url)
    }

    /// The first address of `host` the policy permits; refused naming the
    /// address when none is. An IP address is taken as it is, never asked
    /// of DNS (with a resolv.conf `ndots` of 5, as in Kubernetes pods, a
    /// resolver would try it under every search domain first).
    async fn resolve(&self, host: &deno_core::url::Host<&str>, port: u16) -> Result<SocketAddr, FetchError> {
        let addrs: Vec<SocketAddr> = match host {
            deno_core::url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
            deno_core::url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
            deno_core::url::Host::Domain(name) => self.resolver.lookup(name).await?.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        };
        if let Some(ok) = addrs.iter().find(|a| self.permits(**a)) {
            // Connected to as checked: an IPv4-mapped address as the IPv4
            // address it is, so the socket is the one the policy judged.
            return Ok(SocketAddr::new(canonical(ok.ip()), ok.port()));
        }
        let host = host.to_string();
        let named = addrs.first().map(|a| a.to_string()).unwrap_or(host);
        Err(FetchError::new("egress_denied", format!("egress to {named} is not allowed")))
    }

    /// Resolves, checks the policy, connects to exactly the address
    /// checked (TLS for `https:`) and hands back an HTTP/1.1 connection.
    async fn connect(&self, url: &deno_core::url::Url) -> Result<(SendRequest, Connection), FetchError> {
        let Some(target) = url.host() else { return Err(FetchError::new("egress_failed", "URL has no host")) };
        let addr = self.resolve(&target, url.port_or_known_default().unwrap_or(80)).await?;
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let failed = |e: &dyn std::fmt::Display| FetchError::new("egress_failed", format!("{url}: {e}"));
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            let err = failed(&e);
            match io_syscode(&e) {
                Some(code) => err.with_syscode(code),
                None => err,
            }
        })?;
        if url.scheme() == "https" {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| failed(&e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, stream).await.map_err(|e| failed(&e))?;
            return handshake(tls, url).await;
        }
        handshake(stream, url).await
    }

    /// Sends the request over `sender`; resolves with the response head
    /// while the body keeps streaming.
    async fn send(&self, mut sender: SendRequest, url: &deno_core::url::Url, req: FetchRequest) -> Result<http::Response<Incoming>, FetchError> {
        let failed = |e: &dyn std::fmt::Display| FetchError::new("egress_failed", format!("{url}: {e}"));
        let path = &url[url::Position::BeforePath..];
        let mut builder = http::Request::builder().method(req.head.method.as_str()).uri(path);
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        builder = builder.header(http::header::HOST, host_header);
        for (k, v) in &req.head.headers {
            if !k.eq_ignore_ascii_case("host") {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
        let body: RequestBody = match req.body {
            Some(body) => StreamBody::new(body.map(|chunk| chunk.map(Frame::data))).boxed_unsync(),
            None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
        };
        let request = builder.body(body).map_err(|e| failed(&e))?;
        sender.send_request(request).await.map_err(|e| failure(url, &e))
    }
}

/// Response chunks buffered between the upstream and whoever reads them.
const BODY_CHUNKS: usize = 4;

type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, FetchError>;
type SendRequest = hyper::client::conn::http1::SendRequest<RequestBody>;
type Connection = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

async fn handshake<S>(io: S, url: &deno_core::url::Url) -> Result<(SendRequest, Connection), FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| failure(url, &e))?;
    // Its errors reach the exchange through the request and the body.
    Ok((sender, Box::pin(async move { drop(conn.await) })))
}

/// One exchange in flight: its response head, then its body.
pub struct Exchange {
    head: oneshot::Receiver<Result<ResponseHead, FetchError>>,
    body: BodyReceiver,
}

impl Exchange {
    /// The response, once its head arrived.
    pub async fn response(self) -> Result<FetchResponse, FetchError> {
        match self.head.await {
            Ok(Ok(head)) => Ok(FetchResponse { head, body: Box::pin(self.body) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FetchError::new("egress_failed", "the exchange ended without a response")),
        }
    }
}

/// A hyper error as the guest sees it, with Node's name for it if any.
fn failure(url: &deno_core::url::Url, e: &hyper::Error) -> FetchError {
    use std::error::Error as _;
    let mut message = format!("{url}: {e}");
    let mut source = e.source();
    let mut syscode = None;
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            syscode = syscode.or(io_syscode(io));
        }
        // The guest's own body failing (it aborted) says so itself.
        if let Some(fe) = s.downcast_ref::<FetchError>() {
            return fe.clone();
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        syscode = syscode.or(Some("ECONNRESET"));
    }
    let err = FetchError::new("egress_failed", message);
    match syscode {
        Some(code) => err.with_syscode(code),
        None => err,
    }
}

fn io_syscode(e: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    Some(match e.kind() {
        ConnectionRefused => "ECONNREFUSED",
        ConnectionReset | ConnectionAborted | UnexpectedEof => "ECONNRESET",
        BrokenPipe => "EPIPE",
        TimedOut => "ETIMEDOUT",
        HostUnreachable => "EHOSTUNREACH",
        NetworkUnreachable => "ENETUNREACH",
        AddrNotAvailable => "EADDRNOTAVAIL",
        _ => return None,
    })
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
        Box::pin(self.start(request).response())
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
        let e = egress(&["127.0.0.0/8", "::ffff:127.0.0.0/104"]);
        assert!(!e.permits("127.0.0.1:8080".parse().unwrap()));
        // The same socket, written as an IPv4-mapped IPv6 address.
        assert!(!e.permits("[::ffff:127.0.0.1]:8080".parse().unwrap()));
        assert!(!e.permits("[::ffff:7f00:1]:8080".parse().unwrap()));
        assert!(e.permits("127.0.0.1:8081".parse().unwrap()));
        assert!(e.permits("[::ffff:127.0.0.1]:8081".parse().unwrap()));
        // A node listening on a mapped address is refused as IPv4 too.
        let config = EgressConfig { allow: vec!["127.0.0.0/8".into()], ..Default::default() };
        let mapped = Egress::new(&config, vec!["[::ffff:127.0.0.1]:9090".parse().unwrap()]).unwrap();
        assert!(!mapped.permits("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn bad_allow_entries_are_config_errors() {
        let config = EgressConfig { allow: vec!["not-an-ip".into()], ..Default::default() };
        assert!(Egress::new(&config, vec![]).unwrap_err().contains("not-an-ip"));
    }
}
