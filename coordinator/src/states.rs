//! The states of a VM as types: what its owner asked for ([`Desired`]) and what its host last
//! said ([`Observed`]). Stored as text (the same strings as before these types existed), and
//! converted to protobuf at the API's edge.

use corral_client::proto as pb;

/// What a VM's owner asked it to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Desired {
    Running,
    #[default]
    ShutOff,
    Hibernated,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::ShutOff => "shut-off",
            Self::Hibernated => "hibernated",
        }
    }

    /// The stored text; anything unknown reads as shut off.
    pub fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "hibernated" => Self::Hibernated,
            _ => Self::ShutOff,
        }
    }
}

/// What a VM's host last said of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Recorded, and being made on its host.
    Creating,
    /// Its host's list of domains does not have it.
    Missing,
    /// The domain's state as the agent reports it.
    Domain(pb::DomainState),
}

impl Default for Observed {
    fn default() -> Self {
        Self::Domain(pb::DomainState::Unspecified)
    }
}

impl Observed {
    /// From an agent's `DomainState` value.
    pub fn from_pb(state: i32) -> Self {
        Self::Domain(pb::DomainState::try_from(state).unwrap_or(pb::DomainState::Unspecified))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "CREATING",
            Self::Missing => "MISSING",
            Self::Domain(s) => s.as_str_name(),
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "CREATING" => Self::Creating,
            "MISSING" => Self::Missing,
            other => Self::Domain(
                pb::DomainState::from_str_name(other).unwrap_or(pb::DomainState::Unspecified),
            ),
        }
    }

    /// How messages for people say it ("running", "shut off", "being made").
    pub fn describe(self) -> String {
        match self {
            Self::Creating => "being made".into(),
            Self::Missing => "missing from its host".into(),
            Self::Domain(s) => s
                .as_str_name()
                .trim_start_matches("DOMAIN_STATE_")
                .replace('_', " ")
                .to_lowercase(),
        }
    }

    /// The domain state for the API (unspecified while being made or missing).
    pub fn domain_state(self) -> pb::DomainState {
        match self {
            Self::Domain(s) => s,
            _ => pb::DomainState::Unspecified,
        }
    }
}

macro_rules! as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}
as_text!(Desired);
as_text!(Observed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_what_they_write() {
        for d in [Desired::Running, Desired::ShutOff, Desired::Hibernated] {
            assert_eq!(Desired::parse(d.as_str()), d);
        }
        for o in [
            Observed::Creating,
            Observed::Missing,
            Observed::Domain(pb::DomainState::Running),
            Observed::from_pb(pb::DomainState::Hibernated as i32),
        ] {
            assert_eq!(Observed::parse(o.as_str()), o);
        }
        assert_eq!(Observed::from_pb(999), Observed::default());
        assert_eq!(
            Observed::Creating.domain_state(),
            pb::DomainState::Unspecified
        );
    }
}
