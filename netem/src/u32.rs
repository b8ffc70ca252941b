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
//! IPv4 (`protocol ip`, [`ETH_P_IP`]): port and protocol matches assume a 20-byte
//! header, as `tc`'s `match ip dport` does; a guard key on the IHL nibble makes packets
//! with IP options simply not match (instead of matching garbage at the wrong offset).
//!
//! IPv6 (`protocol ipv6`, [`ETH_P_IPV6`]), as `tc`'s `match ip6 ...`: next header at
//! byte 6, source at 8, destination at 24, ports at 40/42. The ports are read right
//! after the fixed 40-byte header, so they are only right for packets without extension
//! headers. A port match therefore always comes with a protocol match (a selector of a
//! port without a protocol is refused for IPv6): a packet with extension headers carries
//! the first extension's number as next header, fails the protocol key and is simply not
//! matched. ICMP (1) in an IPv6 filter matches ICMPv6 (58), its IPv6 counterpart.
//!
//! A filter matches one family; [`TrafficMatch::families`] says which a match needs
//! (both when it names no address), and each family is its own filter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// `ETH_P_IP`: u32 filters for IPv4 traffic.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`: u32 filters for IPv6 traffic.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// `ETH_P_ALL`: the ingress redirect filter takes every protocol.
pub const ETH_P_ALL: u16 = 0x0003;
/// `TC_U32_TERMINAL`: a match ends classification (tc sets it with `classid`/`action`).
pub const TC_U32_TERMINAL: u8 = 1;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

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

/// Offsets in the IPv6 header (and the transport header right after the fixed 40 bytes,
/// i.e. without extension headers).
const OFF6_NEXT_HEADER: i32 = 6;
/// The word holding the next header (with the payload length before it).
const OFF6_NEXT_HEADER_WORD: i32 = OFF6_NEXT_HEADER - OFF6_NEXT_HEADER % 4;
const OFF6_SRC: i32 = 8;
const OFF6_DST: i32 = 24;
const OFF6_PORTS: i32 = 40;

/// The IP version a filter matches: each is its own filter (`protocol ip` / `ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The filter's protocol (`tcm_info`'s lower half).
    pub fn ethertype(self) -> u16 {
        match self {
            Family::V4 => ETH_P_IP,
            Family::V6 => ETH_P_IPV6,
        }
    }

    /// The family of a dumped filter's protocol; other protocols (`all`) have none.
    pub fn of_ethertype(protocol: u16) -> Option<Family> {
        match protocol {
            ETH_P_IP => Some(Family::V4),
            ETH_P_IPV6 => Some(Family::V6),
            _ => None,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "ip",
            Family::V6 => "ipv6",
        })
    }
}

/// One 32-bit comparison: `(word at off) & mask == value` (host order here, sent big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct U32Key {
    pub mask: u32,
    pub value: u32,
    pub off: i32,
}

/// An IP network (IPv4 or IPv6). Serialized like the IPv4-only form before it
/// (`{"addr":"10.0.0.0","prefix":8}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpCidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The prefix, at most the address's length.
    fn bits(&self) -> u32 {
        let max = match self.family() {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        u32::from(self.prefix).min(max)
    }

    /// The network's 128-bit mask, left-aligned (IPv4 uses the top 32 bits).
    fn mask128(&self) -> u128 {
        match self.bits() {
            0 => 0,
            bits => u128::MAX << (128 - bits),
        }
    }

    /// The address left-aligned in 128 bits (IPv4 in the top 32 bits).
    fn addr128(&self) -> u128 {
        match self.addr {
            IpAddr::V4(addr) => u128::from(u32::from(addr)) << 96,
            IpAddr::V6(addr) => u128::from(addr),
        }
    }

    /// The address as the 32-bit words a u32 filter compares, with their masks: one
    /// word for IPv4, four for IPv6; words the prefix does not reach are left out (as
    /// `tc` leaves them out), so `/0` has none.
    fn words(&self) -> Vec<(u32, u32)> {
        let count = match self.family() {
            Family::V4 => 1,
            Family::V6 => 4,
        };
        let (addr, mask) = (self.addr128(), self.mask128());
        (0..count)
            .map(|i| {
                let shift = 96 - 32 * i;
                ((mask >> shift) as u32, (addr >> shift) as u32)
            })
            .filter(|(mask, _)| *mask != 0)
            .collect()
    }
}

