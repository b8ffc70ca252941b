//! The pause kind through a real agent on real containerd containers: on the host its v1
//! freezer (`freezer.state`), in the VM cgroup2's `cgroup.freeze`. Each test reads the
//! effect back from the kernel (the freezer's state) and from the workload itself (a
//! counter the container's shell writes every 50 ms, read from the host through
//! `/proc/PID/root`: it stands still while frozen and moves again after), for every way
//! a pause ends: revert, deadline, SIGTERM, and a SIGKILLed agent's restart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{
    TestAgent, ensure_recovered, inject_fault, journal_len, make_certs, state_dir, wait_fault_state,
};
use chaos_tests::containerd::{ContainerSpec, TestContainer, ctr, freezer_dir_of_pid};
use chaos_tests::scaled;

/// A container whose shell counts into /tmp/count every 50 ms.
fn counting_container(pod: &str) -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("dev", &format!("{pod}-{}", std::process::id()), "app");
    spec.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done".into(),
    ];
    TestContainer::start(spec)
}

/// Thaws the container's cgroup when dropped, whatever the test did: a frozen task
/// (on v1) cannot die, so the container's removal would wait for it for ever.
struct ThawOnDrop(PathBuf, bool);

impl ThawOnDrop {
    fn of(container: &TestContainer) -> Result<ThawOnDrop> {
        let (dir, v1) = freezer_dir_of_pid(container.pid()?)?;
        Ok(ThawOnDrop(dir, v1))
    }
}

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let (file, value) = if self.1 {
            ("freezer.state", "THAWED")
        } else {
            ("cgroup.freeze", "0")
        };
        let _ = std::fs::write(self.0.join(file), value);
    }
}

fn count(container: &TestContainer) -> Result<u64> {
    let file = format!("/proc/{}/root/tmp/count", container.pid()?);
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    // The shell may be between truncating and writing the file.
    Ok(text.trim().parse().unwrap_or(0))
}

/// Whether the counter moves over `window` (read at both ends).
fn counting(container: &TestContainer, window: Duration) -> Result<bool> {
    let before = count(container)?;
    std::thread::sleep(window);
    let after = count(container)?;
    Ok(after > before && before > 0)
}

