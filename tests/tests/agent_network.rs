//! Network faults through a real agent, against real network namespaces with a veth pair
//! (TestNetns) and a labelled containerd container joined to it as the target, the way a
//! CNI plugin hands a pod its namespace. Tests about processes of the node itself (and the
//! benches) use plain processes, with `--allow-host-processes`.
//!
//! `host_*` tests expect this host's kernel, which has no sch_netem. `vm_*` tests need
//! netem and are `#[ignore]`d on the host: run them in the Debian VM
//! (`--include-ignored`; see netem/README.md and BENCHMARKS.md), where they fail, never
//! skip, if netem is missing. Traffic goes only between a namespace and its host-side veth.

use chaos_tests::agent::{journal_len, state_dir};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{AgentOptions, TestAgent, make_certs};
use chaos_tests::command::run_checked;
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::netns::TestNetns;
use chaosctl::agents::client::AgentAddress;

/// A pod's container in `netns`: labelled like the CRI plugin's, joined to the namespace as
/// a CNI plugin joins a pod's. Its `container:` target is unique to this test.
fn pod_in(netns: &TestNetns) -> Result<TestContainer> {
    TestContainer::start(ContainerSpec {
        netns: Some(netns.path()),
        ..ContainerSpec::pod("chaos-test", "net-pod", "main")
    })
}

/// An agent that also takes processes of the node (no container) as targets.
fn agent_allowing_host_processes(
    tls: &tempfile::TempDir,
    state: &tempfile::TempDir,
    more: &[&str],
) -> Result<TestAgent> {
    let mut extra_args = vec!["--allow-host-processes".to_string()];
    extra_args.extend(more.iter().map(|arg| arg.to_string()));
    TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args,
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })
}

/// A `sleep` inside the namespace, a process of the node that belongs to no container: the
/// benches' `pid:` target (their peer, `nsenter -t PID`, needs a pid). Killed on drop.
struct Sleeper {
    child: Child,
}

impl Sleeper {
    fn start(netns: &TestNetns) -> Result<Sleeper> {
        // `ip netns exec` enters the namespace and execs sleep: the child's pid is sleep's.
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning a sleeper in the namespace")?;
        let sleeper = Sleeper { child };
        // Wait (bounded) until the exec happened and the process sits in the namespace.
        let wanted = std::fs::metadata(netns.path())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        use std::os::unix::fs::MetadataExt;
        while Instant::now() < deadline {
            if let Ok(meta) = std::fs::metadata(format!("/proc/{}/ns/net", sleeper.pid()))
                && meta.ino() == wanted.ino()
            {
                return Ok(sleeper);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the sleeper never entered {}", netns.name())
    }

    /// A `sleep` in this test's own namespaces: a process of the node, in the node's
    /// network namespace.
    fn on_node() -> Result<Sleeper> {
        let child = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning a sleeper")?;
        Ok(Sleeper { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn target(&self) -> String {
        format!("pid:{}", self.pid())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn network(target: &str, duration: Duration, fault: api::NetworkFault) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Network(fault)),
        ..Default::default()
    }
}

fn delay(ms: u64) -> api::NetworkFault {
    api::NetworkFault {
        delay_us: ms * 1000,
        ..Default::default()
    }
}

/// The qdiscs of the namespace's eth0 as `tc` prints them (the independent witness).
fn qdiscs(netns: &TestNetns) -> Result<String> {
    let out = netns
        .exec(&["tc", "-d", "qdisc", "show", "dev", "eth0"])?
        .check()?;
    Ok(out.stdout)
}

fn installed(fault: &api::Fault) -> String {
    match &fault.status {
        Some(api::fault::Status::Network(n)) => n.installed.clone(),
        other => panic!("no network status: {other:?}"),
    }
}

/// Requires a kernel with netem (the VM); fails with a clear message elsewhere.

#[tokio::test(flavor = "multi_thread")]
async fn host_network_fault_without_netem_is_refused_and_changes_nothing() -> Result<()> {
    let (_tls, state, agent, netns, pod) = rig()?;
    let mut client = agent.client().await?;

    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    let netem = caps
        .qdiscs
        .iter()
        .find(|q| q.name == "netem")
        .context("capabilities list no netem entry")?;
    ensure!(
        !netem.available,
        "this test expects the host kernel without sch_netem, but Capabilities says {netem:?}: run it on the host"
    );
    // "missing" with a module index; "unknown (...)" on a kernel that ships none (this
    // host): then the kernel's own answer to the request decides, checked below.
    assert!(
        netem.detail == "missing" || netem.detail.starts_with("unknown"),
        "{netem:?}"
    );
    // Every kind the agent implements is listed, each with its privileges.
    let privileged: Vec<i32> = caps.kind_privileges.iter().map(|k| k.kind).collect();
    assert_eq!(caps.supported_kinds, privileged);
    for kind in [
        api::FaultKind::Process,
        api::FaultKind::Network,
        api::FaultKind::Blackhole,
        api::FaultKind::Cpu,
        api::FaultKind::Memory,
    ] {
        assert!(
            caps.supported_kinds.contains(&(kind as i32)),
            "{kind:?} missing from {:?}",
            caps.supported_kinds
        );
    }

    let before = qdiscs(&netns)?;
    let status = client
        .inject(network(
            &pod.target(),
            Duration::from_secs(30),
            api::NetworkFault {
                delay_us: 100_000,
                jitter_us: 10_000,
                loss_percent: 5.0,
                ..Default::default()
            },
        ))
        .await
        .expect_err("a network fault on a kernel without netem must fail");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("sch_netem"), "{status:?}");
    assert!(
        status.message().contains("kernel-modules-extra"),
        "{status:?}"
    );
    assert_eq!(qdiscs(&netns)?, before, "the interface changed");
    assert_eq!(journal_len(state.path()), 0, "a journal record was left");
    let list = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner();
    assert!(list.faults.is_empty(), "{:?}", list.faults);
    Ok(())
}

/// Everything a fault could leave on the namespace's eth0: qdiscs (with options), root
/// and ingress filters, and the links (an ifb would show here).
fn interface_state(netns: &TestNetns) -> Result<String> {
    // htb prints a packet counter among its options: not state, so left out.
    let mut text = qdiscs(netns)?
        .lines()
        .map(|line| {
            let mut words: Vec<&str> = line.split(' ').collect();
            if let Some(at) = words.iter().position(|w| *w == "direct_packets_stat") {
                words.drain(at..(at + 2).min(words.len()));
            }
            words.join(" ") + "\n"
        })
        .collect::<String>();
    for args in [
        &["tc", "filter", "show", "dev", "eth0"][..],
        &["tc", "filter", "show", "dev", "eth0", "ingress"][..],
        &["ip", "-o", "link", "show"][..],
    ] {
        text += &netns.exec(args)?.check()?.stdout;
    }
    Ok(text)
}

/// Bytes the bandwidth test sends, and the limit it sets: about 2 s of traffic.
const TRANSFER_BYTES: usize = 500_000;
const LIMIT_BYTES_PER_SECOND: u64 = 250_000;

/// A TCP sink: each connection is read to its end, then answered with one byte, so the
/// sender's clock stops only when everything arrived (not when it sat in a send buffer).
fn sink(listener: TcpListener) {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            let mut received = Vec::new();
            if stream.read_to_end(&mut received).is_ok() {
                let _ = stream.write_all(b"k");
            }
        }
    });
}

/// How long [`TRANSFER_BYTES`] take from this thread's namespace to `addr`, received.
fn transfer_time(addr: SocketAddr) -> Result<Duration> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&vec![0x5a; TRANSFER_BYTES])?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer)?;
    Ok(started.elapsed())
}

/// The rate a transfer of `took` shows, counting out the bytes the tbf's bucket lets
/// through at once.
fn shown_rate(took: Duration, burst_bytes: u64) -> f64 {
    (TRANSFER_BYTES as u64 - burst_bytes) as f64 / took.as_secs_f64()
}

/// A bandwidth limit alone is a tbf, which this host's kernel has (it has no netem):
/// egress and ingress (through an ifb) slow a real transfer to the limit, the status
/// reads back what the kernel installed, and revert leaves the interface as it was,
/// with no ifb behind.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_bandwidth_limit_is_a_tbf_that_slows_a_transfer_both_ways_and_restores_exactly()
-> Result<()> {
    let (_tls, state, agent, netns, pod) = rig()?;
    let before = interface_state(&netns)?;
    // The agent's bucket: 10 ms of traffic but at least 16 KiB; its queue: 100 ms more.
    let burst_bytes = 16_384;
    let expected_status = format!(
        "tbf ca05: rate {}bit burst {burst_bytes}b limit {}b",
        LIMIT_BYTES_PER_SECOND * 8,
        burst_bytes + LIMIT_BYTES_PER_SECOND / 10
    );
    let limit = |direction: api::Direction| {
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                rate_bytes_per_second: LIMIT_BYTES_PER_SECOND,
                direction: direction as i32,
                ..Default::default()
            },
        )
    };

    // Egress: from inside the namespace to a sink on the host side.
    let outside = TcpListener::bind((netns.host_ip(), 0))?;
    let outside_addr = outside.local_addr()?;
    sink(outside);
    let free = inside(&netns, move || transfer_time(outside_addr))?;
    let fault = inject(&agent, limit(api::Direction::Egress)).await?;
    assert_eq!(installed(&fault), expected_status);
    assert!(
        qdiscs(&netns)?.contains("tbf ca05: root"),
        "{}",
        qdiscs(&netns)?
    );
    assert_eq!(journal_len(state.path()), 1);
    let limited = inside(&netns, move || transfer_time(outside_addr))?;
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before, "egress revert");
    let rate = shown_rate(limited, burst_bytes);
    println!("egress: {free:?} free, {limited:?} limited ({rate:.0} B/s)");
    let wanted = LIMIT_BYTES_PER_SECOND as f64;
    assert!(
        free < limited / 4 && (0.7 * wanted..=1.05 * wanted).contains(&rate),
        "egress: {free:?} free, {limited:?} limited: {rate:.0} B/s against a limit of {wanted}"
    );

    // Ingress: from the host side to a sink inside the namespace.
    let inside_addr = inside(&netns, {
        let ip = netns.inner_ip();
        move || {
            let listener = TcpListener::bind((ip, 0))?;
            let addr = listener.local_addr()?;
            sink(listener);
            Ok(addr)
        }
    })?;
    let free = transfer_time(inside_addr)?;
    let fault = inject(&agent, limit(api::Direction::Ingress)).await?;
    assert!(
        installed(&fault).ends_with(&expected_status),
        "{}",
        installed(&fault)
    );
    let limited = transfer_time(inside_addr)?;
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before, "ingress revert");
    assert_eq!(journal_len(state.path()), 0);
    let rate = shown_rate(limited, burst_bytes);
    println!("ingress: {free:?} free, {limited:?} limited ({rate:.0} B/s)");
    assert!(
        free < limited / 4 && (0.7 * wanted..=1.05 * wanted).contains(&rate),
        "ingress: {free:?} free, {limited:?} limited: {rate:.0} B/s against a limit of {wanted}"
    );
    Ok(())
}

