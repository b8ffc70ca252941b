//! Accepted TCP connections, after their TLS handshake (or, for plain text, as they
//! are), as the stream of connections a tonic server serves (`serve_with_incoming`).
//! Each holds a slot of its listener's [`ConnectionLimit`] from accept to close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::limit::{ConnectionLimit, ConnectionPermit, Limited, accept};
use crate::reload::ReloadingTls;

/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection a tonic server gets from [`incoming`].
pub type TlsConnection = Limited<TlsStream<TcpStream>>;
/// A connection a tonic server gets from [`plain_incoming`].
pub type PlainConnection = Limited<TcpStream>;

/// Connections that completed a handshake with the configuration in use when they
/// arrived. Each handshake runs in its own task with `handshake_timeout`, so a client
/// that connects and says nothing holds up no one (but holds its slot until then). A
/// failed handshake (no client certificate, one from another CA, plain text) is logged
/// and the connection closed; it never reaches the server as an error, since that would
/// stop its serve loop. A connection over `limit` is closed at once. Accepting stops
/// when the stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    handshake_timeout: Duration,
    limit: Arc<ConnectionLimit>,
) -> ReceiverStream<std::io::Result<TlsConnection>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, handshake_timeout, limit, sender));
    ReceiverStream::new(receiver)
}

/// Accepted connections without TLS (`--insecure-plaintext`), within `limit`.
pub fn plain_incoming(
    listener: TcpListener,
    limit: Arc<ConnectionLimit>,
) -> ReceiverStream<std::io::Result<PlainConnection>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer, permit) = tokio::select! {
                accepted = accept(&listener, &limit) => accepted,
                () = sender.closed() => return,
            };
            set_nodelay(&stream, peer);
            if sender.send(Ok(Limited::new(stream, permit))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// As tonic's own listener does: a response's last frames must not wait for the ACK of
/// its first (Nagle).
fn set_nodelay(stream: &TcpStream, peer: SocketAddr) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    handshake_timeout: Duration,
    limit: Arc<ConnectionLimit>,
    sender: mpsc::Sender<std::io::Result<TlsConnection>>,
) {
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = accept(&listener, &limit) => accepted,
            () = sender.closed() => return,
        };
        set_nodelay(&stream, peer);
        let acceptor = TlsAcceptor::from(tls.config());
        tokio::spawn(handshake(
            acceptor,
            Admitted {
                stream,
                peer,
                permit,
            },
            handshake_timeout,
            sender.clone(),
        ));
    }
}

/// An accepted connection and its slot, before its handshake.
struct Admitted {
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
}

