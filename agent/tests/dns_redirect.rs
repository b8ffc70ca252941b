//! The DNS fault's redirect against the build host's kernel (nf_tables, nat): in a throwaway
//! network namespace, queries to 10.9.9.9:53 and [fd00:9::9]:53 reach echo servers on the
//! namespace's loopback, over UDP and TCP, and their answers come from the nameserver's
//! address; marked traffic passes untouched; `nft` reads the table back; removal and the
//! socket's close take it away; a flow redirected during the fault is not redirected any more
//! after its revert (its conntrack entry, which holds the NAT binding, is gone). Root only; the
//! namespace is deleted on drop (also on failure), taking everything in it along.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chaos_agent::dns::redirect::{
    BYPASS_MARK, Netfilter, Redirect, RedirectError, TABLE, netfilter_socket,
};
use chaos_netem::{OpenNetns, make_socket_in, socket_netns_cookie};
use chaos_tests::command::run_bounded;
use nix::sched::{CloneFlags, setns};

const PORT: u16 = 5300;
const NAMESERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
const NAMESERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
const PATIENCE: Duration = Duration::from_millis(1500);
const NO_ANSWER: Duration = Duration::from_millis(600);

/// `program args`, its stdout; an error with its stderr when it fails (the rigs' runner).
fn run(program: &str, args: &[&str]) -> Result<String> {
    Ok(run_bounded(program, args, Duration::from_secs(20))?
        .check()?
        .stdout)
}

/// `ip netns add chaos-test-redirect-...`, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> Result<TestNetns> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "chaos-test-redirect-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]).context("this test needs root and `ip netns`")?;
        let netns = TestNetns { name };
        // 10.9.9.0/24 and fd00:9::/64 on a veth pair (both ends in here), so the
        // nameservers are routable; nothing answers them.
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.ip(&[
            "link", "add", "chaos-r0", "type", "veth", "peer", "name", "chaos-r1",
        ])?;
        netns.ip(&["addr", "add", "10.9.9.1/24", "dev", "chaos-r0"])?;
        netns.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:9::1/64",
            "dev",
            "chaos-r0",
            "nodad",
        ])?;
        netns.ip(&["link", "set", "chaos-r0", "up"])?;
        netns.ip(&["link", "set", "chaos-r1", "up"])?;
        Ok(netns)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cleanup of {} failed: {err:#}", self.name);
        }
    }
}

/// Echo servers on 127.0.0.1:PORT and [::1]:PORT, UDP and TCP, on threads of their own
/// (the sockets stay in the namespace they were made in).
fn start_echo_servers() -> Result<()> {
    for address in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let udp = UdpSocket::bind((address, PORT))?;
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((len, from)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(&buffer[..len], from);
            }
        });
        let tcp = TcpListener::bind((address, PORT))?;
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 512];
                    while let Ok(len) = stream.read(&mut buffer) {
                        if len == 0 || stream.write_all(&buffer[..len]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    Ok(())
}

/// A UDP query to NS:53: the echo and where it came from, or `None` after `patience`.
fn udp_query(
    nameserver: IpAddr,
    mark: Option<u32>,
    patience: Duration,
) -> Result<Option<(Vec<u8>, SocketAddr)>> {
    let local: IpAddr = match nameserver {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, 0))?;
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    socket.set_read_timeout(Some(patience))?;
    let query = format!("query to {nameserver}");
    socket.send_to(query.as_bytes(), (nameserver, 53))?;
    let mut buffer = [0u8; 512];
    match socket.recv_from(&mut buffer) {
        Ok((len, from)) => {
            ensure!(&buffer[..len] == query.as_bytes(), "echo differs");
            Ok(Some((buffer[..len].to_vec(), from)))
        }
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

fn set_mark(socket: &UdpSocket, mark: u32) -> Result<()> {
    // SAFETY: a valid descriptor and a u32 passed with its own size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_MARK: {}", std::io::Error::last_os_error());
    Ok(())
}

fn tcp_echo(nameserver: IpAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(nameserver, 53), PATIENCE)
        .with_context(|| format!("TCP to {nameserver}:53"))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    ensure!(stream.peer_addr()? == SocketAddr::new(nameserver, 53));
    let query = format!("tcp query to {nameserver}");
    stream.write_all(query.as_bytes())?;
    let mut echo = vec![0u8; query.len()];
    stream.read_exact(&mut echo)?;
    ensure!(echo == query.as_bytes(), "TCP echo differs");
    Ok(())
}

fn assert_redirected(nameserver: IpAddr) -> Result<()> {
    let (_, from) = udp_query(nameserver, None, PATIENCE)?
        .with_context(|| format!("no UDP echo through {nameserver}:53"))?;
    ensure!(
        from == SocketAddr::new(nameserver, 53),
        "the answer came from {from}, not {nameserver}:53"
    );
    tcp_echo(nameserver)
}

/// A Netfilter socket in the namespace, made by chaos-netem's socket maker (no thread of
/// ours needs to be in there for it).
fn netfilter_in(netns: &OpenNetns) -> Result<Netfilter> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fd = runtime.block_on(make_socket_in(netns, Box::new(netfilter_socket)))?;
    Ok(Netfilter::from_fd(fd))
}

