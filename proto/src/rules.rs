//! The one set of input rules, shared by the agent (which enforces them before it touches
//! the host) and the coordinator (which enforces them before it submits an operation), so
//! that bad input is refused up front with the same message wherever it arrives.
//!
//! Every function returns [`Invalid`] with a message a person understands; each process maps
//! it to its own error type (gRPC `InvalidArgument` in both).

use crate::v1 as pb;

/// A rule broken by a request: the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

pub type Result<T = ()> = std::result::Result<T, Invalid>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Invalid(msg.into()))
}

/// Longest name accepted for domains, volumes, snapshots, ports, hosts and users.
pub const MAX_NAME_LEN: usize = 64;
/// Largest volume accepted: 64 TiB.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Smallest volume accepted: 1 MiB.
pub const MIN_VOLUME_BYTES: u64 = 1 << 20;
pub const MIN_MEMORY_MIB: u64 = 32;
pub const MAX_MEMORY_MIB: u64 = 4 << 20;
pub const MAX_VCPUS: u32 = 512;
/// Longest free text (descriptions, kernel command lines).
pub const MAX_TEXT_LEN: usize = 2048;
/// Most disks per domain (vda..vdz).
pub const MAX_DISKS: usize = 26;
pub const VIDEO_MODELS: &[&str] = &["vga", "virtio", "qxl", "cirrus", "bochs", "none"];
pub const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "rtl8139"];

/// Checks a name (`what` names it in messages).
///
/// Accepted: 1 to 64 characters of ASCII letters, digits, `.`, `_` and `-`, not starting with
/// `.` or `-`, without `..`. Everything else gets a message saying what is wrong.
pub fn name(what: &str, value: &str) -> Result {
    let bad = |why: &str| invalid(format!("invalid {what} name {value:?}: {why}"));
    if value.is_empty() {
        return invalid(format!("{what} name must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return bad(&format!(
            "it is {} characters long, at most {MAX_NAME_LEN} are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if value.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    if value.contains('/') {
        return bad("it contains '/'");
    }
    if value.contains("..") {
        return bad("it contains '..'");
    }
    if value.starts_with('.') || value.starts_with('-') {
        return bad("it must not start with '.' or '-'");
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

/// Checks a volume size in bytes.
pub fn volume_size(bytes: u64) -> Result {
    if bytes == 0 {
        return invalid("volume size must be greater than zero");
    }
    if bytes < MIN_VOLUME_BYTES {
        return invalid(format!(
            "volume size {bytes} bytes is too small: at least 1 MiB ({MIN_VOLUME_BYTES} bytes)"
        ));
    }
    if bytes > MAX_VOLUME_BYTES {
        return invalid(format!(
            "volume size {bytes} bytes is too large: at most 64 TiB ({MAX_VOLUME_BYTES} bytes)"
        ));
    }
    Ok(())
}

pub fn memory_mib(mib: u64) -> Result {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return invalid(format!(
            "memory of {mib} MiB is out of range: {MIN_MEMORY_MIB} MiB to {MAX_MEMORY_MIB} MiB"
        ));
    }
    Ok(())
}

pub fn vcpus(n: u32) -> Result {
    if n == 0 || n > MAX_VCPUS {
        return invalid(format!("{n} vCPUs is out of range: 1 to {MAX_VCPUS}"));
    }
    Ok(())
}

/// Checks a TCP port number (1 to 65535) carried as u32 in protobuf.
pub fn port(what: &str, value: u32) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Ok(p),
        _ => invalid(format!("{what} {value} is out of range: 1 to 65535")),
    }
}

/// Checks a MAC address given by a user (unicast, `xx:xx:xx:xx:xx:xx`).
pub fn mac(value: &str) -> Result {
    let bad = |why: &str| invalid(format!("invalid MAC address {value:?}: {why}"));
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return bad("expected six hex pairs like 52:54:00:12:34:56");
    }
    match u8::from_str_radix(parts[0], 16) {
        Ok(first) if first & 1 == 1 => bad("it is a multicast address"),
        Ok(_) => Ok(()),
        Err(e) => bad(&e.to_string()),
    }
}

/// Checks a label key or value (free-form but printable, bounded).
pub fn label(key: &str, value: &str) -> Result {
    if key.is_empty() || key.len() > 63 || value.len() > 255 {
        return invalid(format!(
            "invalid label {key:?}: keys are 1-63 characters, values at most 255"
        ));
    }
    if key
        .chars()
        .chain(value.chars())
        .any(|c| c.is_control() || is_bidi_control(c))
    {
        return invalid(format!(
            "invalid label {key:?}: control characters are not allowed"
        ));
    }
    Ok(())
}

pub fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result {
    labels.into_iter().try_for_each(|(k, v)| label(k, v))
}

