//! The disk fill kind through a real agent on real containerd containers: a volume of the
//! test's own (a loop device with ext4, bind-mounted at /data) filled to a level of use,
//! read back with `df` inside the container and the file's blocks; the file removed at
//! every end, also after a SIGKILLed agent whose container was removed meanwhile (the
//! volume outlives it: the replay finds the file through the node's mount). The node's
//! own filesystem (the container's writable root, an overlay on it) keeps the agent's
//! free floor, and a symlink planted in the container never leads the fill out of it.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api;
use chaos_tests::agent::{
    TestAgent, ensure_recovered, inject_fault, inject_refused, journal_len, make_certs, state_dir,
    wait_fault_state,
};
use chaos_tests::containerd::{ContainerSpec, TestContainer, ctr};
use chaos_tests::loopdisk::{DISK_FILL_PREFIX, LoopDisk, container_with_volume, files_named};
use chaos_tests::scaled;

const MIB: u64 = 1 << 20;

/// A container with the test's volume at /data.
struct Rig {
    container: TestContainer,
    /// Dropped after the container, which holds its mount.
    disk: LoopDisk,
}

impl Rig {
    fn start(pod: &str) -> Result<Rig> {
        let (container, disk) = container_with_volume(pod, 64)?;
        Ok(Rig { container, disk })
    }

    /// `df`'s Use% of /data, inside the container.
    fn used_percent(&self) -> Result<u32> {
        let output = self.container.exec(&["/bin/df", "-P", "/data"])?.check()?;
        let line = output.stdout.lines().last().context("no df line")?;
        let percent = line
            .split_whitespace()
            .find_map(|field| field.strip_suffix('%'))
            .with_context(|| format!("no Use% in {line:?}"))?;
        Ok(percent.parse()?)
    }

    /// The fill files on the volume, as the node sees it.
    fn fill_files(&self) -> Result<Vec<String>> {
        files_named(&self.disk.mount_point(), DISK_FILL_PREFIX)
    }
}

fn fill(target: &str, duration: Duration, fault: api::DiskFillFault) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: duration.as_millis() as u64,
        fault: Some(api::inject_request::Fault::DiskFill(fault)),
        ..Default::default()
    }
}

fn data_to(percent: u32) -> api::DiskFillFault {
    api::DiskFillFault {
        percent,
        path: "/data".into(),
        ..Default::default()
    }
}

