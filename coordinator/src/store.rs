//! Durable state behind the [`Store`] trait; [`Sqlite`] is the embedded implementation.
//!
//! SQLite runs in WAL mode. With `synchronous = NORMAL` (the default) a committed write
//! survives a crash of the process (kill -9); with `FULL` it also survives power loss, at the
//! price of an fsync per commit. The schema is versioned: [`MIGRATIONS`] are applied in order,
//! each in its own transaction, and `schema_version` records the last one. A networked
//! database (PostgreSQL, for HA) will implement the same trait.

use std::path::Path;
use std::sync::Mutex;

use crate::access::BaseAccess;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

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
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                // The database's own text (table and column names) means nothing to a user.
                Self::AlreadyExists("a stored record with the same key".into())
            }
            _ => Self::Database(e.to_string()),
        }
    }
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
    /// The volatile VMs only (what the reaper reads every second).
    fn volatile_vms(&self) -> Result<Vec<VmRecord>>;
    /// The pool clones (not handed out yet) of every base.
    fn pool_vms(&self) -> Result<Vec<VmRecord>>;
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

/// Schema migrations, applied in order; never edit one that has shipped, add a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        enabled INTEGER NOT NULL DEFAULT 1,
        last_seen_ms INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE bases (
        name TEXT PRIMARY KEY,
        parent TEXT REFERENCES bases(name),
        spec TEXT NOT NULL DEFAULT '{}'
     );
     CREATE TABLE base_hosts (
        base TEXT NOT NULL REFERENCES bases(name) ON DELETE CASCADE,
        host TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
        state TEXT NOT NULL,
        PRIMARY KEY (base, host)
     );
     CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        attributes TEXT NOT NULL DEFAULT '{}'
     );
     CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        base TEXT,
        host TEXT,
        desired_state TEXT NOT NULL,
        observed_state TEXT NOT NULL,
        spec TEXT NOT NULL DEFAULT '{}'
     );
     CREATE TABLE operations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        vm TEXT,
        host TEXT,
        user TEXT,
        state TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        request TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     CREATE INDEX operations_unfinished ON operations(state) WHERE state IN ('queued', 'running');
     CREATE TABLE operation_events (
        op_id TEXT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        phase TEXT NOT NULL,
        percent REAL,
        bytes INTEGER,
        message TEXT NOT NULL,
        state TEXT,
        PRIMARY KEY (op_id, seq)
     );",
    // 2: placement counts a user's VMs per host without reading every VM.
    "CREATE INDEX vms_owner ON vms(owner, host);",
    // 3: who may clone a base (`access::BaseAccess` as JSON). Bases made before access
    // rules existed stay open to every user, as they were; new ones start private.
    "ALTER TABLE bases ADD COLUMN access TEXT NOT NULL DEFAULT '{\"public\":true,\"rules\":[]}';",
    // 4: tokens that expire (NULL: never).
    "ALTER TABLE tokens ADD COLUMN expires_ms INTEGER;",
    // 5: the volatile reaper reads only volatile VMs, through an index.
    "CREATE INDEX vms_volatile ON vms(json_extract(spec, '$.volatile'));",
    // 6: pools of ready clones: each base's sizes, and an index to find pool clones.
    "ALTER TABLE bases ADD COLUMN pool TEXT;
     CREATE INDEX vms_pool ON vms(json_extract(spec, '$.pool'));",
    // 7: run and idle timeouts per base (`idle::Timeouts` as JSON; NULL: none).
    "ALTER TABLE bases ADD COLUMN timeouts TEXT;",
    // 8: display policy per base (`display::DisplayPolicy` as JSON; NULL: the default).
    "ALTER TABLE bases ADD COLUMN display TEXT;",
    // 9: plans, named sizes for clones and VMs.
    "CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        memory_mib INTEGER NOT NULL,
        vcpus INTEGER NOT NULL,
        disk_bytes INTEGER NOT NULL
     );",
    // 10: commands run in a base's clones after each boot (`guests::PostLoad` as JSON).
    "ALTER TABLE bases ADD COLUMN post_load TEXT;",
    // 11: the image repository: versions (`images::ImageRecord` as JSON), the hosts that keep
    // it, and the image version each base was loaded from.
    "CREATE TABLE images (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (name, version)
     );
     CREATE TABLE repository_hosts (host TEXT PRIMARY KEY);
     ALTER TABLE bases ADD COLUMN image TEXT;",
    // 12: backups of VMs (`backups::BackupRecord` as JSON), numbered per VM name; they
    // outlive their VM.
    "CREATE TABLE backups (
        vm TEXT NOT NULL,
        number INTEGER NOT NULL,
        owner TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (vm, number)
     );",
    // 13: the events feed (`events`): every change of a VM, an operation or a host, numbered,
    // with who besides admins may see it (NULL: admins only). Triggers write it in the same
    // transaction as the change, so a reader resuming after N misses nothing; hosts' liveness
    // is appended by the coordinator. The oldest rows go past 100,000.
    "CREATE TABLE feed (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        owner TEXT,
        body TEXT NOT NULL
     );
     CREATE INDEX feed_owner ON feed(owner, seq);
     CREATE TRIGGER feed_vm_created AFTER INSERT ON vms BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'vm', new.name, new.owner,
          json_object('event', 'created', 'state', new.observed_state,
                      'desired', new.desired_state, 'host', new.host));
     END;
     CREATE TRIGGER feed_vm_changed AFTER UPDATE ON vms
       WHEN old.observed_state IS NOT new.observed_state OR old.desired_state IS NOT new.desired_state
         OR old.host IS NOT new.host OR old.owner IS NOT new.owner OR old.name IS NOT new.name
     BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'vm', new.name, new.owner,
          json_object('event', 'changed', 'state', new.observed_state,
                      'desired', new.desired_state, 'host', new.host));
     END;
     CREATE TRIGGER feed_vm_removed AFTER DELETE ON vms BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'vm', old.name, old.owner,
          json_object('event', 'removed', 'state', old.observed_state,
                      'desired', old.desired_state, 'host', old.host));
     END;
     CREATE TRIGGER feed_op_created AFTER INSERT ON operations BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          new.created_ms, 'operation', new.id, new.user,
          json_object('event', 'created', 'kind', new.kind, 'vm', new.vm, 'state', new.state));
     END;
     CREATE TRIGGER feed_op_state AFTER UPDATE OF state ON operations
       WHEN old.state IS NOT new.state
     BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          new.updated_ms, 'operation', new.id, new.user,
          json_object('event', 'state', 'kind', new.kind, 'vm', new.vm, 'state', new.state,
                      'error', new.error));
     END;
     CREATE TRIGGER feed_op_progress AFTER INSERT ON operation_events BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body)
        SELECT new.at_ms, 'operation', o.id, o.user,
          json_object('event', 'progress', 'kind', o.kind, 'vm', o.vm, 'state', o.state,
                      'phase', new.phase, 'percent', new.percent, 'message', new.message)
        FROM operations o WHERE o.id = new.op_id;
     END;
     CREATE TRIGGER feed_host_added AFTER INSERT ON hosts BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'host', new.name, NULL,
          json_object('event', 'added', 'enabled', json(CASE WHEN new.enabled THEN 'true' ELSE 'false' END)));
     END;
     CREATE TRIGGER feed_host_enabled AFTER UPDATE OF enabled ON hosts
       WHEN old.enabled IS NOT new.enabled
     BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'host', new.name, NULL,
          json_object('event', CASE WHEN new.enabled THEN 'enabled' ELSE 'disabled' END));
     END;
     CREATE TRIGGER feed_host_removed AFTER DELETE ON hosts BEGIN
        INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
          CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'host', old.name, NULL,
          json_object('event', 'removed'));
     END;
     CREATE TRIGGER feed_keep AFTER INSERT ON feed WHEN new.seq % 1000 = 0 BEGIN
        DELETE FROM feed WHERE seq <= new.seq - 100000;
     END;",
];

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

