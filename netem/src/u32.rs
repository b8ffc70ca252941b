//! u32 classifier selectors and the `TCA_OPTIONS` of u32 filters, encoded by hand. Pure.
//!
//! Layout (facts from `linux/pkt_cls.h` and `linux/tc_act/tc_mirred.h`):
//! - `struct tc_u32_sel`: `u8 flags, u8 offshift, u8 nkeys, (pad), __be16 offmask,
//!   u16 off, s16 offoff, s16 hoff, __be32 hmask` (16 bytes), then `nkeys` keys;
//! - `struct tc_u32_key`: `__be32 mask, __be32 val, int off, int offmask` (16 bytes);
//!   `off` is relative to the network header and must be a multiple of 4;
//! - keys on the same `off` are merged the way `tc` merges them (masks OR-ed), so a
//!   selector built here is byte-identical to the one `tc filter add ... u32 match ...`
//!   sends for the same matches in the same order.
//!
//! Port and protocol matches assume a 20-byte IPv4 header, as `tc`'s `match ip dport`
//! does; a guard key on the IHL nibble makes packets with IP options simply not match
//! (instead of matching garbage at the wrong offset).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `ETH_P_IP`: u32 filters for IPv4 traffic.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_ALL`: the ingress redirect filter takes every protocol.
pub const ETH_P_ALL: u16 = 0x0003;
/// `TC_U32_TERMINAL`: a match ends classification (tc sets it with `classid`/`action`).
pub const TC_U32_TERMINAL: u8 = 1;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `TCA_U32_*` attribute numbers.
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
/// `TCA_ACT_KIND`, `TCA_ACT_OPTIONS`, `TCA_MIRRED_PARMS`.
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
/// `TC_ACT_STOLEN` and `TCA_EGRESS_REDIR`: what `tc ... action mirred egress redirect` sends.
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;

const SEL_HEADER_LEN: usize = 16;
const KEY_LEN: usize = 16;

/// Offsets in the IPv4 header (and the transport header right after a 20-byte one).
const OFF_VERSION_IHL: i32 = 0;
const OFF_PROTOCOL: i32 = 8;
const OFF_SRC: i32 = 12;
const OFF_DST: i32 = 16;
const OFF_PORTS: i32 = 20;

/// One 32-bit comparison: `(word at off) & mask == value` (host order here, sent big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct U32Key {
    pub mask: u32,
    pub value: u32,
    pub off: i32,
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which end of a packet a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Source,
    Destination,
}

/// What one u32 filter matches: every given part must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficMatch {
    /// IP protocol number (tcp 6, udp 17, icmp 1).
    pub protocol: Option<u8>,
    pub address: Option<(End, Ipv4Cidr)>,
    pub port: Option<(End, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "u32 keys conflict at offset {off}: {existing:#010x}/{existing_mask:#010x} vs {value:#010x}/{mask:#010x}"
)]
pub struct KeyConflict {
    pub off: i32,
    pub existing: u32,
    pub existing_mask: u32,
    pub value: u32,
    pub mask: u32,
}

/// A u32 selector: its keys, in order, merged like `tc` merges them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub keys: Vec<U32Key>,
}

impl Selector {
    /// Adds `value/mask` at `off`, OR-ing into an existing key on the same offset.
    pub fn add(&mut self, off: i32, mask: u32, value: u32) -> Result<(), KeyConflict> {
        let value = value & mask;
        if let Some(key) = self.keys.iter_mut().find(|k| k.off == off) {
            if (key.value ^ value) & (key.mask & mask) != 0 {
                return Err(KeyConflict {
                    off,
                    existing: key.value,
                    existing_mask: key.mask,
                    value,
                    mask,
                });
            }
            key.value |= value;
            key.mask |= mask;
            return Ok(());
        }
        self.keys.push(U32Key { mask, value, off });
        Ok(())
    }

    /// `match u8 V M at OFF` (byte offset).
    fn add_u8(&mut self, at: i32, mask: u8, value: u8) -> Result<(), KeyConflict> {
        let shift = 24 - 8 * (at % 4) as u32;
        self.add(
            at - at % 4,
            u32::from(mask) << shift,
            u32::from(value) << shift,
        )
    }

    /// `match u16 V M at OFF` (byte offset, even).
    fn add_u16(&mut self, at: i32, mask: u16, value: u16) -> Result<(), KeyConflict> {
        let shift = 16 - 8 * (at % 4) as u32;
        self.add(
            at - at % 4,
            u32::from(mask) << shift,
            u32::from(value) << shift,
        )
    }

