//! The probes' transport: TCP connections checked against the controller's probe
//! destinations, and one HTTP/1.1 exchange per connection (hyper's client), over rustls
//! (ring) for `https`.
//!
//! One connection per request rather than a pooled client, on purpose: each sample then
//! measures what a new client of the service sees (resolve, connect, TLS handshake,
//! answer), which is what a killed pod or rerouted traffic changes; a kept-alive
//! connection would keep talking to the old endpoint or hide the handshake. It also makes
//! every connection pass the destination check on the address actually connected to,
//! and lets the CA file and the bearer token be read at every probe (rotated files are
//! picked up without a restart).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::engine::probe::policy::ProbeDestinations;
use crate::engine::probe::url::{Host, ProbeUrl, Scheme};
use crate::engine::task::AbortOnDrop;

/// An address that resolves to many is tried on this many at most.
const MAX_ADDRESSES_TRIED: usize = 8;
/// The status line and headers of an answer are read into at most this much memory.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// One request of a probe.
pub struct Exchange<'a> {
    pub url: &'a ProbeUrl,
    pub method: hyper::Method,
    pub headers: &'a BTreeMap<String, String>,
    /// Read at every request; its content goes into `Authorization: Bearer …` only.
    pub bearer_token_file: Option<&'a Path>,
    /// The CA that signs the server's certificate (`https`); without one, the system's.
    pub ca_file: Option<&'a Path>,
    /// Where the connection may go; None: anywhere (`chaosctl run`, scheduled runs).
    pub destinations: Option<&'a ProbeDestinations>,
    /// Bodies beyond this are not read.
    pub body_limit: usize,
}

/// The answer: its status, and its body unless it was larger than the limit.
pub struct Answer {
    pub status: u16,
    pub body: Option<Bytes>,
}

/// Sends the request on a new connection and reads the answer (up to the body limit).
pub async fn send(exchange: &Exchange<'_>) -> Result<Answer, String> {
    let request = build_request(exchange)?;
    let url = exchange.url;
    let stream = connect(&url.host, url.port, exchange.destinations).await?;
    match url.scheme {
        Scheme::Http => exchange_on(stream, request, exchange.body_limit).await,
        Scheme::Https => {
            let config = tls_config(exchange.ca_file)?;
            let server_name = match &url.host {
                Host::Name(name) => ServerName::try_from(name.clone())
                    .map_err(|e| format!("{name} is not a TLS server name: {e}"))?,
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, stream)
                .await
                .map_err(|e| format!("TLS handshake with {}: {}", url.host, chain(&e)))?;
            exchange_on(tls, request, exchange.body_limit).await
        }
    }
}

/// A TCP connection to `host:port`, to the first address that accepts among those the
/// destinations allow.
pub async fn connect(
    host: &Host,
    port: u16,
    destinations: Option<&ProbeDestinations>,
) -> Result<TcpStream, String> {
    let resolved: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .collect(),
    };
    let allowed: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| destinations.is_none_or(|d| d.allows_connection(host, a.ip())))
        .collect();
    if allowed.is_empty() {
        let list: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
        return Err(match host {
            Host::Ip(_) => format!(
                "{host}:{port} is not in the controller's probe_destinations: not connected"
            ),
            Host::Name(_) => format!(
                "{host} resolves to [{}], none in the controller's probe_destinations: not \
                 connected",
                list.join(", ")
            ),
        });
    }
    let mut failures = Vec::new();
    for address in allowed.iter().take(MAX_ADDRESSES_TRIED) {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Requests are small and latency is what probes measure.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    Err(format!("connect {host}:{port}: {}", failures.join("; ")))
}

fn build_request(exchange: &Exchange<'_>) -> Result<hyper::Request<Empty<Bytes>>, String> {
    let url = exchange.url;
    let mut request = hyper::Request::builder()
        .method(exchange.method.clone())
        .uri(url.request_target())
        .header(HOST, url.host_header())
        .header(USER_AGENT, concat!("chaosctl/", env!("CARGO_PKG_VERSION")));
    for (name, value) in exchange.headers {
        // Validated with the experiment; checked again rather than trusted.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| "headers: a header name is not valid".to_string())?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
        request = request.header(name, value);
    }
    if let Some(path) = exchange.bearer_token_file {
        request = request.header(AUTHORIZATION, bearer(path)?);
    }
    request
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))
}

/// `Bearer TOKEN` from the file (surrounding whitespace removed). Errors name the file,
/// never its content.
fn bearer(path: &Path) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("bearer_token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("bearer_token_file {} is empty", path.display()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        format!(
            "bearer_token_file {}: the token has characters a header cannot carry",
            path.display()
        )
    })?;
    // Keeps it out of hyper's debug output.
    value.set_sensitive(true);
    Ok(value)
}

/// HTTP/1.1 on an open connection: the request, the status, the body up to `limit`.
async fn exchange_on<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
    limit: usize,
) -> Result<Answer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {}", chain(&e)))?;
    // The connection is driven by its own task, ended when this exchange ends (also when
    // the probe's timeout drops it half way).
    let _driver = AbortOnDrop::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {}", chain(&e)))?;
    let status = response.status().as_u16();
    let body = match Limited::new(response.into_body(), limit).collect().await {
        Ok(collected) => Some(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => None,
        Err(e) => return Err(format!("reading the body: {}", chain(e.as_ref()))),
    };
    Ok(Answer { status, body })
}

/// Only the given CA when there is a CA file (a probe pinned to a private CA is not
/// satisfied by a public certificate for the same name); the system's roots otherwise.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = match ca_file {
        Some(path) => Arc::new(roots_from_file(path)?),
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        roots
            .add(certificate)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(roots)
}

/// The system's CA certificates (SSL_CERT_FILE, SSL_CERT_DIR or the distribution's
/// bundle), read once.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "no system CA certificates found ({}): set ca_file",
                    errors.join("; ")
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// An error and its sources, `: `-separated (hyper's and rustls' top-level messages
/// alone rarely say what happened).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
