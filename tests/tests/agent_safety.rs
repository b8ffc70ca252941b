//! The agent's lifecycle promises, against a real agent, real containers and the real
//! kernel: a stop never outlives its fault, a repeating kill stays on the process it was
//! given, SIGTERM drains, a failed revert is retried and stays visible, stressing is one
//! fault per container within a thread budget, and periodic work never delays an end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api::{self, agent_client::AgentClient};
use chaos_tests::agent::{
    AgentOptions, TestAgent, inject_fault, journal_len, make_certs, state_dir,
};
use chaos_tests::containerd::{CONTAINERD_SOCKET, ContainerSpec, TestContainer};
use chaos_tests::process::state as process_state;
use chaos_tests::process::{HostProcess, first_child};
use tonic::Code;
use tonic::transport::Channel;

fn options(tls: &Path, state: &Path, extra: &[&str]) -> AgentOptions {
    AgentOptions {
        tls_dir: Some(tls.to_path_buf()),
        state_dir: state.to_path_buf(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        containerd_socket: CONTAINERD_SOCKET.into(),
    }
}

fn signal(
    target: &str,
    signal: &str,
    interval: Duration,
    duration: Duration,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Process(api::ProcessFault {
            signal: signal.into(),
            interval_ms: interval.as_millis() as u64,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cpu(target: &str, load: u32, cores: u32, duration: Duration) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: load,
            cores,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn memory(target: &str, bytes: u64, duration: Duration) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Memory(api::MemoryFault {
            size_bytes: bytes,
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn get(client: &mut AgentClient<Channel>, id: &str) -> Result<api::Fault> {
    Ok(client
        .get(api::GetRequest { id: id.into() })
        .await?
        .into_inner())
}

async fn revert(client: &mut AgentClient<Channel>, id: &str) -> Result<api::Fault> {
    client
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await?
        .into_inner()
        .reverted
        .pop()
        .context("nothing reverted")
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what}: not within {limit:?}")
}

fn stopped(pid: u32) -> bool {
    process_state(pid) == Some('T')
}

// ---- 3. a stop signal is a held state, undone at every end ----

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_is_held_until_the_fault_ends_and_every_end_continues_the_process() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
    let mut client = agent.client().await?;
    // A child of the container's init: a pid namespace's init ignores TSTP, TTIN and
    // TTOU from outside unless it handles them, which a stop fault on a worker does not.
    let container = TestContainer::start(ContainerSpec {
        command: ["sh", "-c", "sleep 100000 & wait"]
            .map(String::from)
            .to_vec(),
        ..ContainerSpec::pod("shop", "stop-0", "app")
    })?;
    let pid = first_child(container.pid()?)?;
    let target = container.target();
    let signal = |target: &str, name: &str, interval: Duration, duration: Duration| {
        let mut request = signal(target, name, interval, duration);
        if let Some(api::inject_request::Fault::Process(p)) = request.fault.as_mut() {
            p.process = "sleep".into();
        }
        request
    };

    // Without a duration a stop would be forever: refused.
    let status = client
        .inject(signal(&target, "STOP", Duration::ZERO, Duration::ZERO))
        .await
        .expect_err("a stop without a duration");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("SIGCONT"), "{status}");

    // The deadline.
    let fault = inject_fault(
        &mut client,
        signal(&target, "STOP", Duration::ZERO, Duration::from_secs(2)),
    )
    .await?;
    assert_eq!(fault.state, api::FaultState::Active as i32, "{fault:?}");
    wait_until("stopped", Duration::from_secs(5), || stopped(pid))?;
    wait_until("continued at the deadline", Duration::from_secs(10), || {
        !stopped(pid)
    })?;
    assert_eq!(
        get(&mut client, &fault.id).await?.state,
        api::FaultState::Expired as i32
    );

    // TSTP does not stop a worker of a container: its process group is orphaned (the
    // init's parent, the runtime's shim, is in another session), so the kernel discards
    // it. The agent reads the stop back and says so rather than claim a stop.
    let status = client
        .inject(signal(
            &target,
            "TSTP",
            Duration::ZERO,
            Duration::from_secs(60),
        ))
        .await
        .expect_err("a stop that does not take");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("did not stop"), "{status}");
    ensure!(!stopped(pid), "a refused stop left the process stopped");
    assert_eq!(journal_len(state.path()), 0);

    // A revert; the status reads the stop back.
    let fault = inject_fault(
        &mut client,
        signal(&target, "STOP", Duration::ZERO, Duration::from_secs(60)),
    )
    .await?;
    ensure!(stopped(pid), "not stopped when the inject answered");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match get(&mut client, &fault.id).await?.status {
        Some(api::fault::Status::Process(p)) => assert_eq!(p.stopped, 1, "{p:?}"),
        other => panic!("{other:?}"),
    }
    revert(&mut client, &fault.id).await?;
    ensure!(!stopped(pid), "still stopped after the revert");

    // A lease that is not renewed.
    let mut leased = signal(&target, "STOP", Duration::ZERO, Duration::from_secs(60));
    leased.lease = Some(api::Lease {
        holder: "gone-controller".into(),
        ttl_ms: 800,
    });
    inject_fault(&mut client, leased).await?;
    wait_until("stopped", Duration::from_secs(5), || stopped(pid))?;
    wait_until(
        "continued when the lease lapsed",
        Duration::from_secs(10),
        || !stopped(pid),
    )?;

    // SIGTERM.
    inject_fault(
        &mut client,
        signal(&target, "STOP", Duration::ZERO, Duration::from_secs(60)),
    )
    .await?;
    wait_until("stopped", Duration::from_secs(5), || stopped(pid))?;
    drop(client);
    agent.terminate()?;
    ensure!(!stopped(pid), "still stopped after the agent's SIGTERM");
    assert_eq!(journal_len(state.path()), 0);

    // A crash, then the replay at the next start.
    let mut agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
    let mut client = agent.client().await?;
    inject_fault(
        &mut client,
        signal(&target, "STOP", Duration::ZERO, Duration::from_secs(60)),
    )
    .await?;
    wait_until("stopped", Duration::from_secs(5), || stopped(pid))?;
    drop(client);
    agent.kill_hard()?;
    ensure!(stopped(pid), "the crash itself continued the process?");
    assert_eq!(journal_len(state.path()), 1);
    let agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
    ensure!(
        !stopped(pid),
        "still stopped after the restart replayed the journal"
    );
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        agent
            .scrape()?
            .contains("chaos_agent_reverts_total{kind=\"process\",reason=\"recovered\"} 1")
    );
    Ok(())
}

// ---- 5. a repeating kill stays on the process it was given ----

/// A new host process with exactly `pid`, made by setting the kernel's last pid just
/// below it. Other processes fork meanwhile, so it tries a bounded number of times.
fn process_with_pid(pid: u32) -> Result<HostProcess> {
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())?;
        let candidate = HostProcess::sleep()?;
        if candidate.pid() == pid {
            return Ok(candidate);
        }
    }
    bail!("could not get pid {pid} again in 500 attempts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeating_kill_of_a_pid_never_reaches_the_process_that_reuses_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(options(
        tls.path(),
        state.path(),
        &["--allow-host-processes"],
    ))?;
    let mut client = agent.client().await?;
    let mut first = HostProcess::sleep()?;
    let pid = first.pid();
    let fault = inject_fault(
        &mut client,
        signal(
            &format!("pid:{pid}"),
            "TERM",
            Duration::from_millis(200),
            Duration::from_secs(20),
        ),
    )
    .await?;
    // The first round killed it; reap it so that its pid is free again.
    first.0.wait()?;
    let second = process_with_pid(pid)?;
    // Rounds keep coming every 200 ms for 20 s: none may hit the newcomer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        process_state(second.pid()).is_some_and(|s| s != 'Z'),
        "the process that reused pid {pid} was killed"
    );
    let ended = get(&mut client, &fault.id).await?;
    assert_eq!(ended.state, api::FaultState::Completed as i32, "{ended:?}");
    assert!(ended.message.contains("target is gone"), "{ended:?}");
    Ok(())
}

