//! The CPU stressor: `workers` threads burning with a duty cycle, steered every tick by
//! [`crate::control::DutyController`] so that the cgroup (Fill) or the stressor itself (Add)
//! uses the target share of the container's CPU limit.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chaos_cgroup::{CgroupFs, ProcessCgroup};

use crate::control::{DutyController, cores_between, duty_per_worker};
use crate::error::StressError;
use crate::process::process_cpu_time_ns;

/// Duty-cycle period of each worker. Short enough that a 200 ms tick averages 10 periods
/// (little quantisation noise) and that the workload sees fine-grained contention, long enough
/// that the ~50-100 µs sleep overshoot is under 1 % of a period.
pub const DUTY_PERIOD: Duration = Duration::from_millis(20);
/// Feedback interval: five CFS periods (100 ms each), so quota throttling averages out.
pub const TICK: Duration = Duration::from_millis(200);
/// How often a progress line is written.
const PROGRESS_EVERY_TICKS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// The cgroup's TOTAL use (workload included) reaches the target.
    Fill,
    /// The stressor's own use equals the target, whatever the workload does.
    Add,
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
    /// Burning threads; 0 = as many as the target needs (ceil of target cores).
    pub workers: usize,
    /// Wall-clock end (crosses the process boundary from the agent).
    pub deadline: SystemTime,
}

/// What the stressor did, for the agent's report.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuStressReport {
    pub limit_cores: f64,
    pub target_cores: f64,
    pub workers: usize,
    pub ticks: u32,
    /// Rates over the last tick, in cores.
    pub last_total_cores: f64,
    pub last_own_cores: f64,
    pub last_command_cores: f64,
}

/// Runs until the deadline. Writes a line `cpu total=<cores> own=<cores> command=<cores>` about
/// once a second to `progress`.
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
    let workers = if config.workers == 0 {
        (target_cores.ceil() as usize).clamp(1, limit.cpuset_cpus.max(1))
    } else {
        config.workers
    };
    let remaining = config
        .deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let end = Instant::now() + remaining;

    let mut controller = DutyController::new(target_cores, workers as f64);
    let duty_bits = Arc::new(AtomicU64::new(
        duty_per_worker(controller.command_cores(), workers).to_bits(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = CpuStressReport {
        limit_cores,
        target_cores,
        workers,
        ticks: 0,
        last_total_cores: 0.0,
        last_own_cores: 0.0,
        last_command_cores: controller.command_cores(),
    };

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let duty_bits = Arc::clone(&duty_bits);
            let stop = Arc::clone(&stop);
            scope.spawn(move || burn(&duty_bits, &stop, end));
        }
        let result = steer(
            config,
            &fs,
            &mut controller,
            &duty_bits,
            end,
            &mut report,
            progress,
        );
        // Stop the workers now on error; at the deadline they stop by themselves.
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    Ok(report)
}

/// The feedback loop: measure over a tick, update the command, publish the duty.
fn steer(
    config: &CpuStressConfig,
    fs: &CgroupFs,
    controller: &mut DutyController,
    duty_bits: &AtomicU64,
    end: Instant,
    report: &mut CpuStressReport,
    progress: &mut dyn Write,
) -> Result<(), StressError> {
    let mut last_at = Instant::now();
    let mut last_total_ns = fs.cpu_usage_ns(&config.cgroup)?;
    let mut last_own_ns = process_cpu_time_ns()?;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep(TICK.min(end - now));
        let at = Instant::now();
        let total_ns = fs.cpu_usage_ns(&config.cgroup)?;
        let own_ns = process_cpu_time_ns()?;
        let elapsed_ns = at.duration_since(last_at).as_nanos() as u64;
        let total = cores_between(last_total_ns, total_ns, elapsed_ns);
        let own = cores_between(last_own_ns, own_ns, elapsed_ns);
        (last_at, last_total_ns, last_own_ns) = (at, total_ns, own_ns);

        let measured = match config.mode {
            CpuMode::Fill => total,
            CpuMode::Add => own,
        };
        let command = controller.update(measured);
        duty_bits.store(
            duty_per_worker(command, report.workers).to_bits(),
            Ordering::Relaxed,
        );
        report.ticks += 1;
        report.last_total_cores = total;
        report.last_own_cores = own;
        report.last_command_cores = command;
        if report.ticks.is_multiple_of(PROGRESS_EVERY_TICKS) {
            writeln!(
                progress,
                "cpu total={total:.3} own={own:.3} command={command:.3}"
            )
            .and_then(|()| progress.flush())
            .map_err(StressError::Progress)?;
        }
    }
}

/// One worker: spin for `duty * DUTY_PERIOD`, sleep the rest, until the end or a stop.
fn burn(duty_bits: &AtomicU64, stop: &AtomicBool, end: Instant) {
    let mut period_start = Instant::now();
    let mut sink = 0u64;
    while period_start < end && !stop.load(Ordering::Relaxed) {
        let duty = f64::from_bits(duty_bits.load(Ordering::Relaxed));
        let busy_until = period_start + DUTY_PERIOD.mul_f64(duty);
        while Instant::now() < busy_until {
            // Cheap work the optimiser cannot remove.
            for i in 0..64u64 {
                sink = std::hint::black_box(sink.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
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
