//! The agent SIGKILLed at random moments (issue 16, point 1): with active faults of every
//! kind, while one of them is being injected or reverted, or while they just hold. After
//! the restart on the same state directory every fault must be reverted within 2 s and
//! nothing left: no stressor, no stopped process, no journal file, the container's limits
//! and usage back, qdiscs, filters and links as before.
//!
//! The host test covers the host kinds (a repeating kill, a held stop, CPU fill, memory
//! fill, a pause, an IO limit, a disk fill, IO stress on a volume, a tbf rate limit on the
//! container's `lo`, which this host's kernel has); the `vm_` test covers netem egress,
//! ingress through an ifb, and a blackhole, which need the VM's kernel. Each kill lands at
//! a delay drawn from a seeded RNG: the seed is printed, and `CHAOS_CRASH_SEED=N` replays
//! it. A trial's phase is read from what it left (the RPC's answer and the journal files at
//! the kill), not assumed from its delay.
//! `CHAOS_TEST_LONG=1` runs 50 trials per test; CI runs 8 on the host and 4 in the VM
//! (`CHAOS_CRASH_TRIALS=N`: N). The 2 s bound is the host's; the VM's is wider (see
//! `VM_CLEAN_WITHIN`), and both are multiplied by `CHAOS_TEST_SLOWDOWN`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_proto::api::{self, agent_client::AgentClient};
use chaos_tests::agent::{TestAgent, binary, inject_fault, make_certs, state_dir};
use chaos_tests::command::run_bounded;
use chaos_tests::containerd::{ContainerSpec, TestContainer, cgroup_memberships_of_pid};
use chaos_tests::loopdisk::{
    DISK_FILL_PREFIX, IO_STRESS_PREFIX, LoopDisk, container_with_volume, files_named,
};
use chaos_tests::netns::TestNetns;
use chaos_tests::process::{first_child, state as process_state};
use chaos_tests::{scaled, trials};
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
/// Long enough that no fault ends by itself during a trial.
const HOLD: Duration = Duration::from_secs(120);
/// The contract: every fault reverted and nothing left this long after the restart.
const CLEAN_WITHIN: Duration = Duration::from_secs(2);
/// The VM's bound, unscaled: there a node clean includes the agent's own start under software
/// emulation (its first log line 1.5-6.7 s after the spawn, measured) and the test's looks
/// (`ip netns exec` and `tc` per namespace, seconds each), and it measured up to 25.7 s on a
/// loaded machine. What the VM shows is that nothing is left; the 2 s is timed on the host.
const VM_CLEAN_WITHIN: Duration = Duration::from_secs(6);
/// How long a trial waits for a leftover to go before it counts as left behind.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// The kill of a trial in flight lands uniformly in [0, window × this].
const WINDOW_STRETCH: f64 = 1.2;

// ---- a seeded RNG (splitmix64: a few lines, reproducible, no dependency) ----

struct Rng(u64);