async fn handshake(
    acceptor: TlsAcceptor,
    admitted: Admitted,
    limit: Duration,
    sender: mpsc::Sender<std::io::Result<TlsConnection>>,
) {
    let Admitted {
        stream,
        peer,
        permit,
    } = admitted;
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(connection)) => {
            // Fails only if the server stopped meanwhile; the connection is then dropped.
            let _ = sender.send(Ok(Limited::new(connection, permit))).await;
        }
        Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
        Err(_) => tracing::info!(%peer, ?limit, "TLS handshake not finished in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{TestPki, files, test_pki, write};
    use crate::reload::Reload;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_stream::StreamExt;

    type Connection = tokio_rustls::client::TlsStream<TcpStream>;

    /// A TLS server on loopback that echoes what each accepted connection sends.
    async fn echo_server(
        pki: &TestPki,
        timeout: Duration,
    ) -> (SocketAddr, Arc<ReloadingTls>, tempfile::TempDir) {
        echo_server_holding(pki, timeout, 64).await
    }

    /// As [`echo_server`], holding at most `max` connections at once.
    async fn echo_server_holding(
        pki: &TestPki,
        timeout: Duration,
        max: usize,
    ) -> (SocketAddr, Arc<ReloadingTls>, tempfile::TempDir) {
        let limit = crate::limit::ConnectionLimit::unregistered("test", max);
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), pki);
        let tls = Arc::new(ReloadingTls::load(files(dir.path())).expect("load"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut connections = incoming(listener, Arc::clone(&tls), timeout, limit);
        tokio::spawn(async move {
            while let Some(Ok(mut connection)) = connections.next().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n @ 1..) = connection.read(&mut buffer).await {
                        if connection.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, tls, dir)
    }

    /// A client that trusts `trusted`'s CA and presents `identity`'s client certificate.
    async fn connect(
        address: SocketAddr,
        trusted: &TestPki,
        identity: Option<&TestPki>,
    ) -> std::io::Result<Connection> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(trusted.ca.as_bytes()).expect("CA"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some(pki) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(pki.client.as_bytes()).expect("cert")],
                    PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).expect("key"),
                )
                .expect("client auth"),
            None => builder.with_no_client_auth(),
        };
        let stream = TcpStream::connect(address).await?;
        let name = ServerName::try_from("server").expect("name");
        TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
    }

    /// Sends a line and reads it back: Ok only if the server accepted the connection.
    async fn echo(connection: &mut Connection, text: &str) -> std::io::Result<String> {
        connection.write_all(text.as_bytes()).await?;
        let mut buffer = vec![0u8; text.len()];
        tokio::time::timeout(Duration::from_secs(5), connection.read_exact(&mut buffer))
            .await
            .map_err(|_| std::io::Error::other("no echo in 5 s"))??;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }

    /// Ok only if a connection is made and served end to end.
    async fn served(address: SocketAddr, trusted: &TestPki, identity: Option<&TestPki>) -> bool {
        match connect(address, trusted, identity).await {
            Ok(mut connection) => echo(&mut connection, "ping").await.is_ok(),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn only_clients_with_a_certificate_from_the_ca_are_served() {
        let (pki, other) = (test_pki(), test_pki());
        let (address, _tls, _dir) = echo_server(&pki, HANDSHAKE_TIMEOUT).await;
        assert!(served(address, &pki, Some(&pki)).await, "the right client");
        assert!(!served(address, &pki, None).await, "no client certificate");
        assert!(!served(address, &pki, Some(&other)).await, "another CA");
        // Plain text: the server answers with no echo.
        let mut plain = TcpStream::connect(address).await.expect("connect");
        plain.write_all(b"ping\r\n\r\n").await.expect("send");
        let mut buffer = [0u8; 4];
        let answer = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buffer)).await;
        assert!(
            !matches!(answer, Ok(Ok(4)) if &buffer == b"ping"),
            "a plain-text client was served"
        );
        // A refused handshake left the server serving.
        assert!(served(address, &pki, Some(&pki)).await);
    }

    #[tokio::test]
    async fn a_client_that_says_nothing_holds_up_no_one_and_is_closed_at_the_limit() {
        let pki = test_pki();
        let limit = Duration::from_millis(300);
        let (address, _tls, _dir) = echo_server(&pki, limit).await;
        let mut silent = TcpStream::connect(address).await.expect("connect");
        let start = std::time::Instant::now();
        assert!(served(address, &pki, Some(&pki)).await, "served beside it");
        let mut buffer = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buffer))
            .await
            .expect("the silent connection was not closed in 5 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(start.elapsed() >= limit - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn after_a_rotation_new_connections_get_the_new_set_and_open_ones_stay() {
        let (old, new) = (test_pki(), test_pki());
        let (address, tls, dir) = echo_server(&old, HANDSHAKE_TIMEOUT).await;
        let mut open = connect(address, &old, Some(&old)).await.expect("connect");
        assert_eq!(echo(&mut open, "before").await.expect("echo"), "before");

        write(dir.path(), &new);
        assert_eq!(tls.reload().expect("reload"), Reload::Replaced);
        assert!(served(address, &new, Some(&new)).await, "the new set");
        assert!(
            !served(address, &old, Some(&old)).await,
            "a client of the old CA"
        );
        assert_eq!(echo(&mut open, "after").await.expect("echo"), "after");
    }

    /// True if the server closed `stream` within 5 s (end of stream or a reset).
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Tries `served` every 50 ms for at most 5 s: the server frees a slot once it has
    /// seen the connection close, a moment after the client closed it.
    async fn served_within_5s(address: SocketAddr, pki: &TestPki) -> bool {
        for _ in 0..100 {
            if served(address, pki, Some(pki)).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn handshakes_in_progress_hold_slots_until_their_time_runs_out() {
        let pki = test_pki();
        let handshake_limit = Duration::from_millis(500);
        let (address, _tls, _dir) = echo_server_holding(&pki, handshake_limit, 2).await;
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(address).await.expect("connect"));
        }
        assert!(
            !served(address, &pki, Some(&pki)).await,
            "a client was served while two silent connections held both slots"
        );
        for stream in &mut silent {
            assert!(closed_by_server(stream).await, "silent connection kept");
        }
        assert!(served_within_5s(address, &pki).await, "slots not freed");
    }

    #[tokio::test]
    async fn a_closed_connection_frees_its_slot_for_the_next_client() {
        let pki = test_pki();
        let (address, _tls, _dir) = echo_server_holding(&pki, HANDSHAKE_TIMEOUT, 1).await;
        let mut first = connect(address, &pki, Some(&pki)).await.expect("first");
        assert_eq!(echo(&mut first, "one").await.expect("echo"), "one");
        let mut over = TcpStream::connect(address).await.expect("connect");
        assert!(
            closed_by_server(&mut over).await,
            "over the cap: not closed"
        );
        assert_eq!(echo(&mut first, "two").await.expect("echo"), "two");
        drop(first);
        assert!(served_within_5s(address, &pki).await, "slot not freed");
    }

    #[tokio::test]
    async fn plain_text_connections_are_capped_the_same_way() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut connections = plain_incoming(
            listener,
            crate::limit::ConnectionLimit::unregistered("test", 1),
        );
        let mut held = TcpStream::connect(address).await.expect("connect");
        let mut admitted = tokio::time::timeout(Duration::from_secs(5), connections.next())
            .await
            .expect("admitted in 5 s")
            .expect("stream open")
            .expect("connection");
        let mut over = TcpStream::connect(address).await.expect("connect");
        assert!(
            closed_by_server(&mut over).await,
            "over the cap: not closed"
        );
        // The admitted one is the held one, open both ways.
        held.write_all(b"x").await.expect("send");
        let mut byte = [0u8; 1];
        admitted.read_exact(&mut byte).await.expect("read");
        assert_eq!(&byte, b"x");
    }
}
