//! Process and container kills through a real agent, against real containerd
//! containers selected by pod, container and pid targets.

use chaos_tests::agent::state_dir;
use std::time::Duration;

use anyhow::Result;
use chaos_proto::api;
use chaos_tests::agent::{TestAgent, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};

fn kill(target: &str) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        fault: Some(api::inject_request::Fault::Process(
            api::ProcessFault::default(),
        )),
        ..Default::default()
    }
}

fn signalled(fault: &api::Fault) -> Vec<api::SignalledProcess> {
    match &fault.status {
        Some(api::fault::Status::Process(p)) => p.signalled.clone(),
        other => panic!("no process status: {other:?}"),
    }
}

/// Injects a one-shot kill and checks the container's main process was the one
/// signalled and its task stopped.
async fn kill_and_observe_stop(
    agent: &TestAgent,
    container: &TestContainer,
    target: &str,
) -> Result<()> {
    let pid = container.pid()?;
    let mut client = agent.client().await?;
    let fault = client
        .inject(kill(target))
        .await?
        .into_inner()
        .fault
        .expect("fault");
    assert_eq!(fault.state, api::FaultState::Completed as i32, "{fault:?}");
    assert_eq!(fault.targets.len(), 1);
    assert_eq!(fault.targets[0].init_pid, pid);
    if !target.starts_with("pid:") {
        assert_eq!(
            fault.targets[0].container.as_ref().map(|c| c.id.as_str()),
            Some(container.id.as_str())
        );
    }
    let sent = signalled(&fault);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].pid, sent[0].delivered, sent[0].signal.as_str()),
        (pid, true, "KILL")
    );
    container.wait_status("STOPPED", Duration::from_secs(20))?;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still alive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_a_container_selected_by_pod_namespace_name_and_container() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let pod = format!("db-{}", std::process::id());
    let container = TestContainer::start(ContainerSpec::pod("dev", &pod, "db"))?;
    kill_and_observe_stop(&agent, &container, &format!("pod:dev/{pod}/db")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_a_container_selected_by_containerd_id() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = TestContainer::start(ContainerSpec::pod("dev", "web-0", "web"))?;
    kill_and_observe_stop(
        &agent,
        &container,
        &format!("containerd://{}", container.id),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_a_container_process_selected_by_pid() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = TestContainer::start(ContainerSpec::pod("dev", "pid-0", "app"))?;
    let pid = container.pid()?;
    kill_and_observe_stop(&agent, &container, &format!("pid:{pid}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_filter_kills_only_matching_processes_and_repeats() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    // The shell restarts its `sleep` whenever it dies, so every round finds a new one.
    let mut spec = ContainerSpec::pod("dev", "loop-0", "app");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "while :; do sleep 3600; done".into(),
    ];
    let container = TestContainer::start(spec)?;
    let shell = container.pid()?;
    let mut client = agent.client().await?;
    let mut request = kill(&format!("container:{}", container.id));
    request.duration_ms = 1_500;
    request.fault = Some(api::inject_request::Fault::Process(api::ProcessFault {
        signal: "TERM".into(),
        process: "sleep".into(),
        interval_ms: 300,
    }));
    let fault = client
        .inject(request)
        .await?
        .into_inner()
        .fault
        .expect("fault");
    assert_eq!(fault.state, api::FaultState::Active as i32);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ended = client
        .get(api::GetRequest {
            id: fault.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    let sent = signalled(&ended);
    let delivered: Vec<u32> = sent.iter().filter(|s| s.delivered).map(|s| s.pid).collect();
    // 1.5 s at 300 ms: the first round plus about four more, each a fresh sleep.
    assert!(delivered.len() >= 3, "{sent:?}");
    let mut distinct = delivered.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        delivered.len(),
        "each round should hit a new sleep: {sent:?}"
    );
    assert!(
        sent.iter().all(|s| s.pid != shell && s.signal == "TERM"),
        "shell {shell}: {sent:?}"
    );
    assert_eq!(
        container.task_status()?,
        "RUNNING",
        "the shell itself was never signalled"
    );
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
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_resolves_and_changes_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = TestContainer::start(ContainerSpec::pod("dev", "dry-0", "app"))?;
    let mut client = agent.client().await?;
    let mut request = kill("pod:dev/dry-0/app");
    request.dry_run = true;
    let fault = client
        .inject(request)
        .await?
        .into_inner()
        .fault
        .expect("fault");
    assert!(fault.id.is_empty());
    assert_eq!(fault.targets[0].init_pid, container.pid()?);
    assert!(fault.message.contains("dry run"), "{}", fault.message);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(container.task_status()?, "RUNNING");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_targets_shows_the_pod_labels_and_pids() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let ns = format!("lt-{}", std::process::id());
    let container = TestContainer::start(ContainerSpec::pod(&ns, "api-0", "api"))?;
    let mut client = agent.client().await?;
    let response = client
        .list_targets(api::ListTargetsRequest {
            pod_namespace: ns.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(response.node_name, "test-node");
    assert_eq!(response.targets.len(), 1, "{response:?}");
    let t = &response.targets[0];
    let c = t.container.clone().expect("container");
    assert_eq!(
        (
            c.pod_namespace.as_str(),
            c.pod_name.as_str(),
            c.container_name.as_str()
        ),
        (ns.as_str(), "api-0", "api")
    );
    assert_eq!(t.state, "running");
    assert_eq!(t.init_pid, container.pid()?);
    assert!(t.pids.contains(&t.init_pid));
    assert_eq!(t.target, format!("container:{}", container.id));
    Ok(())
}
