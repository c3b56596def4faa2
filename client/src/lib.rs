//! corral-client: typed access to Corral's gRPC API (the coordinator's services, and one
//! agent's), used by the `corral` CLI (crate `corral-cli`), the coordinator and other services.

use corral_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};

pub use corral_proto::v1 as proto;

/// What went wrong talking to Corral.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: {1}")]
    InvalidEndpoint(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("{}", describe(.0))]
    Rpc(#[from] tonic::Status),
    #[error("operation {0} {1}: {2}")]
    Operation(String, String, String),
    #[error("{0}")]
    Config(String),
}

/// One line for a failed call: the code in words, then the server's message.
pub fn describe(s: &tonic::Status) -> String {
    let what = match s.code() {
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unimplemented => "not supported",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        _ => "error",
    };
    let causes = causes(s);
    let mut line = format!("{what}: {}", s.message());
    if !causes.is_empty() && !s.message().contains(&causes) {
        line = format!("{line}: {causes}");
    }
    if let Some(hint) = tls_hint(&format!("{} {causes}", s.message())) {
        line = format!("{line} ({hint})");
    }
    line
}

/// The chain of causes under an error ("a: b: c"), which tonic keeps out of its message
/// ("transport error" says nothing of a refused connection or a rejected certificate).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = c.source();
    }
    parts.join(": ")
}

/// What to check when a failure looks like TLS: names the certificates involved.
pub fn tls_hint(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    let tls = [
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "invalid peer",
        "h2 protocol error",
        "http2 error",
        "invalid http version",
        "frame with invalid size",
        // A TLS server closes a plain-text connection; timing decides which of these shows.
        "broken pipe",
        "connection reset",
        "unexpected eof",
    ];
    tls.iter().any(|k| t.contains(k)).then_some(
        "TLS failed: check the CA that signed the server's certificate (--ca or CORRAL_CA), \
         the client certificate and key (--cert/--key), that the server's certificate names \
         the address you used, and that client and server both use TLS or both do not",
    )
}

/// Clients for every service of one agent, sharing one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub host: pb::host_service_client::HostServiceClient<ForOp>,
    pub domains: pb::domain_service_client::DomainServiceClient<ForOp>,
    pub volumes: pb::volume_service_client::VolumeServiceClient<ForOp>,
    pub bases: pb::base_service_client::BaseServiceClient<ForOp>,
    pub snapshots: pb::snapshot_service_client::SnapshotServiceClient<ForOp>,
    pub ports: pb::port_service_client::PortServiceClient<ForOp>,
    pub sync: pb::volume_sync_service_client::VolumeSyncServiceClient<ForOp>,
    pub guest: pb::guest_service_client::GuestServiceClient<ForOp>,
}

tokio::task_local! {
    /// The operation the current task works for: calls to agents made inside
    /// `OPERATION.scope(id, ...)` carry it in [`OPERATION_HEADER`].
    pub static OPERATION: String;
}

pub use corral_proto::{OPERATION_HEADER, TERM_HEADER};

/// The operation the current task works for.
pub fn current_operation() -> Option<String> {
    OPERATION.try_with(Clone::clone).ok()
}

/// Runs `f` for operation `op` (when some): what a task spawned for an operation uses.
pub async fn for_operation<F: std::future::Future>(op: Option<String>, f: F) -> F::Output {
    match op {
        Some(id) => OPERATION.scope(id, f).await,
        None => f.await,
    }
}

/// `CLUSTER:TERM` of this process's lease when it leads (none: not fenced), named on every call.
static TERM: std::sync::RwLock<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> =
    std::sync::RwLock::new(None);

/// Names the lease (its database's `cluster` id and `term`) on every later call to an agent,
/// so that agents refuse this process's calls once a coordinator of a newer term of the same
/// database has called them.
pub fn set_term(cluster: &str, term: i64) {
    let value = format!("{cluster}:{term}").parse().ok();
    if let Ok(mut t) = TERM.write() {
        *t = value;
    }
}

/// Adds the current task's [`OPERATION`], if any, and the process's term to every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameOperation;

