//! Pure encoder/decoder for the netem qdisc's `TCA_OPTIONS` payload. No I/O.
//!
//! Layout (facts from the kernel's uapi header `linux/pkt_sched.h` and the behaviour of
//! `net/sched/sch_netem.c`):
//! - the payload starts with `struct tc_netem_qopt`: six native-endian `u32`s
//!   (latency, limit, loss, gap, duplicate, jitter), 24 bytes; latency/jitter are in
//!   psched ticks of 64 ns (`PSCHED_SHIFT` = 6);
//! - netlink attributes follow at offset `NLA_ALIGN(24)` = 24, parsed by the kernel as
//!   `TCA_NETEM_*`; `TCA_NETEM_LATENCY64` / `TCA_NETEM_JITTER64` (s64 nanoseconds)
//!   override the legacy tick fields;
//! - probabilities are fractions of `u32::MAX` (`0` = never, `u32::MAX` = always).
//!
//! The encoder writes the attributes in the order the kernel dumps them (latency64,
//! jitter64, corr, reorder, corrupt, rate), with the legacy tick fields set as the kernel
//! reports them, so `encode(decode(dump)) == dump` for everything a [`NetemSpec`] can
//! express.

use serde::{Deserialize, Serialize};

use crate::distribution::Distribution;

/// `struct tc_netem_qopt` is six `u32`s.
pub const QOPT_LEN: usize = 24;

/// psched ticks are 2^6 ns (`PSCHED_SHIFT` in `include/net/pkt_sched.h`).
const PSCHED_SHIFT: u32 = 6;

/// `TCA_NETEM_*` attribute numbers (enum order in `linux/pkt_sched.h`).
pub mod attr {
    pub const CORR: u16 = 1;
    pub const DELAY_DIST: u16 = 2;
    pub const REORDER: u16 = 3;
    pub const CORRUPT: u16 = 4;
    pub const LOSS: u16 = 5;
    pub const RATE: u16 = 6;
    pub const ECN: u16 = 7;
    pub const RATE64: u16 = 8;
    pub const PAD: u16 = 9;
    pub const LATENCY64: u16 = 10;
    pub const JITTER64: u16 = 11;
    pub const SLOT: u16 = 12;
    pub const SLOT_DIST: u16 = 13;
    pub const PRNG_SEED: u16 = 14;
}

/// The netlink attribute header is `u16 len, u16 type`; the top two type bits are flags.
const NLA_HEADER_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The netem default queue limit (what `tc` uses when `limit` is not given).
pub const DEFAULT_LIMIT_PACKETS: u32 = 1000;

/// The largest jitter netem keeps, 2^31 - 1 ns: a larger one is silently cut to that
/// (measured on Debian's 6.1 kernel, `vm_netem`), so it is refused instead.
pub const MAX_JITTER_US: u64 = i32::MAX as u64 / 1000;

/// What a netem qdisc does to packets, in human units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetemSpec {
    pub delay_us: u64,
    pub jitter_us: u64,
    pub delay_correlation_pct: f64,
    /// The shape of the jitter; `None` = the kernel's built-in uniform distribution.
    pub distribution: Option<Distribution>,
    pub loss_pct: f64,
    pub loss_correlation_pct: f64,
    pub duplicate_pct: f64,
    pub duplicate_correlation_pct: f64,
    pub corrupt_pct: f64,
    pub corrupt_correlation_pct: f64,
    pub reorder_pct: f64,
    pub reorder_correlation_pct: f64,
    /// Every `reorder_gap`-th packet is a reorder candidate; needed (>= 1) with `reorder_pct`.
    pub reorder_gap: u32,
    /// 0 = no rate limit.
    pub rate_bytes_per_sec: u64,
    pub limit_packets: u32,
}

impl Default for NetemSpec {
    fn default() -> Self {
        Self {
            delay_us: 0,
            jitter_us: 0,
            delay_correlation_pct: 0.0,
            distribution: None,
            loss_pct: 0.0,
            loss_correlation_pct: 0.0,
            duplicate_pct: 0.0,
            duplicate_correlation_pct: 0.0,
            corrupt_pct: 0.0,
            corrupt_correlation_pct: 0.0,
            reorder_pct: 0.0,
            reorder_correlation_pct: 0.0,
            reorder_gap: 0,
            rate_bytes_per_sec: 0,
            limit_packets: DEFAULT_LIMIT_PACKETS,
        }
    }
}

