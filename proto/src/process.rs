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

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `time level span{fields}: message fields`.
    #[default]
    Text,
    /// One JSON object per line, with every enclosing span and its fields (`op`, `rpc`...).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("log format {s:?}: text or json")),
        }
    }
}

/// The environment variable that gives the log format when `--log-format` does not.
pub const LOG_FORMAT_ENV: &str = "CORRAL_LOG_FORMAT";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve, with this configuration file (or none), logging in this format.
    Run(Option<PathBuf>, LogFormat),
    /// Print this text and exit successfully (`--help`, `--version`).
    Print(String),
}

impl Binary {
    fn help(&self) -> String {
        format!(
            "{about}\n\nUsage: {name} [--config FILE] [--log-format text|json]\n\nOptions:\n  \
             -c, --config <FILE>   TOML configuration file; {prefix}_* environment variables \
             override it [env: {env}]\n      --log-format <F>  text (default) or json: one \
             object per line with its spans [env: {log}]\n  -h, --help            Print help\n  \
             -V, --version         Print version\n",
            about = self.about,
            name = self.name,
            prefix = self.env_prefix,
            env = self.config_env,
            log = LOG_FORMAT_ENV,
        )
    }

    /// Reads `args` (without the program name); `env` is the configuration file's variable,
    /// `log_env` the log format's.
    pub fn parse(
        &self,
        args: impl IntoIterator<Item = String>,
        env: Option<String>,
        log_env: Option<String>,
    ) -> Result<Command, String> {
        let mut config = env.filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut log = match log_env.filter(|v| !v.is_empty()) {
            Some(v) => v
                .parse()
                .map_err(|e| format!("{LOG_FORMAT_ENV}: {e}\n\n{}", self.help()))?,
            None => LogFormat::Text,
        };
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
                "--log-format" => {
                    let v = args.next().unwrap_or_default();
                    log = v.parse().map_err(|e| format!("{e}\n\n{}", self.help()))?;
                }
                _ => {
                    if let Some(v) = a.strip_prefix("--log-format=") {
                        log = v.parse().map_err(|e| format!("{e}\n\n{}", self.help()))?;
                        continue;
                    }
                    match a.strip_prefix("--config=") {
                        Some(v) if !v.is_empty() => config = Some(v.into()),
                        _ => return Err(format!("unexpected argument {a:?}\n\n{}", self.help())),
                    }
                }
            }
        }
        Ok(Command::Run(config, log))
    }

    /// Reads the process's command line; prints and exits for `--help`, `--version` and
    /// mistakes (status 2). Then logs to stderr (`RUST_LOG`, `info` by default).
    pub fn start(&self) -> Option<PathBuf> {
        let env = std::env::var(self.config_env).ok();
        let log_env = std::env::var(LOG_FORMAT_ENV).ok();
        match self.parse(std::env::args().skip(1), env, log_env) {
            Ok(Command::Run(config, log)) => {
                init_logging(log);
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        // Every line names its spans with their fields: `op` (the operation, on the
        // coordinator and on the agents it called), `method` and `rpc`.
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
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
        B.parse(
            args.iter().map(|s| s.to_string()),
            env.map(Into::into),
            None,
        )
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        let run = |log| Ok(Command::Run(None, log));
        let p = |args: &[&str], env: Option<&str>| {
            B.parse(
                args.iter().map(|s| s.to_string()),
                None,
                env.map(Into::into),
            )
        };
        assert_eq!(p(&[], None), run(LogFormat::Text));
        assert_eq!(p(&[], Some("")), run(LogFormat::Text));
        assert_eq!(p(&[], Some("json")), run(LogFormat::Json));
        assert_eq!(p(&["--log-format", "json"], None), run(LogFormat::Json));
        assert_eq!(
            p(&["--log-format=text"], Some("json")),
            run(LogFormat::Text)
        );
        for (args, env) in [
            (&["--log-format"][..], None),
            (&["--log-format", "xml"], None),
            (&["--log-format="], None),
            (&[], Some("yaml")),
        ] {
            let e = p(args, env).unwrap_err();
            assert!(e.contains("text or json"), "{args:?} {env:?}: {e}");
        }
    }

    #[test]
    fn the_command_line_names_the_configuration() {
        let run = |p: &str| Ok(Command::Run(Some(p.into()), LogFormat::Text));
        assert_eq!(parse(&[], None), Ok(Command::Run(None, LogFormat::Text)));
        assert_eq!(
            parse(&[], Some("")),
            Ok(Command::Run(None, LogFormat::Text))
        );
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
