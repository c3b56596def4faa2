//! What the agent's and the coordinator's `main` share: the command line (one option,
//! `--config FILE`, or its environment variable), logging to stderr, and the signals that
//! end the process. Behind the `process` feature, so library users do not compile it.

use std::path::PathBuf;

/// A server binary as its command line presents it.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    pub name: &'static str,
    pub about: &'static str,
    /// The environment variable that names the configuration file.
    pub config_env: &'static str,
    /// The prefix of the configuration's environment overrides (`CORRAL_AGENT`).
    pub env_prefix: &'static str,
    pub version: &'static str,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve, with this configuration file (or none).
    Run(Option<PathBuf>),
    /// Print this text and exit successfully (`--help`, `--version`).
    Print(String),
}

impl Binary {
    fn help(&self) -> String {
        format!(
            "{about}\n\nUsage: {name} [--config FILE]\n\nOptions:\n  -c, --config <FILE>  \
             TOML configuration file; {prefix}_* environment variables override it \
             [env: {env}]\n  -h, --help           Print help\n  -V, --version        \
             Print version\n",
            about = self.about,
            name = self.name,
            prefix = self.env_prefix,
            env = self.config_env,
        )
    }

    /// Reads `args` (without the program name); `env` is the configuration file's variable.
    pub fn parse(
        &self,
        args: impl IntoIterator<Item = String>,
        env: Option<String>,
    ) -> Result<Command, String> {
        let mut config = env.filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "-h" | "--help" => return Ok(Command::Print(self.help())),
                "-V" | "--version" => {
                    return Ok(Command::Print(format!("{} {}\n", self.name, self.version)))
                }
                "-c" | "--config" => match args.next() {
                    Some(v) if !v.is_empty() => config = Some(v.into()),
                    _ => return Err(format!("{a} needs a file\n\n{}", self.help())),
                },
                _ => match a.strip_prefix("--config=") {
                    Some(v) if !v.is_empty() => config = Some(v.into()),
                    _ => return Err(format!("unexpected argument {a:?}\n\n{}", self.help())),
                },
            }
        }
        Ok(Command::Run(config))
    }

    /// Reads the process's command line; prints and exits for `--help`, `--version` and
    /// mistakes (status 2). Then logs to stderr (`RUST_LOG`, `info` by default).
    pub fn start(&self) -> Option<PathBuf> {
        let env = std::env::var(self.config_env).ok();
        match self.parse(std::env::args().skip(1), env) {
            Ok(Command::Run(config)) => {
                init_logging();
                config
            }
            Ok(Command::Print(text)) => {
                print!("{text}");
                std::process::exit(0)
            }
            Err(text) => {
                eprint!("{text}");
                std::process::exit(2)
            }
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binary = Binary {
        name: "corral-x",
        about: "X",
        config_env: "CORRAL_X_CONFIG",
        env_prefix: "CORRAL_X",
        version: "1.0",
    };

    fn parse(args: &[&str], env: Option<&str>) -> Result<Command, String> {
        B.parse(args.iter().map(|s| s.to_string()), env.map(Into::into))
    }

    #[test]
    fn the_command_line_names_the_configuration() {
        let run = |p: &str| Ok(Command::Run(Some(p.into())));
        assert_eq!(parse(&[], None), Ok(Command::Run(None)));
        assert_eq!(parse(&[], Some("")), Ok(Command::Run(None)));
        assert_eq!(parse(&[], Some("/e.toml")), run("/e.toml"));
        assert_eq!(
            parse(&["--config", "/a.toml"], Some("/e.toml")),
            run("/a.toml")
        );
        assert_eq!(parse(&["-c", "/a.toml"], None), run("/a.toml"));
        assert_eq!(parse(&["--config=/a.toml"], None), run("/a.toml"));
        assert!(
            matches!(parse(&["--help"], None), Ok(Command::Print(t)) if t.contains("CORRAL_X_*"))
        );
        assert_eq!(
            parse(&["-V"], None),
            Ok(Command::Print("corral-x 1.0\n".into()))
        );
        for bad in [
            &["--config"][..],
            &["--config="],
            &["-c", ""],
            &["serve"],
            &["--verbose"],
        ] {
            let e = parse(bad, None).unwrap_err();
            assert!(e.contains("Usage: corral-x"), "{bad:?}: {e}");
        }
    }
}
