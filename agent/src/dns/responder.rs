//! The DNS fault's responder: a UDP socket and a TCP listener on one address. Each query is
//! parsed (hickory-proto), decided by the [`Rules`], and either answered here or forwarded as
//! its original bytes to the upstream resolver over the same transport (over UDP through one
//! socket, with an id of that socket's own: `upstream_udp`), whose answer goes back as is. Malformed input never panics: a query with a readable header gets FORMERR, anything
//! shorter (or a stray response) is dropped.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::rules::{Decision, QueryType, Reply, Rules};
use super::upstream_udp::UpstreamUdp;

/// Queries (UDP) or connections (TCP) handled at once; beyond that new ones are dropped, so a
/// flood costs bounded memory and upstream sockets.
pub const MAX_IN_FLIGHT: usize = 256;
/// A TCP client that sends nothing for this long is disconnected (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest DNS message (UDP datagram, TCP length prefix).
const MAX_MESSAGE: usize = 65_535;
/// TTL of the answers made here: 0, so nothing a fault answered outlives it in a cache.
const ANSWER_TTL: u32 = 0;
/// The EDNS payload size we advertise when the query had EDNS (the DNS flag day's value).
const EDNS_PAYLOAD: u16 = 1232;
/// A DNS header's length: a shorter datagram has no id to answer to.
const HEADER_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("cannot bind the DNS responder to {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the DNS responder's sockets: {0}")]
    Socket(#[source] io::Error),
}

/// What the responder does, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct Config {
    pub rules: Rules,
    /// The resolver that answers what is not faulted (the pod's own).
    pub upstream: SocketAddr,
    /// How long to wait for the upstream's answer to one query.
    pub upstream_timeout: Duration,
    /// Where the sockets to the upstream are made.
    pub sockets: Arc<dyn UpstreamSockets>,
    /// What it did, for the fault's status.
    pub counters: Arc<Counters>,
}

/// Where the responder makes its sockets to the upstream: here, in the agent's own network
/// namespace ([`LocalSockets`]), or in the target's, so that a forwarded query leaves from
/// the pod as it would have without the fault (the fault's own implementation).
pub trait UpstreamSockets: Send + Sync + std::fmt::Debug {
    /// A socket for `upstream`: UDP bound to an ephemeral port, or TCP not yet connected.
    fn socket(
        &self,
        upstream: SocketAddr,
        transport: Transport,
    ) -> BoxFuture<'_, io::Result<OwnedFd>>;
}

/// Sockets in the caller's own namespace, without a mark.
#[derive(Debug, Default)]
pub struct LocalSockets;

impl UpstreamSockets for LocalSockets {
    fn socket(
        &self,
        upstream: SocketAddr,
        transport: Transport,
    ) -> BoxFuture<'_, io::Result<OwnedFd>> {
        Box::pin(async move { upstream_socket(upstream, transport, None) })
    }
}

/// A socket to `upstream` in the calling thread's network namespace: UDP bound to an
/// ephemeral port of its family, or TCP unconnected; non-blocking, close-on-exec, and with
/// `mark` (SO_MARK) when given, which the fault's redirect lets pass.
pub fn upstream_socket(
    upstream: SocketAddr,
    transport: Transport,
    mark: Option<u32>,
) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socket, sockopt};
    let fd: OwnedFd = match transport {
        Transport::Udp => {
            let any: SocketAddr = if upstream.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let udp = std::net::UdpSocket::bind(any)?;
            udp.set_nonblocking(true)?;
            udp.into()
        }
        Transport::Tcp => {
            let family = if upstream.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            socket(
                family,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )?
        }
    };
    if let Some(mark) = mark {
        setsockopt(&fd, sockopt::Mark, &mark)?;
    }
    Ok(fd)
}

/// What a responder did, read by the fault's status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Queries received (UDP datagrams and TCP messages).
    pub queries: AtomicU64,
    /// Answered, dropped or delayed by a rule.
    pub faulted: AtomicU64,
    /// Sent to the upstream (delayed ones included).
    pub forwarded: AtomicU64,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> (u64, u64, u64) {
        (
            self.queries.load(Ordering::Relaxed),
            self.faulted.load(Ordering::Relaxed),
            self.forwarded.load(Ordering::Relaxed),
        )
    }
}

