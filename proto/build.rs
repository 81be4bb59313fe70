//! Compiles herdwatch.v1 with protox (a protobuf compiler in Rust), so building needs no
//! system `protoc`; tonic-prost-build writes the messages and the AgentService client and
//! server into OUT_DIR.
use std::path::PathBuf;

const PROTOS: [&str; 3] = [
    "herdwatch/v1/agent.proto",
    "herdwatch/v1/finding.proto",
    "herdwatch/v1/snapshot.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    // protox's error names the file, line and column of a mistake in the .proto files.
    let descriptors = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        // The generated client takes any tonic channel; the agent's CLI brings its own
        // (a Unix socket connector), so no transport helpers are needed here.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
