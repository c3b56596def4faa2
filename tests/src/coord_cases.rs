//! The coordinator's adversarial table: every RPC of its six services with bad names, bad
//! numbers, unknown ids, and references to what another user owns, as the user a hostile
//! student would be, an admin making mistakes, and a caller without a valid token.

use corral_client::proto as pb;
use corral_client::CoordinatorClient;
use tonic::Code;

use crate::adversarial::{bad_names, case, name_says, Case};

/// The callers of one run.
#[derive(Clone)]
pub struct Callers {
    pub admin: CoordinatorClient,
    pub alice: CoordinatorClient,
    pub bob: CoordinatorClient,
    pub nobody: CoordinatorClient,
}

/// What the world holds: a base, a clone each for alice and bob, one finished operation
/// of bob's.
#[derive(Debug, Clone)]
pub struct CoordWorld {
    pub p: String,
    pub host: String,
    pub host_address: String,
    pub base: String,
    pub alice_vm: String,
    pub bob_vm: String,
    pub bob_op: String,
}

type C = Callers;

fn vref(n: &str) -> pb::VmRef {
    pb::VmRef { name: n.into() }
}

fn spec(name: &str) -> pb::DomainSpec {
    crate::test_spec(name)
}

/// The store as an admin sees it, without what heartbeats change.
pub async fn store_snapshot(admin: &mut CoordinatorClient) -> String {
    let hosts: Vec<String> = admin
        .hosts
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .hosts
                .iter()
                .map(|h| format!("{} {} {} {:?}", h.name, h.address, h.enabled, h.bases))
                .collect()
        })
        .unwrap_or_default();
    let vms: Vec<String> = admin
        .vms
        .list_vms(pb::ListVmsRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .vms
                .iter()
                .map(|v| {
                    format!(
                        "{} {} {} {} {}",
                        v.name, v.owner, v.base, v.host, v.desired_state
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let bases = admin
        .vms
        .list_bases(pb::ListBaseSummariesRequest::default())
        .await
        .map(|r| format!("{:?}", r.into_inner().bases))
        .unwrap_or_default();
    let users = admin
        .users
        .list_users(pb::ListUsersRequest::default())
        .await
        .map(|r| format!("{:?}", r.into_inner().users))
        .unwrap_or_default();
    let ops: Vec<String> = admin
        .ops
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .map(|r| {
            r.into_inner()
                .operations
                .iter()
                .map(|o| format!("{} {} {}", o.id, o.kind, o.state))
                .collect()
        })
        .unwrap_or_default();
    format!("hosts {hosts:?} vms {vms:?} bases {bases} users {users} operations {ops:?}")
}

/// Every RPC that takes a VM name, as `who` (a closure picking the caller).
fn vm_rpcs(
    n: &str,
    who: fn(C) -> CoordinatorClient,
) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let n = n.to_string();
    macro_rules! rpc {
        ($name:literal, |$c:ident, $n:ident| $body:expr) => {{
            let $n = n.clone();
            let f: crate::adversarial::Call<C> = Box::new(move |cs: C| {
                let mut $c = who(cs);
                Box::pin(async move { $body.await.map(|_| ()) })
            });
            ($name, f)
        }};
    }
    vec![
        rpc!("StartVm", |c, n| c.vms.start_vm(vref(&n))),
        rpc!("ShutdownVm", |c, n| c.vms.shutdown_vm(vref(&n))),
        rpc!("PowerOffVm", |c, n| c.vms.power_off_vm(vref(&n))),
        rpc!("HibernateVm", |c, n| c.vms.hibernate_vm(vref(&n))),
        rpc!("RestoreVm", |c, n| c.vms.restore_vm(vref(&n))),
        rpc!("RemoveVm", |c, n| c.vms.remove_vm(vref(&n))),
        rpc!("GetVm", |c, n| c.vms.get_vm(vref(&n))),
        rpc!("PrepareBase", |c, n| c.vms.prepare_base(vref(&n))),
        rpc!("MoveVm", |c, n| c.vms.move_vm(pb::MoveVmRequest {
            name: n,
            host: "h1".into(),
            ..Default::default()
        })),
        rpc!("CreateVmSnapshot", |c, n| c.snapshots.create_vm_snapshot(
            pb::CreateSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("ListVmSnapshots", |c, n| c.snapshots.list_vm_snapshots(
            pb::ListSnapshotsRequest {
                domain: n,
                filters: vec![]
            }
        )),
        rpc!("GetVmSnapshot", |c, n| c.snapshots.get_vm_snapshot(
            pb::SnapshotRef {
                domain: n,
                name: "s1".into()
            }
        )),
        rpc!("ListVmSnapshotChildren", |c, n| c
            .snapshots
            .list_vm_snapshot_children(pb::ListChildrenRequest {
                domain: n,
                name: "s1".into(),
                recursive: false
            })),
        rpc!("RevertVmSnapshot", |c, n| c.snapshots.revert_vm_snapshot(
            pb::RevertSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("DeleteVmSnapshot", |c, n| c.snapshots.delete_vm_snapshot(
            pb::DeleteSnapshotRequest {
                domain: n,
                name: "s1".into(),
                ..Default::default()
            }
        )),
        rpc!("ExposeVmPort", |c, n| c.access.expose_vm_port(
            pb::ExposePortRequest {
                domain: n,
                guest_port: 80,
                wait_seconds: 1,
                ..Default::default()
            }
        )),
        rpc!("ListVmPorts", |c, n| c
            .access
            .list_vm_ports(pb::ListPortsRequest { domain: n })),
        rpc!("RemoveVmPort", |c, n| c.access.remove_vm_port(
            pb::RemovePortRequest {
                domain: n,
                guest_port: 80
            }
        )),
        rpc!("RemoveAllVmPorts", |c, n| c
            .access
            .remove_all_vm_ports(pb::RemoveAllPortsRequest { domain: n })),
        rpc!("RestrictVmDisplay", |c, n| c.access.restrict_vm_display(
            pb::RestrictDisplayRequest {
                domain: n,
                client_ip: "192.0.2.7".into()
            }
        )),
        rpc!("GetVmDisplay", |c, n| c.access.get_vm_display(vref(&n))),
        rpc!("GetVmScreenshot", |c, n| c
            .access
            .get_vm_screenshot(vref(&n))),
    ]
}

/// Every admin RPC that takes a host, base or user name.
fn admin_rpcs(n: &str, w: &CoordWorld) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let n = n.to_string();
    let (base, host) = (w.base.clone(), w.host.clone());
    macro_rules! rpc {
        ($name:literal, |$c:ident, $n:ident, $base:ident, $host:ident| $body:expr) => {{
            let ($n, $base, $host) = (n.clone(), base.clone(), host.clone());
            let f: crate::adversarial::Call<C> = Box::new(move |cs: C| {
                let mut $c = cs.admin;
                let _ = (&$base, &$host);
                Box::pin(async move { $body.await.map(|_| ()) })
            });
            ($name, f)
        }};
    }
    vec![
        rpc!("AddHost", |c, n, base, host| c.hosts.add_host(
            pb::AddHostRequest {
                name: n,
                address: "127.0.0.1:1".into()
            }
        )),
        rpc!("RemoveHost", |c, n, base, host| c
            .hosts
            .remove_host(pb::HostRef { name: n })),
        rpc!("SetHostEnabled", |c, n, base, host| c
            .hosts
            .set_host_enabled(pb::SetHostEnabledRequest {
                name: n,
                enabled: false
            })),
        rpc!("CreateBase(name)", |c, n, base, host| c.vms.create_base(
            pb::CreateBaseRequest {
                spec: Some(spec(&n)),
                host,
                idempotency_key: String::new()
            }
        )),
        rpc!("CreateBase(host)", |c, n, base, host| c.vms.create_base(
            pb::CreateBaseRequest {
                spec: Some(spec("advc-newbase")),
                host: n,
                idempotency_key: String::new()
            }
        )),
        rpc!("RemoveBase", |c, n, base, host| c
            .vms
            .remove_base(pb::BaseRef { name: n })),
        rpc!("SyncBase(base)", |c, n, base, host| c.vms.sync_base(
            pb::SyncBaseRequest {
                base: n,
                host,
                bandwidth_limit: 0
            }
        )),
        rpc!("SyncBase(host)", |c, n, base, host| c.vms.sync_base(
            pb::SyncBaseRequest {
                base,
                host: n,
                bandwidth_limit: 0
            }
        )),
        rpc!("RemoveBaseFromHost", |c, n, base, host| c
            .vms
            .remove_base_from_host(pb::SyncBaseRequest {
                base: n,
                host,
                bandwidth_limit: 0
            })),
        rpc!("CreateVm", |c, n, base, host| c.vms.create_vm(
            pb::CreateVmRequest {
                spec: Some(spec(&n)),
                host,
                ..Default::default()
            }
        )),
        rpc!("CreateVm(host)", |c, n, base, host| c.vms.create_vm(
            pb::CreateVmRequest {
                spec: Some(spec("advc-newvm")),
                host: n,
                ..Default::default()
            }
        )),
        rpc!("CloneVm(owner)", |c, n, base, host| c.vms.clone_vm(
            pb::CloneVmRequest {
                base,
                name: "advc-newclone".into(),
                owner: n,
                ..Default::default()
            }
        )),
        rpc!("CreateUser", |c, n, base, host| c.users.create_user(
            pb::CreateUserRequest {
                name: n,
                role: "user".into(),
                attributes: Default::default()
            }
        )),
        rpc!("CreateToken", |c, n, base, host| c
            .users
            .create_token(pb::CreateTokenRequest { user: n })),
        ("MoveVm(host)", {
            let (vm, n) = (w.alice_vm.clone(), n.clone());
            Box::new(move |cs: C| {
                let mut c = cs.admin;
                Box::pin(async move {
                    c.vms
                        .move_vm(pb::MoveVmRequest {
                            name: vm,
                            host: n,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                }) as crate::adversarial::Answer
            })
        }),
    ]
}

/// A user's clone RPCs that take a base and a name.
fn clone_rpcs(base: &str, name: &str) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let (b, n) = (base.to_string(), name.to_string());
    let clone = |b: String, n: String| pb::CloneVmRequest {
        base: b,
        name: n,
        ..Default::default()
    };
    let (b1, n1, b2, n2) = (b.clone(), n.clone(), b, n);
    vec![
        (
            "CloneVm",
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move { c.vms.clone_vm(clone(b1, n1)).await.map(|_| ()) })
                    as crate::adversarial::Answer
            }) as crate::adversarial::Call<C>,
        ),
        (
            "ExplainPlacement",
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move { c.vms.explain_placement(clone(b2, n2)).await.map(|_| ()) })
                    as crate::adversarial::Answer
            }),
        ),
    ]
}

