//! corral-coordinator binary: configuration, logging, signals; the rest is the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use corral_coordinator::{config::Config, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "corral-coordinator", version, about = "Corral's coordinator")]
struct Args {
    /// TOML configuration file; CORRAL_COORD_* environment variables override it.
    #[arg(long, short, env = "CORRAL_COORD_CONFIG")]
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
    let args = Args::parse();
    let cfg = Config::load(args.config.as_deref()).context("loading configuration")?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let coord = server::build(cfg)
        .await
        .context("starting the coordinator")?;
    println!("corral-coordinator listening on {addr}");
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    server::serve(coord, listener, shutdown).await?;
    Ok(())
}