/// A running responder. [`Responder::stop`] closes its sockets before it returns; dropping it
/// stops it too (its tasks are aborted, the sockets close as the runtime drops them).
#[derive(Debug)]
pub struct Responder {
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Responder {
    /// Binds UDP and TCP to `address`. With port 0, both get the same free port.
    pub async fn bind(address: SocketAddr, config: Config) -> Result<Self, ResponderError> {
        let bind_error = |source| ResponderError::Bind { address, source };
        // With port 0, the port the kernel picks for UDP may be taken for TCP: pick again.
        let attempts = if address.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(address).await.map_err(bind_error)?;
            let bound = udp.local_addr().map_err(ResponderError::Socket)?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Self::start(udp, tcp, config),
                Err(error) => last = Some(error),
            }
        }
        Err(bind_error(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrInUse, "no free port")
        })))
    }

    /// Serves on sockets made elsewhere (for instance inside the target's network namespace).
    /// Must be called within a tokio runtime.
    pub fn from_std(
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        config: Config,
    ) -> Result<Self, ResponderError> {
        udp.set_nonblocking(true).map_err(ResponderError::Socket)?;
        tcp.set_nonblocking(true).map_err(ResponderError::Socket)?;
        let udp = UdpSocket::from_std(udp).map_err(ResponderError::Socket)?;
        let tcp = TcpListener::from_std(tcp).map_err(ResponderError::Socket)?;
        Self::start(udp, tcp, config)
    }

    fn start(udp: UdpSocket, tcp: TcpListener, config: Config) -> Result<Self, ResponderError> {
        let address = udp.local_addr().map_err(ResponderError::Socket)?;
        let (shutdown, stopped) = watch::channel(false);
        let config = Arc::new(Shared {
            upstream_udp: UpstreamUdp::new(config.upstream),
            config,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(Arc::new(udp), config.clone(), stopped.clone()));
        tasks.spawn(serve_tcp(tcp, config, stopped));
        Ok(Responder {
            address,
            shutdown,
            tasks,
        })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving; when this returns, both sockets and all upstream sockets are closed.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What every task of one responder shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    upstream_udp: UpstreamUdp,
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    config: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut queries = JoinSet::new();
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        while queries.try_join_next().is_some() {}
        let received = tokio::select! {
            _ = stopped.changed() => break,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (length, client) = match received {
            Ok(received) => received,
            Err(error) => {
                // Transient (ICMP errors reported on the socket, memory): pause, do not spin.
                tracing::debug!(%error, "DNS responder: UDP receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if queries.len() >= MAX_IN_FLIGHT {
            tracing::debug!(%client, "DNS responder: too many queries in flight, one dropped");
            continue;
        }
        let query = buffer[..length].to_vec();
        let socket = socket.clone();
        let config = config.clone();
        queries.spawn(async move {
            if let Some(answer) = respond(&config, &query, Transport::Udp).await
                && let Err(error) = socket.send_to(&answer, client).await
            {
                tracing::debug!(%error, %client, "DNS responder: UDP send");
            }
        });
    }
    queries.shutdown().await;
}

async fn serve_tcp(listener: TcpListener, config: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and the like: pause, do not spin.
                tracing::debug!(%error, "DNS responder: TCP accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if connections.len() >= MAX_IN_FLIGHT {
            tracing::debug!("DNS responder: too many TCP connections, one closed");
            continue;
        }
        connections.spawn(serve_connection(stream, config.clone()));
    }
    connections.shutdown().await;
}

/// One TCP client: length-prefixed queries, answered in order (RFC 1035 4.2.2).
async fn serve_connection(mut stream: TcpStream, config: Arc<Shared>) {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(query)) => query,
            _ => return,
        };
        // A dropped query gets nothing, as over UDP: the client times out.
        if let Some(answer) = respond(&config, &query, Transport::Tcp).await
            && write_frame(&mut stream, &answer).await.is_err()
        {
            return;
        }
    }
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let length = usize::from(stream.read_u16().await?);
    let mut message = vec![0u8; length];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let length = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The answer to one query, or None for no answer.
