//! Pure encoder/decoder for the tbf (token bucket filter) qdisc's `TCA_OPTIONS`. No I/O.
//!
//! A bandwidth limit on its own is a tbf, not a netem: it needs no sch_netem, which
//! kernels often lack (Amazon Linux 2023 ships it in `kernel-modules-extra`; this build
//! host's kernel has tbf and no netem), and it limits the way a slow link does, queueing
//! up to a bound and dropping beyond it, where netem's rate queues up to 1000 packets
//! whatever their size.
//!
//! Layout (facts from `linux/pkt_sched.h` and `net/sched/sch_tbf.c`):
//! - `TCA_TBF_PARMS` carries `struct tc_tbf_qopt`: two `struct tc_ratespec` (rate and
//!   peak rate, 12 bytes each: `u8 cell_log, u8 linklayer, u16 overhead, i16 cell_align,
//!   u16 mpu, u32 rate` in bytes per second), then `u32 limit` (bytes queued),
//!   `u32 buffer` and `u32 mtu` (psched ticks of 64 ns);
//! - a rate with `linklayer` = `TC_LINKLAYER_ETHERNET` needs no rate table
//!   (`TCA_TBF_RTAB`), which only the link-layer-unaware (legacy) form reads;
//! - rates of 2^32 bytes/s and more go in `TCA_TBF_RATE64` (u64), with the u32 field
//!   saturated; `TCA_TBF_BURST` (u32 bytes) sets the bucket size directly, overriding
//!   `buffer`;
//! - the kernel dumps `TCA_TBF_PARMS` (buffer as time, no `TCA_TBF_BURST`) and
//!   `TCA_TBF_RATE64` for rates that do not fit 32 bits;
//! - `limit` 0 would keep the previous child qdisc, which for a new tbf is noop: it
//!   would drop everything, so a limit is required.

use serde::{Deserialize, Serialize};

use crate::codec::{attributes_from, push_attribute};

/// `TCA_TBF_*` attribute numbers (enum order in `linux/pkt_sched.h`).
mod attr {
    pub const PARMS: u16 = 1;
    pub const RATE64: u16 = 4;
    pub const BURST: u16 = 6;
}

/// `struct tc_ratespec` is 12 bytes; `struct tc_tbf_qopt` two of them and three `u32`s.
const RATESPEC_LEN: usize = 12;
const QOPT_LEN: usize = 2 * RATESPEC_LEN + 12;
/// `TC_LINKLAYER_ETHERNET`.
const LINKLAYER_ETHERNET: u8 = 1;
/// psched ticks are 2^6 ns (`PSCHED_SHIFT`).
const PSCHED_SHIFT: u32 = 6;

/// The smallest bucket: a few full-size Ethernet frames, so an MTU-sized packet always
/// fits (tbf drops a packet larger than its bucket that it cannot segment).
pub const MIN_BURST_BYTES: u32 = 16 * 1024;
/// The bucket holds this much traffic at the limited rate (above the minimum).
pub const BURST_MS: u64 = 10;
/// The queue holds this much traffic at the limited rate beyond the bucket; a packet
/// that would wait longer is dropped, as on a congested link of that speed.
pub const QUEUE_MS: u64 = 100;

/// The largest bucket or queue a request may set: far beyond any link's bandwidth-delay
/// product (400 Gbit/s for 20 ms is 1 GB), and a queue is kernel memory on the node.
pub const MAX_SIZE_BYTES: u64 = 1 << 30;
/// What the kernel adds to an interface's MTU for the largest packet tbf sees
/// (`psched_mtu`: MTU + `hard_header_len`, 14 on Ethernet, veth, ifb and loopback).
pub const LINK_HEADER_BYTES: u32 = 14;

/// A tbf qdisc in human units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TbfSpec {
    pub rate_bytes_per_sec: u64,
    /// Bucket size: how much may leave at once after a quiet period.
    pub burst_bytes: u32,
    /// Bytes that may wait in the queue.
    pub limit_bytes: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TbfError {
    #[error("invalid tbf spec: {0}")]
    InvalidSpec(String),
    #[error("malformed tbf options: {0}")]
    Malformed(String),
}