/// A rate alone with its bucket and queue set (`rate_burst_bytes`, `rate_queue_bytes`):
/// the kernel's tbf holds them as asked, egress and on the ingress ifb, read back from
/// the kernel's dump by the agent (the status) and by tc, and the revert removes it,
/// leaving the interface as it was. A bucket or queue below one full frame of the veth
/// (MTU 1500 + 14), and sizes beside netem impairments, are refused before anything
/// changes.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_rate_with_its_bucket_and_queue_set_installs_them_as_asked_and_reverts() -> Result<()>
{
    let (_tls, state, agent, netns, pod) = rig()?;
    let before = interface_state(&netns)?;
    // At 250000 B/s a 64 ns tick is 0.016 bytes: the bucket, which the kernel dumps as a
    // time, reads back to the byte.
    let (burst, queue) = (4_000, 60_000);
    let sized = |direction: api::Direction, burst: u64, queue: u64| {
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                rate_bytes_per_second: LIMIT_BYTES_PER_SECOND,
                rate_burst_bytes: burst,
                rate_queue_bytes: queue,
                direction: direction as i32,
                ..Default::default()
            },
        )
    };
    let expected_status = format!(
        "tbf ca05: rate {}bit burst {burst}b limit {queue}b",
        LIMIT_BYTES_PER_SECOND * 8
    );

    let fault = inject(&agent, sized(api::Direction::Egress, burst, queue)).await?;
    assert_eq!(installed(&fault), expected_status);
    let shown = qdiscs(&netns)?;
    println!("egress: {shown}");
    // tc shows the queue as the latency it adds beyond the bucket: (60000 - 4000) B at
    // 250000 B/s = 224 ms.
    let latency_ms = (queue - burst) * 1000 / LIMIT_BYTES_PER_SECOND;
    ensure!(
        shown.contains("tbf ca05: root")
            && shown.contains(&format!("burst {burst}b"))
            && shown.contains(&format!("lat {latency_ms}ms")),
        "tc shows another tbf: {shown}"
    );
    assert_eq!(journal_len(state.path()), 1);
    let reverted = revert(&agent, &fault.id).await?;
    assert_eq!(
        reverted.state,
        api::FaultState::Reverted as i32,
        "{reverted:?}"
    );
    assert_eq!(interface_state(&netns)?, before, "egress revert");
    assert!(!qdiscs(&netns)?.contains("tbf"), "{}", qdiscs(&netns)?);
    assert_eq!(journal_len(state.path()), 0);

    // Ingress: the same tbf on the ifb made for the fault, gone with it at the revert.
    let fault = inject(&agent, sized(api::Direction::Ingress, burst, queue)).await?;
    assert!(
        installed(&fault).ends_with(&expected_status),
        "{}",
        installed(&fault)
    );
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before, "ingress revert");
    assert_eq!(journal_len(state.path()), 0);

    // One byte short of a full frame of eth0, as bucket or as queue; and sizes for a rate
    // that netem would take (beside a delay).
    let mut client = agent.client().await?;
    let netem_rate = network(
        &pod.target(),
        Duration::from_secs(30),
        api::NetworkFault {
            delay_us: 10_000,
            rate_bytes_per_second: LIMIT_BYTES_PER_SECOND,
            rate_burst_bytes: burst,
            ..Default::default()
        },
    );
    for (label, request, field, reason) in [
        (
            "bucket below a frame",
            sized(api::Direction::Egress, 1513, 0),
            "network.rate_burst_bytes",
            "MTU 1500",
        ),
        (
            "queue below a frame",
            sized(api::Direction::Ingress, 0, 1513),
            "network.rate_queue_bytes",
            "MTU 1500",
        ),
        (
            "beside netem",
            netem_rate,
            "network.rate_burst_bytes",
            "netem's",
        ),
    ] {
        let status = client.inject(request).await.expect_err(label);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{label}: {status:?}"
        );
        ensure!(
            status.message().contains(field) && status.message().contains(reason),
            "{label}: {status:?}"
        );
    }
    assert_eq!(interface_state(&netns)?, before, "after the refusals");
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

fn blackhole(target: &str, duration: Duration, fault: api::BlackholeFault) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Blackhole(fault)),
        ..Default::default()
    }
}

/// On this host (no sch_netem, no sch_prio) targeted, ingress and blackhole requests fail
/// with FailedPrecondition naming the missing module, and leave the interface exactly as
/// it was (with an ingress qdisc and filter already there) and no ifb behind.
#[tokio::test(flavor = "multi_thread")]
async fn host_targeted_ingress_and_blackhole_requests_fail_and_change_nothing() -> Result<()> {
    let (_tls, state, agent, netns, pod) = rig()?;
    let mut client = agent.client().await?;
    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    for name in ["prio", "u32", "ifb", "mirred"] {
        ensure!(
            caps.qdiscs.iter().any(|q| q.name == name),
            "capabilities lack {name}: {:?}",
            caps.qdiscs
        );
    }
    install_user_ingress(&netns)?;
    let before = interface_state(&netns)?;
    let target = pod.target();
    let ttl = Duration::from_secs(30);
    let cases: Vec<(&str, api::InjectRequest, &str)> = vec![
        (
            "port filter",
            network(
                &target,
                ttl,
                api::NetworkFault {
                    ports: vec![5432],
                    ..delay(50)
                },
            ),
            "sch_prio",
        ),
        (
            "destination + exclusion",
            network(
                &target,
                ttl,
                api::NetworkFault {
                    destinations: vec!["10.0.0.0/8".into()],
                    exclude_ports: vec![53],
                    protocol: api::Protocol::Tcp as i32,
                    ..delay(50)
                },
            ),
            "sch_prio",
        ),
        (
            "ingress",
            network(
                &target,
                ttl,
                api::NetworkFault {
                    direction: api::Direction::Ingress as i32,
                    ..delay(50)
                },
            ),
            "sch_netem",
        ),
        (
            "blackhole",
            blackhole(&target, ttl, api::BlackholeFault::default()),
            "sch_netem",
        ),
        (
            "blackhole of a port",
            blackhole(
                &target,
                ttl,
                api::BlackholeFault {
                    ports: vec![80],
                    ..Default::default()
                },
            ),
            "sch_prio",
        ),
    ];
    for (label, request, module) in cases {
        let status = client
            .inject(request)
            .await
            .expect_err("this host cannot serve the request");
        assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{label}: {status:?}"
        );
        assert!(
            status.message().contains(module),
            "{label}: expected {module} in {status:?}"
        );
        assert_eq!(
            interface_state(&netns)?,
            before,
            "{label} changed the interface"
        );
        assert_eq!(
            journal_len(state.path()),
            0,
            "{label} left a journal record"
        );
    }
    assert!(!before.contains("chaos-ifb"), "{before}");
    let list = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner();
    assert!(list.faults.is_empty(), "{:?}", list.faults);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_node_scope_needs_the_flag_and_ipv6_targets_pass_validation() -> Result<()> {
    let (_tls, state, agent, netns, pod) = rig()?;
    let mut client = agent.client().await?;
    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    assert!(!caps.node_scope_allowed);
    let status = client
        .inject(blackhole(
            &pod.target(),
            Duration::from_secs(10),
            api::BlackholeFault {
                node_scope: true,
                ..Default::default()
            },
        ))
        .await
        .expect_err("node scope without --allow-node-scope");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("--allow-node-scope"),
        "{status:?}"
    );

    let before = interface_state(&netns)?;
    let status = client
        .inject(network(
            &pod.target(),
            Duration::from_secs(10),
            api::NetworkFault {
                destinations: vec!["fd00::/8".into()],
                ..delay(50)
            },
        ))
        .await
        .expect_err("this host has no sch_netem");
    // IPv6 destinations are valid: what stops the request here is the host's kernel
    // (no sch_netem, no sch_prio), and nothing changed.
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("sch_"), "{status:?}");
    assert_eq!(interface_state(&netns)?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

fn rate(bytes_per_second: u64) -> api::NetworkFault {
    api::NetworkFault {
        rate_bytes_per_second: bytes_per_second,
        ..Default::default()
    }
}

/// The qdiscs of an interface of this test's own (the node's) namespace, as `tc` prints
/// them. Only the host ends of veths that tests create are ever named.
fn node_qdiscs(interface: &str) -> Result<String> {
    Ok(run_checked(
        "tc",
        &["-d", "qdisc", "show", "dev", interface],
        Duration::from_secs(10),
    )?
    .stdout)
}

/// A network fault acts on the node when its target shares the node's network namespace,
/// whatever the target form: a process of the node (`pid:`) and a hostNetwork pod's
/// container (`container:`) are refused without `--allow-node-scope`, dry runs too, with
/// the reason. With the flag the agent keeps its own port reachable (the dry run shows the
/// exclusions), which needs sch_prio: this host has none, so the request fails naming it.
/// Nothing changes on the node either way.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_network_fault_in_the_nodes_namespace_is_node_scope_for_every_target_form()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    // Requests name the host end of this veth: even code that failed to refuse would
    // touch only an interface the test made (and the dry runs, which go first, nothing).
    let link = TestNetns::create()?;
    let interface = link.host_ifname().to_string();
    let node_process = Sleeper::on_node()?;
    // A hostNetwork pod: its container joins the node's (this test's) namespace.
    let host_network_pod = TestContainer::start(ContainerSpec {
        netns: Some(std::path::PathBuf::from(format!(
            "/proc/{}/ns/net",
            std::process::id()
        ))),
        ..ContainerSpec::pod("chaos-test", "host-network-pod", "main")
    })?;
    let before = node_qdiscs(&interface)?;
    let requests = |target: &str, dry_run: bool| {
        let limit = network(
            target,
            Duration::from_secs(30),
            api::NetworkFault {
                interface: interface.clone(),
                ..rate(125_000)
            },
        );
        let hole = blackhole(
            target,
            Duration::from_secs(30),
            api::BlackholeFault {
                interface: interface.clone(),
                ..Default::default()
            },
        );
        [("rate", limit), ("blackhole", hole)]
            .map(|(what, request)| (what, api::InjectRequest { dry_run, ..request }))
    };

    let agent = agent_allowing_host_processes(&tls, &state, &[])?;
    let mut client = agent.client().await?;
    // ListTargets says so, for controllers to leave such pods out of their selections.
    let listed = client
        .list_targets(api::ListTargetsRequest {
            pod_namespace: "chaos-test".into(),
        })
        .await?
        .into_inner()
        .targets;
    let shown = listed
        .iter()
        .find(|t| t.target == host_network_pod.target())
        .context("the hostNetwork container is listed")?;
    ensure!(shown.host_network, "not shown as hostNetwork: {shown:?}");
    for target in [node_process.target(), host_network_pod.target()] {
        for dry_run in [true, false] {
            for (what, request) in requests(&target, dry_run) {
                let label = format!("{what} on {target}, dry run {dry_run}");
                let status = client
                    .inject(request)
                    .await
                    .expect_err("a fault in the node's namespace without --allow-node-scope");
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{label}: {status:?}"
                );
                assert!(
                    status
                        .message()
                        .contains(&format!("{target} shares the node's network namespace"))
                        && status.message().contains("--allow-node-scope"),
                    "{label}: {status:?}"
                );
                assert_eq!(node_qdiscs(&interface)?, before, "{label}");
                assert_eq!(journal_len(state.path()), 0, "{label}");
            }
        }
    }
    drop(client);
    drop(agent);

    let allowing = state_dir()?;
    let agent = agent_allowing_host_processes(&tls, &allowing, &["--allow-node-scope"])?;
    let mut client = agent.client().await?;
    let [(_, dry_run), _] = requests(&node_process.target(), true);
    let planned = client
        .inject(dry_run)
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    // The agent's port as source and destination: two exclusions before a match-all,
    // each a filter in both IP families.
    assert!(
        planned
            .message
            .contains("would install tbf behind 2 match and 4 exclusion filter(s)"),
        "{planned:?}"
    );
    let [(_, limit), _] = requests(&node_process.target(), false);
    let status = client
        .inject(limit)
        .await
        .expect_err("this host has no sch_prio to keep the agent's port out of the limit");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("sch_prio"), "{status:?}");
    assert_eq!(node_qdiscs(&interface)?, before);
    assert_eq!(journal_len(allowing.path()), 0);
    Ok(())
}