pub fn coord_cases(w: &CoordWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let alice = |cs: C| cs.alice;
    for (what, n) in bad_names() {
        let says: Vec<String> = name_says(&n).iter().map(|s| s.to_string()).collect();
        let rpcs = vm_rpcs(&n, alice)
            .into_iter()
            .chain(admin_rpcs(&n, w))
            .chain(clone_rpcs(&w.base, &n))
            .chain(clone_rpcs(&n, "advc-fine"));
        for (rpc, call) in rpcs {
            // No name is valid there: "where would a clone go?", "place it", "for me".
            if n.is_empty()
                && matches!(
                    rpc,
                    "ExplainPlacement" | "CreateVm(host)" | "CloneVm(owner)" | "ListVmPorts"
                )
            {
                continue;
            }
            out.push(Case {
                rpc,
                input: format!("a name with {what}"),
                code: Code::InvalidArgument,
                says: says.clone(),
                call,
            });
        }
    }
    // Unknown VMs, and another user's VMs: both look absent.
    for (input, n) in [
        ("an unknown VM", format!("{}ghost", w.p)),
        ("bob's VM", w.bob_vm.clone()),
        ("a base (no VM)", w.base.clone()),
    ] {
        for (rpc, call) in vm_rpcs(&n, alice) {
            let code = if rpc == "PrepareBase" || rpc == "MoveVm" {
                Code::PermissionDenied
            } else {
                Code::NotFound
            };
            let says = if code == Code::NotFound {
                vec![n.clone()]
            } else {
                vec!["admin".to_string()]
            };
            out.push(Case {
                rpc,
                input: input.into(),
                code,
                says,
                call,
            });
        }
    }
    // Unknown hosts, bases and users, as the admin.
    let ghost = format!("{}ghost", w.p);
    for (rpc, call) in admin_rpcs(&ghost, w) {
        let (code, says) = match rpc {
            // A new name is fine there; these fail for the other reason below.
            "AddHost" => continue,
            "CreateBase(name)" | "CreateVm" | "CreateUser" => continue,
            _ => (Code::NotFound, vec![ghost.clone()]),
        };
        out.push(Case {
            rpc,
            input: "an unknown name".into(),
            code,
            says,
            call,
        });
    }
    out.extend(ownership_cases(w));
    out.extend(number_cases(w));
    out
}

