//! Who may do what, against a real agent over mTLS: identities from per-person client
//! certificates (`chaosctl certs --client NAME:ROLE`), roles from their Subject O or a
//! policy file, namespace limits on real containers, leases bound to their creator, and
//! the audit lines in the agent's JSON log.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api::{self, agent_client::AgentClient};
use chaos_tests::agent::{AgentOptions, TestAgent, state_dir};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// alice: operator limited to `shop` (by the policy); bob: operator; vera: viewer.
const POLICY: &str = "rules:\n  - identity: alice\n    role: operator\n    namespaces: [shop]\n";

fn certs() -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("chaos-test-authz-")
        .tempdir()?;
    let clients: Vec<chaosctl::agents::certs::ClientSpec> =
        ["alice:operator", "bob:operator", "vera:viewer"]
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?;
    chaosctl::agents::certs::generate_with_clients(
        dir.path(),
        &chaosctl::agents::certs::default_agent_names(),
        &clients,
        false,
    )?;
    std::fs::write(dir.path().join("policy.yaml"), POLICY)?;
    Ok(dir)
}

fn start_agent(tls: &Path, state: &Path) -> Result<TestAgent> {
    TestAgent::start(AgentOptions {
        tls_dir: Some(tls.to_path_buf()),
        state_dir: state.to_path_buf(),
        extra_args: vec![
            "--authz-policy".into(),
            tls.join("policy.yaml").display().to_string(),
            "--log-format".into(),
            "json".into(),
        ],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
    })
}

/// A client that presents `NAME.pem` (`client` for the default admin certificate).
async fn client_as(agent: &TestAgent, tls: &Path, name: &str) -> Result<AgentClient<Channel>> {
    let identity = Identity::from_pem(
        std::fs::read(tls.join(format!("{name}.pem")))?,
        std::fs::read(tls.join(format!("{name}-key.pem")))?,
    );
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(tls.join("ca.pem"))?))
        .domain_name("chaos-agent")
        .identity(identity);
    let channel = Endpoint::from_shared(format!("https://{}", agent.grpc))?
        .tls_config(config)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting as {name}"))?;
    Ok(AgentClient::new(channel))
}

/// A CPU fault on `target` for 60 s, with an optional lease.
fn cpu(target: &str, lease: Option<&str>) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: 60_000,
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: 20,
            cores: 0,
            mode: 0,
        })),
        lease: lease.map(|holder| api::Lease {
            holder: holder.into(),
            ttl_ms: 60_000,
        }),
        ..Default::default()
    }
}

fn container(namespace: &str, pod: &str) -> Result<TestContainer> {
    TestContainer::start(ContainerSpec {
        cpus: Some(0.5),
        ..ContainerSpec::pod(namespace, pod, "main")
    })
}

/// The pids in the container's cgroup: a stressor joins it while a CPU fault runs.
fn cgroup_pids(c: &TestContainer) -> Result<usize> {
    let procs = std::fs::read_to_string(c.cgroup_dir()?.join("cgroup.procs"))?;
    Ok(procs.lines().filter(|l| !l.trim().is_empty()).count())
}

fn denied(result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>) -> tonic::Status {
    match result {
        Ok(response) => panic!("expected PermissionDenied, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            status
        }
    }
}

