//! The CPU stressor's feedback controller, kept pure (no clocks, no threads) so it can be
//! tested against a simulated plant.
//!
//! Three controllers, one per mode. Add: every tick the stressor measures its own threads' CPU
//! rate in cores and [`DutyController`] moves its command (how many cores the workers should
//! burn) by `GAIN * (target - measured)`, clamped to `[0, workers]`. Fill: [`FillPacer`] keeps
//! the cgroup's total on the target pace by pace. Starve: [`StarveController`].
//!
//! Why an integral controller for Add: the plant is "measured = offset + efficiency * command",
//! where the offset is any bias of the measurement and the efficiency (< 1 when the machine is
//! busy or a sleep overshoots, ≈ 1 otherwise) is unknown. Integral action removes both biases
//! without modelling them. The error shrinks by `|1 - GAIN * efficiency|` per tick: with GAIN = 0.5 it halves every
//! tick at efficiency 1 (within 1 % of the target after 7 ticks, under 1.5 s at the 200 ms
//! tick), and the loop stays stable for any efficiency below 4. A larger gain reacts faster but
//! passes more measurement noise into the command; 0.5 passes half of it, which on a 200 ms window
//! of a 20 ms duty cycle is well under 1 % of a core. The clamp is the anti-windup: when the
//! target is out of reach (the quota throttles, or the node leaves too little CPU) the command
//! sits at a bound and recovers in one tick once the target is reachable again.

/// Fraction of the error applied to the command each tick.
pub const GAIN: f64 = 0.5;

/// Integral controller of the stressor's command, in cores.
#[derive(Debug, Clone, PartialEq)]
pub struct DutyController {
    target_cores: f64,
    max_cores: f64,
    command_cores: f64,
}

impl DutyController {
    /// Starts with the command at the target: exact when nothing else runs (Add, or Fill of an
    /// idle container), and corrected within a few ticks otherwise.
    pub fn new(target_cores: f64, max_cores: f64) -> DutyController {
        let max_cores = max_cores.max(0.0);
        DutyController {
            target_cores,
            max_cores,
            command_cores: target_cores.clamp(0.0, max_cores),
        }
    }

    /// Feeds one measurement (cores over the last tick) and returns the new command.
    pub fn update(&mut self, measured_cores: f64) -> f64 {
        let error = self.target_cores - measured_cores;
        self.command_cores = (self.command_cores + GAIN * error).clamp(0.0, self.max_cores);
        self.command_cores
    }

    pub fn command_cores(&self) -> f64 {
        self.command_cores
    }

    pub fn target_cores(&self) -> f64 {
        self.target_cores
    }
}

/// Fill's pacer: how many workers burn until the next pace (a few ms) so that the cgroup's
/// TOTAL use, workload included, is the target.
///
/// Why not the integral controller: it averages over a 200 ms tick, so every fluctuation of
/// the workload inside a second passes into the total (a stress-ng `--cpu-load 30` background
/// moves its own 1 s average by 1.6 points, std, and the total left a ±3-point band for ~10 s
/// in `bench/resources`). The pacer instead keeps the account: the CPU time the cgroup is owed,
/// `target * elapsed - used`, read every pace from the cgroup's counter, and burns while it is
/// owed. A workload that spins harder for a moment is paid for within the next paces by the
/// workers burning less, so the total over any second is the target as long as the workload
/// alone is below it. `ceil(owed / one core for one pace)` workers burn: one worker turns on
/// and off, several share a multi-core target without all switching at once.
///
/// The account is bounded both ways by [`FILL_CREDIT_NS`] at the target rate: a workload alone
/// above the target (nothing to pay back: the stressor cannot undo CPU already used) or a
/// node too busy to run the workers (no catch-up burst later) moves it at most that far.
#[derive(Debug, Clone, PartialEq)]
pub struct FillPacer {
    target_cores: f64,
    workers: usize,
    pace_ns: f64,
    owed_ns: f64,
    bound_ns: f64,
}

/// How far [`FillPacer`]'s account may run ahead or behind, in time at the target rate.
pub const FILL_CREDIT_NS: f64 = 100e6;

impl FillPacer {
    /// Starts owing one pace at the target rate, so the workers start at once.
    pub fn new(target_cores: f64, workers: usize, pace_ns: u64) -> FillPacer {
        let pace_ns = pace_ns.max(1) as f64;
        FillPacer {
            target_cores,
            workers,
            pace_ns,
            owed_ns: target_cores * pace_ns,
            bound_ns: target_cores * FILL_CREDIT_NS,
        }
    }

