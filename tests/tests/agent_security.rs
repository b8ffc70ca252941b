//! mTLS, protected targets, and bad input, against a real agent.

use chaos_tests::agent::state_dir;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api::{self, agent_client::AgentClient};
use chaos_tests::agent::{AgentOptions, TestAgent, binary, free_port, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::process::{HostProcess, first_child};
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
        .map_err(|e| chaosctl::agents::client::error_chain(&e))?;
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

    let io_without_limit = refused(
        &mut client,
        api::InjectRequest {
            target: format!("container:{}", stopped.id),
            duration_ms: 1000,
            fault: Some(api::inject_request::Fault::Io(api::IoFault::default())),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(io_without_limit.code(), Code::InvalidArgument);
    assert!(
        io_without_limit.message().contains("sets no limit"),
        "{io_without_limit}"
    );

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

fn dry_kill(target: &str) -> api::InjectRequest {
    api::InjectRequest {
        dry_run: true,
        ..kill(target)
    }
}

fn dry_cpu(target: &str) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: 5_000,
        dry_run: true,
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: 50,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The policy is one for every target form: a kube-system container named by its pod,
/// its id, its init's pid, another of its processes' pid, or its cgroup is refused alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_protected_pod_is_refused_by_every_target_form() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let system = TestContainer::start(ContainerSpec {
        command: ["sh", "-c", "sleep 100000 & exec sleep 100000"]
            .map(String::from)
            .to_vec(),
        ..ContainerSpec::pod("kube-system", "coredns-1", "coredns")
    })?;
    let init = system.pid()?;
    let child = first_child(init)?;
    let forms = [
        system.pod_target(),
        system.target(),
        format!("pid:{init}"),
        format!("pid:{child}"),
        format!("cgroup:{}", system.cgroup_path()?),
    ];
    for form in &forms {
        for request in [dry_kill(form), dry_cpu(form)] {
            let status = refused(&mut client, request).await;
            assert_eq!(status.code(), Code::PermissionDenied, "{form}: {status}");
            assert!(status.message().contains("kube-system"), "{form}: {status}");
        }
    }
    // The control case: the same forms of an ordinary pod pass.
    let app = TestContainer::start(ContainerSpec {
        command: ["sh", "-c", "sleep 100000 & exec sleep 100000"]
            .map(String::from)
            .to_vec(),
        ..ContainerSpec::pod("shop", "web-1", "web")
    })?;
    let app_init = app.pid()?;
    let app_child = first_child(app_init)?;
    for form in [
        app.pod_target(),
        app.target(),
        format!("pid:{app_init}"),
        format!("pid:{app_child}"),
        format!("cgroup:{}", app.cgroup_path()?),
    ] {
        let fault = client
            .inject(dry_kill(&form))
            .await
            .map_err(|s| anyhow::anyhow!("{form}: {s}"))?
            .into_inner()
            .fault
            .context("fault")?;
        let container = fault.targets[0].container.clone().context("container")?;
        assert_eq!(container.pod_namespace, "shop", "{form}");
        assert_eq!(container.id, app.id, "{form}");
    }
    assert_eq!(system.task_status()?, "RUNNING");
    Ok(())
}

/// Without containerd the agent cannot tell a pod's container from anything else: the
/// `/proc` fallback for `container:` and every `pid:` target are refused, not guessed.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_runtime_whose_a_target_is_is_unknown_and_refused() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--allow-host-processes".into()],
        containerd_socket: state
            .path()
            .join("no-containerd.sock")
            .display()
            .to_string(),
    })?;
    let mut client = agent.client().await?;
    let system = TestContainer::start(ContainerSpec::pod("kube-system", "coredns-2", "coredns"))?;
    for form in [system.target(), format!("pid:{}", system.pid()?)] {
        let status = refused(&mut client, dry_kill(&form)).await;
        assert_eq!(status.code(), Code::FailedPrecondition, "{form}: {status}");
        assert!(
            status.message().contains("cannot tell which container")
                || status.message().contains("cannot tell the container's pod"),
            "{form}: {status}"
        );
    }
    Ok(())
}