impl tonic::service::Interceptor for NameOperation {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Ok(Some(v)) = OPERATION.try_with(|id| id.parse().ok()) {
            req.metadata_mut().insert(OPERATION_HEADER, v);
        }
        if let Some(term) = TERM.read().ok().and_then(|t| t.clone()) {
            req.metadata_mut().insert(corral_proto::TERM_HEADER, term);
        }
        Ok(req)
    }
}

/// A channel whose calls name the operation they work for.
pub type ForOp = tonic::service::interceptor::InterceptedService<Channel, NameOperation>;

/// Mutual TLS: the CA that signed the peer, and our own certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    fn read(p: &std::path::Path) -> Result<Vec<u8>, ClientError> {
        std::fs::read(p).map_err(|e| ClientError::Config(format!("{}: {e}", p.display())))
    }

    pub fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(Self::read(
                &self.ca,
            )?))
            .identity(tonic::transport::Identity::from_pem(
                Self::read(&self.cert)?,
                Self::read(&self.key)?,
            )))
    }

    /// Server side: our identity, and only clients signed by `ca` are accepted.
    pub fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, ClientError> {
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                Self::read(&self.cert)?,
                Self::read(&self.key)?,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(Self::read(
                &self.ca,
            )?)))
    }
}

impl AgentClient {
    /// Connects to an agent (`http://HOST:PORT`, or `HOST:PORT`) without TLS.
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, None).await
    }

    /// Connects to an agent, with mutual TLS when `tls` is given.
    pub async fn connect_with(endpoint: &str, tls: Option<&TlsFiles>) -> Result<Self, ClientError> {
        let tls = tls.map(TlsFiles::client_config).transpose()?;
        Ok(Self::from_channel(channel(endpoint, tls).await?))
    }

    pub fn from_channel(ch: Channel) -> Self {
        Self {
            host: pb::host_service_client::HostServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            domains: pb::domain_service_client::DomainServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            volumes: pb::volume_service_client::VolumeServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            bases: pb::base_service_client::BaseServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            snapshots: pb::snapshot_service_client::SnapshotServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            ports: pb::port_service_client::PortServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            sync: pb::volume_sync_service_client::VolumeSyncServiceClient::with_interceptor(
                ch.clone(),
                NameOperation,
            ),
            guest: pb::guest_service_client::GuestServiceClient::with_interceptor(
                ch,
                NameOperation,
            ),
        }
    }
}

/// A channel to `endpoint` (host:port, or a URL), over TLS when `tls` is given.
async fn channel(
    endpoint: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Channel, ClientError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("{scheme}://{endpoint}")
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::InvalidEndpoint(endpoint.into(), e.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(t) = tls {
        ep = ep
            .tls_config(t)
            .map_err(|e| ClientError::Config(format!("TLS: {e}")))?;
    }
    ep.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let more = causes(&e);
        if !more.is_empty() {
            why = format!("{why}: {more}");
        }
        if let Some(hint) = tls_hint(&why) {
            why = format!("{why} ({hint})");
        }
        ClientError::Connect(url, why)
    })
}

/// A channel to `endpoint` with mutual TLS when `tls` is given (for services other than
/// the agent's and the coordinator's own clients, e.g. a peer agent's transfer service).
pub async fn channel_with(endpoint: &str, tls: Option<&TlsFiles>) -> Result<Channel, ClientError> {
    let tls = tls.map(TlsFiles::client_config).transpose()?;
    channel(endpoint, tls).await
}