/// The agent's JSON log lines with target `audit`.
fn audit_lines(agent: &TestAgent) -> Vec<serde_json::Value> {
    agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_lists_and_is_refused_inject_naming_identity_and_role() -> Result<()> {
    let (tls, state) = (certs()?, state_dir()?);
    let shop = container("shop", "web-0")?;
    let agent = start_agent(tls.path(), state.path())?;
    let mut vera = client_as(&agent, tls.path(), "vera").await?;

    vera.list(api::ListRequest::default()).await?;
    vera.capabilities(api::CapabilitiesRequest {}).await?;
    let status = denied(vera.inject(cpu(&shop.target(), None)).await);
    assert!(
        status.message().contains("vera (role viewer)")
            && status.message().contains("needs role operator"),
        "{status:?}"
    );
    let status = denied(
        vera.revert(api::RevertRequest {
            id: String::new(),
            all: true,
        })
        .await,
    );
    assert!(
        status.message().contains("vera (role viewer)"),
        "{status:?}"
    );
    assert_eq!(
        vera.list(api::ListRequest::default())
            .await?
            .into_inner()
            .faults
            .len(),
        0,
        "a refused inject left a fault"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_an_operator_limited_to_shop_is_refused_db_and_allowed_shop() -> Result<()> {
    let (tls, state) = (certs()?, state_dir()?);
    let shop = container("shop", "web-0")?;
    let db = container("db", "pg-0")?;
    let agent = start_agent(tls.path(), state.path())?;
    let mut alice = client_as(&agent, tls.path(), "alice").await?;
    let db_pids = cgroup_pids(&db)?;

    // Every target form resolves to the pod first: a pid in db is db's.
    for target in [db.target(), db.pod_target(), format!("pid:{}", db.pid()?)] {
        let status = denied(alice.inject(cpu(&target, None)).await);
        assert!(
            status.message().contains("alice (role operator)")
                && status
                    .message()
                    .contains("namespace db is not one of [shop]"),
            "{target}: {status:?}"
        );
    }
    assert_eq!(
        cgroup_pids(&db)?,
        db_pids,
        "a refused inject touched db's cgroup"
    );

    let fault = alice
        .inject(cpu(&shop.pod_target(), None))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    assert_eq!(fault.created_by, "alice");
    assert!(cgroup_pids(&shop)? >= 2, "no stressor joined shop's cgroup");

    // bob (operator) may not end alice's fault; alice may, and an admin could.
    let mut bob = client_as(&agent, tls.path(), "bob").await?;
    let status = denied(
        bob.revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await,
    );
    assert!(
        status.message().contains("bob (role operator)")
            && status.message().contains("alice created it"),
        "{status:?}"
    );
    // bob's "revert all" ends only bob's faults: none.
    let all = bob
        .revert(api::RevertRequest {
            id: String::new(),
            all: true,
        })
        .await?
        .into_inner();
    assert!(all.reverted.is_empty(), "{all:?}");
    alice
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;

    let audit = audit_lines(&agent);
    let line = |method: &str, identity: &str, ok: bool| {
        audit.iter().any(|v| {
            let f = &v["fields"];
            f["method"] == method
                && f["identity"] == identity
                && (f["result"] == "ok") == ok
                && v["timestamp"].is_string()
                && f["role"].is_string()
        })
    };
    assert!(line("Inject", "alice", true), "{audit:#?}");
    assert!(line("Inject", "alice", false), "{audit:#?}");
    assert!(line("Revert", "bob", false), "{audit:#?}");
    assert!(line("Revert", "alice", true), "{audit:#?}");
    let ok_inject = audit
        .iter()
        .find(|v| v["fields"]["method"] == "Inject" && v["fields"]["result"] == "ok")
        .context("no ok inject line")?;
    assert_eq!(ok_inject["fields"]["fault"], fault.id.as_str());
    assert_eq!(ok_inject["fields"]["target"], shop.pod_target().as_str());
    assert_eq!(ok_inject["fields"]["role"], "operator");
    let refused = audit
        .iter()
        .find(|v| v["fields"]["method"] == "Inject" && v["fields"]["result"] != "ok")
        .context("no refused inject line")?;
    assert_eq!(refused["fields"]["result"], "PermissionDenied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_caller_cannot_renew_or_take_over_anothers_lease() -> Result<()> {
    let (tls, state) = (certs()?, state_dir()?);
    let shop = container("shop", "web-1")?;
    let agent = start_agent(tls.path(), state.path())?;
    let mut alice = client_as(&agent, tls.path(), "alice").await?;
    let mut bob = client_as(&agent, tls.path(), "bob").await?;
    let mut admin = client_as(&agent, tls.path(), "client").await?;

    let fault = alice
        .inject(cpu(&shop.target(), Some("run-alice")))
        .await?
        .into_inner()
        .fault
        .context("no fault")?;
    // Shortening it to the minimum would let it lapse: refused, for an admin too.
    for (caller, who) in [
        (&mut bob, "bob (role operator)"),
        (&mut admin, "chaosctl (role admin)"),
    ] {
        let status = denied(
            caller
                .renew_lease(api::RenewLeaseRequest {
                    holder: "run-alice".into(),
                    ttl_ms: 1_000,
                })
                .await,
        );
        assert!(
            status.message().contains(who) && status.message().contains("belongs to alice"),
            "{status:?}"
        );
    }
    let status = denied(bob.inject(cpu(&shop.target(), Some("run-alice"))).await);
    assert!(status.message().contains("belongs to alice"), "{status:?}");
    let renewed = alice
        .renew_lease(api::RenewLeaseRequest {
            holder: "run-alice".into(),
            ttl_ms: 60_000,
        })
        .await?
        .into_inner();
    assert_eq!(renewed.faults, 1);

    // The refused 1 s renewal did not shorten the lease: still active after 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = alice
        .get(api::GetRequest {
            id: fault.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(view.state, api::FaultState::Active as i32, "{view:?}");

    let audit = audit_lines(&agent);
    assert!(
        audit.iter().any(|v| v["fields"]["method"] == "RenewLease"
            && v["fields"]["identity"] == "bob"
            && v["fields"]["target"] == "run-alice"
            && v["fields"]["result"] == "PermissionDenied"),
        "{audit:#?}"
    );
    alice
        .revert(api::RevertRequest {
            id: fault.id,
            all: false,
        })
        .await?;
    Ok(())
}

/// Node scope is the admin's: an operator is refused a node-scope blackhole, and a network
/// fault on a container that shares the node's network namespace, even on an agent that
/// allows node scope; an admin's dry run of the same passes.
#[tokio::test(flavor = "multi_thread")]
async fn node_scope_needs_the_admin_role() -> Result<()> {
    let (tls, state) = (certs()?, chaos_tests::agent::state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--allow-node-scope".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
    })?;
    let pod = chaos_tests::containerd::TestContainer::start(
        chaos_tests::containerd::ContainerSpec::pod("shop", "edge-0", "app"),
    )?;
    let host_network =
        chaos_tests::containerd::TestContainer::start(chaos_tests::containerd::ContainerSpec {
            netns: Some(std::path::PathBuf::from(format!(
                "/proc/{}/ns/net",
                std::process::id()
            ))),
            ..chaos_tests::containerd::ContainerSpec::pod("shop", "edge-1", "app")
        })?;
    let node_blackhole = api::InjectRequest {
        target: pod.target(),
        duration_ms: 10_000,
        dry_run: true,
        fault: Some(api::inject_request::Fault::Blackhole(api::BlackholeFault {
            node_scope: true,
            interface: "lo".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let host_network_rate = api::InjectRequest {
        target: host_network.target(),
        duration_ms: 10_000,
        dry_run: true,
        fault: Some(api::inject_request::Fault::Network(api::NetworkFault {
            interface: "lo".into(),
            rate_bytes_per_second: 1_000_000,
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut bob = client_as(&agent, tls.path(), "bob").await?;
    for request in [node_blackhole.clone(), host_network_rate.clone()] {
        let status = bob
            .inject(request.clone())
            .await
            .expect_err("an operator's node-scope fault");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(
            status.message().contains("bob (role operator)")
                && status.message().contains("needs role admin"),
            "{status}"
        );
    }
    let mut admin = client_as(&agent, tls.path(), "client").await?;
    admin
        .inject(node_blackhole)
        .await
        .context("the admin's node-scope dry run")?;
    Ok(())
}

/// Where the agent allows kube-system, it is still the admin's: an operator is refused a
/// kube-system container, an admin's dry run of it passes.
#[tokio::test(flavor = "multi_thread")]
async fn kube_system_where_allowed_is_the_admins() -> Result<()> {
    let (tls, state) = (certs()?, chaos_tests::agent::state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        tls_dir: Some(tls.path().to_path_buf()),
        state_dir: state.path().to_path_buf(),
        extra_args: vec!["--allow-kube-system".into()],
        containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
    })?;
    let system = chaos_tests::containerd::TestContainer::start(
        chaos_tests::containerd::ContainerSpec::pod("kube-system", "proxy-9", "proxy"),
    )?;
    let request = api::InjectRequest {
        dry_run: true,
        ..cpu(&system.target(), None)
    };
    let mut bob = client_as(&agent, tls.path(), "bob").await?;
    let status = bob
        .inject(request.clone())
        .await
        .expect_err("an operator's kube-system fault");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("bob (role operator)")
            && status.message().contains("kube-system"),
        "{status}"
    );
    let mut admin = client_as(&agent, tls.path(), "client").await?;
    admin
        .inject(request)
        .await
        .context("the admin's kube-system dry run")?;
    Ok(())
}
