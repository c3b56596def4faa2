//! The one door from the coordinator to an agent: every call the coordinator makes, typed,
//! with one policy for errors (the host's name in the message, the agent's code kept, an
//! agent that cannot be reached or does not answer is Unavailable), time limits on quick
//! calls (long ones belong to cancellable operations, and dropping the call cancels it on the
//! agent), and "already gone" as success for removals.
//!
//! [`GrpcDoor`] is the real one; the fleet (`Hosts`) hands out a door per host that is up.
//! Tests put in-process fakes behind the same trait.

use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use corral_client::AgentClient;
use tonic::async_trait;

use crate::error::{CoordError, Result};
use crate::hosts::AGENT_QUICK_CALL;

/// Messages streamed from an agent, errors already mapped.
pub type Events<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T>> + Send>>;
/// Messages streamed to an agent.
pub type Outgoing<T> = std::pin::Pin<Box<dyn futures::Stream<Item = T> + Send>>;

/// A power action on a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    /// ACPI, then powered off after `timeout`.
    Shutdown {
        timeout: Duration,
    },
    PowerOff,
    Hibernate,
    /// Paused in memory (libvirt's suspend).
    Suspend,
    Resume,
    /// A hard reset of a running guest.
    Reset,
    /// The guest asked to reboot (ACPI).
    Reboot,
}

/// What the coordinator asks of one agent.
#[async_trait]
pub trait AgentDoor: Send + Sync {
    /// The host this door leads to (named in every error).
    fn host(&self) -> &str;

    async fn get_domain(&self, name: &str) -> Result<pb::Domain>;
    async fn define(&self, spec: pb::DomainSpec) -> Result<pb::Domain>;
    async fn power(&self, name: &str, action: Power) -> Result<pb::Domain>;
    /// Removes a domain and the volumes it owns; a domain already gone is success.
    async fn remove_domain(&self, name: &str) -> Result<Vec<String>>;
    async fn display(&self, name: &str) -> Result<pb::DisplayInfo>;
    async fn screenshot(&self, name: &str) -> Result<pb::Screenshot>;

    async fn prepare_base(&self, name: &str) -> Result<pb::Base>;
    async fn clone_base(&self, req: pb::CloneBaseRequest) -> Result<pb::Domain>;
    async fn restore_clone(&self, name: &str) -> Result<pb::Domain>;
    /// Makes a clone's volumes independent of its base (a plain domain after).
    async fn spinoff_clone(&self, name: &str) -> Result<pb::Domain>;
    /// Gives a domain to a new owner with a new display password (pool hand-outs).
    async fn assign(&self, name: &str, owner: &str) -> Result<pb::Domain>;
    async fn set_autostart(&self, name: &str, on: bool) -> Result<pb::Domain>;
    async fn add_volume(&self, req: pb::AddVolumeRequest) -> Result<pb::Domain>;
    async fn volume_info(&self, name: &str) -> Result<pb::VolumeInfo>;
    /// Moves a shut-off clone onto another base (its disks from the base made again).
    async fn rebase_clone(&self, name: &str, base: &str) -> Result<pb::Domain>;
    /// Turns a base without clones back into a plain domain (its base files go).
    async fn unprepare_base(&self, name: &str) -> Result<()>;
    async fn remove_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain>;
    /// A flattened copy of a shut-off domain's volume as a new volume nobody owns.
    async fn copy_domain_volume(&self, req: pb::CopyDomainVolumeRequest) -> Result<pb::VolumeInfo>;
    /// Attaches a volume nobody owns to a domain as a data disk (hot when it runs).
    async fn attach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain>;
    /// Detaches a swap or data volume (hot when it runs); it stays the domain's own.
    async fn detach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain>;
    /// Puts a free file (a restored backup) in place of a shut-off domain's own volume.
    async fn restore_volume(&self, req: pb::RestoreVolumeRequest) -> Result<pb::VolumeInfo>;
    /// An internal snapshot of a shut-off domain's volume: made, reverted to or deleted.
    async fn snapshot_volume(&self, req: pb::SnapshotVolumeRequest) -> Result<pb::VolumeInfo>;
    /// A shut-off domain's system volume flattened into a read-only image file.
    async fn capture_image(&self, req: pb::CaptureImageRequest) -> Result<pb::CapturedImage>;
    /// A shut-off domain defined from an image file on the host.
    async fn define_from_image(&self, req: pb::DefineFromImageRequest) -> Result<pb::Domain>;
    /// Grows a domain's swap or data volume (live when it runs).
    async fn resize_domain_volume(
        &self,
        req: pb::ResizeDomainVolumeRequest,
    ) -> Result<pb::VolumeInfo>;
    /// New memory (MiB) and vCPUs, 0 keeping a value; applied live where libvirt can.
    async fn set_resources(&self, name: &str, memory_mib: u64, vcpus: u32) -> Result<pb::Domain>;
    async fn list_clones(&self, base: &str) -> Result<Vec<pb::Domain>>;
    async fn export_base(&self, name: &str) -> Result<pb::BaseExport>;
    async fn import_base(&self, definition_xml: String) -> Result<pb::Base>;
    async fn export_domain(&self, name: &str) -> Result<pb::BaseExport>;
    async fn import_domain(&self, definition_xml: String) -> Result<pb::Domain>;
    async fn export_for_migration(&self, name: &str) -> Result<pb::BaseExport>;
    async fn prepare_migration(&self, req: pb::ImportBaseRequest) -> Result<pb::MigrationTarget>;
    /// Live migration to another host's libvirt; dropping the call aborts it.
    async fn migrate(&self, req: pb::MigrateDomainRequest) -> Result<()>;
    async fn finish_migration(&self, name: &str) -> Result<pb::Domain>;
    /// Deletes a volume; one already gone is success.
    async fn delete_volume(&self, name: &str) -> Result<()>;