    /// Feeds the cgroup's use (ns of CPU) over the last `elapsed_ns` and returns how many
    /// workers burn until the next pace.
    pub fn update(&mut self, used_ns: u64, elapsed_ns: u64) -> usize {
        let owed = self.owed_ns + self.target_cores * elapsed_ns as f64 - used_ns as f64;
        self.owed_ns = owed.clamp(-self.bound_ns, self.bound_ns);
        self.burning()
    }

    pub fn burning(&self) -> usize {
        if self.owed_ns <= 0.0 {
            return 0;
        }
        ((self.owed_ns / self.pace_ns).ceil() as usize).min(self.workers)
    }

    pub fn owed_ns(&self) -> f64 {
        self.owed_ns
    }
}

/// Starve's share of the error applied per tick: half, so a noisy estimate (the workload's
/// share of one 200 ms tick varies by several points) moves the thread count by half of it.
pub const STARVE_GAIN: f64 = 0.5;
/// Starve counts the stressor as contended when its threads got less than this fraction of
/// the CPU time they asked for.
pub const CONTENDED_BELOW: f64 = 0.9;
/// Workload use (cores) under which the workload is not what contends with the stressor.
pub const WORKLOAD_NOISE_CORES: f64 = 0.02;

/// Starve's controller: the stressor's own use must reach the target (N % of the limit)
/// although a busy workload competes for the same quota, which leaves the workload at most
/// (100 - N) %. The command is a number of runnable threads, whole ones busy all the time and
/// the last one duty-cycled (see [`duty_in_order`]).
///
/// Why threads: without CAP_SYS_NICE the stressor cannot take a higher weight than the
/// workload's threads, and inside one cgroup CFS (and EEVDF) shares the quota among runnable
/// threads of equal weight, so `c` busy stressor threads beside `W` busy workload threads get
/// `c / (c + W)` of what the cgroup gets (measured on this host, 1 CPU quota: 1 workload
/// thread with 1/2/4/8/16 spinners kept 49.7/32.0/19.3/10.7/5.3 %, the model says
/// 50/33/20/11/5.9). The controller estimates `W` every tick from what it measured,
/// `W = c * workload / own`, and asks for the `c` that takes the target fraction `f` (N %) of
/// what the cgroup gets: `own = T * c / (c + W) = f * T` solves to `c = W * f / (1 - f)`.
/// Of the cgroup's total `T`, not of its limit: on a node too busy to give the cgroup its
/// limit, the workload keeps (100 - N) % of what the cgroup gets, which is still at most
/// (100 - N) % of the limit, instead of nothing (the stressor cannot take more than the
/// cgroup gets, and chasing N % of the limit would leave the workload only what its threads
/// win against the thread ceiling).
/// The model's error (a workload that sleeps, wakes with a scheduler bonus or is throttled)
/// only changes `W` between ticks, which the next estimate takes in. When the stressor is not
/// contended (it gets what it asks) each asked core is delivered, and the update is the plain
/// integral step `c + (target - own)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StarveController {
    target_cores: f64,
    limit_cores: f64,
    max_threads: f64,
    command_threads: f64,
}

impl StarveController {
    /// Starts asking for the target in cores: exact on an idle container. `limit_cores` is
    /// what 100 % is (the quota, or the cpuset's CPUs).
    pub fn new(target_cores: f64, limit_cores: f64, max_threads: usize) -> StarveController {
        let max_threads = max_threads as f64;
        StarveController {
            target_cores,
            limit_cores,
            max_threads,
            command_threads: target_cores.clamp(0.0, max_threads),
        }
    }

    /// Feeds one tick's measurement, the stressor's own use and the cgroup's total (cores),
    /// and returns the new command in threads.
    pub fn update(&mut self, own_cores: f64, total_cores: f64) -> f64 {
        let current = self.command_threads;
        let workload = (total_cores - own_cores).max(0.0);
        let contended = own_cores > 0.0
            && own_cores < CONTENDED_BELOW * current
            && workload > WORKLOAD_NOISE_CORES;
        let wanted = if contended {
            let workload_threads = current * workload / own_cores;
            let fraction = self.target_cores / self.limit_cores;
            if fraction >= 1.0 {
                // All of it: leave the workload as little as the most threads can.
                self.max_threads
            } else {
                workload_threads * fraction / (1.0 - fraction)
            }
        } else {
            // Nothing in the cgroup competes: threads beyond its limit cannot get more CPU
            // (the node shares CPU between cgroups, not threads), so asking for more than the
            // limit would only wind up, and come down slowly once the workload goes idle.
            (current + (self.target_cores - own_cores)).min(self.limit_cores.max(self.target_cores))
        };
        self.command_threads =
            (current + STARVE_GAIN * (wanted - current)).clamp(0.0, self.max_threads);
        self.command_threads
    }

