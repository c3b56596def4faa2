//! The store's test suite, run against every database: SQLite always, PostgreSQL when
//! `CORRAL_TEST_POSTGRES` names one (a connection string; each run gets its own schema,
//! dropped afterwards). `CORRAL_E2E_REQUIRED=1` makes a missing PostgreSQL a failure.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A store under test and what must live as long as it does.
pub struct Under {
    pub name: &'static str,
    pub store: Box<dyn Store>,
    _keep: Keep,
}

enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema(Schema),
}

/// A PostgreSQL schema of one test, dropped with this.
pub struct Schema {
    url: String,
    pub name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        // On a thread of its own: the synchronous client cannot block an async worker.
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = ::postgres::Client::connect(&url, ::postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        })
        .join();
    }
}

/// A fresh PostgreSQL store in a new schema.
pub fn postgres_schema(url: &str) -> (Postgres, Schema) {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = Postgres::connect(url, Some(&name))
        .unwrap_or_else(|e| panic!("CORRAL_TEST_POSTGRES={url:?}: {e}"));
    (
        store,
        Schema {
            url: url.to_string(),
            name,
        },
    )
}

/// The PostgreSQL the tests may use.
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("CORRAL_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() && std::env::var("CORRAL_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!("CORRAL_TEST_POSTGRES is not set: the store's suite must run on PostgreSQL too");
    }
    url
}

/// A fresh PostgreSQL store in a schema of its own, dropped with it.
pub fn fresh_postgres(url: &str) -> Under {
    let (store, schema) = postgres_schema(url);
    Under {
        name: "postgres",
        store: Box::new(store),
        _keep: Keep::Schema(schema),
    }
}

/// One fresh, empty store per database.
pub fn stores() -> Vec<Under> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Sqlite::open(&dir.path().join("db")).unwrap();
    let mut all = vec![Under {
        name: "sqlite",
        store: Box::new(sqlite),
        _keep: Keep::Dir(dir),
    }];
    if let Some(url) = postgres_url() {
        all.push(fresh_postgres(&url));
    }
    all
}

fn op(id: &str, key: Option<&str>) -> OpRecord {
    OpRecord {
        id: id.into(),
        kind: "clone".into(),
        vm: Some("vm1".into()),
        host: None,
        user: Some("alice".into()),
        state: OpState::Queued,
        idempotency_key: key.map(String::from),
        request: serde_json::json!({"base": "b1"}),
        result: None,
        error: None,
        created_ms: 1,
        updated_ms: 1,
    }
}

#[test]
fn migrations_apply_once_and_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    {
        let s = Sqlite::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), sqlite::MIGRATIONS.len());
        s.create_operation(&op("o1", Some("k1"))).unwrap();
        s.append_event(&OpEvent {
            op_id: "o1".into(),
            seq: 0,
            at_ms: 2,
            phase: "queued".into(),
            percent: Some(0.0),
            bytes: None,
            message: "waiting".into(),
            state: None,
        })
        .unwrap();
    }
    let s = Sqlite::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), sqlite::MIGRATIONS.len());
    assert_eq!(s.operation("o1").unwrap().request["base"], "b1");
    assert_eq!(s.events("o1", 0).unwrap().len(), 1);
    let mode = s.raw_query("PRAGMA journal_mode").unwrap()[0]
        .text(0)
        .unwrap();
    assert_eq!(mode, "wal");
    // The reaper's query is answered from the index, not by reading every VM.
    let plan = s
        .raw_query(
            "EXPLAIN QUERY PLAN SELECT name FROM vms WHERE json_extract(spec, '$.volatile') = 1",
        )
        .unwrap()[0]
        .text(3)
        .unwrap();
    assert!(plan.contains("vms_volatile"), "{plan}");
}

#[test]
fn postgres_migrates_once_and_uses_the_same_indexes() {
    let Some(url) = postgres_url() else { return };
    let under = fresh_postgres(&url);
    let schema = match &under._keep {
        Keep::Schema(s) => s.name.clone(),
        Keep::Dir(_) => unreachable!(),
    };
    // A second coordinator on the same schema finds it migrated.
    let again = Postgres::connect(&url, Some(&schema)).unwrap();
    assert_eq!(again.schema_version().unwrap(), postgres::MIGRATIONS.len());
    assert_eq!(
        postgres::MIGRATIONS.len(),
        sqlite::MIGRATIONS.len(),
        "the same steps"
    );
    let idx = again
            .raw_query("SELECT indexname FROM pg_indexes WHERE indexname = 'vms_volatile' AND schemaname = current_schema()")
            .unwrap();
    assert_eq!(idx.len(), 1);
}

