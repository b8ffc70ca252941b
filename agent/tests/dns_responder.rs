//! The DNS fault's responder against a real resolver: dnsmasq (Debian's dnsmasq-base) answers
//! ok.test and *.faulted.test on loopback, the responder sits in front of it with rules, and
//! lookups over UDP and TCP see the faults while other names resolve through dnsmasq.
//! No root and no network namespace needed: everything is on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chaos_agent::dns::responder::{Config, Responder};
use chaos_agent::dns::rules::{Action, Pattern, Rule, Rules};
use chaos_tests::dns::Dnsmasq;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A client's patience for one query; the "no answer" cases wait this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const DELAY: Duration = Duration::from_millis(400);

/// dnsmasq on a free port of 127.0.0.1, answering ok.test and faulted.test (the shared rig,
/// killed and reaped on drop).
fn dnsmasq() -> Dnsmasq {
    Dnsmasq::on_free_port(
        Ipv4Addr::LOCALHOST,
        &[
            ("ok.test", Ipv4Addr::new(10, 1, 2, 3)),
            ("faulted.test", Ipv4Addr::new(10, 9, 9, 9)),
        ],
    )
    .expect("dnsmasq runs (apt-get install dnsmasq-base)")
}

fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket.local_addr().expect("address").port()
}

fn query_bytes(name: &str, record_type: RecordType) -> (u16, Vec<u8>) {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        record_type,
    ));
    (message.metadata.id, message.to_vec().expect("encode"))
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    socket.connect(server).await.expect("connect");
    socket.send(bytes).await.expect("send");
    let mut buffer = vec![0u8; 65_535];
    let length = tokio::time::timeout(wait, socket.recv(&mut buffer))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buffer[..length]).expect("a valid answer"))
}

async fn udp_lookup(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    wait: Duration,
) -> Option<Message> {
    let (id, bytes) = query_bytes(name, record_type);
    let answer = udp_exchange(server, &bytes, wait).await?;
    assert_eq!(answer.metadata.id, id);
    Some(answer)
}

async fn tcp_lookup(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    wait: Duration,
) -> Option<Message> {
    let (id, bytes) = query_bytes(name, record_type);
    let exchange = async {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        let length = u16::try_from(bytes.len()).expect("small");
        stream
            .write_all(&length.to_be_bytes())
            .await
            .expect("write");
        stream.write_all(&bytes).await.expect("write");
        let length = stream.read_u16().await.ok()?;
        let mut answer = vec![0u8; usize::from(length)];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(wait, exchange).await.ok()??;
    let answer = Message::from_vec(&answer).expect("a valid answer");
    assert_eq!(answer.metadata.id, id);
    Some(answer)
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

async fn lookup(
    transport: Transport,
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    wait: Duration,
) -> Option<Message> {
    match transport {
        Transport::Udp => udp_lookup(server, name, record_type, wait).await,
        Transport::Tcp => tcp_lookup(server, name, record_type, wait).await,
    }
}

fn addresses(answer: &Message) -> Vec<IpAddr> {
    answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(v4)) => Some(IpAddr::V4(*v4)),
            RData::AAAA(v6) => Some(IpAddr::V6(v6.0)),
            _ => None,
        })
        .collect()
}

fn rules() -> Rules {
    let rule = |pattern: &str, action| Rule {
        pattern: Pattern::parse(pattern).expect("pattern"),
        action,
    };
    Rules::new(vec![
        rule("nx.faulted.test", Action::NxDomain),
        rule("fail.faulted.test", Action::ServFail),
        rule("drop.faulted.test", Action::Drop),
        rule("slow.faulted.test", Action::Delay(DELAY)),
        rule(
            "*.given.faulted.test",
            Action::Answer(vec![
                "10.7.7.7".parse().expect("v4"),
                "fd00::7".parse().expect("v6"),
            ]),
        ),
    ])
    .expect("rules")
}

async fn responder(upstream: SocketAddr) -> Responder {
    Responder::bind(
        (Ipv4Addr::LOCALHOST, 0).into(),
        Config {
            rules: rules(),
            upstream,
            upstream_timeout: Duration::from_secs(3),
            sockets: std::sync::Arc::new(chaos_agent::dns::responder::LocalSockets),
            counters: Default::default(),
        },
    )
    .await
    .expect("responder binds")
}

