//! The DNS kind through a real agent on a real containerd container: the container's network
//! namespace (a veth to the host, as a CNI gives a pod) resolves through dnsmasq on the host
//! end, named in its /etc/resolv.conf (bind-mounted, as the kubelet does). Lookups are made
//! from inside: busybox's nslookup in the container, and UDP and TCP queries from a thread
//! that entered its namespace. The faulted names fail as asked, another name resolves
//! through dnsmasq, and after the revert (and after an agent SIGKILL and restart) the
//! namespace has no nftables table and nothing of the agent listens in it.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{
    AgentOptions, TestAgent, ensure_recovered, inject_fault, inject_refused, journal_len,
    make_certs, state_dir,
};
use chaos_tests::command::run_bounded;
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::dns::{Answer, Dnsmasq, Transport, in_netns, lookup, lookup_from};
use chaos_tests::netns::TestNetns;
use chaos_tests::scaled;
use hickory_proto::op::ResponseCode;

const OK: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const FAULTED: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
const GIVEN: Ipv4Addr = Ipv4Addr::new(10, 7, 7, 7);
/// The nftables table the agent installs (agent `dns::redirect::TABLE`).
const TABLE: &str = "chaos_dns";

/// A pod: its namespace, dnsmasq on the host end of its veth, a container in it whose
/// resolv.conf names that dnsmasq. Dropped in reverse: container, dnsmasq, namespace.
struct Rig {
    container: TestContainer,
    dnsmasq: Dnsmasq,
    netns: TestNetns,
    _resolv_dir: tempfile::TempDir,
}

impl Rig {
    fn start(pod: &str) -> Result<Rig> {
        let netns = TestNetns::create()?;
        let dnsmasq = Dnsmasq::start(
            netns.host_ip(),
            53,
            &[
                ("ok.test", OK),
                ("faulted.test", FAULTED),
                ("given.test", FAULTED),
                ("silent.test", FAULTED),
            ],
        )?;
        let resolv_dir = tempfile::Builder::new()
            .prefix("chaos-test-resolv-")
            .tempdir()?;
        let resolv = resolv_dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            format!(
                "search test\nnameserver {}\noptions ndots:1\n",
                netns.host_ip()
            ),
        )?;
        let container = TestContainer::start(ContainerSpec {
            netns: Some(netns.path()),
            read_only_mounts: vec![(resolv, "/etc/resolv.conf".into())],
            ..ContainerSpec::pod("chaos-test", pod, "main")
        })?;
        Ok(Rig {
            container,
            dnsmasq,
            netns,
            _resolv_dir: resolv_dir,
        })
    }

    /// A query from inside the pod's namespace, to its nameserver as resolv.conf names it.
    fn ask(&self, name: &str, transport: Transport) -> Result<Option<Answer>> {
        let server = self.dnsmasq.address;
        in_netns(&self.netns.path(), || {
            lookup(server, name, transport, scaled(Duration::from_secs(2)))
        })
    }

    /// A UDP query from inside the pod's namespace from a fixed source port: the same flow
    /// (5-tuple) every time, as a client that keeps its socket.
    fn ask_from_port(&self, port: u16, name: &str) -> Result<Option<Answer>> {
        let (server, from) = (self.dnsmasq.address, (self.netns.inner_ip(), port).into());
        in_netns(&self.netns.path(), || {
            lookup_from(from, server, name, scaled(Duration::from_secs(2)))
        })
    }

    /// busybox nslookup inside the container (it reads /etc/resolv.conf): its output.
    fn nslookup(&self, name: &str) -> Result<String> {
        let output = self.container.exec(&["/bin/nslookup", name])?;
        Ok(format!("{}{}", output.stdout, output.stderr))
    }

    /// The namespace's nftables ruleset as `nft` lists it.
    fn ruleset(&self) -> Result<String> {
        let output = run_bounded(
            "ip",
            &["netns", "exec", self.netns.name(), "nft", "list", "ruleset"],
            Duration::from_secs(20),
        )?
        .check()
        .context("nft list ruleset (apt-get install nftables)")?;
        Ok(output.stdout)
    }

    /// The sockets listening in the namespace (UDP and TCP), as `ss` lists them.
    fn listening(&self) -> Result<String> {
        let output = run_bounded(
            "ip",
            &["netns", "exec", self.netns.name(), "ss", "-lntuH"],
            Duration::from_secs(20),
        )?
        .check()?;
        Ok(output.stdout)
    }

    /// Every name answers as dnsmasq has it, over UDP and TCP, and the namespace holds no
    /// trace of a fault.
    fn ensure_untouched(&self) -> Result<()> {
        for transport in [Transport::Udp, Transport::Tcp] {
            for (name, address) in [
                ("ok.test", OK),
                ("faulted.test", FAULTED),
                ("given.test", FAULTED),
                ("silent.test", FAULTED),
            ] {
                let answer = self.ask(name, transport)?;
                ensure!(
                    answer == Some(Answer::Addresses(vec![address])),
                    "{name} over {transport:?}: {answer:?}"
                );
            }
        }
        let ruleset = self.ruleset()?;
        ensure!(!ruleset.contains(TABLE), "left behind:\n{ruleset}");
        let listening = self.listening()?;
        ensure!(
            listening.trim().is_empty(),
            "listening in the pod:\n{listening}"
        );
        Ok(())
    }
}

