//! A cap on the connections a listener holds at once, counted from accept to close.
//!
//! Every accepted connection is a file descriptor, and a server that accepts without
//! bound hands anyone who can connect the power to use up its descriptors. For the
//! agent that would be worse than a refused client: a revert opens files and sockets
//! (the target's network namespace, a netlink socket, cgroup files, the journal), and a
//! revert that cannot open them leaves the fault on the node. So a connection is counted
//! from the moment it is accepted (a TLS handshake still in progress counts), and one
//! that arrives at the cap is accepted and closed at once.
//!
//! Why accept and close rather than stop accepting: a connection left in the kernel's
//! listen queue costs the server no descriptor, but the client hangs until its own
//! timeout, and the server cannot count or log it. Accepting and closing costs one
//! descriptor for an instant (the budget counts one per listener), gives the client an
//! immediate end of stream, and is counted (`refused_connections_total`) and logged.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one log line about refused connections per listener this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

/// The open and refused connections of a server's listeners, for its Prometheus
/// registry. Cloning shares the same series.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    open: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
}

impl ConnectionMetrics {
    /// Registers `open_connections{listener}` and `refused_connections_total{listener}`
    /// under the registry's prefix.
    pub fn register(registry: &mut Registry) -> ConnectionMetrics {
        let metrics = ConnectionMetrics::default();
        registry.register(
            "open_connections",
            "Connections held by a listener, from accept to close (TLS handshakes in progress count)",
            metrics.open.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed at once because the listener held its maximum",
            metrics.refused.clone(),
        );
        metrics
    }

    /// A cap of `max` connections for the listener named `listener` (a label value),
    /// with zero series so an alert sees 0 rather than nothing.
    pub fn limit(&self, listener: &'static str, max: usize) -> Arc<ConnectionLimit> {
        let labels = ListenerLabels { listener };
        let open = self.open.get_or_create(&labels).clone();
        open.set(0);
        let refused = self.refused.get_or_create(&labels).clone();
        refused.inc_by(0);
        Arc::new(ConnectionLimit {
            listener,
            max,
            slots: Arc::new(Semaphore::new(max)),
            open,
            refused,
            log: Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
        })
    }
}

/// How many connections one listener may hold at once.
#[derive(Debug)]
pub struct ConnectionLimit {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
    log: Mutex<RefusalLog>,
}

impl ConnectionLimit {
    /// A cap that no registry sees (tests, and servers without metrics).
    pub fn unregistered(listener: &'static str, max: usize) -> Arc<ConnectionLimit> {
        ConnectionMetrics::default().limit(listener, max)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for a connection just accepted from `peer`, or None at the cap (counted,
    /// and logged at most once per [`REFUSAL_LOG_INTERVAL`]).
    pub fn admit(&self, peer: SocketAddr) -> Option<ConnectionPermit> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(ConnectionPermit {
                    _slot: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                let due = self
                    .log
                    .lock()
                    .map(|mut log| log.refused(Instant::now()))
                    .unwrap_or(Some(1));
                if let Some(count) = due {
                    tracing::warn!(
                        listener = self.listener,
                        max = self.max,
                        %peer,
                        refused_since_last_line = count,
                        "connection closed at once: the listener holds its maximum of connections"
                    );
                }
                None
            }
        }
    }
}

/// A connection's slot; dropping it (the connection closed) frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Decides when a refusal is worth a log line: the first one, then at most one per
/// interval, each line carrying how many were refused since the previous one. A flood
/// of connections must not become a flood of log lines.
#[derive(Debug)]
struct RefusalLog {
    interval: Duration,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            last_line: None,
            unlogged: 0,
        }
    }

    /// Notes a refusal at `now`; Some(refusals since the last line) when a line is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The next connection the cap admits, with its slot. One that arrives at the cap is
/// closed here (dropped) and the wait goes on.
pub async fn accept(
    listener: &TcpListener,
    limit: &ConnectionLimit,
) -> (TcpStream, SocketAddr, ConnectionPermit) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before accept: try again
                // shortly rather than spin.
                tracing::warn!(listener = limit.listener, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(permit) = limit.admit(peer) {
            return (stream, peer, permit);
        }
    }
}

/// A connection that holds its slot until it is dropped. Reads, writes and the
/// connection information tonic puts into each request (the peer's address, its TLS
/// certificates) are those of the stream inside.
#[derive(Debug)]
pub struct Limited<S> {
    stream: S,
    _permit: ConnectionPermit,
}

impl<S> Limited<S> {
    pub fn new(stream: S, permit: ConnectionPermit) -> Limited<S> {
        Limited {
            stream,
            _permit: permit,
        }
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_first_refusal_is_logged_then_one_line_per_interval_with_the_count() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.refused(start), Some(1));
        assert_eq!(log.refused(start + Duration::from_secs(1)), None);
        assert_eq!(log.refused(start + Duration::from_secs(9)), None);
        // The line at the interval counts the two held back and this one.
        assert_eq!(log.refused(start + Duration::from_secs(10)), Some(3));
        assert_eq!(log.refused(start + Duration::from_secs(11)), None);
        assert_eq!(log.refused(start + Duration::from_secs(25)), Some(2));
    }

    #[test]
    fn slots_are_counted_refusals_too_and_a_closed_connection_frees_its_slot() {
        let mut registry = Registry::with_prefix("test");
        let metrics = ConnectionMetrics::register(&mut registry);
        let limit = metrics.limit("grpc", 2);
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let first = limit.admit(peer).expect("first");
        let _second = limit.admit(peer).expect("second");
        assert!(limit.admit(peer).is_none(), "a third over a cap of 2");
        assert!(limit.admit(peer).is_none(), "a fourth over a cap of 2");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("test_open_connections{listener=\"grpc\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("test_refused_connections_total{listener=\"grpc\"} 2"),
            "{text}"
        );
        drop(first);
        assert!(limit.admit(peer).is_some(), "the freed slot");
    }

    /// A plain TCP listener whose admitted connections are held (never read or written)
    /// until the test ends.
    async fn holding_server(max: usize) -> (SocketAddr, Arc<ConnectionLimit>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let limit = ConnectionLimit::unregistered("test", max);
        let accepting = Arc::clone(&limit);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (stream, _, permit) = accept(&listener, &accepting).await;
                held.push(Limited::new(stream, permit));
            }
        });
        (address, limit)
    }

    /// True if the server closed `stream` within 5 s (end of stream or a reset).
    async fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_at_once_and_held_ones_stay_open() {
        let (address, _limit) = holding_server(3).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(address).await.expect("connect"));
        }
        let mut over = TcpStream::connect(address).await.expect("connect");
        assert!(
            closed_by_server(&mut over).await,
            "over the cap: not closed"
        );
        // The held ones are open: a read finds nothing to read, not an end.
        let mut byte = [0u8; 1];
        for stream in &mut held {
            let read =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
            assert!(read.is_err(), "a held connection ended: {read:?}");
        }
    }
}
