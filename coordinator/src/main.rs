//! corral-coordinator binary: configuration, logging, signals; the rest is the library.

use anyhow::Context;
use corral_coordinator::config::{Config, Settings};
use corral_coordinator::server;
use corral_proto::process::{shutdown_signal, Binary};

const COORDINATOR: Binary = Binary {
    name: "corral-coordinator",
    about: "Corral's coordinator",
    config_env: "CORRAL_COORD_CONFIG",
    env_prefix: "CORRAL_COORD",
    version: env!("CARGO_PKG_VERSION"),
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = COORDINATOR.start();
    let mut cfg = Config::load(config.as_deref()).context("loading configuration")?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    cfg.advertise.get_or_insert_with(|| addr.to_string());
    let coord = server::build(cfg)
        .await
        .context("starting the coordinator")?;
    println!("corral-coordinator listening on {addr}");
    server::serve(coord, listener, shutdown_signal()).await?;
    Ok(())
}
