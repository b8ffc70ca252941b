//! What the installed qdisc does to the packets it gets: netem (delay, loss, duplication,
//! corruption, reordering, and a rate among them) or tbf (a bandwidth limit alone).
//! Trees and the ingress path install either the same way; only the kind and the
//! options differ.

use serde::{Deserialize, Serialize};

use crate::codec::{self, NetemSpec};
use crate::qdisc::QdiscError;
use crate::tbf::{self, TbfSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Impairment {
    Netem(NetemSpec),
    Tbf(TbfSpec),
}

impl Impairment {
    /// The qdisc kind, as the kernel names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Impairment::Netem(_) => "netem",
            Impairment::Tbf(_) => "tbf",
        }
    }

    /// The kernel module that provides the kind.
    pub fn module(&self) -> &'static str {
        match self {
            Impairment::Netem(_) => "sch_netem",
            Impairment::Tbf(_) => "sch_tbf",
        }
    }

    /// Refuses specs the kernel would accept but that do not do what they say.
    pub fn validate(&self) -> Result<(), QdiscError> {
        match self {
            Impairment::Netem(spec) => Ok(spec.validate()?),
            Impairment::Tbf(spec) => Ok(spec.validate()?),
        }
    }

    /// The qdisc's `TCA_OPTIONS` payload.
    pub fn options(&self) -> Result<Vec<u8>, QdiscError> {
        match self {
            Impairment::Netem(spec) => Ok(codec::encode(spec)?),
            Impairment::Tbf(spec) => Ok(tbf::encode(spec)?),
        }
    }
}
