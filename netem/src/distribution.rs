//! netem delay distribution tables (`TCA_NETEM_DELAY_DIST`), computed from their
//! mathematical definitions.
//!
//! How netem uses a table (`tabledist()` in `net/sched/sch_netem.c`): it picks a random
//! entry `t` and delays by `delay + jitter * t / NETEM_DIST_SCALE`, so an entry is a
//! quantile of a zero-centred distribution in units of 1/8192 of the jitter. The kernel
//! accepts up to `NETEM_DIST_MAX` (16384) entries of `i16`.
//!
//! The definitions follow what iproute2's generators (`netem/normal.c`, `pareto.c`,
//! `paretonormal.c`) compute for the tables tc ships (`/usr/lib/<arch>/tc/*.dist`):
//! - normal: 4096 entries, entry `k` is the standard normal quantile at the upper edge of
//!   the `4k`-th of 16384 equal probability bins, `Φ⁻¹((4k + 0.5) / 16384)`, × 8192, rounded
//!   and clamped to `i16`. iproute2 finds the same quantile by scanning x in steps of 5e-5,
//!   so its entries are a grid point below ours. Against Debian's iproute2 6.1 tables:
//!   normal differs in 859 of 4096 entries by exactly 1, paretonormal in 200 by 1
//!   (inherited from normal), pareto is identical (test `close_to_iproute2_shipped_tables`).
//! - pareto: 4096 entries, entry `k` is the quantile of a Pareto distribution with shape
//!   α = 3 and scale 1 at survival probability `u = 1 - k/4096`, `u^(-1/3)`, shifted by
//!   its mean 1.5 and scaled by 4/3 × 8192, capped at 32767.
//! - paretonormal: `(normal + 3 × pareto) / 4` per entry (integer division truncating
//!   toward zero), using the normal quantile before clamping, then clamped to `i16`.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// `NETEM_DIST_SCALE` in `linux/pkt_sched.h`.
pub const NETEM_DIST_SCALE: f64 = 8192.0;
/// `NETEM_DIST_MAX`: the most entries the kernel accepts.
pub const NETEM_DIST_MAX: usize = 16384;
/// Entries in each table this module generates (as in iproute2's tables).
pub const TABLE_SIZE: usize = 4096;

/// Pareto shape parameter used by iproute2's tables.
const PARETO_SHAPE: f64 = 3.0;
/// Probability bins the normal quantiles are taken from (iproute2's TABLESIZE).
const NORMAL_BINS: f64 = 16384.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Normal,
    Pareto,
    ParetoNormal,
}

impl Distribution {
    pub const ALL: [Distribution; 3] = [
        Distribution::Normal,
        Distribution::Pareto,
        Distribution::ParetoNormal,
    ];

    /// The table to send as `TCA_NETEM_DELAY_DIST` (computed once per process).
    pub fn table(self) -> &'static [i16] {
        static NORMAL: OnceLock<Vec<i16>> = OnceLock::new();
        static PARETO: OnceLock<Vec<i16>> = OnceLock::new();
        static PARETO_NORMAL: OnceLock<Vec<i16>> = OnceLock::new();
        match self {
            Distribution::Normal => NORMAL.get_or_init(normal_table),
            Distribution::Pareto => PARETO.get_or_init(pareto_table),
            Distribution::ParetoNormal => PARETO_NORMAL.get_or_init(pareto_normal_table),
        }
    }

    /// Which generated table this is, if any (exact match).
    pub fn identify(table: &[i16]) -> Option<Distribution> {
        Distribution::ALL
            .into_iter()
            .find(|distribution| distribution.table() == table)
    }
}

/// Standard normal CDF.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal quantile by bisection on the CDF: slow but exact to double precision,
/// and the tables are computed once.
fn normal_quantile(p: f64) -> f64 {
    let (mut low, mut high) = (-10.0f64, 10.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (low + high);
        if normal_cdf(mid) < p {
            low = mid;
        } else {
            high = mid;
        }
        if high - low < 1e-12 {
            break;
        }
    }
    0.5 * (low + high)
}

fn clamp_i16(value: i64) -> i16 {
    value.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
}

/// Normal quantiles × 8192, rounded but not yet clamped.
fn normal_values() -> Vec<i64> {
    (0..TABLE_SIZE)
        .map(|k| {
            let p = (4.0 * k as f64 + 0.5) / NORMAL_BINS;
            (normal_quantile(p) * NETEM_DIST_SCALE).round_ties_even() as i64
        })
        .collect()
}

