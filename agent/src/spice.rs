//! Display files (`.vv`, remote-viewer's format) and SPICE over TLS: where the host has
//! SPICE certificates (libvirt's `spice_tls_x509_cert_dir`, made by `deploy/setup-host.sh`),
//! a SPICE display also has a TLS port, and its file carries the port, the CA and the
//! server's subject, and asks the client to use TLS for every channel.
//!
//! This module wraps `openssl` (only to read the server certificate's subject).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;

use crate::error::{AgentError, Result};

/// What a client needs to trust this host's SPICE TLS port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiceTls {
    pub ca_pem: String,
    /// The server certificate's subject (RFC 2253), as remote-viewer's `host-subject`.
    pub host_subject: String,
}

/// The host's SPICE TLS files in `dir`: `None` when it has none (SPICE is then plain only).
pub fn load(dir: &Path) -> Result<Option<SpiceTls>> {
    let (ca, cert) = (dir.join("ca-cert.pem"), dir.join("server-cert.pem"));
    if !ca.is_file() || !cert.is_file() {
        return Ok(None);
    }
    let ca_pem = std::fs::read_to_string(&ca)
        .map_err(|e| AgentError::internal(format!("cannot read {}: {e}", ca.display())))?;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert)
        .output()
        .map_err(|e| AgentError::internal(format!("cannot run openssl: {e}")))?;
    if !out.status.success() {
        return Err(AgentError::internal(format!(
            "openssl cannot read {}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let host_subject = text
        .trim()
        .trim_start_matches("subject=")
        .trim()
        .to_string();
    Ok(Some(SpiceTls {
        ca_pem,
        host_subject,
    }))
}

/// A display's connection details, as written into its file.
#[derive(Debug, Clone, Copy)]
pub struct Vv<'a> {
    pub kind: &'a str,
    pub host: &'a str,
    pub port: i32,
    /// 0 when the display has no TLS port.
    pub tls_port: i32,
    pub password: &'a str,
    pub title: &'a str,
}

/// remote-viewer's `.vv` file. Values never hold a newline (the CA's are written `\n`).
pub fn vv_file(v: &Vv, tls: Option<&SpiceTls>) -> String {
    let clean = |s: &str| s.replace(['\n', '\r'], "");
    let mut f = format!(
        "[virt-viewer]\ntype={}\nhost={}\nport={}\npassword={}\ntitle={}\ndelete-this-file=1\n",
        clean(v.kind),
        clean(v.host),
        v.port,
        clean(v.password),
        clean(v.title)
    );
    if let (Some(t), true) = (tls, v.tls_port > 0 && v.kind == "spice") {
        let ca = t
            .ca_pem
            .trim_end()
            .replace("\r\n", "\n")
            .replace('\n', "\\n");
        f.push_str(&format!(
            "tls-port={}\nca={ca}\nhost-subject={}\nsecure-channels=all\n",
            v.tls_port,
            clean(&t.host_subject)
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(kind: &'static str, tls_port: i32) -> Vv<'static> {
        Vv {
            kind,
            host: "10.0.0.1",
            port: 5900,
            tls_port,
            password: "pw",
            title: "web1",
        }
    }

    #[test]
    fn a_spice_file_with_tls_carries_the_ca_port_and_subject() {
        let tls = SpiceTls {
            ca_pem: "-----BEGIN CERTIFICATE-----\nAB\nCD\n-----END CERTIFICATE-----\n".into(),
            host_subject: "CN=corral-spice-h1".into(),
        };
        let f = vv_file(&vv("spice", 5901), Some(&tls));
        assert!(
            f.starts_with("[virt-viewer]\ntype=spice\nhost=10.0.0.1\nport=5900\n"),
            "{f}"
        );
        assert!(f.contains("\ntls-port=5901\n"), "{f}");
        assert!(
            f.contains("\nca=-----BEGIN CERTIFICATE-----\\nAB\\nCD\\n-----END CERTIFICATE-----\n"),
            "{f}"
        );
        assert!(f.contains("\nhost-subject=CN=corral-spice-h1\n"), "{f}");
        assert!(f.contains("\nsecure-channels=all\n"), "{f}");
        // One key per line: nothing smuggles in another.
        assert!(
            f.lines().all(|l| l.starts_with('[') || l.contains('=')),
            "{f}"
        );
    }

    #[test]
    fn plain_files_have_no_tls_lines() {
        let tls = SpiceTls {
            ca_pem: "x".into(),
            host_subject: "CN=h".into(),
        };
        for (v, tls) in [
            (vv("vnc", 0), Some(&tls)),
            (vv("vnc", 5901), Some(&tls)),
            (vv("spice", 0), Some(&tls)),
            (vv("spice", 5901), None),
        ] {
            let f = vv_file(&v, tls);
            assert!(!f.contains("tls-port") && !f.contains("ca="), "{f}");
        }
        let evil = Vv {
            title: "a\nhost=evil",
            ..vv("vnc", 0)
        };
        assert!(!vv_file(&evil, None).contains("\nhost=evil"));
    }

    #[test]
    fn a_host_without_certificates_has_no_tls() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
    }
}