    pub fn command_threads(&self) -> f64 {
        self.command_threads
    }
}

/// Starve's duty of worker `index` (0-based) for a command in threads: the first
/// `floor(command)` workers busy all the time, the next one for the fraction, the rest idle.
pub fn duty_in_order(command_threads: f64, index: usize) -> f64 {
    (command_threads - index as f64).clamp(0.0, 1.0)
}

/// The duty (busy fraction of each period, 0..=1) of each of `workers` equal workers.
pub fn duty_per_worker(command_cores: f64, workers: usize) -> f64 {
    if workers == 0 {
        return 0.0;
    }
    (command_cores / workers as f64).clamp(0.0, 1.0)
}

/// Cores used between two readings of a cumulative CPU-time counter.
pub fn cores_between(start_ns: u64, end_ns: u64, elapsed_ns: u64) -> f64 {
    if elapsed_ns == 0 {
        return 0.0;
    }
    end_ns.saturating_sub(start_ns) as f64 / elapsed_ns as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated cgroup: the stressor delivers `efficiency * command`, capped by `quota`,
    /// plus a workload; `noise` is added to each measurement (deterministic pseudo-noise).
    struct Plant {
        workload: f64,
        efficiency: f64,
        quota: f64,
        noise: f64,
        tick: u32,
    }

    impl Plant {
        fn stress(&self, command: f64) -> f64 {
            (self.efficiency * command).min((self.quota - self.workload).max(0.0))
        }
        fn measure_total(&mut self, command: f64) -> f64 {
            self.tick += 1;
            let wobble = if self.tick.is_multiple_of(2) {
                self.noise
            } else {
                -self.noise
            };
            self.workload + self.stress(command) + wobble
        }
    }

    fn plant(workload: f64, efficiency: f64) -> Plant {
        Plant {
            workload,
            efficiency,
            quota: 1.0,
            noise: 0.0,
            tick: 0,
        }
    }

    /// Runs `ticks` ticks in Fill mode and returns the last measured total.
    fn run_fill(controller: &mut DutyController, plant: &mut Plant, ticks: u32) -> f64 {
        let mut total = 0.0;
        for _ in 0..ticks {
            total = plant.measure_total(controller.command_cores());
            controller.update(total);
        }
        total
    }

    #[test]
    fn fill_on_an_idle_cgroup_is_exact_at_once() {
        let mut controller = DutyController::new(0.5, 1.0);
        let mut plant = plant(0.0, 1.0);
        assert_eq!(run_fill(&mut controller, &mut plant, 1), 0.5);
        assert_eq!(controller.command_cores(), 0.5);
    }

    #[test]
    fn fill_subtracts_the_workload_within_seven_ticks() {
        let mut controller = DutyController::new(0.7, 1.0);
        let mut plant = plant(0.3, 1.0);
        let total = run_fill(&mut controller, &mut plant, 8);
        assert!((total - 0.7).abs() < 0.01, "{total}");
        assert!((controller.command_cores() - 0.4).abs() < 0.01);
    }

    #[test]
    fn converges_for_efficiencies_from_half_to_three() {
        for efficiency in [0.5, 0.8, 1.0, 1.5, 3.0] {
            let mut controller = DutyController::new(0.5, 2.0);
            let mut plant = plant(0.1, efficiency);
            plant.quota = 4.0;
            let total = run_fill(&mut controller, &mut plant, 30);
            assert!(
                (total - 0.5).abs() < 0.005,
                "efficiency {efficiency}: {total}"
            );
        }
    }

    #[test]
    fn does_not_settle_beyond_efficiency_four() {
        // Documents the stability margin claimed above.
        let mut controller = DutyController::new(0.5, 100.0);
        let mut plant = plant(0.0, 4.5);
        plant.quota = 1000.0;
        let mut errors = Vec::new();
        for _ in 0..10 {
            let total = plant.measure_total(controller.command_cores());
            errors.push((total - 0.5).abs());
            controller.update(total);
        }
        // The error no longer shrinks: the command bangs between the clamp at 0 and overshoot.
        assert!(errors[9] >= 0.5 && errors[8] >= 0.5, "{errors:?}");
    }

    #[test]
    fn tracks_a_workload_step() {
        let mut controller = DutyController::new(0.7, 1.0);
        let mut plant = plant(0.1, 1.0);
        run_fill(&mut controller, &mut plant, 10);
        plant.workload = 0.4;
        let total = run_fill(&mut controller, &mut plant, 8);
        assert!((total - 0.7).abs() < 0.01, "{total}");
    }

    #[test]
    fn noise_reaches_the_command_attenuated() {
        let mut controller = DutyController::new(0.5, 1.0);
        let mut plant = plant(0.0, 1.0);
        plant.noise = 0.02;
        run_fill(&mut controller, &mut plant, 20);
        // Alternating ±0.02 noise moves the command by at most GAIN * 0.04 around 0.5.
        let mut worst: f64 = 0.0;
        for _ in 0..20 {
            let total = plant.measure_total(controller.command_cores());
            controller.update(total);
            worst = worst.max((controller.command_cores() - 0.5).abs());
        }
        assert!(worst <= GAIN * 0.04 + 1e-9, "{worst}");
    }

    #[test]
    fn saturation_does_not_wind_up() {
        // The workload alone exceeds the target: the command sits at 0, not below.
        let mut controller = DutyController::new(0.3, 1.0);
        let mut plant = plant(0.6, 1.0);
        run_fill(&mut controller, &mut plant, 20);
        assert_eq!(controller.command_cores(), 0.0);
        // When the workload drops, the target is reached again within seven ticks.
        plant.workload = 0.1;
        let total = run_fill(&mut controller, &mut plant, 8);
        assert!((total - 0.3).abs() < 0.01, "{total}");
    }

    #[test]
    fn unreachable_target_clamps_at_the_worker_count() {
        let mut controller = DutyController::new(2.0, 1.0);
        let mut plant = plant(0.0, 1.0);
        run_fill(&mut controller, &mut plant, 10);
        assert_eq!(controller.command_cores(), 1.0);
    }

    /// A cgroup whose total `total` cores are shared by runnable threads: `workload_threads`
    /// busy workload threads and the stressor's `command` (runnable-thread equivalents).
    fn share(command: f64, workload_threads: f64, total: f64, idle_workload: f64) -> (f64, f64) {
        if workload_threads == 0.0 {
            let own = command.min(total - idle_workload);
            return (own, own + idle_workload);
        }
        let own = total * command / (command + workload_threads);
        (own, total)
    }

    fn run_starve(
        controller: &mut StarveController,
        workload_threads: f64,
        total: f64,
        ticks: u32,
    ) -> (f64, f64) {
        let mut last = (0.0, 0.0);
        for _ in 0..ticks {
            last = share(controller.command_threads(), workload_threads, total, 0.0);
            controller.update(last.0, last.1);
        }
        last
    }

    #[test]
    fn starve_on_an_idle_cgroup_asks_for_the_target_cores() {
        let mut controller = StarveController::new(0.9, 1.0, 16);
        let (own, _) = run_starve(&mut controller, 0.0, 1.0, 3);
        assert!((own - 0.9).abs() < 1e-9, "{own}");
        assert!((controller.command_threads() - 0.9).abs() < 1e-9);
    }

    #[test]
    fn starve_leaves_busy_workloads_their_share_within_a_point() {
        // 1, 2 and 4 busy workload threads in a 1-core quota; 50, 80 and 90 % for the stressor.
        for workload_threads in [1.0, 2.0, 4.0] {
            for target in [0.5, 0.8, 0.9] {
                let mut controller = StarveController::new(target, 1.0, 64);
                let (own, total) = run_starve(&mut controller, workload_threads, 1.0, 15);
                let workload = total - own;
                assert!(
                    (workload - (1.0 - target)).abs() < 0.01,
                    "{workload_threads} threads, target {target}: workload {workload}, \
                     command {}",
                    controller.command_threads()
                );
            }
        }
    }

    #[test]
    fn starve_takes_its_fraction_of_what_a_busy_node_leaves_the_cgroup() {
        // A busy node: the cgroup gets 0.6 cores of its 1-core quota. The stressor takes 80 %
        // of that, leaving the workload 20 % of it (0.12 cores, under 20 % of the limit).
        let mut controller = StarveController::new(0.8, 1.0, 64);
        let (own, total) = run_starve(&mut controller, 2.0, 0.6, 10);
        assert!((own - 0.48).abs() < 0.01, "{own} of {total}");
    }

    #[test]
    fn starve_tracks_a_workload_that_adds_threads() {
        let mut controller = StarveController::new(0.8, 1.0, 64);
        run_starve(&mut controller, 1.0, 1.0, 15);
        let before = controller.command_threads();
        let (own, _) = run_starve(&mut controller, 3.0, 1.0, 15);
        assert!((own - 0.8).abs() < 0.01, "{own}");
        assert!(controller.command_threads() > 2.5 * before);
    }

    #[test]
    fn starve_clamps_at_the_thread_ceiling() {
        // 8 workload threads need 72 stressor threads for 90 %; 16 is the most allowed.
        let mut controller = StarveController::new(0.9, 1.0, 16);
        let (own, _) = run_starve(&mut controller, 8.0, 1.0, 20);
        assert_eq!(controller.command_threads(), 16.0);
        assert!((own - 16.0 / 24.0).abs() < 1e-9, "{own}");
        // The whole limit for the stressor: the ceiling at once.
        let mut controller = StarveController::new(1.0, 1.0, 16);
        run_starve(&mut controller, 1.0, 1.0, 8);
        assert!(controller.command_threads() > 15.9);
    }

    #[test]
    fn starve_comes_down_within_ten_ticks_when_the_workload_goes_idle() {
        let mut controller = StarveController::new(0.6, 1.0, 64);
        run_starve(&mut controller, 2.0, 1.0, 15);
        assert!(controller.command_threads() > 2.0);
        // The workload stops: no contention, the threads go back to the target cores.
        let mut last = (0.0, 0.0);
        for _ in 0..10 {
            last = share(controller.command_threads(), 0.0, 1.0, 0.0);
            controller.update(last.0, last.1);
        }
        assert!((last.0 - 0.6).abs() < 0.02, "{last:?}");
    }

    const PACE_NS: u64 = 5_000_000;

    /// A workload that alternates busy and idle (one core) over `period` paces, busy for
    /// `busy` of them, like a duty-cycled background load.
    fn square_wave(pace: u64, period: u64, busy: u64) -> f64 {
        if pace % period < busy { 1.0 } else { 0.0 }
    }

    /// Runs the pacer `paces` times against a workload (cores per pace) and workers that get
    /// `efficiency` of each pace they burn; returns the cgroup's use per pace, in cores.
    fn run_pacer(
        pacer: &mut FillPacer,
        paces: u64,
        efficiency: f64,
        workload: impl Fn(u64) -> f64,
    ) -> Vec<f64> {
        let mut used = Vec::new();
        for pace in 0..paces {
            let cores = workload(pace) + efficiency * pacer.burning() as f64;
            used.push(cores);
            pacer.update((cores * PACE_NS as f64) as u64, PACE_NS);
        }
        used
    }

    fn mean(values: &[f64]) -> f64 {
        values.iter().sum::<f64>() / values.len() as f64
    }

    #[test]
    fn pacer_on_an_idle_cgroup_holds_the_target() {
        let mut pacer = FillPacer::new(0.5, 1, PACE_NS);
        let used = run_pacer(&mut pacer, 400, 1.0, |_| 0.0);
        // Every second (200 paces) of it.
        for second in used.chunks(200) {
            assert!((mean(second) - 0.5).abs() < 0.005, "{}", mean(second));
        }
    }

    #[test]
    fn pacer_pays_for_a_fluctuating_workload_within_each_second() {
        // A 30 % background in bursts of 3 to 30 paces (15 to 150 ms): the total of every
        // second stays on the target although the background's own second-long averages vary.
        // (A burst that overshoots the target by more than the account's bound is not paid
        // back in full: by design, see FillPacer.)
        for (period, busy) in [(10, 3), (37, 11), (67, 20), (100, 30)] {
            let mut pacer = FillPacer::new(0.7, 1, PACE_NS);
            let used = run_pacer(&mut pacer, 2000, 1.0, |p| square_wave(p, period, busy));
            // At most one burst's excess over the target is not yet paid at a window's end.
            let unpaid = busy as f64 * (1.0 - 0.7) / 200.0;
            for (at, window) in used.windows(200).enumerate().step_by(10) {
                assert!(
                    (mean(window) - 0.7).abs() <= unpaid + 0.005,
                    "period {period}: second from pace {at}: {}",
                    mean(window)
                );
            }
        }
    }

    #[test]
    fn pacer_follows_a_workload_that_changes_every_half_second() {
        // A workload whose level jumps between 10 and 50 % every 100 paces: a constant
        // stressor would leave the total ±20 points off; the pacer keeps every second on it.
        let levels = [0.1, 0.5, 0.2, 0.4];
        let mut pacer = FillPacer::new(0.7, 1, PACE_NS);
        let used = run_pacer(&mut pacer, 2000, 1.0, |p| levels[(p / 100) as usize % 4]);
        for (at, window) in used.windows(200).enumerate().step_by(10) {
            assert!(
                (mean(window) - 0.7).abs() < 0.01,
                "second from pace {at}: {}",
                mean(window)
            );
        }
    }

    #[test]
    fn pacer_shares_a_multi_core_target_among_its_workers() {
        let mut pacer = FillPacer::new(2.5, 3, PACE_NS);
        let used = run_pacer(&mut pacer, 400, 1.0, |_| 0.0);
        assert!(
            (mean(&used[200..]) - 2.5).abs() < 0.01,
            "{}",
            mean(&used[200..])
        );
        // Two or three workers, never all three off and on together.
        assert!(
            used[200..].iter().all(|c| (2.0..=3.0).contains(c)),
            "{used:?}"
        );
    }

    #[test]
    fn pacer_does_not_wind_up_while_the_workload_alone_exceeds_the_target() {
        let mut pacer = FillPacer::new(0.25, 1, PACE_NS);
        // Ten seconds at 0.4 cores: nothing to add, and the overshoot is not remembered...
        run_pacer(&mut pacer, 2000, 1.0, |_| 0.4);
        assert_eq!(pacer.burning(), 0);
        assert!(
            pacer.owed_ns() >= -0.25 * FILL_CREDIT_NS - 1.0,
            "{}",
            pacer.owed_ns()
        );
        // ...so once it goes idle the workers are back within 100 ms (20 paces).
        let used = run_pacer(&mut pacer, 200, 1.0, |_| 0.0);
        assert!(used[20..].iter().any(|c| *c > 0.0), "{used:?}");
        assert!(
            (mean(&used[100..]) - 0.25).abs() < 0.01,
            "{}",
            mean(&used[100..])
        );
    }

    #[test]
    fn pacer_does_not_burst_after_its_workers_were_starved() {
        let mut pacer = FillPacer::new(0.5, 1, PACE_NS);
        // A node that ran none of the workers' time for 5 s...
        run_pacer(&mut pacer, 1000, 0.0, |_| 0.0);
        assert!(
            pacer.owed_ns() <= 0.5 * FILL_CREDIT_NS + 1.0,
            "{}",
            pacer.owed_ns()
        );
        // ...is paid back by at most the bound, not the 2.5 s of CPU it missed.
        let used = run_pacer(&mut pacer, 200, 1.0, |_| 0.0);
        let paid = (mean(&used) - 0.5) * 200.0 * PACE_NS as f64;
        assert!(paid <= 0.5 * FILL_CREDIT_NS + PACE_NS as f64, "{paid}");
    }

    #[test]
    fn starve_duty_fills_workers_in_order() {
        assert_eq!(duty_in_order(2.25, 0), 1.0);
        assert_eq!(duty_in_order(2.25, 1), 1.0);
        assert_eq!(duty_in_order(2.25, 2), 0.25);
        assert_eq!(duty_in_order(2.25, 3), 0.0);
        assert_eq!(duty_in_order(0.0, 0), 0.0);
    }

    #[test]
    fn duty_and_rate_helpers() {
        assert_eq!(duty_per_worker(1.5, 2), 0.75);
        assert_eq!(duty_per_worker(3.0, 2), 1.0);
        assert_eq!(duty_per_worker(1.0, 0), 0.0);
        assert_eq!(cores_between(0, 500_000_000, 1_000_000_000), 0.5);
        assert_eq!(cores_between(10, 5, 100), 0.0);
        assert_eq!(cores_between(0, 5, 0), 0.0);
    }
}
