//! Generates the Function gRPC client and server from proto/function.proto (needs protoc:
//! Debian's protobuf-compiler, installed by scripts/setup.sh).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/function.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/function.proto");
    Ok(())
}