// ---- 6. SIGTERM drains ----

/// Where a container's network namespace can be read from the host: its init's.
fn lo_qdisc(container_pid: u32) -> Result<String> {
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &container_pid.to_string(),
            "-n",
            "tc",
            "qdisc",
            "show",
            "dev",
            "lo",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bandwidth_on_lo(target: &str) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: 60_000,
        fault: Some(api::inject_request::Fault::Network(api::NetworkFault {
            interface: "lo".into(),
            rate_bytes_per_second: 1_000_000,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn injects_racing_a_sigterm_never_outlive_the_agent() -> Result<()> {
    let containers: Vec<TestContainer> = (0..4)
        .map(|i| TestContainer::start(ContainerSpec::pod("shop", &format!("drain-{i}"), "app")))
        .collect::<Result<_>>()?;
    let pids: Vec<u32> = containers.iter().map(|c| c.pid()).collect::<Result<_>>()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut answered_after_term = 0;
    for trial in 0..3 {
        let mut agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
        let term_sent = Arc::new(AtomicBool::new(false));
        let accepted_after = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for container in &containers {
            let mut client = agent.client().await?;
            let target = container.target();
            let (term_sent, accepted_after) = (Arc::clone(&term_sent), Arc::clone(&accepted_after));
            tasks.push(tokio::spawn(async move {
                // Inject and revert in a loop until the agent stops answering (bounded).
                for _ in 0..10_000 {
                    match client.inject(bandwidth_on_lo(&target)).await {
                        Ok(answer) => {
                            if term_sent.load(Ordering::SeqCst) {
                                accepted_after.fetch_add(1, Ordering::SeqCst);
                            }
                            let id = answer.into_inner().fault.map(|f| f.id).unwrap_or_default();
                            if client
                                .revert(api::RevertRequest { id, all: false })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(status)
                            if status.code() == Code::Unavailable
                                && status.message().contains("shutting down") => {}
                        Err(status) if status.code() == Code::FailedPrecondition => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let the loops run, then SIGTERM at a moment that differs per trial.
        tokio::time::sleep(Duration::from_millis(300 + 70 * trial)).await;
        term_sent.store(true, Ordering::SeqCst);
        let status = tokio::task::spawn_blocking(move || {
            let status = agent.terminate();
            (agent, status)
        })
        .await?;
        let (agent, exit) = status;
        exit?;
        for task in tasks {
            task.await?;
        }
        answered_after_term += accepted_after.load(Ordering::SeqCst);
        for pid in &pids {
            let qdisc = lo_qdisc(*pid)?;
            ensure!(
                !qdisc.contains("tbf"),
                "trial {trial}: a fault outlived the agent on the lo of pid {pid}: {qdisc}\n{}",
                agent.log()
            );
        }
        assert_eq!(
            journal_len(state.path()),
            0,
            "trial {trial}: journal left behind"
        );
        assert!(
            agent.log().contains("reverted every fault"),
            "{}",
            agent.log()
        );
    }
    println!("injects answered OK after SIGTERM was sent: {answered_after_term}");
    Ok(())
}

// ---- 7. a failed revert is retried and stays visible ----

/// The container's v1 freezer cgroup, thawed on drop so teardown can kill it.
struct Freezer(PathBuf);

impl Freezer {
    fn of(container: &TestContainer) -> Result<Freezer> {
        let membership = container
            .cgroup_memberships()?
            .into_iter()
            .find(|m| m.controllers.iter().any(|c| c == "freezer"))
            .context("no v1 freezer: this test needs the host's cgroup v1")?;
        let dir = Path::new("/sys/fs/cgroup/freezer").join(membership.path.trim_start_matches('/'));
        ensure!(dir.join("freezer.state").exists(), "no {}", dir.display());
        Ok(Freezer(dir))
    }
    fn set(&self, state: &str) -> Result<()> {
        std::fs::write(self.0.join("freezer.state"), state)?;
        Ok(())
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.set("THAWED");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_a_revert_that_fails_is_retried_until_it_succeeds_and_stays_visible_meanwhile()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
    let mut client = agent.client().await?;
    let container = TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        ..ContainerSpec::pod("shop", "frozen-0", "app")
    })?;
    let freezer = Freezer::of(&container)?;
    let fault = inject_fault(
        &mut client,
        cpu(&container.target(), 20, 1, Duration::from_secs(120)),
    )
    .await?;
    // A frozen task does not die of SIGKILL until it is thawed (cgroup v1): the revert,
    // which kills and reaps the stressor, fails.
    freezer.set("FROZEN")?;
    let answer = revert(&mut client, &fault.id).await?;
    assert_eq!(
        answer.state,
        api::FaultState::RevertPending as i32,
        "{answer:?}"
    );
    assert!(answer.message.contains("retrying"), "{answer:?}");
    let listed = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner()
        .faults;
    ensure!(
        listed
            .iter()
            .any(|f| f.id == fault.id && f.state == api::FaultState::RevertPending as i32),
        "{listed:?}"
    );
    assert_eq!(
        journal_len(state.path()),
        1,
        "the record went with a failed revert"
    );
    assert!(
        agent
            .scrape()?
            .contains("chaos_agent_revert_pending_faults 1")
    );
    // Thawed, the next attempt succeeds.
    freezer.set("THAWED")?;
    let mut ended = get(&mut client, &fault.id).await?;
    let started = Instant::now();
    while ended.state == api::FaultState::RevertPending as i32
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ended = get(&mut client, &fault.id).await?;
    }
    assert_eq!(ended.state, api::FaultState::Reverted as i32, "{ended:?}");
    assert!(ended.message.contains("attempts"), "{ended:?}");
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        agent
            .scrape()?
            .contains("chaos_agent_revert_pending_faults 0")
    );
    Ok(())
}

// ---- 8. one stressing fault of a kind per container, a node budget of threads ----

#[tokio::test(flavor = "multi_thread")]
async fn one_cpu_and_one_memory_fault_per_container_within_the_thread_budget() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(options(
        tls.path(),
        state.path(),
        &["--max-stressor-threads", "2"],
    ))?;
    let mut client = agent.client().await?;
    let a = TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        memory_limit_bytes: Some(256 << 20),
        ..ContainerSpec::pod("shop", "claims-a", "app")
    })?;
    let b = TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        ..ContainerSpec::pod("shop", "claims-b", "app")
    })?;
    let first = inject_fault(
        &mut client,
        cpu(&a.target(), 10, 1, Duration::from_secs(60)),
    )
    .await?;
    // The same container by another name is the same cgroup.
    for form in [a.target(), format!("pid:{}", a.pid()?), a.pod_target()] {
        let status = client
            .inject(cpu(&form, 10, 1, Duration::from_secs(60)))
            .await
            .expect_err("a second CPU fault on one container");
        assert_eq!(status.code(), Code::FailedPrecondition, "{form}: {status}");
        assert!(status.message().contains(&first.id), "{form}: {status}");
    }
    // Another kind is another claim; that takes the second thread of the budget.
    let held = inject_fault(
        &mut client,
        memory(&a.target(), 8 << 20, Duration::from_secs(60)),
    )
    .await?;
    let status = client
        .inject(cpu(&b.target(), 10, 1, Duration::from_secs(60)))
        .await
        .expect_err("over the thread budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains("--max-stressor-threads"),
        "{status}"
    );
    // Ending a fault frees its claim and its threads.
    revert(&mut client, &first.id).await?;
    let again = inject_fault(
        &mut client,
        cpu(&b.target(), 10, 1, Duration::from_secs(60)),
    )
    .await?;
    revert(&mut client, &again.id).await?;
    revert(&mut client, &held.id).await?;
    Ok(())
}

/// Two stops of one container would share its processes: the first to end would continue
/// what the second still holds. A second stop is refused by every form of the target, a kill
/// is not a stop and is accepted, and the processes stay stopped until the one stop ends.
#[tokio::test(flavor = "multi_thread")]
async fn one_stop_per_container_and_the_processes_stay_stopped_until_it_ends() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(options(tls.path(), state.path(), &[]))?;
    let mut client = agent.client().await?;
    let container = TestContainer::start(ContainerSpec::pod("shop", "stop-claim", "app"))?;
    let pid = container.pid()?;
    let stop = inject_fault(
        &mut client,
        signal(
            &container.target(),
            "SIGSTOP",
            Duration::ZERO,
            Duration::from_secs(60),
        ),
    )
    .await?;
    wait_until(
        "the container's process stopped",
        Duration::from_secs(5),
        || stopped(pid),
    )?;
    for form in [
        container.target(),
        format!("pid:{pid}"),
        container.pod_target(),
    ] {
        let status = client
            .inject(signal(
                &form,
                "SIGTSTP",
                Duration::ZERO,
                Duration::from_secs(60),
            ))
            .await
            .expect_err("a second stop of one container");
        assert_eq!(status.code(), Code::FailedPrecondition, "{form}: {status}");
        assert!(
            status.message().contains(&stop.id) && status.message().contains("one stop fault"),
            "{form}: {status}"
        );
    }
    // A signal that stops nothing holds nothing and is no claim (SIGWINCH: ignored by default).
    inject_fault(
        &mut client,
        signal(
            &container.target(),
            "SIGWINCH",
            Duration::ZERO,
            Duration::ZERO,
        ),
    )
    .await?;
    assert!(
        stopped(pid),
        "a refused or a harmless request continued the process"
    );
    revert(&mut client, &stop.id).await?;
    wait_until("the process continued", Duration::from_secs(5), || {
        !stopped(pid)
    })?;
    // Its claim ended with it.
    let again = inject_fault(
        &mut client,
        signal(
            &container.target(),
            "SIGSTOP",
            Duration::ZERO,
            Duration::from_secs(60),
        ),
    )
    .await?;
    revert(&mut client, &again.id).await?;
    wait_until("the process continued", Duration::from_secs(5), || {
        !stopped(pid)
    })?;
    Ok(())
}

// ---- 10. periodic work never delays an end ----

/// A proxy in front of containerd's socket that the test can wedge: connections stay
/// open and nothing passes, as with a runtime that hangs.
struct WedgeableRuntime {
    socket: PathBuf,
    wedged: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl WedgeableRuntime {
    async fn start() -> Result<WedgeableRuntime> {
        let dir = tempfile::Builder::new()
            .prefix("chaos-test-runtime-")
            .tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let listener = tokio::net::UnixListener::bind(&socket)?;
        let wedged = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&wedged);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::UnixStream::connect(CONTAINERD_SOCKET).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (up_read, up_write) = upstream.into_split();
                    tokio::join!(
                        pump(client_read, up_write, Arc::clone(&flag)),
                        pump(up_read, client_write, flag)
                    );
                });
            }
        });
        Ok(WedgeableRuntime {
            socket,
            wedged,
            _dir: dir,
            task,
        })
    }

    fn wedge(&self) {
        self.wedged.store(true, Ordering::SeqCst);
    }
}

