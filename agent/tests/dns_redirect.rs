//! The DNS fault's redirect against the build host's kernel (nf_tables, nat): in a throwaway
//! network namespace, queries to 10.9.9.9:53 and [fd00:9::9]:53 reach echo servers on the
//! namespace's loopback, over UDP and TCP, and their answers come from the nameserver's
//! address; marked traffic passes untouched; `nft` reads the table back; removal and the
//! socket's close take it away. Root only; the namespace is deleted on drop (also on failure),
//! taking everything in it along.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chaos_agent::dns::redirect::{
    BYPASS_MARK, Netfilter, Redirect, RedirectError, TABLE, netfilter_socket,
};
use chaos_netem::{OpenNetns, make_socket_in, socket_netns_cookie};
use nix::sched::{CloneFlags, setns};

const PORT: u16 = 5300;
const NAMESERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
const NAMESERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
const PATIENCE: Duration = Duration::from_millis(1500);
const NO_ANSWER: Duration = Duration::from_millis(600);

fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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

#[test]
fn dns_traffic_of_a_namespace_is_redirected_to_local_ports() -> Result<()> {
    let netns = TestNetns::new()?;
    let open = OpenNetns::open(std::path::Path::new(&netns.path()))?;
    let redirects = [
        Redirect {
            nameserver: NAMESERVER_V4.into(),
            port: PORT,
        },
        Redirect {
            nameserver: NAMESERVER_V6.into(),
            port: PORT,
        },
    ];

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
