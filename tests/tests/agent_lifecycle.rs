//! Fault lifecycles through a real agent: crash recovery from the journal, revert on
//! request, leases, shutdown, runtime fallback, health and metrics.

use chaos_tests::agent::{journal_len, state_dir, wait_fault_state};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chaos_proto::api;
use chaos_tests::agent::{AgentOptions, TestAgent, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use tonic::Code;

/// A container whose shell restarts `sleep` whenever it dies.
fn looping_container(pod: &str) -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("dev", pod, "app");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "while :; do sleep 3600; done".into(),
    ];
    TestContainer::start(spec)
}

/// Kill the container's `sleep` every 200 ms for `duration`.
fn repeating_kill(
    container: &TestContainer,
    duration: Duration,
    lease: Option<api::Lease>,
) -> api::InjectRequest {
    api::InjectRequest {
        target: format!("container:{}", container.id),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Process(api::ProcessFault {
            signal: "KILL".into(),
            process: "sleep".into(),
            interval_ms: 200,
        })),
        lease,
        ..Default::default()
    }
}

/// The pid of the container's current `sleep`.
fn sleep_pid(container: &TestContainer) -> Result<u32> {
    let shell = container.pid()?;
    for _ in 0..100 {
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
            {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the container's shell has no sleep child")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_agent_reverts_its_repeating_kill_on_restart() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("journal-0")?;
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let fault = client
        .inject(repeating_kill(&container, Duration::from_secs(120), None))
        .await?
        .into_inner()
        .fault
        .expect("fault");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        journal_len(state.path()),
        1,
        "the active fault is journaled"
    );
    agent.kill_hard()?;

    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = restarted.client().await?;
    assert!(
        client
            .list(api::ListRequest {
                include_ended: false
            })
            .await?
            .into_inner()
            .faults
            .is_empty()
    );
    assert_eq!(
        journal_len(state.path()),
        0,
        "the journal is empty after recovery"
    );
    let ended = client
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        (ended[0].id.as_str(), ended[0].state),
        (fault.id.as_str(), api::FaultState::Recovered as i32)
    );
    assert!(
        restarted
            .scrape()?
            .contains("chaos_agent_reverts_total{kind=\"process\",reason=\"recovered\"} 1")
    );

    // No more kills: the same sleep survives well past several intervals.
    let survivor = sleep_pid(&container)?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        sleep_pid(&container)?,
        survivor,
        "something still kills the container's sleep"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revert_on_request_stops_the_fault_and_clears_the_journal() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("revert-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let fault = client
        .inject(repeating_kill(&container, Duration::from_secs(60), None))
        .await?
        .into_inner()
        .fault
        .expect("fault");
    assert_eq!(
        client
            .list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults
            .len(),
        1
    );
    let reverted = client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?
        .into_inner()
        .reverted;
    assert_eq!(reverted[0].state, api::FaultState::Reverted as i32);
    assert_eq!(journal_len(state.path()), 0);
    let again = client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await
        .expect_err("second revert");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
    let survivor = sleep_pid(&container)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sleep_pid(&container)?, survivor);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lease_reverts_and_a_renewed_one_does_not() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("lease-0")?;
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let lease = api::Lease {
        holder: "controller-a".into(),
        ttl_ms: 1_000,
    };
    let fault = client
        .inject(repeating_kill(
            &container,
            Duration::from_secs(60),
            Some(lease),
        ))
        .await?
        .into_inner()
        .fault
        .expect("fault");
    // Renewed for 2 s: still active past the lease's first ttl.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let renewed = client
            .renew_lease(api::RenewLeaseRequest {
                holder: "controller-a".into(),
                ttl_ms: 1_000,
            })
            .await?
            .into_inner();
        assert_eq!(renewed.faults, 1);
    }
    assert_eq!(
        client
            .get(api::GetRequest {
                id: fault.id.clone()
            })
            .await?
            .into_inner()
            .state,
        api::FaultState::Active as i32
    );
    // The holder goes quiet: reverted within the ttl plus the reaper's period.
    let stopped_renewing = Instant::now();
    let ended = wait_fault_state(
        &agent,
        &fault.id,
        api::FaultState::LeaseExpired,
        Duration::from_secs(3),
    )
    .await?;
    assert!(
        stopped_renewing.elapsed() < Duration::from_millis(1_600),
        "took {:?}",
        stopped_renewing.elapsed()
    );
    assert!(ended.message.contains("lease"), "{}", ended.message);
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reverts_every_active_fault_before_exit() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = looping_container("term-0")?;
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    client
        .inject(repeating_kill(&container, Duration::from_secs(60), None))
        .await?;
    assert_eq!(journal_len(state.path()), 1);
    let status = agent.terminate()?;
    assert!(status.success(), "{status}");
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        agent.log().contains("reverted every fault"),
        "{}",
        agent.log()
    );
    Ok(())
}

