//! Durable state behind the [`Store`] trait, implemented once in SQL ([`sql::SqlStore`]) over
//! two databases: [`Sqlite`] (embedded, the default) and [`Postgres`] (networked, for several
//! coordinators), chosen in the configuration ([`open`]).
//!
//! SQLite runs in WAL mode. With `synchronous = NORMAL` (the default) a committed write
//! survives a crash of the process (kill -9); with `FULL` it also survives power loss, at the
//! price of an fsync per commit. The schema is versioned: each database's migrations (the same
//! numbered steps in its dialect) are applied in order, each in its own transaction, and
//! `schema_version` records the last one.

use std::path::Path;

pub use crate::access::BaseAccess;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

mod migrate;
pub mod postgres;
pub mod sql;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

/// What the store can fail with, grouped by what the caller does about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change is not allowed from the record's current state.
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(String),
    /// Another coordinator leads now: nothing was written.
    #[error("not the leader: {0}")]
    NotLeader(String),
}

/// The leader's lease as read after claiming or renewing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    /// The caller holds it.
    pub mine: bool,
    pub holder: String,
    /// Where clients reach the leader.
    pub address: String,
    /// One more at each change of holder.
    pub term: i64,
    /// Made once with the lease row: the terms of one database (agents fence by both, so a
    /// coordinator on a fresh database is not refused for its low term).
    pub cluster: String,
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Database(format!("stored JSON: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => {
                return Err(StoreError::Database(format!(
                    "unknown operation state {s:?}"
                )))
            }
        })
    }
    /// Allowed transitions: queued → running → terminal; queued → cancelled/failed.
    pub fn can_become(self, next: OpState) -> bool {
        matches!(
            (self, next),
            (Self::Queued, Self::Running)
                | (Self::Queued, Self::Cancelled)
                | (Self::Queued, Self::Failed)
                | (Self::Running, Self::Succeeded)
                | (Self::Running, Self::Failed)
                | (Self::Running, Self::Cancelled)
        )
    }
}

/// A long operation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: String,
    pub kind: String,
    /// The VM the operation works on (work on one VM is serialised).
    pub vm: Option<String>,
    pub host: Option<String>,
    pub user: Option<String>,
    pub state: OpState,
    pub idempotency_key: Option<String>,
    pub request: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One event in an operation's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpEvent {
    pub op_id: String,
    /// 1, 2, 3... in the order they happened.
    pub seq: u64,
    pub at_ms: i64,
    pub phase: String,
    pub percent: Option<f32>,
    pub bytes: Option<u64>,
    pub message: String,
    /// Set on the last event: the operation's final state.
    pub state: Option<OpState>,
}

/// A host the coordinator knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub address: String,
    pub enabled: bool,
    pub last_seen_ms: i64,
}

/// A VM the coordinator knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub owner: String,
    pub base: Option<String>,
    pub host: Option<String>,
    pub desired_state: crate::states::Desired,
    pub observed_state: crate::states::Observed,
    /// Pools, volatile clones, run timeouts and the rest come as fields of this spec.
    pub spec: serde_json::Value,
}

impl VmRecord {
    /// The libvirt domain on its host: the VM's own name, or, for a VM handed out from a
    /// pool, the pool clone's (a running domain cannot be renamed).
    pub fn domain(&self) -> &str {
        self.spec
            .get("domain")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(&self.name)
    }

    /// A pool clone waiting to be handed out.
    pub fn is_pool(&self) -> bool {
        self.spec.get("pool").and_then(serde_json::Value::as_bool) == Some(true)
    }
}

/// How many ready clones a base keeps (`pool_clones`), and how many of them run (`pool_start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSize {
    pub clones: u32,
    pub start: u32,
}

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 of the token (the token itself is never stored).
    pub hash: String,
    pub user: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

impl TokenRecord {
    /// How a token is named when listed or revoked: the start of its hash (not a secret).
    pub fn id(&self) -> &str {
        &self.hash[..self.hash.len().min(12)]
    }
}

/// A user and their role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
    /// Attributes that ordered access rules match on (group, course...).
    pub attributes: serde_json::Value,
}