/// nsfs inode numbers are reused, lowest free first: after a crash, the namespace a fault
/// was journaled in may be gone and its inode another namespace's. The replay finds that
/// namespace by the inode, sees another cookie, leaves it alone and drops the record.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_replay_leaves_alone_the_namespace_that_took_the_faulted_ones_inode() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tls = make_certs()?;
    // Bounded in time, not in attempts. The kernel frees a namespace's number from a work
    // queue after its last reference goes, which takes seconds on a busy machine, and any
    // namespace made on the machine meanwhile (of any type: they share the numbers, and
    // parallel tests start containers) may take the number first. A round that sees
    // neither within its time starts over: a new fault, a new crash, a new freed number.
    let give_up = Instant::now() + Duration::from_secs(180);
    let (state, inode, successor) = loop {
        let state = state_dir()?;
        let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
        let first = TestNetns::create()?;
        let pod = pod_in(&first)?;
        inject(
            &agent,
            network(&pod.target(), Duration::from_secs(300), rate(250_000)),
        )
        .await?;
        assert!(
            qdiscs(&first)?.contains("tbf ca05: root"),
            "{}",
            qdiscs(&first)?
        );
        let inode = std::fs::metadata(first.path())?.ino();
        agent.kill_hard()?;
        assert_eq!(journal_len(state.path()), 1);
        // The pod and its namespace go, and the fault's tbf with them.
        drop(pod);
        drop(first);
        if let Some(successor) = namespace_at_inode(inode, Duration::from_secs(20))? {
            break (state, inode, successor);
        }
        ensure!(
            Instant::now() < give_up,
            "in 180 s, no new namespace got the inode of a freed one"
        );
        // This round's record names a namespace that is gone, with its tbf: dropping the
        // state directory leaves nothing behind.
    };
    // A root of the successor's own that carries the agent's handle: what a replay acting
    // on the wrong namespace would delete (with another handle it would only fail).
    successor
        .exec(&[
            "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "ca05:", "tbf", "rate", "1mbit",
            "burst", "16kb", "latency", "50ms",
        ])?
        .check()?;
    let before = interface_state(&successor)?;
    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    assert_eq!(
        interface_state(&successor)?,
        before,
        "the replay changed the namespace that took the inode"
    );
    assert_eq!(journal_len(state.path()), 0, "{}", restarted.log());
    let log = restarted.log();
    assert!(
        log.contains("network namespace is gone")
            && log.contains(&format!(
                "its inode {inode} now belongs to another namespace"
            )),
        "{log}"
    );
    Ok(())
}

/// A namespace made within `within` that got nsfs inode `inode`, or None. Each miss is
/// kept until then, so that the next one does not get the miss's number back: only the
/// freed number (or a higher one) is left to hand out.
fn namespace_at_inode(inode: u64, within: Duration) -> Result<Option<TestNetns>> {
    use std::os::unix::fs::MetadataExt;
    let ends = Instant::now() + within;
    let mut misses = Vec::new();
    let mut pause = Duration::from_millis(10);
    while Instant::now() < ends {
        let candidate = TestNetns::create()?;
        if std::fs::metadata(candidate.path())?.ino() == inode {
            return Ok(Some(candidate));
        }
        misses.push(candidate);
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    Ok(None)
}

/// A veth deleted while a fault held it (the namespace lives, the ifindex is gone) took the
/// fault's qdisc with it: a revert succeeds and says so, and so does the replay of a
/// journal left by a SIGKILL, instead of failing at every start.
#[tokio::test(flavor = "multi_thread")]
async fn host_an_interface_deleted_under_a_fault_counts_as_restored_by_revert_and_replay()
-> Result<()> {
    let (tls, state, mut agent, netns, pod) = rig()?;
    let fault = inject(
        &agent,
        network(&pod.target(), Duration::from_secs(300), rate(250_000)),
    )
    .await?;
    netns.exec(&["ip", "link", "del", "eth0"])?.check()?;
    let reverted = revert(&agent, &fault.id).await?;
    assert_eq!(
        reverted.state,
        api::FaultState::Reverted as i32,
        "{reverted:?}"
    );
    assert!(
        installed(&reverted).contains("eth0: the interface is gone: nothing to restore"),
        "{reverted:?}"
    );
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        agent.log().contains("network interface is gone"),
        "{}",
        agent.log()
    );

    let second = TestNetns::create()?;
    let second_pod = pod_in(&second)?;
    inject(
        &agent,
        network(
            &second_pod.target(),
            Duration::from_secs(300),
            rate(250_000),
        ),
    )
    .await?;
    agent.kill_hard()?;
    second.exec(&["ip", "link", "del", "eth0"])?.check()?;
    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    assert_eq!(journal_len(state.path()), 0, "{}", restarted.log());
    assert!(
        restarted.log().contains("network interface is gone"),
        "{}",
        restarted.log()
    );
    drop(pod);
    Ok(())
}

