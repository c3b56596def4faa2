//! Dry runs, as cloud APIs offer them: any RPC called with the `corral-dry-run: 1` header
//! validates, authorizes and places exactly as the real call, answers with what would happen,
//! and changes nothing. Three guards make "nothing" true whatever the RPC does:
//!
//! - every store call of a dry RPC runs in its own savepoint that is rolled back (the store's
//!   own checks, such as a name already taken, still answer);
//! - an operation is not stored nor run: `Operations::submit` answers with what it would run
//!   (kind, VM, host chosen, request);
//! - the doors to the agents only read: a call that would change a host is refused with a
//!   clear message.
//!
//! RPCs whose effect is not in the store, an operation or an agent (the coordinator's own
//! memory: hosts being connected, cancellations, tokens) are refused in a dry run (`refused`).

use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use tonic::async_trait;

use crate::door::{AgentDoor, Events, Outgoing, Power};
use crate::error::{CoordError, Result};

/// The request header that asks for a dry run.
pub const HEADER: &str = corral_client::DRY_RUN_HEADER;

tokio::task_local! {
    static DRY: bool;
}

/// Whether the work running now is a dry run.
pub fn now() -> bool {
    DRY.try_with(|d| *d).unwrap_or(false)
}

/// RPCs that change only the coordinator's memory or streams: no dry run.
const REFUSED: &[(&str, &str)] = &[
    ("AddHost", "it connects to the agent"),
    ("RemoveHost", "it disconnects the agent"),
    ("SetHostEnabled", "it changes the fleet's placement at once"),
    ("CancelOperation", "it cancels running work"),
    ("CreateToken", "a token that is not stored is of no use"),
    ("RevokeToken", "it ends sessions at once"),
    ("ExecVm", "it runs a program in the guest"),
    ("WriteVmFile", "it writes in the guest"),
];

/// Whether the request asks for a dry run ("1" or "true"); refused for RPCs without one.
pub fn asked<T>(rpc: &str, req: &tonic::Request<T>) -> std::result::Result<bool, tonic::Status> {
    let Some(v) = req.metadata().get(HEADER) else {
        return Ok(false);
    };
    let on = match v.to_str().unwrap_or("") {
        "1" | "true" => true,
        "0" | "false" | "" => false,
        other => {
            return Err(tonic::Status::invalid_argument(format!(
                "{HEADER} is {other:?}: 1 or true for a dry run, 0 or false for none"
            )))
        }
    };
    if on {
        if let Some((_, why)) = REFUSED.iter().find(|(r, _)| *r == rpc) {
            return Err(tonic::Status::failed_precondition(format!(
                "{rpc} has no dry run ({why})"
            )));
        }
    }
    Ok(on)
}

/// Runs `f` as a dry run when `dry`.
pub async fn scope<F: std::future::Future>(dry: bool, f: F) -> F::Output {
    if dry {
        DRY.scope(true, f).await
    } else {
        f.await
    }
}

/// What a dry run answers instead of an operation: no id (none exists), queued, and a result
/// that says what would run and with what (the host chosen, the VM, the request).
pub fn would_run(mut op: crate::store::OpRecord) -> crate::store::OpRecord {
    op.result = Some(serde_json::json!({
        "dry_run": true,
        "would_run": op.kind,
        "vm": op.vm,
        "host": op.host,
        "request": op.request,
    }));
    op.id = String::new();
    op
}

/// The refusal of a door call that would change a host.
fn would(host: &str, what: &str) -> CoordError {
    CoordError::FailedPrecondition(format!(
        "dry run: this would {what} on host {host}; nothing was changed (the dry run cannot \
         preview beyond this step)"
    ))
}

/// A door that reads and refuses every change.
pub struct ReadOnly(pub Arc<dyn AgentDoor>);

#[async_trait]
impl AgentDoor for ReadOnly {
    fn host(&self) -> &str {
        self.0.host()
    }

