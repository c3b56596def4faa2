//! Inside a running guest through the QEMU guest agent: ping, addresses, programs and files.
//!
//! The guest agent speaks JSON over a virtio channel; libvirt carries each command
//! ([`crate::hypervisor::Hypervisor::guest_command`]). Commands are built with `serde_json`
//! and answers read into typed structs ([`Qga`]); the loops over them (run until exit, read
//! until end of file) live in the API layer, one blocking call per step.

use base64::Engine as _;
use corral_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

use crate::agent::Agent;
use crate::domain_xml::DomainXml;
use crate::error::{AgentError, Result};
use crate::validate;

/// How long one guest agent command may take (file and status calls are quick).
const COMMAND_TIMEOUT_S: i32 = 10;
/// A ping's time limit: a guest that does not answer in this is not ready.
const PING_TIMEOUT_S: i32 = 2;
/// Bytes per guest-file-write: larger requests (256 KiB) made libvirt give up on the agent
/// ("not available for now") on this host; 64 KiB each went through.
const WRITE_CHUNK: usize = 64 * 1024;
/// Bytes per guest-file-read (the answer carries them base64-encoded).
pub const READ_CHUNK: u64 = 256 * 1024;

/// The guest agent channel of a domain as its (live) XML shows it.
pub fn channel_state(xml: &DomainXml, active: bool) -> pb::GuestAgent {
    match xml.devices.channels.iter().find(|c| c.is_guest_agent()) {
        None => pb::GuestAgent::None,
        Some(c) if active && c.target.state.as_deref() == Some("connected") => {
            pb::GuestAgent::Connected
        }
        Some(_) => pb::GuestAgent::Disconnected,
    }
}

/// QEMU guest agent commands and the answers Corral reads.
pub struct Qga;

#[derive(Debug, Deserialize)]
struct Answer<T> {
    #[serde(rename = "return")]
    ret: T,
}

/// `guest-exec-status`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ExecStatus {
    pub exited: bool,
    #[serde(default)]
    pub exitcode: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub out_data: Option<String>,
    #[serde(default)]
    pub err_data: Option<String>,
    #[serde(default)]
    pub out_truncated: bool,
    #[serde(default)]
    pub err_truncated: bool,
}

/// `guest-file-read`.
#[derive(Debug, Deserialize)]
pub struct ReadAnswer {
    #[serde(rename = "buf-b64", default)]
    pub buf: String,
    #[serde(default)]
    pub eof: bool,
}

#[derive(Debug, Deserialize)]
struct Pid {
    pid: i64,
}

#[derive(Debug, Deserialize)]
struct Interface {
    #[serde(rename = "ip-addresses", default)]
    addresses: Vec<IpAddress>,
}

#[derive(Debug, Deserialize)]
struct IpAddress {
    #[serde(rename = "ip-address-type")]
    kind: String,
    #[serde(rename = "ip-address")]
    address: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Decodes base64 output from the guest.
pub fn decode(s: &str) -> Result<Vec<u8>> {
    b64()
        .decode(s)
        .map_err(|e| AgentError::Internal(format!("guest agent sent bad base64: {e}")))
}

impl Qga {
    pub fn parse<T: for<'de> Deserialize<'de>>(answer: &str) -> Result<T> {
        serde_json::from_str::<Answer<T>>(answer)
            .map(|a| a.ret)
            .map_err(|e| AgentError::Internal(format!("guest agent answer {answer:.200}: {e}")))
    }

    pub fn ping() -> String {
        json!({"execute": "guest-ping"}).to_string()
    }

    pub fn interfaces() -> String {
        json!({"execute": "guest-network-get-interfaces"}).to_string()
    }

    /// IPv4 addresses other than loopback from a guest-network-get-interfaces answer.
    pub fn ipv4(answer: &str) -> Result<Vec<String>> {
        let ifs: Vec<Interface> = Self::parse(answer)?;
        Ok(ifs
            .into_iter()
            .flat_map(|i| i.addresses)
            .filter(|a| a.kind == "ipv4" && !a.address.starts_with("127."))
            .map(|a| a.address)
            .collect())
    }

    /// Runs a program with its output captured; `shell` runs `path` as a `/bin/sh -c` script.
    pub fn exec(r: &pb::GuestExecRequest) -> String {
        let (path, args): (&str, Vec<&str>) = if r.shell {
            let mut a = vec!["-c", r.path.as_str()];
            a.extend(r.args.iter().map(String::as_str));
            ("/bin/sh", a)
        } else {
            (r.path.as_str(), r.args.iter().map(String::as_str).collect())
        };
        let mut args_json = json!({"path": path, "arg": args, "capture-output": true});
        if !r.env.is_empty() {
            args_json["env"] = json!(r.env);
        }
        if !r.input.is_empty() {
            args_json["input-data"] = json!(b64().encode(&r.input));
        }
        json!({"execute": "guest-exec", "arguments": args_json}).to_string()
    }