fn fill_status(fault: &api::Fault) -> Result<api::DiskFillStatus> {
    match &fault.status {
        Some(api::fault::Status::DiskFill(status)) => Ok(status.clone()),
        other => bail!("no disk fill status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_fill_brings_a_volume_to_the_percent_asked_and_its_revert_frees_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("fill")?;
    let before = rig.used_percent()?;
    ensure!(before < 20, "the fresh volume is {before} % used");

    let mut client = agent.client().await?;
    let fault = inject_fault(
        &mut client,
        fill(
            &rig.container.target(),
            Duration::from_secs(120),
            data_to(90),
        ),
    )
    .await?;
    ensure!(fault.state == api::FaultState::Active as i32, "{fault:?}");
    let status = fill_status(&fault)?;
    ensure!(status.files.len() == 1, "{status:?}");
    let file = &status.files[0];
    // Not a filesystem the node uses: no floor; filled to 90 % of used + available.
    ensure!(!file.node_filesystem, "{file:?}");
    ensure!(file.path.starts_with("/data/.chaos-disk-fill-"), "{file:?}");
    ensure!(
        file.bytes > 40 * MIB && file.available_bytes < file.filesystem_bytes / 8,
        "{file:?}"
    );
    let during = rig.used_percent()?;
    ensure!(
        (89..=91).contains(&during),
        "df inside shows {during} % used"
    );
    ensure!(rig.fill_files()?.len() == 1, "{:?}", rig.fill_files());
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
    ensure!(rig.fill_files()?.is_empty(), "{:?}", rig.fill_files());
    let after = rig.used_percent()?;
    ensure!(
        after == before,
        "df shows {after} % used after, {before} % before"
    );
    ensure!(journal_len(state.path()) == 0);
    println!("disk fill: /data {before} % used, {during} % during, {after} % after");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_fill_is_removed_at_its_deadline_at_sigterm_and_after_a_sigkill_even_with_the_container_gone()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let rig = Rig::start("fill-ends")?;
    let target = rig.container.target();
    let small = api::DiskFillFault {
        size_bytes: 8 * MIB,
        path: "/data".into(),
        ..Default::default()
    };

    // The deadline.
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    let deadline = scaled(Duration::from_secs(3));
    let fault = inject_fault(&mut client, fill(&target, deadline, small.clone())).await?;
    ensure!(
        rig.fill_files()?.len() == 1,
        "deadline: {:?}",
        rig.fill_files()
    );
    wait_fault_state(
        &agent,
        &fault.id,
        api::FaultState::Expired,
        deadline + scaled(Duration::from_secs(10)),
    )
    .await?;
    ensure!(
        rig.fill_files()?.is_empty(),
        "after the deadline: {:?}",
        rig.fill_files()
    );

    // SIGTERM.
    let long = Duration::from_secs(120);
    inject_fault(&mut client, fill(&target, long, small.clone())).await?;
    ensure!(
        rig.fill_files()?.len() == 1,
        "sigterm: {:?}",
        rig.fill_files()
    );
    let status = agent.terminate()?;
    ensure!(status.success(), "the agent exited with {status}");
    ensure!(
        rig.fill_files()?.is_empty(),
        "after sigterm: {:?}",
        rig.fill_files()
    );
    ensure!(journal_len(state.path()) == 0);

    // SIGKILL, then the container is removed while no agent runs: the volume keeps the
    // file, and the restarted agent finds it through the node's mount of the volume.
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let mut client = agent.client().await?;
    inject_fault(&mut client, fill(&target, long, small)).await?;
    agent.kill_hard()?;
    ensure!(journal_len(state.path()) == 1);
    let Rig { container, disk } = rig;
    let (namespace, id) = (container.runtime_namespace.clone(), container.id.clone());
    drop(container);
    ensure!(
        ctr(&namespace, &["container", "info", &id])
            .map(|output| !output.success())
            .unwrap_or(true),
        "the container is still there"
    );
    ensure!(
        files_named(&disk.mount_point(), DISK_FILL_PREFIX)?.len() == 1,
        "the volume lost the file with its container"
    );
    let restarted = TestAgent::start_tls(tls.path(), state.path())?;
    ensure_recovered(&restarted, api::FaultKind::DiskFill).await?;
    ensure!(
        files_named(&disk.mount_point(), DISK_FILL_PREFIX)?.is_empty(),
        "the replay left {:?}",
        files_named(&disk.mount_point(), DISK_FILL_PREFIX)
    );
    ensure!(journal_len(state.path()) == 0);
    Ok(())
}

/// Refused, and nothing written: a cgroup target, a missing directory, more than the
/// volume holds, a tmpfs (memory), the node's own filesystem (the writable root) past the agent's floor, a
/// symlink out of the container. A small fill of the writable root is allowed and shows
/// the node's filesystem.
#[tokio::test(flavor = "multi_thread")]
async fn disk_fills_past_the_floor_of_a_node_filesystem_or_out_of_the_container_are_refused()
-> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let rig = Rig::start("fill-refused")?;
    let target = rig.container.target();
    let minute = Duration::from_secs(60);
    let mut client = agent.client().await?;
    let agent_client = client.clone();
    let refused = |request: api::InjectRequest| inject_refused(&agent_client, request);

    let cgroup = format!("cgroup:{}", rig.container.cgroup_path()?);
    let status = refused(fill(&cgroup, minute, data_to(50))).await?;
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");

    let missing = api::DiskFillFault {
        path: "/no/such/dir".into(),
        ..data_to(50)
    };
    let status = refused(fill(&target, minute, missing)).await?;
    ensure!(status.code() == tonic::Code::NotFound, "{status:?}");

    let too_much = api::DiskFillFault {
        size_bytes: 1 << 30,
        path: "/data".into(),
        ..Default::default()
    };
    let status = refused(fill(&target, minute, too_much)).await?;
    ensure!(
        status.code() == tonic::Code::FailedPrecondition,
        "{status:?}"
    );
    ensure!(status.message().contains("all there is"), "{status:?}");

    // /dev/shm, a tmpfs: a fill would take the node's memory.
    let shm = api::DiskFillFault {
        size_bytes: 4 * MIB,
        path: "/dev/shm".into(),
        ..Default::default()
    };
    let status = refused(fill(&target, minute, shm)).await?;
    ensure!(
        status.code() == tonic::Code::FailedPrecondition,
        "{status:?}"
    );
    ensure!(status.message().contains("memory"), "{status:?}");

    // The writable root is an overlay on the node's filesystem.
    let root_to_99 = api::DiskFillFault {
        percent: 99,
        ..Default::default()
    };
    let status = refused(fill(&target, minute, root_to_99)).await?;
    ensure!(
        status.code() == tonic::Code::FailedPrecondition,
        "{status:?}"
    );
    ensure!(
        status.message().contains("--disk-fill-min-free-percent"),
        "{status:?}"
    );

    // A symlink in the container to a directory that exists on the node (not in the
    // container): resolved inside the container's root, it leads nowhere.
    let node_dir = tempfile::Builder::new()
        .prefix("chaos-test-node-dir-")
        .tempdir()?;
    let link_target = node_dir.path().display().to_string();
    rig.container
        .exec(&["/bin/ln", "-s", &link_target, "/escape"])?
        .check()?;
    let escape = api::DiskFillFault {
        size_bytes: 4 * MIB,
        path: "/escape".into(),
        ..Default::default()
    };
    let status = refused(fill(&target, minute, escape)).await?;
    ensure!(status.code() == tonic::Code::NotFound, "{status:?}");
    ensure!(
        files_named(node_dir.path(), DISK_FILL_PREFIX)?.is_empty(),
        "the fill followed the symlink onto the node"
    );
    ensure!(rig.fill_files()?.is_empty(), "{:?}", rig.fill_files());
    ensure!(journal_len(state.path()) == 0);

    // A small fill of the writable root: allowed, on the node's filesystem.
    let root_small = api::DiskFillFault {
        size_bytes: 2 * MIB,
        ..Default::default()
    };
    let fault = inject_fault(&mut client, fill(&target, minute, root_small)).await?;
    let status = fill_status(&fault)?;
    ensure!(
        status.files.len() == 1
            && status.files[0].node_filesystem
            && status.files[0].bytes >= 2 * MIB,
        "{status:?}"
    );
    let inside = rig.container.exec(&["/bin/ls", "-a", "/"])?.check()?.stdout;
    ensure!(inside.contains(".chaos-disk-fill-"), "{inside}");
    client
        .revert(api::RevertRequest {
            id: fault.id.clone(),
            all: false,
        })
        .await?;
    let inside = rig.container.exec(&["/bin/ls", "-a", "/"])?.check()?.stdout;
    ensure!(!inside.contains(".chaos-disk-fill-"), "{inside}");
    Ok(())
}

/// Seconds `script` takes inside the container, by /proc/uptime (10 ms steps) read before
/// and after in the same shell.
fn timed_inside(container: &TestContainer, script: &str) -> Result<f64> {
    let wrapped = format!(
        "read start _ < /proc/uptime; {script} || exit 1; read end _ < /proc/uptime; echo $start $end"
    );
    let output = container.exec(&["/bin/sh", "-c", &wrapped])?.check()?;
    let times: Vec<f64> = output
        .stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("no times in {:?}", output.stdout))?;
    let [start, end] = times[..] else {
        bail!("no times in {:?}", output.stdout);
    };
    Ok(end - start)
}

