//! Environment overrides of a configuration (`PREFIX_KEY=value`), shared by the agent and
//! the coordinator: each key parsed as its field's type, a bad value named in the error.

use std::path::Path;
use std::str::FromStr;

use crate::rules::Invalid;

/// A process's configuration: a TOML file (optional), then `PREFIX_KEY` environment
/// overrides, then the checks of settings that only make sense together.
pub trait Settings: Sized + Default + serde::de::DeserializeOwned {
    type Error: From<Invalid>;

    /// Applies the environment overrides read through `get`.
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Self::Error>;

    /// Refuses settings that do not fit together.
    fn check(&self) -> Result<(), Self::Error>;

    fn from_toml(text: &str) -> Result<Self, Self::Error> {
        toml::from_str(text).map_err(|e| Invalid(format!("invalid config: {e}")).into())
    }

    /// Reads the file (the defaults without one), applies the process environment, checks.
    fn load(path: Option<&Path>) -> Result<Self, Self::Error> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| Invalid(format!("cannot read config {}: {e}", p.display())))?,
            None => String::new(),
        };
        Self::from_parts(&text, |k| std::env::var(k).ok())
    }

    /// A configuration from its text and an environment (`get`), checked.
    fn from_parts(text: &str, get: impl Fn(&str) -> Option<String>) -> Result<Self, Self::Error> {
        let mut cfg = if text.is_empty() {
            Self::default()
        } else {
            Self::from_toml(text)?
        };
        cfg.apply_env(get)?;
        cfg.check()?;
        Ok(cfg)
    }
}

/// Reads `{prefix}_{KEY}` through `get` (the process environment, or a test's map).
#[derive(Debug)]
pub struct Env<'a, G> {
    prefix: &'a str,
    get: G,
}

impl<'a, G: Fn(&str) -> Option<String>> Env<'a, G> {
    pub fn new(prefix: &'a str, get: G) -> Self {
        Self { prefix, get }
    }

    /// The raw value of `{prefix}_{key}`, when set.
    pub fn raw(&self, key: &str) -> Option<String> {
        (self.get)(&format!("{}_{key}", self.prefix))
    }

    /// The error for a value that does not fit `key`.
    pub fn bad(&self, key: &str, value: &str) -> Invalid {
        Invalid(format!("invalid {}_{key}={value:?}", self.prefix))
    }

    /// Sets `slot` from `{prefix}_{key}` when it is set.
    pub fn set<T: FromStr>(&self, key: &str, slot: &mut T) -> Result<(), Invalid> {
        if let Some(v) = self.raw(key) {
            *slot = v.parse().map_err(|_| self.bad(key, &v))?;
        }
        Ok(())
    }

    /// Sets `slot` to `Some` from `{prefix}_{key}` when it is set.
    pub fn set_some<T: FromStr>(&self, key: &str, slot: &mut Option<T>) -> Result<(), Invalid> {
        if let Some(v) = self.raw(key) {
            *slot = Some(v.parse().map_err(|_| self.bad(key, &v))?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_and_bad_ones_named() {
        let env = Env::new("X", |k: &str| match k {
            "X_PORT" => Some("80".to_string()),
            "X_BAD" => Some("eighty".to_string()),
            _ => None,
        });
        let (mut port, mut bad, mut none) = (0u16, 0u16, Some(1u16));
        env.set("PORT", &mut port).unwrap();
        assert_eq!(port, 80);
        assert_eq!(
            env.set("BAD", &mut bad).unwrap_err().0,
            "invalid X_BAD=\"eighty\""
        );
        env.set_some("UNSET", &mut none).unwrap();
        assert_eq!(none, Some(1));
    }
}