/// Mean-centred Pareto(α=3) quantiles scaled by 4/3 × 8192, capped at i16::MAX.
fn pareto_values() -> Vec<i64> {
    let mean = PARETO_SHAPE / (PARETO_SHAPE - 1.0);
    (0..TABLE_SIZE)
        .map(|k| {
            let survival = 1.0 - k as f64 / TABLE_SIZE as f64;
            let quantile = survival.powf(-1.0 / PARETO_SHAPE);
            let value = ((quantile - mean) * (4.0 / 3.0) * NETEM_DIST_SCALE).min(32767.0);
            value.round_ties_even() as i64
        })
        .collect()
}

pub fn normal_table() -> Vec<i16> {
    normal_values().into_iter().map(clamp_i16).collect()
}

pub fn pareto_table() -> Vec<i16> {
    pareto_values().into_iter().map(clamp_i16).collect()
}

pub fn pareto_normal_table() -> Vec<i16> {
    normal_values()
        .into_iter()
        .zip(pareto_values())
        .map(|(normal, pareto)| clamp_i16((normal + 3 * pareto) / 4))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_monotone(table: &[i16]) -> bool {
        table.windows(2).all(|pair| pair[0] <= pair[1])
    }

    #[test]
    fn tables_have_kernel_acceptable_size_and_are_monotone() {
        for distribution in Distribution::ALL {
            let table = distribution.table();
            assert_eq!(table.len(), TABLE_SIZE, "{distribution:?}");
            assert!(table.len() <= NETEM_DIST_MAX);
            assert!(is_monotone(table), "{distribution:?} is not monotone");
        }
    }

    #[test]
    fn normal_is_symmetric_with_unit_spread() {
        let table = Distribution::Normal.table();
        // Entry k sits at the top of bin 4k, its mirror 4096-k at the top of bin
        // 16384-4k: they mirror each other up to one bin (1/16384 in probability), which
        // is a few units near the centre and grows where the density thins out.
        for k in 64..TABLE_SIZE - 64 {
            let sum = i32::from(table[k]) + i32::from(table[TABLE_SIZE - k]);
            let tolerance = 3.max(i32::from(table[k]).abs() / 100);
            assert!(
                sum.abs() <= tolerance,
                "k={k}: {} vs {}",
                table[k],
                table[TABLE_SIZE - k]
            );
        }
        assert!(table[TABLE_SIZE / 2].abs() <= 2);
        let mean_square = table
            .iter()
            .map(|&v| (f64::from(v) / NETEM_DIST_SCALE).powi(2))
            .sum::<f64>()
            / TABLE_SIZE as f64;
        assert!(
            (mean_square.sqrt() - 1.0).abs() < 0.02,
            "sigma {}",
            mean_square.sqrt()
        );
        // The far left tail is below -4 sigma and must be clamped.
        assert_eq!(table[0], i16::MIN);
    }

    #[test]
    fn pareto_starts_at_minus_mean_and_is_capped() {
        let table = Distribution::Pareto.table();
        // (1 - 1.5) * 4/3 * 8192 = -5461.33
        assert_eq!(table[0], -5461);
        assert_eq!(*table.last().unwrap_or(&0), i16::MAX);
    }

    #[test]
    fn identify_finds_each_table() {
        for distribution in Distribution::ALL {
            assert_eq!(
                Distribution::identify(distribution.table()),
                Some(distribution)
            );
        }
        assert_eq!(Distribution::identify(&[1, 2, 3]), None);
    }

    fn shipped_table(name: &str) -> Vec<i16> {
        let path = format!("/usr/lib/x86_64-linux-gnu/tc/{name}.dist");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!("{path} (from Debian's iproute2) is needed for this comparison: {err}")
        });
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split_whitespace())
            .map(|word| word.parse().unwrap())
            .collect()
    }

    /// Largest absolute difference to iproute2's shipped table, and the count of entries
    /// that differ.
    fn compare(ours: &[i16], theirs: &[i16]) -> (i32, usize) {
        assert_eq!(ours.len(), theirs.len());
        let diffs: Vec<i32> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        (
            diffs.iter().copied().max().unwrap_or(0),
            diffs.iter().filter(|d| **d != 0).count(),
        )
    }

    #[test]
    fn close_to_iproute2_shipped_tables() {
        let (max_diff, differing) = compare(&normal_table(), &shipped_table("normal"));
        println!("normal: max diff {max_diff}, {differing} entries differ");
        assert!(max_diff <= 1, "normal max diff {max_diff}");
        let (max_diff, differing) = compare(&pareto_table(), &shipped_table("pareto"));
        println!("pareto: max diff {max_diff}, {differing} entries differ");
        assert_eq!(
            max_diff, 0,
            "pareto is a closed formula: it should match exactly"
        );
        let (max_diff, differing) = compare(&pareto_normal_table(), &shipped_table("paretonormal"));
        println!("paretonormal: max diff {max_diff}, {differing} entries differ");
        assert!(max_diff <= 1, "paretonormal max diff {max_diff}");
    }
}