/// `nft -j list table inet chaos_dns` inside; `None` when there is no such table.
fn nft_table(netns: &str) -> Result<Option<serde_json::Value>> {
    let output = Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "-j", "list", "table", "inet", TABLE,
        ])
        .output()
        .context("cannot run nft (package nftables)")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            stderr.contains("No such file or directory"),
            "nft failed: {stderr}"
        );
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&output.stdout)?))
}

fn rule_count(table: &serde_json::Value) -> usize {
    table["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|item| item.get("rule").is_some())
                .count()
        })
        .unwrap_or(0)
}

/// The test's two nameservers (IPv4, IPv6), both to the loopback servers' port.
fn both_nameservers() -> [Redirect; 2] {
    [NAMESERVER_V4.into(), NAMESERVER_V6.into()].map(|nameserver: IpAddr| Redirect {
        nameserver,
        port: PORT,
    })
}

#[test]
fn dns_traffic_of_a_namespace_is_redirected_to_local_ports() -> Result<()> {
    let netns = TestNetns::new()?;
    let open = OpenNetns::open(std::path::Path::new(&netns.path()))?;
    let redirects = both_nameservers();

    // The clients and servers run on a thread that entered the namespace (and ends with
    // the test: no other thread of ours moves).
    let path = netns.path();
    let outcome = std::thread::spawn(move || -> Result<()> {
        setns(File::open(&path)?, CloneFlags::CLONE_NEWNET)?;
        start_echo_servers()?;
        // Before the redirect, nothing answers 10.9.9.9.
        ensure!(udp_query(NAMESERVER_V4.into(), None, NO_ANSWER)?.is_none());

        let mut netfilter = netfilter_in(&open)?;
        let probe = netfilter_socket()?;
        ensure!(
            socket_netns_cookie(&probe)? == socket_netns_cookie(&UdpSocket::bind("127.0.0.1:0")?)?
        );
        let installed = netfilter.install(&redirects)?;
        eprintln!("installed: {installed:?}");

        for nameserver in [IpAddr::from(NAMESERVER_V4), IpAddr::from(NAMESERVER_V6)] {
            assert_redirected(nameserver)?;
        }
        // The responder's own upstream traffic (marked) is not redirected.
        ensure!(
            udp_query(NAMESERVER_V4.into(), Some(BYPASS_MARK), NO_ANSWER)?.is_none(),
            "a query marked {BYPASS_MARK:#x} was redirected"
        );

        // nft reads back the chain and the 4 rules (2 nameservers x UDP, TCP).
        let name = path_name(&path);
        eprintln!(
            "{}",
            run(
                "ip",
                &[
                    "netns", "exec", &name, "nft", "list", "table", "inet", TABLE
                ]
            )?
        );
        let table = nft_table(&name)?.context("nft shows no table after install")?;
        let chain = table["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|item| item.get("chain")))
            .context("no chain in nft's listing")?;
        ensure!(
            chain["name"] == "redirect" && chain["type"] == "nat",
            "{chain}"
        );
        ensure!(
            chain["hook"] == "output" && chain["prio"] == -100,
            "{chain}"
        );
        ensure!(rule_count(&table) == 4, "rules: {table}");
        // And our own dump decodes them back to the redirects.
        ensure!(netfilter.installed()? == Some(redirects.to_vec()));

        // A second install (another socket, as another fault would) is refused and leaves
        // the first one as it was.
        let mut second = netfilter_in(&open)?;
        let refused = second.install(&redirects);
        ensure!(matches!(refused, Err(RedirectError::Exists)), "{refused:?}");
        // Nor can another socket delete a table owned by the first (only with owned tables).
        if installed.owned_by_socket {
            let foreign = second.remove();
            ensure!(
                matches!(&foreign, Err(error) if error.errno() == Some(libc::EPERM)),
                "{foreign:?}"
            );
        }
        ensure!(netfilter.installed()? == Some(redirects.to_vec()));
        ensure!(rule_count(&nft_table(&name)?.context("table gone")?) == 4);
        assert_redirected(NAMESERVER_V4.into())?;
        drop(second);
        ensure!(netfilter.installed()? == Some(redirects.to_vec()));

        // Removal: nft sees no table, queries are no longer redirected.
        ensure!(netfilter.remove()?, "remove found no table");
        ensure!(nft_table(&name)?.is_none(), "nft still shows the table");
        ensure!(udp_query(NAMESERVER_V4.into(), None, NO_ANSWER)?.is_none());
        ensure!(udp_query(NAMESERVER_V6.into(), None, NO_ANSWER)?.is_none());
        ensure!(!netfilter.remove()?, "a second remove found a table");
        ensure!(netfilter.installed()?.is_none());

        // Installed again, then the socket closed: an owned table goes with it.
        let again = netfilter.install(&redirects)?;
        ensure!(again == installed);
        assert_redirected(NAMESERVER_V6.into())?;
        drop(netfilter);
        if again.owned_by_socket {
            ensure!(
                nft_table(&name)?.is_none(),
                "the owned table outlived its socket"
            );
            ensure!(udp_query(NAMESERVER_V4.into(), None, NO_ANSWER)?.is_none());
        } else {
            // A kernel without owned tables keeps it until removed.
            ensure!(nft_table(&name)?.is_some());
            ensure!(netfilter_in(&open)?.remove()?);
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?;
    outcome?;
    Ok(())
}

fn path_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// One entry of `conntrack -L` (package conntrack): the original destination and the reply's
/// source, which a DNAT'd flow has rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    protocol: String,
    original_destination: SocketAddr,
    reply_source: SocketAddr,
}

/// The namespace's conntrack entries, both families, read by `conntrack -L` (the kernel's
/// table through a tool of its own, not through our code).
fn conntrack_flows(netns: &str) -> Result<Vec<Flow>> {
    let mut flows = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let listing = run(
            "ip",
            &["netns", "exec", netns, "conntrack", "-L", "-f", family],
        )
        .context("cannot list conntrack entries (package conntrack)")?;
        for line in listing.lines() {
            let Some(protocol) = line.split_whitespace().next() else {
                continue;
            };
            // key=value fields: the original tuple's come first, the reply's second.
            let values = |key: &str| -> Vec<&str> {
                line.split_whitespace()
                    .filter_map(|field| field.strip_prefix(key))
                    .collect()
            };
            let (dst, dport, src, sport) = (
                values("dst="),
                values("dport="),
                values("src="),
                values("sport="),
            );
            if dst.is_empty() || dport.is_empty() || src.len() < 2 || sport.len() < 2 {
                continue;
            }
            flows.push(Flow {
                protocol: protocol.to_string(),
                original_destination: SocketAddr::new(dst[0].parse()?, dport[0].parse()?),
                reply_source: SocketAddr::new(src[1].parse()?, sport[1].parse()?),
            });
        }
    }
    Ok(flows)
}

/// A UDP echo server on `address`, stopped (its socket closed) by [`Echo::stop`].
struct Echo {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Echoes with `prefix` in front.
    fn udp(address: SocketAddr, prefix: &'static [u8]) -> Result<Echo> {
        let socket = UdpSocket::bind(address).with_context(|| format!("bind {address}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut buffer) {
                    let mut answer = prefix.to_vec();
                    answer.extend_from_slice(&buffer[..len]);
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP echo server on `address` that serves one connection (its thread ends with it).
fn tcp_echo_once(address: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(address)?;
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        let mut buffer = [0u8; 512];
        while let Ok(len) = stream.read(&mut buffer) {
            if len == 0 || stream.write_all(&buffer[..len]).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// What a connected UDP socket gets back for `query`: the answer, or the error (a refusal
/// is ICMP port unreachable).
fn ask(socket: &UdpSocket, query: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    socket.send(query)?;
    let mut buffer = [0u8; 512];
    let len = socket.recv(&mut buffer)?;
    Ok(buffer[..len].to_vec())
}

/// The client port the stub resolver keeps for all its queries.
const CLIENT_PORT: u16 = 40053;

#[test]
fn a_flow_redirected_during_the_fault_is_not_redirected_after_its_revert() -> Result<()> {
    let netns = TestNetns::new()?;
    // The nameservers exist this time (local addresses), so a "real" nameserver can answer
    // after the revert.
    netns.ip(&["addr", "add", "10.9.9.9/32", "dev", "chaos-r1"])?;
    netns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:9::9/128",
        "dev",
        "chaos-r1",
        "nodad",
    ])?;
    let name = netns.name.clone();
    // Another NAT user in the namespace that stays (as a service mesh's output redirect
    // does): the kernel's NAT hooks stay, and with them the NAT of every conntrack entry that
    // has one. (Without any, the kernel unregisters them with the last nat chain.)
    let nft = |args: &[&str]| -> Result<String> {
        let mut full = vec!["netns", "exec", &name, "nft"];
        full.extend_from_slice(args);
        run("ip", &full)
    };
    nft(&["add", "table", "inet", "chaos_test_mesh"])?;
    nft(&["add chain inet chaos_test_mesh output { type nat hook output priority -100; }"])?;
    nft(&[
        "add rule inet chaos_test_mesh output ip daddr 10.7.7.7 tcp dport 15001 dnat ip to 127.0.0.1:15001",
    ])?;

    let open = OpenNetns::open(std::path::Path::new(&netns.path()))?;
    let redirects = both_nameservers();
    let path = netns.path();
    let outcome = std::thread::spawn(move || -> Result<()> {
        setns(File::open(&path)?, CloneFlags::CLONE_NEWNET)?;
        let name = path_name(&path);
        let loopback_v4 = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PORT);
        let loopback_v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), PORT);
        let mut responders = [
            Echo::udp(loopback_v4, b"fault:")?,
            Echo::udp(loopback_v6, b"fault:")?,
        ];
        tcp_echo_once(loopback_v4)?;

        let mut netfilter = netfilter_in(&open)?;
        netfilter.install(&redirects)?;

        // The stub resolver's sockets: fixed source port, connected to NS:53.
        let client_v4 = UdpSocket::bind((Ipv4Addr::new(10, 9, 9, 1), CLIENT_PORT))?;
        client_v4.connect((NAMESERVER_V4, 53))?;
        let client_v6 = UdpSocket::bind((Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1), CLIENT_PORT))?;
        client_v6.connect((NAMESERVER_V6, 53))?;
        for client in [&client_v4, &client_v6] {
            client.set_read_timeout(Some(PATIENCE))?;
            ensure!(ask(client, b"q1")? == b"fault:q1", "not redirected");
        }
        let mut tcp =
            TcpStream::connect_timeout(&SocketAddr::new(NAMESERVER_V4.into(), 53), PATIENCE)?;
        tcp.set_read_timeout(Some(PATIENCE))?;
        tcp.write_all(b"t1")?;
        let mut echo = [0u8; 2];
        tcp.read_exact(&mut echo)?;
        ensure!(&echo == b"t1");
        // Closed while the fault holds: its entry lingers (TIME_WAIT) with the binding.
        drop(tcp);
        // A flow the fault did not DNAT (to the nameserver, another port): it must stay.
        let other = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        other.send_to(b"x", (NAMESERVER_V4, 54))?;

        let flows = conntrack_flows(&name)?;
        eprintln!("during the fault: {flows:#?}");
        let redirected = |flows: &[Flow]| -> Vec<Flow> {
            flows
                .iter()
                .filter(|flow| [loopback_v4, loopback_v6].contains(&flow.reply_source))
                .cloned()
                .collect()
        };
        ensure!(
            redirected(&flows).len() == 3,
            "expected the 2 UDP flows and the TCP connection DNAT'd: {flows:#?}"
        );

        // The revert: the table goes, the flows it DNAT'd are forgotten, the responders stop.
        ensure!(netfilter.remove()?, "remove found no table");
        let forgotten = netfilter.forget_flows(&redirects)?;
        ensure!(forgotten == 3, "forgot {forgotten} flows, not 3");
        ensure!(
            netfilter.forget_flows(&redirects)? == 0,
            "flows left to forget"
        );
        for responder in &mut responders {
            responder.stop();
        }

        let flows = conntrack_flows(&name)?;
        eprintln!("after the revert: {flows:#?}");
        ensure!(
            redirected(&flows).is_empty(),
            "NAT bindings of the fault outlive its revert: {:#?}",
            redirected(&flows)
        );
        ensure!(
            flows.iter().any(|flow| flow.protocol == "udp"
                && flow.original_destination == SocketAddr::new(NAMESERVER_V4.into(), 54)),
            "the flow the fault did not DNAT is gone too: {flows:#?}"
        );

        // The same flows reach the real nameservers now.
        let _real = [
            Echo::udp(SocketAddr::new(NAMESERVER_V4.into(), 53), b"real:")?,
            Echo::udp(SocketAddr::new(NAMESERVER_V6.into(), 53), b"real:")?,
        ];
        for client in [&client_v4, &client_v6] {
            let answer = ask(client, b"q2")
                .with_context(|| format!("the same flow after the revert ({client:?})"))?;
            ensure!(answer == b"real:q2", "{}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?;
    outcome?;
    Ok(())
}