    /// The selector for one [`TrafficMatch`]; a match of everything gets tc's
    /// `match u32 0 0` (one zero key), since the kernel needs no keys but tools expect one.
    pub fn for_match(m: &TrafficMatch) -> Result<Selector, KeyConflict> {
        let mut selector = Selector::default();
        if m.port.is_some() {
            // Ports sit at offset 20 only after a header without options (IHL 5).
            selector.add_u8(OFF_VERSION_IHL, 0x0f, 0x05)?;
        }
        if let Some(protocol) = m.protocol {
            selector.add_u8(OFF_PROTOCOL + 1, 0xff, protocol)?;
        }
        if let Some((end, cidr)) = m.address
            && cidr.prefix > 0
        {
            let off = match end {
                End::Source => OFF_SRC,
                End::Destination => OFF_DST,
            };
            selector.add(off, cidr.mask(), u32::from(cidr.addr))?;
        }
        if let Some((end, port)) = m.port {
            let at = match end {
                End::Source => OFF_PORTS,
                End::Destination => OFF_PORTS + 2,
            };
            selector.add_u16(at, 0xffff, port)?;
        }
        if selector.keys.is_empty() {
            selector.keys.push(U32Key {
                mask: 0,
                value: 0,
                off: 0,
            });
        }
        Ok(selector)
    }

    /// `struct tc_u32_sel` with its keys, as sent in `TCA_U32_SEL`.
    pub fn encode(&self, flags: u8) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SEL_HEADER_LEN + KEY_LEN * self.keys.len());
        bytes.push(flags);
        bytes.push(0); // offshift
        bytes.push(self.keys.len() as u8);
        bytes.push(0); // padding before the __be16
        bytes.extend_from_slice(&[0; 2]); // offmask
        bytes.extend_from_slice(&[0; 2]); // off
        bytes.extend_from_slice(&[0; 2]); // offoff
        bytes.extend_from_slice(&[0; 2]); // hoff
        bytes.extend_from_slice(&[0; 4]); // hmask
        for key in &self.keys {
            bytes.extend_from_slice(&key.mask.to_be_bytes());
            bytes.extend_from_slice(&key.value.to_be_bytes());
            bytes.extend_from_slice(&key.off.to_ne_bytes());
            bytes.extend_from_slice(&0i32.to_ne_bytes()); // offmask
        }
        bytes
    }

    /// The keys of an encoded `tc_u32_sel` (flags and the hashing fields are ignored).
    pub fn decode(bytes: &[u8]) -> Option<Selector> {
        let nkeys = usize::from(*bytes.get(2)?);
        let keys = (0..nkeys)
            .map(|i| {
                let at = SEL_HEADER_LEN + i * KEY_LEN;
                let word = |o: usize| -> Option<[u8; 4]> {
                    bytes.get(at + o..at + o + 4)?.try_into().ok()
                };
                Some(U32Key {
                    mask: u32::from_be_bytes(word(0)?),
                    value: u32::from_be_bytes(word(4)?),
                    off: i32::from_ne_bytes(word(8)?),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Selector { keys })
    }

    /// The keys in words, for status read-back: `ip dst 10.0.0.0/8 dport 53 proto 17`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for key in &self.keys {
            let byte = |shift: u32| (key.value >> shift) & 0xff;
            match (key.off, key.mask) {
                (_, 0) => parts.push("all".to_string()),
                (OFF_VERSION_IHL, 0x0f00_0000) => {} // the IHL guard
                (OFF_PROTOCOL, 0x00ff_0000) => parts.push(format!("proto {}", byte(16))),
                (OFF_SRC | OFF_DST, mask) if mask.leading_ones() + mask.trailing_zeros() == 32 => {
                    let end = if key.off == OFF_SRC { "src" } else { "dst" };
                    parts.push(format!(
                        "{end} {}/{}",
                        Ipv4Addr::from(key.value),
                        mask.leading_ones()
                    ));
                }
                (OFF_PORTS, mask)
                    if mask & 0x0000_ffff == 0xffff || mask & 0xffff_0000 == 0xffff_0000 =>
                {
                    if mask & 0xffff_0000 == 0xffff_0000 {
                        parts.push(format!("sport {}", key.value >> 16));
                    }
                    if mask & 0x0000_ffff == 0xffff {
                        parts.push(format!("dport {}", key.value & 0xffff));
                    }
                }
                _ => parts.push(format!("{:08x}/{:08x} at {}", key.value, key.mask, key.off)),
            }
        }
        parts.join(" ")
    }
}

fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut bytes = Vec::with_capacity((len + 3) & !3);
    bytes.extend_from_slice(&(len as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize((len + 3) & !3, 0);
    bytes
}

/// `TCA_OPTIONS` of a u32 filter that sends matching packets to class `classid`
/// (`tc filter add ... u32 match ... classid X`).
pub fn classify_options(selector: &Selector, classid: u32) -> Vec<u8> {
    let mut bytes = nla(TCA_U32_CLASSID, &classid.to_ne_bytes());
    bytes.extend(nla(TCA_U32_SEL, &selector.encode(TC_U32_TERMINAL)));
    bytes
}

/// `TCA_OPTIONS` of a u32 filter that redirects matching packets to the egress of
/// `ifindex` (`... u32 match u32 0 0 action mirred egress redirect dev IFB`).
pub fn redirect_options(selector: &Selector, ifindex: u32) -> Vec<u8> {
    let mut parms = Vec::with_capacity(28);
    parms.extend_from_slice(&0u32.to_ne_bytes()); // index: a new action
    parms.extend_from_slice(&0u32.to_ne_bytes()); // capab
    parms.extend_from_slice(&TC_ACT_STOLEN.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes()); // refcnt
    parms.extend_from_slice(&0i32.to_ne_bytes()); // bindcnt
    parms.extend_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
    parms.extend_from_slice(&ifindex.to_ne_bytes());
    let mut action = nla(TCA_ACT_KIND, b"mirred\0");
    action.extend(nla(TCA_ACT_OPTIONS, &nla(TCA_MIRRED_PARMS, &parms)));
    // Actions are a list nested by their order, starting at 1.
    let actions = nla(TCA_U32_ACT, &nla(1, &action));
    let mut bytes = nla(TCA_U32_SEL, &selector.encode(TC_U32_TERMINAL));
    bytes.extend(actions);
    bytes
}

/// `tcm_info` of a filter: priority (pref) in the upper half, protocol (network order)
/// in the lower half.
pub fn filter_info(pref: u16, protocol: u16) -> u32 {
    (u32::from(pref) << 16) | u32::from(protocol.to_be())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        let (a, p) = text.split_once('/').unwrap();
        Ipv4Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    /// `tc filter add dev X parent 1: protocol ip prio 1 u32 match u8 5 0x0f at 0
    /// match ip protocol 6 0xff match ip dst 10.1.0.0/16 match ip dport 5432 0xffff
    /// classid 1:2`: its TCA_U32_SEL as the host kernel (x86-64, little-endian `off`)
    /// dumped it; `host_u32_selectors_match_tc` in tests/host_filters.rs compares live.
    const TC_SELECTOR_DST_TCP_PORT: &str = "01000400000000000000000000000000\
         0f000000050000000000000000000000\
         00ff0000000600000800000000000000\
         ffff00000a0100001000000000000000\
         0000ffff000015381400000000000000";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn selector_is_byte_identical_to_tc() {
        let m = TrafficMatch {
            protocol: Some(IPPROTO_TCP),
            address: Some((End::Destination, cidr("10.1.0.0/16"))),
            port: Some((End::Destination, 5432)),
        };
        let selector = Selector::for_match(&m).unwrap();
        let expected: String = TC_SELECTOR_DST_TCP_PORT.split_whitespace().collect();
        assert_eq!(hex(&selector.encode(TC_U32_TERMINAL)), expected);
        assert_eq!(selector.describe(), "proto 6 dst 10.1.0.0/16 dport 5432");
        assert_eq!(Selector::decode(&selector.encode(1)), Some(selector));
    }

    #[test]
    fn source_and_destination_ports_share_one_key_like_tc() {
        let mut selector = Selector::default();
        selector.add_u16(OFF_PORTS, 0xffff, 7090).unwrap();
        selector.add_u16(OFF_PORTS + 2, 0xffff, 80).unwrap();
        assert_eq!(
            selector.keys,
            vec![U32Key {
                mask: 0xffff_ffff,
                value: (7090 << 16) | 80,
                off: 20
            }]
        );
        assert!(selector.add_u16(OFF_PORTS + 2, 0xffff, 81).is_err());
        assert_eq!(selector.describe(), "sport 7090 dport 80");
    }

    #[test]
    fn match_all_has_one_zero_key() {
        let selector = Selector::for_match(&TrafficMatch::default()).unwrap();
        assert_eq!(
            selector.keys,
            vec![U32Key {
                mask: 0,
                value: 0,
                off: 0
            }]
        );
        assert_eq!(selector.describe(), "all");
        // /0 is no restriction either.
        let any = TrafficMatch {
            address: Some((End::Destination, cidr("0.0.0.0/0"))),
            ..Default::default()
        };
        assert_eq!(Selector::for_match(&any).unwrap(), selector);
    }

    #[test]
    fn source_address_and_port() {
        let m = TrafficMatch {
            protocol: Some(IPPROTO_UDP),
            address: Some((End::Source, cidr("192.168.7.9/32"))),
            port: Some((End::Source, 53)),
        };
        let selector = Selector::for_match(&m).unwrap();
        assert_eq!(selector.describe(), "proto 17 src 192.168.7.9/32 sport 53");
        assert_eq!(selector.keys[2].off, OFF_SRC);
    }

    #[test]
    fn options_are_well_formed_attributes() {
        let selector = Selector::for_match(&TrafficMatch::default()).unwrap();
        let options = classify_options(&selector, 0xca05_0002);
        // CLASSID (8 bytes) then SEL (4 + 16 + 16).
        assert_eq!(options.len(), 8 + 36);
        assert_eq!(&options[4..8], &0xca05_0002u32.to_ne_bytes());
        let redirect = redirect_options(&selector, 9);
        assert_eq!(u16::from_ne_bytes([redirect[0], redirect[1]]), 36);
        // The action's last word is the ifindex.
        assert_eq!(&redirect[redirect.len() - 4..], &9u32.to_ne_bytes());
        assert_eq!(filter_info(3, ETH_P_IP), 0x0003_0008);
    }
}