/// A decoded netem payload: the spec plus the attribute kinds this crate does not model
/// (ECN, loss models, slots, PRNG seed, ...), so a caller can tell a lossy view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodedNetem {
    pub spec: NetemSpec,
    pub unmodelled_attribute_kinds: Vec<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("invalid netem spec: {0}")]
    InvalidSpec(String),
    #[error("netem options too short: {len} bytes, need at least {QOPT_LEN}")]
    TooShort { len: usize },
    #[error("malformed netem attribute at offset {offset}: {reason}")]
    MalformedAttribute { offset: usize, reason: String },
}

impl NetemSpec {
    /// Rejects specs the kernel would accept but that do not do what they say.
    pub fn validate(&self) -> Result<(), CodecError> {
        let percentages = [
            ("delay_correlation_pct", self.delay_correlation_pct),
            ("loss_pct", self.loss_pct),
            ("loss_correlation_pct", self.loss_correlation_pct),
            ("duplicate_pct", self.duplicate_pct),
            ("duplicate_correlation_pct", self.duplicate_correlation_pct),
            ("corrupt_pct", self.corrupt_pct),
            ("corrupt_correlation_pct", self.corrupt_correlation_pct),
            ("reorder_pct", self.reorder_pct),
            ("reorder_correlation_pct", self.reorder_correlation_pct),
        ];
        for (name, value) in percentages {
            if !(0.0..=100.0).contains(&value) {
                return Err(CodecError::InvalidSpec(format!(
                    "{name} must be within 0..=100, got {value}"
                )));
            }
        }
        let max_us = i64::MAX as u64 / 1000;
        if self.delay_us > max_us {
            return Err(CodecError::InvalidSpec(
                "delay too large for 64-bit nanoseconds".into(),
            ));
        }
        if self.jitter_us > MAX_JITTER_US {
            return Err(CodecError::InvalidSpec(format!(
                "jitter above {MAX_JITTER_US} us, which the kernel would cut to that"
            )));
        }
        // netem reorders by sending some packets at once while the others wait out the
        // delay: without a delay nothing is reordered, and with gap 0 the kernel never
        // picks a packet for reordering (tc silently turns gap 0 into 1; we make it explicit).
        if self.reorder_pct > 0.0 && self.delay_us == 0 {
            return Err(CodecError::InvalidSpec("reordering needs a delay".into()));
        }
        if self.reorder_pct > 0.0 && self.reorder_gap == 0 {
            return Err(CodecError::InvalidSpec(
                "reordering needs reorder_gap >= 1".into(),
            ));
        }
        if self.distribution.is_some() && self.jitter_us == 0 {
            return Err(CodecError::InvalidSpec(
                "a delay distribution shapes the jitter: it needs jitter_us > 0".into(),
            ));
        }
        if self.limit_packets == 0 {
            return Err(CodecError::InvalidSpec(
                "limit_packets must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Percent (0..=100) to the kernel's probability scale, rounding like C's `rint`.
pub fn percent_to_probability(pct: f64) -> u32 {
    let scaled = (pct / 100.0 * f64::from(u32::MAX)).round_ties_even();
    scaled.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The kernel's probability scale back to percent.
pub fn probability_to_percent(probability: u32) -> f64 {
    f64::from(probability) * 100.0 / f64::from(u32::MAX)
}

fn ns_to_ticks(ns: u64) -> u32 {
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

fn push_u32s(out: &mut Vec<u8>, values: &[u32]) {
    for value in values {
        out.extend_from_slice(&value.to_ne_bytes());
    }
}

pub(crate) fn push_attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    // Attribute values here are all multiples of 4 bytes except a distribution table with
    // an odd entry count; pad to 4 as netlink requires.
    let len = NLA_HEADER_LEN + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (align4(len) - len), 0);
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Encodes a spec into the netem `TCA_OPTIONS` payload.
pub fn encode(spec: &NetemSpec) -> Result<Vec<u8>, CodecError> {
    spec.validate()?;
    let delay_ns = spec.delay_us * 1000;
    let jitter_ns = spec.jitter_us * 1000;
    let mut out = Vec::with_capacity(128);
    push_u32s(
        &mut out,
        &[
            ns_to_ticks(delay_ns),
            spec.limit_packets,
            percent_to_probability(spec.loss_pct),
            spec.reorder_gap,
            percent_to_probability(spec.duplicate_pct),
            ns_to_ticks(jitter_ns),
        ],
    );
    // delay_us/jitter_us are bounded by validate(), so these fit in i64.
    push_attribute(&mut out, attr::LATENCY64, &(delay_ns as i64).to_ne_bytes());
    push_attribute(&mut out, attr::JITTER64, &(jitter_ns as i64).to_ne_bytes());

    let mut corr = Vec::with_capacity(12);
    push_u32s(
        &mut corr,
        &[
            percent_to_probability(spec.delay_correlation_pct),
            percent_to_probability(spec.loss_correlation_pct),
            percent_to_probability(spec.duplicate_correlation_pct),
        ],
    );
    push_attribute(&mut out, attr::CORR, &corr);

    let mut reorder = Vec::with_capacity(8);
    push_u32s(
        &mut reorder,
        &[
            percent_to_probability(spec.reorder_pct),
            percent_to_probability(spec.reorder_correlation_pct),
        ],
    );
    push_attribute(&mut out, attr::REORDER, &reorder);

    let mut corrupt = Vec::with_capacity(8);
    push_u32s(
        &mut corrupt,
        &[
            percent_to_probability(spec.corrupt_pct),
            percent_to_probability(spec.corrupt_correlation_pct),
        ],
    );
    push_attribute(&mut out, attr::CORRUPT, &corrupt);

    // struct tc_netem_rate { u32 rate; s32 packet_overhead; u32 cell_size; s32 cell_overhead }
    // Rates that do not fit 32 bits go into TCA_NETEM_RATE64 with rate = ~0, as the kernel
    // dumps them.
    let rate32 = match u32::try_from(spec.rate_bytes_per_sec) {
        Ok(rate) => rate,
        Err(_) => {
            push_attribute(
                &mut out,
                attr::RATE64,
                &spec.rate_bytes_per_sec.to_ne_bytes(),
            );
            u32::MAX
        }
    };
    let mut rate = Vec::with_capacity(16);
    push_u32s(&mut rate, &[rate32, 0, 0, 0]);
    push_attribute(&mut out, attr::RATE, &rate);

    if let Some(distribution) = spec.distribution {
        let table = distribution.table();
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
        push_attribute(&mut out, attr::DELAY_DIST, &bytes);
    }
    Ok(out)
}

fn read_u32(bytes: &[u8], index: usize) -> u32 {
    let start = index * 4;
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[start..start + 4]);
    u32::from_ne_bytes(word)
}

fn expect_len(value: &[u8], min_len: usize, offset: usize, what: &str) -> Result<(), CodecError> {
    if value.len() < min_len {
        return Err(CodecError::MalformedAttribute {
            offset,
            reason: format!("{what} has {} bytes, need {min_len}", value.len()),
        });
    }
    Ok(())
}

fn read_i64(value: &[u8]) -> i64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&value[..8]);
    i64::from_ne_bytes(word)
}

/// One netlink attribute inside the payload.
pub(crate) struct RawAttribute<'a> {
    pub(crate) offset: usize,
    pub(crate) kind: u16,
    pub(crate) value: &'a [u8],
}

/// Splits the attribute area after the qopt struct into attributes.
fn attributes(bytes: &[u8]) -> Result<Vec<RawAttribute<'_>>, CodecError> {
    attributes_from(bytes, QOPT_LEN)
}

/// Splits `bytes` from `offset` on into netlink attributes (tbf's options are nothing else).
pub(crate) fn attributes_from(
    bytes: &[u8],
    mut offset: usize,
) -> Result<Vec<RawAttribute<'_>>, CodecError> {
    let mut found = Vec::new();
    while offset + NLA_HEADER_LEN <= bytes.len() {
        let len = usize::from(u16::from_ne_bytes([bytes[offset], bytes[offset + 1]]));
        let kind = u16::from_ne_bytes([bytes[offset + 2], bytes[offset + 3]]) & NLA_TYPE_MASK;
        if len < NLA_HEADER_LEN || offset + len > bytes.len() {
            return Err(CodecError::MalformedAttribute {
                offset,
                reason: format!("length {len} does not fit in {} bytes", bytes.len()),
            });
        }
        found.push(RawAttribute {
            offset,
            kind,
            value: &bytes[offset + NLA_HEADER_LEN..offset + len],
        });
        offset += align4(len);
    }
    Ok(found)
}

