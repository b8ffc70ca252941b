//! One definition of each fault, for the command line and the experiment file alike:
//! `chaosctl inject KIND`'s flags are derived (clap) from the same struct as a step's
//! `KIND:` fields (serde), so a flag is a field, read by the same parser, refused by the
//! same [`FaultSpec::check`] and turned into the agent's fault by the same `to_api`. A
//! module per kind; docs/experiments.md lists the fields, and main.rs's tests hold every
//! flag to its field.

mod blackhole;
mod cpu;
mod delete_pod;
mod disk_fill;
mod dns;
mod io;
mod io_stress;
mod kill;
mod memory;
mod network;
mod pause;

pub use blackhole::BlackholeSpec;
pub use cpu::{CpuModeSpec, CpuSpec};
pub use delete_pod::DeletePodSpec;
pub use disk_fill::{DiskFillSpec, MAX_FILL_PATH_BYTES, check_fill_path};
pub use dns::{DnsActionSpec, DnsRuleSpec, DnsSpec};
pub use io::IoSpec;
pub use io_stress::{
    IoStressSpec, MAX_IO_STRESS_WORKERS, MIN_IO_STRESS_BPS, MIN_IO_STRESS_FILE_SIZE,
};
pub use kill::KillSpec;
pub use memory::MemorySpec;
pub use network::{JitterDistribution, NetworkSpec, TrafficDirection, TrafficProtocol};
pub use pause::PauseSpec;

use chaos_proto::api;

/// Why a fault is refused: the field at fault (None: the fault as a whole) and why, in
/// words that name fields through the [`FieldNames`] the check was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: Option<&'static str>,
    pub message: String,
}

