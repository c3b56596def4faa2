//! Property-based fuzzing of the coordinator's parsers of untrusted text: its configuration
//! and the agent addresses admins register. `CORRAL_FUZZ_CASES` sets the cases (512 by
//! default; `deploy/fuzz.sh` runs 100,000).

use corral_proto::env::Settings;
use proptest::prelude::*;
use proptest::test_runner::{Config as Runner, TestRunner};

fn run<S: Strategy>(name: &str, s: S, check: impl Fn(S::Value)) {
    let cases = std::env::var("CORRAL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let mut runner = TestRunner::new(Runner {
        cases,
        failure_persistence: None,
        ..Runner::default()
    });
    if let Err(e) = runner.run(&s, |v| {
        check(v);
        Ok(())
    }) {
        panic!("fuzz {name}: {e}");
    }
    println!("fuzz {name}: {cases} cases, no panic");
}

/// The example configuration with random lines replaced.
fn toml_text() -> impl Strategy<Value = String> {
    let example = include_str!("../../deploy/coordinator.example.toml");
    let lines: Vec<String> = example.lines().map(String::from).collect();
    let n = lines.len().max(1);
    (
        prop::collection::vec(
            (
                0..n,
                "[a-z_]{0,12} ?= ?(\"[^\"]{0,8}\"|-?[0-9]{0,21}|true|\\[|\\{)?",
            ),
            0..4,
        ),
        Just(lines),
    )
        .prop_map(|(edits, mut lines)| {
            for (i, l) in edits {
                if let Some(line) = lines.get_mut(i) {
                    *line = l;
                }
            }
            lines.join("\n")
        })
}

#[test]
fn fuzz_coordinator_config() {
    let keys = [
        "LISTEN",
        "HEARTBEAT_MS",
        "DOWN_AFTER_MS",
        "MEMORY_OVERCOMMIT",
        "PER_HOST_LIMIT",
    ]
    .map(|k| format!("CORRAL_COORD_{k}"));
    let env = prop::collection::vec((prop::sample::select(keys.to_vec()), ".{0,24}"), 0..4);
    run(
        "coordinator configuration",
        (prop_oneof![toml_text(), any::<String>()], env),
        |(text, env)| {
            let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let _ = <crate::config::Config as Settings>::from_parts(&text, get);
        },
    );
}

#[test]
fn fuzz_agent_addresses() {
    let s = prop_oneof!["(https?://)?[a-zA-Z0-9.:\\[\\]/@?-]{0,40}", any::<String>()];
    run("agent address", s, |a| {
        if let Ok(n) = crate::names::agent_address(&a) {
            // One form: normalising again changes nothing.
            assert_eq!(
                crate::names::agent_address(&n).ok().as_deref(),
                Some(n.as_str())
            );
        }
    });
}