impl From<Ipv4Addr> for IpCidr {
    fn from(addr: Ipv4Addr) -> Self {
        IpCidr {
            addr: IpAddr::V4(addr),
            prefix: 32,
        }
    }
}

impl std::fmt::Display for IpCidr {
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
    pub address: Option<(End, IpCidr)>,
    pub port: Option<(End, u16)>,
}

impl TrafficMatch {
    /// The families whose filters this match needs: its address's, or both when it
    /// names no address (a port or protocol alone, or everything, is in either).
    pub fn families(&self) -> &'static [Family] {
        match self.address {
            Some((_, cidr)) if cidr.family() == Family::V4 => &[Family::V4],
            Some(_) => &[Family::V6],
            None => &[Family::V4, Family::V6],
        }
    }
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

/// Why a [`TrafficMatch`] makes no selector of a family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(transparent)]
    Conflict(#[from] KeyConflict),
    #[error("{cidr} is not an address of a `protocol {family}` filter")]
    FamilyMismatch { family: Family, cidr: IpCidr },
    #[error(
        "an IPv6 port match needs a protocol: without one, packets with extension headers \
         would be matched on whatever follows the fixed header"
    )]
    PortWithoutProtocol,
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

    /// tc's `match u32 0 0` (one zero key): a match of everything, in any family. The
    /// kernel needs no keys, but tools expect one.
    pub fn match_all() -> Selector {
        Selector {
            keys: vec![U32Key {
                mask: 0,
                value: 0,
                off: 0,
            }],
        }
    }

    /// The selector for one [`TrafficMatch`] in a filter of `family` (one of
    /// [`TrafficMatch::families`]); a match of everything is [`Selector::match_all`].
    pub fn for_match(m: &TrafficMatch, family: Family) -> Result<Selector, SelectorError> {
        if let Some((_, cidr)) = m.address
            && cidr.family() != family
        {
            return Err(SelectorError::FamilyMismatch { family, cidr });
        }
        let mut selector = Selector::default();
        match family {
            Family::V4 => {
                if m.port.is_some() {
                    // Ports sit at offset 20 only after a header without options (IHL 5).
                    selector.add_u8(OFF_VERSION_IHL, 0x0f, 0x05)?;
                }
                if let Some(protocol) = m.protocol {
                    selector.add_u8(OFF_PROTOCOL + 1, 0xff, protocol)?;
                }
            }
            Family::V6 => {
                // The protocol key is also the guard of the port key (see the module
                // comment): no IPv6 port without it.
                match m.protocol {
                    Some(protocol) => {
                        let protocol = if protocol == IPPROTO_ICMP {
                            IPPROTO_ICMPV6
                        } else {
                            protocol
                        };
                        selector.add_u8(OFF6_NEXT_HEADER, 0xff, protocol)?;
                    }
                    None if m.port.is_some() => return Err(SelectorError::PortWithoutProtocol),
                    None => {}
                }
            }
        }
        if let Some((end, cidr)) = m.address {
            let start = match (family, end) {
                (Family::V4, End::Source) => OFF_SRC,
                (Family::V4, End::Destination) => OFF_DST,
                (Family::V6, End::Source) => OFF6_SRC,
                (Family::V6, End::Destination) => OFF6_DST,
            };
            for (off, (mask, value)) in (start..).step_by(4).zip(cidr.words()) {
                selector.add(off, mask, value)?;
            }
        }
        if let Some((end, port)) = m.port {
            let ports = match family {
                Family::V4 => OFF_PORTS,
                Family::V6 => OFF6_PORTS,
            };
            let at = match end {
                End::Source => ports,
                End::Destination => ports + 2,
            };
            selector.add_u16(at, 0xffff, port)?;
        }
        if selector.keys.is_empty() {
            return Ok(Selector::match_all());
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

    /// The keys in words, for status read-back: `dst 10.0.0.0/8 dport 53 proto 17`, read
    /// as the header of `family` (the filter's protocol) lays them out.
    pub fn describe(&self, family: Family) -> String {
        match family {
            Family::V4 => self.describe_v4(),
            Family::V6 => self.describe_v6(),
        }
    }

    fn describe_v4(&self) -> String {
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
                (OFF_PORTS, _) => parts.push(ports_or_raw(key)),
                _ => parts.push(raw(key)),
            }
        }
        parts.join(" ")
    }

    /// An IPv6 address spans four keys: they are shown as one network where they make
    /// one (a contiguous prefix), else each raw.
    fn describe_v6(&self) -> String {
        // A key of an address is one of its four words; a key at any other offset inside it
        // (only a decoded, not an encoded, selector has one) is shown raw.
        let in_address =
            |start: i32, off: i32| (start..start + 16).contains(&off) && (off - start) % 4 == 0;
        let network = |start: i32| -> Option<String> {
            let mut addr = 0u128;
            let mut mask = 0u128;
            let mut any = false;
            for key in self.keys.iter().filter(|k| in_address(start, k.off)) {
                let shift = 96 - 8 * (key.off - start) as u32;
                addr |= u128::from(key.value) << shift;
                mask |= u128::from(key.mask) << shift;
                any = true;
            }
            (any && mask.leading_ones() + mask.trailing_zeros() == 128)
                .then(|| format!("{}/{}", Ipv6Addr::from(addr), mask.leading_ones()))
        };
        let networks = [
            (OFF6_SRC, "src", network(OFF6_SRC)),
            (OFF6_DST, "dst", network(OFF6_DST)),
        ];
        let mut parts = Vec::new();
        for key in &self.keys {
            let address = networks
                .iter()
                .find(|(start, _, _)| in_address(*start, key.off));
            match (key.off, key.mask, address) {
                (_, 0, _) => parts.push("all".to_string()),
                (OFF6_NEXT_HEADER_WORD, 0x0000_ff00, _) => {
                    parts.push(format!("proto {}", (key.value >> 8) & 0xff))
                }
                (_, _, Some((start, end, Some(network)))) => {
                    // Once, at the network's first key.
                    let first = self.keys.iter().find(|k| in_address(*start, k.off));
                    if first.map(|k| k.off) == Some(key.off) {
                        parts.push(format!("{end} {network}"));
                    }
                }
                (OFF6_PORTS, _, _) => parts.push(ports_or_raw(key)),
                _ => parts.push(raw(key)),
            }
        }
        parts.join(" ")
    }
}

