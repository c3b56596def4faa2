//! Simulated agents for the scale benchmark: one gRPC server in this process answers for
//! thousands of hosts, each reached at its own loopback address (127.x.y.z, one port), told
//! apart by the local address a connection arrived on. Each answers what a coordinator asks
//! of an idle host: heartbeats (GetHostInfo), its domains and bases for reconciliation, and a
//! domain event stream held open; the guest watcher's questions (no guest agent). Everything
//! else answers UNIMPLEMENTED.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corral_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::unwrap_used)]
mod generated {
    tonic::include_proto!("corral.v1");
}

/// The loopback address of simulated host `i` (0-based).
pub fn host_ip(i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(
        127,
        10 + (n / 65025) as u8,
        ((n / 255) % 255) as u8,
        (n % 255 + 1) as u8,
    )
}

/// What the simulated hosts hold and how often they were asked.
#[derive(Default)]
pub struct Fleet {
    /// Host index by address, its domains (name, running).
    pub domains: HashMap<Ipv4Addr, Vec<String>>,
    pub base: String,
    pub heartbeats: AtomicU64,
    pub streams_open: AtomicU64,
    /// Reconciliations (ListDomains) and questions about single domains and guests (the
    /// guest watcher's): once both stop moving, the coordinator is at steady state.
    pub listed: AtomicU64,
    pub asked: AtomicU64,
}

#[derive(Clone)]
pub struct Sim(pub Arc<Fleet>);

fn local<T>(req: &Request<T>) -> Result<Ipv4Addr, Status> {
    let addr = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.local_addr());
    match addr {
        Some(SocketAddr::V4(a)) => Ok(*a.ip()),
        _ => Err(Status::internal("no local address")),
    }
}

type Events =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::DomainEvent, Status>> + Send>>;

/// Counts an open event stream until it is dropped.
struct Open(Arc<Fleet>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl pb::host_service_server::HostService for Sim {
    async fn get_host_info(
        &self,
        req: Request<pb::GetHostInfoRequest>,
    ) -> Result<Response<pb::HostInfo>, Status> {
        let ip = local(&req)?;
        self.0.heartbeats.fetch_add(1, Ordering::Relaxed);
        let running = self.0.domains.get(&ip).map_or(0, Vec::len) as u32;
        Ok(Response::new(pb::HostInfo {
            hostname: ip.to_string(),
            cpus: 64,
            memory_total_bytes: 512 << 30,
            memory_free_bytes: 256 << 30,
            storage_total_bytes: 4 << 40,
            storage_free_bytes: 2 << 40,
            domain_type: "test".into(),
            domains_running: running,
            domains_defined: running,
            vcpus_running: running,
            memory_running_bytes: u64::from(running) << 30,
            host_address: ip.to_string(),
            ..Default::default()
        }))
    }

    type WatchDomainEventsStream = Events;

    async fn watch_domain_events(
        &self,
        _: Request<pb::WatchDomainEventsRequest>,
    ) -> Result<Response<Events>, Status> {
        self.0.streams_open.fetch_add(1, Ordering::Relaxed);
        let open = Open(Arc::clone(&self.0));
        // Held open, silent, until the coordinator lets go (the receiver dropped).
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tx.closed().await;
            drop(open);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl generated::domain_service_server::DomainService for Sim {
    async fn list_domains(
        &self,
        req: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let ip = local(&req)?;
        self.0.listed.fetch_add(1, Ordering::Relaxed);
        let domains = self
            .0
            .domains
            .get(&ip)
            .map(|names| {
                names
                    .iter()
                    .map(|n| pb::Domain {
                        name: n.clone(),
                        state: pb::DomainState::Running as i32,
                        vcpus: 1,
                        memory_mib: 1024,
                        ..Default::default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn get_domain(
        &self,
        req: Request<pb::DomainRef>,
    ) -> Result<Response<pb::Domain>, Status> {
        let ip = local(&req)?;
        self.0.asked.fetch_add(1, Ordering::Relaxed);
        let name = req.into_inner().name;
        let known = self.0.domains.get(&ip).is_some_and(|d| d.contains(&name));
        if !known {
            return Err(Status::not_found(format!("domain {name} not found")));
        }
        Ok(Response::new(pb::Domain {
            name,
            state: pb::DomainState::Running as i32,
            vcpus: 1,
            memory_mib: 1024,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl generated::guest_service_server::GuestService for Sim {
    /// The simulated guests have no guest agent: their readiness is settled at once.
    async fn ping_guest(
        &self,
        _: Request<pb::DomainRef>,
    ) -> Result<Response<pb::GuestStatus>, Status> {
        self.0.asked.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::GuestStatus {
            agent: pb::GuestAgent::None as i32,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl generated::base_service_server::BaseService for Sim {
    async fn list_bases(
        &self,
        _: Request<pb::ListBasesRequest>,
    ) -> Result<Response<pb::ListBasesResponse>, Status> {
        Ok(Response::new(pb::ListBasesResponse {
            bases: vec![pb::Base {
                name: self.0.base.clone(),
                ..Default::default()
            }],
        }))
    }
}

/// Serves the simulated hosts on `0.0.0.0:port` (every 127.x address reaches it) until the
/// process ends.
pub async fn serve(fleet: Arc<Fleet>, port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let sim = Sim(fleet);
    let router = tonic::transport::Server::builder()
        .add_service(pb::host_service_server::HostServiceServer::new(sim.clone()))
        .add_service(generated::domain_service_server::DomainServiceServer::new(
            sim.clone(),
        ))
        .add_service(generated::guest_service_server::GuestServiceServer::new(
            sim.clone(),
        ))
        .add_service(generated::base_service_server::BaseServiceServer::new(sim));
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("simulated agents stopped: {e}");
        }
    });
    Ok(())
}