/// A rate whose bit rate does not fit 64 bits is refused by name before anything changes.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_rate_beyond_64_bit_bits_is_refused_and_changes_nothing() -> Result<()> {
    let (_tls, state, agent, netns, pod) = rig()?;
    let before = interface_state(&netns)?;
    let status = agent
        .client()
        .await?
        .inject(network(
            &pod.target(),
            Duration::from_secs(30),
            rate(u64::MAX),
        ))
        .await
        .expect_err("a rate of u64::MAX bytes/s");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("network.rate_bytes_per_second"),
        "{status:?}"
    );
    assert_eq!(interface_state(&netns)?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// `/proc/PID/stat` field 22: the start time that, with the pid, names a process.
fn start_time(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("no ) in stat")?.1;
    after_name
        .split_whitespace()
        .nth(19)
        .context("stat too short")?
        .parse()
        .context("start time")
}

/// A journal record as the agent writes it, restoring `netns`'s eth0 to its kernel default
/// root, written in boot `boot_id`.
fn restore_record(netns: &TestNetns, pod: &TestContainer, boot_id: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(netns.path())?;
    let pid = pod.pid()?;
    let ifindex: u32 = netns
        .exec(&["cat", "/sys/class/net/eth0/ifindex"])?
        .check()?
        .stdout
        .trim()
        .parse()?;
    let default_root = serde_json::json!({
        "kind": "noqueue", "handle": 0, "parent": 0xffff_ffffu32, "options": null
    });
    let record = serde_json::json!({
        "id": "f-0123456789abcdef",
        "kind": "network",
        "target": pod.target(),
        "created_unix_ms": 1,
        "deadline_unix_ms": 2,
        "undo": {
            "action": "restore_qdisc",
            "interfaces": [{
                "netns": {
                    "pid": pid,
                    "start_time": start_time(pid)?,
                    "id": { "dev": meta.dev(), "ino": meta.ino() }
                },
                "ifindex": ifindex,
                "snapshot": {
                    "ifindex": ifindex,
                    "root": default_root,
                    "ingress": null,
                    "child_qdiscs": [],
                    "user_classes": 0,
                    "root_filters": 0
                }
            }]
        },
        "boot_id": boot_id
    });
    Ok(serde_json::to_string_pretty(&record)?)
}

/// A journal record of another boot describes nothing that survived, and its numbers are
/// others' now: the agent drops it at start, saying so, instead of replaying it. The same
/// record stamped with this boot is replayed (the control: the record would act).
#[tokio::test(flavor = "multi_thread")]
async fn host_a_journal_record_of_another_boot_is_dropped_at_start_not_replayed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let netns = TestNetns::create()?;
    let pod = pod_in(&netns)?;
    // What the record says a fault installed: a root with the agent's handle.
    netns
        .exec(&[
            "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "ca05:", "tbf", "rate", "1mbit",
            "burst", "16kb", "latency", "50ms",
        ])?
        .check()?;
    let faulted = qdiscs(&netns)?;
    assert!(faulted.contains("tbf ca05: root"), "{faulted}");
    let journal = state.path().join("journal");
    std::fs::create_dir_all(&journal)?;
    let record_path = journal.join("f-0123456789abcdef.json");
    let other_boot = "00000000-0000-4000-8000-000000000000";
    std::fs::write(&record_path, restore_record(&netns, &pod, other_boot)?)?;

    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    assert_eq!(
        qdiscs(&netns)?,
        faulted,
        "a record of another boot was replayed"
    );
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        agent
            .log()
            .contains("dropped a journal record of an earlier boot"),
        "{}",
        agent.log()
    );
    drop(agent);

    let this_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    std::fs::write(
        &record_path,
        restore_record(&netns, &pod, this_boot.trim())?,
    )?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    assert!(
        !qdiscs(&netns)?.contains("ca05:"),
        "this boot's record was not replayed: {}\n{}",
        qdiscs(&netns)?,
        agent.log()
    );
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A network fault on the node's namespace (here through a process of the node, with both
/// flags) leaves the agent's port alone: the node's interface toward a client (the veth to
/// a namespace, the root namespace standing in for the node) delays the node's other
/// services, not the agent's answers.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem and prio: run in the VM"]
async fn vm_a_node_scope_network_fault_keeps_the_agent_port_unimpaired() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_on(
        AgentOptions {
            tls_dir: Some(tls.path().to_path_buf()),
            state_dir: state.path().to_path_buf(),
            extra_args: vec!["--allow-node-scope".into(), "--allow-host-processes".into()],
            containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
        },
        Ipv4Addr::UNSPECIFIED,
    )?;
    chaos_tests::agent::require_netem(&agent).await?;
    let remote = TestNetns::create()?;
    let node_process = Sleeper::on_node()?;
    let other_service = host_listener(&remote)?;
    let agent_seen_remotely = SocketAddr::from((remote.host_ip(), agent.grpc.port()));
    let interface = remote.host_ifname().to_string();
    let before_state = node_qdiscs(&interface)?;
    let (other_before, agent_before) = (
        connect_median(&remote, other_service, 15)?,
        connect_median(&remote, agent_seen_remotely, 15)?,
    );
    let fault = inject(
        &agent,
        network(
            &node_process.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                interface: interface.clone(),
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    let port = agent.grpc.port();
    assert!(
        status.contains(&format!("proto 6 sport {port} -> ca05:1"))
            && status.contains(&format!("proto 6 dport {port} -> ca05:1"))
            && status.contains("netem ca06: limit 1000 delay 50ms"),
        "{status}"
    );
    let (other_during, agent_during) = (
        connect_median(&remote, other_service, 15)?,
        connect_median(&remote, agent_seen_remotely, 15)?,
    );
    eprintln!(
        "node scope: other service {other_before:?} -> {other_during:?}, agent port {agent_before:?} -> {agent_during:?}"
    );
    // The SYN-ACK leaves the node through the delayed interface.
    assert_delayed(
        "another service of the node",
        other_before,
        other_during,
        50,
    );
    assert_not_delayed("the agent's port", agent_before, agent_during);
    revert(&agent, &fault.id).await?;
    assert_eq!(node_qdiscs(&interface)?, before_state);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A TCP listener on every address of `netns` at `port` (0: any free one), accepting and
/// dropping connections on a thread inside the namespace until the guard is dropped (its
/// socket would keep the namespace alive) or a bounded time has passed.
struct ListenerInside {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ListenerInside {
    fn start(netns: &TestNetns, port: u16) -> Result<ListenerInside> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let file = std::fs::File::open(netns.path())?;
        let (sender, bound) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let listener = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?))
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
            let listener = match listener {
                Ok(listener) => {
                    let _ = sender.send(listener.local_addr().map_err(anyhow::Error::from));
                    listener
                }
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            };
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline && !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let addr = bound.recv_timeout(Duration::from_secs(10))??;
        Ok(ListenerInside {
            port: addr.port(),
            stop,
        })
    }
}

impl Drop for ListenerInside {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Median TCP connect time from this test's own namespace to `addr`.
fn connect_median_here(addr: SocketAddr, count: usize) -> Result<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        times.push(started.elapsed());
        drop(stream);
    }
    times.sort();
    Ok(times[count / 2])
}

fn qdiscs_of(netns: &TestNetns, interface: &str) -> Result<String> {
    Ok(netns
        .exec(&["tc", "-d", "qdisc", "show", "dev", interface])?
        .check()?
        .stdout)
}

/// A node with two interfaces that carry default routes (EKS with the VPC CNI: a
/// secondary ENI with its default route in a table of its own), a test namespace standing
/// in for the node (`--node-pid` a process in it): `eth0` toward this test's namespace
/// with the main table's default route, `eth1` toward a peer namespace with a default
/// route in table 100, picked by an `ip rule`. A node-scope delay naming no interface
/// installs netem on both (read back), slows what leaves either, leaves the agent's port
/// alone on both; a second fault that claims one of them is refused and changes neither;
/// revert, and a SIGKILL of the agent and its restart (journal replay), restore both.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem and prio: run in the VM"]
async fn vm_node_scope_without_an_interface_acts_on_every_default_route_interface() -> Result<()> {
    let node = TestNetns::create()?;
    let peer = TestNetns::create()?;
    // eth1 dies with the node's namespace (a veth pair goes with either end).
    run_checked(
        "ip",
        &[
            "-n",
            node.name(),
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth1p",
            "netns",
            peer.name(),
        ],
        Duration::from_secs(10),
    )?;
    for (netns, link, cidr) in [
        (&node, "eth1", "10.214.0.1/30"),
        (&peer, "eth1p", "10.214.0.2/30"),
    ] {
        netns
            .exec(&["ip", "addr", "add", cidr, "dev", link])?
            .check()?;
        netns.exec(&["ip", "link", "set", link, "up"])?.check()?;
    }
    node.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.214.0.2",
        "dev",
        "eth1",
        "table",
        "100",
    ])?
    .check()?;
    node.exec(&["ip", "rule", "add", "from", "10.214.0.1", "table", "100"])?
        .check()?;
    let node_process = Sleeper::start(&node)?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let options = AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec![
            "--allow-node-scope".into(),
            "--allow-host-processes".into(),
            "--node-pid".into(),
            node_process.pid().to_string(),
        ],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    };
    let mut agent = TestAgent::start(options.clone())?;
    chaos_tests::agent::require_netem(&agent).await?;
    let before = (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?);
    let service = ListenerInside::start(&node, 0)?;
    let agent_port = ListenerInside::start(&node, agent.grpc.port())?;
    let eth1_address = Ipv4Addr::new(10, 214, 0, 1);
    // The SYN-ACK leaves the node by eth0 toward this namespace, by eth1 toward the peer.
    let medians = |port: u16| -> Result<(Duration, Duration)> {
        Ok((
            connect_median_here(SocketAddr::from((node.inner_ip(), port)), 15)?,
            connect_median(&peer, SocketAddr::from((eth1_address, port)), 15)?,
        ))
    };
    let (service_before, port_before) = (medians(service.port)?, medians(agent_port.port)?);
    let request = |interface: &str| {
        network(
            &node_process.target(),
            Duration::from_secs(300),
            api::NetworkFault {
                interface: interface.into(),
                ..delay(50)
            },
        )
    };

    let fault = inject(&agent, request("")).await?;
    let named = match &fault.status {
        Some(api::fault::Status::Network(n)) => n.interface.clone(),
        other => bail!("no network status: {other:?}"),
    };
    ensure!(named == "eth0,eth1" || named == "eth1,eth0", "{named}");
    let status = installed(&fault);
    ensure!(
        status.contains("eth0: ") && status.contains("eth1: "),
        "{status}"
    );
    for interface in ["eth0", "eth1"] {
        let shown = qdiscs_of(&node, interface)?;
        ensure!(
            shown.contains("qdisc prio ca05:") && shown.contains("delay 50ms"),
            "{interface}: {shown}"
        );
    }
    let (service_during, port_during) = (medians(service.port)?, medians(agent_port.port)?);
    eprintln!(
        "every interface: service {service_before:?} -> {service_during:?}, agent port {port_before:?} -> {port_during:?}"
    );
    assert_delayed("out of eth0", service_before.0, service_during.0, 50);
    assert_delayed("out of eth1", service_before.1, service_during.1, 50);
    assert_not_delayed("the agent's port on eth0", port_before.0, port_during.0);
    assert_not_delayed("the agent's port on eth1", port_before.1, port_during.1);

    // A fault that would take eth1 too is refused and changes neither interface.
    let during = (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?);
    let refused = agent
        .client()
        .await?
        .inject(request("eth1"))
        .await
        .expect_err("eth1 is taken");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("eth1"), "{refused:?}");
    assert_eq!(
        (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?),
        during
    );
    revert(&agent, &fault.id).await?;
    assert_eq!(
        (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?),
        before
    );
    assert_eq!(journal_len(state.path()), 0);

    // All or nothing the other way: eth1 held by a fault of its own, a fault on every
    // interface is refused, and eth0 stays as it was.
    let on_eth1 = inject(&agent, request("eth1")).await?;
    let refused = agent
        .client()
        .await?
        .inject(request(""))
        .await
        .expect_err("eth1 is taken");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(qdiscs_of(&node, "eth0")?, before.0);
    revert(&agent, &on_eth1.id).await?;
    assert_eq!(
        (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?),
        before
    );

    // A SIGKILL while both are held; the restarted agent's replay restores both.
    inject(&agent, request("")).await?;
    agent.kill_hard()?;
    for interface in ["eth0", "eth1"] {
        ensure!(
            qdiscs_of(&node, interface)?.contains("delay 50ms"),
            "{interface}"
        );
    }
    assert_eq!(journal_len(state.path()), 1);
    let _restarted = TestAgent::start(options)?;
    assert_eq!(
        (qdiscs_of(&node, "eth0")?, qdiscs_of(&node, "eth1")?),
        before
    );
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A TCP listener on the host side of the veth, accepting (and dropping) connections in
/// a thread for a bounded time.
fn host_listener(netns: &TestNetns) -> Result<SocketAddr> {
    listener_on(netns.host_ip().into())
}

