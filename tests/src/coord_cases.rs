//! The coordinator's adversarial table: every RPC of its six services with bad names, bad
//! numbers, unknown ids, and references to what another user owns, as the user a hostile
//! student would be, an admin making mistakes, and a caller without a valid token.

use corral_client::proto as pb;
use corral_client::CoordinatorClient;
use tonic::Code;

use crate::adversarial::{bad_names, name_says, Case};

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
type Labels = std::collections::HashMap<String, String>;

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
                        "{} {} {} {} {} {}",
                        v.name, v.owner, v.base, v.host, v.desired_state, v.run_timeout_seconds
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let summaries = admin
        .vms
        .list_bases(pb::ListBaseSummariesRequest::default())
        .await
        .map(|r| r.into_inner().bases)
        .unwrap_or_default();
    // Each base's access and each user's tokens, which the listings do not show.
    let mut bases = format!("{summaries:?}");
    for b in &summaries {
        let base = b.name.clone();
        let access = admin.vms.get_base_access(pb::BaseAccessRequest {
            base,
            user: String::new(),
        });
        if let Ok(a) = access.await.map(|a| a.into_inner()) {
            bases.push_str(&format!(" {} {:?}", a.public, a.rules));
        }
        let name = b.name.clone();
        if let Ok(t) = admin.vms.get_base_timeouts(pb::BaseRef { name }).await {
            bases.push_str(&format!(" {:?}", t.into_inner()));
        }
        let name = b.name.clone();
        if let Ok(d) = admin.vms.get_base_display(pb::BaseRef { name }).await {
            bases.push_str(&format!(" {:?}", d.into_inner()));
        }
        let name = b.name.clone();
        if let Ok(p) = admin.guest.get_base_post_load(pb::BaseRef { name }).await {
            bases.push_str(&format!(" {:?}", p.into_inner().commands));
        }
        let name = b.name.clone();
        if let Ok(p) = admin.vms.get_base_pool(pb::BaseRef { name }).await {
            let p = p.into_inner();
            bases.push_str(&format!(" pool {} {}", p.clones, p.start));
        }
    }
    let user_list = admin
        .users
        .list_users(pb::ListUsersRequest::default())
        .await;
    let user_list = user_list.map(|r| r.into_inner().users).unwrap_or_default();
    let mut users = format!("{user_list:?}");
    for u in &user_list {
        let tokens = admin.users.list_tokens(pb::ListTokensRequest {
            user: u.name.clone(),
        });
        if let Ok(t) = tokens.await {
            users.push_str(&format!(" {:?}", t.into_inner().tokens));
        }
    }
    let plans = admin
        .vms
        .list_plans(pb::ListPlansRequest {})
        .await
        .map(|r| r.into_inner().plans)
        .unwrap_or_default();
    users.push_str(&format!(" plans {plans:?}"));
    let images = admin
        .images
        .list_images(pb::ListImagesRequest::default())
        .await
        .map(|r| r.into_inner().images)
        .unwrap_or_default();
    let repo = admin
        .images
        .list_repository_hosts(pb::ListRepositoryHostsRequest {})
        .await
        .map(|r| r.into_inner().hosts)
        .unwrap_or_default();
    users.push_str(&format!(" images {images:?} repository {repo:?}"));
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

fn admin(cs: C) -> CoordinatorClient {
    cs.admin
}
fn alice(cs: C) -> CoordinatorClient {
    cs.alice
}
fn nobody(cs: C) -> CoordinatorClient {
    cs.nobody
}

/// A request naming a VM's snapshot.
fn snap<T: Default + SnapshotTarget>(domain: String, name: &str) -> T {
    let mut r = T::default();
    r.set(domain, name);
    r
}

/// Snapshot requests name a VM and a snapshot.
trait SnapshotTarget {
    fn set(&mut self, domain: String, name: &str);
}

macro_rules! snapshot_target {
    ($($t:ty),*) => {$(
        impl SnapshotTarget for $t {
            fn set(&mut self, domain: String, name: &str) {
                self.domain = domain;
                self.name = name.into();
            }
        }
    )*};
}
snapshot_target!(
    pb::CreateSnapshotRequest,
    pb::RevertSnapshotRequest,
    pb::DeleteSnapshotRequest,
    pb::SnapshotRef,
    pb::ListChildrenRequest
);

fn clone_req(base: &str, name: &str) -> pb::CloneVmRequest {
    pb::CloneVmRequest {
        base: base.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn user_req(name: &str, role: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        name: name.into(),
        role: role.into(),
        attributes: Default::default(),
    }
}

fn host_req(name: &str, address: &str) -> pb::AddHostRequest {
    pb::AddHostRequest {
        name: name.into(),
        address: address.into(),
    }
}

fn on_host(base: &str, host: &str) -> pb::SyncBaseRequest {
    pb::SyncBaseRequest {
        base: base.into(),
        host: host.into(),
        bandwidth_limit: 0,
    }
}

fn new_vm(spec: pb::DomainSpec, host: &str) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        spec: Some(spec),
        host: host.into(),
        ..Default::default()
    }
}

fn new_base(spec: pb::DomainSpec, host: &str) -> pb::CreateBaseRequest {
    pb::CreateBaseRequest {
        spec: Some(spec),
        host: host.into(),
        idempotency_key: String::new(),
    }
}

fn expose(vm: &str, guest_port: u32, host_port: u32) -> pb::ExposePortRequest {
    pb::ExposePortRequest {
        domain: vm.into(),
        guest_port,
        host_port,
        wait_seconds: 1,
        ..Default::default()
    }
}

fn rule(attribute: &str, value: &str) -> Option<pb::AccessRule> {
    Some(pb::AccessRule {
        attribute: attribute.into(),
        value: value.into(),
        allowed: true,
        last: false,
    })
}

fn add_rule(base: &str, rule: Option<pb::AccessRule>, position: u32) -> pb::AddAccessRuleRequest {
    pb::AddAccessRuleRequest {
        base: base.into(),
        rule,
        position,
    }
}

fn plan(name: &str, memory_mib: u64, vcpus: u32, disk_bytes: u64) -> pb::Plan {
    pb::Plan {
        name: name.into(),
        memory_mib,
        vcpus,
        disk_bytes,
    }
}