impl TbfSpec {
    /// A limit of `rate_bytes_per_sec` with the agent's bucket and queue sizes:
    /// [`BURST_MS`] of traffic (at least [`MIN_BURST_BYTES`]) and [`QUEUE_MS`] more.
    pub fn for_rate(rate_bytes_per_sec: u64) -> TbfSpec {
        let of_ms = |ms: u64| rate_bytes_per_sec.saturating_mul(ms) / 1000;
        let burst = of_ms(BURST_MS).max(u64::from(MIN_BURST_BYTES));
        let burst_bytes = u32::try_from(burst).unwrap_or(u32::MAX);
        let limit = u64::from(burst_bytes).saturating_add(of_ms(QUEUE_MS));
        TbfSpec {
            rate_bytes_per_sec,
            burst_bytes,
            limit_bytes: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    /// As [`TbfSpec::for_rate`], with the bucket and the queue a request set itself
    /// (`None` keeps that default). A bucket set without a queue keeps the default queue
    /// behind it: the bucket plus [`QUEUE_MS`] at the rate.
    pub fn with_sizes(
        rate_bytes_per_sec: u64,
        burst_bytes: Option<u32>,
        limit_bytes: Option<u32>,
    ) -> TbfSpec {
        let default = TbfSpec::for_rate(rate_bytes_per_sec);
        let burst_bytes = burst_bytes.unwrap_or(default.burst_bytes);
        let queue = rate_bytes_per_sec.saturating_mul(QUEUE_MS) / 1000;
        let default_limit = u64::from(burst_bytes).saturating_add(queue);
        TbfSpec {
            rate_bytes_per_sec,
            burst_bytes,
            limit_bytes: limit_bytes
                .unwrap_or_else(|| u32::try_from(default_limit).unwrap_or(u32::MAX)),
        }
    }

    /// Whether a dump reads this bucket back as it is: the kernel reports the bucket as
    /// the time it takes at the rate, in 32 bits of 64 ns ticks (about 274 s), and a
    /// longer time wraps.
    pub fn bucket_reads_back(burst_bytes: u64, rate_bytes_per_sec: u64) -> bool {
        let ns = u128::from(burst_bytes) * 1_000_000_000 / u128::from(rate_bytes_per_sec.max(1));
        (ns >> PSCHED_SHIFT) <= u128::from(u32::MAX)
    }

    pub fn validate(&self) -> Result<(), TbfError> {
        if self.rate_bytes_per_sec == 0 {
            return Err(TbfError::InvalidSpec("the rate must be above 0".into()));
        }
        if self.burst_bytes == 0 || self.limit_bytes == 0 {
            return Err(TbfError::InvalidSpec(
                "burst and limit must be above 0 (a tbf with limit 0 drops everything)".into(),
            ));
        }
        Ok(())
    }
}

/// Bytes at `rate` that take `ticks` psched ticks, to the nearest byte: the bucket size
/// behind a dumped `buffer` (the tick is 64 ns, so a dump is exact to `rate` x 64 ns).
fn ticks_to_bytes(ticks: u32, rate_bytes_per_sec: u64) -> u64 {
    let ns = u128::from(ticks) << PSCHED_SHIFT;
    let bytes = (ns * u128::from(rate_bytes_per_sec) + 500_000_000) / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Psched ticks that `bytes` take at `rate` (`buffer` as tc computes it).
fn bytes_to_ticks(bytes: u32, rate_bytes_per_sec: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate_bytes_per_sec.max(1));
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

/// Encodes a spec into the tbf `TCA_OPTIONS` payload (nested attributes).
pub fn encode(spec: &TbfSpec) -> Result<Vec<u8>, TbfError> {
    spec.validate()?;
    let rate32 = u32::try_from(spec.rate_bytes_per_sec).unwrap_or(u32::MAX);
    let mut qopt = Vec::with_capacity(QOPT_LEN);
    // rate: cell_log 0, linklayer ethernet, overhead 0, cell_align 0, mpu 0, rate.
    qopt.extend_from_slice(&[0, LINKLAYER_ETHERNET]);
    qopt.extend_from_slice(&[0u8; 6]);
    qopt.extend_from_slice(&rate32.to_ne_bytes());
    // No peak rate.
    qopt.extend_from_slice(&[0u8; RATESPEC_LEN]);
    qopt.extend_from_slice(&spec.limit_bytes.to_ne_bytes());
    qopt.extend_from_slice(
        &bytes_to_ticks(spec.burst_bytes, spec.rate_bytes_per_sec).to_ne_bytes(),
    );
    qopt.extend_from_slice(&0u32.to_ne_bytes());

    let mut out = Vec::with_capacity(64);
    push_attribute(&mut out, attr::PARMS, &qopt);
    if spec.rate_bytes_per_sec > u64::from(u32::MAX) {
        push_attribute(
            &mut out,
            attr::RATE64,
            &spec.rate_bytes_per_sec.to_ne_bytes(),
        );
    }
    push_attribute(&mut out, attr::BURST, &spec.burst_bytes.to_ne_bytes());
    Ok(out)
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
}

/// Decodes a tbf `TCA_OPTIONS` payload, as dumped or as encoded. The bucket comes from
/// `TCA_TBF_BURST` when present (a request), else from `buffer` at the rate (a dump).
pub fn decode(bytes: &[u8]) -> Result<TbfSpec, TbfError> {
    let (mut qopt, mut rate64, mut burst) = (None, None, None);
    let attributes = attributes_from(bytes, 0).map_err(|e| TbfError::Malformed(e.to_string()))?;
    for attribute in attributes {
        let value = attribute.value;
        match attribute.kind {
            attr::PARMS if value.len() >= QOPT_LEN => qopt = Some(value),
            attr::RATE64 if value.len() >= 8 => {
                let mut word = [0u8; 8];
                word.copy_from_slice(&value[..8]);
                rate64 = Some(u64::from_ne_bytes(word));
            }
            attr::BURST => burst = u32_at(value, 0),
            _ => {}
        }
    }
    let qopt = qopt.ok_or_else(|| TbfError::Malformed("no TCA_TBF_PARMS".into()))?;
    let field = |at: usize| u32_at(qopt, at).unwrap_or_default();
    let rate_bytes_per_sec = rate64.unwrap_or(u64::from(field(8)));
    let limit_bytes = field(2 * RATESPEC_LEN);
    let buffer_ticks = field(2 * RATESPEC_LEN + 4);
    let burst_bytes = burst.unwrap_or_else(|| {
        u32::try_from(ticks_to_bytes(buffer_ticks, rate_bytes_per_sec)).unwrap_or(u32::MAX)
    });
    Ok(TbfSpec {
        rate_bytes_per_sec,
        burst_bytes,
        limit_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_holds_ten_milliseconds_and_the_queue_a_hundred_more() {
        // 100 Mbit/s: 125 kB per 10 ms.
        let spec = TbfSpec::for_rate(12_500_000);
        assert_eq!(spec.burst_bytes, 125_000);
        assert_eq!(spec.limit_bytes, 125_000 + 1_250_000);
        // 1 Mbit/s: 10 ms is 1250 bytes, less than a frame: the minimum bucket.
        let slow = TbfSpec::for_rate(125_000);
        assert_eq!(slow.burst_bytes, MIN_BURST_BYTES);
        assert_eq!(slow.limit_bytes, MIN_BURST_BYTES + 12_500);
        // 400 Gbit/s: sizes saturate at what the kernel's u32 fields hold.
        let fast = TbfSpec::for_rate(50_000_000_000);
        assert_eq!(fast.burst_bytes, 500_000_000);
        assert_eq!(fast.limit_bytes, u32::MAX);
    }

    #[test]
    fn sizes_a_request_sets_replace_the_defaults_one_by_one() {
        let rate = 250_000;
        assert_eq!(
            TbfSpec::with_sizes(rate, None, None),
            TbfSpec::for_rate(rate)
        );
        // A bucket alone keeps the default queue behind it: 100 ms at the rate more.
        let bucket = TbfSpec::with_sizes(rate, Some(4_000), None);
        assert_eq!(
            (bucket.burst_bytes, bucket.limit_bytes),
            (4_000, 4_000 + 25_000)
        );
        // A queue alone keeps the default bucket.
        let queue = TbfSpec::with_sizes(rate, None, Some(3_000));
        assert_eq!(
            (queue.burst_bytes, queue.limit_bytes),
            (MIN_BURST_BYTES, 3_000)
        );
        let both = TbfSpec::with_sizes(rate, Some(2_000), Some(60_000));
        assert_eq!((both.burst_bytes, both.limit_bytes), (2_000, 60_000));
        let bytes = encode(&both).unwrap();
        assert_eq!(decode(&bytes).unwrap(), both);
        // As the kernel dumps it (PARMS only: the bucket as time), exact at this rate.
        assert_eq!(decode(&bytes[..40]).unwrap(), both);
        // At the top rate the default queue behind a bucket saturates the kernel's u32.
        let fast = TbfSpec::with_sizes(u64::MAX / 8, Some(1 << 20), None);
        assert_eq!(fast.limit_bytes, u32::MAX);
    }

    #[test]
    fn a_bucket_reads_back_while_its_time_fits_32_bits_of_ticks() {
        // 2^32 ticks of 64 ns = 274.877906944 s.
        assert!(TbfSpec::bucket_reads_back(274_877, 1_000));
        assert!(!TbfSpec::bucket_reads_back(274_878, 1_000));
        assert!(TbfSpec::bucket_reads_back(MAX_SIZE_BYTES, 125_000_000));
        assert!(!TbfSpec::bucket_reads_back(MAX_SIZE_BYTES, 125_000));
    }

    #[test]
    fn encoded_options_carry_the_rate_the_queue_and_the_bucket() {
        let spec = TbfSpec::for_rate(1_000_000);
        let bytes = encode(&spec).unwrap();
        // PARMS (4 + 36), BURST (4 + 4).
        assert_eq!(bytes.len(), 40 + 8);
        assert_eq!(u16::from_ne_bytes([bytes[2], bytes[3]]), attr::PARMS);
        assert_eq!(bytes[4 + 1], LINKLAYER_ETHERNET, "no rate table needed");
        assert_eq!(u32_at(&bytes, 4 + 8), Some(1_000_000));
        assert_eq!(u32_at(&bytes, 4 + 24), Some(spec.limit_bytes));
        // 16384 bytes at 1 MB/s = 16.384 ms = 256000 ticks of 64 ns.
        assert_eq!(u32_at(&bytes, 4 + 28), Some(256_000));
        assert_eq!(u16::from_ne_bytes([bytes[42], bytes[43]]), attr::BURST);
        assert_eq!(u32_at(&bytes, 44), Some(MIN_BURST_BYTES));
        assert_eq!(decode(&bytes).unwrap(), spec);
    }

    #[test]
    fn rates_beyond_32_bits_go_in_rate64() {
        let spec = TbfSpec::for_rate(10_000_000_000);
        let bytes = encode(&spec).unwrap();
        assert_eq!(u32_at(&bytes, 4 + 8), Some(u32::MAX));
        assert_eq!(u16::from_ne_bytes([bytes[42], bytes[43]]), attr::RATE64);
        assert_eq!(decode(&bytes).unwrap(), spec);
    }

    #[test]
    fn a_dump_gives_the_bucket_from_the_buffer_time() {
        // What the kernel dumps for the spec above: PARMS only, buffer as time.
        let spec = TbfSpec::for_rate(1_000_000);
        let mut dumped = encode(&spec).unwrap();
        dumped.truncate(40);
        assert_eq!(decode(&dumped).unwrap(), spec);
    }

    #[test]
    fn specs_that_would_drop_everything_or_divide_by_zero_are_refused() {
        let zero_rate = TbfSpec {
            rate_bytes_per_sec: 0,
            ..TbfSpec::for_rate(1)
        };
        assert!(encode(&zero_rate).is_err());
        let zero_limit = TbfSpec {
            limit_bytes: 0,
            ..TbfSpec::for_rate(1_000_000)
        };
        assert!(encode(&zero_limit).is_err());
        assert!(decode(&[8, 0, 4, 0, 0, 0, 0, 0]).is_err(), "no PARMS");
        assert!(decode(&[40, 0, 1, 0]).is_err(), "cut short");
    }
}