    async fn get_domain(&self, name: &str) -> Result<pb::Domain> {
        self.0.get_domain(name).await
    }
    async fn display(&self, name: &str) -> Result<pb::DisplayInfo> {
        self.0.display(name).await
    }
    async fn screenshot(&self, name: &str) -> Result<pb::Screenshot> {
        self.0.screenshot(name).await
    }
    async fn volume_info(&self, name: &str) -> Result<pb::VolumeInfo> {
        self.0.volume_info(name).await
    }
    async fn list_clones(&self, base: &str) -> Result<Vec<pb::Domain>> {
        self.0.list_clones(base).await
    }
    async fn export_base(&self, name: &str) -> Result<pb::BaseExport> {
        self.0.export_base(name).await
    }
    async fn export_domain(&self, name: &str) -> Result<pb::BaseExport> {
        self.0.export_domain(name).await
    }
    async fn export_for_migration(&self, name: &str) -> Result<pb::BaseExport> {
        self.0.export_for_migration(name).await
    }
    async fn get_snapshot(&self, domain: &str, name: &str) -> Result<pb::Snapshot> {
        self.0.get_snapshot(domain, name).await
    }
    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        self.0.list_snapshots(req).await
    }
    async fn list_children(
        &self,
        req: pb::ListChildrenRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        self.0.list_children(req).await
    }
    async fn list_ports(&self, domain: &str) -> Result<Vec<pb::ExposedPort>> {
        self.0.list_ports(domain).await
    }
    async fn guest_status(&self, name: &str) -> Result<pb::GuestStatus> {
        self.0.guest_status(name).await
    }
    async fn read_guest_file(&self, req: pb::GuestFileRef) -> Result<Events<pb::FileChunk>> {
        self.0.read_guest_file(req).await
    }

    async fn define(&self, spec: pb::DomainSpec) -> Result<pb::Domain> {
        let _ = (spec,);
        Err(would(self.0.host(), "define a domain"))
    }
    async fn remove_domain(&self, name: &str) -> Result<Vec<String>> {
        let _ = (name,);
        Err(would(self.0.host(), "remove a domain"))
    }
    async fn prepare_base(&self, name: &str) -> Result<pb::Base> {
        let _ = (name,);
        Err(would(self.0.host(), "prepare a base"))
    }
    async fn clone_base(&self, req: pb::CloneBaseRequest) -> Result<pb::Domain> {
        let _ = (req,);
        Err(would(self.0.host(), "make a clone"))
    }
    async fn restore_clone(&self, name: &str) -> Result<pb::Domain> {
        let _ = (name,);
        Err(would(self.0.host(), "restore a clone"))
    }
    async fn spinoff_clone(&self, name: &str) -> Result<pb::Domain> {
        let _ = (name,);
        Err(would(self.0.host(), "spin off a clone"))
    }
    async fn assign(&self, name: &str, owner: &str) -> Result<pb::Domain> {
        let _ = (name, owner);
        Err(would(self.0.host(), "give a domain to a new owner"))
    }
    async fn set_autostart(&self, name: &str, on: bool) -> Result<pb::Domain> {
        let _ = (name, on);
        Err(would(self.0.host(), "change autostart"))
    }
    async fn add_volume(&self, req: pb::AddVolumeRequest) -> Result<pb::Domain> {
        let _ = (req,);
        Err(would(self.0.host(), "add a volume"))
    }
    async fn rebase_clone(&self, name: &str, base: &str) -> Result<pb::Domain> {
        let _ = (name, base);
        Err(would(self.0.host(), "rebase a clone"))
    }
    async fn unprepare_base(&self, name: &str) -> Result<()> {
        let _ = (name,);
        Err(would(self.0.host(), "turn a base back into a VM"))
    }
    async fn remove_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let _ = (domain, volume);
        Err(would(self.0.host(), "remove a volume"))
    }
    async fn copy_domain_volume(&self, req: pb::CopyDomainVolumeRequest) -> Result<pb::VolumeInfo> {
        let _ = (req,);
        Err(would(self.0.host(), "copy a volume"))
    }
    async fn attach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let _ = (domain, volume);
        Err(would(self.0.host(), "attach a volume"))
    }
    async fn detach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let _ = (domain, volume);
        Err(would(self.0.host(), "detach a volume"))
    }
    async fn restore_volume(&self, req: pb::RestoreVolumeRequest) -> Result<pb::VolumeInfo> {
        let _ = (req,);
        Err(would(self.0.host(), "restore a volume"))
    }
    async fn snapshot_volume(&self, req: pb::SnapshotVolumeRequest) -> Result<pb::VolumeInfo> {
        let _ = (req,);
        Err(would(self.0.host(), "snapshot a volume"))
    }
    async fn capture_image(&self, req: pb::CaptureImageRequest) -> Result<pb::CapturedImage> {
        let _ = (req,);
        Err(would(self.0.host(), "capture an image"))
    }
    async fn define_from_image(&self, req: pb::DefineFromImageRequest) -> Result<pb::Domain> {
        let _ = (req,);
        Err(would(self.0.host(), "define a domain from an image"))
    }
    async fn resize_domain_volume(
        &self,
        req: pb::ResizeDomainVolumeRequest,
    ) -> Result<pb::VolumeInfo> {
        let _ = (req,);
        Err(would(self.0.host(), "resize a volume"))
    }
    async fn set_resources(&self, name: &str, memory_mib: u64, vcpus: u32) -> Result<pb::Domain> {
        let _ = (name, memory_mib, vcpus);
        Err(would(self.0.host(), "change memory or vCPUs"))
    }
    async fn import_base(&self, definition_xml: String) -> Result<pb::Base> {
        let _ = (definition_xml,);
        Err(would(self.0.host(), "import a base"))
    }
    async fn import_domain(&self, definition_xml: String) -> Result<pb::Domain> {
        let _ = (definition_xml,);
        Err(would(self.0.host(), "import a domain"))
    }
    async fn prepare_migration(&self, req: pb::ImportBaseRequest) -> Result<pb::MigrationTarget> {
        let _ = (req,);
        Err(would(self.0.host(), "prepare a migration"))
    }
    async fn migrate(&self, req: pb::MigrateDomainRequest) -> Result<()> {
        let _ = (req,);
        Err(would(self.0.host(), "migrate a domain"))
    }
    async fn finish_migration(&self, name: &str) -> Result<pb::Domain> {
        let _ = (name,);
        Err(would(self.0.host(), "finish a migration"))
    }
    async fn delete_volume(&self, name: &str) -> Result<()> {
        let _ = (name,);
        Err(would(self.0.host(), "delete a volume"))
    }
    async fn create_snapshot(&self, req: pb::CreateSnapshotRequest) -> Result<pb::Snapshot> {
        let _ = (req,);
        Err(would(self.0.host(), "take a snapshot"))
    }
    async fn revert_snapshot(&self, req: pb::RevertSnapshotRequest) -> Result<pb::Snapshot> {
        let _ = (req,);
        Err(would(self.0.host(), "revert to a snapshot"))
    }
    async fn delete_snapshot(&self, req: pb::DeleteSnapshotRequest) -> Result<Vec<String>> {
        let _ = (req,);
        Err(would(self.0.host(), "delete a snapshot"))
    }
    async fn expose_port(&self, req: pb::ExposePortRequest) -> Result<pb::ExposedPort> {
        let _ = (req,);
        Err(would(self.0.host(), "expose a port"))
    }
    async fn remove_port(&self, req: pb::RemovePortRequest) -> Result<pb::RemovePortResponse> {
        let _ = (req,);
        Err(would(self.0.host(), "remove a port"))
    }
    async fn remove_all_ports(&self, domain: &str) -> Result<pb::RemovePortResponse> {
        let _ = (domain,);
        Err(would(self.0.host(), "remove ports"))
    }
    async fn restrict_display(&self, req: pb::RestrictDisplayRequest) -> Result<()> {
        let _ = (req,);
        Err(would(self.0.host(), "restrict a display"))
    }
    async fn guest_exec(&self, req: pb::GuestExecRequest) -> Result<Events<pb::GuestExecEvent>> {
        let _ = (req,);
        Err(would(self.0.host(), "run a program in a guest"))
    }
    async fn write_guest_file(
        &self,
        chunks: Outgoing<pb::GuestFileWrite>,
    ) -> Result<pb::GuestFileWritten> {
        let _ = (chunks,);
        Err(would(self.0.host(), "write a file in a guest"))
    }

    async fn power(&self, name: &str, action: Power) -> Result<pb::Domain> {
        let _ = (name, action);
        Err(would(self.0.host(), "change a domain's power state"))
    }

    async fn send_volume(
        &self,
        req: pb::SendVolumeRequest,
        stall: Duration,
        progress: &(dyn for<'p> Fn(&'p pb::SyncProgress) + Send + Sync),
    ) -> Result<pb::SyncProgress> {
        let _ = (req, stall, progress);
        Err(would(self.0.host(), "send a volume"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Kit;
    use crate::orders::CloneOrder;

    fn order(name: &str) -> CloneOrder {
        CloneOrder {
            base: "web".into(),
            name: name.into(),
            start: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_dry_run_places_and_checks_as_the_real_call_and_changes_nothing() {
        let kit = Kit::new(2).await;
        kit.base("web", None, &["h1"]).await;
        let op = kit.coord.clone_vm(&kit.alice, order("mine")).await.unwrap();
        kit.end(&op.id).await;
        let calls = kit.calls().len();
        let ops = kit.coord.ops.list(false).await.unwrap().len();

        let c = &kit.coord;
        let (would, taken, plan, public, removed) = scope(true, async {
            (
                c.clone_vm(&kit.alice, order("other")).await,
                c.clone_vm(&kit.alice, order("mine")).await,
                c.create_plan(
                    &kit.admin,
                    crate::plans::Plan {
                        name: "p1".into(),
                        memory_mib: 256,
                        vcpus: 1,
                        disk_bytes: 0,
                    },
                )
                .await,
                c.set_base_public(&kit.admin, "web", false).await,
                c.vm_action(&kit.alice, "mine", crate::lifecycle::Action::Remove)
                    .await,
            )
        })
        .await;
        let would = would.unwrap();
        assert_eq!(would.id, "");
        assert_eq!(would.host.as_deref(), Some("h1"));
        let r = would.result.unwrap();
        assert_eq!(r["dry_run"], true, "{r}");
        assert_eq!(r["would_run"], "clone", "{r}");
        let e = taken.unwrap_err();
        assert!(matches!(e, CoordError::AlreadyExists(_)), "{e}");
        plan.unwrap();
        public.unwrap();
        assert_eq!(removed.unwrap().kind, "remove");

        // Nothing stored, nothing run, no agent asked to change anything.
        assert_eq!(kit.calls().len(), calls, "{:?}", kit.calls());
        assert_eq!(kit.coord.ops.list(false).await.unwrap().len(), ops);
        assert!(kit.coord.plans().await.unwrap().is_empty());
        assert!(kit.coord.vm_for(&kit.alice, "other").await.is_err());
        assert!(kit.coord.vm_for(&kit.alice, "mine").await.is_ok());
        let open = kit.coord.may_clone(&kit.alice, "web").await;
        assert!(open.is_ok(), "the base stayed public: {open:?}");
    }

    #[tokio::test]
    async fn a_dry_clone_says_when_the_base_would_be_synced_first() {
        let kit = Kit::new(2).await;
        kit.base("web", None, &["h1"]).await;
        kit.coord.hosts.set_enabled("h1", false).await.unwrap();
        let calls = kit.calls();
        let would = scope(true, kit.coord.clone_vm(&kit.alice, order("far")))
            .await
            .unwrap();
        assert_eq!(would.host.as_deref(), Some("h2"));
        let r = would.result.unwrap();
        assert_eq!(r["request"]["sync_base_first"], true, "{r}");
        assert!(r["request"]["sync_bytes"].is_u64(), "{r}");
        // Only reads reached the agents.
        let new: Vec<String> = kit.calls().into_iter().skip(calls.len()).collect();
        assert!(
            new.iter()
                .all(|c| c.contains("export_base") || c.contains("volume_info")),
            "{new:?}"
        );
        assert!(kit.coord.vm_for(&kit.alice, "far").await.is_err());
    }

    #[tokio::test]
    async fn doors_only_read_in_a_dry_run() {
        let kit = Kit::new(1).await;
        kit.base("web", None, &["h1"]).await;
        let (read, write) = scope(true, async {
            let d = kit.coord.hosts.door("h1").unwrap();
            (d.get_domain("web").await, d.remove_domain("web").await)
        })
        .await;
        read.unwrap();
        let e = write.unwrap_err().to_string();
        assert!(
            e.contains("dry run: this would remove a domain on host h1"),
            "{e}"
        );
        assert!(kit.agent("h1").has_domain("web"));
    }
}