fn plan_from_row(r: &rusqlite::Row) -> rusqlite::Result<crate::plans::Plan> {
    Ok(crate::plans::Plan {
        name: r.get(0)?,
        memory_mib: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        vcpus: r.get(2)?,
        disk_bytes: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
    })
}

/// What a base records for access when it is first made: private, no rules.
const PRIVATE: &str = r#"{"public":false,"rules":[]}"#;

/// The embedded store.
pub struct Sqlite {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sqlite")
    }
}

fn db<T>(_: T) -> StoreError {
    StoreError::Database("store lock poisoned".into())
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    let (hash, user, created_ms, expires_ms) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    Ok(TokenRecord {
        hash,
        user,
        created_ms,
        expires_ms,
    })
}

fn op_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(OpRecord, String, String, Option<String>)> {
    Ok((
        OpRecord {
            id: r.get(0)?,
            kind: r.get(1)?,
            vm: r.get(2)?,
            host: r.get(3)?,
            user: r.get(4)?,
            state: OpState::Queued,
            idempotency_key: r.get(6)?,
            request: serde_json::Value::Null,
            result: None,
            error: r.get(9)?,
            created_ms: r.get(10)?,
            updated_ms: r.get(11)?,
        },
        r.get::<_, String>(5)?,
        r.get::<_, String>(7)?,
        r.get::<_, Option<String>>(8)?,
    ))
}

fn finish_op(parts: (OpRecord, String, String, Option<String>)) -> Result<OpRecord> {
    let (mut op, state, request, result) = parts;
    op.state = OpState::parse(&state)?;
    op.request = serde_json::from_str(&request)?;
    op.result = result.map(|r| serde_json::from_str(&r)).transpose()?;
    Ok(op)
}

const VM_COLUMNS: &str = "name, owner, base, host, desired_state, observed_state, spec";

fn vm_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(VmRecord, String)> {
    Ok((
        VmRecord {
            name: r.get(0)?,
            owner: r.get(1)?,
            base: r.get(2)?,
            host: r.get(3)?,
            desired_state: crate::states::Desired::parse(&r.get::<_, String>(4)?),
            observed_state: crate::states::Observed::parse(&r.get::<_, String>(5)?),
            spec: serde_json::Value::Null,
        },
        r.get(6)?,
    ))
}

fn finish_vm((mut vm, spec): (VmRecord, String)) -> Result<VmRecord> {
    vm.spec = serde_json::from_str(&spec)?;
    Ok(vm)
}

const OP_COLUMNS: &str = "id, kind, vm, host, user, state, idempotency_key, request, result, error, created_ms, updated_ms";

/// Makes a file owner-only (0600), if it exists (the database's files, token files).
pub fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Database(format!("{}: {e}", path.display()))),
    }
}

