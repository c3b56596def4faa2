//! Wires the agent together and serves gRPC until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_proto::v1 as pb;
use tokio::net::TcpListener;

use crate::agent::{now_unix, Agent};
use crate::api;
use crate::config::{Config, FirewallKind};
use crate::error::{AgentError, Result};
use crate::events::Lifecycle;
use crate::firewall::{Firewall, Iptables, NoFirewall};
use crate::hypervisor::Libvirt;
use crate::images::QemuImg;

/// Opens libvirt, builds the agent and reconciles it with the host.
pub async fn build(cfg: Config) -> Result<Arc<Agent>> {
    let uri = cfg.libvirt_uri.clone();
    let hv = Arc::new(tokio::task::spawn_blocking(move || Libvirt::open(&uri)).await??);
    let firewall: Arc<dyn Firewall> = match cfg.firewall {
        FirewallKind::Iptables => Arc::new(Iptables),
        FirewallKind::None => Arc::new(NoFirewall),
    };
    let agent = Arc::new(Agent::new(
        cfg,
        hv.clone(),
        Arc::new(QemuImg::default()),
        firewall,
    )?);
    hv.watch_events(agent.events.clone())?;
    agent.blocking(|a| a.reconcile()).await?;
    spawn_event_reactor(&agent);
    spawn_port_retry(&agent);
    if let Some(addr) = agent.cfg.metrics_listen {
        crate::metrics::serve(&agent, addr).await?;
    }
    Ok(agent)
}

/// While an exposed port of a running guest has no address yet, re-applies the rules every
/// few seconds (the address of a guest that came by live migration appears later).
fn spawn_port_retry(agent: &Arc<Agent>) {
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tick.tick().await;
            if agent
                .ports_waiting
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                if let Err(e) = agent.blocking(|a| a.apply_ports()).await {
                    tracing::debug!(error = %e, "port rules not re-applied");
                }
            }
        }
    });
}

/// Keeps start times and port rules in step with libvirt's lifecycle events.
fn spawn_event_reactor(agent: &Arc<Agent>) {
    let mut rx = agent.events.subscribe();
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "event reactor lagged; re-applying all port rules");
                    let _ = agent.blocking(|a| a.apply_ports()).await;
                    continue;
                }
                Err(_) => break,
            };
            let span = tracing::info_span!("domain_event", domain = %e.domain, event = e.event, detail = e.detail);
            let _g = span.enter();
            tracing::debug!("libvirt event");
            let name = e.domain.clone();
            // DEFINED or UNDEFINED: whatever changed it, a cached definition is stale.
            let lifecycle = e.lifecycle();
            if matches!(lifecycle, Lifecycle::Defined | Lifecycle::Undefined) {
                agent.forget_definition(&name);
            }
            match lifecycle {
                Lifecycle::Started => {
                    agent.note_started(&name, Some(now_unix()));
                    let a = Arc::clone(&agent);
                    tokio::spawn(async move {
                        let n = name.clone();
                        if let Err(err) = a
                            .blocking(move |a| {
                                a.activate_ports_when_ready(&n, Duration::from_secs(90))
                            })
                            .await
                        {
                            tracing::warn!(domain = %name, error = %err, "could not activate port rules");
                        }
                    });
                }
                Lifecycle::Stopped | Lifecycle::Crashed => {
                    agent.note_started(&name, None);
                    let _ = agent.blocking(|a| a.apply_ports()).await;
                }
                Lifecycle::Undefined => {
                    let _ = agent.blocking(move |a| a.forget_ports(&name)).await;
                }
                _ => {}
            }
        }
    });
}

