//! The adversarial suite: what a hostile student, a retrying script and a careless admin
//! send, table-driven. Each case is one RPC with one bad input; it asserts the gRPC code, a
//! message a person understands (substrings that name the problem), and that nothing
//! changed: libvirt's domains, the storage directory (hidden files included), the exposed
//! ports, Corral's iptables rules and, on the coordinator, the store.
//!
//! The same tables run on libvirt's `test:///default` driver and on the real libvirtd.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use corral_client::proto as pb;
use tonic::{Code, Status};

/// The result of one call, without its value.
pub type Answer = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// A call of one RPC, ready to run on a client.
pub type Call<C> = Box<dyn FnOnce(C) -> Answer + Send>;

/// One hostile request against a client of type `C`.
pub struct Case<C> {
    pub rpc: &'static str,
    pub input: String,
    pub code: Code,
    /// Substrings the message must contain (case-insensitive).
    pub says: Vec<String>,
    pub call: Call<C>,
}

impl<C> Case<C> {
    pub fn of(
        rpc: &'static str,
        input: String,
        code: Code,
        says: Vec<String>,
        call: Call<C>,
    ) -> Self {
        Self {
            rpc,
            input,
            code,
            says,
            call,
        }
    }
}

impl<C> std::fmt::Debug for Case<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} with {}", self.rpc, self.input)
    }
}

/// Builds a case: `case(rpc, input, code, &["says"], |mut c| async move { c.x(..).await })`.
pub fn case<C, F, Fut, T>(
    rpc: &'static str,
    input: impl Into<String>,
    code: Code,
    says: &[&str],
    f: F,
) -> Case<C>
where
    F: FnOnce(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    Case {
        rpc,
        input: input.into(),
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
        call: Box::new(move |c| {
            let fut = f(c);
            Box::pin(async move { fut.await.map(|_| ()) })
        }),
    }
}

/// One boxed [`Call`]: `call!(C, who, |c| [captured, ...] c.service.method(request))`.
///
/// `who` picks the client from what a run hands every case (`fn(C) -> Client`); each
/// captured variable is cloned into the call.
#[macro_export]
macro_rules! call {
    ($C:ty, $who:expr, |$c:ident| [$($cap:ident),*] $body:expr) => {{
        $( let $cap = $cap.clone(); )*
        let f: $crate::adversarial::Call<$C> = Box::new(move |cs: $C| {
            #[allow(unused_mut, unused_variables)]
            let mut $c = $who(cs);
            Box::pin(async move {
                // Captured for every call of a list, used by some.
                let _ = ($(&$cap,)*);
                $body.await.map(|_| ())
            })
        });
        f
    }};
}

/// Named calls, one per line: `calls! { C, who, |c| [captured]; "Rpc" => body; ... }`.
#[macro_export]
macro_rules! calls {
    ($C:ty, $who:expr, |$c:ident| $caps:tt; $( $rpc:literal => $body:expr; )*) => {
        vec![ $( ($rpc, $crate::call!($C, $who, |$c| $caps $body)) ),* ]
    };
}

/// Cases, one per line, pushed to `out`:
///
/// `cases! { out, C, |c|; "Rpc", "input", Code, ["says", ...], who [captured] => body; }`
#[macro_export]
macro_rules! cases {
    (
        $out:ident, $C:ty, |$c:ident|;
        $( $rpc:literal, $input:expr, $code:ident, [$($says:expr),*], $who:ident $caps:tt => $body:expr; )*
    ) => {
        $( $out.push($crate::adversarial::Case {
            rpc: $rpc,
            input: ($input).into(),
            code: tonic::Code::$code,
            says: vec![$(($says).to_string()),*],
            call: $crate::call!($C, $who, |$c| $caps $body),
        }); )*
    };
}

/// Names a hostile user types: (what it is, the name).
pub fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("'.'", ".".into()),
        ("'..'", "..".into()),
        ("a path", "a/b".into()),
        ("a traversal", "../../etc/passwd".into()),
        ("an absolute path", "/etc/shadow".into()),
        ("a NUL byte", "a\0b".into()),
        ("a control character", "a\u{7}b".into()),
        ("a newline", "a\nb".into()),
        ("a direction override", "evil\u{202E}gpj.exe".into()),
        ("300 characters", "x".repeat(300)),
        ("shell metacharacters", "$(reboot);`id`|&".into()),
        ("a space", "a b".into()),
        ("a leading dash", "-rf".into()),
    ]
}

/// What a bad name's message must say.
pub fn name_says(value: &str) -> Vec<&'static str> {
    if value.is_empty() {
        vec!["name must not be empty"]
    } else {
        vec!["invalid", "name"]
    }
}

/// Everything an agent's host holds that a refused request must not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Domain name → its view (state, disks, labels...) as the agent shows it.
    pub domains: BTreeMap<String, String>,
    /// File name → (length, mode, modification time) of every file in the storage root.
    pub files: BTreeMap<String, (u64, u32, i128)>,
    pub ports: Vec<String>,
    /// Corral's iptables rules (real hosts only).
    pub iptables: Vec<String>,
}

