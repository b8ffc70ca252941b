//! Generates the gRPC code with protox (a pure-Rust protobuf compiler), so building
//! needs no `protoc` binary. The agent API's and the controller API's own descriptor
//! sets are written out for server reflection (without the containerd services, which
//! the agent calls but does not serve), one per server so each lists only what it serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "chaoscontrol/v1/agent.proto",
    "chaoscontrol/v1/controller.proto",
    "containerd/runtime.proto",
    "containerd/containers.proto",
    "containerd/tasks.proto",
    "containerd/version.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let served = protox::compile(["chaoscontrol/v1/agent.proto"], ["."])?;
    std::fs::write(
        out_dir.join("chaoscontrol_descriptor.bin"),
        served.encode_to_vec(),
    )?;
    let controller = protox::compile(["chaoscontrol/v1/controller.proto"], ["."])?;
    std::fs::write(
        out_dir.join("chaoscontrol_controller_descriptor.bin"),
        controller.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