impl Drop for WedgeableRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies until either end closes; once wedged, holds what it read and passes nothing.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    wedged: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while wedged.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_runtime_delays_neither_a_revert_nor_a_deadline() -> Result<()> {
    let runtime = WedgeableRuntime::start().await?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start(AgentOptions {
        containerd_socket: runtime.socket.display().to_string(),
        ..options(tls.path(), state.path(), &[])
    })?;
    let mut client = agent.client().await?;
    let container = TestContainer::start(ContainerSpec::pod("shop", "wedge-0", "app"))?;
    // CONT is harmless to a running process: rounds that find their target do nothing.
    let by_revert = inject_fault(
        &mut client,
        signal(
            &container.target(),
            "CONT",
            Duration::from_millis(200),
            Duration::from_secs(120),
        ),
    )
    .await?;
    let by_deadline = inject_fault(
        &mut client,
        signal(
            &container.pod_target(),
            "CONT",
            Duration::from_millis(200),
            Duration::from_secs(3),
        ),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // From now on every round's lookup in the runtime hangs until its call timeout.
    runtime.wedge();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let asked = Instant::now();
    let reverted = revert(&mut client, &by_revert.id).await?;
    let took = asked.elapsed();
    assert_eq!(
        reverted.state,
        api::FaultState::Reverted as i32,
        "{reverted:?}"
    );
    ensure!(
        took < Duration::from_millis(1500),
        "the revert waited {took:?} for a stuck round"
    );
    // The other fault's deadline: on time although its rounds hang too.
    let mut ended = get(&mut client, &by_deadline.id).await?;
    while ended.state == api::FaultState::Active as i32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ended = get(&mut client, &by_deadline.id).await?;
        ensure!(asked.elapsed() < Duration::from_secs(20), "never ended");
    }
    let late = ended.ended_unix_ms - ended.deadline_unix_ms;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    ensure!(late < 1000, "the deadline was kept {late} ms late");
    Ok(())
}