async fn respond(shared: &Shared, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let config = &shared.config;
    Counters::count(&config.counters.queries);
    let delay = match handle(&config.rules, query, transport) {
        Handling::Reply(answer) => {
            Counters::count(&config.counters.faulted);
            return Some(answer);
        }
        Handling::Drop => {
            Counters::count(&config.counters.faulted);
            return None;
        }
        Handling::Forward(delay) => delay,
    };
    if !delay.is_zero() {
        Counters::count(&config.counters.faulted);
        tokio::time::sleep(delay).await;
    }
    Counters::count(&config.counters.forwarded);
    let forwarded = tokio::time::timeout(config.upstream_timeout, async {
        match transport {
            Transport::Udp => {
                shared
                    .upstream_udp
                    .exchange(config.sockets.as_ref(), query)
                    .await
            }
            Transport::Tcp => {
                let socket = config.sockets.socket(config.upstream, transport).await?;
                forward_tcp(socket, config.upstream, query).await
            }
        }
    })
    .await;
    match forwarded {
        Ok(Ok(answer)) => Some(answer),
        // Silence, as the client would have had from the upstream itself.
        Err(_elapsed) => {
            tracing::debug!(upstream = %config.upstream, "DNS responder: upstream timed out");
            None
        }
        // Refused, unreachable: a forwarder's usual SERVFAIL, so the client fails fast as it
        // would have without us.
        Ok(Err(error)) => {
            tracing::debug!(%error, upstream = %config.upstream, "DNS responder: upstream failed");
            let request = Message::from_vec(query).ok()?;
            reply_message(&request, &Reply::ServFail, transport)
        }
    }
}

async fn forward_tcp(socket: OwnedFd, upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let mut stream = socket.connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    read_frame(&mut stream).await
}

/// What to do with one query's bytes (no I/O).
#[derive(Debug, PartialEq, Eq)]
enum Handling {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing.
    Drop,
    /// Forward the original bytes after this delay (zero: at once).
    Forward(Duration),
}

fn handle(rules: &Rules, query: &[u8], transport: Transport) -> Handling {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => return format_error(query).map_or(Handling::Drop, Handling::Reply),
    };
    if request.metadata.message_type != MessageType::Query {
        // A response sent to a resolver: answering it could start a loop.
        return Handling::Drop;
    }
    // NOTIFY, UPDATE, or zero or several questions: not a lookup, the resolver's business.
    if request.metadata.op_code != OpCode::Query {
        return Handling::Forward(Duration::ZERO);
    }
    let [question] = request.queries.as_slice() else {
        return Handling::Forward(Duration::ZERO);
    };
    let query_type = match (question.query_class(), question.query_type()) {
        (DNSClass::IN, RecordType::A) => QueryType::A,
        (DNSClass::IN, RecordType::AAAA) => QueryType::Aaaa,
        _ => QueryType::Other,
    };
    match rules.decide(&question.name().to_ascii(), query_type) {
        Decision::Forward => Handling::Forward(Duration::ZERO),
        Decision::DelayThenForward(delay) => Handling::Forward(delay),
        Decision::Drop => Handling::Drop,
        Decision::Reply(reply) => {
            reply_message(&request, &reply, transport).map_or(Handling::Drop, Handling::Reply)
        }
    }
}

/// The answer made here: the question echoed (resolvers check it), the header flags a
/// recursive resolver would set, records with TTL 0. Over UDP, an answer larger than the client
/// takes is sent truncated (TC, no records), and the client asks again over TCP.
fn reply_message(request: &Message, reply: &Reply, transport: Transport) -> Option<Vec<u8>> {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    // We stand in for the pod's recursive resolver.
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    let name = request
        .queries
        .first()
        .map(|question| question.name().clone());
    match (reply, name) {
        (Reply::NxDomain, _) => response.metadata.response_code = ResponseCode::NXDomain,
        (Reply::ServFail, _) => response.metadata.response_code = ResponseCode::ServFail,
        (Reply::V4(addresses), Some(name)) => {
            response.answers = addresses
                .iter()
                .map(|address| Record::from_rdata(name.clone(), ANSWER_TTL, RData::A(A(*address))))
                .collect();
        }
        (Reply::V6(addresses), Some(name)) => {
            response.answers = addresses
                .iter()
                .map(|address| {
                    Record::from_rdata(name.clone(), ANSWER_TTL, RData::AAAA(AAAA(*address)))
                })
                .collect();
        }
        (Reply::V4(_) | Reply::V6(_), None) => {}
    }
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.edns = Some(edns);
    }
    let bytes = response.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > udp_limit(request) {
        return response.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// The largest UDP answer the client takes: 512 bytes without EDNS (RFC 1035), the size it
/// advertises with EDNS, up to ours.
fn udp_limit(request: &Message) -> usize {
    request.edns.as_ref().map_or(512, |edns| {
        usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD))
    })
}

