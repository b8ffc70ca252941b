//! A partition step end to end: three pods' network namespaces A, B and C on one bridge,
//! the bridge in a network namespace of its own (nothing of the machine's network is
//! touched), each with a labelled containerd container as a pod's, a real agent and
//! `chaosctl`'s runner. A and B are cut off from each other while both still reach C, and
//! everything is back after the revert, also after an agent SIGKILL and restart.
//!
//! Blackholes are netem loss 100 % under a prio root: `vm_*`, run in the Debian VM.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{TestAgent, journal_len, make_certs, state_dir};
use chaos_tests::command::{run_bounded, run_checked};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::scaled;
use chaosctl::agents::fleet::{Fleet, FleetConfig};
use chaosctl::engine::experiment;
use chaosctl::engine::runner::{self, RunOptions, StepPlan};
use chaosctl::engine::verdict::Verdict;

const IP_TIMEOUT: Duration = Duration::from_secs(30);
/// The pods' subnet. Every address lives in this test's own namespaces only, so another
/// test using the same range elsewhere cannot meet it.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 254);
const PORT: u16 = 8080;

fn ip(args: &[&str]) -> Result<()> {
    run_checked("ip", args, IP_TIMEOUT)?;
    Ok(())
}

/// The bridge's namespace and the three pods' namespaces; all deleted on drop (with them
/// their veths and the bridge).
struct Lan {
    switch: String,
    pods: Vec<PodNet>,
}

struct PodNet {
    netns: String,
    address: Ipv4Addr,
}

impl PodNet {
    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }
}

