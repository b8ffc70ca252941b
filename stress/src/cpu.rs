//! The CPU stressor: threads burning so that the cgroup's total (Fill, paced every few ms by
//! [`crate::control::FillPacer`]) or the stressor itself (Add, a duty cycle steered every tick
//! by [`crate::control::DutyController`]) uses the target share of the container's CPU limit,
//! or so that the stressor takes that share from a busy workload by running more threads than
//! it (Starve, [`crate::control::StarveController`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use chaos_cgroup::{CgroupFs, ProcessCgroup};

use crate::control::{
    DutyController, FillPacer, StarveController, cores_between, duty_in_order, duty_per_worker,
};
use crate::error::StressError;
use crate::process::process_cpu_time_ns;

/// Duty-cycle period of each worker. Short enough that a 200 ms tick averages 10 periods
/// (little quantisation noise) and that the workload sees fine-grained contention, long enough
/// that the ~50-100 µs sleep overshoot is under 1 % of a period.
pub const DUTY_PERIOD: Duration = Duration::from_millis(20);
/// Feedback interval of Add and Starve, and the progress interval of all: five CFS periods
/// (100 ms each), so quota throttling averages out.
pub const TICK: Duration = Duration::from_millis(200);
/// Fill's pacing interval: how often the cgroup's counter is read and the burning workers
/// are chosen. Fine enough that what a workload burst costs is paid back within tens of ms
/// (well inside a 1 s average), coarse enough that the reads (one small file, ~10 µs) cost
/// under 0.5 % of a core, and above the scheduler tick (4 ms at HZ=250) that updates the
/// counter of a running task.
pub const PACE: Duration = Duration::from_millis(5);
/// A paced worker that burns re-checks whether it still should this often.
const PACED_CHECK: Duration = Duration::from_micros(200);
/// How often a progress line is written.
const PROGRESS_EVERY_TICKS: u32 = 5;
/// Starve's default thread ceiling per CPU of the target's limit: against one busy workload
/// thread per CPU, 16 threads leave it 1/17 (5.9 %), enough for a 90 % starve of a workload
/// that is not more parallel than its limit.
pub const STARVE_THREADS_PER_CPU: usize = 16;

