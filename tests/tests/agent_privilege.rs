//! Least privilege: the real agent started as an ordinary process (uid 0) holding only
//! the capabilities the DaemonSet grants (`setpriv`, effective = permitted = ambient =
//! bounding), running one fault of every kind against a real containerd container, each
//! read back from the kernel and reverted; and an agent without one capability refusing
//! the kinds that need it with FAILED_PRECONDITION naming it, changing nothing.
//!
//! The host has tbf but no netem, so the host test's network fault is rate-only (a tbf);
//! netem network faults and blackholes run in the VM (`vm_*`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{AgentOptions, TestAgent, journal_len, make_certs, state_dir};
use chaos_tests::command::run_bounded;
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::loopdisk::LoopDisk;
use chaos_tests::process::state as process_state;
use chaos_tests::scaled;

/// What manifests/base/daemonset.yaml adds (setpriv's names; the manifest checks hold
/// the same set in Kubernetes' spelling).
const AGENT_CAPABILITIES: &[&str] = &["kill", "net_admin", "sys_admin", "sys_ptrace"];
const MIB: u64 = 1 << 20;

fn agent_options(tls: &std::path::Path, state: &std::path::Path) -> AgentOptions {
    AgentOptions {
        tls_dir: Some(tls.to_path_buf()),
        state_dir: state.to_path_buf(),
        // The process fault against another user's process targets a process of the node.
        extra_args: vec!["--allow-host-processes".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
    }
}

fn request(target: &str, fault: api::inject_request::Fault) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: 120_000,
        fault: Some(fault),
        ..Default::default()
    }
}

fn signal(name: &str) -> api::inject_request::Fault {
    api::inject_request::Fault::Process(api::ProcessFault {
        signal: name.into(),
        ..Default::default()
    })
}

fn rate_on_lo() -> api::inject_request::Fault {
    api::inject_request::Fault::Network(api::NetworkFault {
        rate_bytes_per_second: 1_000_000,
        interface: "lo".into(),
        ..Default::default()
    })
}

fn delay_on_lo() -> api::inject_request::Fault {
    api::inject_request::Fault::Network(api::NetworkFault {
        delay_us: 50_000,
        interface: "lo".into(),
        ..Default::default()
    })
}

fn blackhole_on_lo() -> api::inject_request::Fault {
    api::inject_request::Fault::Blackhole(api::BlackholeFault {
        interface: "lo".into(),
        ..Default::default()
    })
}

async fn inject(agent: &TestAgent, request: api::InjectRequest) -> Result<api::Fault> {
    let fault = agent
        .client()
        .await?
        .inject(request)
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    ensure!(
        fault.state == api::FaultState::Active as i32,
        "not active: {fault:?}"
    );
    Ok(fault)
}

async fn revert(agent: &TestAgent, id: &str) -> Result<()> {
    let reverted = agent
        .client()
        .await?
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await?
        .into_inner();
    ensure!(reverted.reverted.len() == 1, "{reverted:?}");
    Ok(())
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + scaled(within);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("not {what} within {:?}", scaled(within))
}

/// The pids in the container's cgroup other than its init: the stressors.
fn stressors_in(container: &TestContainer) -> Result<Vec<u32>> {
    let init = container.pid()?;
    let procs = std::fs::read_to_string(container.cgroup_dir()?.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != init)
        .collect())
}

fn effective_capabilities(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_string())
        .context("no CapEff")
}

/// The root qdiscs on the container's `lo`, read inside its network namespace.
fn qdiscs_on_lo(pid: u32) -> Result<String> {
    let pid = pid.to_string();
    let out = run_bounded(
        "nsenter",
        &["-t", &pid, "-n", "tc", "qdisc", "show", "dev", "lo"],
        Duration::from_secs(30),
    )?
    .check()?;
    Ok(out.stdout)
}

/// A process of another user (nobody): signalling it needs CAP_KILL. Killed on drop.
struct OtherUsersProcess(Child);

impl OtherUsersProcess {
    fn start() -> Result<OtherUsersProcess> {
        let child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("starting sleep as nobody")?;
        let process = OtherUsersProcess(child);
        let pid = process.pid();
        // Running as nobody once setpriv has exec'd sleep.
        wait_until("running as nobody", Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| s.lines().any(|l| l.starts_with("Uid:\t65534")))
                .unwrap_or(false)
        })?;
        Ok(process)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for OtherUsersProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn limited_container() -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("dev", &format!("lp-{}", std::process::id()), "app");
    spec.cpus = Some(0.5);
    spec.memory_limit_bytes = Some(256 * MIB);
    TestContainer::start(spec)
}