/// Waits until the container's cgroup shows `frozen` (read back from the kernel).
fn wait_frozen(container: &TestContainer, frozen: bool, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if container.is_frozen()? == frozen {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!(
                "the container's cgroup is not {} after {within:?}",
                if frozen { "frozen" } else { "thawed" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pause(target: &str, duration: Duration) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Pause(api::PauseFault {})),
        ..Default::default()
    }
}

fn pause_status(fault: &api::Fault) -> Result<api::PauseStatus> {
    match &fault.status {
        Some(api::fault::Status::Pause(status)) => Ok(*status),
        other => bail!("no pause status: {other:?}"),
    }
}

/// The workload is frozen: the kernel says so and the counter stands still over 500 ms.
/// The counter gets `scaled(1 s)` to come to rest: in the VM, loaded by a parallel test,
/// CI once saw it move in the first half second after the kernel showed the cgroup
/// frozen (run alone it never did); a settle is printed, so CI logs show how often.
/// `step` names the way the pause is tried, for the failure message.
fn check_frozen(container: &TestContainer, step: &str) -> Result<()> {
    ensure!(container.is_frozen()?, "{step}: the cgroup is not frozen");
    let started = Instant::now();
    loop {
        let before = count(container)?;
        std::thread::sleep(Duration::from_millis(500));
        let after = count(container)?;
        ensure!(
            container.is_frozen()?,
            "{step}: the cgroup thawed during the check"
        );
        if after == before {
            return Ok(());
        }
        eprintln!(
            "{step}: the counter moved from {before} to {after} {:?} after the freeze was read back",
            started.elapsed()
        );
        if started.elapsed() > scaled(Duration::from_secs(1)) {
            bail!("{step}: the counter still moves while the cgroup shows frozen");
        }
    }
}

/// The workload runs again: thawed, and the counter moves.
fn check_running(container: &TestContainer) -> Result<()> {
    wait_frozen(container, false, scaled(Duration::from_secs(5)))?;
    let started = Instant::now();
    while !counting(container, Duration::from_millis(300))? {
        if started.elapsed() > scaled(Duration::from_secs(10)) {
            bail!("the counter does not move after the thaw");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_freezes_every_process_of_the_pod_until_reverted() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = counting_container("pause")?;
    let _thaw = ThawOnDrop::of(&container)?;
    // Counting before (the shell may not have written its first count yet).
    check_running(&container)?;
    let mut client = agent.client().await?;
    let fault = inject_fault(
        &mut client,
        pause(&container.pod_target(), Duration::from_secs(60)),
    )
    .await?;
    ensure!(fault.state == api::FaultState::Active as i32, "{fault:?}");
    let status = pause_status(&fault)?;
    // Frozen, the cgroup's processes cannot change: the shell, and its `sleep` unless the
    // freeze caught the shell between two of them (CI once saw 1).
    let (freezer_dir, _) = freezer_dir_of_pid(container.pid()?)?;
    let procs = std::fs::read_to_string(freezer_dir.join("cgroup.procs"))?;
    let in_cgroup = procs.lines().filter(|l| !l.trim().is_empty()).count() as u32;
    ensure!(
        (status.cgroups, status.frozen) == (1, 1)
            && status.processes >= 1
            && status.processes == in_cgroup,
        "{status:?}, {in_cgroup} process(es) in the cgroup"
    );
    check_frozen(&container, "revert")?;
    ensure!(journal_len(state.path()) == 1);

    let reverted = client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?
        .into_inner()
        .reverted;
    ensure!(reverted.len() == 1, "{reverted:?}");
    ensure!(pause_status(&reverted[0])?.frozen == 0, "{reverted:?}");
    check_running(&container)?;
    ensure!(journal_len(state.path()) == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_thaws_at_its_deadline_at_sigterm_and_after_a_sigkilled_agent_restarts()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let container = counting_container("pause-ends")?;
    let _thaw = ThawOnDrop::of(&container)?;
    let target = container.target();

    // The deadline.
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    // Long enough that the frozen state is read back before the deadline thaws it, also
    // in the VM, where a 1.5 s deadline had passed before the check (software emulation).
    let deadline = scaled(Duration::from_secs(3));
    let fault = inject_fault(&mut client, pause(&target, deadline)).await?;
    check_frozen(&container, "deadline")?;
    wait_fault_state(
        &agent,
        &fault.id,
        api::FaultState::Expired,
        deadline + scaled(Duration::from_secs(10)),
    )
    .await?;
    check_running(&container)?;

    // SIGTERM: the agent thaws before it exits.
    inject_fault(&mut client, pause(&target, Duration::from_secs(120))).await?;
    check_frozen(&container, "sigterm")?;
    let status = agent.terminate()?;
    ensure!(status.success(), "the agent exited with {status}");
    check_running(&container)?;
    ensure!(journal_len(state.path()) == 0);

    // SIGKILL: the cgroup stays frozen with the agent gone, and its restart thaws it.
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    inject_fault(&mut client, pause(&target, Duration::from_secs(120))).await?;
    agent.kill_hard()?;
    check_frozen(&container, "sigkill")?;
    ensure!(journal_len(state.path()) == 1);
    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    check_running(&container)?;
    ensure_recovered(&restarted, api::FaultKind::Pause).await?;
    ensure!(journal_len(state.path()) == 0);
    Ok(())
}

/// Refused, and nothing changed: a pid (one process, not a cgroup), a second pause, a
/// stressor beside a pause, and a container its runtime already paused (thawing it at
/// the end would undo a pause the fault does not own).
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_is_refused_for_a_pid_a_second_pause_a_stressor_and_a_runtime_pause() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = counting_container("pause-refused")?;
    let thaw = ThawOnDrop::of(&container)?;
    let target = container.target();
    let mut client = agent.client().await?;
    let hour = Duration::from_secs(3600);

    let refused = client
        .inject(pause(&format!("pid:{}", container.pid()?), hour))
        .await
        .unwrap_err();
    ensure!(
        refused.code() == tonic::Code::InvalidArgument,
        "{refused:?}"
    );
    ensure!(refused.message().contains("signal STOP"), "{refused:?}");
    ensure!(!container.is_frozen()?);

    let held = inject_fault(&mut client, pause(&target, hour))
        .await
        .context("the first pause")?;
    let second = client.inject(pause(&target, hour)).await.unwrap_err();
    ensure!(
        second.code() == tonic::Code::FailedPrecondition,
        "{second:?}"
    );
    ensure!(second.message().contains(&held.id), "{second:?}");
    let cpu = api::InjectRequest {
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: 50,
            ..Default::default()
        })),
        ..pause(&target, hour)
    };
    let stressor = client.inject(cpu.clone()).await.unwrap_err();
    ensure!(
        stressor.code() == tonic::Code::FailedPrecondition,
        "{stressor:?}"
    );
    ensure!(
        stressor.message().contains("a pause and another fault"),
        "{stressor:?}"
    );
    client
        .revert(api::RevertRequest {
            id: held.id,
            all: false,
        })
        .await?;
    check_running(&container)?;

    // The runtime's own pause: containerd reports the task paused.
    ctr(
        &container.runtime_namespace,
        &["task", "pause", &container.id],
    )?
    .check()
    .context("ctr task pause")?;
    wait_frozen(&container, true, scaled(Duration::from_secs(5)))?;
    let paused = client.inject(pause(&target, hour)).await.unwrap_err();
    ensure!(
        paused.code() == tonic::Code::FailedPrecondition,
        "{paused:?}"
    );
    ensure!(paused.message().contains("paused"), "{paused:?}");
    ensure!(
        container.is_frozen()?,
        "the refusal thawed the runtime's pause"
    );
    ctr(
        &container.runtime_namespace,
        &["task", "resume", &container.id],
    )?
    .check()
    .context("ctr task resume")?;
    check_running(&container)?;

    // Frozen behind the runtime's back (another tool, an operator): the freezer says so.
    let (dir, v1) = freezer_dir_of_pid(container.pid()?)?;
    let (file, frozen) = if v1 {
        ("freezer.state", "FROZEN")
    } else {
        ("cgroup.freeze", "1")
    };
    std::fs::write(dir.join(file), frozen)?;
    wait_frozen(&container, true, scaled(Duration::from_secs(5)))?;
    let frozen_by_another = client.inject(pause(&target, hour)).await.unwrap_err();
    ensure!(
        frozen_by_another.code() == tonic::Code::FailedPrecondition,
        "{frozen_by_another:?}"
    );
    ensure!(
        frozen_by_another.message().contains("already frozen"),
        "{frozen_by_another:?}"
    );
    ensure!(
        container.is_frozen()?,
        "the refusal thawed another's freeze"
    );
    drop(thaw);
    check_running(&container)?;
    ensure!(journal_len(state.path()) == 0);
    let listed = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner()
        .faults;
    ensure!(listed.is_empty(), "{listed:?}");
    Ok(())
}
