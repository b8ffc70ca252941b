//! What anyone who can connect can do to the agent and `chaosctl serve`: connections over
//! a listener's cap are closed at once, so they cannot take the file descriptors a revert
//! needs; and reflection answers the clients that speak `grpc.reflection.v1alpha` only
//! (Python's grpcio-reflection), against real processes.
//!
//! Every connection the tests open goes to loopback and is closed when the test ends.
//! The reflection and `chaosctl serve` tests touch no kernel feature, so they are `host_`
//! tests: the VM suite (software emulation, where a Python start takes 30 s) skips them.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{AgentOptions, TestAgent, binary, free_port, http_get, make_certs};
use chaos_tests::agent::{journal_len, state_dir};
use chaos_tests::command::{run_bounded, run_checked};
use chaos_tests::containerd::{ContainerSpec, TestContainer};
use chaos_tests::scaled;

/// The agent's RLIMIT_NOFILE in the descriptor test, and the caps and reserve it is
/// started with: 256 >= 17 open at start (its log's `file descriptors` line) + 32 + 4 +
/// 2 + 128.
const OPEN_FILE_LIMIT: u64 = 256;
const MAX_CONNECTIONS: u64 = 32;
const MAX_METRICS_CONNECTIONS: u64 = 4;
const FD_RESERVE: u64 = 128;
/// Idle connections the test opens: together more than the agent's whole limit, so
/// an agent without caps runs out of descriptors.
const GRPC_FLOOD: usize = 300;
const METRICS_FLOOD: usize = 60;

/// Idle TCP connections to one address, held open until dropped.
struct Flood {
    streams: Vec<TcpStream>,
}

impl Flood {
    /// Opens `count` connections (the kernel completes each handshake whether or not the
    /// server accepts it); a connect that fails ends the flood with an error.
    fn open(address: SocketAddr, count: usize) -> Result<Flood> {
        let mut streams = Vec::with_capacity(count);
        for index in 0..count {
            let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
                .with_context(|| format!("connection {index} of {count} to {address}"))?;
            streams.push(stream);
        }
        Ok(Flood { streams })
    }
}

/// True if the server closed `stream` (end of stream or a reset) within `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Result<bool> {
    stream.set_read_timeout(Some(within))?;
    let mut byte = [0u8; 1];
    Ok(match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    })
}

/// The descriptors a process has open, from /proc/PID/fd.
fn open_descriptors(pid: u32) -> Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(entries.count() as u64)
}

/// The soft "Max open files" of a process, from /proc/PID/limits.
fn open_file_limit(pid: u32) -> Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no `Max open files` line")?;
    line.split_whitespace()
        .nth(3)
        .context("no soft limit")?
        .parse()
        .context("soft limit")
}

/// The qdiscs of the container's `lo`, as `tc` prints them inside its namespace.
fn loopback_qdiscs(container: &TestContainer) -> Result<String> {
    let pid = container.pid()?.to_string();
    let shown = run_checked(
        "nsenter",
        &["-t", &pid, "-n", "tc", "qdisc", "show", "dev", "lo"],
        Duration::from_secs(10),
    )?;
    Ok(shown.stdout)
}

