//! Inside guests: `vm exec`, `vm cp`, `vm guest` and `base post-load`, through the
//! coordinator and the guest's QEMU guest agent.

use std::io::{Read, Write};
use std::path::PathBuf;

use corral_client::{ClientError, CoordinatorClient};
use corral_proto::v1 as pb;
use pb::guest_exec_event::Event;

use crate::cli::Out;

/// Bytes per message when copying a file into a guest.
const CHUNK: usize = 256 * 1024;

/// `vm exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    /// Kill the program after this many seconds (60 when not given, at most 3600).
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Run the command as a /bin/sh -c script (the first word after `--` is the script).
    #[arg(long)]
    pub shell: bool,
    /// NAME=VALUE for the program's environment (repeat it).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Send this command's standard input to the program.
    #[arg(long)]
    pub stdin: bool,
    /// The program and its arguments, after `--`; nothing is split or expanded.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `base post-load`.
#[derive(clap::Args, Debug)]
pub struct PostLoadArgs {
    pub base: String,
    /// Remove every command (before adding the one given, if any).
    #[arg(long)]
    pub clear: bool,
    #[arg(long)]
    pub shell: bool,
    #[arg(long)]
    pub timeout: Option<u32>,
    /// A command to add, after `--`. Without one (and without --clear): show them.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn readiness_name(r: i32) -> String {
    pb::Readiness::try_from(r)
        .map(|r| r.as_str_name().trim_start_matches("READINESS_").to_string())
        .unwrap_or_default()
}

/// A VM's readiness for `vm ls`/`vm show`.
pub(crate) fn readiness(v: &pb::Vm) -> String {
    readiness_name(v.readiness)
}

fn split(command: Vec<String>) -> (String, Vec<String>) {
    let mut it = command.into_iter();
    let path = it.next().unwrap_or_default();
    (path, it.collect())
}

/// Runs a program in a VM; its output goes to ours and its exit code becomes ours.
pub(crate) async fn exec(c: &mut CoordinatorClient, a: ExecArgs) -> Result<(), ClientError> {
    let mut input = Vec::new();
    if a.stdin {
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| ClientError::Config(format!("reading standard input: {e}")))?;
    }
    let (path, args) = split(a.command);
    let req = pb::GuestExecRequest {
        name: a.name,
        path,
        args,
        shell: a.shell,
        input,
        timeout_seconds: a.timeout.unwrap_or(0),
        env: a.env,
    };
    let mut events = c.guest.exec_vm(req).await?.into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(e) = events.message().await? {
        match e.event {
            Some(Event::Stdout(b)) => {
                let _ = out.write_all(&b);
            }
            Some(Event::Stderr(b)) => {
                let _ = err.write_all(&b);
            }
            Some(Event::Exited(x)) => {
                let _ = (out.flush(), err.flush());
                if x.timed_out {
                    eprintln!("corral: the program passed its time limit and was killed");
                }
                if x.truncated {
                    eprintln!("corral: the guest agent cut the output");
                }
                let code = if x.timed_out {
                    124
                } else if x.code < 0 {
                    128 + x.signal
                } else {
                    x.code
                };
                if code != 0 {
                    std::process::exit(code);
                }
                return Ok(());
            }
            Some(Event::StartedPid(_)) | None => {}
        }
    }
    Err(ClientError::Config(
        "the program's output ended before it exited".into(),
    ))
}

/// `VM:/path` → (VM, path); a local path → None.
fn remote(s: &str) -> Option<(String, String)> {
    let (vm, path) = s.split_once(':')?;
    (!vm.is_empty() && !vm.contains('/') && path.starts_with('/'))
        .then(|| (vm.to_string(), path.to_string()))
}