/// What another user owns, what only admins may do, and names already taken.
fn ownership_cases(w: &CoordWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    // Issue 8, item 1: a user clones onto a base's name.
    let base = w.base.clone();
    out.push(case(
        "CloneVm",
        "a base's name as the clone's name",
        Code::AlreadyExists,
        &["already exists", "base"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.vms
                    .clone_vm(pb::CloneVmRequest {
                        base: base.clone(),
                        name: base,
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let (base, bob_vm) = (w.base.clone(), w.bob_vm.clone());
    out.push(case(
        "CloneVm",
        "another user's VM's name",
        Code::AlreadyExists,
        &["already exists"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.vms
                    .clone_vm(pb::CloneVmRequest {
                        base,
                        name: bob_vm,
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "CloneVm",
        "a clone for another user",
        Code::PermissionDenied,
        &["admin"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.vms
                    .clone_vm(pb::CloneVmRequest {
                        base,
                        name: "advc-forbob".into(),
                        owner: "bob".into(),
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "RemoveVm",
        "a base, as a user",
        Code::NotFound,
        &["not found"],
        move |cs: C| {
            let mut c = cs.alice;
            async move { c.vms.remove_vm(vref(&base)).await }
        },
    ));
    let op = w.bob_op.clone();
    out.push(case(
        "GetOperation",
        "bob's operation",
        Code::NotFound,
        &["not found"],
        move |cs: C| {
            let mut c = cs.alice;
            async move { c.ops.get_operation(pb::OperationRef { id: op }).await }
        },
    ));
    let op = w.bob_op.clone();
    out.push(case(
        "CancelOperation",
        "bob's operation",
        Code::NotFound,
        &["not found"],
        move |cs: C| {
            let mut c = cs.alice;
            async move { c.ops.cancel_operation(pb::OperationRef { id: op }).await }
        },
    ));
    let op = w.bob_op.clone();
    out.push(case(
        "WatchOperation",
        "bob's operation",
        Code::NotFound,
        &["not found"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                let mut s = c
                    .ops
                    .watch_operation(pb::OperationRef { id: op })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
        },
    ));
    // Issue 8, item 11: an illegal state change is no outage.
    let op = w.bob_op.clone();
    out.push(case(
        "CancelOperation",
        "an operation that ended",
        Code::FailedPrecondition,
        &["already ended"],
        move |cs: C| {
            let mut c = cs.admin;
            async move { c.ops.cancel_operation(pb::OperationRef { id: op }).await }
        },
    ));
    for (rpc, id) in [
        ("GetOperation", "no-such-op"),
        ("CancelOperation", "../../x"),
        ("GetOperation", ""),
    ] {
        let id = id.to_string();
        out.push(case(
            rpc,
            format!("operation id {id:?}"),
            Code::NotFound,
            &["not found"],
            move |cs: C| {
                let mut c = cs.admin;
                async move {
                    if rpc == "GetOperation" {
                        c.ops
                            .get_operation(pb::OperationRef { id })
                            .await
                            .map(|_| ())
                    } else {
                        c.ops
                            .cancel_operation(pb::OperationRef { id })
                            .await
                            .map(|_| ())
                    }
                }
            },
        ));
    }
    // Admin-only RPCs, as a user.
    let base = w.base.clone();
    let host = w.host.clone();
    let admin_only: Vec<(&'static str, crate::adversarial::Call<C>)> = vec![
        (
            "AddHost",
            Box::new(|cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.hosts
                        .add_host(pb::AddHostRequest {
                            name: "advc-h9".into(),
                            address: "127.0.0.1:9".into(),
                        })
                        .await
                        .map(|_| ())
                })
            }),
        ),
        ("RemoveHost", {
            let h = host.clone();
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.hosts
                        .remove_host(pb::HostRef { name: h })
                        .await
                        .map(|_| ())
                })
            })
        }),
        ("SetHostEnabled", {
            let h = host.clone();
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.hosts
                        .set_host_enabled(pb::SetHostEnabledRequest {
                            name: h,
                            enabled: false,
                        })
                        .await
                        .map(|_| ())
                })
            })
        }),
        ("CreateBase", {
            let h = host.clone();
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.vms
                        .create_base(pb::CreateBaseRequest {
                            spec: Some(spec("advc-mine")),
                            host: h,
                            idempotency_key: String::new(),
                        })
                        .await
                        .map(|_| ())
                })
            })
        }),
        ("RemoveBase", {
            let b = base.clone();
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(
                    async move { c.vms.remove_base(pb::BaseRef { name: b }).await.map(|_| ()) },
                )
            })
        }),
        ("SyncBase", {
            let (b, h) = (base.clone(), host.clone());
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.vms
                        .sync_base(pb::SyncBaseRequest {
                            base: b,
                            host: h,
                            bandwidth_limit: 0,
                        })
                        .await
                        .map(|_| ())
                })
            })
        }),
        ("RemoveBaseFromHost", {
            let (b, h) = (base.clone(), host.clone());
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.vms
                        .remove_base_from_host(pb::SyncBaseRequest {
                            base: b,
                            host: h,
                            bandwidth_limit: 0,
                        })
                        .await
                        .map(|_| ())
                })
            })
        }),
        (
            "CreateVm",
            Box::new(|cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.vms
                        .create_vm(pb::CreateVmRequest {
                            spec: Some(spec("advc-own")),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                })
            }),
        ),
        (
            "CreateUser",
            Box::new(|cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.users
                        .create_user(pb::CreateUserRequest {
                            name: "mallory".into(),
                            role: "admin".into(),
                            attributes: Default::default(),
                        })
                        .await
                        .map(|_| ())
                })
            }),
        ),
        (
            "CreateToken",
            Box::new(|cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.users
                        .create_token(pb::CreateTokenRequest { user: "bob".into() })
                        .await
                        .map(|_| ())
                })
            }),
        ),
        (
            "ListUsers",
            Box::new(|cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.users
                        .list_users(pb::ListUsersRequest::default())
                        .await
                        .map(|_| ())
                })
            }),
        ),
        ("ExposeVmPort(host port)", {
            let v = w.alice_vm.clone();
            Box::new(move |cs: C| {
                let mut c = cs.alice;
                Box::pin(async move {
                    c.access
                        .expose_vm_port(pb::ExposePortRequest {
                            domain: v,
                            guest_port: 80,
                            host_port: 20022,
                            wait_seconds: 1,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                })
            })
        }),
    ];
    for (rpc, call) in admin_only {
        out.push(Case {
            rpc,
            input: "a user calling an admin RPC".into(),
            code: Code::PermissionDenied,
            says: vec!["admin".into()],
            call,
        });
    }
    // No valid token.
    out.push(case(
        "ListVms",
        "a made-up token",
        Code::Unauthenticated,
        &["token"],
        |cs: C| {
            let mut c = cs.nobody;
            async move { c.vms.list_vms(pb::ListVmsRequest::default()).await }
        },
    ));
    // Issue 8, item 4: CreateUser on an existing name.
    out.push(case(
        "CreateUser",
        "an existing user's name",
        Code::AlreadyExists,
        &["user alice already exists"],
        |cs: C| {
            let mut c = cs.admin;
            async move {
                c.users
                    .create_user(pb::CreateUserRequest {
                        name: "alice".into(),
                        role: "admin".into(),
                        attributes: Default::default(),
                    })
                    .await
            }
        },
    ));
    out.push(case(
        "CreateUser",
        "role 'root'",
        Code::InvalidArgument,
        &["role"],
        |cs: C| {
            let mut c = cs.admin;
            async move {
                c.users
                    .create_user(pb::CreateUserRequest {
                        name: "carol".into(),
                        role: "root".into(),
                        attributes: Default::default(),
                    })
                    .await
            }
        },
    ));
    out.push(case(
        "CreateUser",
        "an attribute with a newline",
        Code::InvalidArgument,
        &["label"],
        |cs: C| {
            let mut c = cs.admin;
            async move {
                c.users
                    .create_user(pb::CreateUserRequest {
                        name: "carol".into(),
                        role: "user".into(),
                        attributes: [("course".to_string(), "a\nb".to_string())].into(),
                    })
                    .await
            }
        },
    ));
    // Issue 8, item 5: host registration.
    let (host, addr) = (w.host.clone(), w.host_address.clone());
    out.push(case(
        "AddHost",
        "the same name again",
        Code::AlreadyExists,
        &["already exists"],
        move |cs: C| {
            let mut c = cs.admin;
            async move {
                c.hosts
                    .add_host(pb::AddHostRequest {
                        name: host,
                        address: "127.0.0.1:2".into(),
                    })
                    .await
            }
        },
    ));
    let a = addr.clone();
    out.push(case(
        "AddHost",
        "an address already registered",
        Code::AlreadyExists,
        &["already exists", "host"],
        move |cs: C| {
            let mut c = cs.admin;
            async move {
                c.hosts
                    .add_host(pb::AddHostRequest {
                        name: "advc-h2".into(),
                        address: a,
                    })
                    .await
            }
        },
    ));
    let a = format!("https://{addr}/");
    out.push(case(
        "AddHost",
        "a URL of an address already registered",
        Code::AlreadyExists,
        &["already exists", "host"],
        move |cs: C| {
            let mut c = cs.admin;
            async move {
                c.hosts
                    .add_host(pb::AddHostRequest {
                        name: "advc-h3".into(),
                        address: a,
                    })
                    .await
            }
        },
    ));
    for (input, address, says) in [
        ("port 0", "127.0.0.1:0", "out of range"),
        ("port 99999", "127.0.0.1:99999", "out of range"),
        (
            "a trailing newline",
            "127.0.0.1:7700\n",
            "control character",
        ),
        ("no port", "127.0.0.1", "no port"),
        ("a path", "https://127.0.0.1:7700/../../x", "host:port"),
        (
            "shell metacharacters",
            "$(reboot):7700",
            "not an ip address or a host name",
        ),
        ("an empty address", "", "required"),
    ] {
        let address = address.to_string();
        out.push(case(
            "AddHost",
            input,
            Code::InvalidArgument,
            &[says],
            move |cs: C| {
                let mut c = cs.admin;
                async move {
                    c.hosts
                        .add_host(pb::AddHostRequest {
                            name: "advc-h4".into(),
                            address,
                        })
                        .await
                }
            },
        ));
    }
    let host = w.host.clone();
    out.push(case(
        "RemoveHost",
        "a host with VMs",
        Code::FailedPrecondition,
        &["still has"],
        move |cs: C| {
            let mut c = cs.admin;
            async move { c.hosts.remove_host(pb::HostRef { name: host }).await }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "RemoveBase",
        "a base with clones",
        Code::FailedPrecondition,
        &["clone"],
        move |cs: C| {
            let mut c = cs.admin;
            async move { c.vms.remove_base(pb::BaseRef { name: base }).await }
        },
    ));
    let (base, host) = (w.base.clone(), w.host.clone());
    out.push(case(
        "CreateVm",
        "a base's name",
        Code::AlreadyExists,
        &["already exists"],
        move |cs: C| {
            let mut c = cs.admin;
            async move {
                c.vms
                    .create_vm(pb::CreateVmRequest {
                        spec: Some(spec(&base)),
                        host,
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let (vm, host) = (w.alice_vm.clone(), w.host.clone());
    out.push(case(
        "CreateBase",
        "a VM's name",
        Code::AlreadyExists,
        &["already exists"],
        move |cs: C| {
            let mut c = cs.admin;
            async move {
                c.vms
                    .create_base(pb::CreateBaseRequest {
                        spec: Some(spec(&vm)),
                        host,
                        idempotency_key: String::new(),
                    })
                    .await
            }
        },
    ));
    out
}

/// Numbers and values the agent would refuse, refused before an operation exists
/// (issue 8, item 7).
fn number_cases(w: &CoordWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let host = w.host.clone();
    let create = |input: &str, says: &str, edit: fn(&mut pb::DomainSpec)| {
        let host = host.clone();
        case(
            "CreateVm",
            input.to_string(),
            Code::InvalidArgument,
            &[says],
            move |cs: C| {
                let mut c = cs.admin;
                let mut s = spec("advc-numvm");
                edit(&mut s);
                async move {
                    c.vms
                        .create_vm(pb::CreateVmRequest {
                            spec: Some(s),
                            host,
                            ..Default::default()
                        })
                        .await
                }
            },
        )
    };
    out.push(create("a disk named ../x", "'/'", |s| {
        s.disks[0].volume = "../x".into()
    }));
    out.push(create("a disk of u64::MAX bytes", "too large", |s| {
        s.disks[0].create_size_bytes = u64::MAX
    }));
    out.push(create("memory 1 MiB", "out of range", |s| s.memory_mib = 1));
    out.push(create("100000 vCPUs", "out of range", |s| {
        s.vcpus = 100_000
    }));
    out.push(create(
        "a label with a newline",
        "control characters",
        |s| {
            s.labels.insert("k".into(), "a\nb".into());
        },
    ));
    out.push(create("a multicast MAC", "multicast", |s| {
        s.nics = vec![pb::NicSpec {
            mac: "01:00:5e:00:00:01".into(),
            ..Default::default()
        }]
    }));
    out.push(create("no spec's disks twice", "given twice", |s| {
        let d = s.disks[0].clone();
        s.disks.push(d);
    }));
    let host = w.host.clone();
    out.push(case(
        "CreateBase",
        "a disk of u64::MAX bytes",
        Code::InvalidArgument,
        &["too large"],
        move |cs: C| {
            let mut c = cs.admin;
            let mut s = spec("advc-numbase");
            s.disks[0].create_size_bytes = u64::MAX;
            async move {
                c.vms
                    .create_base(pb::CreateBaseRequest {
                        spec: Some(s),
                        host,
                        idempotency_key: String::new(),
                    })
                    .await
            }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "CloneVm",
        "a label with a direction override",
        Code::InvalidArgument,
        &["control characters"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.vms
                    .clone_vm(pb::CloneVmRequest {
                        base,
                        name: "advc-numclone".into(),
                        labels: [("k".to_string(), "\u{202E}x".to_string())].into(),
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let base = w.base.clone();
    out.push(case(
        "CloneVm",
        "a 300-character label key",
        Code::InvalidArgument,
        &["keys are 1-63"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.vms
                    .clone_vm(pb::CloneVmRequest {
                        base,
                        name: "advc-numclone".into(),
                        labels: [("k".repeat(300), "v".to_string())].into(),
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let vm = w.alice_vm.clone();
    out.push(case(
        "RevertVmSnapshot",
        "an unknown snapshot",
        Code::NotFound,
        &["snap-none"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.snapshots
                    .revert_vm_snapshot(pb::RevertSnapshotRequest {
                        domain: vm,
                        name: "snap-none".into(),
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let vm = w.alice_vm.clone();
    out.push(case(
        "DeleteVmSnapshot",
        "an unknown snapshot",
        Code::NotFound,
        &["snap-none"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.snapshots
                    .delete_vm_snapshot(pb::DeleteSnapshotRequest {
                        domain: vm,
                        name: "snap-none".into(),
                        mode: 0,
                    })
                    .await
            }
        },
    ));
    let vm = w.alice_vm.clone();
    out.push(case(
        "CreateVmSnapshot",
        "a 5000-character description",
        Code::InvalidArgument,
        &["description"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.snapshots
                    .create_vm_snapshot(pb::CreateSnapshotRequest {
                        domain: vm,
                        name: "s2".into(),
                        description: "x".repeat(5000),
                        ..Default::default()
                    })
                    .await
            }
        },
    ));
    let vm = w.alice_vm.clone();
    out.push(case(
        "RevertVmSnapshot",
        "mode 9",
        Code::InvalidArgument,
        &["mode"],
        move |cs: C| {
            let mut c = cs.alice;
            async move {
                c.snapshots
                    .revert_vm_snapshot(pb::RevertSnapshotRequest {
                        domain: vm,
                        name: "s1".into(),
                        mode: 9,
                        force: false,
                    })
                    .await
            }
        },
    ));
    for (input, guest) in [("guest port 0", 0u32), ("guest port 70000", 70000)] {
        let vm = w.alice_vm.clone();
        out.push(case(
            "ExposeVmPort",
            input,
            Code::InvalidArgument,
            &["out of range"],
            move |cs: C| {
                let mut c = cs.alice;
                async move {
                    c.access
                        .expose_vm_port(pb::ExposePortRequest {
                            domain: vm,
                            guest_port: guest,
                            wait_seconds: 1,
                            ..Default::default()
                        })
                        .await
                }
            },
        ));
    }
    out
}