impl Rng {
    /// `CHAOS_CRASH_SEED` when set, else the clock's nanoseconds.
    fn from_env() -> Result<(Rng, u64)> {
        let seed = match std::env::var("CHAOS_CRASH_SEED") {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("CHAOS_CRASH_SEED={text} is not a number"))?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        };
        Ok((Rng(seed), seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, max].
    fn delay(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros() as u64;
        Duration::from_micros(self.next() % (micros + 1))
    }
}

// ---- what a rig provides ----

/// One fault a rig holds during the trials, by a short name.
struct FaultSpec {
    name: &'static str,
    request: api::InjectRequest,
    /// Whether the rig's `leftovers` sees this fault while it holds (a repeating kill has
    /// no state to read back; `settled` is its witness).
    witnessed: bool,
}

/// The targets and their baseline; what is left on them after a crash.
trait Rig {
    fn faults(&self) -> Vec<FaultSpec>;
    /// What the faults left on the node, one line each; empty when it is as before.
    fn leftovers(&self) -> Result<Vec<String>>;
    /// Checks that need time (a repeating kill that would still fire), after clean.
    fn settled(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

fn request(target: &str, fault: api::inject_request::Fault) -> api::InjectRequest {
    api::InjectRequest {
        target: target.into(),
        duration_ms: HOLD.as_millis() as u64,
        fault: Some(fault),
        ..Default::default()
    }
}

async fn revert(client: &mut AgentClient<Channel>, id: &str) -> Result<()> {
    client
        .revert(api::RevertRequest {
            id: id.into(),
            all: false,
        })
        .await?;
    Ok(())
}

/// Every file in the agent's journal directory (records and temporary files), by name.
fn journal_files(state: &Path) -> BTreeSet<String> {
    std::fs::read_dir(state.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn record_file(id: &str) -> String {
    format!("{id}.json")
}

// ---- the trial engine ----

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Every fault active; the kill lands while they hold.
    Holding,
    /// Every fault but one active; the kill lands while that one's inject is in flight.
    Inject,
    /// Every fault active; the kill lands while one's revert is in flight.
    Revert,
}

/// How long each fault's inject and revert RPC take here (the median of a few rounds,
/// measured before the trials): a kill drawn across it lands mostly while the RPC is in
/// flight. The longest would put most kills after the answer on a busy machine.
struct Windows {
    inject: BTreeMap<&'static str, Duration>,
    revert: BTreeMap<&'static str, Duration>,
}

const WINDOW_ROUNDS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Injects and reverts every fault [`WINDOW_ROUNDS`] times, timing each RPC.
async fn measure_windows(rig: &dyn Rig, agent: &TestAgent, state: &Path) -> Result<Windows> {
    let mut client = agent.client().await?;
    let mut injects: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut reverts: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    for _ in 0..WINDOW_ROUNDS {
        for spec in rig.faults() {
            let started = Instant::now();
            let fault = inject_fault(&mut client, spec.request)
                .await
                .with_context(|| format!("measuring the {} inject", spec.name))?;
            injects
                .entry(spec.name)
                .or_default()
                .push(started.elapsed());
            // The witness is not vacuous: it sees the fault while it holds.
            if spec.witnessed {
                let seen = rig.leftovers()?;
                ensure!(
                    !seen.is_empty(),
                    "{} holds, and the rig sees nothing",
                    spec.name
                );
            }
            let started = Instant::now();
            revert(&mut client, &fault.id)
                .await
                .with_context(|| format!("measuring the {} revert", spec.name))?;
            reverts
                .entry(spec.name)
                .or_default()
                .push(started.elapsed());
        }
    }
    let left = rig.leftovers()?;
    ensure!(left.is_empty(), "the plain reverts left: {left:?}");
    ensure!(
        journal_files(state).is_empty(),
        "the plain reverts left journal files"
    );
    Ok(Windows {
        inject: injects.into_iter().map(|(k, v)| (k, median(v))).collect(),
        revert: reverts.into_iter().map(|(k, v)| (k, median(v))).collect(),
    })
}

/// Seconds since midnight (UTC) of a log line's RFC 3339 stamp, e.g.
/// `2026-12-02T06:41:00.960004Z ...`.
fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.trim_end_matches('Z').split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

fn seconds_of_day(at: std::time::SystemTime) -> f64 {
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    since % 86_400.0
}

/// Where the restart's time went, from the agent's own log: its first line and its last
/// journal revert, in seconds after the spawn (wall clock, both sides UTC).
fn startup_breakdown(log: &str, spawned_at: std::time::SystemTime) -> String {
    let spawn = seconds_of_day(spawned_at);
    let first = log.lines().find_map(log_seconds_of_day);
    let recovered = log
        .lines()
        .filter(|l| l.contains("reverted a fault left by a previous run"))
        .filter_map(log_seconds_of_day)
        .next_back();
    let after = |t: Option<f64>| {
        t.map(|t| format!("{:.3} s", t - spawn))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "first log line {}, last journal revert {}",
        after(first),
        after(recovered)
    )
}

/// Between two looks at the node: 20 ms, stretched in the VM, where each look spawns a
/// dozen `ip netns exec` under emulation and would otherwise starve the starting agent.
fn poll_interval() -> Duration {
    scaled(Duration::from_millis(20))
}

/// `trials(short, long)`, unless `CHAOS_CRASH_TRIALS=N` asks for N (to replay a seed's
/// first trials, or to fit a VM boot).
fn trial_count(short: usize, long: usize) -> Result<usize> {
    match std::env::var("CHAOS_CRASH_TRIALS") {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("CHAOS_CRASH_TRIALS={text} is not a number")),
        Err(_) => Ok(trials(short, long)),
    }
}

struct TrialResult {
    phase: String,
    /// What the rig saw left right after the kill, before the restart.
    left_at_kill: usize,
    /// From the restarted agent's spawn: the node as before, journal empty (polled
    /// while the agent starts).
    node_clean_after: Option<Duration>,
    /// From the spawn: the agent answers /readyz.
    ready_after: Duration,
    /// The agent's log stamps after the spawn.
    startup: String,
    clean_after: Option<Duration>,
    problems: Vec<String>,
}

/// One trial: faults up, a kill at a drawn moment, a restart on the same state directory,
/// then polls until nothing is left. Returns the restarted agent for the next trial.
async fn trial(
    rig: &dyn Rig,
    mut agent: TestAgent,
    tls: &Path,
    state: &Path,
    plan: Plan,
    rng: &mut Rng,
    windows: &Windows,
) -> Result<(TrialResult, TestAgent)> {
    let faults = rig.faults();
    let chosen = rng.below(faults.len());
    let chosen_name = faults[chosen].name;
    let mut client = agent.client().await?;
    let mut held: BTreeMap<&'static str, String> = BTreeMap::new();
    for (index, spec) in faults.iter().enumerate() {
        if matches!(plan, Plan::Inject) && index == chosen {
            continue;
        }
        let fault = inject_fault(&mut client, spec.request.clone())
            .await
            .with_context(|| format!("injecting {}", spec.name))?;
        held.insert(spec.name, fault.id);
    }

    // The RPC in flight (if any) runs on its own connection, then the kill.
    let mut in_flight = None;
    let delay = match plan {
        Plan::Holding => rng.delay(Duration::from_millis(300)),
        Plan::Inject => {
            let mut other = agent.client().await?;
            let request = faults[chosen].request.clone();
            in_flight = Some(tokio::spawn(async move {
                inject_fault(&mut other, request).await.map(|_| ())
            }));
            rng.delay(windows.inject[chosen_name].mul_f64(WINDOW_STRETCH))
        }
        Plan::Revert => {
            let mut other = agent.client().await?;
            let id = held[chosen_name].clone();
            in_flight = Some(tokio::spawn(async move { revert(&mut other, &id).await }));
            rng.delay(windows.revert[chosen_name].mul_f64(WINDOW_STRETCH))
        }
    };
    tokio::time::sleep(delay).await;
    agent.kill_hard()?;
    let answered = match in_flight {
        Some(task) => Some(task.await?.is_ok()),
        None => None,
    };
    let left_at_kill = rig.leftovers()?.len();
    let files = journal_files(state);
    let held_records: BTreeSet<String> = held.values().map(|id| record_file(id)).collect();
    let phase = match (plan, answered) {
        (Plan::Holding, _) => "holding".to_string(),
        (Plan::Inject, Some(true)) => format!("inject {chosen_name}: answered"),
        (Plan::Inject, _) => {
            let new_record = files
                .iter()
                .any(|f| f.ends_with(".json") && !held_records.contains(f));
            // The journal writes a temporary file, then renames it.
            let being_written = files.iter().any(|f| f.ends_with(".tmp"));
            if new_record {
                format!("inject {chosen_name}: in flight, journal record written")
            } else if being_written {
                format!("inject {chosen_name}: in flight, journal record half written")
            } else {
                format!("inject {chosen_name}: in flight, no journal record yet")
            }
        }
        (Plan::Revert, Some(true)) => format!("revert {chosen_name}: answered"),
        (Plan::Revert, _) => {
            if files.contains(&record_file(&held[chosen_name])) {
                format!("revert {chosen_name}: in flight, journal record present")
            } else {
                format!("revert {chosen_name}: in flight, journal record removed")
            }
        }
    };

    // The node is watched from the spawn on, while the agent starts (it reverts the
    // journal before it serves); the full check below also needs it serving.
    let spawned = Instant::now();
    let spawned_at = std::time::SystemTime::now();
    let (tls_dir, state_dir) = (tls.to_path_buf(), state.to_path_buf());
    let starting = tokio::task::spawn_blocking(move || TestAgent::start_tls(&tls_dir, &state_dir));
    let mut node_clean_after = None;
    while !starting.is_finished() {
        // The journal first: it is cheap, and the node is not clean while it lists
        // anything. A look at the node takes time itself (a dozen processes in the VM),
        // so the time is taken at the end of the look that found it clean: an upper bound.
        if node_clean_after.is_none()
            && journal_files(state).is_empty()
            && rig.leftovers()?.is_empty()
        {
            node_clean_after = Some(spawned.elapsed());
        }
        tokio::time::sleep(poll_interval()).await;
    }
    let restarted = starting.await??;
    let ready_after = spawned.elapsed();
    let startup = startup_breakdown(&restarted.log(), spawned_at);
    let mut client = restarted.client().await?;
    let mut problems;
    let clean_after = loop {
        problems = rig.leftovers()?;
        let files = journal_files(state);
        if !files.is_empty() {
            problems.push(format!("journal files left: {files:?}"));
        }
        let active = client
            .list(api::ListRequest {
                include_ended: false,
            })
            .await?
            .into_inner()
            .faults;
        if !active.is_empty() {
            problems.push(format!("the restarted agent lists faults: {active:?}"));
        }
        if problems.is_empty() {
            node_clean_after.get_or_insert(spawned.elapsed());
            break Some(spawned.elapsed());
        }
        if spawned.elapsed() > scaled(GIVE_UP_AFTER) {
            break None;
        }
        tokio::time::sleep(poll_interval()).await;
    };
    if clean_after.is_some() {
        problems = rig.settled()?;
    }
    if !problems.is_empty() {
        problems.push(format!("restarted agent's log:\n{}", restarted.log()));
    }
    Ok((
        TrialResult {
            phase,
            left_at_kill,
            node_clean_after,
            ready_after,
            startup,
            clean_after,
            problems,
        },
        restarted,
    ))
}

/// Runs the trials on `rig`, prints a line per trial and the summary, and fails on any
/// leftover, or a node clean later than the contract after the spawn (scaled by
/// `CHAOS_TEST_SLOWDOWN`). The seed replays the kinds and delays drawn; the kernel's and
/// the scheduler's timing is not replayed, so a replay lands near, not on, the same point.
async fn run_trials(label: &str, rig: &dyn Rig, count: usize, within: Duration) -> Result<()> {
    let (mut rng, seed) = Rng::from_env()?;
    println!("{label}: {count} trials, seed {seed} (CHAOS_CRASH_SEED={seed} replays them)");
    let (tls, state) = (make_certs()?, state_dir()?);
    let mut agent = TestAgent::start_tls(tls.path(), state.path())?;
    let windows = measure_windows(rig, &agent, state.path()).await?;
    println!(
        "{label}: RPC windows (median of {WINDOW_ROUNDS}): inject {:?}, revert {:?}",
        windows.inject, windows.revert
    );
    let mut coverage: BTreeMap<String, usize> = BTreeMap::new();
    let mut times = Vec::new();
    let mut node_times = Vec::new();
    let mut failures = Vec::new();
    let bound = scaled(within);
    for number in 0..count {
        // Round robin over the plans, so each gets a third of the trials.
        let plan = [Plan::Holding, Plan::Inject, Plan::Revert][number % 3];
        let (result, next) = trial(
            rig,
            agent,
            tls.path(),
            state.path(),
            plan,
            &mut rng,
            &windows,
        )
        .await
        .with_context(|| format!("{label} trial {number} (seed {seed})"))?;
        agent = next;
        *coverage.entry(result.phase.clone()).or_default() += 1;
        println!(
            "{label} trial {number}: {}; {} leftovers at the kill; node clean after {:?}, agent ready after {:?} ({}), every check passed after {:?}",
            result.phase,
            result.left_at_kill,
            result.node_clean_after,
            result.ready_after,
            result.startup,
            result.clean_after
        );
        if let Some(took) = result.node_clean_after {
            node_times.push(took);
        }
        // The contract is timed on the node: faults reverted and the journal empty,
        // watched from the spawn. The full check (over mTLS, the agent lists nothing) must
        // pass too, but its time adds the test's own handshake and scans.
        match (result.clean_after, result.node_clean_after) {
            (Some(took), Some(node)) if result.problems.is_empty() => {
                times.push(took);
                if node > bound {
                    failures.push(format!(
                        "trial {number} ({}): node clean after {node:?}, over {bound:?}",
                        result.phase
                    ));
                }
            }
            _ => failures.push(format!(
                "trial {number} ({}): left behind: {}",
                result.phase,
                result.problems.join("; ")
            )),
        }
    }
    drop(agent);
    let worst = times.iter().max().copied().unwrap_or_default();
    let node_worst = node_times.iter().max().copied().unwrap_or_default();
    println!(
        "{label} summary: {count} trials, {} failures; phases {coverage:?}; from the restart's spawn: node clean worst {node_worst:?}, median {:?}; node bound {bound:?}; every check (agent serving over mTLS, nothing listed) worst {worst:?}, median {:?}; seed {seed}",
        failures.len(),
        median(node_times.clone()),
        median(times.clone()),
    );
    if !failures.is_empty() {
        bail!(
            "{label}: {} of {count} trials failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

// ---- host kinds ----

/// The container's memory usage: `memory.current` (v2) or `memory.usage_in_bytes` (v1).
fn memory_usage(container: &TestContainer) -> Result<u64> {
    let file = memory_dir(container)?;
    let name = if file.join("memory.current").exists() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let text = std::fs::read_to_string(file.join(name))?;
    Ok(text.trim().parse()?)
}

/// Where the container's memory controller files are.
fn memory_dir(container: &TestContainer) -> Result<PathBuf> {
    let dir = container.cgroup_dir()?;
    if dir.join("memory.current").exists() {
        return Ok(dir);
    }
    let memberships = cgroup_memberships_of_pid(container.pid()?)?;
    let memory = memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "memory"))
        .context("no memory cgroup")?;
    Ok(Path::new("/sys/fs/cgroup/memory").join(memory.path.trim_start_matches('/')))
}

/// The container's CPU and memory limits as the cgroup files say them.
fn limits(container: &TestContainer) -> Result<String> {
    let cpu = container.cgroup_dir()?;
    let memory = memory_dir(container)?;
    let mut text = String::new();
    for file in [
        cpu.join("cpu.max"),
        cpu.join("cpu.cfs_quota_us"),
        memory.join("memory.max"),
        memory.join("memory.limit_in_bytes"),
    ] {
        if let Ok(value) = std::fs::read_to_string(&file) {
            text += &format!("{}={} ", file.display(), value.trim());
        }
    }
    Ok(text)
}

/// The pids in the container's cgroup other than its init (stressors, when any).
fn others_in_cgroup(container: &TestContainer) -> Result<Vec<u32>> {
    let init = container.pid()?;
    let procs = std::fs::read_to_string(container.cgroup_dir()?.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| *pid != init)
        .collect())
}

/// Stressors of `agent_binary` (the hidden `stress` subcommand) whose parent is no agent
/// of that binary: left by a dead agent. Those of other tests' live agents are not ours.
fn orphaned_stressors(agent_binary: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            if exe(*pid).as_deref() != Some(agent_binary) {
                return false;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmdline.split(|b| *b == 0).any(|a| a == b"stress") {
                return false;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid.is_none_or(|parent| exe(parent).as_deref() != Some(agent_binary))
                && process_state(*pid).is_some_and(|s| s != 'Z')
        })
        .collect()
}

/// The root qdiscs on the container's `lo`, read inside its network namespace.
fn qdiscs_on_lo(container: &TestContainer) -> Result<String> {
    let pid = container.pid()?.to_string();
    let out = run_bounded(
        "nsenter",
        &["-t", &pid, "-n", "tc", "qdisc", "show", "dev", "lo"],
        Duration::from_secs(30),
    )?
    .check()?;
    Ok(out.stdout)
}

struct HostRig {
    /// A shell restarting `sleep`: the target of a repeating kill of `sleep`.
    killed: TestContainer,
    /// Its init is stopped (SIGSTOP) by a held stop.
    stopped: TestContainer,
    /// CPU fill, memory fill and a tbf on `lo`; 1 CPU and 512 MiB.
    stressed: TestContainer,
    /// Frozen by a pause (its own container: a pause holds a cgroup alone), its IO
    /// limited on `disk` (an IO limit goes together with a pause) and `disk`, mounted at
    /// /data, filled.
    paused: TestContainer,
    /// IO stress workers write and read back their files on its own volume at /data. Not
    /// the paused container: a pause conflicts with a fault holding processes in its cgroup.
    io_stressed: VolumeContainer,
    memory_before: u64,
    limits_before: String,
    lo_before: String,
    agent_binary: PathBuf,
    /// The test's own disk, which the IO limit names. Dropped after the containers.
    disk: LoopDisk,
}

/// A container with a loop-disk volume of its own, so that no IO stress writes to the
/// machine's disks.
struct VolumeContainer {
    /// Declared first: removed before the disk, whose mount it holds.
    container: TestContainer,
    disk: LoopDisk,
}

const FILL_BYTES: u64 = 128 * MIB;
/// Memory usage above the baseline that still counts as back (page cache, the shell).
const USAGE_MARGIN: u64 = 32 * MIB;

impl HostRig {
    fn start() -> Result<HostRig> {
        let tag = std::process::id();
        let mut killed = ContainerSpec::pod("crash", &format!("kill-{tag}"), "app");
        killed.command = vec![
            "/bin/sh".into(),
            "-c".into(),
            "while :; do sleep 3600; done".into(),
        ];
        let disk = LoopDisk::new(32)?;
        let mut paused = ContainerSpec::pod("crash", &format!("pause-{tag}"), "app");
        paused.bind_mounts = vec![(disk.mount_point(), "/data".into())];
        let mut stressed = ContainerSpec::pod("crash", &format!("stress-{tag}"), "app");
        stressed.cpus = Some(1.0);
        stressed.memory_limit_bytes = Some(512 * MIB);
        let mut rig = HostRig {
            killed: TestContainer::start(killed)?,
            stopped: TestContainer::start(ContainerSpec::pod(
                "crash",
                &format!("stop-{tag}"),
                "app",
            ))?,
            stressed: TestContainer::start(stressed)?,
            paused: TestContainer::start(paused)?,
            io_stressed: {
                let (container, disk) = container_with_volume("crash-iostress", 32)?;
                VolumeContainer { container, disk }
            },
            memory_before: 0,
            limits_before: String::new(),
            lo_before: String::new(),
            agent_binary: binary("chaos-agent")?.canonicalize()?,
            disk,
        };
        first_child(rig.killed.pid()?)?;
        rig.memory_before = memory_usage(&rig.stressed)?;
        rig.limits_before = limits(&rig.stressed)?;
        rig.lo_before = qdiscs_on_lo(&rig.stressed)?;
        Ok(rig)
    }
}

impl Rig for HostRig {
    fn faults(&self) -> Vec<FaultSpec> {
        use api::inject_request::Fault;
        let stressed = self.stressed.target();
        vec![
            FaultSpec {
                name: "repeating-kill",
                witnessed: false,
                request: request(
                    &self.killed.target(),
                    Fault::Process(api::ProcessFault {
                        signal: "KILL".into(),
                        process: "sleep".into(),
                        interval_ms: 200,
                    }),
                ),
            },
            FaultSpec {
                name: "stop",
                witnessed: true,
                request: request(
                    &self.stopped.target(),
                    Fault::Process(api::ProcessFault {
                        signal: "STOP".into(),
                        ..Default::default()
                    }),
                ),
            },
            FaultSpec {
                name: "cpu",
                witnessed: true,
                request: request(
                    &stressed,
                    Fault::Cpu(api::CpuFault {
                        load_percent: 50,
                        ..Default::default()
                    }),
                ),
            },
            FaultSpec {
                name: "memory",
                witnessed: true,
                request: request(
                    &stressed,
                    Fault::Memory(api::MemoryFault {
                        size_bytes: FILL_BYTES,
                        ..Default::default()
                    }),
                ),
            },
            FaultSpec {
                name: "pause",
                witnessed: true,
                request: request(&self.paused.target(), Fault::Pause(api::PauseFault {})),
            },
            FaultSpec {
                name: "io",
                witnessed: true,
                request: request(
                    &self.paused.target(),
                    Fault::Io(api::IoFault {
                        write_bytes_per_second: MIB,
                        device: self.disk.name().to_string(),
                        ..Default::default()
                    }),
                ),
            },
            FaultSpec {
                name: "disk-fill",
                witnessed: true,
                request: request(
                    &self.paused.target(),
                    Fault::DiskFill(api::DiskFillFault {
                        size_bytes: 8 * MIB,
                        path: "/data".into(),
                        ..Default::default()
                    }),
                ),
            },
            FaultSpec {
                name: "io-stress",
                witnessed: true,
                request: request(
                    &self.io_stressed.container.target(),
                    // Two workers, so a kill can land between their starts; paced and
                    // small, as the machine is shared, and within the 32 MiB volume.
                    Fault::IoStress(api::IoStressFault {
                        workers: 2,
                        bytes_per_second: 2 * MIB,
                        file_bytes: 2 * MIB,
                        path: "/data".into(),
                    }),
                ),
            },
            FaultSpec {
                name: "tbf",
                witnessed: true,
                request: request(
                    &stressed,
                    Fault::Network(api::NetworkFault {
                        interface: "lo".into(),
                        rate_bytes_per_second: 1_000_000,
                        ..Default::default()
                    }),
                ),
            },
        ]
    }

    fn leftovers(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for (name, container) in [
            ("kill", &self.killed),
            ("stop", &self.stopped),
            ("stress", &self.stressed),
        ] {
            let init = container.pid()?;
            if process_state(init) == Some('T') {
                left.push(format!("the {name} container's init {init} is stopped"));
            }
        }
        if self.paused.is_frozen()? {
            left.push("the pause container's cgroup is frozen".to_string());
        }
        let fills = files_named(&self.disk.mount_point(), DISK_FILL_PREFIX)?;
        if !fills.is_empty() {
            left.push(format!("fill files on the volume: {fills:?}"));
        }
        let io_limits = self.disk.limits_of(self.paused.pid()?)?;
        if io_limits != [0; 4] {
            left.push(format!("the pause container's IO limits: {io_limits:?}"));
        }
        let stressors = others_in_cgroup(&self.stressed)?;
        if !stressors.is_empty() {
            left.push(format!("processes in the stressed cgroup: {stressors:?}"));
        }
        let workers = others_in_cgroup(&self.io_stressed.container)?;
        if !workers.is_empty() {
            left.push(format!("processes in the IO stressed cgroup: {workers:?}"));
        }
        let io_files = files_named(&self.io_stressed.disk.mount_point(), IO_STRESS_PREFIX)?;
        if !io_files.is_empty() {
            left.push(format!("IO stress files on its volume: {io_files:?}"));
        }
        let orphans = orphaned_stressors(&self.agent_binary);
        if !orphans.is_empty() {
            left.push(format!("orphaned stressors: {orphans:?}"));
        }
        let usage = memory_usage(&self.stressed)?;
        if usage > self.memory_before + USAGE_MARGIN {
            left.push(format!(
                "memory usage {} MiB, {} MiB before",
                usage / MIB,
                self.memory_before / MIB
            ));
        }
        let limits_now = limits(&self.stressed)?;
        if limits_now != self.limits_before {
            left.push(format!(
                "limits {limits_now}, before {}",
                self.limits_before
            ));
        }
        let lo = qdiscs_on_lo(&self.stressed)?;
        if lo != self.lo_before {
            left.push(format!("qdiscs on lo: {lo:?}, before {:?}", self.lo_before));
        }
        Ok(left)
    }

    /// No kill fires any more: the container's `sleep` outlives three intervals.
    fn settled(&self) -> Result<Vec<String>> {
        let shell = self.killed.pid()?;
        let before = first_child(shell)?;
        std::thread::sleep(Duration::from_millis(600));
        let after = first_child(shell)?;
        Ok(if before == after {
            Vec::new()
        } else {
            vec![format!(
                "the container's sleep was killed: {before} -> {after}"
            )]
        })
    }
}

/// A frozen task cannot die on cgroup v1: a pause a failed trial left must be thawed
/// before the containers are removed.
impl Drop for HostRig {
    fn drop(&mut self) {
        if let Ok((dir, true)) =
            chaos_tests::containerd::freezer_dir_of_pid(self.paused.pid().unwrap_or(0))
        {
            let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_agent_sigkill_at_random_moments_leaves_no_host_fault_behind() -> Result<()> {
    let rig = HostRig::start()?;
    run_trials(
        "crash (host kinds)",
        &rig,
        trial_count(8, 50)?,
        CLEAN_WITHIN,
    )
    .await
}

// ---- network kinds (the VM) ----

/// A pod's container in a veth namespace of its own: the network faults' target.
struct NetTarget {
    /// Declared first: removed before its namespace.
    pod: TestContainer,
    netns: TestNetns,
    before: String,
}

impl NetTarget {
    fn start(name: &str) -> Result<NetTarget> {
        let netns = TestNetns::create()?;
        let pod = TestContainer::start(ContainerSpec {
            netns: Some(netns.path()),
            ..ContainerSpec::pod("crash", &format!("{name}-{}", std::process::id()), "main")
        })?;
        let before = interface_state(&netns)?;
        Ok(NetTarget { pod, netns, before })
    }
}

/// Everything a fault could leave in the namespace: eth0's qdiscs, its root and ingress
/// filters, and the links (an ifb would show here).
fn interface_state(netns: &TestNetns) -> Result<String> {
    // One process per look (a shell running the four), not four: under emulation each
    // process start costs a lot, and the look is timed.
    let script = "tc qdisc show dev eth0 && tc filter show dev eth0 && \
                  tc filter show dev eth0 ingress && ip -o link show";
    Ok(netns.exec(&["sh", "-c", script])?.check()?.stdout)
}

struct NetRig {
    egress: NetTarget,
    ingress: NetTarget,
    blackhole: NetTarget,
}

impl Rig for NetRig {
    fn faults(&self) -> Vec<FaultSpec> {
        use api::inject_request::Fault;
        let delay = api::NetworkFault {
            interface: "eth0".into(),
            delay_us: 30_000,
            ..Default::default()
        };
        vec![
            FaultSpec {
                name: "netem-egress",
                witnessed: true,
                request: request(&self.egress.pod.target(), Fault::Network(delay.clone())),
            },
            FaultSpec {
                name: "netem-ingress",
                witnessed: true,
                request: request(
                    &self.ingress.pod.target(),
                    Fault::Network(api::NetworkFault {
                        direction: api::Direction::Ingress as i32,
                        ..delay
                    }),
                ),
            },
            FaultSpec {
                name: "blackhole",
                witnessed: true,
                request: request(
                    &self.blackhole.pod.target(),
                    Fault::Blackhole(api::BlackholeFault {
                        interface: "eth0".into(),
                        ..Default::default()
                    }),
                ),
            },
        ]
    }

    fn leftovers(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for (name, target) in [
            ("egress", &self.egress),
            ("ingress", &self.ingress),
            ("blackhole", &self.blackhole),
        ] {
            let now = interface_state(&target.netns)?;
            if now != target.before {
                left.push(format!(
                    "the {name} namespace differs:\n{now}\nbefore:\n{}",
                    target.before
                ));
            }
        }
        Ok(left)
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs netem: runs in the VM"]
async fn vm_agent_sigkill_at_random_moments_leaves_no_network_fault_behind() -> Result<()> {
    let rig = NetRig {
        egress: NetTarget::start("egress")?,
        ingress: NetTarget::start("ingress")?,
        blackhole: NetTarget::start("hole")?,
    };
    // Each VM trial takes 25-70 s under emulation: CI runs 4.
    run_trials(
        "crash (network kinds)",
        &rig,
        trial_count(4, 50)?,
        VM_CLEAN_WITHIN,
    )
    .await
}
