//! A real resolver for the DNS fault's tests (dnsmasq from Debian, answering names the test
//! gives and nothing else) and a client that asks it, or anyone, over UDP or TCP, from the
//! test's own network namespace or from inside another (a thread that entered it), with
//! hickory-proto's codec.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// dnsmasq on `address`, answering only the names it was given (no upstream, no hosts
/// file); killed and reaped on drop, also when a test fails.
pub struct Dnsmasq {
    child: Child,
    pub address: SocketAddr,
}

impl Dnsmasq {
    /// [`Dnsmasq::start`] on a free port of `listen` (another process may take the port
    /// between the check and dnsmasq's bind: then another).
    pub fn on_free_port(listen: Ipv4Addr, records: &[(&str, Ipv4Addr)]) -> Result<Dnsmasq> {
        let mut last = None;
        for _ in 0..8 {
            let port = UdpSocket::bind((listen, 0))?.local_addr()?.port();
            match Dnsmasq::start(listen, port, records) {
                Ok(dnsmasq) => return Ok(dnsmasq),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port for dnsmasq")))
    }

    /// Starts dnsmasq on `listen`:`port` with `records` (name, IPv4 address): each name and
    /// the names below it answer that address. Returns once it answers.
    pub fn start(listen: Ipv4Addr, port: u16, records: &[(&str, Ipv4Addr)]) -> Result<Dnsmasq> {
        let mut command = Command::new("dnsmasq");
        command.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file",
            "--user=root",
            "--bind-interfaces",
        ]);
        command
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--port={port}"));
        for (name, address) in records {
            command.arg(format!("--address=/{name}/{address}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        let mut dnsmasq = Dnsmasq {
            child,
            address: (listen, port).into(),
        };
        let probe = records.first().map_or("localhost", |(name, _)| name);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = dnsmasq.child.try_wait()? {
                bail!("dnsmasq exited at start ({status}): is port {port} of {listen} taken?");
            }
            if lookup(
                dnsmasq.address,
                probe,
                Transport::Udp,
                Duration::from_millis(200),
            )?
            .is_some()
            {
                return Ok(dnsmasq);
            }
        }
        bail!("dnsmasq on {} did not answer within 10 s", dnsmasq.address)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What a lookup came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these IPv4 addresses (none: no data).
    Addresses(Vec<Ipv4Addr>),
    /// Any other response code.
    Code(ResponseCode),
}

/// An A query for `name` to `server` over `transport`, in the calling thread's namespace;
/// None when nothing answered within `wait`.
pub fn lookup(
    server: SocketAddr,
    name: &str,
    transport: Transport,
    wait: Duration,
) -> Result<Option<Answer>> {
    exchange(server, name, transport, None, wait)
}

/// [`lookup`] over UDP from the local address `from` (a fixed source port: the same flow
/// each time, as a client that keeps its socket).
pub fn lookup_from(
    from: SocketAddr,
    server: SocketAddr,
    name: &str,
    wait: Duration,
) -> Result<Option<Answer>> {
    exchange(server, name, Transport::Udp, Some(from), wait)
}

fn exchange(
    server: SocketAddr,
    name: &str,
    transport: Transport,
    from: Option<SocketAddr>,
    wait: Duration,
) -> Result<Option<Answer>> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let bytes = query.to_vec()?;
    let reply = match transport {
        Transport::Udp => udp_exchange(server, from, &bytes, wait)?,
        Transport::Tcp => tcp_exchange(server, &bytes, wait)?,
    };
    let Some(reply) = reply else {
        return Ok(None);
    };
    let message = Message::from_vec(&reply).context("the answer does not decode")?;
    if message.metadata.id != query.metadata.id {
        bail!("the answer's id {} is not the query's", message.metadata.id);
    }
    Ok(Some(match message.metadata.response_code {
        ResponseCode::NoError => Answer::Addresses(
            message
                .answers
                .iter()
                .filter_map(|record| match &record.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect(),
        ),
        code => Answer::Code(code),
    }))
}

fn udp_exchange(
    server: SocketAddr,
    from: Option<SocketAddr>,
    bytes: &[u8],
    wait: Duration,
) -> Result<Option<Vec<u8>>> {
    let any: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(from.unwrap_or(any))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(wait))?;
    socket.send(bytes)?;
    let mut buffer = vec![0u8; 65_535];
    match socket.recv(&mut buffer) {
        Ok(length) => Ok(Some(buffer[..length].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        // ICMP port unreachable: nobody listens; for a lookup, no answer.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn tcp_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> Result<Option<Vec<u8>>> {
    let mut stream = match TcpStream::connect_timeout(&server, wait) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    stream.set_read_timeout(Some(wait))?;
    let mut frame = (bytes.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(bytes);
    stream.write_all(&frame)?;
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

/// Runs `work` on a thread that entered the network namespace at `netns` (setns), as a
/// process of that pod would run it.
pub fn in_netns<T: Send>(netns: &Path, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let namespace = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering the network namespace")?;
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
    })
}
