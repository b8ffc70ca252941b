//! A real HTTPS server on loopback for the probe tests: rustls with a certificate from
//! `chaosctl certs` (the controller's, valid for localhost, 127.0.0.1 and ::1) and hyper's
//! HTTP/1.1 server. It records every request it answers and checks the bearer token and
//! a header itself, as a Prometheus behind an authenticating proxy would. Stopped (its
//! accept loop and connections aborted) on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinSet;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub tenant: Option<String>,
    pub user_agent: Option<String>,
    pub host: Option<String>,
}

/// What the server checks and counts, shared with the test.
#[derive(Debug, Default)]
struct State {
    seen: Mutex<Vec<SeenRequest>>,
    /// `/secure` answers 200 only to `Authorization: Bearer <this>` and `X-Tenant: shop`.
    expected_token: Mutex<String>,
    /// TCP connections accepted (a refused probe never makes one).
    connections: AtomicUsize,
}

pub struct TestHttpsServer {
    pub address: SocketAddr,
    state: Arc<State>,
    _tasks: JoinSet<()>,
}

/// The body of `/large`: more than a probe reads (1 MiB).
pub const LARGE_BODY_BYTES: usize = 2 << 20;

impl TestHttpsServer {
    /// Serves on 127.0.0.1 with `controller.pem` / `controller-key.pem` of `tls_dir`.
    pub async fn start(tls_dir: &Path) -> Result<TestHttpsServer> {
        let chain = CertificateDer::pem_file_iter(tls_dir.join("controller.pem"))
            .context("reading controller.pem")?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(tls_dir.join("controller-key.pem"))
            .context("reading controller-key.pem")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let shared = Arc::clone(&state);
        tasks.spawn(async move {
            // Connections live in this set, so dropping the accept loop ends them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, state) = (acceptor.clone(), Arc::clone(&shared));
                connections.spawn(async move {
                    // A client that does not trust the certificate aborts the handshake.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let answer = answer(&state, request);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                // Reap the finished ones so a long test does not accumulate them.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(TestHttpsServer {
            address,
            state,
            _tasks: tasks,
        })
    }

    pub fn expect_token(&self, token: &str) {
        *lock(&self.state.expected_token) = token.to_string();
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).clone()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn answer(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        authorization: header("authorization"),
        tenant: header("x-tenant"),
        user_agent: header("user-agent"),
        host: header("host"),
    };
    let (status, body): (StatusCode, Bytes) = match seen.path.as_str() {
        "/health" => (StatusCode::OK, Bytes::from_static(b"status: ok v2\n")),
        "/secure" => {
            let expected = format!("Bearer {}", lock(&state.expected_token));
            if seen.authorization.as_deref() == Some(expected.as_str())
                && seen.tenant.as_deref() == Some("shop")
            {
                (StatusCode::OK, Bytes::from_static(b"granted\n"))
            } else {
                (StatusCode::UNAUTHORIZED, Bytes::from_static(b"denied\n"))
            }
        }
        "/only-post" if seen.method == "POST" => (StatusCode::OK, Bytes::from_static(b"posted\n")),
        "/only-post" => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        "/unavailable" => (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"down\n"),
        ),
        "/large" => (StatusCode::OK, Bytes::from(vec![b'x'; LARGE_BODY_BYTES])),
        _ => (StatusCode::NOT_FOUND, Bytes::new()),
    };
    lock(&state.seen).push(seen);
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
