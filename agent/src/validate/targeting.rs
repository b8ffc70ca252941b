//! What network and blackhole faults share: the destinations, ports and interface they
//! are aimed at, the kernel filters that takes, and the agent's rule for a fault on the
//! node's own network namespace.

use std::net::IpAddr;
use std::str::FromStr;

use super::Limits;
use crate::error::AgentError;

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// What this agent permits when a network fault's namespace turns out to be the node's
/// (a hostNetwork pod, a process of the node, a node-scope blackhole). Only `prepare`
/// can tell, once it has the target's namespace; validation hands it the agent's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeNetworkPolicy {
    /// `--allow-node-scope`.
    pub allowed: bool,
    /// The agent's gRPC port: a fault on the node's namespace leaves it reachable, as
    /// source and destination port.
    pub agent_port: u16,
}

impl NodeNetworkPolicy {
    pub fn of(limits: &Limits) -> NodeNetworkPolicy {
        NodeNetworkPolicy {
            allowed: limits.allow_node_scope,
            agent_port: limits.agent_port,
        }
    }
}

impl Default for NodeNetworkPolicy {
    fn default() -> Self {
        NodeNetworkPolicy::of(&Limits::default())
    }
}

/// Destinations and exclusions, IPv4 or IPv6: each family is matched on its own header
/// (u32 filters of `protocol ip` / `protocol ipv6`).
pub(super) fn parse_cidrs(field: &'static str, items: &[String]) -> Result<Vec<Cidr>, AgentError> {
    items
        .iter()
        .map(|text| {
            text.parse::<Cidr>()
                .map_err(|reason| AgentError::invalid(field, reason))
        })
        .collect()
}

/// How many address filters a list of destinations takes per port and protocol: one per
/// network (of its family), or, for no destinations, one in each family (IPv4, IPv6).
pub(super) fn address_filters(destinations: &[String]) -> usize {
    if destinations.is_empty() {
        2
    } else {
        destinations.len()
    }
}

/// Each combination of destination (or, for none, IP family), port and protocol is one
/// kernel filter.
const MAX_FILTERS: usize = 256;

/// The product of list lengths, saturated: the count only needs to say "too many".
pub(super) fn filter_product(counts: &[usize]) -> usize {
    counts
        .iter()
        .fold(1, |product, count| product.saturating_mul(*count))
}

pub(super) fn check_filter_count(field: &'static str, count: usize) -> Result<(), AgentError> {
    if count > MAX_FILTERS {
        return Err(AgentError::invalid(
            field,
            format!(
                "needs {count} filters (destinations, or without destinations the 2 IP families, x ports x protocols); at most {MAX_FILTERS}"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_ports(field: &'static str, ports: &[u32]) -> Result<Vec<u16>, AgentError> {
    ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| AgentError::invalid(field, format!("{p} is not a port (1..=65535)")))
        })
        .collect()
}

/// Linux interface names: at most 15 bytes, no `/`, no whitespace.
pub(super) fn check_interface_name(field: &'static str, name: &str) -> Result<(), AgentError> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 15
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c == '\0')
        || name == "."
        || name == ".."
    {
        return Err(AgentError::invalid(
            field,
            format!("`{name}` is not a valid interface name"),
        ));
    }
    Ok(())
}
