//! u32 selectors (`struct tc_u32_sel` and its keys). On each input:
//! - the bytes as a dumped `TCA_U32_SEL`: `Selector::decode` and `describe` never panic,
//!   and a decoded selector encodes to bytes that decode to it again;
//! - the input as a traffic match (what the agent builds filters from), IPv4 or IPv6:
//!   `for_match` builds a selector in each of the match's families (refusing only an
//!   IPv6 port without a protocol, and the other family of an address), its keys are
//!   well-formed (value within mask, word-aligned offsets), and encode -> decode gives
//!   the same keys, also inside the classify and redirect filter options the agent sends;
//! - the input as arbitrary keys merged with `add`: same round trip.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Unstructured};
use chaos_netem::u32::{
    End, Family, IpCidr, Selector, SelectorError, TC_U32_TERMINAL, TrafficMatch, classify_options,
    redirect_options,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct MatchInput {
    protocol: Option<u8>,
    /// Source?, the address (IPv4 when `v6` is false: its first 4 bytes), the prefix.
    address: Option<(bool, bool, [u8; 16], u8)>,
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
    let _ = selector.describe(Family::V4);
    let _ = selector.describe(Family::V6);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    if let Some(selector) = Selector::decode(data) {
        check_round_trip(&selector);
    }
    let Ok(input) = MatchInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let m = TrafficMatch {
        protocol: input.protocol,
        address: input.address.map(|(source, v6, bytes, prefix)| {
            let cidr = if v6 {
                IpCidr {
                    addr: IpAddr::V6(Ipv6Addr::from(bytes)),
                    prefix: prefix % 129,
                }
            } else {
                IpCidr {
                    addr: IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
                    prefix: prefix % 33,
                }
            };
            (end(source), cidr)
        }),
        port: input.port.map(|(source, port)| (end(source), port)),
    };
    for family in [Family::V4, Family::V6] {
        let result = Selector::for_match(&m, family);
        if !m.families().contains(&family) {
            assert!(
                matches!(result, Err(SelectorError::FamilyMismatch { .. })),
                "{m:?} in {family}: {result:?}"
            );
            continue;
        }
        // The agent's matches never conflict: each field has its own words, the port
        // word takes one end only. IPv6 ports need a protocol (the agent always gives
        // one with ports).
        let selector = match result {
            Err(SelectorError::PortWithoutProtocol) => {
                assert!(family == Family::V6 && m.port.is_some() && m.protocol.is_none());
                continue;
            }
            other => other.unwrap_or_else(|e| panic!("{m:?} in {family}: {e}")),
        };
        // At most: protocol (v4: and the IHL guard), four address words, the ports.
        assert!(!selector.keys.is_empty() && selector.keys.len() <= 6);
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
    }

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