/// How long a client with several coordinators waits for one to lead.
pub const FIND_LEADER_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct TokenAuth(
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

/// The request header that asks the coordinator for a dry run of any RPC: it validates,
/// authorizes and places as the real call would, answers with what would happen, and changes
/// nothing.
pub const DRY_RUN_HEADER: &str = "corral-dry-run";

impl tonic::service::Interceptor for TokenAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        if self.1.load(std::sync::atomic::Ordering::Relaxed) {
            req.metadata_mut().insert(
                DRY_RUN_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(req)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, TokenAuth>;

/// Clients for every coordinator service, authenticated by a token.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    pub hosts: pb::host_admin_service_client::HostAdminServiceClient<Authed>,
    pub vms: pb::vm_service_client::VmServiceClient<Authed>,
    pub ops: pb::operation_service_client::OperationServiceClient<Authed>,
    pub users: pb::user_service_client::UserServiceClient<Authed>,
    pub snapshots: pb::vm_snapshot_service_client::VmSnapshotServiceClient<Authed>,
    pub access: pb::vm_access_service_client::VmAccessServiceClient<Authed>,
    pub guest: pb::vm_guest_service_client::VmGuestServiceClient<Authed>,
    pub images: pb::image_service_client::ImageServiceClient<Authed>,
    pub backups: pb::backup_service_client::BackupServiceClient<Authed>,
    pub events: pb::event_service_client::EventServiceClient<Authed>,
    dry_run: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Every coordinator this client may use (several share one database: one leads).
    endpoints: Vec<String>,
    token: String,
    ca: Option<std::path::PathBuf>,
}

impl CoordinatorClient {
    pub async fn connect(endpoint: &str, token: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, token, None).await
    }

    /// Connects over TLS when `ca` (the PEM file of the CA that signed the coordinator's
    /// certificate) is given, in plain text otherwise. `endpoint` may list several
    /// coordinators separated by commas: the client then talks to the one that leads, and
    /// finds the next leader by itself when it goes.
    pub async fn connect_with(
        endpoint: &str,
        token: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        if endpoints.len() > 1 {
            return Self::connect_leader(&endpoints, token, ca).await;
        }
        let mut c = Self::connect_one(endpoint, token, ca).await?;
        c.endpoints = endpoints;
        Ok(c)
    }

    /// The coordinator among `endpoints` that leads, waiting up to [`FIND_LEADER_FOR`] for
    /// one to (a follower takes over a few seconds after a leader goes).
    pub async fn connect_leader(
        endpoints: &[String],
        token: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let deadline = std::time::Instant::now() + FIND_LEADER_FOR;
        let mut last = ClientError::Config("no coordinator address".into());
        loop {
            for e in endpoints {
                match Self::connect_one(e, token, ca).await {
                    Ok(mut c) => match c.ops.get_coordinator(pb::GetCoordinatorRequest {}).await {
                        Ok(info) if info.get_ref().leader => {
                            c.endpoints = endpoints.to_vec();
                            return Ok(c);
                        }
                        Ok(_) => {
                            last = ClientError::Rpc(tonic::Status::unavailable(format!(
                                "{e} does not lead"
                            )))
                        }
                        Err(s) => last = s.into(),
                    },
                    Err(err) => last = err,
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Finds the leader again (after a failure that may mean the one in use went); false when
    /// this client knows only one coordinator.
    pub async fn to_leader(&mut self) -> Result<bool, ClientError> {
        if self.endpoints.len() < 2 {
            return Ok(false);
        }
        let dry = self.dry_run.load(std::sync::atomic::Ordering::Relaxed);
        let c = Self::connect_leader(&self.endpoints, &self.token, self.ca.as_deref()).await?;
        *self = c;
        self.set_dry_run(dry);
        Ok(true)
    }

    async fn connect_one(
        endpoint: &str,
        token: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let tls = ca
            .map(|ca| {
                Ok::<_, ClientError>(
                    tonic::transport::ClientTlsConfig::new().ca_certificate(
                        tonic::transport::Certificate::from_pem(TlsFiles::read(ca)?),
                    ),
                )
            })
            .transpose()?;
        let ch = channel(endpoint, tls).await?;
        let value = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::InvalidEndpoint(
                endpoint.into(),
                "the token has characters a header cannot carry".into(),
            )
        })?;
        let dry_run = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let auth = TokenAuth(value, std::sync::Arc::clone(&dry_run));
        Ok(Self {
            dry_run,
            endpoints: vec![endpoint.to_string()],
            token: token.to_string(),
            ca: ca.map(std::path::Path::to_path_buf),
            hosts: pb::host_admin_service_client::HostAdminServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            vms: pb::vm_service_client::VmServiceClient::with_interceptor(ch.clone(), auth.clone()),
            ops: pb::operation_service_client::OperationServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            users: pb::user_service_client::UserServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            snapshots: pb::vm_snapshot_service_client::VmSnapshotServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            access: pb::vm_access_service_client::VmAccessServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            guest: pb::vm_guest_service_client::VmGuestServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            images: pb::image_service_client::ImageServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            backups: pb::backup_service_client::BackupServiceClient::with_interceptor(
                ch.clone(),
                auth.clone(),
            ),
            events: pb::event_service_client::EventServiceClient::with_interceptor(ch, auth),
        })
    }

    /// Sends every following request (of this client and its clones) as a dry run, or not.
    pub fn set_dry_run(&self, on: bool) {
        self.dry_run.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Follows the events feed from `start` (`None`: from now), reconnecting after a lost
    /// connection and resuming after the last event received, so none is missed or seen
    /// twice; `each` sees every event (and the position marker when starting from now) and
    /// returns false to stop. `retry` is how long to wait before reconnecting.
    pub async fn follow_events(
        &mut self,
        start: Option<u64>,
        retry: std::time::Duration,
        mut each: impl FnMut(&pb::Event) -> bool,
    ) -> Result<(), ClientError> {
        use tokio_stream::StreamExt;
        let mut last = start;
        loop {
            let req = pb::WatchEventsRequest {
                after: last.unwrap_or(0),
                from_now: last.is_none(),
            };
            let broken = match self.events.watch_events(req).await {
                Ok(r) => {
                    let mut s = r.into_inner();
                    loop {
                        match s.next().await {
                            Some(Ok(e)) => {
                                last = Some(e.sequence);
                                if !each(&e) {
                                    return Ok(());
                                }
                            }
                            Some(Err(st)) => break st,
                            None => {
                                break tonic::Status::unavailable("the coordinator ended the feed")
                            }
                        }
                    }
                }
                Err(st) => st,
            };
            if !matches!(
                broken.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) {
                return Err(broken.into());
            }
            tokio::time::sleep(retry).await;
            // With several coordinators, the one in use may be gone: any live one serves the
            // feed; the leader is found first.
            let _ = self.to_leader().await;
        }
    }

    /// Follows an operation to its end; `on_event` sees every event. Returns the final operation.
    pub async fn wait(
        &mut self,
        id: &str,
        mut on_event: impl FnMut(&pb::OperationEvent),
    ) -> Result<pb::Operation, ClientError> {
        use tokio_stream::StreamExt;
        // Events already seen: a watch started again (on the next leader) replays from the
        // first.
        let mut seen = 0u64;
        loop {
            let watched = async {
                let mut s = self
                    .ops
                    .watch_operation(pb::OperationRef { id: id.into() })
                    .await?
                    .into_inner();
                while let Some(e) = s.next().await {
                    let e = e?;
                    if e.seq > seen {
                        seen = e.seq;
                        on_event(&e);
                    }
                }
                self.ops
                    .get_operation(pb::OperationRef { id: id.into() })
                    .await
                    .map(tonic::Response::into_inner)
            }
            .await;
            match watched {
                Ok(op) => return Ok(op),
                Err(s)
                    if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                        && self.to_leader().await.unwrap_or(false) => {}
                Err(s) => return Err(s.into()),
            }
        }
    }
}

/// Parses sizes like `512`, `64M`, `64MiB`, `2G`, `1T` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Short lowercase name of a protobuf enum value (`DOMAIN_STATE_SHUT_OFF` → `shut-off`).
pub fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
        .replace('_', "-")
}

pub fn state_name(v: i32) -> String {
    pb::DomainState::try_from(v)
        .map(|s| enum_name(s.as_str_name(), "DOMAIN_STATE_"))
        .unwrap_or_else(|_| format!("unknown({v})"))
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        // A port nobody listens on (bound, then closed).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = AgentClient::connect(&addr).await.unwrap_err().to_string();
        assert!(
            e.contains("transport error") && e.to_lowercase().contains("refused"),
            "{e}"
        );
    }

    #[test]
    fn tls_failures_name_the_certificates() {
        let s = tonic::Status::unavailable("h2 protocol error: http2 error");
        let d = describe(&s);
        assert!(d.contains("--ca") && d.contains("certificate"), "{d}");
        assert!(tls_hint("connection refused").is_none());
        assert!(tls_hint("stream closed because of a broken pipe").is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(state_name(3), "shut-off");
        assert_eq!(state_name(99), "unknown(99)");
    }
}
