//! The responder's one UDP socket to its upstream, shared by every query it forwards over
//! UDP. Each forwarded query gets an id of this socket's own (a client's id may repeat
//! among clients), and its answer gets the client's id back: only those two bytes change.
//!
//! Why one socket and not one per query: the socket is made in the target's namespace, with
//! the pod's address, and marked past the redirect, so its flow to the nameserver is never
//! redirected, and conntrack keeps that flow's entry for 30-120 s after the socket is
//! closed. A client of the pod that then drew the same source port (a random one per lookup,
//! from the same range) would match the entry and pass the redirect: a faulted name would
//! resolve. A socket that stays open keeps its port: no client can draw it. (It also saves a
//! socket made in the namespace per query.)

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;

use super::responder::{Transport, UpstreamSockets};

/// The largest DNS message.
const MAX_MESSAGE: usize = 65_535;

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>;

/// Made at the first forwarded query; its reader ends when this is dropped.
#[derive(Debug)]
pub struct UpstreamUdp {
    upstream: SocketAddr,
    socket: OnceCell<(Arc<UdpSocket>, JoinHandle<()>)>,
    pending: Pending,
    next_id: AtomicU16,
}

impl UpstreamUdp {
    pub fn new(upstream: SocketAddr) -> UpstreamUdp {
        UpstreamUdp {
            upstream,
            socket: OnceCell::new(),
            pending: Arc::default(),
            next_id: AtomicU16::new(std::process::id() as u16),
        }
    }

    /// Sends `query` (at least a header's id) and waits for its answer, with the client's id
    /// restored. The caller bounds the wait; a query given up is forgotten.
    pub async fn exchange(
        &self,
        sockets: &dyn UpstreamSockets,
        query: &[u8],
    ) -> io::Result<Vec<u8>> {
        if query.len() < 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no DNS header"));
        }
        let socket = self.socket(sockets).await?;
        let (id, answer) = self.register();
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        let mut ours = query.to_vec();
        ours[..2].copy_from_slice(&id.to_be_bytes());
        socket.send(&ours).await?;
        let mut answer = answer
            .await
            .map_err(|_| io::Error::other("the upstream socket's reader ended"))?;
        answer[..2].copy_from_slice(&query[..2]);
        Ok(answer)
    }

    async fn socket(&self, sockets: &dyn UpstreamSockets) -> io::Result<Arc<UdpSocket>> {
        let (socket, _) = self
            .socket
            .get_or_try_init(|| async {
                let fd = sockets.socket(self.upstream, Transport::Udp).await?;
                let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(fd))?);
                socket.connect(self.upstream).await?;
                let reader = tokio::spawn(read_answers(socket.clone(), self.pending.clone()));
                Ok::<_, io::Error>((socket, reader))
            })
            .await?;
        Ok(socket.clone())
    }

    /// An id no query in flight has, and where its answer will come.
    fn register(&self) -> (u16, oneshot::Receiver<Vec<u8>>) {
        let (sender, receiver) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        // The responder bounds the queries in flight far below 65536: a free id is near.
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if !pending.contains_key(&id) {
                break id;
            }
        };
        pending.insert(id, sender);
        (id, receiver)
    }
}

impl Drop for UpstreamUdp {
    fn drop(&mut self) {
        if let Some((_, reader)) = self.socket.get() {
            reader.abort();
        }
    }
}

/// Removes a query's entry however its wait ends.
struct Forget<'a> {
    pending: &'a Pending,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Hands each answer to the query with its id; anything else (too short, an id nobody
/// waits for: a late answer) is dropped.
async fn read_answers(socket: Arc<UdpSocket>, pending: Pending) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let length = match socket.recv(&mut buffer).await {
            Ok(length) => length,
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                // The upstream refuses (ICMP port unreachable), for one query or all: each
                // waiting one fails, as on a socket of its own, and gets a SERVFAIL.
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                continue;
            }
            Err(error) => {
                // ICMP errors from the upstream (refused, unreachable) land here: the
                // queries waiting time out, as they would have on sockets of their own.
                tracing::debug!(%error, "DNS responder: upstream UDP receive");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if length < 2 {
            continue;
        }
        let id = u16::from_be_bytes([buffer[0], buffer[1]]);
        let waiting = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiting) = waiting {
            let _ = waiting.send(buffer[..length].to_vec());
        }
    }
}