/// The journal is not fsynced: a node that lost power may leave a record cut short. At
/// the next start such a record, written before this boot, is dropped (what it described
/// did not survive the reboot); an unreadable record of this boot is kept and reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_cut_short_before_this_boot_is_dropped_at_start() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let journal = state.path().join("journal");
    std::fs::create_dir_all(&journal)?;
    let (torn, bad) = (journal.join("f-torn.json"), journal.join("f-bad.json"));
    std::fs::write(&torn, b"")?;
    let stat = std::fs::read_to_string("/proc/stat")?;
    let btime: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no btime in /proc/stat"))?;
    let before_boot = std::time::UNIX_EPOCH + Duration::from_secs(btime - 3600);
    std::fs::File::options()
        .write(true)
        .open(&torn)?
        .set_modified(before_boot)?;
    std::fs::write(&bad, b"{not json")?;

    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    assert!(!torn.exists(), "{}", agent.log());
    assert!(bad.exists(), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("dropped an unreadable journal record written before this boot"),
        "{log}"
    );
    assert!(
        log.contains("skipping an unreadable journal record"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_runtime_container_targets_are_refused_not_guessed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = TestContainer::start(ContainerSpec::pod("dev", "scan-0", "app"))?;
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec![],
        containerd_socket: "/run/chaos-test-no-such-runtime.sock".into(),
    })?;
    let mut client = agent.client().await?;
    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    assert!(!caps.runtime.clone().unwrap_or_default().reachable);
    // Without containerd the container's pod (and whether it is protected) is unknown:
    // every form is refused, with what is missing.
    for (target, missing) in [
        (
            format!("container:{}", container.id),
            "cannot tell the container's pod",
        ),
        ("pod:dev/scan-0/app".to_string(), "container runtime"),
        (
            format!("pid:{}", container.pid()?),
            "cannot tell which container",
        ),
    ] {
        let status = client
            .inject(api::InjectRequest {
                target: target.clone(),
                fault: Some(api::inject_request::Fault::Process(
                    api::ProcessFault::default(),
                )),
                dry_run: true,
                ..Default::default()
            })
            .await
            .expect_err("a target without the runtime");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{target}: {status}"
        );
        assert!(status.message().contains(missing), "{target}: {status}");
    }
    assert_eq!(container.task_status()?, "RUNNING");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_health_reflection_capabilities_and_metrics() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let channel = chaosctl::agents::client::endpoint(&agent.address())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "chaoscontrol.v1.Agent".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Server reflection lists the agent's API, so grpcurl and friends work without protos.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let channel = chaosctl::agents::client::endpoint(&agent.address())?
        .connect()
        .await?;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let listed = match responses.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    assert!(
        listed.contains(&"chaoscontrol.v1.Agent".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"grpc.health.v1.Health".to_string()),
        "{listed:?}"
    );

    let mut client = agent.client().await?;
    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    assert_eq!(caps.node_name, "test-node");
    // Every kind of the API, as the agent serves it.
    let api_kinds: Vec<i32> = api::FaultKind::every_kind()
        .into_iter()
        .map(|kind| kind as i32)
        .collect();
    let mut served = caps.supported_kinds.clone();
    served.sort();
    assert_eq!(served, api_kinds, "supported_kinds against the API's kinds");
    assert!(!caps.kernel_release.is_empty());
    assert!(
        ["v1", "v2", "hybrid"].contains(&caps.cgroup_version.as_str()),
        "{}",
        caps.cgroup_version
    );
    let netem = caps
        .qdiscs
        .iter()
        .find(|q| q.name == "netem")
        .expect("netem is reported");
    // The agent loads a loadable sch_netem at start, so available means loaded (the VM);
    // on this host's kernel it is neither loaded nor loadable.
    let kernel_has_netem = Path::new("/sys/module/sch_netem").exists();
    assert_eq!(netem.available, kernel_has_netem, "{netem:?}");
    assert!(
        caps.runtime.clone().unwrap_or_default().reachable,
        "{:?}",
        caps.runtime
    );
    assert!(
        caps.protection
            .clone()
            .unwrap_or_default()
            .protected_namespaces
            .contains(&"kube-system".to_string())
    );

    let metrics = agent.scrape()?;
    for family in [
        "chaos_agent_active_faults",
        "chaos_agent_injections_total",
        "chaos_agent_reverts_total",
        "chaos_agent_revert_errors_total",
        "chaos_agent_errors_total",
        "chaos_agent_inject_duration_seconds_bucket",
        "chaos_agent_overdue_faults",
        "chaos_agent_build_info",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    Ok(())
}
