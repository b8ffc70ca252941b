//! Target churn: a real agent holds a fault on a real containerd container, and the
//! container's task is killed, restarted (a new task in the same container: new pids, the
//! same cgroup) or the container removed while the fault holds. Each test reads back what
//! the kernel holds afterwards: no stressor of the agent anywhere (/proc), the cgroup's
//! processes, the processes' states, the namespace's qdiscs; the agent's own view (Get,
//! List, Revert) and its journal.
//!
//! What each kind does (the contract these tests pin):
//! - CPU and memory: the stressor runs in the target's cgroup but outside its pid namespace,
//!   so it outlives the task. The fault ends by itself ("ended: its target is gone", state
//!   Completed) within a couple of status rounds of the init's exit, killing the stressor: a
//!   restarted task in the same cgroup gets no stressor, a removed container's cgroup is not
//!   kept busy. A revert afterwards is FailedPrecondition ("already ended").
//! - Stop (SIGSTOP held): the stopped processes are identified by pid and start time, so a
//!   restarted task's processes are never stopped nor continued by the old fault. Once every
//!   stopped process has exited, the fault ends by itself within a couple of status rounds
//!   ("ended: its target is gone", state Completed), instead of being listed active until its
//!   deadline holding nothing; a revert afterwards is FailedPrecondition ("already ended").
//! - Repeating kill: a `container:` target follows the container (each round resolves it
//!   again: a restarted container's processes are killed too, by design); a `pid:` target is
//!   pinned and ends as target gone when that process dies, leaving the new task alone.
//! - Pause: the fault watches the targets' inits. A frozen task dies of SIGKILL (cgroup
//!   v2; on this host's v1 too, kernel 6.18), and the pause ends by itself ("its target is
//!   gone", Completed), thawing the cgroup; a restarted task (a new cgroup) is never
//!   frozen. Should a v1 kernel hold the kill until the thaw, the pause's deadline (3 s
//!   here) thaws (Expired) and the kill lands then.
//! - IO limit: the limit lives on the container's cgroup. A killed task leaves the
//!   cgroup (and the fault, until its revert restores the limits); a restart or a removal
//!   makes the cgroup go (a restart's task gets a new one), and the fault ends by itself
//!   ("is gone", Completed); the new task's cgroup has no limit.
//! - Disk fill (a volume at /data): the file lives on the volume, which outlives the
//!   task and the container; whatever the churn, the revert removes it (through the
//!   node's mount once the target's init is gone), and a restarted task sees none.
//! - IO stress: as CPU and memory (its workers are stressors in the target's cgroup): the
//!   fault ends by itself as target gone, killing the workers and removing their files.
//! - Network (tbf here; netem, ingress and blackhole in the VM): the fault lives in the pod's
//!   network namespace, which a task's death or restart does not change; a removed pod whose
//!   namespace is deleted counts as restored (revert and deadline).
//!
//! The tests without a prefix run on the host (cgroup v1, no netem) and in the VM (cgroup
//! v2): CPU, memory, pause, IO, disk fill, IO stress and tbf. `host_*` (stop, repeating kill: signals, the same on either
//! cgroup version) run on the host only, to keep the emulated VM stage short. `vm_*` need
//! netem and are `#[ignore]`d on the host; in the VM's short run they try the deadline end
//! after a removal only (`ends_to_try`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::accounting::{Accounting, CpuLock};
use chaos_tests::agent::{TestAgent, journal_len, make_certs, state_dir};
use chaos_tests::churn::{self, Churn};
use chaos_tests::containerd::{
    ContainerSpec, TestContainer, controller_dir_of_pid, freezer_dir_of_pid,
};
use chaos_tests::loopdisk::{DISK_FILL_PREFIX, IO_STRESS_PREFIX, LoopDisk, files_named};
use chaos_tests::netns::TestNetns;
use chaos_tests::scaled;

const MIB: u64 = 1 << 20;
/// How long a new task is watched for an old fault acting on it.
const UNTOUCHED_WATCH: Duration = Duration::from_secs(2);

fn request(
    target: &str,
    duration: Duration,
    fault: api::inject_request::Fault,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(fault),
        ..Default::default()
    }
}

