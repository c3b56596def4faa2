//! corral-agent binary: configuration, logging, signals; everything else is the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use corral_agent::{config::Config, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "corral-agent", version, about = "Corral's KVM host agent")]
struct Args {
    /// TOML configuration file; CORRAL_AGENT_* environment variables override it.
    #[arg(long, short, env = "CORRAL_AGENT_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // libvirt would print every error to stderr; errors are reported through the API.
    virt::error::clear_error_callback();
    let args = Args::parse();
    let cfg = Config::load(args.config.as_deref()).context("loading configuration")?;
    let listen = cfg.listen;
    let agent = server::build(cfg).await.context("starting the agent")?;
    let (listener, addr) = server::bind(listen).await?;
    // Tests and scripts read this line to find the port.
    println!("corral-agent listening on {addr}");
    tracing::info!(%addr, uri = %agent.hv.uri(), "serving");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; guests keep running");
    };
    server::serve(agent, listener, shutdown).await?;
    Ok(())
}
