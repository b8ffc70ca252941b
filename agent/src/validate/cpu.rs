//! The CPU kind's plan and its validation: a load in percent of the container's CPU
//! limit, on some or all of its cores.

use chaos_proto::api;

use crate::error::AgentError;

#[derive(Debug, Clone, PartialEq)]
pub struct CpuPlan {
    pub load_percent: u32,
    pub cores: Option<u32>,
    pub mode: api::CpuMode,
}

pub(super) fn validate_cpu(c: &api::CpuFault) -> Result<CpuPlan, AgentError> {
    if !(1..=100).contains(&c.load_percent) {
        return Err(AgentError::invalid(
            "cpu.load_percent",
            format!(
                "{} is outside 1..=100 (percent of the container's CPU limit)",
                c.load_percent
            ),
        ));
    }
    if c.cores > 1024 {
        return Err(AgentError::invalid("cpu.cores", "must be at most 1024"));
    }
    let mode = api::CpuMode::try_from(c.mode)
        .map_err(|_| AgentError::invalid("cpu.mode", format!("{} is not a CPU mode", c.mode)))?;
    Ok(CpuPlan {
        load_percent: c.load_percent,
        cores: (c.cores > 0).then_some(c.cores),
        mode,
    })
}
