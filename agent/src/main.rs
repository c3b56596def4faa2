//! corral-agent binary: configuration, logging, signals; everything else is the library.

use anyhow::Context;
use corral_agent::config::{Config, Settings};
use corral_agent::server;
use corral_proto::process::{shutdown_signal, Binary};

const AGENT: Binary = Binary {
    name: "corral-agent",
    about: "Corral's KVM host agent",
    config_env: "CORRAL_AGENT_CONFIG",
    env_prefix: "CORRAL_AGENT",
    version: env!("CARGO_PKG_VERSION"),
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = AGENT.start();
    // libvirt would print every error to stderr; errors are reported through the API.
    virt::error::clear_error_callback();
    let cfg = Config::load(config.as_deref()).context("loading configuration")?;
    let listen = cfg.listen;
    let agent = server::build(cfg).await.context("starting the agent")?;
    let (listener, addr) = server::bind(listen).await?;
    // Tests and scripts read this line to find the port.
    println!("corral-agent listening on {addr}");
    tracing::info!(%addr, uri = %agent.hv.uri(), "serving");
    let shutdown = async {
        shutdown_signal().await;
        tracing::info!("shutting down; guests keep running");
    };
    server::serve(agent, listener, shutdown).await?;
    Ok(())
}