/// Durable state. Blocking: call from a blocking thread.
pub trait Store: Send + Sync {
    /// Stores a new operation; with an idempotency key already used, returns the existing
    /// operation instead and `false`.
    fn create_operation(&self, op: &OpRecord) -> Result<(OpRecord, bool)>;
    fn operation(&self, id: &str) -> Result<OpRecord>;
    fn operations(&self, unfinished_only: bool) -> Result<Vec<OpRecord>>;
    /// Moves an operation to `state` (checked against the allowed transitions).
    fn set_operation_state(
        &self,
        id: &str,
        state: OpState,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<()>;
    /// Appends an event, assigning its sequence number; returns the stored event.
    fn append_event(&self, event: &OpEvent) -> Result<OpEvent>;
    /// Events with `seq > after`, in order.
    fn events(&self, op_id: &str, after: u64) -> Result<Vec<OpEvent>>;

    fn put_host(&self, host: &HostRecord) -> Result<()>;
    /// Stores a new host: AlreadyExists when its name or its agent's address is taken.
    fn insert_host(&self, host: &HostRecord) -> Result<()>;
    fn hosts(&self) -> Result<Vec<HostRecord>>;
    fn remove_host(&self, name: &str) -> Result<()>;

    fn put_vm(&self, vm: &VmRecord) -> Result<()>;
    /// Stores a new VM: AlreadyExists when a VM or a base has its name (one namespace),
    /// checked in the transaction that inserts it.
    fn insert_vm(&self, vm: &VmRecord) -> Result<()>;
    /// What holds a name in the namespace of VMs and bases: `Some("VM")`, `Some("base")`.
    fn name_taken(&self, name: &str) -> Result<Option<&'static str>>;
    fn vm(&self, name: &str) -> Result<VmRecord>;
    fn vms(&self) -> Result<Vec<VmRecord>>;
    /// The VMs placed on `host` (an index: a host's reconciliation reads only its own).
    fn vms_on(&self, host: &str) -> Result<Vec<VmRecord>>;
    /// The volatile VMs only (what the reaper reads every second).
    fn volatile_vms(&self) -> Result<Vec<VmRecord>>;
    /// The pool clones (not handed out yet) of every base.
    fn pool_vms(&self) -> Result<Vec<VmRecord>>;
    /// (name, host, domain) of every running VM: what the guest watcher sweeps, without
    /// reading whole records.
    fn running_domains(&self) -> Result<Vec<(String, String, String)>>;
    /// The running VMs a timeout may apply to: a run timeout of their own, or a base among
    /// `bases` (the bases with timeouts).
    fn vms_with_timeouts(&self, bases: &[String]) -> Result<Vec<VmRecord>>;
    /// How many VMs are in each observed state.
    fn vm_states(&self) -> Result<Vec<(String, u64)>>;
    /// How many VMs each host holds (hosts without VMs are absent).
    fn vms_per_host(&self) -> Result<HashMap<String, u32>>;
    /// How many clones each base has (bases without clones are absent).
    fn clones_per_base(&self) -> Result<HashMap<String, u32>>;
    /// The names of one base's clones (an index: removing a base reads only its own).
    fn clones_of(&self, base: &str) -> Result<Vec<String>>;
    /// One owner's VMs.
    fn vms_of_owner(&self, owner: &str) -> Result<Vec<VmRecord>>;
    /// Hands pool clone `pool_vm` out as `vm` in one step: the pool clone's record goes, the
    /// user's comes. NotFound when it is no longer a pool clone (another took it),
    /// AlreadyExists when `vm`'s name is taken; then nothing changed.
    fn hand_out(&self, pool_vm: &str, vm: &VmRecord) -> Result<()>;
    /// How many VMs `owner` has on each host.
    fn vm_counts_of(&self, owner: &str) -> Result<Vec<(String, u32)>>;
    fn remove_vm(&self, name: &str) -> Result<()>;

    /// Records a base (idempotent) with what its clones need (`{"vcpus": .., "memory": ..}`).
    fn put_base(&self, name: &str, parent: Option<&str>, spec: &serde_json::Value) -> Result<()>;
    fn base_spec(&self, name: &str) -> Result<serde_json::Value>;
    /// The base a base was made from, if any.
    fn base_parent(&self, name: &str) -> Result<Option<String>>;
    fn remove_base(&self, name: &str) -> Result<()>;
    /// Records that a base's files are on a host.
    fn set_base_host(&self, base: &str, host: &str, present: bool) -> Result<()>;
    /// Every base with the hosts that hold it.
    fn bases(&self) -> Result<Vec<(String, Vec<String>)>>;
    /// Every base's name (without the hosts holding it).
    fn base_names(&self) -> Result<Vec<String>>;
    /// The hosts holding one base (NotFound for no such base).
    fn base_holders(&self, name: &str) -> Result<Vec<String>>;
    /// Who may clone a base.
    fn base_access(&self, name: &str) -> Result<BaseAccess>;
    fn set_base_access(&self, name: &str, access: &BaseAccess) -> Result<()>;
    /// Every base's pool size, by name (bases without a pool are left out).
    fn base_pools(&self) -> Result<std::collections::HashMap<String, PoolSize>>;
    fn set_base_pool(&self, name: &str, pool: &PoolSize) -> Result<()>;
    /// Every base's run and idle timeouts, by name (bases without any are left out).
    fn base_timeouts(&self) -> Result<std::collections::HashMap<String, crate::idle::Timeouts>>;
    fn set_base_timeouts(&self, name: &str, t: &crate::idle::Timeouts) -> Result<()>;
    /// A base's display policy (the default when none was set); NotFound for no base.
    fn base_display(&self, name: &str) -> Result<crate::display::DisplayPolicy>;
    fn set_base_display(&self, name: &str, d: &crate::display::DisplayPolicy) -> Result<()>;
    /// A base's post-load commands (empty when none).
    fn base_post_load(&self, name: &str) -> Result<crate::guests::PostLoad>;
    fn set_base_post_load(&self, name: &str, p: &crate::guests::PostLoad) -> Result<()>;
    /// Named sizes (plans), by name.
    fn plans(&self) -> Result<Vec<crate::plans::Plan>>;
    fn plan(&self, name: &str) -> Result<crate::plans::Plan>;
    /// AlreadyExists for a name taken.
    fn insert_plan(&self, plan: &crate::plans::Plan) -> Result<()>;
    fn remove_plan(&self, name: &str) -> Result<()>;
    /// Every base's access, by name.
    fn base_accesses(&self) -> Result<std::collections::HashMap<String, BaseAccess>>;

    /// Every image version, by name then version.
    fn images(&self) -> Result<Vec<crate::images::ImageRecord>>;
    /// AlreadyExists for a (name, version) taken.
    fn insert_image(&self, image: &crate::images::ImageRecord) -> Result<()>;
    fn remove_image(&self, name: &str, version: u32) -> Result<()>;
    /// Every backup (`backups::BackupRecord`), by VM then number.
    fn backups(&self) -> Result<Vec<crate::backups::BackupRecord>>;
    /// AlreadyExists for a (VM, number) taken.
    fn insert_backup(&self, backup: &crate::backups::BackupRecord) -> Result<()>;
    fn remove_backup(&self, vm: &str, number: u32) -> Result<()>;
    /// Hosts that keep the image repository.
    fn repository_hosts(&self) -> Result<Vec<String>>;
    fn set_repository_host(&self, host: &str, on: bool) -> Result<()>;
    /// The image version a base was loaded from (`name:version`), recorded with the base.
    fn set_base_image(&self, base: &str, image: &str) -> Result<()>;
    /// Every base loaded from an image, with its `name:version`.
    fn base_images(&self) -> Result<Vec<(String, String)>>;

    fn put_user(&self, user: &UserRecord) -> Result<()>;
    /// Stores a new user: AlreadyExists when the name is taken (never overwrites).
    fn insert_user(&self, user: &UserRecord) -> Result<()>;
    fn users(&self) -> Result<Vec<UserRecord>>;
    /// Every token hash with its user (to fill the authentication cache).
    fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Stores the hash of a new API token for a user, with its expiry (ms since the epoch).
    fn add_token(&self, user: &str, token_hash: &str, expires_ms: Option<i64>) -> Result<()>;
    /// Removes a token by its hash.
    fn remove_token(&self, token_hash: &str) -> Result<()>;
    /// Removes a user and (by the foreign key) their tokens.
    fn remove_user(&self, name: &str) -> Result<()>;
    fn user_by_token(&self, token_hash: &str) -> Result<UserRecord>;

    /// Claims or renews the leader's lease for `me` (reachable at `address`) for `lease_ms`
    /// of the database's clock: taken when it expired, renewed when held; who holds it now.
    fn lead(&self, me: &str, address: &str, lease_ms: i64) -> Result<Lead>;
    /// Every batch from now on first checks that this lease is still held (None: no check).
    fn set_fence(&self, fence: Option<(String, i64)>) -> Result<()>;

    /// Up to `limit` feed rows after `after`, oldest first, that `viewer` may see (`None`:
    /// an admin, who sees all; a user sees rows naming them as owner).
    fn feed(&self, after: u64, viewer: Option<&str>, limit: usize) -> Result<FeedPage>;
    /// Appends a row no trigger writes (hosts' liveness); its sequence number.
    fn append_feed(
        &self,
        kind: &str,
        subject: &str,
        owner: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<u64>;

    /// Group commit (see [`crate::db`]): a batch is one transaction, each call in it a
    /// savepoint that `end_call(false)` rolls back. Stores without batches do nothing.
    fn begin_batch(&self) -> Result<()> {
        Ok(())
    }
    fn end_batch(&self) -> Result<()> {
        Ok(())
    }
    fn abort_batch(&self) -> Result<()> {
        Ok(())
    }
    fn begin_call(&self) -> Result<()> {
        Ok(())
    }
    fn end_call(&self, _keep: bool) -> Result<()> {
        Ok(())
    }
}

/// How many feed rows are kept (older ones are removed, a thousand at a time).
pub const FEED_KEPT: u64 = 100_000;

/// One row of the events feed as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    pub seq: u64,
    pub at_ms: i64,
    /// `vm`, `operation` or `host`.
    pub kind: String,
    /// The VM's name, the operation's id or the host's name.
    pub subject: String,
    pub body: serde_json::Value,
}

/// A page of the feed: rows after the asked position, and the feed's bounds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeedPage {
    /// The oldest row still kept (0: none).
    pub oldest: u64,
    /// The newest row (0: none).
    pub newest: u64,
    pub rows: Vec<FeedRow>,
}

/// Makes a file owner-only (0600), if it exists (the database's files, token files).
pub fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Database(format!("{}: {e}", path.display()))),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