impl Lan {
    fn create(names: &[&str]) -> Result<Lan> {
        let suffix = std::process::id();
        let switch = format!("chaos-test-sw-{suffix}");
        let mut lan = Lan {
            switch: switch.clone(),
            pods: Vec::new(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &switch,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (index, name) in names.iter().enumerate() {
            let netns = format!("chaos-test-{name}-{suffix}");
            let address = Ipv4Addr::new(10, 214, 0, index as u8 + 1);
            ip(&["netns", "add", &netns])?;
            lan.pods.push(PodNet {
                netns: netns.clone(),
                address,
            });
            let port = format!("p{name}");
            // Made inside the pod's namespace with its peer straight in the switch's: no
            // end ever exists in the machine's own namespace.
            ip(&[
                "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
            ])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = run_bounded("ip", &["netns", "del", &pod.netns], IP_TIMEOUT);
        }
        let _ = run_bounded("ip", &["netns", "del", &self.switch], IP_TIMEOUT);
    }
}

/// Runs `work` on a thread inside the namespace at `path`.
fn inside<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// A listening socket made in the pod's namespace (it stays there): the kernel completes
/// handshakes into its backlog, so a connect succeeds without anyone accepting.
fn listen(pod: &PodNet) -> Result<TcpListener> {
    let address = SocketAddr::from((pod.address, PORT));
    inside(&pod.path(), move || Ok(TcpListener::bind(address)?))
}

fn connects(from: &PodNet, to: &PodNet, timeout: Duration) -> Result<bool> {
    let address = SocketAddr::from((to.address, PORT));
    inside(&from.path(), move || {
        Ok(TcpStream::connect_timeout(&address, timeout).is_ok())
    })
}

/// Which of the ordered pairs (by name) connect, e.g. `["a->c", "b->c", ...]`.
fn reachable(lan: &Lan, names: &[&str], timeout: Duration) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (i, from) in lan.pods.iter().enumerate() {
        for (j, to) in lan.pods.iter().enumerate() {
            if i != j && connects(from, to, timeout)? {
                found.push(format!("{}->{}", names[i], names[j]));
            }
        }
    }
    Ok(found)
}

/// eth0's qdiscs and filters as `tc` prints them (the independent witness).
fn tc_state(pod: &PodNet) -> Result<String> {
    let mut text = String::new();
    for args in [
        &["qdisc", "show", "dev", "eth0"][..],
        &["filter", "show", "dev", "eth0"][..],
        &["filter", "show", "dev", "eth0", "ingress"][..],
    ] {
        let mut argv = vec!["-n", pod.netns.as_str()];
        argv.extend_from_slice(args);
        text += &run_checked("tc", &argv, IP_TIMEOUT)?.stdout;
    }
    Ok(text)
}

async fn active_blackholes(agent: &TestAgent) -> Result<Vec<api::Fault>> {
    Ok(agent
        .client()
        .await?
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner()
        .faults
        .into_iter()
        .filter(|f| f.kind == api::FaultKind::Blackhole as i32)
        .collect())
}

fn partition_yaml(agent: &TestAgent, tls: &Path, namespace: &str, duration: Duration) -> String {
    format!(
        "name: chaos-test-partition
agents:
  static: [\"{}\"]
  tls_dir: {}
baseline: 2s
steady_state:
  probes:
    # Recovery is judged on samples: one that always holds (the checks are the test's).
    - name: always
      interval: 500ms
      exec: {{ command: [\"true\"] }}
method:
  faults:
    - name: cut-a-from-b
      duration: {}ms
      partition:
        from: {{ namespace: {namespace}, pod: a }}
        to: {{ namespace: {namespace}, pod: b }}
        direction: both
recovery: {{ timeout: 10s, hold: 0s }}
",
        agent.grpc,
        tls.display(),
        duration.as_millis()
    )
}

/// Planned blackholes as `(target, destinations)`, in plan order.
fn planned(plans: &[StepPlan]) -> Vec<(String, Vec<String>)> {
    plans
        .iter()
        .flat_map(|p| &p.targets)
        .map(|t| (t.target.clone(), t.blackhole_to.clone()))
        .collect()
}

/// The pods a, b, c on the bridge, each a container of pod `NAMESPACE/NAME`, and an agent.
/// Dropped in this order: the agent, the containers, then the namespaces.
struct Rig {
    agent: Option<TestAgent>,
    containers: Vec<TestContainer>,
    lan: Lan,
    namespace: String,
    tls: tempfile::TempDir,
    state: tempfile::TempDir,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

impl Rig {
    fn start() -> Result<Rig> {
        let lan = Lan::create(&NAMES)?;
        let namespace = format!("chaos-part-{}", std::process::id());
        let mut containers = Vec::new();
        for (pod, net) in NAMES.iter().zip(&lan.pods) {
            containers.push(TestContainer::start(ContainerSpec {
                netns: Some(net.path()),
                ..ContainerSpec::pod(&namespace, pod, "main")
            })?);
        }
        let (tls, state) = (make_certs()?, state_dir()?);
        let agent = Some(TestAgent::start_tls(tls.path(), state.path())?);
        Ok(Rig {
            agent,
            containers,
            lan,
            namespace,
            tls,
            state,
        })
    }

    fn agent(&self) -> Result<&TestAgent> {
        self.agent.as_ref().context("the rig's agent")
    }
}

/// The fleet of an experiment's agents.
async fn fleet_of(experiment: &experiment::Experiment) -> Result<Fleet> {
    let config = FleetConfig::resolve(&experiment.agents).await?;
    Ok(Fleet::connect(&config).await?)
}

/// A partition's plan (what `--dry-run` prints) from the pods the agent lists, and its
/// refusals, on any kernel: planning injects nothing.
#[tokio::test(flavor = "multi_thread")]
async fn host_partition_plans_blackholes_to_listed_addresses_and_refuses_bad_sides() -> Result<()> {
    let mut rig = Rig::start()?;
    // A pod of the same namespace in a network namespace of its own holding only `lo`.
    let lonely = TestContainer::start(ContainerSpec::pod(&rig.namespace, "lonely", "main"))?;
    rig.containers.push(lonely);
    // A hostNetwork pod: its container joins the node's (this test's) namespace.
    let host_network = TestContainer::start(ContainerSpec {
        netns: Some(PathBuf::from(format!(
            "/proc/{}/ns/net",
            std::process::id()
        ))),
        ..ContainerSpec::pod(&rig.namespace, "hostnet", "main")
    })?;
    let host_network_target = host_network.target();
    rig.containers.push(host_network);
    let (lan, agent) = (&rig.lan, rig.agent()?);
    let (a, b) = (&rig.containers[0], &rig.containers[1]);

    // chaosctl run --dry-run prints each blackhole under its target.
    let yaml = partition_yaml(
        agent,
        rig.tls.path(),
        &rig.namespace,
        Duration::from_secs(30),
    );
    let work = state_dir()?;
    let file = work.path().join("partition.yaml");
    std::fs::write(&file, &yaml)?;
    let output = std::process::Command::new(chaos_tests::agent::binary("chaosctl")?)
        .arg("run")
        .arg(&file)
        .arg("--dry-run")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (ip_a, ip_b) = (lan.pods[0].address, lan.pods[1].address);
    for (target, to) in [(a.target(), ip_b), (b.target(), ip_a)] {
        let line = format!("target {target} pod ");
        let at = stdout
            .find(&line)
            .with_context(|| format!("no {target} in the plan:\n{stdout}"))?;
        let next = stdout[at..].lines().nth(1).unwrap_or_default();
        assert_eq!(next.trim(), format!("blackhole to {to}/32"), "{stdout}");
    }
    assert_eq!(stdout.matches("\n    blackhole to ").count(), 2, "{stdout}");

    // Refused at plan time, each naming its side.
    let refused = async |from: &str, to: &str| -> Result<String> {
        let text = yaml
            .replace("pod: a }", &format!("pod: \"{from}\" }}"))
            .replace("pod: b }", &format!("pod: \"{to}\" }}"));
        let experiment = experiment::parse(&text)?;
        let fleet = fleet_of(&experiment).await?;
        match runner::plan(&experiment, &fleet, Default::default()).await {
            Ok(plans) => bail!("{from} / {to} planned {:?}", planned(&plans)),
            Err(e) => Ok(e),
        }
    };
    let error = refused("a", "nobody").await?;
    assert!(
        error.contains("partition.to: the selector matches no running container"),
        "{error}"
    );
    let error = refused("lonely", "b").await?;
    assert!(
        error.contains("partition.from: `container:") && error.contains("has no address"),
        "{error}"
    );
    let error = refused("a", "a").await?;
    assert!(error.contains(&format!("share address {ip_a}")), "{error}");
    // The agent lists the hostNetwork pod without addresses (they are the node's); a
    // selector leaves it out and naming it is refused.
    let targets = agent
        .client()
        .await?
        .list_targets(api::ListTargetsRequest {
            pod_namespace: rig.namespace.clone(),
        })
        .await?
        .into_inner()
        .targets;
    let shown = targets
        .iter()
        .find(|t| t.target == host_network_target)
        .context("the hostNetwork container is listed")?;
    ensure!(
        shown.host_network && shown.addresses.is_empty(),
        "{shown:?}"
    );
    let error = refused("a", "hostnet").await?;
    assert!(
        error.contains("partition.to: the selector matches no running container"),
        "{error}"
    );
    let named = yaml.replace(
        &format!("to: {{ namespace: {}, pod: b }}", rig.namespace),
        &format!("to: {{ targets: [\"{host_network_target}\"] }}"),
    );
    ensure!(named != yaml, "the to side was not replaced");
    let experiment = experiment::parse(&named)?;
    let fleet = fleet_of(&experiment).await?;
    let error = runner::plan(&experiment, &fleet, Default::default())
        .await
        .expect_err("a partition to a hostNetwork pod was planned");
    assert!(
        error.contains("partition.to:") && error.contains("shares its node's network namespace"),
        "{error}"
    );
    let listed = agent
        .client()
        .await?
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert!(listed.is_empty(), "planning injected {listed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_partition_cuts_a_from_b_both_still_reach_c_and_all_is_restored() -> Result<()> {
    let mut rig = Rig::start()?;
    let names = NAMES;
    let _listeners: Vec<TcpListener> = rig.lan.pods.iter().map(listen).collect::<Result<_>>()?;
    chaos_tests::agent::require_netem(rig.agent()?).await?;
    let (lan, namespace) = (&rig.lan, rig.namespace.clone());
    let (tls, state) = (&rig.tls, &rig.state);
    let agent = rig.agent()?;
    let containers = &rig.containers;

    let every_pair: Vec<String> = ["a->b", "a->c", "b->a", "b->c", "c->a", "c->b"]
        .map(String::from)
        .to_vec();
    let long = scaled(Duration::from_secs(5));
    let short = Duration::from_secs(2);
    assert_eq!(reachable(lan, &names, long)?, every_pair, "before");
    let before: Vec<String> = lan.pods.iter().map(tc_state).collect::<Result<_>>()?;

    // The agent lists each pod's address, read in its namespace.
    let targets = agent
        .client()
        .await?
        .list_targets(api::ListTargetsRequest {
            pod_namespace: namespace.clone(),
        })
        .await?
        .into_inner()
        .targets;
    let mut listed: Vec<(String, Vec<String>)> = targets
        .iter()
        .map(|t| {
            let pod = t.container.as_ref().map(|c| c.pod_name.clone());
            (pod.unwrap_or_default(), t.addresses.clone())
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        names
            .iter()
            .zip(&lan.pods)
            .map(|(n, p)| (n.to_string(), vec![p.address.to_string()]))
            .collect::<Vec<_>>()
    );

    // The plan (what --dry-run prints): on A a blackhole to B, on B one to A; nothing on C.
    let duration = scaled(Duration::from_secs(6));
    let yaml = partition_yaml(agent, tls.path(), &namespace, duration);
    let experiment = experiment::parse(&yaml)?;
    let fleet = fleet_of(&experiment).await?;
    let plans = runner::plan(&experiment, &fleet, Default::default())
        .await
        .map_err(anyhow::Error::msg)?;
    let (a, b) = (&containers[0], &containers[1]);
    let want = vec![
        (a.target(), vec![format!("{}/32", lan.pods[1].address)]),
        (b.target(), vec![format!("{}/32", lan.pods[0].address)]),
    ];
    assert_eq!(planned(&plans), want);
    assert!(
        active_blackholes(agent).await?.is_empty(),
        "the plan injected"
    );

    // The run: while the partition holds, A and B cannot reach each other, both reach C.
    let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
    let options = RunOptions {
        run_id: runner::new_run_id(&experiment.name),
        progress: Arc::new(|line: &str| eprintln!("{line}")),
        cancel,
        policy: Default::default(),
    };
    let run = tokio::spawn({
        let (experiment, fleet) = (experiment.clone(), fleet.clone());
        async move { runner::run(&experiment, &fleet, options).await }
    });
    let deadline = Instant::now() + scaled(Duration::from_secs(20));
    while active_blackholes(agent).await?.len() < 2 {
        if run.is_finished() {
            let result = run.await?;
            bail!(
                "the run ended before its blackholes were active: {:?}",
                result.reasons
            );
        }
        if Instant::now() > deadline {
            bail!("the partition's two blackholes never became active");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = reachable(lan, &names, short)?;
    let still_active = active_blackholes(agent).await?.len();
    assert_eq!(
        still_active, 2,
        "the run ended during the checks: raise its duration"
    );
    assert_eq!(during, ["a->c", "b->c", "c->a", "c->b"], "during");
    let result = run.await?;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    assert_eq!(result.verdict, Verdict::Passed, "{:?}", result.reasons);
    assert!(
        result.rollback_errors.is_empty(),
        "{:?}",
        result.rollback_errors
    );
    assert_eq!(result.faults.len(), 2);
    for fault in &result.faults {
        assert_eq!(fault.kind, "partition");
        assert!(fault.ended_at_ms.is_some(), "{fault:?}");
        assert!(
            fault.asked.starts_with("blackhole to 10.214.0."),
            "{}",
            fault.asked
        );
    }
    assert_eq!(reachable(lan, &names, long)?, every_pair, "after the run");
    let after: Vec<String> = lan.pods.iter().map(tc_state).collect::<Result<_>>()?;
    assert_eq!(after, before, "qdiscs and filters after the run");
    assert_eq!(journal_len(state.path()), 0);

    // The same blackholes, then the agent SIGKILLed: they stay (nobody reverted them)
    // until the restarted agent replays its journal and restores both interfaces.
    let mut client = agent.client().await?;
    for (target, destinations) in &want {
        client
            .inject(api::InjectRequest {
                target: target.clone(),
                duration_ms: 300_000,
                fault: Some(api::inject_request::Fault::Blackhole(api::BlackholeFault {
                    destinations: destinations.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .context("injecting the partition's blackhole by hand")?;
    }
    drop(client);
    assert_eq!(
        reachable(lan, &names, short)?,
        ["a->c", "b->c", "c->a", "c->b"]
    );
    let (tls, state) = (tls.path().to_path_buf(), state.path().to_path_buf());
    rig.agent.as_mut().context("agent")?.kill_hard()?;
    let lan = &rig.lan;
    assert!(
        !connects(&lan.pods[0], &lan.pods[1], short)?,
        "a SIGKILL reverted"
    );
    assert_eq!(journal_len(&state), 2);
    rig.agent = Some(TestAgent::start_tls(&tls, &state)?);
    let lan = &rig.lan;
    let after: Vec<String> = lan.pods.iter().map(tc_state).collect::<Result<_>>()?;
    assert_eq!(after, before, "qdiscs and filters after the restart");
    assert_eq!(journal_len(&state), 0);
    assert_eq!(
        reachable(lan, &names, long)?,
        every_pair,
        "after the restart"
    );
    Ok(())
}