fn dns_fault(target: &str, duration: Duration) -> api::InjectRequest {
    let rule = |pattern: &str, action: api::DnsAction| api::DnsRule {
        pattern: pattern.into(),
        action: action as i32,
        ..Default::default()
    };
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Dns(api::DnsFault {
            rules: vec![
                rule("faulted.test", api::DnsAction::Nxdomain),
                api::DnsRule {
                    addresses: vec![GIVEN.to_string()],
                    ..rule("given.test", api::DnsAction::Answer)
                },
                rule("silent.test", api::DnsAction::Drop),
            ],
        })),
        ..Default::default()
    }
}

/// The faulted names fail as asked and ok.test resolves through dnsmasq, over both
/// transports and from busybox in the container.
fn ensure_faulted(rig: &Rig) -> Result<()> {
    for transport in [Transport::Udp, Transport::Tcp] {
        let ask = |name| rig.ask(name, transport);
        ensure!(
            ask("ok.test")? == Some(Answer::Addresses(vec![OK])),
            "ok.test over {transport:?}"
        );
        ensure!(
            ask("faulted.test")? == Some(Answer::Code(ResponseCode::NXDomain)),
            "faulted.test over {transport:?}: {:?}",
            ask("faulted.test")
        );
        ensure!(
            ask("given.test")? == Some(Answer::Addresses(vec![GIVEN])),
            "given.test over {transport:?}"
        );
        ensure!(
            ask("silent.test")?.is_none(),
            "silent.test over {transport:?}"
        );
    }
    let faulted = rig.nslookup("faulted.test")?;
    ensure!(
        faulted.contains("NXDOMAIN"),
        "nslookup faulted.test:\n{faulted}"
    );
    let ok = rig.nslookup("ok.test")?;
    ensure!(ok.contains(&OK.to_string()), "nslookup ok.test:\n{ok}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_fault_fails_the_names_asked_resolves_the_rest_and_leaves_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("dns")?;
    rig.ensure_untouched()?;
    let mut client = agent.client().await?;

    let fault = inject_fault(
        &mut client,
        dns_fault(&rig.container.pod_target(), Duration::from_secs(120)),
    )
    .await?;
    ensure!(fault.state == api::FaultState::Active as i32, "{fault:?}");
    ensure_faulted(&rig)?;
    let ruleset = rig.ruleset()?;
    ensure!(
        ruleset.contains(TABLE) && ruleset.contains(&format!("ip daddr {}", rig.netns.host_ip())),
        "the redirect as nft lists it:\n{ruleset}"
    );
    // The status is refreshed every second: the lookups above show within a few.
    let mut status = api::DnsStatus::default();
    for _ in 0..50 {
        status = match client
            .get(api::GetRequest {
                id: fault.id.clone(),
            })
            .await?
            .into_inner()
            .status
        {
            Some(api::fault::Status::Dns(status)) => status,
            other => bail!("no DNS status: {other:?}"),
        };
        if status.faulted >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(status.redirects.len() == 1, "{status:?}");
    // Per transport: faulted.test, given.test, silent.test faulted; ok.test forwarded;
    // busybox's two lookups add theirs.
    ensure!(
        status.faulted >= 6 && status.forwarded >= 2 && status.queries >= status.faulted,
        "{status:?}"
    );
    // A second DNS fault on the same namespace is refused, the first untouched.
    let second = inject_refused(
        &client,
        dns_fault(&rig.container.target(), Duration::from_secs(60)),
    )
    .await?;
    ensure!(
        second.code() == tonic::Code::FailedPrecondition
            && second.message().contains("already carries a DNS fault"),
        "{second:?}"
    );
    ensure!(rig.ask("faulted.test", Transport::Udp)? == Some(Answer::Code(ResponseCode::NXDomain)));

    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    rig.ensure_untouched()?;
    ensure!(journal_len(state.path()) == 0);
    Ok(())
}

/// The responder's own queries to the nameserver leave from the pod's address, past the
/// redirect; their conntrack entries outlive a closed socket by 30-120 s, and a client that
/// drew the same source port would pass the redirect with them. Thousands of forwarded
/// lookups, then every lookup of a faulted name must still be faulted (with a socket per
/// forwarded query, one in a few hundred resolved: found by bench/dns).
#[tokio::test(flavor = "multi_thread")]
async fn a_faulted_name_stays_faulted_after_thousands_of_forwarded_lookups() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("dns-ports")?;
    let mut client = agent.client().await?;
    inject_fault(
        &mut client,
        dns_fault(&rig.container.target(), Duration::from_secs(300)),
    )
    .await?;
    let rounds = if chaos_tests::long_run() {
        20_000
    } else {
        4_000
    };
    timed_lookups(&rig, "ok.test", &Answer::Addresses(vec![OK]), rounds)?;
    timed_lookups(
        &rig,
        "faulted.test",
        &Answer::Code(ResponseCode::NXDomain),
        rounds,
    )?;
    client
        .revert(api::RevertRequest {
            id: String::new(),
            all: true,
        })
        .await?;
    rig.ensure_untouched()?;
    Ok(())
}

/// A flow's NAT binding is in its conntrack entry, not in the rule: a UDP flow from before
/// the fault would pass its redirect, and one redirected during it would keep going to the
/// stopped responder after it. The same source port before, during and after.
#[tokio::test(flavor = "multi_thread")]
async fn a_flow_from_before_the_fault_is_faulted_and_one_from_during_it_is_not_after() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("dns-flows")?;
    // Connection tracking runs in a namespace only once something there needs it: a
    // firewall's `ct state` rule (or a service mesh's NAT) in the pod, as this table of the
    // test's own has. The lookup before the fault then leaves an entry of its flow.
    for command in [
        "add table inet chaos-test-firewall",
        "add chain inet chaos-test-firewall out { type filter hook output priority 0; }",
        "add rule inet chaos-test-firewall out ct state established,related,new accept",
    ] {
        run_bounded(
            "ip",
            &["netns", "exec", rig.netns.name(), "nft", command],
            Duration::from_secs(20),
        )?
        .check()?;
    }
    let port = 45353;
    let real = Some(Answer::Addresses(vec![FAULTED]));
    ensure!(rig.ask_from_port(port, "faulted.test")? == real, "before");
    let mut client = agent.client().await?;
    let fault = inject_fault(
        &mut client,
        dns_fault(&rig.container.target(), Duration::from_secs(120)),
    )
    .await?;
    let during = rig.ask_from_port(port, "faulted.test")?;
    ensure!(
        during == Some(Answer::Code(ResponseCode::NXDomain)),
        "the flow from before the fault escaped it: {during:?}"
    );
    client
        .revert(api::RevertRequest {
            id: fault.id,
            all: false,
        })
        .await?;
    let after = rig.ask_from_port(port, "faulted.test")?;
    ensure!(
        after == real,
        "the flow from during the fault after its revert: {after:?}"
    );
    rig.ensure_untouched()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_fault_ends_at_its_deadline_and_a_killed_agent_leaves_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("dns-crash")?;
    let mut client = agent.client().await?;

    // The deadline: the agent ends it by itself.
    let fault = inject_fault(
        &mut client,
        dns_fault(&rig.container.target(), scaled(Duration::from_secs(3))),
    )
    .await?;
    ensure!(
        rig.ask("faulted.test", Transport::Udp)? == Some(Answer::Code(ResponseCode::NXDomain)),
        "not faulted"
    );
    chaos_tests::agent::wait_fault_state(
        &agent,
        &fault.id,
        api::FaultState::Expired,
        scaled(Duration::from_secs(20)),
    )
    .await?;
    rig.ensure_untouched()?;

    // SIGKILL: nothing may stay redirected to a port where nothing listens.
    inject_fault(
        &mut client,
        dns_fault(&rig.container.target(), Duration::from_secs(300)),
    )
    .await?;
    ensure_faulted(&rig)?;
    ensure!(journal_len(state.path()) == 1);
    agent.kill_hard()?;
    // The kernel removes a table its socket owns when the socket closes (5.12+); an
    // older kernel keeps it until the restarted agent's replay.
    let after_kill = rig.ruleset()?;
    let owned = !after_kill.contains(TABLE);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    ensure_recovered(&agent, api::FaultKind::Dns).await?;
    rig.ensure_untouched()?;
    ensure!(journal_len(state.path()) == 0);
    eprintln!(
        "after SIGKILL the table was {}",
        if owned {
            "already gone (owned by the socket)"
        } else {
            "left for the replay"
        }
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_fault_in_the_nodes_namespace_is_refused_by_every_route() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    // Even an agent that takes processes of the node and node-scope network faults.
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--allow-host-processes".into(), "--allow-node-scope".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })?;
    let client = agent.client().await?;
    // A hostNetwork pod: a container in the node's network namespace (the test process
    // stands for the node: it is the agent's --node-pid).
    let host_network = TestContainer::start(ContainerSpec {
        netns: Some(format!("/proc/{}/ns/net", std::process::id()).into()),
        ..ContainerSpec::pod("chaos-test", "dns-host-network", "main")
    })?;
    let node_process = format!("pid:{}", std::process::id());
    for target in [
        host_network.pod_target(),
        host_network.target(),
        format!("pid:{}", host_network.pid()?),
        node_process,
    ] {
        let refused = inject_refused(&client, dns_fault(&target, Duration::from_secs(30))).await?;
        ensure!(
            refused.code() == tonic::Code::PermissionDenied
                && refused.message().contains("node's network namespace")
                && refused.message().contains("never permitted"),
            "{target}: {refused:?}"
        );
    }
    let ruleset = run_bounded("nft", &["list", "ruleset"], Duration::from_secs(20))?.check()?;
    ensure!(!ruleset.stdout.contains(TABLE), "{}", ruleset.stdout);
    ensure!(journal_len(state.path()) == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_fault_ends_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    for churn in chaos_tests::churn::ALL {
        let rig = Rig::start(&format!("dns-churn-{churn:?}").to_lowercase())?;
        let fault = inject_fault(
            &mut client,
            dns_fault(&rig.container.target(), Duration::from_secs(300)),
        )
        .await?;
        ensure!(
            rig.ask("faulted.test", Transport::Udp)? == Some(Answer::Code(ResponseCode::NXDomain)),
            "{churn:?}: not faulted"
        );
        churn.apply(&rig.container)?;
        // The fault's sockets hold the pod's namespace: it lets go as soon as the init is
        // seen gone, not at the deadline. (A restarted task is a new target: not faulted.)
        let ended = chaos_tests::agent::wait_fault_state(
            &agent,
            &fault.id,
            api::FaultState::Completed,
            scaled(Duration::from_secs(10)),
        )
        .await?;
        ensure!(
            ended.message.contains("target is gone"),
            "{churn:?}: {ended:?}"
        );
        rig.ensure_untouched()
            .with_context(|| format!("after {churn:?}"))?;
        ensure!(journal_len(state.path()) == 0, "{churn:?}");
    }
    Ok(())
}

/// Latencies of `rounds` sequential UDP lookups of `name` from inside the rig's namespace,
/// each checked against `expected`, sorted.
fn timed_lookups(rig: &Rig, name: &str, expected: &Answer, rounds: usize) -> Result<Vec<Duration>> {
    let server = rig.dnsmasq.address;
    let expected = expected.clone();
    let name = name.to_string();
    in_netns(&rig.netns.path(), move || {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = std::time::Instant::now();
            let answer = lookup(server, &name, Transport::Udp, Duration::from_secs(2))?;
            times.push(started.elapsed());
            ensure!(answer.as_ref() == Some(&expected), "{name}: {answer:?}");
        }
        times.sort();
        Ok(times)
    })
}

/// Queries per second of `threads` clients in the namespace, each asking `name` `rounds`
/// times in a row.
fn throughput(rig: &Rig, name: &str, threads: usize, rounds: usize) -> Result<f64> {
    let started = std::time::Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| timed_lookups(rig, name, &Answer::Addresses(vec![OK]), rounds)))
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        Ok(())
    })?;
    Ok((threads * rounds) as f64 / started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What a DNS fault costs the names it does not fault: ok.test asked straight of dnsmasq
/// (no fault) and through the fault's responder (forwarded), in the same run, p50/p99 of
/// sequential lookups and the throughput of 8 clients; and a faulted name answered by the
/// responder itself. Run by bench/dns/run; prints `BENCH ...` lines.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: bench/dns/run"]
async fn bench_dns_lookups_through_the_fault_vs_straight_to_the_resolver() -> Result<()> {
    const ROUNDS: usize = 2000;
    const CLIENTS: usize = 8;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("dns-bench")?;
    let ok = Answer::Addresses(vec![OK]);
    // Warm dnsmasq's cache and the path.
    timed_lookups(&rig, "ok.test", &ok, 100)?;
    let mut client = agent.client().await?;
    let report = |label: &str, times: &[Duration]| {
        println!(
            "BENCH {label}: n={} p50={:.0}us p99={:.0}us",
            times.len(),
            percentile(times, 0.5).as_secs_f64() * 1e6,
            percentile(times, 0.99).as_secs_f64() * 1e6
        );
    };
    for round in 1..=3 {
        let straight = timed_lookups(&rig, "ok.test", &ok, ROUNDS)?;
        let straight_qps = throughput(&rig, "ok.test", CLIENTS, ROUNDS / 4)?;
        let fault = inject_fault(
            &mut client,
            dns_fault(&rig.container.target(), Duration::from_secs(300)),
        )
        .await?;
        let forwarded = timed_lookups(&rig, "ok.test", &ok, ROUNDS)?;
        let forwarded_qps = throughput(&rig, "ok.test", CLIENTS, ROUNDS / 4)?;
        let answered = timed_lookups(
            &rig,
            "faulted.test",
            &Answer::Code(ResponseCode::NXDomain),
            ROUNDS,
        )?;
        client
            .revert(api::RevertRequest {
                id: fault.id,
                all: false,
            })
            .await?;
        report(
            &format!("round {round} ok.test straight to dnsmasq"),
            &straight,
        );
        report(
            &format!("round {round} ok.test forwarded by the fault"),
            &forwarded,
        );
        report(
            &format!("round {round} faulted.test answered by the fault"),
            &answered,
        );
        println!(
            "BENCH round {round} {CLIENTS} clients: straight {straight_qps:.0}/s, through the fault {forwarded_qps:.0}/s"
        );
    }
    rig.ensure_untouched()?;
    Ok(())
}
