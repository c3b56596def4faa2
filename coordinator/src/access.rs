//! Who may clone a base: pure, as `placement` is. A base is public or not; its ordered
//! access rules match a user's attributes (from the coordinator's users and, when one is
//! configured, an LDAP directory), as Ravada's `access_ldap_attribute` does:
//!
//! - rules are read in order; a rule whose value is `*` decides when nothing has yet,
//!   and ends the reading;
//! - a rule whose attribute has its value for the user decides (a later match overrides an
//!   earlier one), and ends the reading when it denies or is marked `last`;
//! - when no rule matched: a base with only allowing rules is closed to the user (the rules
//!   name who may), a base with only denying rules is open (they name who may not), and a
//!   base with both kinds is open (Ravada warns of the missing default; so do we).
//!
//! Admins may clone any base; users only public ones, and only as the rules decide.

use std::collections::BTreeMap;

/// One access rule of a base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// The attribute's name (compared without regard to case, as LDAP does).
    pub attribute: String,
    /// The value it must have; `*` for any user.
    pub value: String,
    pub allowed: bool,
    /// Stop reading the rules when this one matches.
    pub last: bool,
}

/// Who may clone a base: stored as JSON with the base.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseAccess {
    pub public: bool,
    /// In the order they are read.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A user's attributes: lowercased name → every value it has.
pub type Attributes = BTreeMap<String, Vec<String>>;

/// Why a user may or may not clone a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Admin,
    NotPublic,
    /// No rules: a public base is open to every user.
    NoRules,
    /// The rule at this position (0-based) decided.
    Rule(usize),
    /// No rule matched and every rule allows: the rules name who may.
    OnlyAllowingRules,
    /// No rule matched and every rule denies: the rules name who may not.
    OnlyDenyingRules,
    /// No rule matched, some allow and some deny, and none is a default (`*`).
    NoDefault,
}

/// The decision for one user and one base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

impl Decision {
    /// The decision as a person reads it (`rules` are the base's, for naming the rule).
    pub fn explain(&self, rules: &[Rule]) -> String {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        let why = match &self.reason {
            Reason::Admin => "admins may clone any base".to_string(),
            Reason::NotPublic => "the base is not public".to_string(),
            Reason::NoRules => "the base is public and has no access rules".to_string(),
            Reason::Rule(i) => match rules.get(*i) {
                Some(r) => format!("rule {} ({}) matched", i + 1, describe(r)),
                None => format!("rule {}", i + 1),
            },
            Reason::OnlyAllowingRules => "no rule matched, and the rules only allow".to_string(),
            Reason::OnlyDenyingRules => "no rule matched, and the rules only deny".to_string(),
            Reason::NoDefault => {
                "no rule matched and no rule is a default (value '*'); open by default".to_string()
            }
        };
        format!("{verdict}: {why}")
    }
}

/// A rule as the CLI shows it: `course=math allow last`.
pub fn describe(r: &Rule) -> String {
    format!(
        "{}={} {}{}",
        r.attribute,
        r.value,
        if r.allowed { "allow" } else { "deny" },
        if r.last { " last" } else { "" }
    )
}

/// Whether a user (`admin`, with `attrs`) may clone a base (`public`, with `rules`).
pub fn decide(admin: bool, attrs: &Attributes, public: bool, rules: &[Rule]) -> Decision {
    let decision = |allowed, reason| Decision { allowed, reason };
    if admin {
        return decision(true, Reason::Admin);
    }
    if !public {
        return decision(false, Reason::NotPublic);
    }
    if rules.is_empty() {
        return decision(true, Reason::NoRules);
    }
    let mut decided: Option<Decision> = None;
    for (i, r) in rules.iter().enumerate() {
        if r.value == "*" {
            decided.get_or_insert(decision(r.allowed, Reason::Rule(i)));
            break;
        }
        let has = attrs
            .get(&r.attribute.to_lowercase())
            .is_some_and(|vs| vs.iter().any(|v| v == &r.value));
        if has {
            decided = Some(decision(r.allowed, Reason::Rule(i)));
            if !r.allowed || r.last {
                break;
            }
        }
    }
    decided.unwrap_or_else(|| {
        let allowing = rules.iter().any(|r| r.allowed);
        let denying = rules.iter().any(|r| !r.allowed);
        match (allowing, denying) {
            (true, false) => decision(false, Reason::OnlyAllowingRules),
            (false, _) => decision(true, Reason::OnlyDenyingRules),
            (true, true) => decision(true, Reason::NoDefault),
        }
    })
}

