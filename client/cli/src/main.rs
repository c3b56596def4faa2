//! `corral`: the command-line client. Parsing and output live in `corral_cli::cli`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = corral_cli::cli::Cli::parse();
    if let Err(e) = corral_cli::cli::run(cli).await {
        eprintln!("corral: {e}");
        std::process::exit(1);
    }
}
