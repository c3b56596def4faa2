//! Environment overrides of a configuration (`PREFIX_KEY=value`), shared by the agent and
//! the coordinator: each key parsed as its field's type, a bad value named in the error.

use std::str::FromStr;

use crate::rules::Invalid;

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