/// Attributes from a user record's JSON object (`{"course": "math"}`; arrays give several
/// values).
pub fn from_json(v: &serde_json::Value) -> Attributes {
    let mut out = Attributes::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            let values = match v {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                other => vec![other.to_string()],
            };
            out.entry(k.to_lowercase()).or_default().extend(values);
        }
    }
    out
}

/// Adds `more` to `attrs` (values of the same attribute are kept together).
pub fn merge(attrs: &mut Attributes, more: Attributes) {
    for (k, vs) in more {
        attrs.entry(k).or_default().extend(vs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(attribute: &str, value: &str, allowed: bool, last: bool) -> Rule {
        Rule {
            attribute: attribute.into(),
            value: value.into(),
            allowed,
            last,
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::new();
        for (k, v) in pairs {
            a.entry(k.to_lowercase()).or_default().push(v.to_string());
        }
        a
    }

    #[test]
    fn rules_decide_as_ravada_does() {
        let math = attrs(&[("course", "math")]);
        let art = attrs(&[("course", "art")]);
        let both = attrs(&[("course", "math"), ("Course", "art")]);
        let staff = attrs(&[("course", "math"), ("status", "staff")]);
        let none = attrs(&[]);
        let allow_math = [rule("course", "math", true, false)];
        let deny_art = [rule("course", "art", false, false)];
        let math_else_no = [
            rule("course", "math", true, false),
            rule("course", "*", false, false),
        ];
        // A later match overrides an earlier allow unless that one was "last".
        let staff_then_math_denied = [
            rule("status", "staff", true, false),
            rule("course", "math", false, false),
        ];
        let staff_last = [
            rule("status", "staff", true, true),
            rule("course", "math", false, false),
        ];
        let mixed = [
            rule("course", "math", true, false),
            rule("course", "art", false, false),
        ];
        use Reason::{NoDefault, NoRules, NotPublic, OnlyAllowingRules, OnlyDenyingRules};
        let at = Reason::Rule;
        // (what, the user's attributes, public, the rules, allowed, why)
        type Row<'a> = (
            &'a str,
            &'a Attributes,
            bool,
            &'a [super::Rule],
            bool,
            Reason,
        );
        let table: Vec<Row> = vec![
            ("private base", &math, false, &[], false, NotPublic),
            ("public, no rules", &none, true, &[], true, NoRules),
            ("allow rule matches", &math, true, &allow_math, true, at(0)),
            (
                "only allow rules, no match",
                &art,
                true,
                &allow_math,
                false,
                OnlyAllowingRules,
            ),
            ("deny rule matches", &art, true, &deny_art, false, at(0)),
            (
                "only deny rules, no match",
                &math,
                true,
                &deny_art,
                true,
                OnlyDenyingRules,
            ),
            (
                "default '*' after a miss",
                &art,
                true,
                &math_else_no,
                false,
                at(1),
            ),
            (
                "match before the default",
                &math,
                true,
                &math_else_no,
                true,
                at(0),
            ),
            (
                "later deny overrides",
                &staff,
                true,
                &staff_then_math_denied,
                false,
                at(1),
            ),
            (
                "'last' stops reading",
                &staff,
                true,
                &staff_last,
                true,
                at(0),
            ),
            ("both kinds, no match", &none, true, &mixed, true, NoDefault),
            (
                "a second value matches",
                &both,
                true,
                &deny_art,
                false,
                at(0),
            ),
            (
                "rules on a private base",
                &math,
                false,
                &allow_math,
                false,
                NotPublic,
            ),
        ];
        for (what, a, public, rules, allowed, reason) in table {
            let d = decide(false, a, public, rules);
            assert_eq!(d, Decision { allowed, reason }, "{what}");
            assert!(!d.explain(rules).is_empty());
        }
        let d = decide(true, &none, false, &allow_math);
        assert_eq!((d.allowed, d.reason), (true, Reason::Admin));
    }

    #[test]
    fn attributes_read_from_json_strings_and_arrays() {
        let a = from_json(&serde_json::json!({"Course": "math", "groups": ["a", "b"]}));
        assert_eq!(a["course"], vec!["math"]);
        assert_eq!(a["groups"], vec!["a", "b"]);
        assert!(from_json(&serde_json::json!("x")).is_empty());
    }
}
