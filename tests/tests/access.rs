//! Who may clone a base, end to end: the coordinator's binary with a real `slapd` as its
//! directory, a test-driver agent, and the `corral` CLI for the admin's and the users' side.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use corral_client::proto as pb;
use corral_tests::ldap::{Slapd, ADMIN_DN, ADMIN_PASSWORD, PEOPLE};
use corral_tests::*;
use tonic::Code;

fn ready() -> bool {
    e2e_ready(
        &["corral-coordinator", "corral-agent", "corral"],
        corral_tests::ldap::available(),
        "build the binaries and install slapd (deploy/setup-host.sh) first",
    )
}

fn cli(addr: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = corral_cli(addr, token, args).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_attributes_decide_who_may_clone_a_base() {
    if !ready() {
        return;
    }
    let mut slapd = Slapd::start(&[
        (
            "amy",
            &[("departmentNumber", "math"), ("employeeType", "student")],
        ),
        (
            "ben",
            &[("departmentNumber", "art"), ("employeeType", "student")],
        ),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("ldap.secret");
    std::fs::write(&secret, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[ldap]\nurl = \"{}\"\nbind_dn = \"{ADMIN_DN}\"\nbind_password_file = \"{}\"\n\
             base_dn = \"{PEOPLE}\"\ncache_seconds = 1\n",
            slapd.url,
            secret.display()
        ),
    )
    .unwrap();
    let coord = CoordProc::start_with(
        &dir.path().join("coord"),
        200,
        2000,
        &[("CORRAL_COORD_CONFIG", config.to_str().unwrap())],
    )
    .unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    let agent = AgentProc::start_test_driver(&dir.path().join("h1")).unwrap();
    add_host(&mut admin, "h1", &agent.addr).await.unwrap();
    let (amy, ben) = (
        user_token(&mut admin, "amy").await.unwrap(),
        user_token(&mut admin, "ben").await.unwrap(),
    );
    test_base(&mut admin, "course", "h1").await.unwrap();
    let a = coord.addr.clone();
    let root = coord.admin_token.clone();

    // A new base is private: users neither see nor clone it.
    let (_, out, _) = cli(&a, &amy, &["base", "ls"]);
    assert!(!out.contains("course"), "{out}");
    let (ok, _, err) = cli(&a, &amy, &["vm", "clone", "course", "amy-1"]);
    assert!(!ok && err.contains("not public"), "{err}");

    // Published, for the math department only (the directory says who is in it).
    assert!(cli(&a, &root, &["base", "publish", "course"]).0);
    let (ok, out, err) = cli(
        &a,
        &root,
        &["base", "rule", "add", "course", "departmentNumber", "math"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("1. departmentNumber=math allow"), "{out}");
    let (_, why, _) = cli(&a, &root, &["base", "access", "course", "--user", "ben"]);
    assert!(
        why.contains("denied") && why.contains("only allow"),
        "{why}"
    );
    let (_, why, _) = cli(&a, &root, &["base", "access", "course", "--user", "amy"]);
    assert!(why.contains("allowed") && why.contains("rule 1"), "{why}");

    let (_, out, _) = cli(&a, &amy, &["base", "ls"]);
    assert!(out.contains("course") && out.contains("public"), "{out}");
    let (_, out, _) = cli(&a, &ben, &["base", "ls"]);
    assert!(!out.contains("course"), "{out}");
    let (ok, out, err) = cli(&a, &amy, &["vm", "clone", "course", "amy-1"]);
    assert!(ok && out.contains("succeeded"), "{out}{err}");
    let (ok, _, err) = cli(&a, &ben, &["vm", "clone", "course", "ben-1"]);
    assert!(
        !ok && err.contains("access rules do not allow you"),
        "{err}"
    );
    // A user sees their own decision, not the rules, and may not ask for others.
    let (_, mine, _) = cli(&a, &ben, &["base", "access", "course"]);
    assert!(
        mine.contains("ben: denied") && !mine.contains("departmentNumber"),
        "{mine}"
    );
    let mut bc = coord.client(&ben).await.unwrap();
    let e = bc
        .vms
        .get_base_access(pb::BaseAccessRequest {
            base: "course".into(),
            user: "amy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // An art rule first and marked last: ben in, amy still in by the math rule.
    let (ok, _, err) = cli(
        &a,
        &root,
        &[
            "base",
            "rule",
            "add",
            "course",
            "departmentNumber",
            "art",
            "--last",
            "--at",
            "1",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&a, &ben, &["vm", "clone", "course", "ben-1"]);
    assert!(ok, "{err}");
    assert!(cli(&a, &root, &["base", "rule", "rm", "course", "1"]).0);

    // The directory gone: access that needs it fails closed and says why.
    slapd.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (ok, _, err) = cli(&a, &amy, &["vm", "clone", "course", "amy-2"]);
    assert!(!ok && err.contains("LDAP directory"), "{err}");
    let vms = admin
        .vms
        .list_vms(pb::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .vms;
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["amy-1", "ben-1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_tokens_change_and_end_at_once() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordProc::start(&dir.path().join("coord"), 200, 2000).unwrap();
    let mut admin = coord.client(&coord.admin_token).await.unwrap();
    let agent = AgentProc::start_test_driver(&dir.path().join("h1")).unwrap();
    add_host(&mut admin, "h1", &agent.addr).await.unwrap();
    test_base(&mut admin, "class", "h1").await.unwrap();
    publish(&mut admin, "class").await.unwrap();
    let (a, root) = (coord.addr.clone(), coord.admin_token.clone());
    let t1 = user_token(&mut admin, "dora").await.unwrap();
    let (ok, t2, err) = cli(&a, &root, &["user", "token", "dora", "--expires", "2s"]);
    assert!(ok, "{err}");
    let t2 = t2.trim().to_string();
    let (_, listed, _) = cli(&a, &t1, &["user", "tokens", "dora"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        !listed.contains(&t1) && !listed.contains(&t2),
        "no secrets listed"
    );
    let (ok, _, err) = cli(&a, &t1, &["vm", "clone", "class", "d1"]);
    assert!(ok, "{err}");

    // A role change counts at once for the user's tokens, both ways.
    assert!(cli(&a, &t1, &["host", "ls"]).2.contains("not an admin"));
    assert!(
        cli(
            &a,
            &root,
            &[
                "user",
                "set",
                "dora",
                "--role",
                "admin",
                "--attr",
                "course=net101"
            ]
        )
        .0
    );
    let (ok, _, err) = cli(&a, &t1, &["host", "ls"]);
    assert!(ok, "{err}");
    assert!(
        cli(
            &a,
            &root,
            &["user", "set", "dora", "--role", "user", "--attr", "course="]
        )
        .0
    );
    let (_, users, _) = cli(&a, &root, &["-o", "json", "user", "ls"]);
    assert!(!users.contains("net101"), "an empty value removes: {users}");
    assert!(!cli(&a, &t1, &["host", "ls"]).0);
    // The last admin stays one.
    let (ok, _, err) = cli(&a, &root, &["user", "set", "admin", "--role", "user"]);
    assert!(!ok && err.contains("last admin"), "{err}");

    // An expiring token works, then does not.
    assert!(cli(&a, &t2, &["user", "whoami"]).0);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (ok, _, err) = cli(&a, &t2, &["user", "whoami"]);
    assert!(!ok && err.contains("expired"), "{err}");
    // A user revokes their own token by its id.
    let id = listed.split_whitespace().next().unwrap().to_string();
    let (ok, _, err) = cli(&a, &t1, &["user", "revoke", &id]);
    assert!(ok, "{err}");
    let which = if cli(&a, &t1, &["user", "whoami"]).0 {
        &t2
    } else {
        &t1
    };
    assert!(!cli(&a, which, &["user", "whoami"]).0);

    // Removing a user says what happens to their VMs.
    let (ok, _, err) = cli(&a, &root, &["user", "rm", "dora"]);
    assert!(!ok && err.contains("owns 1 VM(s): d1"), "{err}");
    let (ok, out, err) = cli(&a, &root, &["user", "rm", "dora", "--remove-vms"]);
    assert!(ok && out.contains("d1"), "{out}{err}");
    for _ in 0..100 {
        let vms = admin
            .vms
            .list_vms(pb::ListVmsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .vms;
        if vms.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, users, _) = cli(&a, &root, &["user", "ls"]);
    assert!(!users.contains("dora"), "{users}");
    let vms = admin
        .vms
        .list_vms(pb::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(vms.vms.is_empty(), "{vms:?}");
    let (ok, _, err) = cli(&a, &t1, &["user", "whoami"]);
    assert!(!ok && err.contains("token"), "{err}");
}