impl SpecError {
    fn of(field: &'static str, message: impl Into<String>) -> SpecError {
        SpecError {
            field: Some(field),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> SpecError {
        SpecError {
            field: None,
            message: message.into(),
        }
    }
}

/// How a check names the fields it speaks of: as the file writes them (`read_bps`,
/// [`yaml_name`]) or as the command line does (`--read-bps`).
pub type FieldNames<'a> = &'a dyn Fn(&'static str) -> String;

/// A field as the experiment file writes it: its name.
pub fn yaml_name(field: &'static str) -> String {
    field.to_string()
}

/// The enum, the keys a step writes and the reading of the one under a key, from one list,
/// so that a kind cannot be in one and not the others.
macro_rules! fault_specs {
    ($($(#[$doc:meta])* $variant:ident($spec:ty) = $key:literal,)*) => {
        /// The one fault of an experiment step, under its kind's key (`cpu: { load: 80 }`);
        /// also what every `chaosctl inject` subcommand parses into.
        #[derive(Debug, Clone, PartialEq)]
        pub enum FaultSpec {
            $($(#[$doc])* $variant($spec),)*
        }

        impl FaultSpec {
            /// Every kind's key, as a step writes it.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// The key a step writes this fault under.
            pub fn key(&self) -> &'static str {
                match self {
                    $(FaultSpec::$variant(_) => $key,)*
                }
            }

            /// Reads the value under `key` of the map being read as that kind's spec (so
            /// its errors carry their line); None when `key` names no kind.
            pub fn next_value_of<'de, A: serde::de::MapAccess<'de>>(
                key: &str,
                map: &mut A,
            ) -> Result<Option<FaultSpec>, A::Error> {
                Ok(Some(match key {
                    $($key => FaultSpec::$variant(map.next_value()?),)*
                    _ => return Ok(None),
                }))
            }
        }
    };
}

fault_specs! {
    /// Signals to the target's processes (`inject kill`).
    Kill(KillSpec) = "kill",
    Cpu(CpuSpec) = "cpu",
    Memory(MemorySpec) = "memory",
    Network(NetworkSpec) = "network",
    Blackhole(BlackholeSpec) = "blackhole",
    Pause(PauseSpec) = "pause",
    Io(IoSpec) = "io",
    DiskFill(DiskFillSpec) = "disk_fill",
    IoStress(IoStressSpec) = "io_stress",
    /// Lookups faulted by name in the target's network namespace.
    Dns(DnsSpec) = "dns",
    /// Pods deleted through the Kubernetes API: an experiment's only, no agent's fault.
    DeletePod(DeletePodSpec) = "delete_pod",
    /// Two groups of pods cut off from each other: an experiment's only, planned into
    /// blackholes (see `engine::partition`), one per pod with its own destinations. Boxed:
    /// its two selectors make it much larger than any other kind.
    Partition(Box<crate::engine::partition::PartitionSpec>) = "partition",
}

impl FaultSpec {
    /// The agent's fault; None for delete_pod, which no agent carries out, and for a
    /// partition, whose blackholes differ by target (the plan makes them).
    pub fn agent_fault(&self) -> Option<api::inject_request::Fault> {
        use api::inject_request::Fault;
        Some(match self {
            FaultSpec::Kill(kill) => Fault::Process(kill.to_api()),
            FaultSpec::Cpu(cpu) => Fault::Cpu(cpu.to_api()),
            FaultSpec::Memory(memory) => Fault::Memory(memory.to_api()),
            FaultSpec::Network(network) => Fault::Network(network.to_api()),
            FaultSpec::Blackhole(blackhole) => Fault::Blackhole(blackhole.to_api()),
            FaultSpec::Pause(pause) => Fault::Pause(pause.to_api()),
            FaultSpec::Io(io) => Fault::Io(io.to_api()),
            FaultSpec::DiskFill(fill) => Fault::DiskFill(fill.to_api()),
            FaultSpec::IoStress(stress) => Fault::IoStress(stress.to_api()),
            FaultSpec::Dns(dns) => Fault::Dns(dns.to_api()),
            FaultSpec::DeletePod(_) | FaultSpec::Partition(_) => return None,
        })
    }

    /// The kind as reports, records and metrics name it: the API's label (`process` for
    /// a kill), `delete_pod` for a deletion, `partition` for a partition's blackholes.
    pub fn kind(&self) -> &'static str {
        match self.agent_fault() {
            Some(fault) => fault.kind().label(),
            None => self.key(),
        }
    }

    /// What the file and the flags cannot say by their types: ranges, choices between
    /// fields, fields that need another. The same for both, so that what one refuses the
    /// other does.
    pub fn check(&self, names: FieldNames) -> Result<(), SpecError> {
        match self {
            FaultSpec::Kill(_) | FaultSpec::Blackhole(_) | FaultSpec::Pause(_) => Ok(()),
            FaultSpec::Cpu(cpu) => cpu.check(),
            FaultSpec::Memory(memory) => memory.check(names),
            FaultSpec::Network(network) => network.check(names),
            FaultSpec::Io(io) => io.check(names),
            FaultSpec::DiskFill(fill) => fill.check(names),
            FaultSpec::IoStress(stress) => stress.check(),
            FaultSpec::Dns(dns) => dns.check(names),
            FaultSpec::DeletePod(delete) => delete.check(),
            // Its selectors are checked as every step's target is (`FaultStep::selectors`).
            FaultSpec::Partition(_) => Ok(()),
        }
    }

    /// Whether the fault happens once instead of lasting (a kill without an interval, a
    /// deletion): its step's `duration` is then only an observation window, and optional.
    pub fn is_one_shot(&self) -> bool {
        match self {
            FaultSpec::Kill(kill) => kill.interval.is_none(),
            FaultSpec::DeletePod(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_api_has_a_key_and_each_key_is_one_kind() {
        let mut keys = FaultSpec::KEYS.to_vec();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), FaultSpec::KEYS.len(), "{keys:?}");
        // One spec per key, read from the smallest YAML that the key takes (a kind whose
        // spec needs a field gets it); its kind names the API's kinds exactly once each.
        let mut kinds: Vec<&str> = FaultSpec::KEYS
            .iter()
            .map(|key| {
                let value = match *key {
                    "cpu" => "{ load: 50 }",
                    "memory" => "{ size: 1MiB }",
                    "dns" => "{ rules: [{ name: a.test, action: drop }] }",
                    "partition" => "{ from: { pod: a }, to: { pod: b } }",
                    _ => "{}",
                };
                // A partition selects with its own from and to, never a target.
                let target = match *key {
                    "partition" => "",
                    _ => "target: { targets: ['pid:1'] }\n",
                };
                let step: crate::engine::experiment::FaultStep =
                    serde_norway::from_str(&format!("name: s\n{target}{key}: {value}\n"))
                        .unwrap_or_else(|e| panic!("{key}: {e}"));
                assert_eq!(step.fault.key(), *key);
                step.fault.kind()
            })
            .collect();
        kinds.retain(|kind| !["delete_pod", "partition"].contains(kind));
        kinds.sort();
        let mut api: Vec<&str> = api::FaultKind::every_kind()
            .into_iter()
            .map(|kind| kind.label())
            .collect();
        api.sort();
        assert_eq!(kinds, api);
    }
}