fn op_ref(id: &str) -> pb::OperationRef {
    pb::OperationRef { id: id.into() }
}

/// Watches an operation to its end.
async fn watch(c: &mut CoordinatorClient, id: &str) -> Result<(), tonic::Status> {
    let mut s = c.ops.watch_operation(op_ref(id)).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// The first message of the events feed after `after`.
async fn first_event(c: &mut CoordinatorClient, after: u64) -> Result<(), tonic::Status> {
    let req = pb::WatchEventsRequest {
        after,
        from_now: false,
    };
    let mut s = c.events.watch_events(req).await?.into_inner();
    s.message().await?;
    Ok(())
}

/// Every RPC that takes a VM name, as `who` (a closure picking the caller).
fn vm_rpcs(
    n: &str,
    who: fn(C) -> CoordinatorClient,
) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let n = n.to_string();
    crate::calls! { C, who, |c| [n];
        "StartVm" => c.vms.start_vm(vref(&n));
        "ShutdownVm" => c.vms.shutdown_vm(vref(&n));
        "PowerOffVm" => c.vms.power_off_vm(vref(&n));
        "HibernateVm" => c.vms.hibernate_vm(vref(&n));
        "RestoreVm" => c.vms.restore_vm(vref(&n));
        "RemoveVm" => c.vms.remove_vm(vref(&n));
        "SuspendVm" => c.vms.suspend_vm(vref(&n));
        "ResumeVm" => c.vms.resume_vm(vref(&n));
        "ResetVm" => c.vms.reset_vm(vref(&n));
        "SpinoffVm" => c.vms.spinoff_vm(vref(&n));
        "RebootVm" => c.vms.reboot_vm(vref(&n));
        "RebaseVm" => c.vms.rebase_vm(pb::RebaseVmRequest { name: n, base: "advc-web".into() });
        "AddVmDisk" => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: n, role: pb::VolumeRole::Data as i32, size_bytes: 16 << 20, format: 0 });
        "DetachVmDisk" => c.vms.detach_vm_disk(pb::RemoveVmDiskRequest { name: n.clone(), volume: "advc-none.qcow2".into() });
        "AttachVmDisk" => c.vms.attach_vm_disk(pb::RemoveVmDiskRequest { name: n.clone(), volume: "advc-none.qcow2".into() });
        "ResizeVmDisk" => c.vms.resize_vm_disk(pb::ResizeVmDiskRequest { name: n, volume: "advc-none.qcow2".into(), size_bytes: 32 << 20 });
        "ListVmDisks" => c.vms.list_vm_disks(vref(&n));
        "SnapshotVmDisk" => c.vms.snapshot_vm_disk(pb::SnapshotVmDiskRequest { name: n, volume: "advc-none.qcow2".into(), snapshot: "s1".into(), action: pb::VolumeSnapshotAction::Create as i32 });
        "CopyVmDisk" => c.vms.copy_vm_disk(pb::CopyVmDiskRequest { name: n, volume: "advc-none.qcow2".into(), to: "advc-none".into() });
        "RemoveVmDisk" => c.vms.remove_vm_disk(pb::RemoveVmDiskRequest { name: n, volume: "advc-none.qcow2".into() });
        "SetVmAutostart" => c.vms.set_vm_autostart(pb::SetVmAutostartRequest { name: n, autostart: true });
        "SetVmResources" => c.vms.set_vm_resources(pb::SetVmResourcesRequest { name: n, memory_mib: 256, vcpus: 1 });
        "GetVm" => c.vms.get_vm(vref(&n));
        "PrepareBase" => c.vms.prepare_base(vref(&n));
        "MoveVm" => c.vms.move_vm(pb::MoveVmRequest { name: n, host: "h1".into(), ..Default::default() });
        "CreateVmSnapshot" => c.snapshots.create_vm_snapshot(snap::<pb::CreateSnapshotRequest>(n, "s1"));
        "ListVmSnapshots" => c.snapshots.list_vm_snapshots(pb::ListSnapshotsRequest { domain: n, filters: vec![] });
        "GetVmSnapshot" => c.snapshots.get_vm_snapshot(snap::<pb::SnapshotRef>(n, "s1"));
        "ListVmSnapshotChildren" => c.snapshots.list_vm_snapshot_children(snap::<pb::ListChildrenRequest>(n, "s1"));
        "RevertVmSnapshot" => c.snapshots.revert_vm_snapshot(snap::<pb::RevertSnapshotRequest>(n, "s1"));
        "DeleteVmSnapshot" => c.snapshots.delete_vm_snapshot(snap::<pb::DeleteSnapshotRequest>(n, "s1"));
        "ExposeVmPort" => c.access.expose_vm_port(expose(&n, 80, 0));
        "ListVmPorts" => c.access.list_vm_ports(pb::ListPortsRequest { domain: n });
        "RemoveVmPort" => c.access.remove_vm_port(pb::RemovePortRequest { domain: n, guest_port: 80 });
        "RemoveAllVmPorts" => c.access.remove_all_vm_ports(pb::RemoveAllPortsRequest { domain: n });
        "RestrictVmDisplay" => c.access.restrict_vm_display(pb::RestrictDisplayRequest { domain: n, client_ip: "192.0.2.7".into() });
        "GetVmDisplay" => c.access.get_vm_display(vref(&n));
        "GetVmScreenshot" => c.access.get_vm_screenshot(vref(&n));
        "GetVmGuest" => c.guest.get_vm_guest(vref(&n));
        "ExecVm" => c.guest.exec_vm(pb::GuestExecRequest { name: n, path: "touch".into(), args: vec!["/tmp/advc".into()], ..Default::default() });
        "ReadVmFile" => c.guest.read_vm_file(pb::GuestFileRef { name: n, path: "/etc/hostname".into() });
        "CaptureImage" => c.images.capture_image(pb::CaptureVmImageRequest { vm: n.clone(), image: "advc-img".into(), description: String::new() });
        "BackupVm" => c.backups.backup_vm(pb::BackupVmRequest { vm: n.clone(), system: true });
        "RestoreBackup" => c.backups.restore_backup(pb::BackupRef { vm: n.clone(), number: 0 });
        "RemoveBackup" => c.backups.remove_backup(pb::BackupRef { vm: n.clone(), number: 1 });
        "CreateVmFromBackup" => c.backups.create_vm_from_backup(pb::CreateVmFromBackupRequest { backup: Some(pb::BackupRef { vm: n, number: 0 }), name: "advc-frombackup".into(), ..Default::default() });
        "WriteVmFile" => c.guest.write_vm_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: Some(pb::GuestFileRef { name: n, path: "/tmp/advc".into() }), data: b"x".to_vec() }]));
    }
}