#[tokio::test]
async fn faulted_names_fail_as_asked_and_others_resolve_through_dnsmasq() {
    let dnsmasq = dnsmasq();
    let responder = responder(dnsmasq.address).await;
    let server = responder.local_addr();
    for transport in [Transport::Udp, Transport::Tcp] {
        let look = |name: &'static str, record_type, wait| {
            lookup(transport, server, name, record_type, wait)
        };
        // Not faulted: dnsmasq's answer, relayed.
        let answer = look("ok.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: ok.test answered"));
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            addresses(&answer),
            ["10.1.2.3".parse::<IpAddr>().expect("ip")]
        );
        // Below faulted.test but matched by no rule: dnsmasq's address.
        let answer = look("other.faulted.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: other.faulted.test answered"));
        assert_eq!(
            addresses(&answer),
            ["10.9.9.9".parse::<IpAddr>().expect("ip")]
        );

        let answer = look("NX.Faulted.Test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: nx answered"));
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());

        let answer = look("fail.faulted.test.", RecordType::AAAA, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: fail answered"));
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);

        assert!(
            look("drop.faulted.test.", RecordType::A, CLIENT_TIMEOUT)
                .await
                .is_none(),
            "{transport:?}: drop.faulted.test got an answer"
        );

        let started = Instant::now();
        let answer = look("slow.faulted.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: slow answered"));
        let took = started.elapsed();
        assert!(took >= DELAY, "{transport:?}: answered after {took:?}");
        assert_eq!(
            addresses(&answer),
            ["10.9.9.9".parse::<IpAddr>().expect("ip")]
        );

        let answer = look("db.given.faulted.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: given A answered"));
        assert_eq!(
            addresses(&answer),
            ["10.7.7.7".parse::<IpAddr>().expect("ip")]
        );
        let answer = look("db.given.faulted.test.", RecordType::AAAA, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: given AAAA answered"));
        assert_eq!(
            addresses(&answer),
            ["fd00::7".parse::<IpAddr>().expect("ip")]
        );
        let answer = look("db.given.faulted.test.", RecordType::MX, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: given MX answered"));
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.answers.is_empty());
    }

    // Garbage with a readable header: FORMERR; less than a header: nothing. It keeps serving.
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'x'];
    let answer = udp_exchange(server, &garbage, CLIENT_TIMEOUT)
        .await
        .expect("FORMERR");
    assert_eq!(answer.metadata.id, 0xabcd);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    garbage.truncate(5);
    assert!(
        udp_exchange(server, &garbage, Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(
        udp_lookup(server, "ok.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .is_some()
    );

    // Stopped: both ports are free again at once.
    responder.stop().await;
    std::net::UdpSocket::bind(server).expect("the UDP port is free after stop");
    std::net::TcpListener::bind(server).expect("the TCP port is free after stop");
    drop(dnsmasq);
}

#[tokio::test]
async fn an_upstream_that_refuses_gets_servfail_and_faults_still_apply() {
    // Nothing listens on this port: UDP gets ICMP port unreachable, TCP a reset.
    let upstream: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let responder = responder(upstream).await;
    let server = responder.local_addr();
    for transport in [Transport::Udp, Transport::Tcp] {
        let answer = lookup(transport, server, "ok.test.", RecordType::A, CLIENT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{transport:?}: an answer"));
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        let answer = lookup(
            transport,
            server,
            "nx.faulted.test.",
            RecordType::A,
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|| panic!("{transport:?}: an answer"));
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }
}

#[tokio::test]
async fn dropping_the_responder_frees_its_ports() {
    let upstream: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let responder = responder(upstream).await;
    let server = responder.local_addr();
    drop(responder);
    // Aborted tasks are dropped by the runtime shortly after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let udp = std::net::UdpSocket::bind(server);
        let tcp = std::net::TcpListener::bind(server);
        if udp.is_ok() && tcp.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ports still bound: {udp:?} {tcp:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
