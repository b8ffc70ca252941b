//! Generates the gRPC code with protox (a pure-Rust protobuf compiler), so building
//! needs no `protoc` binary. The same descriptor set is written out for server
//! reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "chaoscontrol/v1/agent.proto",
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
    std::fs::write(
        out_dir.join("chaoscontrol_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