/// Unicode direction overrides and isolates, which make text display other than it reads.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Checks free text (a description, a kernel command line): printable, bounded.
pub fn text(what: &str, value: &str) -> Result {
    if value.len() > MAX_TEXT_LEN
        || value
            .chars()
            .any(|c| (c.is_control() && c != '\t') || is_bidi_control(c))
    {
        return invalid(format!(
            "{what} must be printable and at most {MAX_TEXT_LEN} characters"
        ));
    }
    Ok(())
}

/// A volume role from protobuf; unknown values are refused.
pub fn role(value: i32) -> Result<pb::VolumeRole> {
    pb::VolumeRole::try_from(value).map_err(|_| {
        Invalid(format!(
            "unknown volume role {value}: use system, tmp, swap or data"
        ))
    })
}

/// An absolute host path of a kernel or initrd (existence is the agent's to check).
pub fn boot_path(what: &str, p: &str) -> Result {
    if !p.starts_with('/') || p.contains("..") || p.chars().any(char::is_control) {
        return invalid(format!("{what} path {p:?} must be absolute, without '..'"));
    }
    Ok(())
}

/// Everything in a domain spec that can be checked without the host: names, numbers,
/// labels, models, addresses. The agent checks the rest (files, existence).
pub fn domain_spec(spec: &pb::DomainSpec) -> Result {
    name("domain", &spec.name)?;
    vcpus(if spec.vcpus == 0 { 1 } else { spec.vcpus })?;
    memory_mib(if spec.memory_mib == 0 {
        512
    } else {
        spec.memory_mib
    })?;
    labels(&spec.labels)?;
    if !spec.owner.is_empty() {
        name("owner", &spec.owner)?;
    }
    let video = if spec.video_model.is_empty() {
        "vga"
    } else {
        &spec.video_model
    };
    if !VIDEO_MODELS.contains(&video) {
        return invalid(format!(
            "unknown video model {video:?}: use one of {}",
            VIDEO_MODELS.join(", ")
        ));
    }
    if spec.disks.len() > MAX_DISKS {
        return invalid(format!("at most {MAX_DISKS} disks per domain"));
    }
    let mut seen = std::collections::HashSet::new();
    for d in &spec.disks {
        role(d.role)?;
        name("volume", &d.volume)?;
        if !seen.insert(d.volume.as_str()) {
            return invalid(format!(
                "volume {:?} is given twice: a volume belongs to one disk",
                d.volume
            ));
        }
        if d.create_size_bytes > 0 {
            volume_size(d.create_size_bytes)?;
        }
    }
    for n in &spec.nics {
        if !n.mac.is_empty() {
            mac(&n.mac)?;
        }
        let model = if n.model.is_empty() {
            "virtio"
        } else {
            &n.model
        };
        if !NIC_MODELS.contains(&model) {
            return invalid(format!(
                "unknown NIC model {model:?}: use one of {}",
                NIC_MODELS.join(", ")
            ));
        }
        if !n.network.is_empty() {
            name("network", &n.network)?;
        }
    }
    if let Some(d) = &spec.display {
        pb::DisplayType::try_from(d.r#type).map_err(|_| {
            Invalid(format!(
                "unknown display type {}: use spice or vnc",
                d.r#type
            ))
        })?;
        if !d.listen.is_empty() && d.listen.parse::<std::net::IpAddr>().is_err() {
            return invalid(format!(
                "display listen address {:?} is not an IP address",
                d.listen
            ));
        }
    }
    if let Some(b) = &spec.kernel_boot {
        if b.kernel.is_empty() {
            if !b.initrd.is_empty() || !b.cmdline.is_empty() {
                return invalid("initrd and cmdline need a kernel");
            }
        } else {
            boot_path("kernel", &b.kernel)?;
            if !b.initrd.is_empty() {
                boot_path("initrd", &b.initrd)?;
            }
            if b.cmdline.chars().any(char::is_control) || b.cmdline.len() > MAX_TEXT_LEN {
                return invalid(
                    "kernel command line must be printable and at most 2048 characters",
                );
            }
        }
    }
    Ok(())
}

/// A clone request's own fields (the base's existence is the host's to check).
pub fn clone_base(req: &pb::CloneBaseRequest) -> Result {
    name("domain", &req.name)?;
    name("base", &req.base)?;
    labels(&req.labels)?;
    if !req.owner.is_empty() {
        name("owner", &req.owner)?;
    }
    pb::DataVolumeMode::try_from(req.data_volumes).map_err(|_| {
        Invalid(format!(
            "unknown data volume mode {}: use empty or copy",
            req.data_volumes
        ))
    })?;
    if req.memory_mib != 0 {
        memory_mib(req.memory_mib)?;
    }
    if req.vcpus != 0 {
        vcpus(req.vcpus)?;
    }
    Ok(())
}

/// A snapshot request's names and text.
pub fn snapshot(domain: &str, snapshot: &str, description: &str) -> Result {
    name("domain", domain)?;
    name("snapshot", snapshot)?;
    text("snapshot description", description)
}

