//! Wires the coordinator together and serves gRPC until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use tokio::net::TcpListener;

use crate::api;
use crate::auth::{self, Auth};
use crate::config::Config;
use crate::db::Db;
use crate::error::{CoordError, Result};
use crate::hosts::Hosts;
use crate::operations::Operations;
use crate::store::{Postgres, Sqlite, Store};
use crate::vms::Coordinator;

/// The store the configuration names: PostgreSQL when `database_url` is set, else the SQLite
/// file (its directory made). Opened off the async workers.
async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>> {
    if let Some(url) = cfg.database_url.clone() {
        let schema = cfg.database_schema.clone();
        let pg = tokio::task::spawn_blocking(move || Postgres::connect(&url, schema.as_deref()))
            .await??;
        tracing::info!("store: PostgreSQL");
        return Ok(Arc::new(pg));
    }
    if let Some(dir) = cfg.database.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CoordError::Internal(format!("{}: {e}", dir.display())))?;
    }
    let (path, full) = (cfg.database.clone(), cfg.database_full_sync);
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || Sqlite::open_with(&path, full)).await??,
    ))
}

/// What a coordinator does when it starts to lead: connect to every host, resume or fail every
/// unfinished operation (once), start the background managers.
async fn start_leading(coord: Arc<Coordinator>) -> Result<()> {
    coord.hosts.load().await?;
    let (resumed, failed) = coord.ops.recover(&coord.resumers()).await?;
    if !resumed.is_empty() || !failed.is_empty() {
        tracing::info!(?resumed, ?failed, "unfinished operations taken over");
    }
    // Ends with the coordinator (it holds a weak reference).
    drop(coord.spawn_reaper());
    drop(coord.spawn_pool_manager());
    drop(coord.spawn_idle_keeper());
    drop(coord.spawn_guest_watch());
    Ok(())
}

/// Opens the store, recovers unfinished operations and connects to every host.
pub async fn build(cfg: Config) -> Result<Arc<Coordinator>> {
    let store = open_store(&cfg).await?;
    // Reading tokens and writing the bootstrap file block: keep them off the async workers.
    let (st, file) = (Arc::clone(&store), cfg.bootstrap_token_file.clone());
    let auth = tokio::task::spawn_blocking(move || -> Result<Arc<Auth>> {
        let auth = Auth::load(st.as_ref())?;
        if auth::bootstrap(st.as_ref(), &auth, &file)?.is_some() {
            tracing::info!(file = %file.display(), "created user admin; its token is in the file");
        }
        Ok(auth)
    })
    .await??;
    // From here on only the store thread touches the store.
    let db = Db::start(store)?;
    let ops = Operations::new(Arc::clone(&db), cfg.per_host_limit);
    let hosts = Hosts::new(
        Arc::clone(&db),
        Duration::from_millis(cfg.heartbeat_ms),
        Duration::from_millis(cfg.down_after_ms),
        cfg.agent_tls()?,
    );
    // The bind password is read off the async workers.
    let directory = match cfg.ldap.clone() {
        Some(l) => Some(
            tokio::task::spawn_blocking(move || crate::directory::Directory::new(l))
                .await
                .map_err(|e| CoordError::Internal(format!("reading the LDAP settings: {e}")))??,
        ),
        None => None,
    };
    let several = cfg.database_url.is_some();
    let coord = Coordinator::new(cfg, db, Arc::clone(&ops), hosts, auth, directory);
    if several {
        // Several coordinators may share the database: lead only with the lease.
        let address = coord.cfg.advertise.clone().unwrap_or_default();
        coord.lead_or_follow(address, start_leading).await;
    } else {
        start_leading(Arc::clone(&coord)).await?;
    }
    if let Some(addr) = coord.cfg.metrics_listen {
        coord.serve_metrics(addr).await?;
    }
    Ok(coord)
}

pub async fn serve(
    coord: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let check = coord.auth.interceptor();
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = coord.cfg.api_tls()? {
        let (c2, k2) = (cert.clone(), key.clone());
        let (cert, key) = tokio::task::spawn_blocking(move || {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| CoordError::Invalid(format!("{}: {e}", p.display())))
            };
            Ok::<_, CoordError>((read(&c2)?, read(&k2)?))
        })
        .await??;
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(|e| CoordError::Invalid(format!("API TLS: {e}")))?;
        tracing::info!("API served over TLS");
    }
    // Every RPC in a `grpc` span, counted by method and code (streams at their end).
    let builder = builder
        .layer(corral_proto::observe::RpcLayer::new(crate::metrics::rpc))
        // Writes reach only the leader.
        .layer(crate::leader::GateLayer(Arc::clone(&coord.role)));
    let c = || Arc::clone(&coord);
    let standard = corral_proto::standard_router(builder, corral_proto::COORDINATOR_SERVICES)
        .await
        .map_err(|e| CoordError::Internal(format!("reflection: {e}")))?;
    let router = corral_proto::add_checked! { standard, check;
        pb::host_admin_service_server::HostAdminServiceServer<_> => api::HostAdminApi(c()),
        pb::vm_service_server::VmServiceServer<_> => api::VmApi(c()),
        pb::operation_service_server::OperationServiceServer<_> => api::OperationApi(c()),
        pb::vm_snapshot_service_server::VmSnapshotServiceServer<_> => api::VmSnapshotApi(c()),
        pb::vm_access_service_server::VmAccessServiceServer<_> => api::VmAccessApi(c()),
        pb::vm_guest_service_server::VmGuestServiceServer<_> => api::VmGuestApi(c()),
        pb::image_service_server::ImageServiceServer<_> => api::ImageApi(c()),
        pb::backup_service_server::BackupServiceServer<_> => api::BackupApi(c()),
        pb::event_service_server::EventServiceServer<_> => api::EventApi(c()),
        pb::user_service_server::UserServiceServer<_> => api::UserApi(c()),
    };
    router
        .serve_with_incoming_shutdown(
            // Small messages (stream ends, progress events) must not wait for Nagle's delay.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| CoordError::Unavailable(format!("gRPC server: {e}")))
}
