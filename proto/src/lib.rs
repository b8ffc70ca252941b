//! Generated code for the chaos-agent API, the controller API (`chaosctl serve`) and
//! the slice of containerd's API the agent calls. The module tree mirrors the protobuf
//! packages, because generated code refers across packages with `super::` paths.

#![allow(clippy::all, clippy::pedantic)]

pub mod chaoscontrol {
    pub mod v1 {
        tonic::include_proto!("chaoscontrol.v1");
    }
}

pub mod containerd {
    pub mod v1 {
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }
    pub mod services {
        pub mod containers {
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        pub mod tasks {
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }
        pub mod version {
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
    }
}

pub use chaoscontrol::v1 as api;

/// The encoded `FileDescriptorSet` of the agent API (`chaoscontrol.v1`), for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chaoscontrol_descriptor.bin"));

/// The encoded `FileDescriptorSet` of the controller API (`chaoscontrol.v1.Controller`),
/// for the reflection service of `chaosctl serve`.
pub const CONTROLLER_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/chaoscontrol_controller_descriptor.bin"
));

impl api::FaultKind {
    /// The kind's name in metrics, journal records, logs and the command line. Exhaustive:
    /// a kind added to the API gets its name here, and every table of names follows.
    pub fn label(self) -> &'static str {
        match self {
            api::FaultKind::Unspecified => "unspecified",
            api::FaultKind::Process => "process",
            api::FaultKind::Network => "network",
            api::FaultKind::Cpu => "cpu",
            api::FaultKind::Memory => "memory",
            api::FaultKind::Io => "io",
            api::FaultKind::Blackhole => "blackhole",
            api::FaultKind::Pause => "pause",
            api::FaultKind::DiskFill => "disk_fill",
            api::FaultKind::IoStress => "io_stress",
            api::FaultKind::Dns => "dns",
        }
    }

    /// Every kind of the API but Unspecified, in the enum's order (its values are dense
    /// from 1: the first value that is not a kind ends them).
    pub fn every_kind() -> Vec<api::FaultKind> {
        (1..)
            .map_while(|value| api::FaultKind::try_from(value).ok())
            .collect()
    }

    /// The kind a [`label`](Self::label) names; None for a name no kind has.
    pub fn from_label(label: &str) -> Option<api::FaultKind> {
        let name = format!("FAULT_KIND_{}", label.to_ascii_uppercase());
        api::FaultKind::from_str_name(&name).filter(|kind| kind.label() == label)
    }
}

impl api::inject_request::Fault {
    /// The kind of fault a request asks for.
    pub fn kind(&self) -> api::FaultKind {
        use api::inject_request::Fault;
        match self {
            Fault::Process(_) => api::FaultKind::Process,
            Fault::Network(_) => api::FaultKind::Network,
            Fault::Cpu(_) => api::FaultKind::Cpu,
            Fault::Memory(_) => api::FaultKind::Memory,
            Fault::Io(_) => api::FaultKind::Io,
            Fault::Blackhole(_) => api::FaultKind::Blackhole,
            Fault::Pause(_) => api::FaultKind::Pause,
            Fault::DiskFill(_) => api::FaultKind::DiskFill,
            Fault::IoStress(_) => api::FaultKind::IoStress,
            Fault::Dns(_) => api::FaultKind::Dns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::api;

    #[test]
    fn every_fault_kind_has_its_own_label_and_is_found_by_it() {
        let kinds: Vec<api::FaultKind> = std::iter::once(api::FaultKind::Unspecified)
            .chain(api::FaultKind::every_kind())
            .collect();
        assert!(kinds.len() >= 10, "{kinds:?}");
        // Dense from 1, as every_kind assumes: no kind beyond the first gap.
        assert!(
            (0..64)
                .filter_map(|v| api::FaultKind::try_from(v).ok())
                .count()
                == kinds.len()
        );
        let mut labels: Vec<&str> = kinds.iter().map(|kind| kind.label()).collect();
        for kind in &kinds {
            assert_eq!(api::FaultKind::from_label(kind.label()), Some(*kind));
        }
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), kinds.len(), "{labels:?}");
        assert_eq!(api::FaultKind::from_label("CPU"), None);
        assert_eq!(api::FaultKind::from_label("disk"), None);
        assert_eq!(
            api::FaultKind::from_label("io_stress"),
            Some(api::FaultKind::IoStress)
        );
    }
}