/// Every admin RPC that takes a host, base or user name.
fn admin_rpcs(n: &str, w: &CoordWorld) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let n = n.to_string();
    let (base, host, vm) = (w.base.clone(), w.host.clone(), w.alice_vm.clone());
    crate::calls! { C, admin, |c| [n, base, host, vm];
        "AddHost" => c.hosts.add_host(host_req(&n, "127.0.0.1:1"));
        "RemoveHost" => c.hosts.remove_host(pb::HostRef { name: n });
        "SetHostEnabled" => c.hosts.set_host_enabled(pb::SetHostEnabledRequest { name: n, enabled: false });
        "CreateBase(name)" => c.vms.create_base(new_base(spec(&n), &host));
        "CreateBase(host)" => c.vms.create_base(new_base(spec("advc-newbase"), &n));
        "RemoveBase" => c.vms.remove_base(pb::BaseRef { name: n });
        "UnprepareBase" => c.vms.unprepare_base(pb::BaseRef { name: n });
        "SyncBase(base)" => c.vms.sync_base(on_host(&n, &host));
        "SyncBase(host)" => c.vms.sync_base(on_host(&base, &n));
        "RemoveBaseFromHost" => c.vms.remove_base_from_host(on_host(&n, &host));
        "CreateVm" => c.vms.create_vm(new_vm(spec(&n), &host));
        "CreateVm(host)" => c.vms.create_vm(new_vm(spec("advc-newvm"), &n));
        "CloneVm(owner)" => c.vms.clone_vm(pb::CloneVmRequest { owner: n, ..clone_req(&base, "advc-newclone") });
        "CreateUser" => c.users.create_user(user_req(&n, "user"));
        "CreateToken" => c.users.create_token(pb::CreateTokenRequest { user: n, expires_in_seconds: 0 });
        "UpdateUser" => c.users.update_user(pb::UpdateUserRequest { name: n, role: "user".into(), ..Default::default() });
        "RemoveUser" => c.users.remove_user(pb::RemoveUserRequest { name: n, remove_vms: false });
        "ListTokens" => c.users.list_tokens(pb::ListTokensRequest { user: n });
        "MoveVm(host)" => c.vms.move_vm(pb::MoveVmRequest { name: vm, host: n, ..Default::default() });
        "SetBasePublic" => c.vms.set_base_public(pb::SetBasePublicRequest { base: n, public: true });
        "SetBasePool" => c.vms.set_base_pool(pb::SetBasePoolRequest { base: n, clones: 1, start: 0 });
        "GetBasePool" => c.vms.get_base_pool(pb::BaseRef { name: n });
        "SetBaseTimeouts" => c.vms.set_base_timeouts(pb::BaseTimeouts { base: n, run_seconds: 3600, idle_seconds: 600, idle_hibernate: true });
        "GetBaseTimeouts" => c.vms.get_base_timeouts(pb::BaseRef { name: n });
        "SetBaseDisplay" => c.vms.set_base_display(pb::BaseDisplay { base: n, restrict_to_client: true });
        "GetBaseDisplay" => c.vms.get_base_display(pb::BaseRef { name: n });
        "SetBasePostLoad" => c.guest.set_base_post_load(pb::BasePostLoad { base: n, commands: vec![pb::GuestCommand { path: "true".into(), ..Default::default() }] });
        "GetBasePostLoad" => c.guest.get_base_post_load(pb::BaseRef { name: n });
        "SetVmRunTimeout" => c.vms.set_vm_run_timeout(pb::SetVmRunTimeoutRequest { name: n, run_seconds: 3600 });
        "AddAccessRule" => c.vms.add_access_rule(add_rule(&n, rule("course", "math"), 0));
        "RemoveAccessRule" => c.vms.remove_access_rule(pb::RemoveAccessRuleRequest { base: n, position: 1 });
        "GetBaseAccess" => c.vms.get_base_access(pb::BaseAccessRequest { base: n, user: String::new() });
        "GetBaseAccess(user)" => c.vms.get_base_access(pb::BaseAccessRequest { base, user: n });
        "CaptureImage(image)" => c.images.capture_image(pb::CaptureVmImageRequest { vm, image: n, description: String::new() });
        "GetImage" => c.images.get_image(pb::ImageRef { name: n, version: 0 });
        "ListImages" => c.images.list_images(pb::ListImagesRequest { name: n });
        "RemoveImage" => c.images.remove_image(pb::ImageRef { name: n, version: 1 });
        "LoadImage" => c.images.load_image(pb::LoadImageRequest { name: n, version: 0, host: host.clone(), base: "advc-loaded".into() });
        "LoadImage(host)" => c.images.load_image(pb::LoadImageRequest { name: "advc-img".into(), version: 0, host: n, base: "advc-loaded".into() });
        "LoadImage(base)" => c.images.load_image(pb::LoadImageRequest { name: "advc-img".into(), version: 0, host, base: n });
        "SetRepositoryHost" => c.images.set_repository_host(pb::SetRepositoryHostRequest { host: n, repository: true });
    }
}

