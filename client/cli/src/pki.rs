//! A lab certificate authority and the certificates of hosts and clients (`corral pki`).
//! Private keys are written with mode 0600 and never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use corral_client::ClientError;

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(e.to_string())
}

/// Writes a new file with `mode`, refusing to replace an existing one.
fn write_new(path: &Path, data: &str, mode: u32) -> Result<(), ClientError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    f.write_all(data.as_bytes()).map_err(err)
}

pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Creates the lab CA in `dir` (ca.pem, ca.key).
pub fn init_ca(dir: &Path, name: &str) -> Result<PathBuf, ClientError> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let (cert_path, key_path) = ca_paths(dir);
    if cert_path.exists() || key_path.exists() {
        return Err(err(format!("a CA already exists in {}", dir.display())));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(cert_path)
}

/// Issues NAME.pem and NAME.key in `dir`, signed by the CA there, valid for `sans`
/// (DNS names or IP addresses), usable as server and as client.
pub fn issue(dir: &Path, name: &str, sans: &[String]) -> Result<(PathBuf, PathBuf), ClientError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(err(format!("invalid certificate name {name:?}")));
    }
    let (ca_cert, ca_key) = ca_paths(dir);
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(&ca_key).map_err(|e| err(format!("{}: {e}", ca_key.display())))?,
    )
    .map_err(err)?;
    let ca_pem = std::fs::read_to_string(&ca_cert)
        .map_err(|e| err(format!("{}: {e}", ca_cert.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(err)?;
    let mut sans = sans.to_vec();
    if sans.is_empty() {
        sans.push(name.to_string());
    }
    let mut params = CertificateParams::new(sans).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_and_certificates_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "Corral lab CA").unwrap();
        assert!(init_ca(dir.path(), "again").is_err(), "never replaced");
        let (cert, key) = issue(
            dir.path(),
            "agent-1",
            &["127.0.0.1".into(), "host1.lab".into()],
        )
        .unwrap();
        assert!(std::fs::read_to_string(cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        for k in [key, dir.path().join("ca.key")] {
            assert_eq!(
                std::fs::metadata(k).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(issue(dir.path(), "agent-1", &[]).is_err(), "never replaced");
        assert!(issue(dir.path(), "../x", &[]).is_err());
    }
}
