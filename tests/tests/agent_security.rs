//! mTLS, protected targets, and bad input, against a real agent.

use chaos_tests::agent::state_dir;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api::{self, agent_client::AgentClient};
use chaos_tests::agent::{AgentOptions, TestAgent, binary, free_port, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::tls::{AGENT_TLS_FILES, SecretVolume, eventually};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn kill(target: &str) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        fault: Some(api::inject_request::Fault::Process(
            api::ProcessFault::default(),
        )),
        ..Default::default()
    }
}

/// Calls Capabilities over a channel built from `endpoint`; Ok only if the agent answered.
async fn capabilities_over(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| chaosctl::client::error_chain(&e))?;
    AgentClient::new(channel)
        .capabilities(api::CapabilitiesRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{s}"))
}

fn tls_endpoint(agent: &TestAgent, ca: &[u8], identity: Option<Identity>) -> Result<Endpoint> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("chaos-agent");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Endpoint::from_shared(format!("https://{}", agent.grpc))?.tls_config(tls)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_refuses_clients_without_a_valid_certificate() -> Result<()> {
    let (tls, other, state) = (make_certs()?, make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let ca = std::fs::read(tls.path().join("ca.pem"))?;

    // The right client certificate works: the control case that makes the refusals mean something.
    capabilities_over(tls_endpoint(
        &agent,
        &ca,
        Some(client_identity(tls.path())?),
    )?)
    .await
    .map_err(anyhow::Error::msg)?;
    let no_cert = capabilities_over(tls_endpoint(&agent, &ca, None)?).await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate was served"
    );
    let other_ca = capabilities_over(tls_endpoint(
        &agent,
        &ca,
        Some(client_identity(other.path())?),
    )?)
    .await;
    assert!(
        other_ca.is_err(),
        "a client certificate from another CA was accepted"
    );
    let plaintext =
        capabilities_over(Endpoint::from_shared(format!("http://{}", agent.grpc))?).await;
    assert!(
        plaintext.is_err(),
        "a plain-text client was served by a TLS agent"
    );
    Ok(())
}