/// A DNS fault of one rule.
fn dns_rule(pattern: &str, action: api::DnsAction) -> api::inject_request::Fault {
    api::inject_request::Fault::Dns(api::DnsFault {
        rules: vec![api::DnsRule {
            pattern: pattern.into(),
            action: action as i32,
            ..Default::default()
        }],
    })
}

/// `fault` on `target` is refused as a failed precondition whose message holds `naming`.
async fn refused_naming(
    agent: &TestAgent,
    target: &str,
    fault: api::inject_request::Fault,
    naming: &str,
) -> Result<()> {
    let refused = agent
        .client()
        .await?
        .inject(request(target, fault))
        .await
        .expect_err("a fault without its capability");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains(naming), "{}", refused.message());
    Ok(())
}

/// A container whose /etc/resolv.conf names a nameserver (bind-mounted, as the kubelet
/// does), for a DNS fault; the file lives as long as the container.
fn container_with_resolv_conf() -> Result<(TestContainer, tempfile::NamedTempFile)> {
    let resolv_conf = tempfile::Builder::new()
        .prefix("chaos-test-resolv-")
        .tempfile()?;
    std::fs::write(resolv_conf.path(), "nameserver 10.96.0.10\n")?;
    let mut spec = ContainerSpec::pod("dev", &format!("lp-dns-{}", std::process::id()), "app");
    spec.read_only_mounts = vec![(resolv_conf.path().to_path_buf(), "/etc/resolv.conf".into())];
    Ok((TestContainer::start(spec)?, resolv_conf))
}

/// The namespace's nftables ruleset, as `nft` lists it from inside.
fn ruleset_of(pid: u32) -> Result<String> {
    let pid = pid.to_string();
    Ok(run_bounded(
        "nsenter",
        &["-t", &pid, "-n", "nft", "list", "ruleset"],
        Duration::from_secs(20),
    )?
    .check()?
    .stdout)
}