/// `sport`/`dport` of a key on the ports word that holds one or both whole; else raw.
fn ports_or_raw(key: &U32Key) -> String {
    let mut parts = Vec::new();
    if key.mask & 0xffff_0000 == 0xffff_0000 {
        parts.push(format!("sport {}", key.value >> 16));
    }
    if key.mask & 0x0000_ffff == 0xffff {
        parts.push(format!("dport {}", key.value & 0xffff));
    }
    if parts.is_empty() {
        raw(key)
    } else {
        parts.join(" ")
    }
}

fn raw(key: &U32Key) -> String {
    format!("{:08x}/{:08x} at {}", key.value, key.mask, key.off)
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

    fn cidr(text: &str) -> IpCidr {
        let (a, p) = text.split_once('/').unwrap();
        IpCidr {
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
        let selector = Selector::for_match(&m, Family::V4).unwrap();
        let expected: String = TC_SELECTOR_DST_TCP_PORT.split_whitespace().collect();
        assert_eq!(hex(&selector.encode(TC_U32_TERMINAL)), expected);
        assert_eq!(
            selector.describe(Family::V4),
            "proto 6 dst 10.1.0.0/16 dport 5432"
        );
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
        assert_eq!(selector.describe(Family::V4), "sport 7090 dport 80");
    }

    #[test]
    fn match_all_has_one_zero_key() {
        let selector = Selector::for_match(&TrafficMatch::default(), Family::V4).unwrap();
        assert_eq!(
            selector.keys,
            vec![U32Key {
                mask: 0,
                value: 0,
                off: 0
            }]
        );
        assert_eq!(selector.describe(Family::V4), "all");
        // /0 is no restriction either.
        let any = TrafficMatch {
            address: Some((End::Destination, cidr("0.0.0.0/0"))),
            ..Default::default()
        };
        assert_eq!(Selector::for_match(&any, Family::V4).unwrap(), selector);
    }

    #[test]
    fn source_address_and_port() {
        let m = TrafficMatch {
            protocol: Some(IPPROTO_UDP),
            address: Some((End::Source, cidr("192.168.7.9/32"))),
            port: Some((End::Source, 53)),
        };
        let selector = Selector::for_match(&m, Family::V4).unwrap();
        assert_eq!(
            selector.describe(Family::V4),
            "proto 17 src 192.168.7.9/32 sport 53"
        );
        assert_eq!(selector.keys[2].off, OFF_SRC);
    }

    #[test]
    fn options_are_well_formed_attributes() {
        let selector = Selector::for_match(&TrafficMatch::default(), Family::V4).unwrap();
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

    /// `tc filter add dev X parent 1: protocol ipv6 prio 1 u32 match ip6 protocol 6 0xff
    /// match ip6 dst fd00:c4a0::/64 match ip6 dport 5432 0xffff classid 1:2`: its
    /// TCA_U32_SEL (next header at byte 6 -> word 4, the /64 in the words at 24 and 28,
    /// the ports word at 40); `host_u32_ipv6_selectors_match_tc` compares live.
    const TC_SELECTOR6_DST_TCP_PORT: &str = "01000400000000000000000000000000\
         0000ff00000006000400000000000000\
         fffffffffd00c4a01800000000000000\
         ffffffff000000001c00000000000000\
         0000ffff000015382800000000000000";

    #[test]
    fn ipv6_selector_is_byte_identical_to_tc_and_round_trips() {
        let m = TrafficMatch {
            protocol: Some(IPPROTO_TCP),
            address: Some((End::Destination, cidr("fd00:c4a0::/64"))),
            port: Some((End::Destination, 5432)),
        };
        assert_eq!(m.families(), &[Family::V6]);
        let selector = Selector::for_match(&m, Family::V6).unwrap();
        let expected: String = TC_SELECTOR6_DST_TCP_PORT.split_whitespace().collect();
        assert_eq!(hex(&selector.encode(TC_U32_TERMINAL)), expected);
        assert_eq!(
            selector.describe(Family::V6),
            "proto 6 dst fd00:c4a0::/64 dport 5432"
        );
        assert_eq!(Selector::decode(&selector.encode(1)), Some(selector));
    }

    #[test]
    fn ipv6_addresses_take_the_words_their_prefix_reaches() {
        let host = TrafficMatch {
            address: Some((End::Source, cidr("fd00:c4a0::2/128"))),
            ..Default::default()
        };
        let selector = Selector::for_match(&host, Family::V6).unwrap();
        let offsets: Vec<i32> = selector.keys.iter().map(|k| k.off).collect();
        assert_eq!(offsets, vec![8, 12, 16, 20]);
        assert!(selector.keys.iter().all(|k| k.mask == u32::MAX));
        assert_eq!(selector.keys[3].value, 2);
        assert_eq!(selector.describe(Family::V6), "src fd00:c4a0::2/128");
        // A prefix inside a word: that word's mask is partial, the rest left out.
        let wide = TrafficMatch {
            address: Some((End::Destination, cidr("2001:db8:8000::/33"))),
            ..Default::default()
        };
        let selector = Selector::for_match(&wide, Family::V6).unwrap();
        assert_eq!(
            selector.keys,
            vec![
                U32Key {
                    mask: u32::MAX,
                    value: 0x2001_0db8,
                    off: 24
                },
                U32Key {
                    mask: 0x8000_0000,
                    value: 0x8000_0000,
                    off: 28
                }
            ]
        );
        assert_eq!(selector.describe(Family::V6), "dst 2001:db8:8000::/33");
        // ::/0 restricts nothing: the match-all.
        let any = TrafficMatch {
            address: Some((End::Destination, cidr("::/0"))),
            ..Default::default()
        };
        assert_eq!(
            Selector::for_match(&any, Family::V6).unwrap(),
            Selector::match_all()
        );
        // Keys that are no network print raw.
        let odd = Selector {
            keys: vec![U32Key {
                mask: 0x00ff_0000,
                value: 0x0012_0000,
                off: 24,
            }],
        };
        assert_eq!(odd.describe(Family::V6), "00120000/00ff0000 at 24");
    }

    #[test]
    fn ipv6_ports_and_protocols_sit_after_the_fixed_header() {
        let m = TrafficMatch {
            protocol: Some(IPPROTO_UDP),
            port: Some((End::Source, 53)),
            ..Default::default()
        };
        assert_eq!(m.families(), &[Family::V4, Family::V6]);
        let selector = Selector::for_match(&m, Family::V6).unwrap();
        assert_eq!(
            selector.keys,
            vec![
                U32Key {
                    mask: 0x0000_ff00,
                    value: 0x0000_1100,
                    off: 4
                },
                U32Key {
                    mask: 0xffff_0000,
                    value: 53 << 16,
                    off: 40
                }
            ]
        );
        assert_eq!(selector.describe(Family::V6), "proto 17 sport 53");
        // The same match in IPv4 has the IHL guard and the IPv4 offsets.
        let v4 = Selector::for_match(&m, Family::V4).unwrap();
        assert_eq!(v4.describe(Family::V4), "proto 17 sport 53");
        assert_eq!(v4.keys[0].off, 0);
        // ICMP in IPv6 is ICMPv6.
        let icmp = TrafficMatch {
            protocol: Some(IPPROTO_ICMP),
            ..Default::default()
        };
        assert_eq!(
            Selector::for_match(&icmp, Family::V6)
                .unwrap()
                .describe(Family::V6),
            "proto 58"
        );
        // Without a protocol a port would match garbage behind extension headers.
        let bare_port = TrafficMatch {
            port: Some((End::Destination, 80)),
            ..Default::default()
        };
        assert_eq!(
            Selector::for_match(&bare_port, Family::V6),
            Err(SelectorError::PortWithoutProtocol)
        );
        assert!(Selector::for_match(&bare_port, Family::V4).is_ok());
    }

    #[test]
    fn a_match_is_refused_in_the_other_family() {
        let v6 = TrafficMatch {
            address: Some((End::Destination, cidr("fd00::/8"))),
            ..Default::default()
        };
        assert!(matches!(
            Selector::for_match(&v6, Family::V4),
            Err(SelectorError::FamilyMismatch {
                family: Family::V4,
                ..
            })
        ));
        let v4 = TrafficMatch {
            address: Some((End::Destination, cidr("10.0.0.0/8"))),
            ..Default::default()
        };
        assert_eq!(v4.families(), &[Family::V4]);
        assert!(Selector::for_match(&v4, Family::V6).is_err());
        assert_eq!(Family::of_ethertype(0x86dd), Some(Family::V6));
        assert_eq!(Family::of_ethertype(ETH_P_ALL), None);
        assert_eq!(filter_info(1000, ETH_P_IPV6), 0x03e8_dd86);
    }

    #[test]
    fn cidrs_serialize_as_the_ipv4_only_form_did() {
        let old = r#"{"addr":"10.1.0.0","prefix":16}"#;
        let read: IpCidr = serde_json::from_str(old).unwrap();
        assert_eq!(read, cidr("10.1.0.0/16"));
        assert_eq!(serde_json::to_string(&read).unwrap(), old);
        let v6 = cidr("fd00::1/128");
        let text = serde_json::to_string(&v6).unwrap();
        assert_eq!(serde_json::from_str::<IpCidr>(&text).unwrap(), v6);
    }

    /// Found by the fuzz smoke: a decoded key inside an IPv6 address but not on one of its
    /// words made the description's shift overflow.
    #[test]
    fn a_key_off_an_address_word_is_described_raw_not_as_a_network() {
        let selector = Selector {
            keys: vec![U32Key {
                mask: 0xffff_ffff,
                value: 0x0a00_0001,
                off: OFF6_DST + 13,
            }],
        };
        let described = selector.describe(Family::V6);
        assert!(!described.contains("dst"), "{described}");
        assert_eq!(
            Selector::decode(&selector.encode(TC_U32_TERMINAL)).as_ref(),
            Some(&selector)
        );
    }
}