/// Serves every service on `listener` until `shutdown` completes. Guests keep running.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let pinned = match &agent.cfg.tls_coordinator_cert {
        Some(p) => {
            let pem = std::fs::read_to_string(p)
                .map_err(|e| AgentError::invalid(format!("{}: {e}", p.display())))?;
            Some(Arc::new(pem_to_der(&pem)?))
        }
        None => None,
    };
    let check = pin_check(pinned);
    // Volume transfers stream megabytes: larger HTTP/2 windows keep the link busy.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .max_frame_size(Some(1 << 20));
    if let Some(pem) = agent.blocking(|a| a.cfg.tls_pem()).await? {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(pem.cert, pem.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(pem.ca));
        builder = builder
            .tls_config(tls)
            .map_err(|e| AgentError::invalid(format!("TLS: {e}")))?;
        tracing::info!("mutual TLS: only clients with a certificate from the configured CA");
    }
    // Every RPC in a `grpc` span (with the operation the coordinator names), counted by
    // method and code (streams at their end).
    let builder = builder.layer(corral_proto::observe::RpcLayer::new(crate::metrics::rpc));
    // Calls from a coordinator that no longer leads (a lower term than seen) are refused; the
    // terms seen are kept in the state directory, so a restart does not forget them.
    let fence_file = agent.cfg.state_dir.join("fence");
    let fence = tokio::task::spawn_blocking(move || corral_proto::fence::Fence::load(fence_file))
        .await
        .map_err(|e| AgentError::internal(format!("fence: {e}")))?
        .map_err(|e| AgentError::internal(format!("the fence's terms: {e}")))?;
    let builder = builder.layer(corral_proto::fence::FenceLayer(Arc::new(fence)));
    let standard = corral_proto::standard_router(builder, corral_proto::AGENT_SERVICES)
        .await
        .map_err(|e| AgentError::internal(format!("reflection: {e}")))?;
    let a = || Arc::clone(&agent);
    let router = corral_proto::add_checked! { standard, check;
        pb::host_service_server::HostServiceServer<_> => api::HostApi(a()),
        pb::domain_service_server::DomainServiceServer<_> => api::DomainApi(a()),
        pb::volume_service_server::VolumeServiceServer<_> => api::VolumeApi(a()),
        pb::base_service_server::BaseServiceServer<_> => api::BaseApi(a()),
        pb::snapshot_service_server::SnapshotServiceServer<_> => api::SnapshotApi(a()),
        pb::port_service_server::PortServiceServer<_> => api::PortApi(a()),
        pb::volume_sync_service_server::VolumeSyncServiceServer<_> => api::SyncApi(a()),
        pb::guest_service_server::GuestServiceServer<_> => api::GuestApi(a()),
    };
    router
        // Peer agents, not only the coordinator: any certificate the agents' CA signed.
        .add_service(
            pb::peer_transfer_service_server::PeerTransferServiceServer::new(api::PeerApi(a()))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            // Small messages (stream ends, progress events) must not wait for Nagle's delay.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| AgentError::Unavailable(format!("gRPC server: {e}")))
}

/// The DER bytes of the first certificate in a PEM file.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(AgentError::invalid("no certificate in the PEM file"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| AgentError::invalid(format!("bad PEM certificate: {e}")))
}

type Check = Box<
    dyn Fn(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status>
        + Send
        + Sync,
>;

/// Refuses every call whose client certificate is not `pinned` (when pinning is on).
fn pin_check(pinned: Option<Arc<Vec<u8>>>) -> impl tonic::service::Interceptor + Clone {
    let check: Arc<Check> = Arc::new(Box::new(move |req: tonic::Request<()>| {
        let Some(pin) = &pinned else { return Ok(req) };
        let ok = req
            .peer_certs()
            .is_some_and(|certs| certs.first().is_some_and(|c| c.as_ref() == pin.as_slice()));
        if ok {
            Ok(req)
        } else {
            Err(tonic::Status::permission_denied(
                "this agent accepts only the coordinator's certificate",
            ))
        }
    }));
    move |req: tonic::Request<()>| check(req)
}

/// Binds the configured address; returns the listener and the address actually bound.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Unavailable(format!("cannot listen on {addr}: {e}")))?;
    let local = l.local_addr()?;
    Ok((l, local))
}
