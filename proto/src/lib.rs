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