/// A user's clone RPCs that take a base and a name.
fn clone_rpcs(base: &str, name: &str) -> Vec<(&'static str, crate::adversarial::Call<C>)> {
    let r = clone_req(base, name);
    crate::calls! { C, alice, |c| [r];
        "CloneVm" => c.vms.clone_vm(r);
        "EnsureVm" => c.vms.ensure_vm(r);
        "ExplainPlacement" => c.vms.explain_placement(r);
    }
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
                    "ExplainPlacement"
                        | "CreateVm(host)"
                        | "CloneVm(owner)"
                        | "ListVmPorts"
                        | "GetBaseAccess(user)"
                        | "ListImages"
                )
            {
                continue;
            }
            out.push(Case::of(
                rpc,
                format!("a name with {what}"),
                Code::InvalidArgument,
                says.clone(),
                call,
            ));
        }
    }
    // Unknown VMs, and another user's VMs: both look absent.
    for (input, n) in [
        ("an unknown VM", format!("{}ghost", w.p)),
        ("bob's VM", w.bob_vm.clone()),
        ("a base (no VM)", w.base.clone()),
    ] {
        for (rpc, call) in vm_rpcs(&n, alice) {
            let code = if matches!(rpc, "PrepareBase" | "MoveVm" | "CaptureImage") {
                Code::PermissionDenied
            } else {
                Code::NotFound
            };
            let says = if code == Code::NotFound {
                vec![n.clone()]
            } else {
                vec!["admin".to_string()]
            };
            out.push(Case::of(rpc, input.into(), code, says, call));
        }
    }
    // Unknown hosts, bases and users, as the admin.
    let ghost = format!("{}ghost", w.p);
    for (rpc, call) in admin_rpcs(&ghost, w) {
        let (code, says) = match rpc {
            // A new name is fine there; these fail for the other reason below.
            "AddHost" => continue,
            "CreateBase(name)" | "CreateVm" | "CreateUser" => continue,
            // A new image or base name is fine there; no image exists to load or list.
            "CaptureImage(image)" | "ListImages" | "LoadImage(host)" | "LoadImage(base)" => {
                continue
            }
            _ => (Code::NotFound, vec![ghost.clone()]),
        };
        out.push(Case::of(rpc, "an unknown name".into(), code, says, call));
    }
    out.extend(ownership_cases(w));
    out.extend(number_cases(w));
    out
}

