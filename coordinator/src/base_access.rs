//! Who may clone which base, through the coordinator: the pure decision in [`crate::access`]
//! over the base's stored access and the user's attributes (the coordinator's own, and the
//! directory's when LDAP is configured); admins change a base's access.

use std::collections::{HashMap, HashSet};

use crate::access::{self, Attributes, BaseAccess, Decision, Rule};
use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::store::UserRecord;
use crate::vms::{check_name, Coordinator};

/// What one user may do with one base, with the base's access as stored.
#[derive(Debug, Clone)]
pub struct AccessView {
    pub base: String,
    pub access: BaseAccess,
    pub user: String,
    pub decision: Decision,
}

impl AccessView {
    pub fn explanation(&self) -> String {
        self.decision.explain(&self.access.rules)
    }
}

/// Checks a rule before it is stored.
fn check_rule(r: &Rule) -> Result<()> {
    let attr_ok = !r.attribute.is_empty()
        && r.attribute.len() <= 63
        && r.attribute
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !attr_ok {
        return Err(CoordError::Invalid(format!(
            "invalid attribute {:?}: 1-63 letters, digits, '-', '_' or '.'",
            r.attribute
        )));
    }
    if r.value.is_empty() {
        return Err(CoordError::Invalid(
            "a rule needs a value ('*' for every user)".into(),
        ));
    }
    corral_proto::rules::label(&r.attribute, &r.value)?;
    Ok(())
}

impl Coordinator {
    /// A user's attributes: the coordinator's record, then the directory's when configured.
    pub async fn attributes_of(&self, user: &UserRecord) -> Result<Attributes> {
        let mut attrs = access::from_json(&user.attributes);
        if let Some(dir) = &self.directory {
            access::merge(&mut attrs, dir.attributes(&user.name).await?);
        }
        Ok(attrs)
    }

    async fn decide_for(&self, user: &UserRecord, access: &BaseAccess) -> Result<Decision> {
        let admin = user.role == "admin";
        // Admins and closed bases need no attributes (and no directory round trip).
        if admin || !access.public || access.rules.is_empty() {
            return Ok(access::decide(
                admin,
                &Attributes::new(),
                access.public,
                &access.rules,
            ));
        }
        let attrs = self.attributes_of(user).await?;
        Ok(access::decide(admin, &attrs, access.public, &access.rules))
    }

    async fn stored_access(&self, base: &str) -> Result<BaseAccess> {
        check_name("base", base)?;
        let b = base.to_string();
        self.blocking(move |s| s.base_access(&b)).await
    }

    /// Refuses a clone of `base` by a caller its access does not allow.
    pub async fn may_clone(&self, caller: &Caller, base: &str) -> Result<()> {
        if caller.is_admin() {
            return Ok(());
        }
        let access = self.stored_access(base).await?;
        let d = self.decide_for(&caller.0, &access).await?;
        if d.allowed {
            return Ok(());
        }
        // Users learn that they may not, not which rule says so.
        let why = if access.public {
            "its access rules do not allow you"
        } else {
            "it is not public"
        };
        Err(CoordError::PermissionDenied(format!(
            "you may not clone base {base}: {why}"
        )))
    }

    /// Of the bases in `accesses`, those a caller may clone (admins: every one).
    pub async fn clonable_by(
        &self,
        caller: &Caller,
        accesses: &HashMap<String, BaseAccess>,
    ) -> Result<HashSet<String>> {
        let admin = caller.is_admin();
        // The caller's attributes are read (from the directory, maybe) only when a rule needs them.
        let needs_attrs = !admin && accesses.values().any(|a| a.public && !a.rules.is_empty());
        let attrs = if needs_attrs {
            self.attributes_of(&caller.0).await?
        } else {
            Attributes::new()
        };
        Ok(accesses
            .iter()
            .filter(|(_, a)| access::decide(admin, &attrs, a.public, &a.rules).allowed)
            .map(|(b, _)| b.clone())
            .collect())
    }

    /// A base's access and the decision for `user` (the caller when `None`; only admins
    /// ask for others). Users see no rules, only their own decision.
    pub async fn base_access(
        &self,
        caller: &Caller,
        base: &str,
        user: Option<&str>,
    ) -> Result<AccessView> {
        let mut access = self.stored_access(base).await?;
        let record = match user {
            Some(u) if u != caller.name() => {
                check_name("user", u)?;
                caller.require_admin()?;
                let n = u.to_string();
                self.blocking(move |s| s.users())
                    .await?
                    .into_iter()
                    .find(|r| r.name == n)
                    .ok_or_else(|| CoordError::NotFound(format!("user {u} not found")))?
            }
            _ => caller.0.clone(),
        };
        let decision = self.decide_for(&record, &access).await?;
        if !caller.is_admin() {
            access.rules.clear();
        }
        Ok(AccessView {
            base: base.into(),
            access,
            user: record.name,
            decision,
        })
    }

    /// Changes a base's access in one store call (admin): `edit` gets the stored access.
    async fn change_access(
        &self,
        caller: &Caller,
        base: &str,
        edit: impl FnOnce(&mut BaseAccess) -> Result<()> + Send + 'static,
    ) -> Result<AccessView> {
        check_name("base", base)?;
        caller.require_admin()?;
        let b = base.to_string();
        // An edit that refuses writes nothing.
        self.blocking(move |s| {
            let mut a = s.base_access(&b)?;
            Ok(match edit(&mut a) {
                Ok(()) => s.set_base_access(&b, &a).map(Ok)?,
                Err(e) => Err(e),
            })
        })
        .await??;
        tracing::info!(base, by = caller.name(), "base access changed");
        self.base_access(caller, base, None).await
    }

    pub async fn set_base_public(
        &self,
        caller: &Caller,
        base: &str,
        public: bool,
    ) -> Result<AccessView> {
        self.change_access(caller, base, move |a| {
            a.public = public;
            Ok(())
        })
        .await
    }

    /// Inserts `rule` at `position` (1 = first; 0 = last).
    pub async fn add_access_rule(
        &self,
        caller: &Caller,
        base: &str,
        rule: Rule,
        position: u32,
    ) -> Result<AccessView> {
        check_rule(&rule)?;
        self.change_access(caller, base, move |a| {
            let n = a.rules.len();
            let at = match position as usize {
                0 => n,
                p if p <= n + 1 => p - 1,
                p => {
                    return Err(CoordError::Invalid(format!(
                        "position {p} is past the end: the base has {n} rules"
                    )))
                }
            };
            if n >= 100 {
                return Err(CoordError::Invalid("a base has at most 100 rules".into()));
            }
            a.rules.insert(at, rule);
            Ok(())
        })
        .await
    }

    /// Removes the rule at `position` (1 = first).
    pub async fn remove_access_rule(
        &self,
        caller: &Caller,
        base: &str,
        position: u32,
    ) -> Result<AccessView> {
        self.change_access(caller, base, move |a| {
            let n = a.rules.len();
            match position as usize {
                p if (1..=n).contains(&p) => {
                    a.rules.remove(p - 1);
                    Ok(())
                }
                p => Err(CoordError::Invalid(format!(
                    "no rule {p}: the base has {n} rules (the first is 1)"
                ))),
            }
        })
        .await
    }
}
