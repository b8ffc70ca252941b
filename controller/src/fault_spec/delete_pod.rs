//! `delete_pod`: the selected pods deleted through the Kubernetes API, a one-shot like a
//! kill. An experiment's only: no agent carries it out, so `chaosctl inject` has no such
//! subcommand (`kubectl delete pod` is that).

use std::time::Duration;

use serde::Deserialize;

use super::SpecError;
use crate::engine::experiment::values::duration;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletePodSpec {
    /// The pods' termination grace period; 0 (the default) deletes at once.
    #[serde(default, deserialize_with = "duration")]
    pub grace_period: Duration,
}

impl DeletePodSpec {
    pub fn check(&self) -> Result<(), SpecError> {
        if self.grace_period.subsec_nanos() != 0 {
            return Err(SpecError::of(
                "grace_period",
                "must be whole seconds (Kubernetes counts it in seconds)",
            ));
        }
        Ok(())
    }
}