/// Decodes a netem `TCA_OPTIONS` payload (as dumped by the kernel or built by [`encode`]).
///
/// Lossy where the kernel is more precise than a [`NetemSpec`]: nanosecond delays are
/// truncated to microseconds. The kernel never dumps the delay distribution table, so a
/// decoded kernel dump has `distribution: None`.
pub fn decode(bytes: &[u8]) -> Result<DecodedNetem, CodecError> {
    if bytes.len() < QOPT_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    let mut spec = NetemSpec {
        limit_packets: read_u32(bytes, 1),
        loss_pct: probability_to_percent(read_u32(bytes, 2)),
        reorder_gap: read_u32(bytes, 3),
        duplicate_pct: probability_to_percent(read_u32(bytes, 4)),
        ..NetemSpec::default()
    };
    let mut delay_ns = u64::from(read_u32(bytes, 0)) << PSCHED_SHIFT;
    let mut jitter_ns = u64::from(read_u32(bytes, 5)) << PSCHED_SHIFT;
    let mut rate64 = None;
    let mut rate32 = 0u32;
    let mut unmodelled_attribute_kinds = Vec::new();

    for RawAttribute {
        offset,
        kind,
        value,
    } in attributes(bytes)?
    {
        match kind {
            attr::LATENCY64 => {
                expect_len(value, 8, offset, "TCA_NETEM_LATENCY64")?;
                delay_ns = read_i64(value).max(0) as u64;
            }
            attr::JITTER64 => {
                expect_len(value, 8, offset, "TCA_NETEM_JITTER64")?;
                jitter_ns = read_i64(value).unsigned_abs();
            }
            attr::CORR => {
                expect_len(value, 12, offset, "TCA_NETEM_CORR")?;
                spec.delay_correlation_pct = probability_to_percent(read_u32(value, 0));
                spec.loss_correlation_pct = probability_to_percent(read_u32(value, 1));
                spec.duplicate_correlation_pct = probability_to_percent(read_u32(value, 2));
            }
            attr::REORDER => {
                expect_len(value, 8, offset, "TCA_NETEM_REORDER")?;
                spec.reorder_pct = probability_to_percent(read_u32(value, 0));
                spec.reorder_correlation_pct = probability_to_percent(read_u32(value, 1));
            }
            attr::CORRUPT => {
                expect_len(value, 8, offset, "TCA_NETEM_CORRUPT")?;
                spec.corrupt_pct = probability_to_percent(read_u32(value, 0));
                spec.corrupt_correlation_pct = probability_to_percent(read_u32(value, 1));
            }
            attr::RATE => {
                expect_len(value, 16, offset, "TCA_NETEM_RATE")?;
                rate32 = read_u32(value, 0);
                if read_u32(value, 1) != 0 || read_u32(value, 2) != 0 || read_u32(value, 3) != 0 {
                    // Packet/cell overheads are not modelled.
                    unmodelled_attribute_kinds.push(kind);
                }
            }
            attr::RATE64 => {
                expect_len(value, 8, offset, "TCA_NETEM_RATE64")?;
                rate64 = Some(read_i64(value) as u64);
            }
            attr::DELAY_DIST => {
                let table: Vec<i16> = value
                    .chunks_exact(2)
                    .map(|pair| i16::from_ne_bytes([pair[0], pair[1]]))
                    .collect();
                spec.distribution = Distribution::identify(&table);
                if spec.distribution.is_none() {
                    unmodelled_attribute_kinds.push(kind);
                }
            }
            attr::PAD => {}
            _ => unmodelled_attribute_kinds.push(kind),
        }
    }
    spec.delay_us = delay_ns / 1000;
    spec.jitter_us = jitter_ns / 1000;
    // The kernel keeps max(rate, rate64), and dumps rate = ~0 when rate64 is present.
    spec.rate_bytes_per_sec = match rate64 {
        Some(rate) => rate.max(u64::from(rate32)),
        None => u64::from(rate32),
    };
    Ok(DecodedNetem {
        spec,
        unmodelled_attribute_kinds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    #[test]
    fn percent_scale_matches_tc_rounding() {
        // tc: rint(0.05 * UINT32_MAX) = rint(214748364.75) = 214748365
        assert_eq!(percent_to_probability(5.0), 214_748_365);
        // rint(0.25 * UINT32_MAX) = rint(1073741823.75) = 1073741824
        assert_eq!(percent_to_probability(25.0), 1_073_741_824);
        assert_eq!(percent_to_probability(100.0), u32::MAX);
        assert_eq!(percent_to_probability(0.0), 0);
        assert!((probability_to_percent(214_748_365) - 5.0).abs() < 1e-6);
    }

    #[test]
    fn encodes_delay_50ms_byte_exact() {
        let spec = NetemSpec {
            delay_us: 50_000,
            ..NetemSpec::default()
        };
        let bytes = encode(&spec).unwrap();
        // qopt 24 + latency64 12 + jitter64 12 + corr 16 + reorder 12 + corrupt 12 + rate 20
        assert_eq!(bytes.len(), 108);
        let w = words(&bytes);
        // 50 ms = 50_000_000 ns = 781_250 ticks of 64 ns.
        assert_eq!(&w[0..6], &[781_250, 1000, 0, 0, 0, 0]);
        // TCA_NETEM_LATENCY64: len 12, type 10, s64 ns
        assert_eq!(&w[6..7], &[12 | (10 << 16)]);
        assert_eq!(&bytes[28..36], &50_000_000i64.to_ne_bytes());
        // TCA_NETEM_JITTER64: len 12, type 11, 0
        assert_eq!(&w[9..12], &[12 | (11 << 16), 0, 0]);
        // TCA_NETEM_CORR: len 16, type 1, three zero probabilities
        assert_eq!(&w[12..16], &[16 | (1 << 16), 0, 0, 0]);
        // TCA_NETEM_REORDER: len 12, type 3
        assert_eq!(&w[16..19], &[12 | (3 << 16), 0, 0]);
        // TCA_NETEM_CORRUPT: len 12, type 4
        assert_eq!(&w[19..22], &[12 | (4 << 16), 0, 0]);
        // TCA_NETEM_RATE: len 20, type 6, struct tc_netem_rate all zero
        assert_eq!(&w[22..27], &[20 | (6 << 16), 0, 0, 0, 0]);
    }

    #[test]
    fn encodes_tc_example_byte_exact() {
        // tc qdisc add ... netem delay 50ms 10ms 25% loss 5% 50% duplicate 1% corrupt 0.1%
        let spec = NetemSpec {
            delay_us: 50_000,
            jitter_us: 10_000,
            delay_correlation_pct: 25.0,
            loss_pct: 5.0,
            loss_correlation_pct: 50.0,
            duplicate_pct: 1.0,
            corrupt_pct: 0.1,
            ..NetemSpec::default()
        };
        let w = words(&encode(&spec).unwrap());
        // jitter 10 ms = 156_250 ticks; loss rint(0.05*(2^32-1)); dup rint(0.01*(2^32-1))
        assert_eq!(
            &w[0..6],
            &[781_250, 1000, 214_748_365, 0, 42_949_673, 156_250]
        );
        // corr: 25% -> 1073741824, 50% -> rint(2147483647.5) = 2147483648, dup corr 0
        assert_eq!(
            &w[12..16],
            &[16 | (1 << 16), 1_073_741_824, 2_147_483_648, 0]
        );
        // corrupt 0.1% -> rint(4294967.295) = 4294967
        assert_eq!(&w[19..22], &[12 | (4 << 16), 4_294_967, 0]);
    }

    #[test]
    fn round_trips_every_field() {
        let spec = NetemSpec {
            delay_us: 123_456,
            jitter_us: 7_890,
            delay_correlation_pct: 12.5,
            distribution: Some(Distribution::Pareto),
            loss_pct: 3.0,
            loss_correlation_pct: 40.0,
            duplicate_pct: 2.0,
            duplicate_correlation_pct: 10.0,
            corrupt_pct: 0.5,
            corrupt_correlation_pct: 5.0,
            reorder_pct: 25.0,
            reorder_correlation_pct: 50.0,
            reorder_gap: 5,
            rate_bytes_per_sec: 125_000,
            limit_packets: 5000,
        };
        let bytes = encode(&spec).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert!(decoded.unmodelled_attribute_kinds.is_empty());
        let got = decoded.spec;
        assert_eq!(got.delay_us, spec.delay_us);
        assert_eq!(got.jitter_us, spec.jitter_us);
        assert_eq!(got.distribution, Some(Distribution::Pareto));
        assert_eq!(got.reorder_gap, 5);
        assert_eq!(got.rate_bytes_per_sec, 125_000);
        assert_eq!(got.limit_packets, 5000);
        for (a, b) in [
            (got.loss_pct, spec.loss_pct),
            (got.delay_correlation_pct, spec.delay_correlation_pct),
            (got.loss_correlation_pct, spec.loss_correlation_pct),
            (got.duplicate_pct, spec.duplicate_pct),
            (
                got.duplicate_correlation_pct,
                spec.duplicate_correlation_pct,
            ),
            (got.corrupt_pct, spec.corrupt_pct),
            (got.corrupt_correlation_pct, spec.corrupt_correlation_pct),
            (got.reorder_pct, spec.reorder_pct),
            (got.reorder_correlation_pct, spec.reorder_correlation_pct),
        ] {
            assert!((a - b).abs() < 1e-6, "{a} != {b}");
        }
        // Re-encoding the decoded spec gives the same bytes.
        assert_eq!(encode(&got).unwrap(), bytes);
    }

    #[test]
    fn large_rate_goes_into_rate64() {
        let spec = NetemSpec {
            rate_bytes_per_sec: 10 * (1u64 << 32),
            ..NetemSpec::default()
        };
        let bytes = encode(&spec).unwrap();
        let decoded = decode(&bytes).unwrap().spec;
        assert_eq!(decoded.rate_bytes_per_sec, 10 * (1u64 << 32));
    }

    #[test]
    fn legacy_ticks_are_used_without_latency64() {
        // Only the struct: 1000 ticks = 64 us delay, 500 ticks = 32 us jitter.
        let mut bytes = Vec::new();
        push_u32s(&mut bytes, &[1000, 1000, 0, 0, 0, 500]);
        let spec = decode(&bytes).unwrap().spec;
        assert_eq!(spec.delay_us, 64);
        assert_eq!(spec.jitter_us, 32);
    }

    #[test]
    fn unknown_attributes_are_reported_not_dropped_silently() {
        let mut bytes = encode(&NetemSpec::default()).unwrap();
        push_attribute(&mut bytes, attr::ECN, &1u32.to_ne_bytes());
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.unmodelled_attribute_kinds, vec![attr::ECN]);
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(decode(&[0u8; 10]), Err(CodecError::TooShort { len: 10 }));
        let mut bytes = encode(&NetemSpec::default()).unwrap();
        bytes.truncate(QOPT_LEN + 6); // cut inside the first attribute
        assert!(matches!(
            decode(&bytes),
            Err(CodecError::MalformedAttribute { offset: 24, .. })
        ));
    }

    #[test]
    fn validation_rejects_meaningless_specs() {
        let bad = [
            NetemSpec {
                loss_pct: 101.0,
                ..NetemSpec::default()
            },
            NetemSpec {
                reorder_pct: 10.0,
                reorder_gap: 1,
                ..NetemSpec::default()
            },
            NetemSpec {
                delay_us: 10,
                reorder_pct: 10.0,
                ..NetemSpec::default()
            },
            NetemSpec {
                delay_us: 10,
                distribution: Some(Distribution::Normal),
                ..NetemSpec::default()
            },
            NetemSpec {
                limit_packets: 0,
                ..NetemSpec::default()
            },
            NetemSpec {
                delay_us: 10,
                jitter_us: MAX_JITTER_US + 1,
                ..NetemSpec::default()
            },
        ];
        for spec in bad {
            assert!(
                matches!(encode(&spec), Err(CodecError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
        let widest = NetemSpec {
            delay_us: 10,
            jitter_us: MAX_JITTER_US,
            ..NetemSpec::default()
        };
        assert!(encode(&widest).is_ok());
    }
}