/// Client credentials from a directory `chaosctl certs` wrote.
fn client_identity(dir: &Path) -> Result<Identity> {
    Ok(Identity::from_pem(
        std::fs::read(dir.join("client.pem"))?,
        std::fs::read(dir.join("client-key.pem"))?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() -> Result<()> {
    let (old, new, state) = (make_certs()?, make_certs()?, state_dir()?);
    let mut volume = SecretVolume::new(old.path(), &AGENT_TLS_FILES)?;
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(volume.root.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--tls-reload-secs".into(), "1".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
    })?;
    let old_ca = std::fs::read(old.path().join("ca.pem"))?;
    let new_ca = std::fs::read(new.path().join("ca.pem"))?;
    let old_client = || -> Result<Endpoint> {
        tls_endpoint(&agent, &old_ca, Some(client_identity(old.path())?))
    };
    let new_client = || -> Result<Endpoint> {
        tls_endpoint(&agent, &new_ca, Some(client_identity(new.path())?))
    };

    // A connection opened before the rotation, kept across it.
    let open_channel = old_client()?.connect().await?;
    let mut open = AgentClient::new(open_channel);
    open.capabilities(api::CapabilitiesRequest {}).await?;
    assert!(
        capabilities_over(new_client()?).await.is_err(),
        "a client of the next CA was served before the rotation"
    );

    volume.update(new.path(), None)?;
    eventually("a client of the new CA is served", || async {
        match new_client() {
            Ok(endpoint) => capabilities_over(endpoint).await.is_ok(),
            Err(_) => false,
        }
    })
    .await?;
    let refused = capabilities_over(old_client()?).await;
    assert!(
        refused.is_err(),
        "a new connection with the old CA and client certificate was served after the rotation"
    );
    open.capabilities(api::CapabilitiesRequest {})
        .await
        .context("the connection opened before the rotation")?;
    let scrape = agent.scrape()?;
    assert!(
        scrape.contains("chaos_agent_tls_reloads_total{outcome=\"replaced\"} 1"),
        "{scrape}"
    );

    let failed_reloads = || -> Option<u64> {
        let scrape = agent.scrape().ok()?;
        let line = scrape
            .lines()
            .find_map(|l| l.strip_prefix("chaos_agent_tls_reloads_total{outcome=\"failed\"} "))?;
        line.trim().parse().ok()
    };
    assert_eq!(failed_reloads(), Some(0));

    // Caught mid-rotation: a certificate with another set's key. Refused; the last good
    // set stays in use.
    volume.update(old.path(), Some(new.path()))?;
    eventually("the failed reload is counted", || async {
        failed_reloads().is_some_and(|n| n >= 1)
    })
    .await?;
    capabilities_over(new_client()?)
        .await
        .map_err(anyhow::Error::msg)
        .context("the last good set after a broken one")?;
    assert!(
        agent.log().contains("TLS files cannot be loaded"),
        "{}",
        agent.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_to_start_without_tls_unless_told() -> Result<()> {
    let state = state_dir()?;
    let output = Command::new(binary("chaos-agent")?)
        .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--state-dir")
        .arg(state.path())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-dir") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );

    let agent = TestAgent::start(AgentOptions {
        tls_dir: None,
        state_dir: state.path().to_path_buf(),
        extra_args: vec![],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })?;
    capabilities_over(Endpoint::from_shared(format!("http://{}", agent.grpc))?)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        agent.log().contains("WITHOUT TLS"),
        "no loud warning:\n{}",
        agent.log()
    );
    Ok(())
}

async fn refused(
    client: &mut AgentClient<tonic::transport::Channel>,
    request: api::InjectRequest,
) -> tonic::Status {
    match client.inject(request.clone()).await {
        Ok(response) => panic!("{request:?} was accepted: {response:?}"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_targets_are_refused_with_permission_denied() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let host_init = refused(&mut client, kill("pid:1")).await;
    assert_eq!(host_init.code(), Code::PermissionDenied, "{host_init}");
    assert!(host_init.message().contains("PID 1"), "{host_init}");
    let itself = refused(&mut client, kill(&format!("pid:{}", agent.pid()))).await;
    assert_eq!(itself.code(), Code::PermissionDenied, "{itself}");
    assert!(itself.message().contains("own process tree"), "{itself}");

    let system = TestContainer::start(ContainerSpec::pod("kube-system", "coredns-0", "coredns"))?;
    let kube_system = refused(&mut client, kill("pod:kube-system/coredns-0/coredns")).await;
    assert_eq!(kube_system.code(), Code::PermissionDenied, "{kube_system}");
    assert!(
        kube_system.message().contains("--allow-kube-system"),
        "{kube_system}"
    );
    assert_eq!(
        system.task_status()?,
        "RUNNING",
        "a refused request changed nothing"
    );

    // containerd itself is a node daemon.
    let containerd_pid = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "containerd")
        })
        .expect("containerd runs (the container fixture needs it)");
    let daemon = refused(&mut client, kill(&format!("pid:{containerd_pid}"))).await;
    assert_eq!(daemon.code(), Code::PermissionDenied, "{daemon}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_system_is_a_target_when_the_agent_allows_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--allow-kube-system".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })?;
    let system = TestContainer::start(ContainerSpec::pod("kube-system", "proxy-1", "proxy"))?;
    let mut client = agent.client().await?;
    let mut request = kill("pod:kube-system/proxy-1/proxy");
    request.dry_run = true;
    let fault = client
        .inject(request)
        .await?
        .into_inner()
        .fault
        .expect("fault");
    assert_eq!(fault.targets[0].init_pid, system.pid()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_precise_statuses_and_change_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;

    let bad_target = refused(&mut client, kill("pod:only-namespace")).await;
    assert_eq!(bad_target.code(), Code::InvalidArgument);
    assert!(
        bad_target.message().starts_with("invalid target"),
        "{bad_target}"
    );

    let mut bad_signal = kill("pid:2");
    bad_signal.fault = Some(api::inject_request::Fault::Process(api::ProcessFault {
        signal: "SIGNOPE".into(),
        ..Default::default()
    }));
    let status = refused(&mut client, bad_signal).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("process.signal"), "{status}");

    let missing_pid = refused(&mut client, kill("pid:4194303")).await;
    assert_eq!(missing_pid.code(), Code::NotFound, "{missing_pid}");
    let missing_container = refused(&mut client, kill("container:chaos-test-does-not-exist")).await;
    assert_eq!(
        missing_container.code(),
        Code::NotFound,
        "{missing_container}"
    );
    let missing_pod = refused(&mut client, kill("pod:dev/no-such-pod")).await;
    assert_eq!(missing_pod.code(), Code::NotFound, "{missing_pod}");

    // A container whose task has stopped (a crash loop between restarts).
    let stopped = TestContainer::start(ContainerSpec::pod("dev", "crashing-0", "app"))?;
    chaos_tests::containerd::ctr(
        &stopped.runtime_namespace,
        &["task", "kill", "-s", "KILL", &stopped.id],
    )?;
    stopped.wait_status("STOPPED", Duration::from_secs(20))?;
    let crash = refused(&mut client, kill(&format!("container:{}", stopped.id))).await;
    assert_eq!(crash.code(), Code::FailedPrecondition, "{crash}");
    assert!(crash.message().contains("no running process"), "{crash}");

    let unimplemented = refused(
        &mut client,
        api::InjectRequest {
            target: "pid:2".into(),
            duration_ms: 1000,
            fault: Some(api::inject_request::Fault::Io(api::IoFault {})),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(unimplemented.code(), Code::Unimplemented);

    let bad_revert = client
        .revert(api::RevertRequest {
            id: "nope".into(),
            all: false,
        })
        .await
        .expect_err("revert");
    assert_eq!(bad_revert.code(), Code::InvalidArgument);
    assert!(bad_revert.message().contains("invalid id"), "{bad_revert}");
    let unknown = client
        .revert(api::RevertRequest {
            id: "f-0000000000000000".into(),
            all: false,
        })
        .await
        .expect_err("revert");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_lease = client
        .renew_lease(api::RenewLeaseRequest {
            holder: "".into(),
            ttl_ms: 1000,
        })
        .await
        .expect_err("lease");
    assert_eq!(bad_lease.code(), Code::InvalidArgument);
    let bad_ns = client
        .list_targets(api::ListTargetsRequest {
            pod_namespace: "Not_A_Namespace".into(),
        })
        .await
        .expect_err("targets");
    assert_eq!(bad_ns.code(), Code::InvalidArgument);

    assert!(
        client
            .list(api::ListRequest {
                include_ended: true
            })
            .await?
            .into_inner()
            .faults
            .is_empty()
    );
    let journal = std::fs::read_dir(state.path().join("journal"))?.count();
    assert_eq!(journal, 0, "a refused request left a journal record");
    let metrics = agent.scrape()?;
    assert!(
        metrics.contains("chaos_agent_errors_total{kind=\"process\",code=\"invalid_argument\"} 2"),
        "{metrics}"
    );
    Ok(())
}
