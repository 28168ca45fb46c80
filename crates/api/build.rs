//! Compiles `proto/` with protox (pure Rust, no system protoc) and writes the descriptor set
//! to `OUT_DIR` so the server can offer reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "caselog/v1/events.proto",
        "caselog/v1/feed.proto",
        "caselog/v1/metrics.proto",
        "caselog/v1/admin.proto",
    ]
    .map(|f| proto_root.join(f));
    let descriptors = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("caselog_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