fn cpu_fault() -> api::inject_request::Fault {
    api::inject_request::Fault::Cpu(api::CpuFault {
        load_percent: 80,
        cores: 0,
        mode: api::CpuMode::Fill as i32,
    })
}

fn memory_fault() -> api::inject_request::Fault {
    api::inject_request::Fault::Memory(api::MemoryFault {
        size_bytes: 32 * MIB,
        ..Default::default()
    })
}

fn signal_fault(signal: &str, process: &str, interval: Duration) -> api::inject_request::Fault {
    api::inject_request::Fault::Process(api::ProcessFault {
        signal: signal.into(),
        process: process.into(),
        interval_ms: interval.as_millis() as u64,
    })
}

fn network_fault(fault: api::NetworkFault) -> api::inject_request::Fault {
    api::inject_request::Fault::Network(fault)
}

fn rate_fault() -> api::inject_request::Fault {
    network_fault(api::NetworkFault {
        rate_bytes_per_second: 250_000,
        ..Default::default()
    })
}

async fn inject(agent: &TestAgent, request: api::InjectRequest) -> Result<api::Fault> {
    agent
        .client()
        .await?
        .inject(request)
        .await?
        .into_inner()
        .fault
        .context("no fault in the inject response")
}

async fn get(agent: &TestAgent, id: &str) -> Result<api::Fault> {
    Ok(agent
        .client()
        .await?
        .get(api::GetRequest { id: id.into() })
        .await?
        .into_inner())
}

/// The Revert RPC's answer: the reverted fault, or the status it was refused with.
async fn revert(agent: &TestAgent, id: &str) -> Result<Result<api::Fault, tonic::Status>> {
    let answer = agent
        .client()
        .await?
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await;
    Ok(match answer {
        Ok(response) => Ok(response
            .into_inner()
            .reverted
            .into_iter()
            .next()
            .context("Revert answered OK with no fault")?),
        Err(status) => Err(status),
    })
}

async fn active_count(agent: &TestAgent) -> Result<usize> {
    Ok(agent
        .client()
        .await?
        .list(api::ListRequest::default())
        .await?
        .into_inner()
        .faults
        .len())
}