/// Time to fill 1 GiB of a volume: ours (the inject answers once the file is allocated)
/// beside the peers' way, `dd` of zeros from inside the container (buffered, as Litmus'
/// disk-fill runs it, and with `conv=fsync`, written to the disk), and busybox's
/// `fallocate`. Prints `BENCH ...` lines; run by bench/disk-fill.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run by bench/disk-fill"]
async fn bench_disk_fill_of_1_gib_beside_dd_and_fallocate() -> Result<()> {
    const ROUNDS: usize = 3;
    const GIB: u64 = 1 << 30;
    let (tls, state) = (make_certs()?, state_dir()?);
    let agent = TestAgent::start_tls(tls.path(), state.path())?;
    let disk = LoopDisk::new(2048)?;
    let mut spec = ContainerSpec::pod("dev", &format!("bench-fill-{}", std::process::id()), "db");
    spec.bind_mounts = vec![(disk.mount_point(), "/data".into())];
    let container = TestContainer::start(spec)?;
    let mut client = agent.client().await?;
    let mut figures: Vec<(&str, Vec<f64>)> = vec![
        ("ours (inject of disk_fill size 1GiB)", Vec::new()),
        ("dd bs=1M count=1024 (buffered)", Vec::new()),
        ("dd bs=1M count=1024 conv=fsync", Vec::new()),
        ("fallocate -l 1G (busybox)", Vec::new()),
    ];
    for round in 0..ROUNDS {
        let started = std::time::Instant::now();
        let fault = inject_fault(
            &mut client,
            fill(
                &container.target(),
                Duration::from_secs(300),
                api::DiskFillFault {
                    size_bytes: GIB,
                    path: "/data".into(),
                    ..Default::default()
                },
            ),
        )
        .await?;
        figures[0].1.push(started.elapsed().as_secs_f64());
        let status = fill_status(&fault)?;
        ensure!(status.files[0].bytes >= GIB, "{status:?}");
        client
            .revert(api::RevertRequest {
                id: fault.id,
                all: false,
            })
            .await?;
        for (slot, script) in [
            (
                1,
                "dd if=/dev/zero of=/data/peer bs=1M count=1024 2>/dev/null",
            ),
            (
                2,
                "dd if=/dev/zero of=/data/peer bs=1M count=1024 conv=fsync 2>/dev/null",
            ),
            (3, "fallocate -l 1073741824 /data/peer"),
        ] {
            figures[slot].1.push(timed_inside(&container, script)?);
            container.exec(&["/bin/rm", "-f", "/data/peer"])?.check()?;
            // The next one starts from an empty page cache of the volume's writes.
            container.exec(&["/bin/sync"])?.check()?;
        }
        println!("round {round} done");
    }
    for (label, seconds) in &figures {
        let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
        let (min, max) = seconds
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
        println!(
            "BENCH disk fill 1 GiB, {label}: mean {mean:.3} s, min {min:.3}, max {max:.3} ({ROUNDS} rounds)"
        );
    }
    Ok(())
}