/// Copies a file into or out of a guest: exactly one side is `VM:/path`.
pub(crate) async fn cp(
    c: &mut CoordinatorClient,
    out: &Out,
    src: String,
    dst: String,
) -> Result<(), ClientError> {
    match (remote(&src), remote(&dst)) {
        (Some((name, path)), None) => {
            let mut chunks = c
                .guest
                .read_vm_file(pb::GuestFileRef { name, path })
                .await?
                .into_inner();
            let tmp = PathBuf::from(format!("{dst}.corral-part"));
            let mut f = std::fs::File::create(&tmp)
                .map_err(|e| ClientError::Config(format!("{}: {e}", tmp.display())))?;
            let mut bytes = 0u64;
            let result: Result<(), ClientError> = async {
                while let Some(ch) = chunks.message().await? {
                    f.write_all(&ch.data)
                        .map_err(|e| ClientError::Config(format!("{dst}: {e}")))?;
                    bytes += ch.data.len() as u64;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &dst).map_err(|e| ClientError::Config(format!("{dst}: {e}")))?;
            out.show(&pb::GuestFileWritten { bytes }, |w| {
                format!("{} bytes copied to {dst}", w.bytes)
            });
        }
        (None, Some((name, path))) => {
            let data =
                std::fs::read(&src).map_err(|e| ClientError::Config(format!("{src}: {e}")))?;
            let mut msgs = vec![pb::GuestFileWrite {
                file: Some(pb::GuestFileRef { name, path }),
                data: Vec::new(),
            }];
            msgs.extend(data.chunks(CHUNK).map(|d| pb::GuestFileWrite {
                file: None,
                data: d.to_vec(),
            }));
            let w = c
                .guest
                .write_vm_file(tokio_stream::iter(msgs))
                .await?
                .into_inner();
            out.show(&w, |w| format!("{} bytes copied to {dst}", w.bytes));
        }
        _ => {
            return Err(ClientError::Config(
                "copy between a local file and VM:/absolute/path (exactly one side in a VM)".into(),
            ))
        }
    }
    Ok(())
}

pub(crate) async fn status(
    c: &mut CoordinatorClient,
    out: &Out,
    name: String,
) -> Result<(), ClientError> {
    let s = c.guest.get_vm_guest(pb::VmRef { name }).await?.into_inner();
    out.show(&s, |s| {
        let agent = pb::GuestAgent::try_from(s.agent)
            .map(|a| {
                a.as_str_name()
                    .trim_start_matches("GUEST_AGENT_")
                    .to_string()
            })
            .unwrap_or_default();
        format!(
            "agent={agent} answers={} addresses={}{}",
            s.answers,
            s.addresses.join(","),
            if s.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", s.detail)
            }
        )
    });
    Ok(())
}

fn command_line(c: &pb::GuestCommand) -> String {
    let mut s = if c.shell {
        format!("sh -c {:?}", c.path)
    } else {
        c.path.clone()
    };
    for a in &c.args {
        s.push(' ');
        s.push_str(a);
    }
    if c.timeout_seconds > 0 {
        s.push_str(&format!("  (limit {} s)", c.timeout_seconds));
    }
    s
}

pub(crate) async fn post_load(
    c: &mut CoordinatorClient,
    out: &Out,
    a: PostLoadArgs,
) -> Result<(), ClientError> {
    let mut p = c
        .guest
        .get_base_post_load(pb::BaseRef {
            name: a.base.clone(),
        })
        .await?
        .into_inner();
    if a.clear || !a.command.is_empty() {
        if a.clear {
            p.commands.clear();
        }
        if !a.command.is_empty() {
            let (path, args) = split(a.command);
            p.commands.push(pb::GuestCommand {
                path,
                args,
                shell: a.shell,
                timeout_seconds: a.timeout.unwrap_or(0),
            });
        }
        p.base = a.base;
        p = c.guest.set_base_post_load(p).await?.into_inner();
    }
    out.show(&p, |p| {
        if p.commands.is_empty() {
            format!("{}: no post-load commands", p.base)
        } else {
            let mut s = format!("{} post-load:", p.base);
            for (i, c) in p.commands.iter().enumerate() {
                s.push_str(&format!("\n  {}. {}", i + 1, command_line(c)));
            }
            s
        }
    });
    Ok(())
}
