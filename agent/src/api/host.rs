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
    use pb::DomainEventKind as K;
    use pb::DomainState as S;
    let kind = match e.event {
        0 => K::Defined,
        1 => K::Undefined,
        2 => K::Started,
        3 => K::Suspended,
        4 => K::Resumed,
        5 => K::Stopped,
        6 => K::Shutdown,
        7 => K::Pmsuspended,
        8 => K::Crashed,
        _ => K::Unspecified,
    };
    let state = match (kind, e.detail) {
        (K::Started | K::Resumed, _) => S::Running,
        (K::Suspended, _) => S::Paused,
        (K::Stopped, 4) => S::Hibernated,
        (K::Stopped, 2) | (K::Crashed, _) => S::Crashed,
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