/// Polls Get until the fault is no longer active, for at most `within`.
async fn wait_ended(agent: &TestAgent, id: &str, within: Duration) -> Result<api::Fault> {
    let started = Instant::now();
    loop {
        let fault = get(agent, id).await?;
        if fault.state != api::FaultState::Active as i32 {
            return Ok(fault);
        }
        if started.elapsed() > within {
            bail!("fault {id} still active {within:?} after the churn: {fault:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > within {
            bail!("{what}: not so after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What the agent's node holds once a fault is over: no stressor of this agent, no
/// journal record, no active fault.
async fn assert_nothing_left(agent: &TestAgent, state: &Path) -> Result<()> {
    let stressors = churn::stressors_of(agent.pid())?;
    ensure!(
        stressors.is_empty(),
        "stressors left running: {stressors:?}"
    );
    ensure!(journal_len(state) == 0, "journal records left");
    ensure!(active_count(agent).await? == 0, "faults still listed");
    Ok(())
}

fn state_name(fault: &api::Fault) -> String {
    api::FaultState::try_from(fault.state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| fault.state.to_string())
}

fn state_of(pid: u32) -> Option<char> {
    chaos_tests::process::state(pid)
}

fn container(pod: &str, command: &[&str]) -> Result<TestContainer> {
    let mut spec = ContainerSpec::pod("chaos-test-churn", pod, "main");
    spec.cpus = Some(0.5);
    spec.memory_limit_bytes = Some(128 * MIB);
    spec.command = command.iter().map(|a| a.to_string()).collect();
    let container = TestContainer::start(spec)?;
    churn::wait_exec(&container)?;
    Ok(container)
}

#[derive(Debug, Clone, Copy)]
enum Stress {
    Cpu,
    Memory,
}

/// A CPU or memory fault under `churn`: the fault ends by itself as target gone, its
/// stressor dies, a restarted task's cgroup holds no stressor and burns no CPU, a removed
/// container's cgroup goes away.
async fn stress_under_churn(
    agent: &TestAgent,
    state: &Path,
    stress: Stress,
    churn: Churn,
) -> Result<()> {
    let pod = format!("{stress:?}-{churn:?}").to_lowercase();
    let target = container(&pod, &[])?;
    let old_init = target.pid()?;
    let accounting = Accounting::of(old_init)?;
    let cgroup_dir = target.cgroup_dir()?;
    let fault = match stress {
        Stress::Cpu => cpu_fault(),
        Stress::Memory => memory_fault(),
    };
    let fault = inject(
        agent,
        request(&target.target(), Duration::from_secs(60), fault),
    )
    .await?;
    let mut stressor = None;
    wait_until(
        scaled(Duration::from_secs(10)),
        "a stressor in the cgroup",
        || {
            stressor = accounting
                .pids()
                .unwrap_or_default()
                .into_iter()
                .find(|pid| churn::is_stressor(*pid));
            stressor.is_some()
        },
    )?;
    let stressor = stressor.context("no stressor")?;
    ensure!(journal_len(state) == 1, "the fault is not journaled");

    churn.apply(&target)?;
    let churned = Instant::now();
    let ended = wait_ended(agent, &fault.id, scaled(Duration::from_secs(5))).await?;
    let took = churned.elapsed();
    println!(
        "{stress:?} under {churn:?}: the fault ended {took:?} after the churn: {}",
        ended.message
    );
    ensure!(
        ended.state == api::FaultState::Completed as i32,
        "{ended:?}"
    );
    ensure!(
        ended.message.contains("its target is gone")
            && ended.message.contains(&format!("pid {old_init}")),
        "{}",
        ended.message
    );
    ensure!(
        !churn::is_stressor(stressor),
        "stressor {stressor} still runs"
    );
    assert_nothing_left(agent, state).await?;
    match revert(agent, &fault.id).await? {
        Err(status) => ensure!(
            status.code() == tonic::Code::FailedPrecondition
                && status.message().contains("already ended"),
            "{status:?}"
        ),
        Ok(reverted) => bail!("a revert after the end answered OK: {reverted:?}"),
    }

    match churn {
        Churn::Kill => {
            ensure!(
                accounting.pids().unwrap_or_default().is_empty(),
                "the killed task's cgroup still holds {:?}",
                accounting.pids()
            );
        }
        Churn::Restart => {
            churn::wait_exec(&target)?;
            let new_init = target.pid()?;
            ensure!(new_init != old_init, "the task was not restarted");
            let watch = Instant::now();
            while watch.elapsed() < UNTOUCHED_WATCH {
                let pids = accounting.pids()?;
                ensure!(
                    !pids.iter().any(|pid| churn::is_stressor(*pid)),
                    "a stressor in the restarted task's cgroup: {pids:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            // The new task only sleeps: a stressor left in its cgroup would show here.
            let percent = accounting.cpu_percent_over(Duration::from_secs(1))?;
            println!(
                "{stress:?} under {churn:?}: the restarted task's cgroup used {percent:.1} % of a core"
            );
            ensure!(
                percent < 10.0,
                "the restarted task's cgroup used {percent:.1} %"
            );
            ensure!(
                state_of(new_init) == Some('S'),
                "new init state {:?}",
                state_of(new_init)
            );
        }
        Churn::Remove => {
            wait_until(
                scaled(Duration::from_secs(5)),
                "the removed container's cgroup gone",
                || !cgroup_dir.exists(),
            )
            .with_context(|| format!("{} is left", cgroup_dir.display()))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_fault_ends_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let _cpu = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        stress_under_churn(&agent, state.path(), Stress::Cpu, churn)
            .await
            .with_context(|| format!("cpu under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_fault_ends_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        stress_under_churn(&agent, state.path(), Stress::Memory, churn)
            .await
            .with_context(|| format!("memory under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

/// A pause under `churn` (see the module's comment for v1 against v2): nothing is left
/// frozen, a restarted task runs, a removed container's cgroup goes.
async fn pause_under_churn(agent: &TestAgent, state: &Path, churn: Churn) -> Result<()> {
    let pod = format!("pause-{churn:?}").to_lowercase();
    let target = container(&pod, &[])?;
    let old_init = target.pid()?;
    let (freezer_dir, v1) = freezer_dir_of_pid(old_init)?;
    // On v1 a kernel may hold the kill of a frozen task until the thaw: a deadline well
    // inside the churn's own 20 s bound, in case.
    let duration = if v1 {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(60)
    };
    let fault = inject(
        agent,
        request(
            &target.target(),
            duration,
            api::inject_request::Fault::Pause(api::PauseFault {}),
        ),
    )
    .await?;
    ensure!(target.is_frozen()?, "not frozen after the inject");
    churn.apply(&target)?;
    let ended = wait_ended(agent, &fault.id, scaled(Duration::from_secs(10))).await?;
    println!(
        "pause under {churn:?} (v1: {v1}): {} {}",
        state_name(&ended),
        ended.message
    );
    let target_gone = ended.state == api::FaultState::Completed as i32
        && ended.message.contains("its target is gone");
    let expired = ended.state == api::FaultState::Expired as i32;
    ensure!(target_gone || (v1 && expired), "{ended:?}");
    assert_nothing_left(agent, state).await?;
    match churn {
        Churn::Kill => {
            if freezer_dir.exists() {
                let file = if v1 { "freezer.state" } else { "cgroup.freeze" };
                let left = std::fs::read_to_string(freezer_dir.join(file))?;
                ensure!(
                    matches!(left.trim(), "THAWED" | "0"),
                    "the killed task's cgroup is left {left:?}"
                );
            }
        }
        Churn::Restart => {
            churn::wait_exec(&target)?;
            let new_init = target.pid()?;
            ensure!(new_init != old_init, "the task was not restarted");
            let watch = Instant::now();
            while watch.elapsed() < UNTOUCHED_WATCH {
                ensure!(!target.is_frozen()?, "the restarted task is frozen");
                std::thread::sleep(Duration::from_millis(200));
            }
            ensure!(
                state_of(new_init) == Some('S'),
                "new init state {:?}",
                state_of(new_init)
            );
        }
        Churn::Remove => {
            wait_until(
                scaled(Duration::from_secs(5)),
                "the removed container's cgroup gone",
                || !freezer_dir.exists(),
            )?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pause_thaws_or_ends_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        pause_under_churn(&agent, state.path(), churn)
            .await
            .with_context(|| format!("pause under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

/// An IO limit under `churn` (see the module's comment): restored by its revert while
/// the killed task's cgroup stays, ended by itself once the cgroup is gone, and never on
/// a restarted task's new cgroup.
async fn io_under_churn(agent: &TestAgent, state: &Path, churn: Churn) -> Result<()> {
    let disk = LoopDisk::new(16)?;
    let pod = format!("io-{churn:?}").to_lowercase();
    let target = container(&pod, &[])?;
    let old_init = target.pid()?;
    let (io_dir, v1) = controller_dir_of_pid(old_init, "blkio")?;
    let limit = api::inject_request::Fault::Io(api::IoFault {
        write_bytes_per_second: MIB,
        device: disk.name().to_string(),
        ..Default::default()
    });
    let fault = inject(
        agent,
        request(&target.target(), Duration::from_secs(60), limit),
    )
    .await?;
    ensure!(
        disk.limits_in(&io_dir, v1)? == [0, MIB, 0, 0],
        "{:?}",
        disk.limits_in(&io_dir, v1)
    );
    churn.apply(&target)?;
    if churn == Churn::Kill && io_dir.exists() {
        let reverted = revert(agent, &fault.id)
            .await?
            .map_err(|status| anyhow::anyhow!("the revert was refused: {status:?}"))?;
        println!(
            "io under {churn:?}: {} {}",
            state_name(&reverted),
            reverted.message
        );
        ensure!(
            reverted.state == api::FaultState::Reverted as i32,
            "{reverted:?}"
        );
        ensure!(
            disk.limits_in(&io_dir, v1)? == [0; 4],
            "the killed task's cgroup keeps {:?}",
            disk.limits_in(&io_dir, v1)
        );
    } else {
        let ended = wait_ended(agent, &fault.id, scaled(Duration::from_secs(5))).await?;
        println!(
            "io under {churn:?}: {} {}",
            state_name(&ended),
            ended.message
        );
        ensure!(
            ended.state == api::FaultState::Completed as i32 && ended.message.contains("gone"),
            "{ended:?}"
        );
    }
    assert_nothing_left(agent, state).await?;
    if churn == Churn::Restart {
        churn::wait_exec(&target)?;
        let new_init = target.pid()?;
        ensure!(new_init != old_init, "the task was not restarted");
        ensure!(
            disk.limits_of(new_init)? == [0; 4],
            "the restarted task's cgroup has {:?}",
            disk.limits_of(new_init)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_io_limit_is_restored_or_ends_when_its_container_is_killed_restarted_or_removed()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        io_under_churn(&agent, state.path(), churn)
            .await
            .with_context(|| format!("io under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

/// A disk fill of a volume under `churn` (see the module's comment).
async fn disk_fill_under_churn(agent: &TestAgent, state: &Path, churn: Churn) -> Result<()> {
    let disk = LoopDisk::new(32)?;
    let pod = format!("fill-{churn:?}").to_lowercase();
    let mut spec = ContainerSpec::pod("chaos-test-churn", &pod, "main");
    spec.bind_mounts = vec![(disk.mount_point(), "/data".into())];
    let target = TestContainer::start(spec)?;
    churn::wait_exec(&target)?;
    let old_init = target.pid()?;
    let fills =
        || -> Result<usize> { Ok(files_named(&disk.mount_point(), DISK_FILL_PREFIX)?.len()) };
    let fault = inject(
        agent,
        request(
            &target.target(),
            Duration::from_secs(60),
            api::inject_request::Fault::DiskFill(api::DiskFillFault {
                size_bytes: 8 * MIB,
                path: "/data".into(),
                ..Default::default()
            }),
        ),
    )
    .await?;
    ensure!(fills()? == 1, "no fill file on the volume");
    churn.apply(&target)?;
    let reverted = revert(agent, &fault.id)
        .await?
        .map_err(|status| anyhow::anyhow!("the revert was refused: {status:?}"))?;
    println!(
        "disk fill under {churn:?}: {} {}",
        state_name(&reverted),
        reverted.message
    );
    ensure!(
        reverted.state == api::FaultState::Reverted as i32,
        "{reverted:?}"
    );
    ensure!(fills()? == 0, "the fill file is left on the volume");
    assert_nothing_left(agent, state).await?;
    if churn == Churn::Restart {
        churn::wait_exec(&target)?;
        ensure!(target.pid()? != old_init, "the task was not restarted");
        let listing = target.exec(&["/bin/ls", "-a", "/data"])?.check()?.stdout;
        ensure!(!listing.contains(".chaos-disk-fill-"), "{listing}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_fill_is_removed_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        disk_fill_under_churn(&agent, state.path(), churn)
            .await
            .with_context(|| format!("disk fill under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

/// An IO stress of a volume under `churn`: like a CPU or memory stressor its workers run in
/// the target's cgroup outside its pid namespace, so the fault ends by itself once the
/// target's init exits ("its target is gone"), killing them and removing their files from
/// the volume; a restarted task's cgroup holds no worker.
async fn io_stress_under_churn(agent: &TestAgent, state: &Path, churn: Churn) -> Result<()> {
    let disk = LoopDisk::new(64)?;
    let pod = format!("iostress-{churn:?}").to_lowercase();
    let mut spec = ContainerSpec::pod("chaos-test-churn", &pod, "main");
    spec.bind_mounts = vec![(disk.mount_point(), "/data".into())];
    let target = TestContainer::start(spec)?;
    churn::wait_exec(&target)?;
    let old_init = target.pid()?;
    let files = || files_named(&disk.mount_point(), IO_STRESS_PREFIX);
    let fault = inject(
        agent,
        request(
            &target.target(),
            Duration::from_secs(60),
            api::inject_request::Fault::IoStress(api::IoStressFault {
                workers: 1,
                bytes_per_second: 4 * MIB,
                file_bytes: 8 * MIB,
                path: "/data".into(),
            }),
        ),
    )
    .await?;
    wait_until(scaled(Duration::from_secs(10)), "a worker's file", || {
        files().is_ok_and(|f| !f.is_empty())
    })?;
    churn.apply(&target)?;
    let ended = wait_ended(agent, &fault.id, scaled(Duration::from_secs(5))).await?;
    println!(
        "io stress under {churn:?}: {} {}",
        state_name(&ended),
        ended.message
    );
    ensure!(
        ended.state == api::FaultState::Completed as i32
            && ended.message.contains("its target is gone"),
        "{ended:?}"
    );
    ensure!(files()?.is_empty(), "worker files left: {:?}", files()?);
    assert_nothing_left(agent, state).await?;
    if churn == Churn::Restart {
        churn::wait_exec(&target)?;
        ensure!(target.pid()? != old_init, "the task was not restarted");
        let procs = std::fs::read_to_string(target.cgroup_dir()?.join("cgroup.procs"))?;
        ensure!(
            !procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .any(churn::is_stressor),
            "a worker in the restarted task's cgroup: {procs}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_io_stress_ends_when_its_container_is_killed_restarted_or_removed() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        io_stress_under_churn(&agent, state.path(), churn)
            .await
            .with_context(|| format!("io stress under {churn:?}\n{}", agent.log()))?;
    }
    Ok(())
}

/// A held SIGSTOP under churn: the fault ends by itself once its stopped processes have
/// exited, a restarted task is never stopped, and nothing is left; a stop whose processes
/// live on ends at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_stop_fault_never_stops_the_restarted_task_and_ends_after_any_churn() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    for churn in churn::ALL {
        let pod = format!("stop-{churn:?}").to_lowercase();
        let target = container(&pod, &[])?;
        let old_init = target.pid()?;
        let fault = inject(
            &agent,
            request(
                &target.target(),
                Duration::from_secs(60),
                signal_fault("STOP", "", Duration::ZERO),
            ),
        )
        .await?;
        wait_until(scaled(Duration::from_secs(5)), "the init stopped", || {
            state_of(old_init) == Some('T')
        })?;
        churn.apply(&target)?;
        let churned = Instant::now();
        let ended = wait_ended(&agent, &fault.id, scaled(Duration::from_secs(5))).await?;
        println!(
            "stop under {churn:?}: the fault ended {:?} after the churn as {:?}: {}",
            churned.elapsed(),
            state_name(&ended),
            ended.message
        );
        ensure!(
            ended.state == api::FaultState::Completed as i32
                && ended
                    .message
                    .contains("every process the stop held has exited"),
            "{churn:?}: {ended:?}"
        );
        if churn == Churn::Restart {
            churn::wait_exec(&target)?;
            let new_init = target.pid()?;
            ensure!(new_init != old_init, "the task was not restarted");
            let watch = Instant::now();
            while watch.elapsed() < UNTOUCHED_WATCH {
                ensure!(
                    state_of(new_init) == Some('S'),
                    "{churn:?}: the restarted init is {:?}",
                    state_of(new_init)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        match revert(&agent, &fault.id).await? {
            Err(status) => ensure!(
                status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains("already ended"),
                "{churn:?}: {status:?}"
            ),
            Ok(reverted) => bail!("{churn:?}: a revert after the end answered OK: {reverted:?}"),
        }
        assert_nothing_left(&agent, state.path()).await?;
    }

    // The deadline ends a stop whose processes live on, and continues them.
    let target = container("stop-deadline", &[])?;
    let init = target.pid()?;
    let fault = inject(
        &agent,
        request(
            &target.target(),
            Duration::from_secs(3),
            signal_fault("STOP", "", Duration::ZERO),
        ),
    )
    .await?;
    let ended = wait_ended(&agent, &fault.id, scaled(Duration::from_secs(8))).await?;
    ensure!(ended.state == api::FaultState::Expired as i32, "{ended:?}");
    wait_until(scaled(Duration::from_secs(5)), "the init continued", || {
        state_of(init) == Some('S')
    })?;
    assert_nothing_left(&agent, state.path()).await?;
    Ok(())
}

fn signalled_pids(fault: &api::Fault) -> Vec<(u32, bool)> {
    match &fault.status {
        Some(api::fault::Status::Process(p)) => {
            p.signalled.iter().map(|s| (s.pid, s.delivered)).collect()
        }
        _ => Vec::new(),
    }
}

/// A repeating kill under churn. A `container:` target follows the container: a
/// restarted task's `sleep` is killed too (each round resolves the target again), after a
/// kill or a removal the rounds find nothing, and the revert answers Reverted. A `pid:`
/// target is pinned: it ends as target gone with its process, and the new task's processes
/// are left alone.
#[tokio::test(flavor = "multi_thread")]
async fn host_a_repeating_kill_follows_a_container_target_and_ends_with_a_pid_target() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let looping = ["/bin/sh", "-c", "while :; do sleep 3600; done"];
    for churn in churn::ALL {
        let pod = format!("repeat-{churn:?}").to_lowercase();
        let target = container(&pod, &looping)?;
        let fault = inject(
            &agent,
            request(
                &target.target(),
                Duration::from_secs(60),
                signal_fault("KILL", "sleep", Duration::from_millis(300)),
            ),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        churn.apply(&target)?;
        let churned_at = Instant::now();
        if churn == Churn::Restart {
            churn::wait_exec(&target)?;
            let new_init = target.pid()?;
            // The new task's shell starts a sleep the fault kills, round after round.
            let mut killed_new = false;
            while churned_at.elapsed() < scaled(Duration::from_secs(5)) && !killed_new {
                let now = get(&agent, &fault.id).await?;
                killed_new = signalled_pids(&now)
                    .iter()
                    .any(|(pid, delivered)| *delivered && *pid > new_init);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ensure!(
                killed_new,
                "the restarted container's sleep was never killed"
            );
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = get(&agent, &fault.id).await?;
            ensure!(now.state == api::FaultState::Active as i32, "{now:?}");
        }
        let reverted = revert(&agent, &fault.id)
            .await?
            .map_err(|status| anyhow::anyhow!("{churn:?}: revert refused: {status:?}"))?;
        println!(
            "repeating kill under {churn:?}: revert says {:?} {:?}",
            state_name(&reverted),
            reverted.message
        );
        ensure!(
            reverted.state == api::FaultState::Reverted as i32,
            "{reverted:?}"
        );
        assert_nothing_left(&agent, state.path()).await?;
    }

    // A pid: target (the container's sleep) is pinned: the restart ends the fault.
    let target = container("repeat-pid", &looping)?;
    let init = target.pid()?;
    let mut sleeper = None;
    wait_until(Duration::from_secs(5), "the container's sleep", || {
        sleeper = chaos_tests::process::first_child(init).ok();
        sleeper.is_some()
    })?;
    let sleeper = sleeper.context("no sleep")?;
    let fault = inject(
        &agent,
        request(
            &format!("pid:{sleeper}"),
            Duration::from_secs(60),
            signal_fault("TERM", "", Duration::from_millis(300)),
        ),
    )
    .await?;
    Churn::Restart.apply(&target)?;
    churn::wait_exec(&target)?;
    let ended = wait_ended(&agent, &fault.id, scaled(Duration::from_secs(5))).await?;
    ensure!(
        ended.state == api::FaultState::Completed as i32,
        "{ended:?}"
    );
    ensure!(
        ended.message.contains("its target is gone"),
        "{}",
        ended.message
    );
    let new_init = target.pid()?;
    let mut new_sleep = None;
    wait_until(Duration::from_secs(5), "the new task's sleep", || {
        new_sleep = chaos_tests::process::first_child(new_init).ok();
        new_sleep.is_some()
    })?;
    let new_sleep = new_sleep.context("no new sleep")?;
    tokio::time::sleep(UNTOUCHED_WATCH).await;
    ensure!(
        chaos_tests::process::first_child(new_init).ok() == Some(new_sleep),
        "the new task's sleep {new_sleep} was killed"
    );
    assert_nothing_left(&agent, state.path()).await?;
    Ok(())
}

/// The qdiscs of the namespace's eth0 as `tc` prints them.
fn qdiscs(netns: &TestNetns) -> Result<String> {
    Ok(netns
        .exec(&["tc", "qdisc", "show", "dev", "eth0"])?
        .check()?
        .stdout)
}

/// What a network namespace's interfaces hold besides eth0's qdisc: no ifb left.
fn links(netns: &TestNetns) -> Result<String> {
    Ok(netns.exec(&["ip", "-o", "link", "show"])?.check()?.stdout)
}

/// A network fault on a pod container in a namespace of its own (as a CNI plugin makes),
/// under each churn: the fault holds in the pod's namespace while the task dies or
/// restarts, and the revert restores it exactly; when the pod is removed and its
/// namespace deleted, the revert (or the deadline) counts it as restored.
async fn network_under_churn(
    agent: &TestAgent,
    state: &Path,
    fault: fn() -> api::inject_request::Fault,
    installed: &str,
) -> Result<()> {
    for churn in churn::ALL {
        for by_deadline in ends_to_try(churn) {
            let netns = TestNetns::create()?;
            let before = (qdiscs(&netns)?, links(&netns)?);
            let pod = format!("net-{churn:?}-{by_deadline}").to_lowercase();
            let mut spec = ContainerSpec::pod("chaos-test-churn", &pod, "main");
            spec.netns = Some(netns.path());
            let target = TestContainer::start(spec)?;
            churn::wait_exec(&target)?;
            // Scaled: under the VM's emulation the churn alone (ctr) takes seconds, and the
            // fault must still hold when it is done.
            let duration = if by_deadline {
                scaled(Duration::from_secs(4))
            } else {
                Duration::from_secs(60)
            };
            let injected = inject(agent, request(&target.target(), duration, fault())).await?;
            ensure!(qdiscs(&netns)?.contains(installed), "{}", qdiscs(&netns)?);
            churn.apply(&target)?;
            let netns = if churn == Churn::Remove {
                // The pod is gone: its sandbox's namespace goes with it.
                drop(netns);
                None
            } else {
                ensure!(
                    qdiscs(&netns)?.contains(installed),
                    "{churn:?}: the pod's namespace lost the fault"
                );
                Some(netns)
            };
            let ended = if by_deadline {
                wait_ended(
                    agent,
                    &injected.id,
                    duration + scaled(Duration::from_secs(6)),
                )
                .await?
            } else {
                revert(agent, &injected.id)
                    .await?
                    .map_err(|status| anyhow::anyhow!("{churn:?}: revert refused: {status:?}"))?
            };
            println!(
                "network ({installed}) under {churn:?}, ended by {}: {:?} {:?}",
                if by_deadline { "deadline" } else { "revert" },
                state_name(&ended),
                ended.message
            );
            let want = if by_deadline {
                api::FaultState::Expired
            } else {
                api::FaultState::Reverted
            };
            ensure!(ended.state == want as i32, "{churn:?}: {ended:?}");
            if let Some(netns) = &netns {
                ensure!(
                    (qdiscs(netns)?, links(netns)?) == before,
                    "{churn:?}: not restored: {} {}",
                    qdiscs(netns)?,
                    links(netns)?
                );
            }
            assert_nothing_left(agent, state).await?;
        }
    }
    Ok(())
}

/// Which ends to try after `churn`: the revert always, the deadline too, except in the VM's
/// short run, where it waits a scaled 10 s per case (the whole file took 20 minutes there);
/// there the deadline is tried after a removal only, whose namespace is gone.
fn ends_to_try(churn: Churn) -> Vec<bool> {
    let emulated = scaled(Duration::from_secs(1)) > Duration::from_secs(1);
    if emulated && !chaos_tests::long_run() && churn != Churn::Remove {
        vec![false]
    } else {
        vec![false, true]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tbf_rate_limit_under_churn_is_restored_or_counted_gone() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    network_under_churn(&agent, state.path(), rate_fault, "tbf ca05: root").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_a_netem_delay_under_churn_is_restored_or_counted_gone() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let delay = || {
        network_fault(api::NetworkFault {
            delay_us: 20_000,
            ..Default::default()
        })
    };
    network_under_churn(&agent, state.path(), delay, "netem").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_an_ingress_delay_under_churn_is_restored_or_counted_gone() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let ingress = || {
        network_fault(api::NetworkFault {
            delay_us: 20_000,
            direction: api::Direction::Ingress as i32,
            ..Default::default()
        })
    };
    network_under_churn(&agent, state.path(), ingress, "ingress").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: run in the VM"]
async fn vm_a_blackhole_under_churn_is_restored_or_counted_gone() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let blackhole = || api::inject_request::Fault::Blackhole(api::BlackholeFault::default());
    network_under_churn(&agent, state.path(), blackhole, "netem").await
}