/// What holds `name` in the one namespace of VMs and bases.
fn taken(conn: &Connection, name: &str) -> Result<Option<&'static str>> {
    let what: Option<String> = conn
        .row(
            "SELECT 'VM' FROM vms WHERE name = ?1 UNION ALL SELECT 'base' FROM bases WHERE name = ?1 LIMIT 1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(what.map(|w| if w == "VM" { "VM" } else { "base" }))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sqlite {
    /// The VMs that `condition` (SQL over the vms table) selects, by name.
    fn vms_where(&self, condition: &str) -> Result<Vec<VmRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE {condition} ORDER BY name");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], vm_from_row)?;
        rows.map(|row| finish_vm(row?)).collect()
    }

    /// The one row `sql` finds for `key` (its only parameter); `what` names it when missing.
    fn one<T>(
        &self,
        sql: &str,
        key: &str,
        from_row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        what: &str,
    ) -> Result<T> {
        let conn = self.conn.lock().map_err(db)?;
        conn.row(sql, [key], from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("{what} {key}")))
    }

    /// Opens (creating if needed) the database and brings its schema up to date, with
    /// `synchronous = NORMAL`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, false)
    }

    /// Opens with `synchronous = FULL` when `full_sync` (power-loss safe), else `NORMAL`.
    pub fn open_with(path: &Path, full_sync: bool) -> Result<Self> {
        // The database holds token hashes: owner-only, created so (no window where it is
        // readable) and narrowed when it exists, with its WAL and shared-memory files.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
        }
        private(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            private(Path::new(&side))?;
        }
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<usize> {
        let conn = self.conn.lock().map_err(db)?;
        version(&conn)
    }
}

fn version(conn: &Connection) -> Result<usize> {
    let v: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(v).unwrap_or(0))
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL);",
    )?;
    let current = version(conn)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
            params![i as i64 + 1, now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}

/// Every statement of the store is prepared once per connection and reused: parsing SQL
/// was a large part of an operation's cost.
trait Cached {
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

impl Store for Sqlite {
    fn feed(&self, after: u64, viewer: Option<&str>, limit: usize) -> Result<FeedPage> {
        let conn = self.conn.lock().map_err(db)?;
        let (oldest, newest): (i64, i64) = conn.row(
            "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM feed",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        };
        let raw: Vec<_> = match viewer {
            None => conn
                .prepare_cached(
                    "SELECT seq, at_ms, kind, subject, body FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![after, limit], read)?
                .collect::<rusqlite::Result<_>>()?,
            Some(user) => conn
                .prepare_cached(
                    "SELECT seq, at_ms, kind, subject, body FROM feed WHERE owner = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![after, limit, user], read)?
                .collect::<rusqlite::Result<_>>()?,
        };
        let rows = raw
            .into_iter()
            .map(|(seq, at_ms, kind, subject, body)| {
                Ok(FeedRow {
                    seq: u64::try_from(seq).unwrap_or(0),
                    at_ms,
                    kind,
                    subject,
                    body: serde_json::from_str(&body)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FeedPage {
            oldest: u64::try_from(oldest).unwrap_or(0),
            newest: u64::try_from(newest).unwrap_or(0),
            rows,
        })
    }

    fn append_feed(
        &self,
        kind: &str,
        subject: &str,
        owner: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<u64> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), kind, subject, owner, serde_json::to_string(body)?],
        )?;
        Ok(u64::try_from(conn.last_insert_rowid()).unwrap_or(0))
    }

    fn begin_batch(&self) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        Ok(conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn end_batch(&self) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }

    fn abort_batch(&self) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        Ok(conn.execute_batch("ROLLBACK")?)
    }

    fn begin_call(&self) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        Ok(conn.execute_batch("SAVEPOINT corral_call")?)
    }

    fn end_call(&self, keep: bool) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        Ok(conn.execute_batch(if keep {
            "RELEASE corral_call"
        } else {
            "ROLLBACK TO corral_call; RELEASE corral_call"
        })?)
    }

    fn create_operation(&self, op: &OpRecord) -> Result<(OpRecord, bool)> {
        let mut conn = self.conn.lock().map_err(db)?;
        let tx = conn.savepoint()?;
        if let Some(key) = &op.idempotency_key {
            let existing = tx
                .row(
                    &format!("SELECT {OP_COLUMNS} FROM operations WHERE idempotency_key = ?1"),
                    [key],
                    op_from_row,
                )
                .optional()?;
            if let Some(parts) = existing {
                return Ok((finish_op(parts)?, false));
            }
        }
        tx.exec(
            &format!("INSERT INTO operations ({OP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                op.id,
                op.kind,
                op.vm,
                op.host,
                op.user,
                op.state.as_str(),
                op.idempotency_key,
                serde_json::to_string(&op.request)?,
                op.result.as_ref().map(serde_json::to_string).transpose()?,
                op.error,
                op.created_ms,
                op.updated_ms
            ],
        )?;
        tx.commit()?;
        Ok((op.clone(), true))
    }

    fn operation(&self, id: &str) -> Result<OpRecord> {
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1");
        finish_op(self.one(&sql, id, op_from_row, "operation")?)
    }