#[test]
fn idempotency_keys_return_the_first_operation() {
    for under in stores() {
        let s = under.store.as_ref();
        let _ = under.name;
        let (a, new_a) = s.create_operation(&op("o1", Some("same"))).unwrap();
        let (b, new_b) = s.create_operation(&op("o2", Some("same"))).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        assert!(matches!(s.operation("o2"), Err(StoreError::NotFound(_))));
        s.create_operation(&op("o3", None)).unwrap();
        s.create_operation(&op("o4", None)).unwrap();
        assert_eq!(s.operations(true).unwrap().len(), 3);
    }
}

#[test]
fn state_machine_is_enforced() {
    for under in stores() {
        let s = under.store.as_ref();
        let _ = under.name;
        s.create_operation(&op("o1", None)).unwrap();
        assert!(
            s.set_operation_state("o1", OpState::Succeeded, None, None)
                .is_err(),
            "queued cannot succeed"
        );
        s.set_operation_state("o1", OpState::Running, None, None)
            .unwrap();
        s.set_operation_state(
            "o1",
            OpState::Succeeded,
            Some(&serde_json::json!({"vm": "vm1"})),
            None,
        )
        .unwrap();
        assert!(
            s.set_operation_state("o1", OpState::Failed, None, Some("late"))
                .is_err(),
            "terminal is final"
        );
        let o = s.operation("o1").unwrap();
        assert_eq!(o.state, OpState::Succeeded);
        assert_eq!(o.result.unwrap()["vm"], "vm1");
        assert!(s.operations(true).unwrap().is_empty());
    }
}