/// The agent holds exactly the DaemonSet's set, and Capabilities says every kind is usable.
async fn start_least_privileged(
    tls: &std::path::Path,
    state: &std::path::Path,
) -> Result<TestAgent> {
    let agent = TestAgent::start_with_capabilities(agent_options(tls, state), AGENT_CAPABILITIES)?;
    // CAP_KILL (5), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
    assert_eq!(effective_capabilities(agent.pid())?, "0000000000281020");
    let report = agent
        .client()
        .await?
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    assert_eq!(
        report.held_capabilities,
        [
            "CAP_KILL",
            "CAP_NET_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_SYS_ADMIN"
        ]
    );
    assert_eq!(report.kind_privileges.len(), 10, "{report:?}");
    assert!(
        report
            .kind_privileges
            .iter()
            .all(|k| k.usable && k.missing_capabilities.is_empty()),
        "{report:?}"
    );
    Ok(agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_least_privilege_agent_runs_a_fault_of_every_host_kind() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = start_least_privileged(tls.path(), state.path()).await?;
    let container = limited_container()?;
    let target = container.target();
    let init = container.pid()?;

    // A stop, held until the revert continues it.
    let stop = inject(&agent, request(&target, signal("STOP"))).await?;
    wait_until("stopped", Duration::from_secs(5), || {
        process_state(init) == Some('T')
    })?;
    revert(&agent, &stop.id).await?;
    wait_until("continued", Duration::from_secs(5), || {
        process_state(init).is_some_and(|s| s != 'T')
    })?;

    // CPU and memory: a stressor in the target's cgroup, holding no capability.
    for fault in [
        api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: 50,
            ..Default::default()
        }),
        api::inject_request::Fault::Memory(api::MemoryFault {
            size_bytes: 16 * MIB,
            ..Default::default()
        }),
    ] {
        let injected = inject(&agent, request(&target, fault)).await?;
        let stressors = stressors_in(&container)?;
        ensure!(!stressors.is_empty(), "no stressor in the target's cgroup");
        // The child drops its capabilities after the go line: wait for that, bounded.
        wait_until(
            "stressors without capabilities",
            Duration::from_secs(10),
            || {
                stressors
                    .iter()
                    .all(|pid| effective_capabilities(*pid).is_ok_and(|c| c == "0000000000000000"))
            },
        )?;
        revert(&agent, &injected.id).await?;
        wait_until("stressors gone", Duration::from_secs(10), || {
            stressors_in(&container).is_ok_and(|s| s.is_empty())
        })?;
    }

    // A pause: the container's freezer cgroup, frozen until the revert thaws it.
    let pause = inject(
        &agent,
        request(
            &target,
            api::inject_request::Fault::Pause(api::PauseFault {}),
        ),
    )
    .await?;
    ensure!(container.is_frozen()?, "the container is not frozen");
    revert(&agent, &pause.id).await?;
    ensure!(!container.is_frozen()?, "the container is still frozen");

    // An IO limit on a disk of the test's own: the cgroup's blkio (or io.max) file,
    // read back through the status, and gone after the revert.
    let disk = LoopDisk::new(16)?;
    let io = inject(
        &agent,
        request(
            &target,
            api::inject_request::Fault::Io(api::IoFault {
                write_bytes_per_second: MIB,
                device: disk.name().to_string(),
                ..Default::default()
            }),
        ),
    )
    .await?;
    match &io.status {
        Some(api::fault::Status::Io(status)) => ensure!(
            status.devices.len() == 1 && status.devices[0].write_bytes_per_second == MIB,
            "{status:?}"
        ),
        other => bail!("no io status: {other:?}"),
    }
    revert(&agent, &io.id).await?;

    // A disk fill of the writable root (CAP_SYS_PTRACE: the target's /proc/PID/root),
    // small: the node's filesystem.
    let fill = inject(
        &agent,
        request(
            &target,
            api::inject_request::Fault::DiskFill(api::DiskFillFault {
                size_bytes: 2 * MIB,
                ..Default::default()
            }),
        ),
    )
    .await?;
    match &fill.status {
        Some(api::fault::Status::DiskFill(status)) => ensure!(
            status.files.len() == 1 && status.files[0].bytes >= 2 * MIB,
            "{status:?}"
        ),
        other => bail!("no disk fill status: {other:?}"),
    }
    revert(&agent, &fill.id).await?;

    // An IO stress (CAP_SYS_PTRACE: the worker opens its directory in the target's
    // /proc/PID/root before it is released), small, in the writable root: the worker runs
    // in the target's cgroup without capabilities, and is gone with its file after the
    // revert.
    let io_stress = inject(
        &agent,
        request(
            &target,
            api::inject_request::Fault::IoStress(api::IoStressFault {
                file_bytes: MIB,
                bytes_per_second: MIB,
                ..Default::default()
            }),
        ),
    )
    .await?;
    let workers = stressors_in(&container)?;
    ensure!(workers.len() == 1, "IO workers in the cgroup: {workers:?}");
    wait_until(
        "the IO worker without capabilities",
        Duration::from_secs(10),
        || effective_capabilities(workers[0]).is_ok_and(|c| c == "0000000000000000"),
    )?;
    match &io_stress.status {
        Some(api::fault::Status::IoStress(status)) => {
            ensure!(status.workers == 1 && status.files.len() == 1, "{status:?}")
        }
        other => bail!("no io stress status: {other:?}"),
    }
    revert(&agent, &io_stress.id).await?;
    wait_until("the IO worker gone", Duration::from_secs(10), || {
        stressors_in(&container).is_ok_and(|s| s.is_empty())
    })?;

    // A rate-only network fault: a tbf on the container's own lo.
    ensure!(!qdiscs_on_lo(init)?.contains("tbf"));
    let network = inject(&agent, request(&target, rate_on_lo())).await?;
    let installed = qdiscs_on_lo(init)?;
    ensure!(installed.contains("qdisc tbf"), "{installed}");
    revert(&agent, &network.id).await?;
    let restored = qdiscs_on_lo(init)?;
    ensure!(!restored.contains("tbf"), "{restored}");

    // A DNS fault (CAP_SYS_PTRACE: the target's resolv.conf and ns/net; CAP_SYS_ADMIN: its
    // responder's sockets made inside; CAP_NET_ADMIN: the nftables redirect and SO_MARK):
    // installed and read back, gone after the revert.
    let (dns_container, _resolv_conf) = container_with_resolv_conf()?;
    let dns_init = dns_container.pid()?;
    let dns = inject(
        &agent,
        request(
            &dns_container.target(),
            dns_rule("db.test", api::DnsAction::Nxdomain),
        ),
    )
    .await?;
    match &dns.status {
        Some(api::fault::Status::Dns(status)) => {
            ensure!(status.redirects.len() == 1, "{status:?}")
        }
        other => bail!("no DNS status: {other:?}"),
    }
    let ruleset = ruleset_of(dns_init)?;
    ensure!(
        ruleset.contains("chaos_dns") && ruleset.contains("10.96.0.10"),
        "{ruleset}"
    );
    revert(&agent, &dns.id).await?;
    let ruleset = ruleset_of(dns_init)?;
    ensure!(!ruleset.contains("chaos_dns"), "{ruleset}");

    // A stop of another user's process (CAP_KILL), continued by the revert.
    let nobody = OtherUsersProcess::start()?;
    let other = inject(
        &agent,
        request(&format!("pid:{}", nobody.pid()), signal("STOP")),
    )
    .await?;
    ensure!(process_state(nobody.pid()) == Some('T'), "not stopped");
    revert(&agent, &other.id).await?;
    wait_until("continued", Duration::from_secs(5), || {
        process_state(nobody.pid()).is_some_and(|s| s != 'T')
    })?;

    // Last, a kill: the container's init is gone.
    agent
        .client()
        .await?
        .inject(request(&target, signal("KILL")))
        .await?;
    wait_until("gone", Duration::from_secs(10), || {
        process_state(init).is_none_or(|s| s == 'Z')
    })?;
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_an_agent_without_cap_net_admin_refuses_network_kinds_naming_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let without: Vec<&str> = AGENT_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| *c != "net_admin")
        .collect();
    let agent =
        TestAgent::start_with_capabilities(agent_options(tls.path(), state.path()), &without)?;
    let container = limited_container()?;
    let init = container.pid()?;
    let before = qdiscs_on_lo(init)?;

    for fault in [rate_on_lo(), blackhole_on_lo()] {
        refused_naming(
            &agent,
            &container.target(),
            fault,
            "CAP_NET_ADMIN (to install qdiscs",
        )
        .await?;
    }
    assert_eq!(qdiscs_on_lo(init)?, before, "a refused fault changed lo");
    // A DNS fault needs it for the redirect: refused naming it, nothing installed.
    let (dns_container, _resolv_conf) = container_with_resolv_conf()?;
    refused_naming(
        &agent,
        &dns_container.target(),
        dns_rule("*", api::DnsAction::Servfail),
        "CAP_NET_ADMIN (to install the nftables redirect",
    )
    .await?;
    assert!(!ruleset_of(dns_container.pid()?)?.contains("chaos_dns"));
    assert_eq!(journal_len(state.path()), 0);

    let report = agent
        .client()
        .await?
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    for k in &report.kind_privileges {
        let network = [
            api::FaultKind::Network,
            api::FaultKind::Blackhole,
            api::FaultKind::Dns,
        ]
        .iter()
        .any(|kind| k.kind == *kind as i32);
        assert_eq!(k.usable, !network, "{k:?}");
        if network {
            assert_eq!(k.missing_capabilities, ["CAP_NET_ADMIN"], "{k:?}");
        }
    }
    // What does not need it still works: a stop, read back and continued.
    let stop = inject(&agent, request(&container.target(), signal("STOP"))).await?;
    wait_until("stopped", Duration::from_secs(5), || {
        process_state(init) == Some('T')
    })?;
    revert(&agent, &stop.id).await?;
    Ok(())
}

/// netem faults (network with a delay, blackhole) under the DaemonSet's set: the VM has
/// sch_netem, the host does not.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: runs in the VM"]
async fn vm_least_privilege_agent_runs_netem_network_and_blackhole_faults() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = start_least_privileged(tls.path(), state.path()).await?;
    let container = limited_container()?;
    let init = container.pid()?;
    let before = qdiscs_on_lo(init)?;
    for fault in [delay_on_lo(), blackhole_on_lo()] {
        let injected = inject(&agent, request(&container.target(), fault)).await?;
        let installed = qdiscs_on_lo(init)?;
        ensure!(installed.contains("qdisc netem"), "{installed}");
        revert(&agent, &injected.id).await?;
        assert_eq!(qdiscs_on_lo(init)?, before);
    }
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}
