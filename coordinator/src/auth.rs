//! Tokens and roles. Tokens are random, shown once, and stored only as SHA-256 hashes; the
//! hashes are cached in memory so that checking a call never waits on the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::error::{CoordError, Result};
use crate::store::{Store, UserRecord};

/// The authenticated caller, put into every request's extensions by [`Auth::interceptor`].
#[derive(Debug, Clone, PartialEq)]
pub struct Caller(pub UserRecord);

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.0.role == "admin"
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(CoordError::PermissionDenied(format!(
                "{} is not an admin",
                self.0.name
            )))
        }
    }
    /// Admins may touch everything; users only what they own.
    pub fn may_touch(&self, owner: &str) -> bool {
        self.is_admin() || self.0.name == owner
    }
}

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "crl_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A cached token: its user, and when it stops working (ms since the epoch).
#[derive(Debug, Clone)]
struct Known {
    user: UserRecord,
    expires_ms: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Auth {
    by_hash: RwLock<HashMap<String, Known>>,
}

fn poisoned<T>(_: T) -> CoordError {
    CoordError::Internal("auth cache poisoned".into())
}

impl Auth {
    /// Loads every token hash with its user.
    pub fn load(store: &dyn Store) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            by_hash: RwLock::new(Self::read(store)?),
        }))
    }

    /// Reads every token again (a coordinator that does not lead learns the leader's).
    pub fn reload(&self, store: &dyn Store) -> Result<()> {
        let fresh = Self::read(store)?;
        *self.by_hash.write().map_err(poisoned)? = fresh;
        Ok(())
    }

    fn read(store: &dyn Store) -> Result<HashMap<String, Known>> {
        let users: HashMap<String, UserRecord> = store
            .users()?
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let mut by_hash = HashMap::new();
        for t in store.tokens()? {
            if let Some(u) = users.get(&t.user) {
                let known = Known {
                    user: u.clone(),
                    expires_ms: t.expires_ms,
                };
                by_hash.insert(t.hash, known);
            }
        }
        Ok(by_hash)
    }

    /// Creates a token for a user, stores its hash and returns the token.
    pub fn issue(&self, store: &dyn Store, user: &UserRecord) -> Result<String> {
        let token = new_token();
        let h = hash(&token);
        store.add_token(&user.name, &h, None)?;
        self.remember(h, user.clone(), None)?;
        Ok(token)
    }

    /// Caches a stored token hash for its user, with its expiry.
    pub fn remember(
        &self,
        token_hash: String,
        user: UserRecord,
        expires_ms: Option<i64>,
    ) -> Result<()> {
        let known = Known { user, expires_ms };
        self.by_hash
            .write()
            .map_err(poisoned)?
            .insert(token_hash, known);
        Ok(())
    }

    /// Refreshes the cached record of a user (role or attributes changed).
    pub fn update_user(&self, user: &UserRecord) {
        if let Ok(mut m) = self.by_hash.write() {
            for k in m.values_mut().filter(|k| k.user.name == user.name) {
                k.user = user.clone();
            }
        }
    }

    /// Forgets every token of a removed user.
    pub fn forget_user(&self, name: &str) -> Result<()> {
        self.by_hash
            .write()
            .map_err(poisoned)?
            .retain(|_, k| k.user.name != name);
        Ok(())
    }

    /// Forgets a revoked token.
    pub fn forget_token(&self, token_hash: &str) -> Result<()> {
        self.by_hash.write().map_err(poisoned)?.remove(token_hash);
        Ok(())
    }

    /// The user of a token that exists and has not expired.
    pub fn check(&self, token: &str) -> Option<UserRecord> {
        let m = self.by_hash.read().ok()?;
        let k = m.get(&hash(token))?;
        let live = k.expires_ms.is_none_or(|t| crate::store::now_ms() < t);
        live.then(|| k.user.clone())
    }

    /// A tonic interceptor: `authorization: Bearer <token>` → [`Caller`] in the extensions.
    pub fn interceptor(
        self: &Arc<Self>,
    ) -> impl Fn(Request<()>) -> std::result::Result<Request<()>, Status> + Clone {
        let me = Arc::clone(self);
        move |mut req: Request<()>| {
            let token = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("a token is required (authorization: Bearer <token>)")
                })?;
            let user = me
                .check(token)
                .ok_or_else(|| Status::unauthenticated("unknown, revoked or expired token"))?;
            req.extensions_mut().insert(Caller(user));
            Ok(req)
        }
    }
}

/// The caller of a request (set by the interceptor).
pub fn caller<T>(req: &Request<T>) -> std::result::Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller"))
}

/// When no user exists: creates `admin` and writes its token to `path` (mode 0600).
pub fn bootstrap(store: &dyn Store, auth: &Auth, path: &std::path::Path) -> Result<Option<String>> {
    // A token file left by an earlier start (or made by hand) is narrowed too.
    narrow(path)?;
    if !store.users()?.is_empty() {
        return Ok(None);
    }
    let admin = UserRecord {
        name: "admin".into(),
        role: "admin".into(),
        attributes: serde_json::json!({}),
    };
    store.put_user(&admin)?;
    let token = auth.issue(store, &admin)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CoordError::Internal(e.to_string()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CoordError::Internal(format!("cannot write {}: {e}", path.display())))?;
    narrow(path)?;
    f.write_all(token.as_bytes())
        .map_err(|e| CoordError::Internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(Some(token))
}

/// Makes an existing file readable by its owner only (0600).
pub fn narrow(path: &std::path::Path) -> Result<()> {
    crate::store::private(path).map_err(|e| CoordError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Sqlite;

    #[test]
    fn tokens_are_hashed_checked_and_bootstrapped_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join("db")).unwrap();
        let auth = Auth::load(&store).unwrap();
        let path = dir.path().join("admin.token");
        // A file that exists already, world-readable, is narrowed to 0600 and rewritten.
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let token = bootstrap(&store, &auth, &path).unwrap().unwrap();
        assert!(
            bootstrap(&store, &auth, &path).unwrap().is_none(),
            "only once"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(auth.check(&token).unwrap().role, "admin");
        assert!(auth.check("crl_wrong").is_none());
        // Only the hash is stored; a fresh cache from the store still knows the token.
        assert!(store
            .tokens()
            .unwrap()
            .iter()
            .all(|t| t.hash != token && t.hash.len() == 64));
        assert_eq!(
            Auth::load(&store).unwrap().check(&token).unwrap().name,
            "admin"
        );
        let intercept = auth.interceptor();
        assert_eq!(
            intercept(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let req = intercept(req).unwrap();
        assert!(caller(&req).unwrap().is_admin());
    }
}