#[test]
fn events_are_numbered_in_order() {
    for under in stores() {
        let s = under.store.as_ref();
        let _ = under.name;
        s.create_operation(&op("o1", None)).unwrap();
        for i in 0..5 {
            let e = s
                .append_event(&OpEvent {
                    op_id: "o1".into(),
                    seq: 0,
                    at_ms: i,
                    phase: "copy".into(),
                    percent: Some(i as f32 * 20.0),
                    bytes: Some(i as u64 * 100),
                    message: String::new(),
                    state: (i == 4).then_some(OpState::Succeeded),
                })
                .unwrap();
            assert_eq!(e.seq, i as u64 + 1);
        }
        let after2 = s.events("o1", 2).unwrap();
        assert_eq!(after2.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(after2[2].state, Some(OpState::Succeeded));
    }
}

#[test]
fn hosts_vms_users_and_tokens() {
    for under in stores() {
        let s = under.store.as_ref();
        let _ = under.name;
        s.put_host(&HostRecord {
            name: "h1".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        })
        .unwrap();
        let dup = s.put_host(&HostRecord {
            name: "h2".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        });
        assert!(
            matches!(dup, Err(StoreError::AlreadyExists(_))),
            "one address, one host"
        );
        s.put_vm(&VmRecord {
            name: "vm1".into(),
            owner: "alice".into(),
            base: Some("b1".into()),
            host: Some("h1".into()),
            desired_state: crate::states::Desired::Running,
            observed_state: crate::states::Observed::Domain(
                corral_client::proto::DomainState::Running,
            ),
            spec: serde_json::json!({"volatile": true}),
        })
        .unwrap();
        assert_eq!(s.vm("vm1").unwrap().spec["volatile"], true);
        let mut kept = s.vm("vm1").unwrap();
        kept.name = "vm2".into();
        kept.spec = serde_json::json!({"labels": {}});
        s.put_vm(&kept).unwrap();
        let volatile: Vec<String> = s
            .volatile_vms()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(volatile, ["vm1"]);
        s.remove_vm("vm2").unwrap();
        s.put_user(&UserRecord {
            name: "alice".into(),
            role: "user".into(),
            attributes: serde_json::json!({"course": "net101"}),
        })
        .unwrap();
        assert!(s
            .put_user(&UserRecord {
                name: "eve".into(),
                role: "root".into(),
                attributes: serde_json::json!({})
            })
            .is_err());
        s.add_token("alice", "hash1", None).unwrap();
        assert_eq!(
            s.user_by_token("hash1").unwrap().attributes["course"],
            "net101"
        );
        assert!(matches!(
            s.user_by_token("nope"),
            Err(StoreError::NotFound(_))
        ));
        s.put_base("b1", None, &serde_json::json!({"vcpus": 2}))
            .unwrap();
        assert_eq!(s.base_spec("b1").unwrap()["vcpus"], 2);
        s.set_base_host("b1", "h1", true).unwrap();
        assert_eq!(s.base_parent("b1").unwrap(), None);
        s.put_base("b2", Some("b1"), &serde_json::json!({}))
            .unwrap();
        assert_eq!(
            s.bases().unwrap(),
            vec![
                ("b1".to_string(), vec!["h1".to_string()]),
                ("b2".to_string(), vec![])
            ]
        );
        let tokens = s.tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            (tokens[0].hash.as_str(), tokens[0].user.as_str()),
            ("hash1", "alice")
        );
        assert_eq!(tokens[0].expires_ms, None);
        assert_eq!(s.users().unwrap().len(), 1);
        // A removed user's tokens go with them; a revoked token goes alone.
        s.add_token("alice", "hash2", Some(now_ms() + 1000))
            .unwrap();
        s.remove_token("hash2").unwrap();
        assert!(matches!(
            s.remove_token("hash2"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.tokens().unwrap().len(), 1);
        s.remove_vm("vm1").unwrap();
        s.remove_host("h1").unwrap();
        assert_eq!(
            s.bases().unwrap()[0].1.len(),
            0,
            "host removal drops its base copies"
        );
        assert!(s.hosts().unwrap().is_empty());
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn database_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    // An existing world-readable database is narrowed when opened.
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = Sqlite::open(&path).unwrap();
    s.insert_user(&UserRecord {
        name: "a".into(),
        role: "user".into(),
        attributes: serde_json::json!({}),
    })
    .unwrap();
    assert_eq!(mode(&path), 0o600);
    for side in ["corral.db-wal", "corral.db-shm"] {
        let p = dir.path().join(side);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{side}");
        }
    }
}

#[test]
fn names_are_one_namespace_and_inserts_never_overwrite() {
    for under in stores() {
        let s = under.store.as_ref();
        let _ = under.name;
        s.put_base("web", None, &serde_json::json!({})).unwrap();
        let vm = VmRecord {
            name: "web".into(),
            owner: "alice".into(),
            base: None,
            host: None,
            desired_state: crate::states::Desired::ShutOff,
            observed_state: crate::states::Observed::Creating,
            spec: serde_json::json!({}),
        };
        let e = s.insert_vm(&vm).unwrap_err();
        assert_eq!(e.to_string(), "base web already exists");
        assert!(s.vm("web").is_err(), "a refused insert leaves no record");
        assert_eq!(s.name_taken("web").unwrap(), Some("base"));
        let vm2 = VmRecord {
            name: "c1".into(),
            ..vm
        };
        s.insert_vm(&vm2).unwrap();
        assert_eq!(
            s.insert_vm(&vm2).unwrap_err().to_string(),
            "VM c1 already exists"
        );
        let u = UserRecord {
            name: "bob".into(),
            role: "user".into(),
            attributes: serde_json::json!({}),
        };
        s.insert_user(&u).unwrap();
        let admin = UserRecord {
            role: "admin".into(),
            ..u.clone()
        };
        assert_eq!(
            s.insert_user(&admin).unwrap_err().to_string(),
            "user bob already exists"
        );
        assert_eq!(s.users().unwrap()[0].role, "user", "not overwritten");
        let h = HostRecord {
            name: "h1".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        };
        s.insert_host(&h).unwrap();
        let same_addr = HostRecord {
            name: "h2".into(),
            ..h.clone()
        };
        assert_eq!(
            s.insert_host(&same_addr).unwrap_err().to_string(),
            "agent address 10.0.0.1:7700 (host h1) already exists"
        );
        assert_eq!(
            s.insert_host(&h).unwrap_err().to_string(),
            "host h1 already exists"
        );
        // An illegal state change is a conflict, not a database failure.
        let op = OpRecord {
            id: "o".into(),
            kind: "clone".into(),
            vm: None,
            host: None,
            user: None,
            state: OpState::Queued,
            idempotency_key: None,
            request: serde_json::json!({}),
            result: None,
            error: None,
            created_ms: 0,
            updated_ms: 0,
        };
        s.create_operation(&op).unwrap();
        s.set_operation_state("o", OpState::Cancelled, None, None)
            .unwrap();
        assert!(matches!(
            s.set_operation_state("o", OpState::Running, None, None),
            Err(StoreError::Conflict(_))
        ));
    }
}

/// What the periodic loops and placement read at scale, instead of every VM or every base.
#[test]
fn the_narrow_reads_return_only_what_they_name() {
    use crate::states::{Desired, Observed};
    use corral_client::proto::DomainState;
    for under in stores() {
        let s = under.store.as_ref();
        let name = under.name;
        for (i, h) in ["h1", "h2"].into_iter().enumerate() {
            s.put_host(&HostRecord {
                name: h.into(),
                address: format!("10.0.0.{i}:7700"),
                enabled: true,
                last_seen_ms: 0,
            })
            .unwrap();
        }
        for (b, holders) in [("b1", &["h2", "h1"][..]), ("b2", &[][..])] {
            s.put_base(b, None, &serde_json::json!({})).unwrap();
            for h in holders {
                s.set_base_host(b, h, true).unwrap();
            }
        }
        assert_eq!(s.base_holders("b1").unwrap(), ["h1", "h2"], "{name}");
        assert!(s.base_holders("b2").unwrap().is_empty(), "{name}");
        assert!(
            matches!(s.base_holders("nope"), Err(StoreError::NotFound(_))),
            "{name}"
        );
        let vm =
            |n: &str, base: Option<&str>, state: DomainState, spec: serde_json::Value| VmRecord {
                name: n.into(),
                owner: "alice".into(),
                base: base.map(String::from),
                host: Some("h1".into()),
                desired_state: Desired::Running,
                observed_state: Observed::Domain(state),
                spec,
            };
        let run = DomainState::Running;
        for v in [
            vm("plain", Some("b2"), run, serde_json::json!({})),
            vm(
                "own-timeout",
                None,
                run,
                serde_json::json!({"run_timeout_s": 60}),
            ),
            vm("of-b1", Some("b1"), run, serde_json::json!({})),
            vm("renamed", None, run, serde_json::json!({"domain": "d-7"})),
            vm(
                "off",
                Some("b1"),
                DomainState::ShutOff,
                serde_json::json!({"run_timeout_s": 9}),
            ),
        ] {
            s.put_vm(&v).unwrap();
        }
        let mut running = s.running_domains().unwrap();
        running.sort();
        let h = || "h1".to_string();
        assert_eq!(
            running,
            [
                ("of-b1".into(), h(), "of-b1".into()),
                ("own-timeout".into(), h(), "own-timeout".into()),
                ("plain".into(), h(), "plain".into()),
                ("renamed".into(), h(), "d-7".into()),
            ],
            "{name}"
        );
        let timed = |bases: &[String]| -> Vec<String> {
            s.vms_with_timeouts(bases)
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect()
        };
        assert_eq!(timed(&[]), ["own-timeout"], "{name}");
        assert_eq!(timed(&["b1".into()]), ["of-b1", "own-timeout"], "{name}");
        let mut elsewhere = vm("bob-1", Some("b1"), run, serde_json::json!({}));
        (elsewhere.owner, elsewhere.host) = ("bob".into(), Some("h2".into()));
        s.put_vm(&elsewhere).unwrap();
        assert_eq!(
            s.vms_per_host().unwrap(),
            HashMap::from([("h1".to_string(), 5), ("h2".to_string(), 1)]),
            "{name}"
        );
        assert_eq!(
            s.clones_per_base().unwrap(),
            HashMap::from([("b1".to_string(), 3), ("b2".to_string(), 1)]),
            "{name}"
        );
        assert_eq!(s.clones_of("b2").unwrap().len(), 1, "{name}");
        assert_eq!(
            s.clones_of("b1").unwrap().len(),
            3,
            "{name}: the count and the names agree"
        );
        assert!(s.clones_of("no-such-base").unwrap().is_empty(), "{name}");
        let bobs: Vec<String> = s
            .vms_of_owner("bob")
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(bobs, ["bob-1"], "{name}");
        assert!(s.vms_of_owner("nobody").unwrap().is_empty(), "{name}");
        s.remove_vm("bob-1").unwrap();
        assert_eq!(
            s.vm_states().unwrap(),
            [
                ("DOMAIN_STATE_RUNNING".to_string(), 4),
                ("DOMAIN_STATE_SHUT_OFF".to_string(), 1)
            ],
            "{name}"
        );
    }
}

/// The lease: held and renewed by one holder, taken by another only once expired (a new term),
/// and the database's id made once with it.
#[test]
fn the_lease_has_terms_and_the_database_an_id() {
    for under in stores() {
        let s = under.store.as_ref();
        let name = under.name;
        let a = s.lead("a", "10.0.0.1:7800", 60_000).unwrap();
        assert!(a.mine && a.term == 1, "{name}: {a:?}");
        assert_eq!(a.cluster.len(), 32, "{name}: {a:?}");
        let b = s.lead("b", "10.0.0.2:7800", 60_000).unwrap();
        assert!(!b.mine && b.holder == "a" && b.term == 1, "{name}: {b:?}");
        assert_eq!(b.cluster, a.cluster, "{name}");
        // a's lease runs out (renewed with none left); b takes it in a new term.
        s.lead("a", "10.0.0.1:7800", -1).unwrap();
        let b = s.lead("b", "10.0.0.2:7800", 60_000).unwrap();
        assert!(b.mine && b.term == 2, "{name}: {b:?}");
        assert_eq!(b.cluster, a.cluster, "{name}: one database, one id");
    }
}
