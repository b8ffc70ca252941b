//! The memory kind's plan and its validation: an amount in bytes or in percent of the
//! container's limit, filled at once or over a ramp.

use std::time::Duration;

use chaos_proto::api;

use super::Limits;
use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq)]
pub enum MemoryAmount {
    Bytes(u64),
    PercentOfLimit(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub amount: MemoryAmount,
    pub ramp: Duration,
    /// A percent of a container without a memory limit is of node memory (asked for).
    pub allow_node_memory: bool,
    /// The agent's bound on the memory a fill may take from the node, in percent of
    /// MemAvailable when it is prepared ([`Limits::max_memory_fill_percent_of_available`]).
    pub max_percent_of_available: u32,
}

/// The request's own consistency. What depends on the target (its limit) and the node
/// (MemAvailable) is decided when the fault is prepared (`faults::memory`).
pub(super) fn validate_memory(
    m: &api::MemoryFault,
    duration: Duration,
    limits: &Limits,
) -> Result<MemoryPlan, AgentError> {
    const MAX_BYTES: u64 = 1 << 40;
    let amount = match (m.size_bytes, m.percent) {
        (0, 0) => {
            return Err(AgentError::invalid(
                "memory.size_bytes",
                "set either memory.size_bytes or memory.percent",
            ));
        }
        (size, 0) if size > MAX_BYTES => {
            return Err(AgentError::invalid(
                "memory.size_bytes",
                "must be at most 1 TiB",
            ));
        }
        (size, 0) => MemoryAmount::Bytes(size),
        (0, pct) if pct > 100 => {
            return Err(AgentError::invalid(
                "memory.percent",
                format!("{pct} is outside 1..=100 (percent of the container's memory limit)"),
            ));
        }
        (0, pct) => MemoryAmount::PercentOfLimit(pct),
        _ => {
            return Err(AgentError::invalid(
                "memory.percent",
                "set only one of memory.size_bytes and memory.percent",
            ));
        }
    };
    if m.allow_node_memory && !matches!(amount, MemoryAmount::PercentOfLimit(_)) {
        return Err(AgentError::invalid(
            "memory.allow_node_memory",
            "applies to memory.percent only (it lets a percent be of node memory)",
        ));
    }
    let ramp = Duration::from_millis(m.ramp_ms);
    if ramp >= duration {
        return Err(AgentError::invalid(
            "memory.ramp_ms",
            "must be shorter than duration_ms",
        ));
    }
    Ok(MemoryPlan {
        amount,
        ramp,
        allow_node_memory: m.allow_node_memory,
        max_percent_of_available: limits.max_memory_fill_percent_of_available,
    })
}