    fn operations(&self, unfinished_only: bool) -> Result<Vec<OpRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let sql = if unfinished_only {
            format!("SELECT {OP_COLUMNS} FROM operations WHERE state IN ('queued', 'running') ORDER BY created_ms, id")
        } else {
            format!("SELECT {OP_COLUMNS} FROM operations ORDER BY created_ms, id")
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], op_from_row)?;
        rows.map(|r| finish_op(r?)).collect()
    }

    fn set_operation_state(
        &self,
        id: &str,
        state: OpState,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn.lock().map_err(db)?;
        let tx = conn.savepoint()?;
        let current: String = tx
            .row("SELECT state FROM operations WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("operation {id}")))?;
        let current = OpState::parse(&current)?;
        if !current.can_become(state) {
            return Err(StoreError::Conflict(format!(
                "operation {id} cannot go from {} to {}",
                current.as_str(),
                state.as_str()
            )));
        }
        tx.exec(
            "UPDATE operations SET state = ?2, result = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
            params![id, state.as_str(), result.map(serde_json::to_string).transpose()?, error, now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn append_event(&self, event: &OpEvent) -> Result<OpEvent> {
        let mut conn = self.conn.lock().map_err(db)?;
        let tx = conn.savepoint()?;
        let seq: i64 = tx.row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM operation_events WHERE op_id = ?1",
            [&event.op_id],
            |r| r.get(0),
        )?;
        tx.exec(
            "INSERT INTO operation_events (op_id, seq, at_ms, phase, percent, bytes, message, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                event.op_id,
                seq,
                event.at_ms,
                event.phase,
                event.percent,
                event.bytes.map(|b| b as i64),
                event.message,
                event.state.map(OpState::as_str)
            ],
        )?;
        tx.commit()?;
        Ok(OpEvent {
            seq: u64::try_from(seq).unwrap_or(0),
            ..event.clone()
        })
    }

    fn events(&self, op_id: &str, after: u64) -> Result<Vec<OpEvent>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT op_id, seq, at_ms, phase, percent, bytes, message, state FROM operation_events WHERE op_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![op_id, after as i64], |r| {
            Ok((
                OpEvent {
                    op_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    at_ms: r.get(2)?,
                    phase: r.get(3)?,
                    percent: r.get(4)?,
                    bytes: r.get::<_, Option<i64>>(5)?.map(|b| b as u64),
                    message: r.get(6)?,
                    state: None,
                },
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        rows.map(|row| {
            let (mut e, state) = row?;
            e.state = state.map(|s| OpState::parse(&s)).transpose()?;
            Ok(e)
        })
        .collect()
    }

    fn put_host(&self, h: &HostRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO hosts (name, address, enabled, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET address = ?2, enabled = ?3, last_seen_ms = ?4",
            params![h.name, h.address, h.enabled, h.last_seen_ms],
        )?;
        Ok(())
    }

    fn insert_host(&self, h: &HostRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let taken: Option<(String, String)> = conn
            .row(
                "SELECT name, address FROM hosts WHERE name = ?1 OR address = ?2",
                params![h.name, h.address],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match taken {
            Some((n, _)) if n == h.name => Err(StoreError::AlreadyExists(format!("host {n}"))),
            Some((n, a)) => Err(StoreError::AlreadyExists(format!(
                "agent address {a} (host {n})"
            ))),
            None => {
                conn.exec(
                    "INSERT INTO hosts (name, address, enabled, last_seen_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![h.name, h.address, h.enabled, h.last_seen_ms],
                )?;
                Ok(())
            }
        }
    }

    fn hosts(&self) -> Result<Vec<HostRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, address, enabled, last_seen_ms FROM hosts ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HostRecord {
                name: r.get(0)?,
                address: r.get(1)?,
                enabled: r.get(2)?,
                last_seen_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_host(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM hosts WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("host {name}")));
        }
        Ok(())
    }

    fn put_vm(&self, vm: &VmRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO vms (name, owner, base, host, desired_state, observed_state, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name) DO UPDATE SET owner = ?2, base = ?3, host = ?4, desired_state = ?5, observed_state = ?6, spec = ?7",
            params![vm.name, vm.owner, vm.base, vm.host, vm.desired_state.as_str(), vm.observed_state.as_str(), serde_json::to_string(&vm.spec)?],
        )?;
        Ok(())
    }

    fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if let Some(what) = taken(&conn, &vm.name)? {
            return Err(StoreError::AlreadyExists(format!("{what} {}", vm.name)));
        }
        conn.exec(
            "INSERT INTO vms (name, owner, base, host, desired_state, observed_state, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![vm.name, vm.owner, vm.base, vm.host, vm.desired_state.as_str(), vm.observed_state.as_str(), serde_json::to_string(&vm.spec)?],
        )?;
        Ok(())
    }

    fn name_taken(&self, name: &str) -> Result<Option<&'static str>> {
        let conn = self.conn.lock().map_err(db)?;
        taken(&conn, name)
    }

    fn vm(&self, name: &str) -> Result<VmRecord> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE name = ?1");
        finish_vm(self.one(&sql, name, vm_from_row, "VM")?)
    }

    fn vm_counts_of(&self, owner: &str) -> Result<Vec<(String, u32)>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT host, COUNT(*) FROM vms WHERE owner = ?1 AND host IS NOT NULL GROUP BY host",
        )?;
        let rows = stmt.query_map([owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn vms(&self) -> Result<Vec<VmRecord>> {
        self.vms_where("1")
    }

    fn volatile_vms(&self) -> Result<Vec<VmRecord>> {
        // The same expression as the index of migration 5, so that SQLite uses it.
        self.vms_where("json_extract(spec, '$.volatile') = 1")
    }

    fn pool_vms(&self) -> Result<Vec<VmRecord>> {
        // The same expression as the index of migration 6.
        self.vms_where("json_extract(spec, '$.pool') = 1")
    }

    fn hand_out(&self, pool_vm: &str, vm: &VmRecord) -> Result<()> {
        // One store thread runs calls one at a time, inside its batch's transaction: checked
        // first, then changed, nothing else comes between.
        let conn = self.conn.lock().map_err(db)?;
        if let Some(what) = taken(&conn, &vm.name)? {
            return Err(StoreError::AlreadyExists(format!("{what} {}", vm.name)));
        }
        let gone = conn.exec(
            "DELETE FROM vms WHERE name = ?1 AND json_extract(spec, '$.pool') = 1",
            [pool_vm],
        )?;
        if gone == 0 {
            return Err(StoreError::NotFound(format!("pool clone {pool_vm}")));
        }
        conn.exec(
            "INSERT INTO vms (name, owner, base, host, desired_state, observed_state, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![vm.name, vm.owner, vm.base, vm.host, vm.desired_state.as_str(), vm.observed_state.as_str(), serde_json::to_string(&vm.spec)?],
        )?;
        Ok(())
    }

    fn remove_vm(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM vms WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("VM {name}")));
        }
        Ok(())
    }

    fn put_base(&self, name: &str, parent: Option<&str>, spec: &serde_json::Value) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO bases (name, parent, spec, access) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET parent = ?2, spec = ?3",
            params![name, parent, serde_json::to_string(spec)?, PRIVATE],
        )?;
        Ok(())
    }

    fn base_spec(&self, name: &str) -> Result<serde_json::Value> {
        let conn = self.conn.lock().map_err(db)?;
        let spec: String = conn
            .row("SELECT spec FROM bases WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("base {name}")))?;
        Ok(serde_json::from_str(&spec)?)
    }

    fn base_parent(&self, name: &str) -> Result<Option<String>> {
        let conn = self.conn.lock().map_err(db)?;
        conn.row("SELECT parent FROM bases WHERE name = ?1", [name], |r| {
            r.get::<_, Option<String>>(0)
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("base {name}")))
    }

    fn remove_base(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM bases WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn set_base_host(&self, base: &str, host: &str, present: bool) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if present {
            conn.exec(
                "INSERT INTO base_hosts (base, host, state) VALUES (?1, ?2, 'present')
                 ON CONFLICT(base, host) DO UPDATE SET state = 'present'",
                params![base, host],
            )?;
        } else {
            conn.exec(
                "DELETE FROM base_hosts WHERE base = ?1 AND host = ?2",
                params![base, host],
            )?;
        }
        Ok(())
    }

    fn bases(&self) -> Result<Vec<(String, Vec<String>)>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT b.name, bh.host FROM bases b LEFT JOIN base_hosts bh ON bh.base = b.name ORDER BY b.name, bh.host",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let (base, host) = row?;
            if out.last().map(|(b, _)| b != &base).unwrap_or(true) {
                out.push((base.clone(), Vec::new()));
            }
            if let (Some(h), Some(last)) = (host, out.last_mut()) {
                last.1.push(h);
            }
        }
        Ok(out)
    }

    fn base_access(&self, name: &str) -> Result<BaseAccess> {
        let text = self.one(
            "SELECT access FROM bases WHERE name = ?1",
            name,
            |r| r.get::<_, String>(0),
            "base",
        )?;
        Ok(serde_json::from_str(&text)?)
    }

    fn set_base_access(&self, name: &str, access: &BaseAccess) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let text = serde_json::to_string(access)?;
        if conn.exec(
            "UPDATE bases SET access = ?2 WHERE name = ?1",
            params![name, text],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn base_pools(&self) -> Result<std::collections::HashMap<String, PoolSize>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt =
            conn.prepare_cached("SELECT name, pool FROM bases WHERE pool IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (name, text) = row?;
            out.insert(name, serde_json::from_str(&text)?);
        }
        Ok(out)
    }

    fn set_base_pool(&self, name: &str, pool: &PoolSize) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let text = (pool.clones > 0)
            .then(|| serde_json::to_string(pool))
            .transpose()?;
        if conn.exec(
            "UPDATE bases SET pool = ?2 WHERE name = ?1",
            params![name, text],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn base_timeouts(&self) -> Result<std::collections::HashMap<String, crate::idle::Timeouts>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt =
            conn.prepare_cached("SELECT name, timeouts FROM bases WHERE timeouts IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (name, text) = row?;
            out.insert(name, serde_json::from_str(&text)?);
        }
        Ok(out)
    }

    fn set_base_timeouts(&self, name: &str, t: &crate::idle::Timeouts) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let text = (!t.is_none())
            .then(|| serde_json::to_string(t))
            .transpose()?;
        if conn.exec(
            "UPDATE bases SET timeouts = ?2 WHERE name = ?1",
            params![name, text],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn base_display(&self, name: &str) -> Result<crate::display::DisplayPolicy> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT display FROM bases WHERE name = ?1")?;
        let text: Option<Option<String>> =
            stmt.query_row(params![name], |r| r.get(0)).optional()?;
        match text {
            None => Err(StoreError::NotFound(format!("base {name}"))),
            Some(None) => Ok(Default::default()),
            Some(Some(t)) => Ok(serde_json::from_str(&t)?),
        }
    }

    fn set_base_display(&self, name: &str, d: &crate::display::DisplayPolicy) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let text = serde_json::to_string(d)?;
        if conn.exec(
            "UPDATE bases SET display = ?2 WHERE name = ?1",
            params![name, text],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn base_post_load(&self, name: &str) -> Result<crate::guests::PostLoad> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT post_load FROM bases WHERE name = ?1")?;
        let text: Option<Option<String>> =
            stmt.query_row(params![name], |r| r.get(0)).optional()?;
        match text {
            None => Err(StoreError::NotFound(format!("base {name}"))),
            Some(None) => Ok(Default::default()),
            Some(Some(t)) => Ok(serde_json::from_str(&t)?),
        }
    }

    fn set_base_post_load(&self, name: &str, p: &crate::guests::PostLoad) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let text = (!p.commands.is_empty())
            .then(|| serde_json::to_string(p))
            .transpose()?;
        if conn.exec(
            "UPDATE bases SET post_load = ?2 WHERE name = ?1",
            params![name, text],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        Ok(())
    }

    fn plans(&self) -> Result<Vec<crate::plans::Plan>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, memory_mib, vcpus, disk_bytes FROM plans ORDER BY name",
        )?;
        let rows = stmt.query_map([], plan_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn plan(&self, name: &str) -> Result<crate::plans::Plan> {
        let conn = self.conn.lock().map_err(db)?;
        conn.row(
            "SELECT name, memory_mib, vcpus, disk_bytes FROM plans WHERE name = ?1",
            [name],
            plan_from_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("plan {name}")))
    }

    fn insert_plan(&self, p: &crate::plans::Plan) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let n = conn.exec(
            "INSERT INTO plans (name, memory_mib, vcpus, disk_bytes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![
                p.name,
                i64::try_from(p.memory_mib).unwrap_or(i64::MAX),
                p.vcpus,
                i64::try_from(p.disk_bytes).unwrap_or(i64::MAX)
            ],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("plan {}", p.name)));
        }
        Ok(())
    }

    fn remove_plan(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM plans WHERE name = ?1", params![name])? == 0 {
            return Err(StoreError::NotFound(format!("plan {name}")));
        }
        Ok(())
    }

    fn images(&self) -> Result<Vec<crate::images::ImageRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT record FROM images ORDER BY name, version")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for t in rows {
            out.push(serde_json::from_str(&t?)?);
        }
        Ok(out)
    }

    fn insert_image(&self, i: &crate::images::ImageRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let n = conn.exec(
            "INSERT INTO images (name, version, record) VALUES (?1, ?2, ?3)
             ON CONFLICT(name, version) DO NOTHING",
            params![i.name, i.version, serde_json::to_string(i)?],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "image {} version {}",
                i.name, i.version
            )));
        }
        Ok(())
    }

    fn remove_image(&self, name: &str, version: u32) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec(
            "DELETE FROM images WHERE name = ?1 AND version = ?2",
            params![name, version],
        )? == 0
        {
            return Err(StoreError::NotFound(format!(
                "image {name} version {version}"
            )));
        }
        Ok(())
    }

    fn backups(&self) -> Result<Vec<crate::backups::BackupRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT record FROM backups ORDER BY vm, number")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for t in rows {
            out.push(serde_json::from_str(&t?)?);
        }
        Ok(out)
    }

    fn insert_backup(&self, b: &crate::backups::BackupRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let n = conn.exec(
            "INSERT INTO backups (vm, number, owner, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(vm, number) DO NOTHING",
            params![b.vm, b.number, b.owner, serde_json::to_string(b)?],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "backup {} of VM {}",
                b.number, b.vm
            )));
        }
        Ok(())
    }

    fn remove_backup(&self, vm: &str, number: u32) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec(
            "DELETE FROM backups WHERE vm = ?1 AND number = ?2",
            params![vm, number],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("backup {number} of VM {vm}")));
        }
        Ok(())
    }

    fn repository_hosts(&self) -> Result<Vec<String>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT host FROM repository_hosts ORDER BY host")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn set_repository_host(&self, host: &str, on: bool) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if on {
            conn.exec(
                "INSERT INTO repository_hosts (host) VALUES (?1) ON CONFLICT(host) DO NOTHING",
                params![host],
            )?;
        } else {
            conn.exec(
                "DELETE FROM repository_hosts WHERE host = ?1",
                params![host],
            )?;
        }
        Ok(())
    }

    fn set_base_image(&self, base: &str, image: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec(
            "UPDATE bases SET image = ?2 WHERE name = ?1",
            params![base, image],
        )? == 0
        {
            return Err(StoreError::NotFound(format!("base {base}")));
        }
        Ok(())
    }

    fn base_images(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, image FROM bases WHERE image IS NOT NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn base_accesses(&self) -> Result<std::collections::HashMap<String, BaseAccess>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached("SELECT name, access FROM bases")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (name, text) = row?;
            out.insert(name, serde_json::from_str(&text)?);
        }
        Ok(out)
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt =
            conn.prepare_cached("SELECT name, role, attributes FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (name, role, attrs) = row?;
            Ok(UserRecord {
                name,
                role,
                attributes: serde_json::from_str(&attrs)?,
            })
        })
        .collect()
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = "SELECT hash, user, created_ms, expires_ms FROM tokens ORDER BY created_ms";
        let conn = self.conn.lock().map_err(db)?;
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], token_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn remove_token(&self, token_hash: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM tokens WHERE hash = ?1", [token_hash])? == 0 {
            return Err(StoreError::NotFound("token".into()));
        }
        Ok(())
    }

    fn remove_user(&self, name: &str) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        if conn.exec("DELETE FROM users WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    fn put_user(&self, u: &UserRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO users (name, role, attributes) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET role = ?2, attributes = ?3",
            params![u.name, u.role, serde_json::to_string(&u.attributes)?],
        )?;
        Ok(())
    }

    fn insert_user(&self, u: &UserRecord) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        let n = conn.exec(
            "INSERT INTO users (name, role, attributes) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![u.name, u.role, serde_json::to_string(&u.attributes)?],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("user {}", u.name)));
        }
        Ok(())
    }

    fn add_token(&self, user: &str, token_hash: &str, expires_ms: Option<i64>) -> Result<()> {
        let conn = self.conn.lock().map_err(db)?;
        conn.exec(
            "INSERT INTO tokens (hash, user, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user, now_ms(), expires_ms],
        )?;
        Ok(())
    }

    fn user_by_token(&self, token_hash: &str) -> Result<UserRecord> {
        let conn = self.conn.lock().map_err(db)?;
        let (name, role, attrs): (String, String, String) = conn
            .row(
                "SELECT u.name, u.role, u.attributes FROM tokens t JOIN users u ON u.name = t.user WHERE t.hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound("token".into()))?;
        Ok(UserRecord {
            name,
            role,
            attributes: serde_json::from_str(&attrs)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, key: Option<&str>) -> OpRecord {
        OpRecord {
            id: id.into(),
            kind: "clone".into(),
            vm: Some("vm1".into()),
            host: None,
            user: Some("alice".into()),
            state: OpState::Queued,
            idempotency_key: key.map(String::from),
            request: serde_json::json!({"base": "b1"}),
            result: None,
            error: None,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[test]
    fn migrations_apply_once_and_data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        {
            let s = Sqlite::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
            s.create_operation(&op("o1", Some("k1"))).unwrap();
            s.append_event(&OpEvent {
                op_id: "o1".into(),
                seq: 0,
                at_ms: 2,
                phase: "queued".into(),
                percent: Some(0.0),
                bytes: None,
                message: "waiting".into(),
                state: None,
            })
            .unwrap();
        }
        let s = Sqlite::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        assert_eq!(s.operation("o1").unwrap().request["base"], "b1");
        assert_eq!(s.events("o1", 0).unwrap().len(), 1);
        let mode: String = s
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn idempotency_keys_return_the_first_operation() {
        let s = Sqlite::open(&tempfile::tempdir().unwrap().path().join("db")).unwrap();
        let (a, new_a) = s.create_operation(&op("o1", Some("same"))).unwrap();
        let (b, new_b) = s.create_operation(&op("o2", Some("same"))).unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        assert!(matches!(s.operation("o2"), Err(StoreError::NotFound(_))));
        s.create_operation(&op("o3", None)).unwrap();
        s.create_operation(&op("o4", None)).unwrap();
        assert_eq!(s.operations(true).unwrap().len(), 3);
    }

    #[test]
    fn state_machine_is_enforced() {
        let s = Sqlite::open(&tempfile::tempdir().unwrap().path().join("db")).unwrap();
        s.create_operation(&op("o1", None)).unwrap();
        assert!(
            s.set_operation_state("o1", OpState::Succeeded, None, None)
                .is_err(),
            "queued cannot succeed"
        );
        s.set_operation_state("o1", OpState::Running, None, None)
            .unwrap();
        s.set_operation_state(
            "o1",
            OpState::Succeeded,
            Some(&serde_json::json!({"vm": "vm1"})),
            None,
        )
        .unwrap();
        assert!(
            s.set_operation_state("o1", OpState::Failed, None, Some("late"))
                .is_err(),
            "terminal is final"
        );
        let o = s.operation("o1").unwrap();
        assert_eq!(o.state, OpState::Succeeded);
        assert_eq!(o.result.unwrap()["vm"], "vm1");
        assert!(s.operations(true).unwrap().is_empty());
    }

    #[test]
    fn events_are_numbered_in_order() {
        let s = Sqlite::open(&tempfile::tempdir().unwrap().path().join("db")).unwrap();
        s.create_operation(&op("o1", None)).unwrap();
        for i in 0..5 {
            let e = s
                .append_event(&OpEvent {
                    op_id: "o1".into(),
                    seq: 0,
                    at_ms: i,
                    phase: "copy".into(),
                    percent: Some(i as f32 * 20.0),
                    bytes: Some(i as u64 * 100),
                    message: String::new(),
                    state: (i == 4).then_some(OpState::Succeeded),
                })
                .unwrap();
            assert_eq!(e.seq, i as u64 + 1);
        }
        let after2 = s.events("o1", 2).unwrap();
        assert_eq!(after2.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(after2[2].state, Some(OpState::Succeeded));
    }

    #[test]
    fn hosts_vms_users_and_tokens() {
        let s = Sqlite::open(&tempfile::tempdir().unwrap().path().join("db")).unwrap();
        s.put_host(&HostRecord {
            name: "h1".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        })
        .unwrap();
        let dup = s.put_host(&HostRecord {
            name: "h2".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        });
        assert!(
            matches!(dup, Err(StoreError::AlreadyExists(_))),
            "one address, one host"
        );
        s.put_vm(&VmRecord {
            name: "vm1".into(),
            owner: "alice".into(),
            base: Some("b1".into()),
            host: Some("h1".into()),
            desired_state: crate::states::Desired::Running,
            observed_state: crate::states::Observed::Domain(
                corral_client::proto::DomainState::Running,
            ),
            spec: serde_json::json!({"volatile": true}),
        })
        .unwrap();
        assert_eq!(s.vm("vm1").unwrap().spec["volatile"], true);
        let mut kept = s.vm("vm1").unwrap();
        kept.name = "vm2".into();
        kept.spec = serde_json::json!({"labels": {}});
        s.put_vm(&kept).unwrap();
        let volatile: Vec<String> = s
            .volatile_vms()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(volatile, ["vm1"]);
        // The reaper's query is answered from the index, not by reading every VM.
        let plan: String = s
            .conn
            .lock()
            .unwrap()
            .query_row(
                "EXPLAIN QUERY PLAN SELECT name FROM vms WHERE json_extract(spec, '$.volatile') = 1",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("vms_volatile"), "{plan}");
        s.remove_vm("vm2").unwrap();
        s.put_user(&UserRecord {
            name: "alice".into(),
            role: "user".into(),
            attributes: serde_json::json!({"course": "net101"}),
        })
        .unwrap();
        assert!(s
            .put_user(&UserRecord {
                name: "eve".into(),
                role: "root".into(),
                attributes: serde_json::json!({})
            })
            .is_err());
        s.add_token("alice", "hash1", None).unwrap();
        assert_eq!(
            s.user_by_token("hash1").unwrap().attributes["course"],
            "net101"
        );
        assert!(matches!(
            s.user_by_token("nope"),
            Err(StoreError::NotFound(_))
        ));
        s.put_base("b1", None, &serde_json::json!({"vcpus": 2}))
            .unwrap();
        assert_eq!(s.base_spec("b1").unwrap()["vcpus"], 2);
        s.set_base_host("b1", "h1", true).unwrap();
        assert_eq!(s.base_parent("b1").unwrap(), None);
        s.put_base("b2", Some("b1"), &serde_json::json!({}))
            .unwrap();
        assert_eq!(
            s.bases().unwrap(),
            vec![
                ("b1".to_string(), vec!["h1".to_string()]),
                ("b2".to_string(), vec![])
            ]
        );
        let tokens = s.tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            (tokens[0].hash.as_str(), tokens[0].user.as_str()),
            ("hash1", "alice")
        );
        assert_eq!(tokens[0].expires_ms, None);
        assert_eq!(s.users().unwrap().len(), 1);
        // A removed user's tokens go with them; a revoked token goes alone.
        s.add_token("alice", "hash2", Some(now_ms() + 1000))
            .unwrap();
        s.remove_token("hash2").unwrap();
        assert!(matches!(
            s.remove_token("hash2"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.tokens().unwrap().len(), 1);
        s.remove_vm("vm1").unwrap();
        s.remove_host("h1").unwrap();
        assert_eq!(
            s.bases().unwrap()[0].1.len(),
            0,
            "host removal drops its base copies"
        );
        assert!(s.hosts().unwrap().is_empty());
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn database_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.db");
        // An existing world-readable database is narrowed when opened.
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Sqlite::open(&path).unwrap();
        s.insert_user(&UserRecord {
            name: "a".into(),
            role: "user".into(),
            attributes: serde_json::json!({}),
        })
        .unwrap();
        assert_eq!(mode(&path), 0o600);
        for side in ["corral.db-wal", "corral.db-shm"] {
            let p = dir.path().join(side);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{side}");
            }
        }
    }

    #[test]
    fn names_are_one_namespace_and_inserts_never_overwrite() {
        let s = Sqlite::open(&tempfile::tempdir().unwrap().path().join("db")).unwrap();
        s.put_base("web", None, &serde_json::json!({})).unwrap();
        let vm = VmRecord {
            name: "web".into(),
            owner: "alice".into(),
            base: None,
            host: None,
            desired_state: crate::states::Desired::ShutOff,
            observed_state: crate::states::Observed::Creating,
            spec: serde_json::json!({}),
        };
        let e = s.insert_vm(&vm).unwrap_err();
        assert_eq!(e.to_string(), "base web already exists");
        assert!(s.vm("web").is_err(), "a refused insert leaves no record");
        assert_eq!(s.name_taken("web").unwrap(), Some("base"));
        let vm2 = VmRecord {
            name: "c1".into(),
            ..vm
        };
        s.insert_vm(&vm2).unwrap();
        assert_eq!(
            s.insert_vm(&vm2).unwrap_err().to_string(),
            "VM c1 already exists"
        );
        let u = UserRecord {
            name: "bob".into(),
            role: "user".into(),
            attributes: serde_json::json!({}),
        };
        s.insert_user(&u).unwrap();
        let admin = UserRecord {
            role: "admin".into(),
            ..u.clone()
        };
        assert_eq!(
            s.insert_user(&admin).unwrap_err().to_string(),
            "user bob already exists"
        );
        assert_eq!(s.users().unwrap()[0].role, "user", "not overwritten");
        let h = HostRecord {
            name: "h1".into(),
            address: "10.0.0.1:7700".into(),
            enabled: true,
            last_seen_ms: 0,
        };
        s.insert_host(&h).unwrap();
        let same_addr = HostRecord {
            name: "h2".into(),
            ..h.clone()
        };
        assert_eq!(
            s.insert_host(&same_addr).unwrap_err().to_string(),
            "agent address 10.0.0.1:7700 (host h1) already exists"
        );
        assert_eq!(
            s.insert_host(&h).unwrap_err().to_string(),
            "host h1 already exists"
        );
        // An illegal state change is a conflict, not a database failure.
        let op = OpRecord {
            id: "o".into(),
            kind: "clone".into(),
            vm: None,
            host: None,
            user: None,
            state: OpState::Queued,
            idempotency_key: None,
            request: serde_json::json!({}),
            result: None,
            error: None,
            created_ms: 0,
            updated_ms: 0,
        };
        s.create_operation(&op).unwrap();
        s.set_operation_state("o", OpState::Cancelled, None, None)
            .unwrap();
        assert!(matches!(
            s.set_operation_state("o", OpState::Running, None, None),
            Err(StoreError::Conflict(_))
        ));
    }
}