/// The same on any address of the host side (an IPv6 one of `TestNetns::add_ipv6`).
fn listener_on(ip: IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => drop(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Ok(addr)
}

/// Runs `work` on a thread inside the namespace (setns on that thread only).
fn inside<T: Send + 'static>(
    netns: &TestNetns,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(netns.path())?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Median TCP connect time from inside the namespace to `addr`, over `count` connects.
fn connect_median(netns: &TestNetns, addr: SocketAddr, count: usize) -> Result<Duration> {
    inside(netns, move || {
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            times.push(started.elapsed());
            drop(stream);
        }
        times.sort();
        Ok(times[count / 2])
    })
}

async fn wait_ended(agent: &TestAgent, id: &str, within: Duration) -> Result<api::Fault> {
    let deadline = Instant::now() + within;
    let mut client = agent.client().await?;
    while Instant::now() < deadline {
        let list = client
            .list(api::ListRequest {
                include_ended: true,
            })
            .await?
            .into_inner();
        if let Some(f) = list.faults.iter().find(|f| f.id == id)
            && f.state != api::FaultState::Active as i32
        {
            return Ok(f.clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("fault {id} did not end within {within:?}")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_delay_raises_connect_time_and_falls_back_after_the_deadline() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    let addr = host_listener(&netns)?;
    let before_dump = qdiscs(&netns)?;

    let before = connect_median(&netns, addr, 21)?;
    let fault = agent
        .client()
        .await?
        .inject(network(&pod.target(), Duration::from_secs(8), delay(50)))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    assert!(
        installed(&fault).starts_with("netem ca05: limit 1000 delay 50ms"),
        "{}",
        installed(&fault)
    );
    assert!(qdiscs(&netns)?.contains("netem ca05:"));
    let during = connect_median(&netns, addr, 21)?;
    let ended = wait_ended(&agent, &fault.id, Duration::from_secs(60)).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    let after = connect_median(&netns, addr, 21)?;
    eprintln!("connect median: before {before:?}, during {during:?}, after {after:?}");
    // The SYN leaves through the delayed eth0: one 50 ms delay per connect.
    let raised = during.saturating_sub(before);
    assert!(
        raised >= Duration::from_millis(48) && raised <= Duration::from_millis(120),
        "delay raised connect time by {raised:?}"
    );
    assert!(
        after < before + Duration::from_millis(20),
        "after {after:?} vs before {before:?}"
    );
    assert_eq!(qdiscs(&netns)?, before_dump);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_loss_20_percent_stays_within_binomial_bounds() -> Result<()> {
    const SENT: u32 = 2000;
    let (_tls, _state, agent, netns, pod) = netem_rig().await?;
    // Only netem may lose packets here: no ARP crosses the lossy eth0, and the receive buffer
    // holds every packet sent even if the emulated VM starves the receiving thread.
    netns.pin_host_neighbour()?;
    let receiver = UdpSocket::bind((netns.host_ip(), 0))?;
    force_receive_buffer(&receiver, 16 << 20)?;
    receiver.set_read_timeout(Some(Duration::from_millis(500)))?;
    let buffer_errors_before = udp_receive_buffer_errors()?;
    let addr = receiver.local_addr()?;

    let mut client = agent.client().await?;
    let fault = client
        .inject(network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                loss_percent: 20.0,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    // Receive on a thread while the namespace thread sends, paced so that no socket
    // buffer overflows (that would be loss netem did not cause). The receiver stops only
    // after the sender said it is done and the socket has then been quiet: under
    // emulation the sender can pause for longer than any fixed quiet period.
    let sender_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::clone(&sender_done);
    let counter = std::thread::spawn(move || {
        let mut received = 0u32;
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match receiver.recv(&mut buf) {
                Ok(_) => received += 1,
                Err(_) if done.load(std::sync::atomic::Ordering::Acquire) => break,
                Err(_) => {}
            }
        }
        received
    });
    let sent = inside(&netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        for i in 0..SENT {
            socket.send_to(&i.to_be_bytes(), addr)?;
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    });
    sender_done.store(true, std::sync::atomic::Ordering::Release);
    sent?;
    let received = counter
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let netem_stats = netns
        .exec(&["tc", "-s", "qdisc", "show", "dev", "eth0"])?
        .check()?
        .stdout;
    let buffer_errors = udp_receive_buffer_errors()? - buffer_errors_before;
    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    // Binomial(2000, 0.8): mean 1600, sd 17.9; 99.9 % two-sided is ±3.29 sd = ±59.
    eprintln!("received {received} of {SENT} with 20 % loss; netem: {netem_stats}");
    assert!(
        (1541..=1659).contains(&received),
        "received {received} of {SENT}; UDP receive buffer errors {buffer_errors}; {netem_stats}"
    );
    Ok(())
}

/// Sets `socket`'s receive buffer to `bytes` past `net.core.rmem_max` (SO_RCVBUFFORCE, root).
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor, and an int option passed with its own size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "SO_RCVBUFFORCE: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// `RcvbufErrors` of the root namespace's UDP counters (/proc/net/snmp): datagrams dropped
/// because a socket's receive buffer was full.
fn udp_receive_buffer_errors() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .context("no RcvbufErrors in /proc/net/snmp")?
        .1
        .parse()
        .context("RcvbufErrors is not a number")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_revert_restores_a_preexisting_tbf_exactly_and_refuses_a_second_fault() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    install_user_tbf(&netns)?;
    let before = qdiscs(&netns)?;
    assert!(before.contains("tbf 1:"), "{before}");

    let mut client = agent.client().await?;
    let fault = client
        .inject(network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                delay_us: 20_000,
                jitter_us: 5_000,
                distribution: api::Distribution::Normal as i32,
                loss_percent: 1.0,
                duplicate_percent: 1.0,
                corrupt_percent: 0.5,
                reorder_percent: 10.0,
                reorder_gap: 3,
                rate_bytes_per_second: 1_000_000,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    let during = qdiscs(&netns)?;
    assert!(during.contains("netem ca05:"), "{during}");
    // The kernel never dumps a delay distribution table back (netem_dump has no
    // TCA_NETEM_DELAY_DIST), so the read-back shows everything but the distribution.
    assert_eq!(
        installed(&fault),
        "netem ca05: limit 1000 delay 20ms 5ms loss 1.0000% \
         duplicate 1.0000% reorder 10.0000% gap 3 corrupt 0.5000% rate 8000000bit"
    );
    assert_eq!(journal_len(state.path()), 1);

    let second = client
        .inject(network(&pod.target(), Duration::from_secs(60), delay(5)))
        .await
        .expect_err("a second fault on the same interface must be refused");
    assert_eq!(second.code(), tonic::Code::FailedPrecondition, "{second:?}");
    assert_eq!(
        qdiscs(&netns)?,
        during,
        "the refused fault changed something"
    );

    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    assert_eq!(qdiscs(&netns)?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_agent_sigkill_then_restart_restores_the_interface() -> Result<()> {
    let (tls, state, mut agent, netns, pod) = netem_rig().await?;
    let before = qdiscs(&netns)?;
    agent
        .client()
        .await?
        .inject(network(&pod.target(), Duration::from_secs(300), delay(30)))
        .await?;
    assert!(qdiscs(&netns)?.contains("netem ca05:"));
    agent.kill_hard()?;
    // Nothing reverted it: the agent died without a word.
    assert!(qdiscs(&netns)?.contains("netem ca05:"));
    assert_eq!(journal_len(state.path()), 1);
    let _restarted = TestAgent::start_tls(tls.path(), state.path())?;
    assert_eq!(qdiscs(&netns)?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_sigterm_reverts_and_a_vanished_namespace_counts_as_reverted() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    chaos_tests::agent::require_netem(&agent).await?;
    let kept = TestNetns::create()?;
    let kept_pod = pod_in(&kept)?;
    let before = qdiscs(&kept)?;
    let mut client = agent.client().await?;
    client
        .inject(network(
            &kept_pod.target(),
            Duration::from_secs(300),
            delay(30),
        ))
        .await?;
    let doomed = TestNetns::create()?;
    let doomed_pod = pod_in(&doomed)?;
    let doomed_fault = client
        .inject(network(
            &doomed_pod.target(),
            Duration::from_secs(300),
            delay(30),
        ))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    // The target and its namespace disappear while faulted (a deleted pod).
    drop(doomed_pod);
    drop(doomed);
    let reverted = client
        .revert(api::RevertRequest {
            id: doomed_fault.id.clone(),
            all: false,
        })
        .await?
        .into_inner();
    assert_eq!(
        reverted.reverted[0].state,
        api::FaultState::Reverted as i32,
        "{reverted:?}"
    );
    let exit = agent.terminate()?;
    assert!(exit.success(), "{exit:?}\n{}", agent.log());
    assert_eq!(qdiscs(&kept)?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A second TCP listener on the host side, on another port.
fn two_host_listeners(netns: &TestNetns) -> Result<(SocketAddr, SocketAddr)> {
    Ok((host_listener(netns)?, host_listener(netns)?))
}

/// Whether a TCP connect from inside the namespace succeeds within `timeout`.
fn connects(netns: &TestNetns, addr: SocketAddr, timeout: Duration) -> Result<bool> {
    inside(netns, move || {
        Ok(TcpStream::connect_timeout(&addr, timeout).is_ok())
    })
}

async fn inject(agent: &TestAgent, request: api::InjectRequest) -> Result<api::Fault> {
    agent
        .client()
        .await?
        .inject(request)
        .await?
        .into_inner()
        .fault
        .context("no fault")
}

async fn revert(agent: &TestAgent, id: &str) -> Result<api::Fault> {
    let reverted = agent
        .client()
        .await?
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await?
        .into_inner();
    reverted
        .reverted
        .into_iter()
        .next()
        .context("nothing reverted")
}

/// Raised connect time of `during` over `before`, bounded around one `delay_ms` delay.
fn assert_delayed(label: &str, before: Duration, during: Duration, delay_ms: u64) {
    let raised = during.saturating_sub(before);
    assert!(
        raised >= Duration::from_millis(delay_ms * 9 / 10)
            && raised <= Duration::from_millis(delay_ms * 2 + 20),
        "{label}: connect {before:?} -> {during:?}, raised by {raised:?}"
    );
}

fn assert_not_delayed(label: &str, before: Duration, during: Duration) {
    assert!(
        during < before + Duration::from_millis(20),
        "{label}: connect {before:?} -> {during:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_port_filter_delays_only_that_port_and_restores_exactly() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    let (delayed, spared) = two_host_listeners(&netns)?;
    let before_state = interface_state(&netns)?;
    let (delayed_before, spared_before) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, spared, 15)?,
    );
    let fault = inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                ports: vec![u32::from(delayed.port())],
                protocol: api::Protocol::Tcp as i32,
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(status.starts_with("prio ca05:"), "{status}");
    assert!(
        status.contains("netem ca06: limit 1000 delay 50ms"),
        "{status}"
    );
    assert!(
        status.contains(&format!("proto 6 dport {} -> ca05:2", delayed.port())),
        "{status}"
    );
    let (delayed_during, spared_during) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, spared, 15)?,
    );
    eprintln!(
        "port filter: delayed port {delayed_before:?} -> {delayed_during:?}, other port {spared_before:?} -> {spared_during:?}"
    );
    assert_delayed("filtered port", delayed_before, delayed_during, 50);
    assert_not_delayed("other port", spared_before, spared_during);
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before_state);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// Destination filter with a port exclusion, over a pre-installed tbf root: only the
/// excluded port is spared, and expiry puts the tbf back byte for byte.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_destination_filter_with_exclusion_over_tbf_restores_at_expiry() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    install_user_tbf(&netns)?;
    let (delayed, excluded) = two_host_listeners(&netns)?;
    let before_state = interface_state(&netns)?;
    assert!(before_state.contains("tbf 1:"), "{before_state}");
    let (delayed_before, excluded_before) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, excluded, 15)?,
    );
    let fault = inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(20),
            api::NetworkFault {
                destinations: vec![format!("{}/{}", netns.host_ip(), netns.prefix_len())],
                exclude_ports: vec![u32::from(excluded.port())],
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(
        status.contains(&format!(
            "pref 1 u32 proto 6 dport {} -> ca05:1",
            excluded.port()
        )),
        "{status}"
    );
    let (delayed_during, excluded_during) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, excluded, 15)?,
    );
    eprintln!(
        "destination + exclusion: matched {delayed_before:?} -> {delayed_during:?}, excluded {excluded_before:?} -> {excluded_during:?}"
    );
    assert_delayed("destination", delayed_before, delayed_during, 50);
    assert_not_delayed("excluded port", excluded_before, excluded_during);
    let ended = wait_ended(&agent, &fault.id, Duration::from_secs(90)).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    assert_eq!(interface_state(&netns)?, before_state);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// Ingress delay through an ifb, with an htb root and an ingress qdisc + filter already
/// on the interface: the SYN-ACK is delayed, and revert leaves exactly the old state and
/// no ifb.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_ingress_delay_works_restores_htb_and_ingress_and_leaves_no_ifb() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    let addr = host_listener(&netns)?;
    netns
        .exec(&[
            "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb",
        ])?
        .check()?;
    install_user_ingress(&netns)?;
    let before_state = interface_state(&netns)?;
    let before = connect_median(&netns, addr, 15)?;
    let fault = inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(
        status.starts_with("ingress: pref 9 u32 all -> redirect ifindex"),
        "{status}"
    );
    assert!(status.contains("chaos-ifb-"), "{status}");
    assert!(
        status.contains("netem ca05: limit 1000 delay 50ms"),
        "{status}"
    );
    assert!(interface_state(&netns)?.contains("chaos-ifb-"));
    let during = connect_median(&netns, addr, 15)?;
    eprintln!("ingress delay: connect {before:?} -> {during:?}");
    assert_delayed("ingress", before, during, 50);
    revert(&agent, &fault.id).await?;
    let after_state = interface_state(&netns)?;
    assert_eq!(after_state, before_state);
    assert!(!after_state.contains("chaos-ifb"), "{after_state}");
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_blackhole_drops_a_port_and_traffic_flows_after_revert() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    let (dropped, spared) = two_host_listeners(&netns)?;
    let before_state = interface_state(&netns)?;
    let short = Duration::from_secs(2);
    assert!(connects(&netns, dropped, short)?);
    let fault = inject(
        &agent,
        blackhole(
            &pod.target(),
            Duration::from_secs(120),
            api::BlackholeFault {
                ports: vec![u32::from(dropped.port())],
                ..Default::default()
            },
        ),
    )
    .await?;
    assert_eq!(fault.kind, api::FaultKind::Blackhole as i32);
    let status = installed(&fault);
    assert!(status.contains("loss 100.0000%"), "{status}");
    assert!(
        !connects(&netns, dropped, short)?,
        "the blackholed port answered"
    );
    assert!(
        connects(&netns, spared, Duration::from_secs(5))?,
        "the other port was dropped too"
    );
    revert(&agent, &fault.id).await?;
    assert!(
        connects(&netns, dropped, Duration::from_secs(5))?,
        "no traffic after revert"
    );
    assert_eq!(interface_state(&netns)?, before_state);
    assert_eq!(journal_len(state.path()), 0);

    // Everything: no connection at all, then back.
    let fault = inject(
        &agent,
        blackhole(
            &pod.target(),
            Duration::from_secs(120),
            api::BlackholeFault::default(),
        ),
    )
    .await?;
    assert!(
        !connects(&netns, spared, short)?,
        "a full blackhole let a connect through"
    );
    revert(&agent, &fault.id).await?;
    assert!(connects(&netns, spared, Duration::from_secs(5))?);
    assert_eq!(interface_state(&netns)?, before_state);
    Ok(())
}

/// IPv6 targeting on a veth with two IPv6 peers on the host side (`::1`, `::3`) and the
/// IPv4 one: a delay aimed at the IPv6 /64 and the IPv4 peer, with `::3` excluded, slows
/// connects to `::1` and to the IPv4 peer but not to `::3` (filters of both families,
/// the IPv6 exclusion first); an ingress delay from `::1` likewise; a blackhole of `::1`
/// drops its connects and not those to `::3`. After each revert the qdiscs, filters and
/// links are exactly as before.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_ipv6_destinations_delay_and_blackhole_one_peer_not_the_other() -> Result<()> {
    let (_tls, state, agent, netns, pod) = netem_rig().await?;
    netns.add_ipv6()?;
    let (target6, other6) = (
        listener_on(netns.host_ipv6().into())?,
        listener_on(netns.second_host_ipv6().into())?,
    );
    let target4 = host_listener(&netns)?;
    let short = Duration::from_secs(2);
    // Neighbour discovery done, and both peers reachable before any fault.
    ensure!(
        connects(&netns, target6, Duration::from_secs(10))?,
        "no IPv6 to ::1"
    );
    ensure!(
        connects(&netns, other6, Duration::from_secs(10))?,
        "no IPv6 to ::3"
    );
    let before_state = interface_state(&netns)?;
    let medians = |netns: &TestNetns| -> Result<[Duration; 3]> {
        Ok([
            connect_median(netns, target6, 15)?,
            connect_median(netns, other6, 15)?,
            connect_median(netns, target4, 15)?,
        ])
    };
    let network6 = format!("{}/{}", netns.ipv6_network(), 64);
    let excluded6 = format!("{}/128", netns.second_host_ipv6());
    let before = medians(&netns)?;

    let fault = inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                destinations: vec![network6.clone(), format!("{}/32", netns.host_ip())],
                exclude_destinations: vec![excluded6.clone()],
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    for part in [
        format!("pref 1 u32 ipv6 dst {excluded6} -> ca05:1"),
        format!("pref 1000 u32 ipv6 dst {network6} -> ca05:2"),
        format!("pref 1001 u32 dst {}/32 -> ca05:2", netns.host_ip()),
    ] {
        assert!(status.contains(&part), "{part} not in {status}");
    }
    let during = medians(&netns)?;
    eprintln!("IPv6 egress: [::1, ::3, IPv4] {before:?} -> {during:?}");
    assert_delayed("IPv6 destination", before[0], during[0], 50);
    assert_not_delayed("excluded IPv6 peer", before[1], during[1]);
    assert_delayed("IPv4 destination", before[2], during[2], 50);
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before_state);

    // Ingress: the SYN-ACK from ::1 comes back through the ifb and is delayed there.
    let fault = inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(120),
            api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                destinations: vec![format!("{}/128", netns.host_ipv6())],
                ..delay(50)
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(status.contains("ipv6 src"), "{status}");
    let during = medians(&netns)?;
    eprintln!("IPv6 ingress: [::1, ::3, IPv4] {before:?} -> {during:?}");
    assert_delayed("IPv6 ingress source", before[0], during[0], 50);
    assert_not_delayed("other IPv6 source", before[1], during[1]);
    assert_not_delayed("IPv4 source", before[2], during[2]);
    revert(&agent, &fault.id).await?;
    assert_eq!(interface_state(&netns)?, before_state);

    let fault = inject(
        &agent,
        blackhole(
            &pod.target(),
            Duration::from_secs(120),
            api::BlackholeFault {
                destinations: vec![format!("{}", netns.host_ipv6())],
                ..Default::default()
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(status.contains("loss 100.0000%"), "{status}");
    assert!(
        !connects(&netns, target6, short)?,
        "the blackholed IPv6 peer answered"
    );
    assert!(
        connects(&netns, other6, Duration::from_secs(5))?,
        "the other IPv6 peer was dropped too"
    );
    assert!(
        connects(&netns, target4, Duration::from_secs(5))?,
        "IPv4 was dropped by an IPv6 blackhole"
    );
    revert(&agent, &fault.id).await?;
    assert!(
        connects(&netns, target6, Duration::from_secs(5))?,
        "no IPv6 traffic after revert"
    );
    assert_eq!(interface_state(&netns)?, before_state);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// `chaosctl inject network` with the targeting flags, against a live agent: only the named
/// port to the named destination is delayed, and `chaosctl revert` puts the interface back.
/// Then `--direction ingress` through an ifb, reverted the same way.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_chaosctl_inject_network_with_targeting_flags_then_revert() -> Result<()> {
    let (tls, state, agent, netns, pod) = netem_rig().await?;
    let (delayed, spared) = two_host_listeners(&netns)?;
    let before_state = interface_state(&netns)?;
    let (delayed_before, spared_before) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, spared, 15)?,
    );
    let agent_address = agent.address().address;
    let chaosctl = |args: &[&str]| -> Result<serde_json::Value> {
        let mut all = vec!["--agent", agent_address.as_str(), "-o", "json"];
        all.extend_from_slice(args);
        let output = std::process::Command::new(chaos_tests::agent::binary("chaosctl")?)
            .arg("--tls-dir")
            .arg(tls.path())
            .args(&all)
            .output()?;
        ensure!(
            output.status.success(),
            "chaosctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let (to, port) = (
        format!("{}/32", netns.host_ip()),
        delayed.port().to_string(),
    );
    let target = pod.target();
    let fault = chaosctl(&[
        "inject",
        "network",
        "--target",
        &target,
        "--delay",
        "50ms",
        "--to",
        &to,
        "--port",
        &port,
        "--protocol",
        "tcp",
        "--exclude-port",
        "53",
        "--direction",
        "egress",
        "--duration",
        "120s",
    ])?;
    let installed = fault["status"]["installed"].as_str().unwrap_or_default();
    assert!(
        installed.contains("netem ca06: limit 1000 delay 50ms"),
        "{fault}"
    );
    assert!(
        installed.contains(&format!("dport {port}")) && installed.contains("dport 53"),
        "{fault}"
    );
    let (delayed_during, spared_during) = (
        connect_median(&netns, delayed, 15)?,
        connect_median(&netns, spared, 15)?,
    );
    assert_delayed("chaosctl's port", delayed_before, delayed_during, 50);
    assert_not_delayed("other port", spared_before, spared_during);
    let revert_with_chaosctl = |fault: &serde_json::Value| -> Result<()> {
        chaosctl(&["revert", fault["id"].as_str().context("no id")?])?;
        let now = interface_state(&netns)?;
        ensure!(
            now == before_state,
            "not restored:\n{now}\nbefore:\n{before_state}"
        );
        Ok(())
    };
    revert_with_chaosctl(&fault)?;

    let fault = chaosctl(&[
        "inject",
        "network",
        "--target",
        &target,
        "--delay",
        "50ms",
        "--direction",
        "ingress",
        "--duration",
        "120s",
    ])?;
    let installed = fault["status"]["installed"].as_str().unwrap_or_default();
    assert!(
        installed.contains("chaos-ifb-") && installed.contains("delay 50ms"),
        "{fault}"
    );
    revert_with_chaosctl(&fault)?;
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A node-scope blackhole, on the node's interface toward a "remote" client (the veth to a
/// second namespace, from the root namespace standing in for the node): the client's
/// connections to anything else die, but it still reaches the agent's gRPC port through the
/// blackhole and reverts the fault early from there.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_node_blackhole_keeps_the_agent_reachable_and_is_reverted_through_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_on(
        AgentOptions {
            tls_dir: Some(tls.path().to_path_buf()),
            state_dir: state.path().to_path_buf(),
            extra_args: vec!["--allow-node-scope".into()],
            containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
        },
        Ipv4Addr::UNSPECIFIED,
    )?;
    chaos_tests::agent::require_netem(&agent).await?;
    let remote = TestNetns::create()?;
    let pod = pod_in(&remote)?;
    let other_service = host_listener(&remote)?;
    // The agent as the remote client sees it: the node's address on their link.
    let agent_seen_remotely = AgentAddress {
        address: SocketAddr::from((remote.host_ip(), agent.grpc.port())).to_string(),
        tls_dir: Some(tls.path().to_path_buf()),
        plaintext: false,
    };
    let node_interface = remote.host_ifname().to_string();
    let node_qdiscs = || -> Result<String> {
        Ok(run_checked(
            "tc",
            &["-d", "qdisc", "show", "dev", &node_interface],
            Duration::from_secs(10),
        )?
        .stdout)
    };
    let before = node_qdiscs()?;
    let short = Duration::from_secs(2);
    assert!(connects(&remote, other_service, Duration::from_secs(5))?);
    assert_eq!(remote_active_faults(&remote, &agent_seen_remotely)?, 0);

    let fault = inject(
        &agent,
        blackhole(
            &pod.target(),
            Duration::from_secs(120),
            api::BlackholeFault {
                node_scope: true,
                interface: remote.host_ifname().into(),
                ..Default::default()
            },
        ),
    )
    .await?;
    let status = installed(&fault);
    assert!(status.contains("loss 100.0000%"), "{status}");
    assert!(
        status.contains(&format!("sport {}", agent.grpc.port())),
        "the agent's port is not excluded: {status}"
    );
    assert!(node_qdiscs()?.contains("qdisc netem"), "{}", node_qdiscs()?);
    // Replies from the node's other service are dropped on the node's interface ...
    assert!(
        !connects(&remote, other_service, short)?,
        "a node blackhole let a connection through"
    );
    // ... the agent's are not: the remote client lists the fault and reverts it.
    assert_eq!(remote_active_faults(&remote, &agent_seen_remotely)?, 1);
    let id = fault.id.clone();
    let address = agent_seen_remotely.clone();
    let reverted = inside_runtime(&remote, move || async move {
        let mut client = chaosctl::agents::client::connect(&address).await?;
        let reply = client
            .revert(api::RevertRequest { id, all: false })
            .await?
            .into_inner();
        anyhow::Ok(reply.reverted)
    })?;
    assert_eq!(reverted.len(), 1, "{reverted:?}");
    assert_eq!(reverted[0].state, api::FaultState::Reverted as i32);
    assert!(connects(&remote, other_service, Duration::from_secs(5))?);
    assert_eq!(node_qdiscs()?, before);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// Runs async `work` on a runtime whose thread sits in the namespace: every socket it opens
/// (a gRPC channel here) belongs to that namespace.
fn inside_runtime<T, Fut>(
    netns: &TestNetns,
    work: impl FnOnce() -> Fut + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    inside(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
}

/// How many active faults the agent lists to a client inside `netns`.
fn remote_active_faults(netns: &TestNetns, agent: &AgentAddress) -> Result<usize> {
    let address = agent.clone();
    inside_runtime(netns, move || async move {
        let mut client = chaosctl::agents::client::connect(&address).await?;
        let faults = client
            .list(api::ListRequest {
                include_ended: false,
            })
            .await?
            .into_inner()
            .faults;
        anyhow::Ok(faults.len())
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_agent_sigkill_during_a_filtered_ingress_fault_then_restart_restores_all() -> Result<()>
{
    let (tls, state, mut agent, netns, pod) = netem_rig().await?;
    let before_state = interface_state(&netns)?;
    inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(300),
            api::NetworkFault {
                direction: api::Direction::Ingress as i32,
                ports: vec![5432],
                ..delay(30)
            },
        ),
    )
    .await?;
    inject(
        &agent,
        network(
            &pod.target(),
            Duration::from_secs(300),
            api::NetworkFault {
                destinations: vec!["10.0.0.0/8".into()],
                ..delay(30)
            },
        ),
    )
    .await?;
    let during = interface_state(&netns)?;
    assert!(
        during.contains("chaos-ifb-") && during.contains("prio ca05:"),
        "{during}"
    );
    agent.kill_hard()?;
    assert_eq!(
        interface_state(&netns)?,
        during,
        "nothing may revert without the agent"
    );
    assert_eq!(journal_len(state.path()), 2);
    let _restarted = TestAgent::start_tls(tls.path(), state.path())?;
    assert_eq!(interface_state(&netns)?, before_state);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// p50 and p99 of latencies, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

/// `nsenter -t PID -n tc ...`: the peers' mechanism, one process per operation.
fn nsenter_tc(pid: u32, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let pid = pid.to_string();
    let mut argv = vec!["-t", pid.as_str(), "-n", "tc"];
    argv.extend_from_slice(args);
    let output = Command::new("nsenter").args(&argv).output()?;
    ensure!(output.status.success(), "nsenter tc {args:?}: {output:?}");
    Ok(started.elapsed())
}

const PEER_ADD: [&str; 9] = [
    "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "50ms", "10ms",
];
/// tc's words for the agent's tbf at [`LIMIT_BYTES_PER_SECOND`] (2 Mbit/s, a 16 KiB
/// bucket and 100 ms of queue).
const PEER_ADD_TBF: [&str; 12] = [
    "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "2mbit", "burst", "16384", "limit",
    "41384",
];
const PEER_DEL: [&str; 5] = ["qdisc", "del", "dev", "eth0", "root"];

/// The median of every `NAME_us=N` field over the last `rounds` log lines carrying
/// `message`, e.g. "resolve 120us, prepare 3400us".
fn phase_medians(log: &str, message: &str, rounds: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        // "TARGET: MESSAGE FIELDS": the colon keeps "revert phases" from matching
        // "network revert phases".
        .filter(|line| line.contains(&format!(": {message} ")))
        .collect();
    let lines = &lines[lines.len().saturating_sub(rounds)..];
    let mut fields: Vec<(String, Vec<u64>)> = Vec::new();
    for line in lines {
        for (name, value) in line
            .split_whitespace()
            .filter_map(|token| token.split_once("_us="))
        {
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match fields.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => fields.push((name.to_string(), vec![value])),
            }
        }
    }
    if fields.is_empty() {
        return format!("no {message:?} lines in the agent's log");
    }
    fields
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_unstable();
            format!("{name} {}us", values[values.len() / 2])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(label: &str, samples: Vec<Duration>) {
    let count = samples.len();
    let (p50, p99) = percentiles(samples);
    println!("BENCH {label}: n={count} p50={p50:.1}ms p99={p99:.1}ms");
}

/// Inject + revert latency of a netem fault through the agent (one reused mTLS channel
/// on loopback) vs `nsenter -t PID -n tc qdisc replace/del`, for 1 target in a row and
/// 100 at once. Run by bench/network/run in the VM; prints `BENCH ...` lines.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM (bench/network/run)"]
async fn vm_bench_inject_and_revert_latency_vs_nsenter_tc() -> Result<()> {
    let fault = api::NetworkFault {
        jitter_us: 10_000,
        ..delay(50)
    };
    bench_inject_and_revert(fault, "netem", &PEER_ADD).await
}

/// The same bench for a bandwidth limit (a tbf), which this host's kernel has: the one
/// network fault measurable here natively, without the VM's emulation. Run by
/// bench/bandwidth/run on the host.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run by bench/bandwidth/run"]
async fn bench_bandwidth_inject_and_revert_latency_vs_nsenter_tc() -> Result<()> {
    let fault = api::NetworkFault {
        rate_bytes_per_second: LIMIT_BYTES_PER_SECOND,
        ..Default::default()
    };
    bench_inject_and_revert(fault, "tbf", &PEER_ADD_TBF).await
}

/// What `peer_add` installs must be what the agent installs for `fault` (`kind`).
async fn bench_inject_and_revert(
    fault: api::NetworkFault,
    kind: &'static str,
    peer_add: &'static [&'static str],
) -> Result<()> {
    const ROUNDS: usize = 30;
    const CONCURRENT: usize = 100;
    // The journal on a tmpfs: the VM's /tmp is an overlay over the host's /tmp through
    // 9p, where creating a file costs a round trip to the host. A node's state directory
    // is on its local disk, and the journal is not fsynced (journal.rs), so its writes
    // end in the page cache, as on a tmpfs.
    let state = tempfile::Builder::new()
        .prefix("chaos-test-state-")
        .tempdir_in("/dev/shm")?;
    let tls = make_certs()?;
    // The targets are plain processes in the namespaces (see Sleeper).
    let agent = agent_allowing_host_processes(&tls, &state, &[])?;
    if kind == "netem" {
        chaos_tests::agent::require_netem(&agent).await?;
    }
    let client = agent.client().await?;
    let fault = std::sync::Arc::new(fault);
    let inject_revert = move |mut client: chaos_proto::api::agent_client::AgentClient<
        tonic::transport::Channel,
    >,
                              target: String| {
        let request = network(&target, Duration::from_secs(600), (*fault).clone());
        async move {
            let started = Instant::now();
            let fault = client
                .inject(request)
                .await?
                .into_inner()
                .fault
                .context("no fault")?;
            let inject = started.elapsed();
            ensure!(
                installed(&fault).starts_with(kind),
                "the agent installed {:?}, not {kind}",
                installed(&fault)
            );
            let started = Instant::now();
            client
                .revert(api::RevertRequest {
                    id: fault.id,
                    all: false,
                })
                .await?;
            anyhow::Ok((inject, started.elapsed()))
        }
    };

    // One target, sequential rounds.
    let netns = TestNetns::create()?;
    let sleeper = Sleeper::start(&netns)?;
    // One unrecorded round each: the first request pays for the agent's TLS session and
    // thread start, the first tc for loading its binary and libraries from the 9p disk.
    inject_revert(client.clone(), sleeper.target()).await?;
    nsenter_tc(sleeper.pid(), peer_add)?;
    nsenter_tc(sleeper.pid(), &PEER_DEL)?;
    let (mut injects, mut reverts, mut adds, mut dels) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (inject, revert) = inject_revert(client.clone(), sleeper.target()).await?;
        injects.push(inject);
        reverts.push(revert);
        adds.push(nsenter_tc(sleeper.pid(), peer_add)?);
        dels.push(nsenter_tc(sleeper.pid(), &PEER_DEL)?);
    }
    report("1 target: agent inject", injects);
    report("1 target: agent revert", reverts);
    report(&format!("1 target: nsenter tc replace {kind}"), adds);
    report("1 target: nsenter tc del", dels);
    // Where the agent's time goes: its own phase log for those rounds, and the cost of a
    // request that does no work (List, nothing active) as the gRPC + mTLS floor.
    let log = agent.log();
    for message in [
        "inject request phases",
        "injection phases",
        "pid lookup phases",
        "network prepare phases",
        "network inspect phases",
        "network apply phases",
        "revert request phases",
        "revert phases",
        "network revert phases",
    ] {
        println!(
            "BENCH 1 target: agent {message} p50: {}",
            phase_medians(&log, message, ROUNDS)
        );
    }
    let mut floor = vec![];
    for _ in 0..ROUNDS {
        let started = Instant::now();
        client.clone().list(api::ListRequest::default()).await?;
        floor.push(started.elapsed());
    }
    report("1 target: agent List (gRPC floor)", floor);
    drop(sleeper);
    drop(netns);

    // 100 targets at once.
    let mut namespaces = Vec::with_capacity(CONCURRENT);
    for _ in 0..CONCURRENT {
        let netns = TestNetns::create()?;
        let sleeper = Sleeper::start(&netns)?;
        namespaces.push((sleeper, netns));
    }
    let started = Instant::now();
    let tasks: Vec<_> = namespaces
        .iter()
        .map(|(sleeper, _)| tokio::spawn(inject_revert(client.clone(), sleeper.target())))
        .collect();
    let (mut injects, mut reverts) = (vec![], vec![]);
    for task in tasks {
        let (inject, revert) = task.await??;
        injects.push(inject);
        reverts.push(revert);
    }
    let agent_wall = started.elapsed();
    report("100 targets: agent inject", injects);
    report("100 targets: agent revert", reverts);
    println!("BENCH 100 targets: agent inject+revert wall {agent_wall:?}");

    let pids: Vec<u32> = namespaces.iter().map(|(s, _)| s.pid()).collect();
    let started = Instant::now();
    let run_all = |args: &'static [&'static str]| {
        let threads: Vec<_> = pids
            .iter()
            .map(|&pid| std::thread::spawn(move || nsenter_tc(pid, args)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| anyhow::anyhow!("panicked"))?)
            .collect::<Result<Vec<Duration>>>()
    };
    let adds = run_all(peer_add)?;
    let dels = run_all(&PEER_DEL)?;
    let peer_wall = started.elapsed();
    report(&format!("100 targets: nsenter tc replace {kind}"), adds);
    report("100 targets: nsenter tc del", dels);
    println!("BENCH 100 targets: nsenter tc replace+del wall {peer_wall:?}");
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// An agent with mTLS on a kernel with netem, and a veth netns with a pod's container in it
/// as the target. Bound in this order, they drop in reverse: target first, agent, then files.
async fn netem_rig() -> Result<Rig> {
    let rig = rig()?;
    chaos_tests::agent::require_netem(&rig.2).await?;
    Ok(rig)
}

/// Certificates, state directory, agent (mTLS), a veth netns and a pod's container in it
/// as the target.
type Rig = (
    tempfile::TempDir,
    tempfile::TempDir,
    TestAgent,
    TestNetns,
    TestContainer,
);

/// The same rig on any kernel (the host tests check what happens without netem).
fn rig() -> Result<Rig> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let netns = TestNetns::create()?;
    let pod = pod_in(&netns)?;
    Ok((tls, state, agent, netns, pod))
}

/// A root qdisc a user may have installed (tbf), which every fault must put back.
fn install_user_tbf(netns: &TestNetns) -> Result<()> {
    netns
        .exec(&[
            "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf", "rate", "100mbit",
            "burst", "32kb", "latency", "50ms",
        ])?
        .check()?;
    Ok(())
}

/// What a user may already have on an interface: an ingress qdisc with one u32 filter,
/// which every fault must leave exactly as it was.
fn install_user_ingress(netns: &TestNetns) -> Result<()> {
    netns
        .exec(&["tc", "qdisc", "add", "dev", "eth0", "ingress"])?
        .check()?;
    let filter = "filter add dev eth0 parent ffff: protocol ip prio 10 u32 match ip dst 10.9.0.0/16 classid 1:1";
    let mut command = vec!["tc"];
    command.extend(filter.split(' '));
    netns.exec(&command)?.check()?;
    Ok(())
}
