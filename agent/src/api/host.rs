use std::pin::Pin;
use std::sync::Arc;

use corral_proto::v1 as pb;
use pb::host_service_server::HostService;
use tokio_stream::{wrappers::BroadcastStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::run;
use crate::agent::Agent;
use crate::events::RawEvent;

#[derive(Debug, Clone)]
pub struct HostApi(pub Arc<Agent>);

/// Maps a libvirt lifecycle event to Corral's event.
pub fn event_to_pb(e: &RawEvent) -> pb::DomainEvent {
    use crate::events::Lifecycle as L;
    use pb::DomainEventKind as K;
    use pb::DomainState as S;
    let kind = match e.lifecycle() {
        L::Defined => K::Defined,
        L::Undefined => K::Undefined,
        L::Started => K::Started,
        L::Suspended => K::Suspended,
        L::Resumed => K::Resumed,
        L::Stopped => K::Stopped,
        L::Shutdown => K::Shutdown,
        L::PmSuspended => K::Pmsuspended,
        L::Crashed => K::Crashed,
        L::Other => K::Unspecified,
    };
    let state = match (kind, e.detail()) {
        (K::Started | K::Resumed, _) => S::Running,
        (K::Suspended, _) => S::Paused,
        (K::Stopped, virt::sys::VIR_DOMAIN_EVENT_STOPPED_SAVED) => S::Hibernated,
        (K::Stopped, virt::sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED) | (K::Crashed, _) => S::Crashed,
        (K::Stopped, _) => S::ShutOff,
        (K::Shutdown, _) => S::ShuttingDown,
        (K::Pmsuspended, _) => S::PmSuspended,
        _ => S::Unspecified,
    };
    pb::DomainEvent {
        domain: e.domain.clone(),
        uuid: e.uuid.clone(),
        kind: kind as i32,
        detail: e.detail,
        detail_text: e.detail_text().into(),
        at_unix_ms: e.at_unix_ms,
        state: state as i32,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DomainEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HostService for HostApi {
    async fn get_host_info(
        &self,
        _: Request<pb::GetHostInfoRequest>,
    ) -> Result<Response<pb::HostInfo>, Status> {
        run(&self.0, "GetHostInfo", "", |a| a.host_info()).await
    }

    type WatchDomainEventsStream = EventStream;

    async fn watch_domain_events(
        &self,
        req: Request<pb::WatchDomainEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let filter = req.into_inner().domain;
        if !filter.is_empty() {
            crate::validate::name("domain", &filter)?;
        }
        tracing::info!(domain = %filter, "event watcher attached");
        let stream =
            BroadcastStream::new(self.0.events.subscribe()).filter_map(move |item| match item {
                Ok(e) if filter.is_empty() || e.domain == filter => Some(Ok(event_to_pb(&e))),
                Ok(_) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Err(Status::resource_exhausted(format!(
                        "watcher fell behind and lost {n} events"
                    ))))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Agent {
    pub fn host_info(&self) -> crate::error::Result<pb::HostInfo> {
        let facts = self.hv.host()?;
        let (storage_total, storage_free) = self.storage.space()?;
        let usage = self.hv.usage()?;
        Ok(pb::HostInfo {
            hostname: facts.hostname,
            cpus: facts.cpus,
            memory_total_bytes: facts.memory_total,
            memory_free_bytes: facts.memory_free,
            storage_total_bytes: storage_total,
            storage_free_bytes: storage_free,
            libvirt_version: facts.libvirt_version,
            qemu_version: facts.hypervisor_version,
            domain_type: self.cfg.domain_type.as_str().into(),
            libvirt_uri: self.hv.uri(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            domains_running: usage.running,
            domains_defined: usage.defined,
            vcpus_running: usage.vcpus,
            memory_running_bytes: usage.memory,
            host_address: self.cfg.host_address.to_string(),
            migration_uri: self.cfg.migration_uri.clone(),
        })
    }
}