/// FORMERR for a query whose header is readable but the rest is not; None (drop) for less than
/// a header or a response.
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let op_code = OpCode::from_u8((query[2] >> 3) & 0x0f);
    let mut response = Message::error_msg(id, op_code, ResponseCode::FormErr);
    response.metadata.recursion_desired = query[2] & 0x01 != 0;
    response.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;
    use crate::dns::rules::{Action, MAX_ADDRESSES, Pattern, Rule};

    fn rules() -> Rules {
        let rule = |pattern: &str, action| Rule {
            pattern: Pattern::parse(pattern).expect("pattern"),
            action,
        };
        let v4: IpAddr = "10.7.7.7".parse().expect("v4");
        let v6: IpAddr = "fd00::7".parse().expect("v6");
        Rules::new(vec![
            rule("nx.test", Action::NxDomain),
            rule("fail.test", Action::ServFail),
            rule("drop.test", Action::Drop),
            rule("slow.test", Action::Delay(Duration::from_millis(250))),
            rule("*.given.test", Action::Answer(vec![v4, v6])),
            rule("*.many.test", Action::Answer(vec![v6; MAX_ADDRESSES])),
        ])
        .expect("rules")
    }

    fn query(name: &str, record_type: RecordType, edns: bool) -> Message {
        let mut message = Message::query();
        message.metadata.id = 0x4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            record_type,
        ));
        if edns {
            message.edns = Some(Edns::new());
        }
        message
    }

    fn reply(handling: Handling) -> Message {
        match handling {
            Handling::Reply(bytes) => Message::from_vec(&bytes).expect("a valid reply"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn handle_query(name: &str, record_type: RecordType, edns: bool) -> Handling {
        let bytes = query(name, record_type, edns).to_vec().expect("encode");
        handle(&rules(), &bytes, Transport::Udp)
    }

    #[test]
    fn error_replies_echo_id_question_and_flags() {
        for (name, code) in [
            ("nx.test.", ResponseCode::NXDomain),
            ("FAIL.test.", ResponseCode::ServFail),
        ] {
            let answer = reply(handle_query(name, RecordType::A, false));
            assert_eq!(answer.metadata.id, 0x4242);
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(answer.metadata.response_code, code);
            assert!(answer.metadata.recursion_desired && answer.metadata.recursion_available);
            assert_eq!(answer.queries, query(name, RecordType::A, false).queries);
            assert!(answer.answers.is_empty());
            assert!(answer.edns.is_none());
        }
    }

    #[test]
    fn given_addresses_answer_their_family_with_ttl_zero() {
        let answer = reply(handle_query("a.given.test.", RecordType::A, true));
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        let data: Vec<_> = answer
            .answers
            .iter()
            .map(|record| record.data.clone())
            .collect();
        assert_eq!(data, vec![RData::A(A("10.7.7.7".parse().expect("v4")))]);
        assert!(answer.answers.iter().all(|record| record.ttl == 0));
        assert_eq!(
            answer.edns.map(|edns| edns.max_payload()),
            Some(EDNS_PAYLOAD)
        );

        let answer = reply(handle_query("a.given.test.", RecordType::AAAA, false));
        let data: Vec<_> = answer
            .answers
            .iter()
            .map(|record| record.data.clone())
            .collect();
        assert_eq!(
            data,
            vec![RData::AAAA(AAAA("fd00::7".parse().expect("v6")))]
        );

        let answer = reply(handle_query("a.given.test.", RecordType::MX, false));
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty());
    }

    #[test]
    fn drop_delay_and_forward() {
        assert_eq!(
            handle_query("drop.test.", RecordType::A, false),
            Handling::Drop
        );
        assert_eq!(
            handle_query("slow.test.", RecordType::A, false),
            Handling::Forward(Duration::from_millis(250))
        );
        assert_eq!(
            handle_query("ok.test.", RecordType::A, false),
            Handling::Forward(Duration::ZERO)
        );
        // given.test itself is not below given.test.
        assert_eq!(
            handle_query("given.test.", RecordType::A, false),
            Handling::Forward(Duration::ZERO)
        );
    }

    #[test]
    fn udp_answers_too_large_for_the_client_are_truncated() {
        let label = "a".repeat(63);
        let name = format!("{label}.{label}.{label}.many.test.");
        let mut message = query(&name, RecordType::AAAA, false);
        let bytes = message.to_vec().expect("encode");
        // 16 AAAA records after a 200-byte question: over 512 bytes.
        let answer = reply(handle(&rules(), &bytes, Transport::Udp));
        assert!(answer.metadata.truncation);
        assert!(answer.answers.is_empty());
        assert_eq!(answer.queries, message.queries);
        let answer = reply(handle(&rules(), &bytes, Transport::Tcp));
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), MAX_ADDRESSES);
        // With EDNS and room for it, UDP carries it all.
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.edns = Some(edns);
        let bytes = message.to_vec().expect("encode");
        let answer = reply(handle(&rules(), &bytes, Transport::Udp));
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), MAX_ADDRESSES);
    }

    #[test]
    fn other_classes_get_no_addresses() {
        let mut message = query("a.given.test.", RecordType::A, false);
        message.queries[0].set_query_class(DNSClass::CH);
        let answer = reply(handle(
            &rules(),
            &message.to_vec().expect("encode"),
            Transport::Udp,
        ));
        assert!(answer.answers.is_empty());
    }

    #[test]
    fn not_a_single_lookup_is_forwarded() {
        let mut message = query("nx.test.", RecordType::A, false);
        message.add_query(Query::query(
            Name::from_ascii("fail.test.").expect("name"),
            RecordType::A,
        ));
        assert_eq!(
            handle(&rules(), &message.to_vec().expect("encode"), Transport::Udp),
            Handling::Forward(Duration::ZERO)
        );
        let mut message = query("nx.test.", RecordType::A, false);
        message.queries.clear();
        assert_eq!(
            handle(&rules(), &message.to_vec().expect("encode"), Transport::Udp),
            Handling::Forward(Duration::ZERO)
        );
    }

    #[test]
    fn responses_are_dropped() {
        let message = query("nx.test.", RecordType::A, false).into_response();
        assert_eq!(
            handle(&rules(), &message.to_vec().expect("encode"), Transport::Udp),
            Handling::Drop
        );
    }

    #[test]
    fn malformed_input_gets_formerr_or_nothing() {
        // Shorter than a header: no id to answer to.
        for short in [
            &[][..],
            &[0x12],
            &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(handle(&rules(), short, Transport::Udp), Handling::Drop);
        }
        // A header announcing a question that is not there, then a truncated name.
        let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let answer = reply(handle(&rules(), &bytes, Transport::Udp));
        assert_eq!(answer.metadata.id, 0x1234);
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        assert!(answer.metadata.recursion_desired);
        bytes.extend_from_slice(&[63, b'a', b'b']);
        let answer = reply(handle(&rules(), &bytes, Transport::Udp));
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        // A malformed "response": dropped, not answered.
        let mut stray = bytes.clone();
        stray[2] |= 0x80;
        assert_eq!(handle(&rules(), &stray, Transport::Udp), Handling::Drop);
        // Every prefix and a few corruptions of a valid query: never a panic.
        let valid = query("a.given.test.", RecordType::A, true)
            .to_vec()
            .expect("encode");
        for end in 0..valid.len() {
            let _ = handle(&rules(), &valid[..end], Transport::Udp);
        }
        for index in 0..valid.len() {
            for value in [0x00, 0x3f, 0xc0, 0xff] {
                let mut corrupt = valid.clone();
                corrupt[index] = value;
                let _ = handle(&rules(), &corrupt, Transport::Tcp);
            }
        }
    }
}