/// Processes of the node itself (no container) are refused unless the agent allows them;
/// a thread id is never a process; the agent's own cgroup is never a target.
#[tokio::test(flavor = "multi_thread")]
async fn host_processes_threads_and_the_agents_own_cgroup_are_refused() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let host = HostProcess::sleep()?;
    let host_target = format!("pid:{}", host.pid());
    {
        let agent = TestAgent::start_tls(tls.path(), state.path())?;
        let mut client = agent.client().await?;
        let status = refused(&mut client, dry_kill(&host_target)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status}");
        assert!(
            status.message().contains("--allow-host-processes"),
            "{status}"
        );

        // A thread of the agent: /proc/TID exists, but it is not a process.
        let tid = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|tid| *tid != agent.pid())
            .context("the agent has threads")?;
        for request in [
            dry_kill(&format!("pid:{tid}")),
            dry_cpu(&format!("pid:{tid}")),
        ] {
            let status = refused(&mut client, request).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{status}");
            assert!(
                status
                    .message()
                    .contains(&format!("thread of process {}", agent.pid())),
                "{status}"
            );
        }
        drop(client);
        drop(agent);

        // With the flag, the host process is a target; the agent's own cgroup still is not.
        let cgroup = AgentCgroup::create()?;
        let allowing = TestAgent::start_in_cgroups(
            AgentOptions {
                tls_dir: Some(tls.path().to_path_buf()),
                state_dir: state.path().to_path_buf(),
                extra_args: vec!["--allow-host-processes".into()],
                containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
            },
            &cgroup.procs_files(),
        )?;
        let mut client = allowing.client().await?;
        client.inject(dry_kill(&host_target)).await?;
        let own = format!("cgroup:{}", cgroup.path);
        let status = refused(&mut client, dry_cpu(&own)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status}");
        assert!(status.message().contains("agent's own"), "{status}");
        // A process of the node in the root cgroup: stress there is not bounded by anything.
        let status = refused(&mut client, dry_cpu(&host_target)).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status}");
        assert!(status.message().contains("root cgroup"), "{status}");
    }
    Ok(())
}

/// A cgroup of this test in every v1 hierarchy the host mounts (or the v2 tree), removed
/// on drop once empty.
struct AgentCgroup {
    path: String,
    dirs: Vec<std::path::PathBuf>,
}

impl AgentCgroup {
    fn create() -> Result<AgentCgroup> {
        let path = format!(
            "/chaos-test-agent-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = Vec::new();
        let unified = root.join("cgroup.controllers").exists();
        let hierarchies: Vec<std::path::PathBuf> = if unified {
            vec![root.to_path_buf()]
        } else {
            ["cpu", "cpuacct", "memory", "pids"]
                .iter()
                .map(|c| root.join(c))
                .filter(|d| d.join("cgroup.procs").exists())
                .collect()
        };
        for hierarchy in hierarchies {
            let dir = hierarchy.join(path.trim_start_matches('/'));
            if !dirs.contains(&dir) {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                dirs.push(dir);
            }
        }
        Ok(AgentCgroup { path, dirs })
    }

    fn procs_files(&self) -> Vec<std::path::PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for AgentCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Bounded: the agent has exited (dropped first), its pid leaves the cgroup.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Names and namespaces an operator adds are protected like the built-in ones.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_protects_more_names_and_namespaces() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec![
            "--protect-process".into(),
            "sleep".into(),
            "--protect-namespace".into(),
            "payments".into(),
        ],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.into(),
    })?;
    let mut client = agent.client().await?;
    // The container's init is busybox `sleep`.
    let sleeper = TestContainer::start(ContainerSpec::pod("shop", "batch-0", "batch"))?;
    let status = refused(&mut client, dry_kill(&sleeper.target())).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("`sleep` is a protected process"),
        "{status}"
    );
    let payments = TestContainer::start(ContainerSpec {
        command: ["sh", "-c", "exec tail -f /dev/null"]
            .map(String::from)
            .to_vec(),
        ..ContainerSpec::pod("payments", "ledger-0", "ledger")
    })?;
    let status = refused(&mut client, dry_kill(&format!("pid:{}", payments.pid()?))).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("`payments` are protected"),
        "{status}"
    );
    let caps = client
        .capabilities(api::CapabilitiesRequest {})
        .await?
        .into_inner();
    let protection = caps.protection.context("protection")?;
    assert!(
        protection
            .protected_process_names
            .iter()
            .any(|n| n == "sleep")
    );
    assert!(
        protection
            .protected_namespaces
            .iter()
            .any(|n| n == "payments")
    );
    assert!(!protection.allow_host_processes);
    Ok(())
}
