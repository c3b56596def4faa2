//! The scale benchmark simulates thousands of agents answering only what a coordinator asks of
//! an idle host: the agent's DomainService, BaseService and GuestService are compiled again here, server
//! side only, with every RPC answering UNIMPLEMENTED unless the simulator implements it. The
//! messages are corral-proto's own.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "corral/v1/domains.proto",
        "corral/v1/bases.proto",
        "corral/v1/guest.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed=../proto/{f}");
    }
    let fds = protox::compile(files, ["../proto"])?;
    tonic_prost_build::configure()
        .extern_path(".corral.v1", "::corral_proto::v1")
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