/// What another user owns, what only admins may do, and names already taken.
fn ownership_cases(w: &CoordWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let CoordWorld {
        base,
        host,
        host_address: addr,
        alice_vm: vm,
        bob_vm,
        bob_op: op,
        ..
    } = w.clone();
    let url = format!("https://{addr}/");
    // Issue 8, item 1: a user clones onto a base's name; item 4: CreateUser on an existing name.
    crate::cases! { out, C, |c|;
        "CloneVm", "a base's name as the clone's name", AlreadyExists, ["already exists", "base"], alice [base] => c.vms.clone_vm(clone_req(&base, &base));
        "CloneVm", "another user's VM's name", AlreadyExists, ["already exists"], alice [base, bob_vm] => c.vms.clone_vm(clone_req(&base, &bob_vm));
        "CloneVm", "a clone for another user", PermissionDenied, ["admin"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { owner: "bob".into(), ..clone_req(&base, "advc-forbob") });
        "EnsureVm", "a base's name as the VM's name", AlreadyExists, ["already exists", "base"], alice [base] => c.vms.ensure_vm(clone_req(&base, &base));
        "EnsureVm", "another user's VM's name", AlreadyExists, ["already exists"], alice [base, bob_vm] => c.vms.ensure_vm(clone_req(&base, &bob_vm));
        "EnsureVm", "a VM for another user", PermissionDenied, ["admin"], alice [base] => c.vms.ensure_vm(pb::CloneVmRequest { owner: "bob".into(), ..clone_req(&base, "advc-forbob") });
        "EnsureVm", "her VM named with another base", FailedPrecondition, ["exists", "not a clone of advc-other"], alice [vm] => c.vms.ensure_vm(clone_req("advc-other", &vm));
        "CaptureImage", "no repository host", FailedPrecondition, ["no repository host"], admin [vm] => c.images.capture_image(pb::CaptureVmImageRequest { vm, image: "advc-img".into(), description: String::new() });
        "CaptureImage", "a 41-character image name", InvalidArgument, ["at most 40"], admin [vm] => c.images.capture_image(pb::CaptureVmImageRequest { vm, image: "a".repeat(41), description: String::new() });
        "CaptureImage", "a 2000-byte description", InvalidArgument, ["description"], admin [vm] => c.images.capture_image(pb::CaptureVmImageRequest { vm, image: "advc-img".into(), description: "d".repeat(2000) });
        "SetRepositoryHost", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [host] => c.images.set_repository_host(pb::SetRepositoryHostRequest { host, repository: true });
        "LoadImage", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [host] => c.images.load_image(pb::LoadImageRequest { name: "advc-img".into(), version: 0, host, base: "advc-loaded".into() });
        "LoadImage", "an unknown image onto a base's name", NotFound, ["image advc-img not found"], admin [host, base] => c.images.load_image(pb::LoadImageRequest { name: "advc-img".into(), version: 0, host, base });
        "RemoveImage", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.images.remove_image(pb::ImageRef { name: "advc-img".into(), version: 1 });
        "GetImage", "version 4294967295 of an unknown image", NotFound, ["advc-img"], alice [] => c.images.get_image(pb::ImageRef { name: "advc-img".into(), version: u32::MAX });
        "CreatePlan", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.vms.create_plan(plan("advc-plan", 256, 1, 0));
        "RemovePlan", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.vms.remove_plan(pb::PlanRef { name: "advc-plan".into() });
        "CreatePlan", "a name with a slash", InvalidArgument, ["plan"], admin [] => c.vms.create_plan(plan("../x", 256, 1, 0));
        "CreatePlan", "memory 1 MiB", InvalidArgument, ["out of range"], admin [] => c.vms.create_plan(plan("advc-plan", 1, 1, 0));
        "CreatePlan", "0 vCPUs", InvalidArgument, ["out of range"], admin [] => c.vms.create_plan(plan("advc-plan", 256, 0, 0));
        "CreatePlan", "a 5-byte disk", InvalidArgument, ["disk of 5 bytes"], admin [] => c.vms.create_plan(plan("advc-plan", 256, 1, 5));
        "RemovePlan", "an unknown plan", NotFound, ["plan advc-ghost"], admin [] => c.vms.remove_plan(pb::PlanRef { name: "advc-ghost".into() });
        "CloneVm", "an unknown plan", NotFound, ["plan advc-ghost"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { plan: "advc-ghost".into(), ..clone_req(&base, "advc-planned") });
        "CloneVm", "a plan and a size", InvalidArgument, ["not both"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { plan: "advc-ghost".into(), vcpus: 2, ..clone_req(&base, "advc-planned") });
        "CreateVm", "an unknown plan", NotFound, ["plan advc-ghost"], admin [host] => c.vms.create_vm(pb::CreateVmRequest { plan: "advc-ghost".into(), ..new_vm(spec("advc-planvm"), &host) });
        "EnsureVm", "a name kept for pool clones", InvalidArgument, ["kept for pool clones"], alice [base] => c.vms.ensure_vm(clone_req(&base, "pool-mine"));
        "RemoveVm", "a base, as a user", NotFound, ["not found"], alice [base] => c.vms.remove_vm(vref(&base));
        "GetOperation", "bob's operation", NotFound, ["not found"], alice [op] => c.ops.get_operation(op_ref(&op));
        "CancelOperation", "bob's operation", NotFound, ["not found"], alice [op] => c.ops.cancel_operation(op_ref(&op));
        "WatchOperation", "bob's operation", NotFound, ["not found"], alice [op] => watch(&mut c, &op);
        // Issue 8, item 11: an illegal state change is no outage.
        "CancelOperation", "an operation that ended", FailedPrecondition, ["already ended"], admin [op] => c.ops.cancel_operation(op_ref(&op));
        "GetOperation", "operation id \"no-such-op\"", NotFound, ["not found"], admin [] => c.ops.get_operation(op_ref("no-such-op"));
        "CancelOperation", "operation id \"../../x\"", NotFound, ["not found"], admin [] => c.ops.cancel_operation(op_ref("../../x"));
        "GetOperation", "operation id \"\"", NotFound, ["not found"], admin [] => c.ops.get_operation(op_ref(""));
        // Admin-only RPCs, as a user.
        "AddHost", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.hosts.add_host(host_req("advc-h9", "127.0.0.1:9"));
        "RemoveHost", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [host] => c.hosts.remove_host(pb::HostRef { name: host });
        "SetHostEnabled", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [host] => c.hosts.set_host_enabled(pb::SetHostEnabledRequest { name: host, enabled: false });
        "CreateBase", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [host] => c.vms.create_base(new_base(spec("advc-mine"), &host));
        "RemoveBase", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.remove_base(pb::BaseRef { name: base });
        "SyncBase", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base, host] => c.vms.sync_base(on_host(&base, &host));
        "RemoveBaseFromHost", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base, host] => c.vms.remove_base_from_host(on_host(&base, &host));
        "CreateVm", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.vms.create_vm(new_vm(spec("advc-own"), ""));
        "CreateUser", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.users.create_user(user_req("mallory", "admin"));
        "CreateToken", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.users.create_token(pb::CreateTokenRequest { user: "bob".into(), expires_in_seconds: 0 });
        "UpdateUser", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.users.update_user(pb::UpdateUserRequest { name: "alice".into(), role: "admin".into(), ..Default::default() });
        "RemoveUser", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.users.remove_user(pb::RemoveUserRequest { name: "bob".into(), remove_vms: true });
        "ListTokens", "a user asking for another user's tokens", PermissionDenied, ["admin"], alice [] => c.users.list_tokens(pb::ListTokensRequest { user: "bob".into() });
        // Users and tokens an admin gets wrong.
        "RemoveUser", "the caller itself", FailedPrecondition, ["yourself"], admin [] => c.users.remove_user(pb::RemoveUserRequest { name: "admin".into(), remove_vms: true });
        "RemoveUser", "a user who owns VMs", FailedPrecondition, ["owns", "--remove-vms"], admin [] => c.users.remove_user(pb::RemoveUserRequest { name: "bob".into(), remove_vms: false });
        "UpdateUser", "the last admin made a user", FailedPrecondition, ["last admin"], admin [] => c.users.update_user(pb::UpdateUserRequest { name: "admin".into(), role: "user".into(), ..Default::default() });
        "UpdateUser", "role 'root'", InvalidArgument, ["role"], admin [] => c.users.update_user(pb::UpdateUserRequest { name: "bob".into(), role: "root".into(), ..Default::default() });
        "UpdateUser", "an attribute with a newline", InvalidArgument, ["control characters"], admin [] => c.users.update_user(pb::UpdateUserRequest { name: "bob".into(), attributes: [("k".into(), "a\nb".into())].into(), ..Default::default() });
        "CreateToken", "a token for ten years", InvalidArgument, ["at most"], admin [] => c.users.create_token(pb::CreateTokenRequest { user: "bob".into(), expires_in_seconds: 10 * 366 * 86_400 });
        "RevokeToken", "a malformed id", InvalidArgument, ["invalid token id"], alice [] => c.users.revoke_token(pb::RevokeTokenRequest { id: "../x".into() });
        "RevokeToken", "an unknown id", NotFound, ["not found"], admin [] => c.users.revoke_token(pb::RevokeTokenRequest { id: "000000000000".into() });
        "ListUsers", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [] => c.users.list_users(pb::ListUsersRequest::default());
        "ExposeVmPort(host port)", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [vm] => c.access.expose_vm_port(expose(&vm, 80, 20022));
        "SetBasePublic", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.set_base_public(pb::SetBasePublicRequest { base, public: false });
        "SetBasePool", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.set_base_pool(pb::SetBasePoolRequest { base, clones: 2, start: 1 });
        "GetBasePool", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.get_base_pool(pb::BaseRef { name: base });
        "SetBaseTimeouts", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.set_base_timeouts(pb::BaseTimeouts { base, run_seconds: 0, idle_seconds: 0, idle_hibernate: false });
        "GetBaseTimeouts", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.get_base_timeouts(pb::BaseRef { name: base });
        "SetBaseDisplay", "a user opening their display to any address", PermissionDenied, ["admin"], alice [base] => c.vms.set_base_display(pb::BaseDisplay { base, restrict_to_client: false });
        "GetBaseDisplay", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.get_base_display(pb::BaseRef { name: base });
        "SetBasePostLoad", "a user running commands in every clone", PermissionDenied, ["admin"], alice [base] => c.guest.set_base_post_load(pb::BasePostLoad { base, commands: vec![pb::GuestCommand { path: "true".into(), ..Default::default() }] });
        "GetBasePostLoad", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.guest.get_base_post_load(pb::BaseRef { name: base });
        "SetBasePostLoad", "an empty program", InvalidArgument, ["program"], admin [base] => c.guest.set_base_post_load(pb::BasePostLoad { base, commands: vec![pb::GuestCommand::default()] });
        "SetBasePostLoad", "33 commands", InvalidArgument, ["at most 32"], admin [base] => c.guest.set_base_post_load(pb::BasePostLoad { base, commands: vec![pb::GuestCommand { path: "true".into(), ..Default::default() }; 33] });
        "SetBasePostLoad", "a time limit of u32::MAX s", InvalidArgument, ["maximum"], admin [base] => c.guest.set_base_post_load(pb::BasePostLoad { base, commands: vec![pb::GuestCommand { path: "true".into(), timeout_seconds: u32::MAX, ..Default::default() }] });
        "ExecVm", "a time limit of u32::MAX s", InvalidArgument, ["maximum"], alice [vm] => c.guest.exec_vm(pb::GuestExecRequest { name: vm, path: "true".into(), timeout_seconds: u32::MAX, ..Default::default() });
        "ExecVm", "no program", InvalidArgument, ["program"], alice [vm] => c.guest.exec_vm(pb::GuestExecRequest { name: vm, ..Default::default() });
        "ExecVm", "an environment entry '=x'", InvalidArgument, ["NAME=VALUE"], alice [vm] => c.guest.exec_vm(pb::GuestExecRequest { name: vm, path: "true".into(), env: vec!["=x".into()], ..Default::default() });
        "ReadVmFile", "a relative path", InvalidArgument, ["absolute"], alice [vm] => c.guest.read_vm_file(pb::GuestFileRef { name: vm, path: "etc/shadow".into() });
        "WriteVmFile", "a path with '..' but relative", InvalidArgument, ["absolute"], alice [vm] => c.guest.write_vm_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: Some(pb::GuestFileRef { name: vm, path: "../x".into() }), data: vec![] }]));
        "WriteVmFile", "no file named", InvalidArgument, ["name the file"], alice [vm] => { let _ = &vm; c.guest.write_vm_file(tokio_stream::iter(vec![pb::GuestFileWrite { file: None, data: b"x".to_vec() }])) };
        "SetVmRunTimeout", "a student lifting their own limit", PermissionDenied, ["admin"], alice [vm] => c.vms.set_vm_run_timeout(pb::SetVmRunTimeoutRequest { name: vm, run_seconds: 0 });
        // Timeouts an admin gets wrong.
        "SetBaseTimeouts", "a run timeout of 5 s", InvalidArgument, ["run timeout of 5 s is out of range"], admin [base] => c.vms.set_base_timeouts(pb::BaseTimeouts { base, run_seconds: 5, idle_seconds: 0, idle_hibernate: false });
        "SetBaseTimeouts", "u64::MAX idle seconds", InvalidArgument, ["idle timeout", "out of range"], admin [base] => c.vms.set_base_timeouts(pb::BaseTimeouts { base, run_seconds: 0, idle_seconds: u64::MAX, idle_hibernate: true });
        "SetVmRunTimeout", "u64::MAX seconds", InvalidArgument, ["out of range"], admin [vm] => c.vms.set_vm_run_timeout(pb::SetVmRunTimeoutRequest { name: vm, run_seconds: u64::MAX });
        // Pools an admin gets wrong, and names kept for pool clones.
        "SetBasePool", "1001 clones", InvalidArgument, ["at most 1000"], admin [base] => c.vms.set_base_pool(pb::SetBasePoolRequest { base, clones: 1001, start: 0 });
        "SetBasePool", "more started than kept", InvalidArgument, ["cannot start more"], admin [base] => c.vms.set_base_pool(pb::SetBasePoolRequest { base, clones: 2, start: 3 });
        "SetBasePool", "u32::MAX clones", InvalidArgument, ["at most 1000"], admin [base] => c.vms.set_base_pool(pb::SetBasePoolRequest { base, clones: u32::MAX, start: u32::MAX });
        "CloneVm", "a name kept for pool clones", InvalidArgument, ["kept for pool clones"], alice [base] => c.vms.clone_vm(clone_req(&base, "pool-mine"));
        "AddAccessRule", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.add_access_rule(add_rule(&base, rule("course", "*"), 1));
        "RemoveAccessRule", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.remove_access_rule(pb::RemoveAccessRuleRequest { base, position: 1 });
        "GetBaseAccess(user)", "a user asking for another user", PermissionDenied, ["admin"], alice [base] => c.vms.get_base_access(pb::BaseAccessRequest { base, user: "bob".into() });
        // Rules an admin gets wrong.
        "AddAccessRule", "an attribute with a space", InvalidArgument, ["invalid attribute"], admin [base] => c.vms.add_access_rule(add_rule(&base, rule("a b", "x"), 0));
        "AddAccessRule", "an empty value", InvalidArgument, ["needs a value"], admin [base] => c.vms.add_access_rule(add_rule(&base, rule("course", ""), 0));
        "AddAccessRule", "a value with a newline", InvalidArgument, ["control characters"], admin [base] => c.vms.add_access_rule(add_rule(&base, rule("course", "a\nb"), 0));
        "AddAccessRule", "position 5 of 0 rules", InvalidArgument, ["past the end"], admin [base] => c.vms.add_access_rule(add_rule(&base, rule("course", "math"), 5));
        "AddAccessRule", "no rule", InvalidArgument, ["rule is required"], admin [base] => c.vms.add_access_rule(add_rule(&base, None, 0));
        "RemoveAccessRule", "position 0", InvalidArgument, ["no rule 0"], admin [base] => c.vms.remove_access_rule(pb::RemoveAccessRuleRequest { base, position: 0 });
        "RemoveAccessRule", "a rule the base does not have", InvalidArgument, ["no rule 1"], admin [base] => c.vms.remove_access_rule(pb::RemoveAccessRuleRequest { base, position: 1 });
        // No valid token.
        "ListVms", "a made-up token", Unauthenticated, ["token"], nobody [] => c.vms.list_vms(pb::ListVmsRequest::default());
        "WatchEvents", "a made-up token", Unauthenticated, ["token"], nobody [] => first_event(&mut c, 0);
        "WatchEvents", "a position beyond the newest event", InvalidArgument, ["no event 18446744073709551615 yet"], alice [] => first_event(&mut c, u64::MAX);
        "CreateUser", "an existing user's name", AlreadyExists, ["user alice already exists"], admin [] => c.users.create_user(user_req("alice", "admin"));
        "CreateUser", "role 'root'", InvalidArgument, ["role"], admin [] => c.users.create_user(user_req("carol", "root"));
        "CreateUser", "an attribute with a newline", InvalidArgument, ["label"], admin [] => c.users.create_user(pb::CreateUserRequest { attributes: [("course".into(), "a\nb".into())].into(), ..user_req("carol", "user") });
        // Issue 8, item 5: host registration.
        "AddHost", "the same name again", AlreadyExists, ["already exists"], admin [host] => c.hosts.add_host(host_req(&host, "127.0.0.1:2"));
        "AddHost", "an address already registered", AlreadyExists, ["already exists", "host"], admin [addr] => c.hosts.add_host(host_req("advc-h2", &addr));
        "AddHost", "a URL of an address already registered", AlreadyExists, ["already exists", "host"], admin [url] => c.hosts.add_host(host_req("advc-h3", &url));
        "RemoveHost", "a host with VMs", FailedPrecondition, ["still has"], admin [host] => c.hosts.remove_host(pb::HostRef { name: host });
        "RemoveBase", "a base with clones", FailedPrecondition, ["clone"], admin [base] => c.vms.remove_base(pb::BaseRef { name: base });
        "CreateVm", "a base's name", AlreadyExists, ["already exists"], admin [base, host] => c.vms.create_vm(new_vm(spec(&base), &host));
        "CreateBase", "a VM's name", AlreadyExists, ["already exists"], admin [vm, host] => c.vms.create_base(new_base(spec(&vm), &host));
    }
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
        crate::cases! { out, C, |c|;
            "AddHost", input, InvalidArgument, [says], admin [] => c.hosts.add_host(host_req("advc-h4", address));
        }
    }
    out
}

