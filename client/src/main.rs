//! `corral`: the command-line client. Parsing and output live in `corral_client::cli`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = corral_client::cli::Cli::parse();
    if let Err(e) = corral_client::cli::run(cli).await {
        eprintln!("corral: {e}");
        std::process::exit(1);
    }
}
