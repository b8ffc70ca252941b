//! u32 selectors (`struct tc_u32_sel` and its keys). On each input:
//! - the bytes as a dumped `TCA_U32_SEL`: `Selector::decode` and `describe` never panic,
//!   and a decoded selector encodes to bytes that decode to it again;
//! - the input as a traffic match (what the agent builds filters from): `for_match`
//!   either builds a selector or reports a conflict, its keys are well-formed (value
//!   within mask, word-aligned offsets), and encode -> decode gives the same keys, also
//!   inside the classify and redirect filter options the agent sends;
//! - the input as arbitrary keys merged with `add`: same round trip.

#![no_main]

use std::net::Ipv4Addr;

use arbitrary::{Arbitrary, Unstructured};
use chaos_netem::u32::{
    End, Ipv4Cidr, Selector, TC_U32_TERMINAL, TrafficMatch, classify_options, redirect_options,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct MatchInput {
    protocol: Option<u8>,
    address: Option<(bool, [u8; 4], u8)>,
    port: Option<(bool, u16)>,
    classid: u32,
    ifindex: u32,
    /// Extra keys (offset, mask, value), at most what `nkeys` (a u8) can count.
    keys: Vec<(i32, u32, u32)>,
}

fn end(source: bool) -> End {
    if source {
        End::Source
    } else {
        End::Destination
    }
}

fn check_round_trip(selector: &Selector) {
    let bytes = selector.encode(TC_U32_TERMINAL);
    assert_eq!(bytes.len(), 16 + 16 * selector.keys.len());
    assert_eq!(Selector::decode(&bytes).as_ref(), Some(selector));
    let _ = selector.describe();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    if let Some(selector) = Selector::decode(data) {
        let _ = selector.describe();
        check_round_trip(&selector);
    }
    let Ok(input) = MatchInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let m = TrafficMatch {
        protocol: input.protocol,
        address: input.address.map(|(source, octets, prefix)| {
            (
                end(source),
                Ipv4Cidr {
                    addr: Ipv4Addr::from(octets),
                    prefix: prefix % 33,
                },
            )
        }),
        port: input.port.map(|(source, port)| (end(source), port)),
    };
    // The agent's matches never conflict: each field has its own word, the port word
    // takes one end only.
    let selector = Selector::for_match(&m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
    assert!(!selector.keys.is_empty() && selector.keys.len() <= 4);
    for key in &selector.keys {
        assert_eq!(key.value & !key.mask, 0, "{m:?}: {key:?}");
        assert_eq!(key.off % 4, 0, "{m:?}: {key:?}");
    }
    check_round_trip(&selector);
    let sel_bytes = selector.encode(TC_U32_TERMINAL);
    assert!(contains(
        &classify_options(&selector, input.classid),
        &sel_bytes
    ));
    assert!(contains(
        &redirect_options(&selector, input.ifindex),
        &sel_bytes
    ));

    let mut merged = Selector::default();
    for (off, mask, value) in input.keys.iter().take(usize::from(u8::MAX)) {
        let before = merged.clone();
        match merged.add(*off, *mask, *value) {
            Ok(()) => {
                let key = merged
                    .keys
                    .iter()
                    .find(|k| k.off == *off)
                    .expect("added key");
                assert_eq!(key.value & mask, value & mask);
                assert_eq!(key.value & !key.mask, 0);
            }
            Err(_) => assert_eq!(merged, before, "a refused key changes nothing"),
        }
    }
    check_round_trip(&merged);
});