/// Starve's default thread ceiling for a limit of `limit_cores`.
pub fn starve_ceiling(limit_cores: f64) -> usize {
    STARVE_THREADS_PER_CPU.saturating_mul((limit_cores.ceil() as usize).max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// The cgroup's TOTAL use (workload included) reaches the target.
    Fill,
    /// The stressor's own use equals the target, whatever the workload does.
    Add,
    /// The stressor's own use reaches the target also against a busy workload, which is left
    /// at most (100 - target) %: it adds threads (up to `workers`) until it wins the CPU.
    Starve,
}

impl CpuMode {
    /// Every mode, in the order of the stressor's `--mode` values.
    pub const ALL: [CpuMode; 3] = [CpuMode::Fill, CpuMode::Add, CpuMode::Starve];

    /// The `--mode` value of the stressor command line.
    pub fn arg(self) -> &'static str {
        match self {
            CpuMode::Fill => "fill",
            CpuMode::Add => "add",
            CpuMode::Starve => "starve",
        }
    }

    pub fn from_arg(text: &str) -> Option<CpuMode> {
        CpuMode::ALL.into_iter().find(|mode| mode.arg() == text)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuStressConfig {
    /// The target container's cgroup; this process must already be in it.
    pub cgroup: ProcessCgroup,
    /// The cgroupfs root, normally `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// Load in % of the container's limit (quota cores, or cpuset CPUs when unlimited).
    pub target_percent_of_limit: f64,
    pub mode: CpuMode,
    /// Burning threads; 0 = as many as the target needs (ceil of target cores). Starve: the
    /// most threads it may run (0 = [`STARVE_THREADS_PER_CPU`] per CPU of the limit), started
    /// only as the workload's competition needs them.
    pub workers: usize,
    /// Wall-clock end (crosses the process boundary from the agent).
    pub deadline: SystemTime,
}

/// What the stressor did, for the agent's report.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuStressReport {
    pub limit_cores: f64,
    pub target_cores: f64,
    /// Threads started (Starve: the most it needed, at most its ceiling).
    pub workers: usize,
    pub ticks: u32,
    /// Rates over the last tick, in cores.
    pub last_total_cores: f64,
    pub last_own_cores: f64,
    pub last_command_cores: f64,
}

/// Runs until the deadline. Writes a line `cpu total=<cores> own=<cores> command=<cores>
/// threads=<n>` about once a second to `progress` (Starve's command is in threads).
pub fn run(
    config: &CpuStressConfig,
    progress: &mut dyn Write,
) -> Result<CpuStressReport, StressError> {
    if !(config.target_percent_of_limit > 0.0 && config.target_percent_of_limit <= 100.0) {
        return Err(StressError::InvalidConfig(format!(
            "target {} % is not in (0, 100]",
            config.target_percent_of_limit
        )));
    }
    let fs = CgroupFs::at(&config.cgroup_root);
    let limit = fs.cpu_limit(&config.cgroup)?;
    let limit_cores = limit.effective_cores();
    let target_cores = limit_cores * config.target_percent_of_limit / 100.0;
    let workers = match (config.workers, config.mode) {
        (0, CpuMode::Starve) => starve_ceiling(limit_cores),
        (0, _) => (target_cores.ceil() as usize).clamp(1, limit.cpuset_cpus.max(1)),
        (workers, _) => workers,
    };
    let remaining = config
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let end = Instant::now() + remaining;

    let mut controller = match config.mode {
        CpuMode::Fill => Controller::Fill(FillPacer::new(
            target_cores,
            workers,
            PACE.as_nanos() as u64,
        )),
        CpuMode::Add => Controller::Duty(DutyController::new(target_cores, workers as f64)),
        CpuMode::Starve => {
            Controller::Starve(StarveController::new(target_cores, limit_cores, workers))
        }
    };
    let command_bits = Arc::new(AtomicU64::new(controller.command().to_bits()));
    let burning = Arc::new(AtomicUsize::new(match &controller {
        Controller::Fill(pacer) => pacer.burning(),
        _ => 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = CpuStressReport {
        limit_cores,
        target_cores,
        workers: 0,
        ticks: 0,
        last_total_cores: 0.0,
        last_own_cores: 0.0,
        last_command_cores: controller.command(),
    };

    std::thread::scope(|scope| {
        let mut pool = Pool {
            scope,
            command_bits: &command_bits,
            burning: &burning,
            stop: &stop,
            end,
            share: match config.mode {
                CpuMode::Fill => Share::Paced,
                CpuMode::Add => Share::Even { workers },
                CpuMode::Starve => Share::InOrder,
            },
            most: workers,
            threads: Vec::new(),
        };
        pool.grow_to(match config.mode {
            CpuMode::Fill | CpuMode::Add => workers,
            CpuMode::Starve => controller.command().ceil() as usize,
        });
        let result = steer(
            config,
            &fs,
            &mut controller,
            &mut pool,
            &mut report,
            progress,
        );
        // Stop the workers now on error; at the deadline they stop by themselves.
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    Ok(report)
}

/// The mode's controller; its command is in cores (Fill, Duty) or runnable threads (Starve).
enum Controller {
    Fill(FillPacer),
    Duty(DutyController),
    Starve(StarveController),
}

impl Controller {
    fn command(&self) -> f64 {
        match self {
            Controller::Fill(c) => c.burning() as f64,
            Controller::Duty(c) => c.command_cores(),
            Controller::Starve(c) => c.command_threads(),
        }
    }
}

/// How a worker's duty follows from the command.
#[derive(Debug, Clone, Copy)]
enum Share {
    /// Fill: the pacer's first `burning` workers burn, the rest are parked.
    Paced,
    /// Add: `workers` workers each burn an equal part of the command (in cores).
    Even { workers: usize },
    /// Starve: the command (in threads) fills workers in order, see [`duty_in_order`].
    InOrder,
}

/// The burning threads, started as the command needs them (all at once for Fill and Add).
struct Pool<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    command_bits: &'env AtomicU64,
    /// Fill: how many workers burn until the next pace.
    burning: &'env AtomicUsize,
    stop: &'env AtomicBool,
    end: Instant,
    share: Share,
    most: usize,
    threads: Vec<Thread>,
}

impl Pool<'_, '_> {
    fn grow_to(&mut self, wanted: usize) {
        while self.threads.len() < wanted.min(self.most) {
            let (index, share, end) = (self.threads.len(), self.share, self.end);
            let (command_bits, burning, stop) = (self.command_bits, self.burning, self.stop);
            let worker = self.scope.spawn(move || match share {
                Share::Paced => burn_paced(index, burning, stop, end),
                Share::Even { workers } => burn(command_bits, stop, end, |command| {
                    duty_per_worker(command, workers)
                }),
                Share::InOrder => burn(command_bits, stop, end, |command| {
                    duty_in_order(command, index)
                }),
            });
            self.threads.push(worker.thread().clone());
        }
    }

    fn started(&self) -> usize {
        self.threads.len()
    }

    /// Fill: lets the first `count` workers burn, waking the ones that were parked.
    fn set_burning(&self, count: usize) {
        let before = self.burning.swap(count, Ordering::Relaxed);
        for thread in self.threads.iter().take(count).skip(before) {
            thread.unpark();
        }
    }
}

/// The feedback loop: Fill paces every [`PACE`]; every [`TICK`] the rates are measured, Add's
/// and Starve's command is updated and published, and progress is written.
fn steer(
    config: &CpuStressConfig,
    fs: &CgroupFs,
    controller: &mut Controller,
    pool: &mut Pool<'_, '_>,
    report: &mut CpuStressReport,
    progress: &mut dyn Write,
) -> Result<(), StressError> {
    let end = pool.end;
    let interval = match controller {
        Controller::Fill(_) => PACE,
        _ => TICK,
    };
    let mut tick_at = Instant::now();
    let mut tick_total_ns = fs.cpu_usage_ns(&config.cgroup)?;
    let mut tick_own_ns = process_cpu_time_ns()?;
    let (mut pace_at, mut pace_total_ns) = (tick_at, tick_total_ns);
    // Fill's mean number of burning workers over the tick, its command in cores.
    let (mut burning_sum, mut paces) = (0usize, 0usize);
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep(interval.min(end - now));
        let at = Instant::now();
        let total_ns = fs.cpu_usage_ns(&config.cgroup)?;
        if let Controller::Fill(pacer) = &mut *controller {
            let elapsed_ns = at.duration_since(pace_at).as_nanos() as u64;
            let burning = pacer.update(total_ns.saturating_sub(pace_total_ns), elapsed_ns);
            pool.set_burning(burning);
            (pace_at, pace_total_ns) = (at, total_ns);
            (burning_sum, paces) = (burning_sum + burning, paces + 1);
            if at.duration_since(tick_at) < TICK {
                continue;
            }
        }
        let own_ns = process_cpu_time_ns()?;
        let elapsed_ns = at.duration_since(tick_at).as_nanos() as u64;
        let total = cores_between(tick_total_ns, total_ns, elapsed_ns);
        let own = cores_between(tick_own_ns, own_ns, elapsed_ns);
        (tick_at, tick_total_ns, tick_own_ns) = (at, total_ns, own_ns);

        let command = match &mut *controller {
            Controller::Fill(_) => burning_sum as f64 / paces.max(1) as f64,
            Controller::Duty(c) => c.update(own),
            Controller::Starve(c) => c.update(own, total),
        };
        (burning_sum, paces) = (0, 0);
        if !matches!(controller, Controller::Fill(_)) {
            pool.grow_to(command.ceil() as usize);
            pool.command_bits
                .store(command.to_bits(), Ordering::Relaxed);
        }
        report.workers = pool.started();
        report.ticks += 1;
        report.last_total_cores = total;
        report.last_own_cores = own;
        report.last_command_cores = command;
        if report.ticks.is_multiple_of(PROGRESS_EVERY_TICKS) {
            writeln!(
                progress,
                "cpu total={total:.3} own={own:.3} command={command:.3} threads={}",
                pool.started()
            )
            .and_then(|()| progress.flush())
            .map_err(StressError::Progress)?;
        }
    }
}

/// One Fill worker: burns while it is among the pacer's first `burning` workers, parked
/// otherwise (woken by [`Pool::set_burning`]; the timeout only bounds how late it sees the
/// end or a stop).
fn burn_paced(index: usize, burning: &AtomicUsize, stop: &AtomicBool, end: Instant) {
    let mut sink = 0u64;
    loop {
        let now = Instant::now();
        if now >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        if index < burning.load(Ordering::Relaxed) {
            let until = now + PACED_CHECK;
            while Instant::now() < until {
                sink = spin(sink);
            }
        } else {
            std::thread::park_timeout(TICK.min(end - now));
        }
    }
    std::hint::black_box(sink);
}

/// Cheap work the optimiser cannot remove.
fn spin(mut sink: u64) -> u64 {
    for i in 0..64u64 {
        sink = std::hint::black_box(sink.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    sink
}

/// One worker: spin for `duty * DUTY_PERIOD`, sleep the rest, until the end or a stop.
fn burn(command_bits: &AtomicU64, stop: &AtomicBool, end: Instant, duty_of: impl Fn(f64) -> f64) {
    let mut period_start = Instant::now();
    let mut sink = 0u64;
    while period_start < end && !stop.load(Ordering::Relaxed) {
        let duty = duty_of(f64::from_bits(command_bits.load(Ordering::Relaxed)));
        let busy_until = period_start + DUTY_PERIOD.mul_f64(duty);
        while Instant::now() < busy_until {
            sink = spin(sink);
        }
        let next = period_start + DUTY_PERIOD;
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(end.saturating_duration_since(now)));
        }
        // Anchor to the schedule, but never try to catch up on periods lost to preemption.
        period_start = next.max(Instant::now() - DUTY_PERIOD);
    }
    std::hint::black_box(sink);
}
