//! tbf's `TCA_OPTIONS` codec. On each input:
//! - the bytes as a dump: `decode` never panics; a decoded spec that encodes decodes back
//!   to itself;
//! - the input as a spec: whatever `encode` accepts decodes to exactly that spec, and
//!   the agent's own `for_rate` sizing is always accepted for a rate above 0.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chaos_netem::tbf::{self, TbfSpec};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct SpecInput {
    rate_bytes_per_sec: u64,
    burst_bytes: u32,
    limit_bytes: u32,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = tbf::decode(data)
        && let Ok(bytes) = tbf::encode(&decoded)
    {
        assert_eq!(tbf::decode(&bytes), Ok(decoded));
    }
    let Ok(input) = SpecInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let spec = TbfSpec {
        rate_bytes_per_sec: input.rate_bytes_per_sec,
        burst_bytes: input.burst_bytes,
        limit_bytes: input.limit_bytes,
    };
    if let Ok(bytes) = tbf::encode(&spec) {
        assert_eq!(tbf::decode(&bytes), Ok(spec));
    }
    if spec.rate_bytes_per_sec > 0 {
        let sized = TbfSpec::for_rate(spec.rate_bytes_per_sec);
        assert!(sized.burst_bytes >= tbf::MIN_BURST_BYTES);
        assert!(sized.limit_bytes >= sized.burst_bytes);
        let bytes = tbf::encode(&sized).unwrap_or_else(|e| panic!("{sized:?}: {e}"));
        assert_eq!(tbf::decode(&bytes), Ok(sized));
    }
});