    pub fn pid(answer: &str) -> Result<i64> {
        Ok(Self::parse::<Pid>(answer)?.pid)
    }

    pub fn exec_status(pid: i64) -> String {
        json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string()
    }

    /// Kills a program the guest agent started (there is no agent command for it).
    pub fn kill(pid: i64) -> String {
        json!({"execute": "guest-exec", "arguments": {"path": "kill", "arg": ["-9", pid.to_string()]}})
            .to_string()
    }

    pub fn open(path: &str, mode: &str) -> String {
        json!({"execute": "guest-file-open", "arguments": {"path": path, "mode": mode}}).to_string()
    }

    pub fn read(handle: i64, count: u64) -> String {
        json!({"execute": "guest-file-read", "arguments": {"handle": handle, "count": count}})
            .to_string()
    }

    pub fn write(handle: i64, data: &[u8]) -> String {
        json!({"execute": "guest-file-write",
               "arguments": {"handle": handle, "buf-b64": b64().encode(data)}})
        .to_string()
    }

    pub fn close(handle: i64) -> String {
        json!({"execute": "guest-file-close", "arguments": {"handle": handle}}).to_string()
    }
}

/// An exec request as the guest may receive it; refused before anything runs in the guest.
pub fn check_exec(r: &pb::GuestExecRequest) -> Result<()> {
    Ok(corral_proto::rules::guest_exec("domain", r)?)
}

pub fn check_path(path: &str) -> Result<()> {
    Ok(corral_proto::rules::guest_path(path)?)
}

impl Agent {
    /// The domain runs and its guest agent has the channel open; otherwise a clear refusal.
    pub fn guest_usable(&self, name: &str) -> Result<()> {
        validate::name("domain", name)?;
        let xml = self.read_domain(name)?;
        let active = self.hv.state(name)?.is_active();
        if !active {
            return Err(AgentError::precondition(format!(
                "domain {name} is not running"
            )));
        }
        match channel_state(&xml, active) {
            pb::GuestAgent::Connected => Ok(()),
            pb::GuestAgent::None => Err(AgentError::precondition(format!(
                "domain {name} has no guest agent channel (it was defined without one)"
            ))),
            _ => Err(AgentError::precondition(format!(
                "the guest agent of {name} is not connected: the guest is booting, or has no \
                 qemu-guest-agent running"
            ))),
        }
    }

    /// One guest agent command on a domain checked with [`Agent::guest_usable`] before.
    pub fn guest(&self, name: &str, cmd: &str) -> Result<String> {
        self.hv.guest_command(name, cmd, COMMAND_TIMEOUT_S)
    }

    /// Whether the guest agent answers now, and the guest's addresses from it.
    pub fn guest_status(&self, name: &str) -> Result<pb::GuestStatus> {
        validate::name("domain", name)?;
        let xml = self.read_domain(name)?;
        let active = self.hv.state(name)?.is_active();
        let agent = channel_state(&xml, active);
        let mut status = pb::GuestStatus {
            agent: agent as i32,
            ..Default::default()
        };
        if agent != pb::GuestAgent::Connected {
            status.detail = if active {
                "the guest agent is not connected".into()
            } else {
                "the domain is not running".into()
            };
            return Ok(status);
        }
        match self.hv.guest_command(name, &Qga::ping(), PING_TIMEOUT_S) {
            Ok(_) => {
                status.answers = true;
                status.addresses = self
                    .guest(name, &Qga::interfaces())
                    .and_then(|a| Qga::ipv4(&a))
                    .unwrap_or_default();
            }
            Err(e) => status.detail = e.to_string(),
        }
        Ok(status)
    }

    /// Starts a program; its pid in the guest.
    pub fn guest_exec_start(&self, r: &pb::GuestExecRequest) -> Result<i64> {
        check_exec(r)?;
        self.guest_usable(&r.name)?;
        let pid = Qga::pid(&self.guest(&r.name, &Qga::exec(r))?)?;
        tracing::info!(domain = %r.name, pid, program = %r.path, shell = r.shell, "guest exec");
        Ok(pid)
    }

    pub fn guest_exec_status(&self, name: &str, pid: i64) -> Result<ExecStatus> {
        Qga::parse(&self.guest(name, &Qga::exec_status(pid))?)
    }