/// The value of the series `series` (name and labels, exactly) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes `/metrics` at `address` until it answers, for at most `within`.
fn scrape_within(address: SocketAddr, within: Duration) -> Result<String> {
    let started = Instant::now();
    loop {
        match http_get(address, "/metrics") {
            Ok((200, body)) => return Ok(body),
            other if started.elapsed() > within => {
                bail!("/metrics at {address} did not answer in {within:?}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_are_closed_at_once_and_leave_a_revert_its_descriptors()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = TestContainer::start(ContainerSpec::pod("dev", "limits-0", "app"))?;
    let agent = TestAgent::start_with_open_file_limit(
        AgentOptions {
            tls_dir: Some(tls.path().to_path_buf()),
            state_dir: state.path().to_path_buf(),
            extra_args: [
                format!("--max-connections={MAX_CONNECTIONS}"),
                format!("--max-metrics-connections={MAX_METRICS_CONNECTIONS}"),
                format!("--fd-reserve={FD_RESERVE}"),
            ]
            .into(),
            containerd_socket: chaos_tests::containerd::CONTAINERD_SOCKET.to_string(),
        },
        OPEN_FILE_LIMIT,
    )?;
    assert_eq!(open_file_limit(agent.pid())?, OPEN_FILE_LIMIT);

    // The client that is already connected when the flood comes.
    let mut client = agent.client().await?;
    client.capabilities(api::CapabilitiesRequest {}).await?;
    // A bandwidth limit alone is a tbf (this host's kernel has sch_tbf, not netem); its
    // revert opens the container's network namespace and a netlink socket in it.
    let fault = client
        .inject(api::InjectRequest {
            target: container.target(),
            duration_ms: 120_000,
            fault: Some(api::inject_request::Fault::Network(api::NetworkFault {
                rate_bytes_per_second: 1_000_000,
                interface: "lo".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await?
        .into_inner()
        .fault
        .context("no fault in the answer")?;
    let installed = loopback_qdiscs(&container)?;
    ensure!(installed.contains("qdisc tbf"), "no tbf on lo: {installed}");

    let flood_started = Instant::now();
    let grpc_flood = Flood::open(agent.grpc, GRPC_FLOOD)?;
    let metrics_flood = Flood::open(agent.metrics, METRICS_FLOOD)?;
    // Right away, while the flood holds every slot: the open client is served, and the
    // revert it asks for succeeds and is undone.
    let listed = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await
        .context("List from the client connected before the flood")?
        .into_inner();
    assert_eq!(listed.faults.len(), 1, "{listed:?}");
    let reverted = client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await
        .context("Revert from the client connected before the flood")?
        .into_inner()
        .reverted;
    assert_eq!(reverted.len(), 1, "{reverted:?}");
    assert_eq!(
        reverted[0].state,
        api::FaultState::Reverted as i32,
        "{reverted:?}\n{}",
        agent.log()
    );
    let after = loopback_qdiscs(&container)?;
    assert!(!after.contains("tbf"), "the tbf is still on lo: {after}");
    assert_eq!(
        journal_len(state.path()),
        0,
        "the journal still holds the fault"
    );
    let during_flood = open_descriptors(agent.pid())?;
    println!(
        "{} s after the flood: {during_flood} descriptors open (limit {OPEN_FILE_LIMIT})",
        flood_started.elapsed().as_secs_f64()
    );
    assert!(
        during_flood + FD_RESERVE <= OPEN_FILE_LIMIT,
        "{during_flood} descriptors open under a flood: the reserve of {FD_RESERVE} is not kept"
    );

    // One more to each port is closed at once (the flood's handshakes hold their slots
    // for 10 s; all of this takes a second or two).
    for (port, address) in [("gRPC", agent.grpc), ("metrics", agent.metrics)] {
        let mut over = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        assert!(
            closed_by_server(&mut over, scaled(Duration::from_secs(5)))?,
            "a {port} connection over the cap was not closed"
        );
    }
    drop(grpc_flood);
    drop(metrics_flood);
    // The floods closed: served again, and every connection over a cap was counted.
    let scrape = scrape_within(agent.metrics, scaled(Duration::from_secs(10)))?;
    let refused = |listener: &str| {
        sample(
            &scrape,
            &format!("chaos_agent_refused_connections_total{{listener=\"{listener}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    // The flood over each cap and the one more. (A flood arrives within milliseconds,
    // long before a held handshake runs out of time and frees a slot.)
    let over_grpc = (GRPC_FLOOD as u64 - MAX_CONNECTIONS + 1) as f64;
    let over_metrics = (METRICS_FLOOD as u64 - MAX_METRICS_CONNECTIONS + 1) as f64;
    assert!(refused("grpc") >= over_grpc, "grpc refusals: {scrape}");
    assert!(
        refused("metrics") >= over_metrics,
        "metrics refusals: {scrape}"
    );
    let mut fresh = agent.client().await?;
    fresh.capabilities(api::CapabilitiesRequest {}).await?;
    let log = agent.log();
    let logged = log.matches("connection closed at once").count();
    // One line per listener for the burst (at most one per listener every 10 s).
    assert!(
        (2..=4).contains(&logged),
        "{logged} refusal lines for {} refusals:\n{log}",
        refused("grpc") + refused("metrics")
    );
    Ok(())
}

#[test]
fn the_agent_refuses_to_start_when_its_limit_cannot_hold_the_caps_and_the_reserve() -> Result<()> {
    let state = state_dir()?;
    let agent = binary("chaos-agent")?;
    let output = run_bounded(
        "prlimit",
        &[
            "--nofile=256:256",
            "--",
            &agent.to_string_lossy(),
            "--insecure-plaintext",
            &format!("--listen=127.0.0.1:{}", free_port()?),
            &format!("--metrics-listen=127.0.0.1:{}", free_port()?),
            &format!("--state-dir={}", state.path().display()),
            "--max-connections=200",
        ],
        Duration::from_secs(30),
    )?;
    assert!(!output.success(), "started: {}", output.stderr);
    for part in [
        "RLIMIT_NOFILE is 256",
        "--max-connections 200",
        "--fd-reserve",
    ] {
        assert!(
            output.stderr.contains(part),
            "`{part}` missing: {}",
            output.stderr
        );
    }
    Ok(())
}

/// The Python script that lists services through reflection v1alpha.
const LIST_SERVICES: &str = include_str!("../python/list_services.py");

/// Runs [`LIST_SERVICES`] against `target` with the client certificate of `tls`,
/// expecting the server to be `server_name`; its output lines.
fn python_reflection(target: SocketAddr, tls: &Path, server_name: &str) -> Result<Vec<String>> {
    let file = |name: &str| tls.join(name).to_string_lossy().into_owned();
    let output = run_bounded(
        "python3",
        &[
            "-c",
            LIST_SERVICES,
            &target.to_string(),
            "--ca",
            &file("ca.pem"),
            "--cert",
            &file("client.pem"),
            "--key",
            &file("client-key.pem"),
            "--server-name",
            server_name,
        ],
        scaled(Duration::from_secs(60)),
    )?;
    ensure!(
        output.success(),
        "python3 list_services.py (needs grpcio and grpcio-reflection, which \
         scripts/lib/dependencies.sh installs): {}{}",
        output.stdout,
        output.stderr
    );
    Ok(output.stdout.lines().map(str::to_string).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_python_grpcio_lists_the_agent_services_through_reflection_v1alpha() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let lines = python_reflection(agent.grpc, tls.path(), "chaos-agent")?;
    for wanted in [
        "service chaoscontrol.v1.Agent",
        "service grpc.health.v1.Health",
        "service grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(lines.iter().any(|l| l == wanted), "{wanted}: {lines:?}");
    }
    // The descriptors came through v1alpha too, and Python's protobuf decoded them.
    let methods = lines
        .iter()
        .find_map(|l| l.strip_prefix("methods chaoscontrol.v1.Agent: "))
        .context(format!("no methods of the Agent service: {lines:?}"))?;
    for method in ["Inject", "Revert", "List", "Capabilities"] {
        assert!(
            methods.split(',').any(|m| m == method),
            "{method}: {methods}"
        );
    }
    Ok(())
}

/// `chaosctl serve` with no agents and no schedule: only its API and /metrics.
struct Serve {
    child: std::process::Child,
    api: SocketAddr,
    metrics: SocketAddr,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(work: &Path, tls: &Path, extra: &[&str]) -> Result<Serve> {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = work.join("controller.yaml");
        std::fs::write(&config, format!("metrics_listen: {metrics}\n"))?;
        let log = work.join("serve.log");
        let log_file = std::fs::File::create(&log)?;
        let child = std::process::Command::new(binary("chaosctl")?)
            .arg("serve")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--api-listen={api}"))
            .arg(format!("--tls-dir={}", tls.display()))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting chaosctl serve")?;
        let serve = Serve {
            child,
            api,
            metrics,
            log,
        };
        scrape_within(serve.metrics, scaled(Duration::from_secs(20)))
            .with_context(|| serve.log_text())?;
        Ok(serve)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_chaosctl_serve_caps_its_api_connections_and_answers_reflection_v1alpha() -> Result<()>
{
    let tls = make_certs()?;
    let work = tempfile::Builder::new()
        .prefix("chaos-test-serve-")
        .tempdir()?;
    let serve = Serve::start(work.path(), tls.path(), &["--max-api-connections=2"])?;
    let lines = python_reflection(
        serve.api,
        tls.path(),
        chaosctl::agents::certs::CONTROLLER_SERVER_NAME,
    )?;
    assert!(
        lines
            .iter()
            .any(|l| l == "service chaoscontrol.v1.Controller"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("methods chaoscontrol.v1.Controller: ")
                && l.contains("SubmitRun")),
        "{lines:?}"
    );

    // One client connected, one idle connection: both slots taken.
    let mut client = chaosctl::serve::service::connect(&chaosctl::agents::client::AgentAddress {
        address: serve.api.to_string(),
        tls_dir: Some(tls.path().to_path_buf()),
        plaintext: false,
    })
    .await?;
    client.list_runs(api::ListRunsRequest {}).await?;
    let _idle = Flood::open(serve.api, 1)?;
    let mut over = Flood::open(serve.api, 2)?;
    for stream in &mut over.streams {
        assert!(
            closed_by_server(stream, scaled(Duration::from_secs(5)))?,
            "an API connection over the cap of 2 was not closed"
        );
    }
    client
        .list_runs(api::ListRunsRequest {})
        .await
        .context("the client connected before the cap was reached")?;
    let scrape = scrape_within(serve.metrics, scaled(Duration::from_secs(10)))?;
    assert_eq!(
        sample(
            &scrape,
            "chaosctl_refused_connections_total{listener=\"api\"}"
        ),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "chaosctl_open_connections{listener=\"api\"}"),
        Some(2.0),
        "{scrape}"
    );
    Ok(())
}
