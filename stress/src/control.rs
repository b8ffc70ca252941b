//! The CPU stressor's feedback controller, kept pure (no clocks, no threads) so it can be
//! tested against a simulated plant.
//!
//! Every tick the stressor measures a CPU rate in cores (Fill: the whole cgroup, workload
//! included; Add: the stressor's own threads) and the controller moves its command (how many
//! cores the workers should burn) by `GAIN * (target - measured)`, clamped to `[0, workers]`.
//!
//! Why an integral controller: the plant is "measured = offset + efficiency * command", where the
//! offset is the workload (Fill) and the efficiency (< 1 when the machine is busy or a sleep
//! overshoots, ≈ 1 otherwise) is unknown. Integral action removes both biases without modelling
//! them. The error shrinks by `|1 - GAIN * efficiency|` per tick: with GAIN = 0.5 it halves every
//! tick at efficiency 1 (within 1 % of the target after 7 ticks, under 1.5 s at the 200 ms
//! tick), and the loop stays stable for any efficiency below 4. A larger gain reacts faster but
//! passes more measurement noise into the command; 0.5 passes half of it, which on a 200 ms window
//! of a 20 ms duty cycle is well under 1 % of a core. The clamp is the anti-windup: when the
//! target is out of reach (the workload alone exceeds it, or the quota throttles) the command
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