    /// Kills a program past its time limit (and reaps it, so the agent forgets it).
    pub fn guest_exec_kill(&self, name: &str, pid: i64) -> Result<ExecStatus> {
        tracing::info!(domain = %name, pid, "guest exec: time limit, killing");
        self.guest(name, &Qga::kill(pid))?;
        for _ in 0..50 {
            let s = self.guest_exec_status(name, pid)?;
            if s.exited {
                return Ok(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(AgentError::DeadlineExceeded(format!(
            "guest program {pid} in {name} did not die after SIGKILL"
        )))
    }

    /// Opens a guest file; `write` creates or truncates it.
    pub fn guest_open(&self, name: &str, path: &str, write: bool) -> Result<i64> {
        check_path(path)?;
        self.guest_usable(name)?;
        let answer = self.guest(name, &Qga::open(path, if write { "w" } else { "r" }))?;
        Qga::parse(&answer)
    }

    /// The next chunk of an open file and whether it was the last.
    pub fn guest_read(&self, name: &str, handle: i64) -> Result<(Vec<u8>, bool)> {
        let r: ReadAnswer = Qga::parse(&self.guest(name, &Qga::read(handle, READ_CHUNK))?)?;
        Ok((decode(&r.buf)?, r.eof))
    }

    pub fn guest_write(&self, name: &str, handle: i64, data: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < data.len() {
            #[derive(Deserialize)]
            struct Written {
                count: usize,
            }
            let piece = &data[done..data.len().min(done + WRITE_CHUNK)];
            let w: Written = Qga::parse(&self.guest(name, &Qga::write(handle, piece))?)?;
            if w.count == 0 {
                return Err(AgentError::Internal(format!(
                    "guest agent of {name} wrote nothing"
                )));
            }
            done += w.count;
        }
        Ok(())
    }

    pub fn guest_close(&self, name: &str, handle: i64) -> Result<()> {
        self.guest(name, &Qga::close(handle)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_passes_arguments_one_by_one_and_a_shell_only_when_asked() {
        let r = pb::GuestExecRequest {
            name: "vm".into(),
            path: "echo".into(),
            args: vec!["a b".into(), "$(rm -rf /)".into()],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&Qga::exec(&r)).unwrap();
        assert_eq!(v["arguments"]["path"], "echo");
        assert_eq!(v["arguments"]["arg"], json!(["a b", "$(rm -rf /)"]));
        let sh = pb::GuestExecRequest {
            shell: true,
            path: "echo $0".into(),
            args: vec!["x".into()],
            input: b"in".to_vec(),
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&Qga::exec(&sh)).unwrap();
        assert_eq!(v["arguments"]["path"], "/bin/sh");
        assert_eq!(v["arguments"]["arg"], json!(["-c", "echo $0", "x"]));
        assert_eq!(v["arguments"]["input-data"], "aW4=");
    }

    #[test]
    fn answers_are_read() {
        let s: ExecStatus = Qga::parse(
            r#"{"return":{"exitcode":0,"out-data":"aGkK","out-truncated":false,"exited":true}}"#,
        )
        .unwrap();
        assert!(s.exited);
        assert_eq!(decode(s.out_data.as_deref().unwrap()).unwrap(), b"hi\n");
        let ips = Qga::ipv4(
            r#"{"return":[{"name":"lo","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8}]},
               {"name":"eth0","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"192.168.122.5","prefix":24},
               {"ip-address-type":"ipv6","ip-address":"fe80::1","prefix":64}]}]}"#,
        )
        .unwrap();
        assert_eq!(ips, vec!["192.168.122.5"]);
        assert!(Qga::parse::<ExecStatus>(r#"{"error":{"class":"x"}}"#).is_err());
    }

    #[test]
    fn bad_requests_are_refused() {
        let ok = pb::GuestExecRequest {
            name: "vm".into(),
            path: "true".into(),
            ..Default::default()
        };
        check_exec(&ok).unwrap();
        for (r, want) in [
            (
                pb::GuestExecRequest {
                    path: "".into(),
                    ..ok.clone()
                },
                "required",
            ),
            (
                pb::GuestExecRequest {
                    path: "a\0b".into(),
                    ..ok.clone()
                },
                "NUL",
            ),
            (
                pb::GuestExecRequest {
                    env: vec!["NOEQ".into()],
                    ..ok.clone()
                },
                "NAME=VALUE",
            ),
            (
                pb::GuestExecRequest {
                    timeout_seconds: 3601,
                    ..ok.clone()
                },
                "maximum",
            ),
            (
                pb::GuestExecRequest {
                    name: "../x".into(),
                    ..ok.clone()
                },
                "domain name",
            ),
        ] {
            let e = check_exec(&r).unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{e}");
            assert!(e.to_string().contains(want), "{e} / {want}");
        }
        assert!(check_path("relative").is_err());
        assert!(check_path("/etc/x\0").is_err());
        check_path("/tmp/x").unwrap();
    }
}
