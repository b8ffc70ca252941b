//! CPU and memory faults through a real agent against real containerd containers with
//! limits. Every level is measured from the container's own cgroup accounting (cpuacct /
//! cpu.stat, memory usage), not from what the agent reports, and the agent's status is
//! checked against it.
//!
//! The CPU measurements share the machine with whatever else runs: the tests that measure CPU
//! hold an exclusive file lock so that they do not load the two cores against each other.

use chaos_tests::accounting::{Accounting, CpuLock};
use chaos_tests::agent::state_dir;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chaos_proto::api;
use chaos_tests::agent::{TestAgent, make_certs};
use chaos_tests::containerd::{ContainerSpec, TestContainer};

const MIB: u64 = 1 << 20;

fn cpu_request(
    target: &str,
    load: u32,
    mode: api::CpuMode,
    duration: Duration,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Cpu(api::CpuFault {
            load_percent: load,
            cores: 0,
            mode: mode as i32,
        })),
        ..Default::default()
    }
}

fn memory_request(target: &str, size: u64, percent: u32, duration: Duration) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::Memory(api::MemoryFault {
            size_bytes: size,
            percent,
            ramp_ms: 0,
            allow_node_memory: false,
        })),
        ..Default::default()
    }
}

async fn inject(agent: &TestAgent, request: api::InjectRequest) -> Result<api::Fault> {
    let mut client = agent.client().await?;
    client
        .inject(request)
        .await?
        .into_inner()
        .fault
        .context("no fault in the answer")
}

async fn get(agent: &TestAgent, id: &str) -> Result<api::Fault> {
    let mut client = agent.client().await?;
    Ok(client
        .get(api::GetRequest { id: id.into() })
        .await?
        .into_inner())
}

fn cpu_status(fault: &api::Fault) -> api::CpuStatus {
    match &fault.status {
        Some(api::fault::Status::Cpu(c)) => *c,
        other => panic!("no cpu status: {other:?}"),
    }
}

fn memory_status(fault: &api::Fault) -> api::MemoryStatus {
    match &fault.status {
        Some(api::fault::Status::Memory(m)) => *m,
        other => panic!("no memory status: {other:?}"),
    }
}

/// Stressor processes the agent started (its children running the `stress` subcommand).
fn stressors_of(agent_pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_stressor = args.iter().any(|a| *a == b"stress");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            is_stressor && ppid == Some(agent_pid)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes (it holds no CPU or memory).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn one_cpu_container(memory: Option<u64>) -> Result<TestContainer> {
    TestContainer::start(ContainerSpec {
        cpus: Some(1.0),
        memory_limit_bytes: memory,
        ..ContainerSpec::default()
    })
}

fn assert_near(what: &str, measured: f64, want: f64, tolerance: f64) {
    assert!(
        (measured - want).abs() <= tolerance,
        "{what}: measured {measured:.2}, want {want} ± {tolerance}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_fill_holds_an_idle_one_cpu_container_at_half_and_stops_at_the_deadline() -> Result<()>
{
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(None)?;
    let accounting = Accounting::of(container.pid()?)?;

    let fault = inject(
        &agent,
        cpu_request(
            &container.target(),
            50,
            api::CpuMode::Fill,
            Duration::from_secs(14),
        ),
    )
    .await?;
    let injected = Instant::now();
    assert_eq!(fault.state, api::FaultState::Active as i32, "{fault:?}");
    assert_eq!(cpu_status(&fault).limit_cores, 1.0);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let measured =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(8)))?;
    let status = cpu_status(&get(&agent, &fault.id).await?);
    println!("fill 50 %: cgroup measured {measured:.2} %, agent status {status:?}");
    assert_near("container CPU", measured, 50.0, 3.0);
    assert_near(
        "agent's achieved_percent",
        status.achieved_percent,
        measured,
        5.0,
    );
    assert_eq!(status.stressors_running, 1);

    // The fault expires 14 s after injection; one second later the extra use is gone.
    let deadline = injected + Duration::from_secs(14);
    tokio::time::sleep_until((deadline + Duration::from_millis(1000)).into()).await;
    let after =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_millis(500)))?;
    println!("after the deadline: {after:.2} %");
    assert!(
        after < 3.0,
        "CPU still in use after the deadline: {after:.2} %"
    );
    let ended = get(&agent, &fault.id).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    assert!(stressors_of(agent.pid()).iter().all(|p| !alive(*p)));
    Ok(())
}