    async fn create_snapshot(&self, req: pb::CreateSnapshotRequest) -> Result<pb::Snapshot>;
    async fn get_snapshot(&self, domain: &str, name: &str) -> Result<pb::Snapshot>;
    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse>;
    async fn list_children(
        &self,
        req: pb::ListChildrenRequest,
    ) -> Result<pb::ListSnapshotsResponse>;
    async fn revert_snapshot(&self, req: pb::RevertSnapshotRequest) -> Result<pb::Snapshot>;
    async fn delete_snapshot(&self, req: pb::DeleteSnapshotRequest) -> Result<Vec<String>>;

    /// Exposes a port, waiting up to the request's `wait_seconds` for a booting guest.
    async fn expose_port(&self, req: pb::ExposePortRequest) -> Result<pb::ExposedPort>;
    /// Exposed ports of one domain, or all when `domain` is empty.
    async fn list_ports(&self, domain: &str) -> Result<Vec<pb::ExposedPort>>;
    async fn remove_port(&self, req: pb::RemovePortRequest) -> Result<pb::RemovePortResponse>;
    async fn remove_all_ports(&self, domain: &str) -> Result<pb::RemovePortResponse>;
    async fn restrict_display(&self, req: pb::RestrictDisplayRequest) -> Result<()>;

    /// Whether a domain's guest agent answers, and the addresses it reports.
    async fn guest_status(&self, name: &str) -> Result<pb::GuestStatus>;
    /// Runs a program in a guest: its events until `exited`. Dropping the stream kills it.
    async fn guest_exec(&self, req: pb::GuestExecRequest) -> Result<Events<pb::GuestExecEvent>>;
    async fn read_guest_file(&self, req: pb::GuestFileRef) -> Result<Events<pb::FileChunk>>;
    /// The first message names the file.
    async fn write_guest_file(
        &self,
        chunks: Outgoing<pb::GuestFileWrite>,
    ) -> Result<pb::GuestFileWritten>;

    /// Has this agent send a volume to a peer; `progress` sees each report. Fails when no
    /// report comes for `stall`; dropping the call cancels the transfer on both agents.
    async fn send_volume(
        &self,
        req: pb::SendVolumeRequest,
        stall: Duration,
        progress: &(dyn for<'p> Fn(&'p pb::SyncProgress) + Send + Sync),
    ) -> Result<pb::SyncProgress>;
}

/// A door to an agent over gRPC.
#[derive(Clone)]
pub struct GrpcDoor {
    host: String,
    client: AgentClient,
}

impl GrpcDoor {
    pub fn open(host: &str, client: AgentClient) -> Arc<dyn AgentDoor> {
        Arc::new(Self {
            host: host.to_string(),
            client,
        })
    }

    fn err(&self, s: &tonic::Status) -> CoordError {
        CoordError::from_agent(&self.host, s)
    }

    /// A call that must answer within `limit`.
    async fn quick<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r.map(tonic::Response::into_inner).map_err(|s| self.err(&s)),
            Err(_) => Err(CoordError::Unavailable(format!(
                "host {} did not answer in time",
                self.host
            ))),
        }
    }

    /// A long call (part of a cancellable operation).
    async fn long<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(&s))
    }
}

fn dref(name: &str) -> pb::DomainRef {
    pb::DomainRef { name: name.into() }
}