/// Numbers and values the agent would refuse, refused before an operation exists
/// (issue 8, item 7).
fn number_cases(w: &CoordWorld) -> Vec<Case<C>> {
    let mut out: Vec<Case<C>> = Vec::new();
    let CoordWorld {
        base,
        host,
        alice_vm: vm,
        ..
    } = w.clone();
    let edited = |edit: fn(&mut pb::DomainSpec)| {
        let mut s = spec("advc-numvm");
        edit(&mut s);
        s
    };
    let too_large = edited(|s| s.disks[0].create_size_bytes = u64::MAX);
    let rtl: Labels = [("k".to_string(), "\u{202E}x".to_string())].into();
    let long_key: Labels = [("k".repeat(300), "v".to_string())].into();
    let specs = [
        (
            "a disk named ../x",
            "'/'",
            edited(|s| s.disks[0].volume = "../x".into()),
        ),
        ("a disk of u64::MAX bytes", "too large", too_large.clone()),
        ("memory 1 MiB", "out of range", edited(|s| s.memory_mib = 1)),
        (
            "100000 vCPUs",
            "out of range",
            edited(|s| s.vcpus = 100_000),
        ),
        (
            "a label with a newline",
            "control characters",
            edited(|s| {
                s.labels.insert("k".into(), "a\nb".into());
            }),
        ),
        (
            "a multicast MAC",
            "multicast",
            edited(|s| {
                s.nics = vec![pb::NicSpec {
                    mac: "01:00:5e:00:00:01".into(),
                    ..Default::default()
                }]
            }),
        ),
        (
            "no spec's disks twice",
            "given twice",
            edited(|s| s.disks.push(s.disks[0].clone())),
        ),
    ];
    for (input, says, s) in specs {
        crate::cases! { out, C, |c|;
            "CreateVm", input, InvalidArgument, [says], admin [s, host] => c.vms.create_vm(new_vm(s, &host));
        }
    }
    crate::cases! { out, C, |c|;
        "CreateBase", "a disk of u64::MAX bytes", InvalidArgument, ["too large"], admin [too_large, host] => c.vms.create_base(new_base(too_large, &host));
        "CloneVm", "a label with a direction override", InvalidArgument, ["control characters"], alice [base, rtl] => c.vms.clone_vm(pb::CloneVmRequest { labels: rtl, ..clone_req(&base, "advc-numclone") });
        "CloneVm", "a 300-character label key", InvalidArgument, ["keys are 1-63"], alice [base, long_key] => c.vms.clone_vm(pb::CloneVmRequest { labels: long_key, ..clone_req(&base, "advc-numclone") });
        "RevertVmSnapshot", "an unknown snapshot", NotFound, ["snap-none"], alice [vm] => c.snapshots.revert_vm_snapshot(snap::<pb::RevertSnapshotRequest>(vm, "snap-none"));
        "DeleteVmSnapshot", "an unknown snapshot", NotFound, ["snap-none"], alice [vm] => c.snapshots.delete_vm_snapshot(snap::<pb::DeleteSnapshotRequest>(vm, "snap-none"));
        "CreateVmSnapshot", "a 5000-character description", InvalidArgument, ["description"], alice [vm] => c.snapshots.create_vm_snapshot(pb::CreateSnapshotRequest { description: "x".repeat(5000), ..snap(vm, "s2") });
        "RevertVmSnapshot", "mode 9", InvalidArgument, ["mode"], alice [vm] => c.snapshots.revert_vm_snapshot(pb::RevertSnapshotRequest { mode: 9, ..snap(vm, "s1") });
        "ExposeVmPort", "guest port 0", InvalidArgument, ["out of range"], alice [vm] => c.access.expose_vm_port(expose(&vm, 0, 0));
        "ExposeVmPort", "guest port 70000", InvalidArgument, ["out of range"], alice [vm] => c.access.expose_vm_port(expose(&vm, 70000, 0));
        "UnprepareBase", "a user calling an admin RPC", PermissionDenied, ["admin"], alice [base] => c.vms.unprepare_base(pb::BaseRef { name: base });
        "UnprepareBase", "a base with clones", FailedPrecondition, ["clone"], admin [base] => c.vms.unprepare_base(pb::BaseRef { name: base });
        "RebaseVm", "onto a base named ../x", InvalidArgument, ["base"], alice [vm] => c.vms.rebase_vm(pb::RebaseVmRequest { name: vm, base: "../x".into() });
        "RebaseVm", "onto its own base", FailedPrecondition, ["already a clone"], alice [vm, base] => c.vms.rebase_vm(pb::RebaseVmRequest { name: vm, base });
        "RebaseVm", "onto an unknown base", NotFound, ["advc-ghost"], alice [vm] => c.vms.rebase_vm(pb::RebaseVmRequest { name: vm, base: "advc-ghost".into() });
        "AddVmDisk", "a system disk", InvalidArgument, ["swap or data"], alice [vm] => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: vm, role: pb::VolumeRole::System as i32, size_bytes: 16 << 20, format: 0 });
        "AddVmDisk", "role 99", InvalidArgument, ["swap or data"], alice [vm] => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: vm, role: 99, size_bytes: 16 << 20, format: 0 });
        "AddVmDisk", "1 byte", InvalidArgument, ["out of range"], alice [vm] => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: vm, role: pb::VolumeRole::Data as i32, size_bytes: 1, format: 0 });
        "AddVmDisk", "u64::MAX bytes", InvalidArgument, ["out of range"], alice [vm] => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: vm, role: pb::VolumeRole::Data as i32, size_bytes: u64::MAX, format: 0 });
        "AddVmDisk", "format 7", InvalidArgument, ["qcow2 or raw"], alice [vm] => c.vms.add_vm_disk(pb::AddVmDiskRequest { name: vm, role: pb::VolumeRole::Data as i32, size_bytes: 16 << 20, format: 7 });
        "SnapshotVmDisk", "action 9", InvalidArgument, ["create, revert or delete"], alice [vm] => c.vms.snapshot_vm_disk(pb::SnapshotVmDiskRequest { name: vm, volume: "x.qcow2".into(), snapshot: "s1".into(), action: 9 });
        "SnapshotVmDisk", "no action", InvalidArgument, ["create, revert or delete"], alice [vm] => c.vms.snapshot_vm_disk(pb::SnapshotVmDiskRequest { name: vm, volume: "x.qcow2".into(), snapshot: "s1".into(), action: 0 });
        "SnapshotVmDisk", "a snapshot named '../s'", InvalidArgument, ["snapshot"], alice [vm] => c.vms.snapshot_vm_disk(pb::SnapshotVmDiskRequest { name: vm, volume: "x.qcow2".into(), snapshot: "../s".into(), action: 1 });
        "CopyVmDisk", "a disk copied to its own VM", InvalidArgument, ["not to itself"], alice [vm] => c.vms.copy_vm_disk(pb::CopyVmDiskRequest { name: vm.clone(), volume: "x.qcow2".into(), to: vm });
        "CopyVmDisk", "a volume named '../x'", InvalidArgument, ["volume"], alice [vm] => c.vms.copy_vm_disk(pb::CopyVmDiskRequest { name: vm, volume: "../x".into(), to: "advc-other".into() });
        "ResizeVmDisk", "u64::MAX bytes", InvalidArgument, ["out of range"], alice [vm] => c.vms.resize_vm_disk(pb::ResizeVmDiskRequest { name: vm, volume: "x.qcow2".into(), size_bytes: u64::MAX });
        "ResizeVmDisk", "a volume named '../x'", InvalidArgument, ["volume"], alice [vm] => c.vms.resize_vm_disk(pb::ResizeVmDiskRequest { name: vm, volume: "../x".into(), size_bytes: 32 << 20 });
        "DetachVmDisk", "a path as the volume", InvalidArgument, ["volume"], alice [vm] => c.vms.detach_vm_disk(pb::RemoveVmDiskRequest { name: vm, volume: "../x".into() });
        "AttachVmDisk", "a path as the volume", InvalidArgument, ["volume"], alice [vm] => c.vms.attach_vm_disk(pb::RemoveVmDiskRequest { name: vm, volume: "../x".into() });
        "RemoveVmDisk", "a path as the volume", InvalidArgument, ["volume"], alice [vm] => c.vms.remove_vm_disk(pb::RemoveVmDiskRequest { name: vm, volume: "../../etc/passwd".into() });
        "SetVmResources", "nothing to change", InvalidArgument, ["memory or vCPUs"], alice [vm] => c.vms.set_vm_resources(pb::SetVmResourcesRequest { name: vm, memory_mib: 0, vcpus: 0 });
        "SetVmResources", "u64::MAX MiB", InvalidArgument, ["out of range"], alice [vm] => c.vms.set_vm_resources(pb::SetVmResourcesRequest { name: vm, memory_mib: u64::MAX, vcpus: 0 });
        "SetVmResources", "100000 vCPUs", InvalidArgument, ["out of range"], alice [vm] => c.vms.set_vm_resources(pb::SetVmResourcesRequest { name: vm, memory_mib: 0, vcpus: 100_000 });
        "CloneVm", "memory 1 MiB", InvalidArgument, ["out of range"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { memory_mib: 1, ..clone_req(&base, "advc-numclone") });
        "CloneVm", "100000 vCPUs", InvalidArgument, ["out of range"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { vcpus: 100_000, ..clone_req(&base, "advc-numclone") });
        "CloneVm", "data volume mode 9", InvalidArgument, ["data volume mode"], alice [base] => c.vms.clone_vm(pb::CloneVmRequest { data_volumes: 9, ..clone_req(&base, "advc-numclone") });
    }
    out
}