/// The background workload is a second fault of OUR stressor in `add` mode at 30 %, in the
/// container's own cgroup: a busybox loop cannot hold 30 %.
#[tokio::test(flavor = "multi_thread")]
async fn cpu_fill_tops_a_busy_container_up_to_seventy_percent() -> Result<()> {
    let _lock = CpuLock::take()?;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(None)?;
    let accounting = Accounting::of(container.pid()?)?;

    let workload = inject(
        &agent,
        cpu_request(
            &container.target(),
            30,
            api::CpuMode::Add,
            Duration::from_secs(30),
        ),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let background =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(3)))?;
    println!("background (add 30 %): {background:.2} %");
    assert_near("background workload", background, 30.0, 3.0);

    let fill = inject(
        &agent,
        cpu_request(
            &container.target(),
            70,
            api::CpuMode::Fill,
            Duration::from_secs(14),
        ),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(8)))?;
    let status = cpu_status(&get(&agent, &fill.id).await?);
    println!("fill 70 % over 30 %: total {total:.2} %, status {status:?}");
    assert_near("container CPU", total, 70.0, 3.0);
    // The fill stressor supplies only the difference.
    assert_near(
        "fill stressor's own use",
        status.stressor_percent,
        40.0,
        5.0,
    );

    let mut client = agent.client().await?;
    client
        .revert(api::RevertRequest {
            id: fill.id.clone(),
            all: false,
        })
        .await?;
    client
        .revert(api::RevertRequest {
            id: workload.id.clone(),
            all: false,
        })
        .await?;
    let after =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_millis(500)))?;
    assert!(after < 3.0, "CPU still in use after revert: {after:.2} %");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_raises_usage_by_256_mib_holds_it_idle_and_releases_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(1024 * MIB))?;
    let accounting = Accounting::of(container.pid()?)?;
    let before = accounting.memory_bytes()?;

    let fault = inject(
        &agent,
        memory_request(&container.target(), 256 * MIB, 0, Duration::from_secs(30)),
    )
    .await?;
    let injected = Instant::now();
    let want = (before + 256 * MIB) as f64;
    let mut usage = accounting.memory_bytes()?;
    while (usage as f64) < want * 0.98
        && injected.elapsed() < chaos_tests::scaled(Duration::from_secs(2))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = accounting.memory_bytes()?;
    }
    let rise = usage.saturating_sub(before);
    println!(
        "memory 256 MiB: rise {} KiB after {:?}",
        rise >> 10,
        injected.elapsed()
    );
    assert_near(
        "usage rise in MiB",
        rise as f64 / MIB as f64,
        256.0,
        256.0 * 0.02,
    );

    // Holding costs (almost) nothing: the container is otherwise idle. Measured once the
    // stressor holds all of it (its resident memory, as the agent reports it): the cgroup's
    // usage passes 98 % while the last pages are still being touched, and under the VM's
    // emulation that tail alone came to 2 % of a core over the window.
    let filled_by = Instant::now() + chaos_tests::scaled(Duration::from_secs(2));
    while memory_status(&get(&agent, &fault.id).await?).held_bytes < 255 * MIB {
        assert!(
            Instant::now() < filled_by,
            "the stressor never reported 255 MiB resident: {:?}",
            memory_status(&get(&agent, &fault.id).await?)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holding =
        tokio::task::block_in_place(|| accounting.cpu_percent_over(Duration::from_secs(3)))?;
    println!("CPU while holding: {holding:.3} % of a core");
    assert!(holding <= 2.0, "holding costs {holding:.2} % of a core");
    let status = memory_status(&get(&agent, &fault.id).await?);
    assert!(status.held_bytes >= 255 * MIB, "{status:?}");
    assert_eq!(status.requested_bytes, 256 * MIB);
    assert_eq!(status.limit_bytes, 1024 * MIB);
    assert_eq!(status.oom_kills, 0);

    let mut client = agent.client().await?;
    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    let reverted = Instant::now();
    let mut usage = accounting.memory_bytes()?;
    while usage > before + 256 * MIB / 50 && reverted.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = accounting.memory_bytes()?;
    }
    println!(
        "after revert: {} KiB above the start, {:?}",
        usage.saturating_sub(before) >> 10,
        reverted.elapsed()
    );
    assert!(
        usage <= before + 256 * MIB / 50,
        "usage {usage} still above {before} 1 s after revert"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_percent_is_of_the_containers_limit_and_released_at_the_deadline() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(512 * MIB))?;
    let accounting = Accounting::of(container.pid()?)?;
    let before = accounting.memory_bytes()?;

    let fault = inject(
        &agent,
        memory_request(&container.target(), 0, 50, Duration::from_secs(4)),
    )
    .await?;
    let injected = Instant::now();
    let status = memory_status(&fault);
    assert_eq!(status.requested_bytes, 256 * MIB, "50 % of 512 MiB");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rise = accounting.memory_bytes()?.saturating_sub(before);
    assert_near(
        "usage rise in MiB",
        rise as f64 / MIB as f64,
        256.0,
        256.0 * 0.02,
    );

    tokio::time::sleep_until((injected + Duration::from_secs(5)).into()).await;
    let usage = accounting.memory_bytes()?;
    assert!(
        usage <= before + 256 * MIB / 50,
        "usage {usage} still above {before} 1 s after the deadline"
    );
    let ended = get(&agent, &fault.id).await?;
    assert_eq!(ended.state, api::FaultState::Expired as i32, "{ended:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_beyond_the_limit_is_reported_as_an_oom_kill() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(64 * MIB))?;
    let fault = inject(
        &agent,
        memory_request(&container.target(), 128 * MIB, 0, Duration::from_secs(20)),
    )
    .await?;
    let started = Instant::now();
    let mut status = memory_status(&fault);
    // memory.events counts the kill before the agent has reaped the killed stressor:
    // wait for both (bounded).
    while (status.oom_kills == 0 || status.stressors_running > 0)
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = memory_status(&get(&agent, &fault.id).await?);
    }
    println!("over the limit: {status:?}");
    assert!(status.oom_kills >= 1, "{status:?}");
    assert_eq!(
        status.stressors_running, 0,
        "the OOM killer took the stressor"
    );
    let metrics = agent.scrape()?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("chaos_agent_oom_kills_total{kind=\"memory\"}"))
        .context("no OOM metric")?;
    let count: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
    assert!(count >= 1.0, "{line}");
    // The container's own workload survived: only the stressor was over the limit.
    assert_eq!(container.task_status()?, "RUNNING");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_agent_leaves_no_stressor_and_the_restart_lists_nothing_active() -> Result<()>
{
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let container = one_cpu_container(Some(512 * MIB))?;
    inject(
        &agent,
        cpu_request(
            &container.target(),
            20,
            api::CpuMode::Add,
            Duration::from_secs(60),
        ),
    )
    .await?;
    inject(
        &agent,
        memory_request(&container.target(), 32 * MIB, 0, Duration::from_secs(60)),
    )
    .await?;
    let stressors = stressors_of(agent.pid());
    assert_eq!(stressors.len(), 2, "{stressors:?}");
    // The stressors are in the container's own cgroup.
    let container_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", container.pid()?))?;
    for pid in &stressors {
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        for line in container_cgroup
            .lines()
            .filter(|l| l.contains(":memory:") || l.contains(":cpu"))
        {
            assert!(
                theirs.lines().any(|t| t == line),
                "stressor {pid} not in {line}: {theirs}"
            );
        }
    }

    agent.kill_hard()?;
    let killed = Instant::now();
    while stressors.iter().any(|p| alive(*p)) && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survivors: Vec<u32> = stressors.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        survivors.is_empty(),
        "stressors outlived the agent: {survivors:?}"
    );
    println!(
        "stressors gone {:?} after SIGKILL of the agent",
        killed.elapsed()
    );

    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = restarted.client().await?;
    let active = client
        .list(api::ListRequest {
            include_ended: false,
        })
        .await?
        .into_inner()
        .faults;
    assert!(active.is_empty(), "{active:?}");
    let ended = client
        .list(api::ListRequest {
            include_ended: true,
        })
        .await?
        .into_inner()
        .faults;
    assert_eq!(
        ended
            .iter()
            .filter(|f| f.state == api::FaultState::Recovered as i32)
            .count(),
        2,
        "{ended:?}"
    );
    Ok(())
}