/// NotFound counts as done.
fn absent_is_success<T: Default>(r: Result<T>) -> Result<T> {
    match r {
        Err(CoordError::Agent(tonic::Code::NotFound, _)) => Ok(T::default()),
        other => other,
    }
}

#[async_trait]
impl AgentDoor for GrpcDoor {
    fn host(&self) -> &str {
        &self.host
    }

    async fn get_domain(&self, name: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.domains.get_domain(dref(name)))
            .await
    }

    async fn define(&self, spec: pb::DomainSpec) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::DefineDomainRequest { spec: Some(spec) };
        self.long(c.domains.define_domain(req)).await
    }

    async fn power(&self, name: &str, action: Power) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        match action {
            Power::Start => self.long(c.domains.start_domain(dref(name))).await,
            Power::Shutdown { timeout } => {
                let req = pb::ShutdownDomainRequest {
                    name: name.into(),
                    timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
                };
                self.long(c.domains.shutdown_domain(req)).await
            }
            Power::PowerOff => self.long(c.domains.power_off_domain(dref(name))).await,
            Power::Hibernate => self.long(c.domains.hibernate_domain(dref(name))).await,
            Power::Suspend => self.long(c.domains.suspend_domain(dref(name))).await,
            Power::Resume => self.long(c.domains.resume_domain(dref(name))).await,
            Power::Reset => self.long(c.domains.reset_domain(dref(name))).await,
            Power::Reboot => self.long(c.domains.reboot_domain(dref(name))).await,
        }
    }

    async fn remove_domain(&self, name: &str) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        let req = pb::RemoveDomainRequest {
            name: name.into(),
            remove_volumes: true,
        };
        absent_is_success(
            self.long(c.domains.remove_domain(req))
                .await
                .map(|r| r.removed_volumes),
        )
    }

    async fn display(&self, name: &str) -> Result<pb::DisplayInfo> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.domains.get_display(dref(name)))
            .await
    }

    async fn screenshot(&self, name: &str) -> Result<pb::Screenshot> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL * 3, c.domains.get_screenshot(dref(name)))
            .await
    }

    async fn prepare_base(&self, name: &str) -> Result<pb::Base> {
        let mut c = self.client.clone();
        self.long(c.bases.prepare_base(dref(name))).await
    }

    async fn clone_base(&self, req: pb::CloneBaseRequest) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.clone_base(req)).await
    }

    async fn restore_clone(&self, name: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.restore_clone(dref(name))).await
    }

    async fn spinoff_clone(&self, name: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.spinoff_clone(dref(name))).await
    }

    async fn assign(&self, name: &str, owner: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::AssignDomainRequest {
            name: name.into(),
            owner: owner.into(),
        };
        self.quick(AGENT_QUICK_CALL, c.domains.assign_domain(req))
            .await
    }

    async fn add_volume(&self, req: pb::AddVolumeRequest) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.add_volume(req)).await
    }

    async fn volume_info(&self, name: &str) -> Result<pb::VolumeInfo> {
        let mut c = self.client.clone();
        let req = pb::VolumeRef { name: name.into() };
        self.quick(AGENT_QUICK_CALL, c.volumes.get_volume_info(req))
            .await
    }

    async fn rebase_clone(&self, name: &str, base: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::RebaseCloneRequest {
            name: name.into(),
            base: base.into(),
        };
        self.long(c.bases.rebase_clone(req)).await
    }

    async fn unprepare_base(&self, name: &str) -> Result<()> {
        let mut c = self.client.clone();
        self.long(c.bases.remove_base(dref(name))).await.map(|_| ())
    }

    async fn copy_domain_volume(&self, req: pb::CopyDomainVolumeRequest) -> Result<pb::VolumeInfo> {
        let mut c = self.client.clone();
        self.long(c.bases.copy_domain_volume(req)).await
    }

    async fn snapshot_volume(&self, req: pb::SnapshotVolumeRequest) -> Result<pb::VolumeInfo> {
        let mut c = self.client.clone();
        self.long(c.bases.snapshot_volume(req)).await
    }

    async fn capture_image(&self, req: pb::CaptureImageRequest) -> Result<pb::CapturedImage> {
        let mut c = self.client.clone();
        self.long(c.bases.capture_image(req)).await
    }

    async fn define_from_image(&self, req: pb::DefineFromImageRequest) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.define_from_image(req)).await
    }

    async fn attach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::AttachVolumeRequest {
            domain: domain.into(),
            volume: volume.into(),
        };
        self.long(c.bases.attach_volume(req)).await
    }

    async fn restore_volume(&self, req: pb::RestoreVolumeRequest) -> Result<pb::VolumeInfo> {
        let mut c = self.client.clone();
        self.long(c.bases.restore_volume(req)).await
    }

    async fn detach_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::AttachVolumeRequest {
            domain: domain.into(),
            volume: volume.into(),
        };
        self.long(c.bases.detach_volume(req)).await
    }

    async fn resize_domain_volume(
        &self,
        req: pb::ResizeDomainVolumeRequest,
    ) -> Result<pb::VolumeInfo> {
        let mut c = self.client.clone();
        self.long(c.bases.resize_domain_volume(req)).await
    }

    async fn remove_volume(&self, domain: &str, volume: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::RemoveVolumeRequest {
            domain: domain.into(),
            volume: volume.into(),
        };
        self.long(c.bases.remove_volume(req)).await
    }

    async fn set_autostart(&self, name: &str, on: bool) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::SetAutostartRequest {
            name: name.into(),
            autostart: on,
        };
        self.quick(AGENT_QUICK_CALL, c.domains.set_autostart(req))
            .await
    }

    async fn set_resources(&self, name: &str, memory_mib: u64, vcpus: u32) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::SetResourcesRequest {
            name: name.into(),
            memory_mib,
            vcpus,
        };
        self.long(c.domains.set_resources(req)).await
    }

    async fn list_clones(&self, base: &str) -> Result<Vec<pb::Domain>> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.bases.list_clones(dref(base)))
            .await
            .map(|r| r.clones)
    }

    async fn export_base(&self, name: &str) -> Result<pb::BaseExport> {
        let mut c = self.client.clone();
        self.long(c.bases.export_base(dref(name))).await
    }

    async fn import_base(&self, definition_xml: String) -> Result<pb::Base> {
        let mut c = self.client.clone();
        let req = pb::ImportBaseRequest {
            definition_xml,
            layouts: Vec::new(),
        };
        self.long(c.bases.import_base(req)).await
    }

    async fn export_domain(&self, name: &str) -> Result<pb::BaseExport> {
        let mut c = self.client.clone();
        self.long(c.bases.export_domain(dref(name))).await
    }

    async fn import_domain(&self, definition_xml: String) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        let req = pb::ImportBaseRequest {
            definition_xml,
            layouts: Vec::new(),
        };
        self.long(c.bases.import_domain(req)).await
    }

    async fn export_for_migration(&self, name: &str) -> Result<pb::BaseExport> {
        let mut c = self.client.clone();
        self.long(c.bases.export_for_migration(dref(name))).await
    }

    async fn prepare_migration(&self, req: pb::ImportBaseRequest) -> Result<pb::MigrationTarget> {
        let mut c = self.client.clone();
        self.long(c.bases.prepare_migration(req)).await
    }

    async fn migrate(&self, req: pb::MigrateDomainRequest) -> Result<()> {
        let mut c = self.client.clone();
        self.long(c.bases.migrate_domain(req)).await.map(|_| ())
    }

    async fn finish_migration(&self, name: &str) -> Result<pb::Domain> {
        let mut c = self.client.clone();
        self.long(c.bases.finish_migration(dref(name))).await
    }

    async fn delete_volume(&self, name: &str) -> Result<()> {
        let mut c = self.client.clone();
        let req = pb::VolumeRef { name: name.into() };
        absent_is_success(
            self.quick(AGENT_QUICK_CALL, c.volumes.delete_volume(req))
                .await
                .map(|_| ()),
        )
    }

    async fn create_snapshot(&self, req: pb::CreateSnapshotRequest) -> Result<pb::Snapshot> {
        let mut c = self.client.clone();
        self.long(c.snapshots.create_snapshot(req)).await
    }

    async fn get_snapshot(&self, domain: &str, name: &str) -> Result<pb::Snapshot> {
        let mut c = self.client.clone();
        let req = pb::SnapshotRef {
            domain: domain.into(),
            name: name.into(),
        };
        self.quick(AGENT_QUICK_CALL, c.snapshots.get_snapshot(req))
            .await
    }

    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.snapshots.list_snapshots(req))
            .await
    }

    async fn list_children(
        &self,
        req: pb::ListChildrenRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.snapshots.list_children(req))
            .await
    }

    async fn revert_snapshot(&self, req: pb::RevertSnapshotRequest) -> Result<pb::Snapshot> {
        let mut c = self.client.clone();
        self.long(c.snapshots.revert_snapshot(req)).await
    }

    async fn delete_snapshot(&self, req: pb::DeleteSnapshotRequest) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        self.long(c.snapshots.delete_snapshot(req))
            .await
            .map(|r| r.deleted)
    }

    async fn expose_port(&self, req: pb::ExposePortRequest) -> Result<pb::ExposedPort> {
        let mut c = self.client.clone();
        // The agent waits up to `wait_seconds` (60 by default) for a booting guest's address.
        let wait = if req.wait_seconds == 0 {
            60
        } else {
            req.wait_seconds
        };
        let limit = AGENT_QUICK_CALL + Duration::from_secs(u64::from(wait.min(600)));
        self.quick(limit, c.ports.expose_port(req)).await
    }

    async fn list_ports(&self, domain: &str) -> Result<Vec<pb::ExposedPort>> {
        let mut c = self.client.clone();
        let req = pb::ListPortsRequest {
            domain: domain.into(),
        };
        self.quick(AGENT_QUICK_CALL, c.ports.list_ports(req))
            .await
            .map(|r| r.ports)
    }

    async fn remove_port(&self, req: pb::RemovePortRequest) -> Result<pb::RemovePortResponse> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.ports.remove_port(req)).await
    }

    async fn remove_all_ports(&self, domain: &str) -> Result<pb::RemovePortResponse> {
        let mut c = self.client.clone();
        let req = pb::RemoveAllPortsRequest {
            domain: domain.into(),
        };
        self.quick(AGENT_QUICK_CALL, c.ports.remove_all_ports(req))
            .await
    }

    async fn restrict_display(&self, req: pb::RestrictDisplayRequest) -> Result<()> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.ports.restrict_display(req))
            .await
            .map(|_| ())
    }

    async fn guest_status(&self, name: &str) -> Result<pb::GuestStatus> {
        let mut c = self.client.clone();
        self.quick(AGENT_QUICK_CALL, c.guest.ping_guest(dref(name)))
            .await
    }

    async fn guest_exec(&self, req: pb::GuestExecRequest) -> Result<Events<pb::GuestExecEvent>> {
        let mut c = self.client.clone();
        let stream = self
            .quick(AGENT_QUICK_CALL, c.guest.guest_exec(req))
            .await?;
        let host = self.host.clone();
        Ok(Box::pin(futures::StreamExt::map(stream, move |r| {
            r.map_err(|s| CoordError::from_agent(&host, &s))
        })))
    }

    async fn read_guest_file(&self, req: pb::GuestFileRef) -> Result<Events<pb::FileChunk>> {
        let mut c = self.client.clone();
        let stream = self
            .quick(AGENT_QUICK_CALL, c.guest.read_guest_file(req))
            .await?;
        let host = self.host.clone();
        Ok(Box::pin(futures::StreamExt::map(stream, move |r| {
            r.map_err(|s| CoordError::from_agent(&host, &s))
        })))
    }

    async fn write_guest_file(
        &self,
        chunks: Outgoing<pb::GuestFileWrite>,
    ) -> Result<pb::GuestFileWritten> {
        let mut c = self.client.clone();
        // Through a channel: tonic wants a concrete stream type here.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let forward = async move {
            let mut chunks = chunks;
            while let Some(m) = futures::StreamExt::next(&mut chunks).await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        };
        let call = c
            .guest
            .write_guest_file(tokio_stream::wrappers::ReceiverStream::new(rx));
        let (r, ()) = tokio::join!(call, forward);
        r.map(tonic::Response::into_inner).map_err(|s| self.err(&s))
    }

    async fn send_volume(
        &self,
        req: pb::SendVolumeRequest,
        stall: Duration,
        progress: &(dyn for<'p> Fn(&'p pb::SyncProgress) + Send + Sync),
    ) -> Result<pb::SyncProgress> {
        let mut c = self.client.clone();
        let volume = req.volume.clone();
        let mut stream = self.long(c.sync.send_volume(req)).await?;
        let mut last = None;
        loop {
            let next = tokio::time::timeout(stall, stream.message())
                .await
                .map_err(|_| {
                    CoordError::Unavailable(format!(
                        "host {} reported no progress sending {volume} for {:.1} s: the transfer was stopped",
                        self.host,
                        stall.as_secs_f64()
                    ))
                })?;
            let Some(p) = next.map_err(|s| self.err(&s))? else {
                break;
            };
            progress(&p);
            if p.done {
                crate::metrics::transfer(p.sent_bytes, p.wire_bytes);
                last = Some(p);
            }
        }
        last.ok_or_else(|| {
            CoordError::Unavailable(format!(
                "host {} ended the send of {volume} early",
                self.host
            ))
        })
    }
}
