//! Users and their tokens (admins only): checked, inserted without overwriting, and known
//! to the authentication cache at once.

use std::collections::HashMap;

use crate::auth::Caller;
use crate::error::{CoordError, Result};
use crate::store::UserRecord;
use crate::vms::{check_name, Coordinator};

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
        if role != "admin" && role != "user" {
            return Err(CoordError::Invalid(format!(
                "role {role:?} is not admin or user"
            )));
        }
        caller.require_admin()?;
        let user = UserRecord {
            name: name.into(),
            role: role.into(),
            attributes: serde_json::json!(attributes),
        };
        let u = user.clone();
        self.blocking(move |s| s.insert_user(&u)).await?;
        self.auth.update_user(&user);
        Ok(user)
    }

    /// A new API token for `user` (only its hash is stored); returns the token.
    pub async fn create_token(&self, caller: &Caller, user: &str) -> Result<String> {
        check_name("user", user)?;
        caller.require_admin()?;
        let n = user.to_string();
        let record = self
            .blocking(move |s| s.users())
            .await?
            .into_iter()
            .find(|u| u.name == n)
            .ok_or_else(|| CoordError::NotFound(format!("user {user} not found")))?;
        let token = crate::auth::new_token();
        let h = crate::auth::hash(&token);
        let (who, h2) = (record.name.clone(), h.clone());
        self.blocking(move |s| s.add_token(&who, &h2)).await?;
        self.auth.remember(h, record)?;
        Ok(token)
    }

    pub async fn users(&self, caller: &Caller) -> Result<Vec<UserRecord>> {
        caller.require_admin()?;
        self.blocking(|s| s.users()).await
    }
}
