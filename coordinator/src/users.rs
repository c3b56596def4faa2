//! Users and their tokens: checked, inserted without overwriting, changed and revoked in the
//! authentication cache at once. Admins manage users; a user lists and revokes their own
//! tokens.

use std::collections::HashMap;
use std::time::Duration;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::lifecycle::Action;
use crate::store::{OpRecord, TokenRecord, UserRecord};
use crate::vms::{check_name, Coordinator};

/// A token lives at most a year.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(366 * 86_400);

fn check_role(role: &str) -> Result<()> {
    if role != "admin" && role != "user" {
        return Err(CoordError::Invalid(format!(
            "role {role:?} is not admin or user"
        )));
    }
    Ok(())
}

impl Coordinator {
    /// Adds a user with role `admin` or `user` and attributes for access rules.
    pub async fn create_user(
        &self,
        caller: &Caller,
        name: &str,
        role: &str,
        attributes: &HashMap<String, String>,
    ) -> Result<UserRecord> {
        check_name("user", name)?;
        corral_proto::rules::labels(attributes)?;
        check_role(role)?;
        caller.require_admin()?;
        let user = UserRecord {
            name: name.into(),
            role: role.into(),
            attributes: serde_json::json!(attributes),
        };
        let u = user.clone();
        self.blocking(move |s| s.insert_user(&u)).await?;
        if !crate::dry::now() {
            self.auth.update_user(&user);
        }
        Ok(user)
    }

    /// A stored user.
    pub async fn user(&self, name: &str) -> Result<UserRecord> {
        check_name("user", name)?;
        let n = name.to_string();
        self.blocking(move |s| s.users())
            .await?
            .into_iter()
            .find(|u| u.name == n)
            .ok_or_else(|| CoordError::NotFound(format!("user {name} not found")))
    }

    /// A new API token for `user` (only its hash is stored), working for `lifetime` when
    /// given; returns the token and its record.
    pub async fn create_token(
        &self,
        caller: &Caller,
        user: &str,
        lifetime: Option<Duration>,
    ) -> Result<(String, TokenRecord)> {
        check_name("user", user)?;
        if lifetime.is_some_and(|l| l > MAX_TOKEN_LIFETIME) {
            return Err(CoordError::Invalid(format!(
                "a token lives at most {} days",
                MAX_TOKEN_LIFETIME.as_secs() / 86_400
            )));
        }
        caller.require_admin()?;
        let record = self.user(user).await?;
        let token = crate::auth::new_token();
        let now = crate::store::now_ms();
        let t = TokenRecord {
            hash: crate::auth::hash(&token),
            user: record.name.clone(),
            created_ms: now,
            expires_ms: lifetime.map(|l| now + l.as_millis() as i64),
        };
        let t2 = t.clone();
        self.blocking(move |s| s.add_token(&t2.user, &t2.hash, t2.expires_ms))
            .await?;
        self.auth.remember(t.hash.clone(), record, t.expires_ms)?;
        Ok((token, t))
    }

    /// A user's tokens (admins: anyone's; users: their own).
    pub async fn tokens_of(&self, caller: &Caller, user: &str) -> Result<Vec<TokenRecord>> {
        check_name("user", user)?;
        if !caller.may_touch(user) {
            caller.require_admin()?;
        }
        self.user(user).await?;
        let u = user.to_string();
        Ok(self
            .blocking(|s| s.tokens())
            .await?
            .into_iter()
            .filter(|t| t.user == u)
            .collect())
    }

    /// Revokes a token by its id (admins: anyone's; users: their own; others' look absent).
    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<TokenRecord> {
        let well_formed = id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit());
        if !well_formed {
            return Err(CoordError::Invalid(format!(
                "invalid token id {id:?}: 12 hexadecimal digits, as `corral user tokens` shows"
            )));
        }
        let t = self
            .blocking(|s| s.tokens())
            .await?
            .into_iter()
            .find(|t| t.id() == id && caller.may_touch(&t.user))
            .ok_or_else(|| CoordError::NotFound(format!("token {id} not found")))?;
        let h = t.hash.clone();
        self.blocking(move |s| s.remove_token(&h)).await?;
        self.auth.forget_token(&t.hash)?;
        tracing::info!(token = id, user = %t.user, by = caller.name(), "token revoked");
        Ok(t)
    }

    /// Changes a user's role and attributes (admin); an empty attribute value removes it.
    pub async fn update_user(
        &self,
        caller: &Caller,
        name: &str,
        role: Option<&str>,
        attributes: &HashMap<String, String>,
        replace: bool,
    ) -> Result<UserRecord> {
        check_name("user", name)?;
        for (k, v) in attributes {
            corral_proto::rules::label(k, v)?;
        }
        if let Some(r) = role {
            check_role(r)?;
        }
        caller.require_admin()?;
        let mut user = self.user(name).await?;
        if user.role == "admin" && role == Some("user") {
            self.not_the_last_admin(name).await?;
        }
        if let Some(r) = role {
            user.role = r.into();
        }
        let mut attrs = if replace {
            serde_json::Map::new()
        } else {
            user.attributes.as_object().cloned().unwrap_or_default()
        };
        for (k, v) in attributes {
            if v.is_empty() {
                attrs.remove(k);
            } else {
                attrs.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
        }
        user.attributes = serde_json::Value::Object(attrs);
        let u = user.clone();
        self.blocking(move |s| s.put_user(&u)).await?;
        if !crate::dry::now() {
            self.auth.update_user(&user);
        }
        tracing::info!(user = name, role = %user.role, by = caller.name(), "user changed");
        Ok(user)
    }

    async fn not_the_last_admin(&self, name: &str) -> Result<()> {
        let admins = self
            .blocking(|s| s.users())
            .await?
            .into_iter()
            .filter(|u| u.role == "admin" && u.name != name)
            .count();
        if admins == 0 {
            return Err(CoordError::FailedPrecondition(format!(
                "{name} is the last admin: make another admin first"
            )));
        }
        Ok(())
    }

    /// Removes a user and their tokens (admin). Their VMs keep the user unless
    /// `remove_vms`, which removes them (the operations are returned).
    pub async fn remove_user(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        name: &str,
        remove_vms: bool,
    ) -> Result<Vec<OpRecord>> {
        check_name("user", name)?;
        caller.require_admin()?;
        if name == caller.name() {
            return Err(CoordError::FailedPrecondition(
                "you cannot remove yourself".into(),
            ));
        }
        let user = self.user(name).await?;
        if user.role == "admin" {
            self.not_the_last_admin(name).await?;
        }
        let n = name.to_string();
        let vms: Vec<String> = self
            .blocking(move |s| s.vms_of_owner(&n))
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect();
        if !vms.is_empty() && !remove_vms {
            return Err(CoordError::FailedPrecondition(format!(
                "user {name} owns {} VM(s): {}; remove them, or remove the user with its VMs                  (--remove-vms)",
                vms.len(),
                vms.join(", ")
            )));
        }
        let mut ops = Vec::new();
        for vm in &vms {
            ops.push(self.vm_action(caller, vm, Action::Remove).await?);
        }
        let n = name.to_string();
        self.blocking(move |s| s.remove_user(&n)).await?;
        if !crate::dry::now() {
            self.auth.forget_user(name)?;
        }
        tracing::info!(
            user = name,
            vms = vms.len(),
            by = caller.name(),
            "user removed"
        );
        Ok(ops)
    }

    pub async fn users(&self, caller: &Caller) -> Result<Vec<UserRecord>> {
        caller.require_admin()?;
        self.blocking(|s| s.users()).await
    }
}