/// Reads what a host holds now.
pub async fn host_snapshot(
    c: &mut corral_client::AgentClient,
    storage: &Path,
    iptables: bool,
) -> HostSnapshot {
    let mut domains = BTreeMap::new();
    if let Ok(list) = c
        .domains
        .list_domains(pb::ListDomainsRequest::default())
        .await
    {
        for mut d in list.into_inner().domains {
            d.started_at_unix = 0;
            domains.insert(d.name.clone(), format!("{d:?}"));
        }
    }
    let mut files = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(storage) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                files.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    (m.len(), m.permissions().mode(), mtime),
                );
            }
        }
    }
    let ports = c
        .ports
        .list_ports(pb::ListPortsRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .ports
                .iter()
                .map(|p| format!("{p:?}"))
                .collect()
        })
        .unwrap_or_default();
    let iptables = if iptables { corral_rules() } else { Vec::new() };
    HostSnapshot {
        domains,
        files,
        ports,
        iptables,
    }
}

/// Corral's own rules in `iptables-save` (chains and rules, without counters).
pub fn corral_rules() -> Vec<String> {
    let mut out = Vec::new();
    for table in ["nat", "filter"] {
        if let Ok(s) = crate::run("iptables-save", &["-t", table]) {
            out.extend(
                s.lines()
                    .filter(|l| l.contains("CORRAL") || l.contains("corral:"))
                    .map(|l| format!("{table}: {}", l.split(" [").next().unwrap_or(l))),
            );
        }
    }
    out
}

/// Runs every case: each must fail with its code and message and change nothing that
/// `snapshot` reads. Returns one line per case that did not; prints a count per RPC.
pub async fn run_cases<C, S, SF>(client: &C, cases: Vec<Case<C>>, mut snapshot: S) -> Vec<String>
where
    C: Clone,
    S: FnMut() -> SF,
    SF: Future<Output = String>,
{
    let mut failures = Vec::new();
    let mut per_rpc: BTreeMap<&'static str, usize> = BTreeMap::new();
    let total = cases.len();
    for case in cases {
        *per_rpc.entry(case.rpc).or_default() += 1;
        let before = snapshot().await;
        let answer = (case.call)(client.clone()).await;
        let after = snapshot().await;
        let what = format!("{} with {}", case.rpc, case.input.escape_debug());
        match answer {
            Ok(()) => failures.push(format!("{what}: accepted (wanted {:?})", case.code)),
            Err(s) => {
                let msg = s.message().to_lowercase();
                if s.code() != case.code {
                    failures.push(format!(
                        "{what}: code {:?}, wanted {:?} ({})",
                        s.code(),
                        case.code,
                        s.message()
                    ));
                } else if let Some(missing) =
                    case.says.iter().find(|w| !msg.contains(&w.to_lowercase()))
                {
                    failures.push(format!(
                        "{what}: message {:?} does not say {missing:?}",
                        s.message()
                    ));
                } else if s.message().chars().any(|c| c == '\0') || s.message().len() > 2000 {
                    failures.push(format!("{what}: unreadable message"));
                }
            }
        }
        if before != after {
            failures.push(format!(
                "{what}: changed the host or the store:\n  before {before}\n  after  {after}"
            ));
        }
    }
    println!("adversarial cases: {total} in all");
    for (rpc, n) in per_rpc {
        println!("  {rpc}: {n}");
    }
    failures
}

/// The agent-side things the agent suite works on, made once per run.
#[derive(Debug, Clone)]
pub struct AgentWorld {
    /// Prefix of every name (domains on a shared libvirtd are cleaned by it).
    pub p: String,
    /// A prepared base with one clone (`{p}c1`), shut off.
    pub base: String,
    pub base_file: String,
    pub clone: String,
    pub clone_disk: String,
    /// A plain domain, shut off, with its own system disk.
    pub other: String,
    pub other_disk: String,
    /// A volume no domain uses.
    pub free: String,
    pub storage: PathBuf,
    /// The agent's gRPC address (for the peers' transfer service).
    pub addr: String,
}

/// The first of `items`, or the error `missing`.
fn first<T: Clone>(items: &[T], missing: &str) -> anyhow::Result<T> {
    items
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{missing}"))
}

/// Makes the world: `spec` gives a domain spec for a name (test driver or tiny guest).
pub async fn make_agent_world(
    c: &mut corral_client::AgentClient,
    addr: &str,
    p: &str,
    storage: &Path,
    spec: impl Fn(&str) -> pb::DomainSpec,
) -> anyhow::Result<AgentWorld> {
    let base = format!("{p}base");
    c.domains
        .define_domain(pb::DefineDomainRequest {
            spec: Some(spec(&base)),
        })
        .await?;
    let b = c.bases.prepare_base(pb::DomainRef { name: base.clone() });
    let base_file = first(&b.await?.into_inner().volumes, "the base has no volume")?.base_volume;
    let clone = format!("{p}c1");
    let req = pb::CloneBaseRequest {
        base: base.clone(),
        name: clone.clone(),
        ..Default::default()
    };
    let d = c.bases.clone_base(req).await?.into_inner();
    let clone_disk = first(&d.disks, "the clone has no disk")?.volume;
    let other = format!("{p}other");
    let o = c.domains.define_domain(pb::DefineDomainRequest {
        spec: Some(spec(&other)),
    });
    let other_disk = first(&o.await?.into_inner().disks, "the domain has no disk")?.volume;
    let free = format!("{p}free.qcow2");
    c.volumes
        .create_volume(pb::CreateVolumeRequest {
            name: free.clone(),
            size_bytes: 8 << 20,
            format: pb::VolumeFormat::Qcow2 as i32,
        })
        .await?;
    Ok(AgentWorld {
        p: p.into(),
        base,
        base_file,
        clone,
        clone_disk,
        other,
        other_disk,
        free,
        storage: storage.to_path_buf(),
        addr: addr.into(),
    })
}
