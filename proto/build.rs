//! Compiles `corral/v1/*.proto` with protox (pure Rust, no `protoc`) and tonic-prost-build.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "corral/v1/common.proto",
        "corral/v1/host.proto",
        "corral/v1/domains.proto",
        "corral/v1/volumes.proto",
        "corral/v1/bases.proto",
        "corral/v1/snapshots.proto",
        "corral/v1/ports.proto",
        "corral/v1/coordinator.proto",
        "corral/v1/vm_access.proto",
        "corral/v1/transfer.proto",
        "corral/v1/guest.proto",
        "corral/v1/vm_guest.proto",
        "corral/v1/images.proto",
        "corral/v1/backups.proto",
        "corral/v1/events.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("corral_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .type_attribute(".corral", "#[derive(serde::Serialize)]")
        // Volume data is sliced out of the received buffers, not copied.
        .bytes(".corral.v1.SyncData.data")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
