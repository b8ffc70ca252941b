//! netem's `TCA_OPTIONS` codec. Two properties on each input:
//! - the input bytes as a dump: `decode` never panics, and a decoded spec that encodes
//!   decodes back to itself (what the agent reads back it can write again unchanged);
//! - the input as a structured spec: whatever `encode` accepts decodes to the same spec
//!   (percentages compared on the kernel's probability scale, which is what is sent),
//!   and encoding that again gives the same bytes.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chaos_netem::Distribution;
use chaos_netem::codec::{self, NetemSpec, percent_to_probability};
use libfuzzer_sys::fuzz_target;

/// A percentage: mostly in range (what validation lets through), sometimes anything.
#[derive(Debug)]
struct Percent(f64);

impl<'a> Arbitrary<'a> for Percent {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Percent(match u.int_in_range(0u8..=3)? {
            0 => 0.0,
            1 => f64::from(u.int_in_range(0u32..=100_000)?) / 1000.0,
            2 => probability_percent(u.arbitrary()?),
            _ => u.arbitrary()?,
        }))
    }
}

/// A percentage that is exactly a kernel probability (as decode returns them).
fn probability_percent(p: u32) -> f64 {
    codec::probability_to_percent(p)
}

#[derive(Debug, Arbitrary)]
struct SpecInput {
    delay_us: u64,
    jitter_us: u64,
    delay_correlation: Percent,
    distribution: Option<u8>,
    loss: Percent,
    loss_correlation: Percent,
    duplicate: Percent,
    duplicate_correlation: Percent,
    corrupt: Percent,
    corrupt_correlation: Percent,
    reorder: Percent,
    reorder_correlation: Percent,
    reorder_gap: u32,
    rate_bytes_per_sec: u64,
    limit_packets: u32,
    small_times: bool,
}

impl SpecInput {
    fn spec(&self) -> NetemSpec {
        // Most real delays are below a minute; keep the fuzzer in that range half the time.
        let time = |us: u64| {
            if self.small_times {
                us % 120_000_000
            } else {
                us
            }
        };
        NetemSpec {
            delay_us: time(self.delay_us),
            jitter_us: time(self.jitter_us),
            delay_correlation_pct: self.delay_correlation.0,
            distribution: self
                .distribution
                .map(|d| Distribution::ALL[usize::from(d) % Distribution::ALL.len()]),
            loss_pct: self.loss.0,
            loss_correlation_pct: self.loss_correlation.0,
            duplicate_pct: self.duplicate.0,
            duplicate_correlation_pct: self.duplicate_correlation.0,
            corrupt_pct: self.corrupt.0,
            corrupt_correlation_pct: self.corrupt_correlation.0,
            reorder_pct: self.reorder.0,
            reorder_correlation_pct: self.reorder_correlation.0,
            reorder_gap: self.reorder_gap,
            rate_bytes_per_sec: self.rate_bytes_per_sec,
            limit_packets: self.limit_packets,
        }
    }
}

/// The spec as the kernel receives it: percentages as probabilities.
fn on_the_wire(spec: &NetemSpec) -> (Vec<u64>, Vec<u32>, Option<Distribution>) {
    let percents = [
        spec.delay_correlation_pct,
        spec.loss_pct,
        spec.loss_correlation_pct,
        spec.duplicate_pct,
        spec.duplicate_correlation_pct,
        spec.corrupt_pct,
        spec.corrupt_correlation_pct,
        spec.reorder_pct,
        spec.reorder_correlation_pct,
    ];
    (
        vec![
            spec.delay_us,
            spec.jitter_us,
            u64::from(spec.reorder_gap),
            spec.rate_bytes_per_sec,
            u64::from(spec.limit_packets),
        ],
        percents
            .iter()
            .map(|p| percent_to_probability(*p))
            .collect(),
        spec.distribution,
    )
}

fuzz_target!(|data: &[u8]| {
    // The bytes as a kernel dump.
    if let Ok(decoded) = codec::decode(data)
        && let Ok(bytes) = codec::encode(&decoded.spec)
    {
        let again = codec::decode(&bytes).expect("encode's output decodes");
        assert!(again.unmodelled_attribute_kinds.is_empty());
        assert_eq!(on_the_wire(&again.spec), on_the_wire(&decoded.spec));
        assert_eq!(codec::encode(&again.spec).as_ref(), Ok(&bytes));
    }
    // The bytes as a structured spec.
    let Ok(input) = SpecInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let spec = input.spec();
    let Ok(bytes) = codec::encode(&spec) else {
        return;
    };
    assert!(spec.validate().is_ok());
    let decoded = codec::decode(&bytes)
        .unwrap_or_else(|e| panic!("{spec:?} encoded to bytes that do not decode: {e}"));
    assert!(
        decoded.unmodelled_attribute_kinds.is_empty(),
        "{spec:?}: {:?}",
        decoded.unmodelled_attribute_kinds
    );
    assert_eq!(on_the_wire(&decoded.spec), on_the_wire(&spec), "{spec:?}");
    assert_eq!(
        codec::encode(&decoded.spec).as_ref(),
        Ok(&bytes),
        "{spec:?}"
    );
});
