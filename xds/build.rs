//! Compiles the policy-stream protocol with protox (pure Rust, no system `protoc`) and
//! generates the prost messages and the tonic client and server from it.

const PROTO: &str = "proto/sidecarless/policy/v1/policy.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