/// Most bytes a guest program's standard input may carry (it travels in one guest agent
/// command, and libvirt gave up on larger ones here; copy bigger input with `vm cp`).
pub const MAX_GUEST_INPUT: usize = 64 * 1024;
/// Longest a guest program may run.
pub const MAX_GUEST_TIMEOUT_S: u32 = 3600;

/// A program to run in a guest (the `what`, domain or VM, named in `name`): a program, arguments one by
/// one, `NAME=VALUE` environment entries, bounded input and time limit.
pub fn guest_exec(what: &str, r: &pb::GuestExecRequest) -> Result {
    name(what, &r.name)?;
    guest_command(&r.path, &r.args, r.timeout_seconds)?;
    let bad = |s: &str| s.contains('\0');
    if let Some(e) = r
        .env
        .iter()
        .find(|e| bad(e) || !e.contains('=') || e.starts_with('='))
    {
        return invalid(format!("environment entry {e:?} must be NAME=VALUE"));
    }
    if r.input.len() > MAX_GUEST_INPUT {
        return invalid(format!(
            "standard input is limited to {MAX_GUEST_INPUT} bytes; copy larger input into \
             the guest with `corral vm cp` first"
        ));
    }
    Ok(())
}

/// A program, its arguments and its time limit (post-load commands and `exec`).
pub fn guest_command(path: &str, args: &[String], timeout_seconds: u32) -> Result {
    let bad = |s: &str| s.contains('\0');
    if path.is_empty() {
        return invalid("a program (path) to run is required");
    }
    if path.len() > 4096 || bad(path) {
        return invalid("the program must be at most 4096 bytes, without NUL characters");
    }
    if args.len() > 1024 || args.iter().any(|a| bad(a) || a.len() > 65536) {
        return invalid("at most 1024 arguments of at most 64 KiB each, without NUL characters");
    }
    if timeout_seconds > MAX_GUEST_TIMEOUT_S {
        return invalid(format!(
            "time limit {timeout_seconds} s is over the maximum of {MAX_GUEST_TIMEOUT_S} s"
        ));
    }
    Ok(())
}

/// A path in a guest: absolute, at most 4096 bytes, without NUL.
pub fn guest_path(path: &str) -> Result {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return invalid(format!(
            "guest path {path:.100?} must be absolute, at most 4096 bytes, without NUL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in ["web1", "a", "Base_2.qcow2", "lab-01", &"x".repeat(64)] {
            assert_eq!(name("domain", n), Ok(()));
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases = [
            ("", "must not be empty"),
            (&"x".repeat(65), "at most 64"),
            (&"x".repeat(300), "300 characters"),
            ("a/b", "'/'"),
            ("..", "'..'"),
            (".", "start with"),
            ("a..b", "'..'"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (".hidden", "start with"),
            ("-opt", "start with"),
            ("a b", "not allowed"),
            ("é", "not allowed"),
            ("a\u{202E}b", "not allowed"),
            ("$(reboot)", "not allowed"),
            ("a;rm", "not allowed"),
        ];
        for (n, why) in cases {
            let msg = name("domain", n).unwrap_err().to_string();
            assert!(msg.contains(why), "{n:?}: {msg}");
        }
    }

    #[test]
    fn sizes_ports_macs_labels() {
        assert!(volume_size(0).unwrap_err().0.contains("greater than zero"));
        assert!(volume_size(u64::MAX).unwrap_err().0.contains("too large"));
        assert_eq!(volume_size(1 << 30), Ok(()));
        assert!(port("guest port", 0).is_err());
        assert!(port("guest port", 70000).is_err());
        assert_eq!(port("guest port", 80), Ok(80));
        assert_eq!(mac("52:54:00:aa:bb:cc"), Ok(()));
        assert!(mac("01:00:00:00:00:00").is_err());
        assert!(mac("52:54:00:aa:bb").is_err());
        assert!(memory_mib(8).is_err());
        assert!(vcpus(0).is_err());
        assert!(label("k", "a\u{202E}b").is_err());
        assert!(label("", "v").is_err());
        assert!(text("description", &"x".repeat(3000)).is_err());
    }

    #[test]
    fn specs_are_checked_whole() {
        let mut spec = pb::DomainSpec {
            name: "web".into(),
            disks: vec![pb::DiskSpec {
                volume: "web.qcow2".into(),
                create_size_bytes: 1 << 30,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(domain_spec(&spec), Ok(()));
        spec.disks[0].volume = "../etc/passwd".into();
        assert!(domain_spec(&spec).unwrap_err().0.contains("'/'"));
        spec.disks[0].volume = "web.qcow2".into();
        spec.disks[0].create_size_bytes = u64::MAX;
        assert!(domain_spec(&spec).unwrap_err().0.contains("too large"));
        spec.disks[0].create_size_bytes = 0;
        spec.disks.push(spec.disks[0].clone());
        assert!(domain_spec(&spec).unwrap_err().0.contains("given twice"));
    }
}
