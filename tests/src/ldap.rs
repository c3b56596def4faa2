//! A real OpenLDAP `slapd` (Debian's) that a test starts for itself: its own configuration
//! and database in a temporary directory, users loaded with `slapadd`, served on a free
//! loopback port until dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const SUFFIX: &str = "dc=corral,dc=test";
pub const PEOPLE: &str = "ou=people,dc=corral,dc=test";
pub const ADMIN_DN: &str = "cn=admin,dc=corral,dc=test";
pub const ADMIN_PASSWORD: &str = "corral-test-secret";

/// A running slapd.
pub struct Slapd {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether slapd is installed (deploy/setup-host.sh installs it).
pub fn available() -> bool {
    Path::new("/usr/sbin/slapd").is_file() && Path::new("/usr/sbin/slapadd").is_file()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Slapd {
    /// Starts a directory holding `users`: (uid, [(attribute, value)...]) under [`PEOPLE`].
    pub fn start(users: &[(&str, &[(&str, &str)])]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::create_dir(d.join("db"))?;
        let conf = d.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {pid}\n\
                 database mdb\n\
                 maxsize 16777216\n\
                 suffix \"{SUFFIX}\"\n\
                 rootdn \"{ADMIN_DN}\"\n\
                 rootpw {ADMIN_PASSWORD}\n\
                 directory {db}\n",
                pid = d.join("slapd.pid").display(),
                db = d.join("db").display(),
            ),
        )?;
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: corral\n\
             dc: corral\n\ndn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        );
        for (uid, attrs) in users {
            ldif.push_str(&format!(
                "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n\
                 sn: {uid}\n"
            ));
            for (k, v) in *attrs {
                ldif.push_str(&format!("{k}: {v}\n"));
            }
            ldif.push('\n');
        }
        let ldif_path = d.join("users.ldif");
        std::fs::write(&ldif_path, ldif)?;
        let out = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&ldif_path)
            .output()
            .context("slapadd")?;
        if !out.status.success() {
            bail!("slapadd: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let url = format!("ldap://127.0.0.1:{port}");
        // -d keeps it in the foreground, a child of the test.
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(format!("{url}/"))
            .arg("-d")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("slapd")?;
        let mut s = Self {
            child,
            url,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait()? {
                bail!("slapd ended: {status}");
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("slapd did not listen on {} in 10 s", s.url);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// Stops serving (a directory that went away).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
