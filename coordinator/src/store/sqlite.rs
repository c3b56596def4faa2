//! The embedded store: SQLite, one file, in WAL mode.

use std::path::Path;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::Connection;

use super::sql::{Conn, Row, SqlStore, V};
use super::{private, Result, StoreError};

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

impl rusqlite::ToSql for V {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            V::Null => ToSqlOutput::Owned(Value::Null),
            V::Int(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            V::Real(f) => ToSqlOutput::Owned(Value::Real(*f)),
            V::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// A SQLite connection whose statements are prepared once and reused: parsing SQL was a
/// large part of an operation's cost.
pub struct SqliteConn(Connection);

impl Conn for SqliteConn {
    fn exec(&mut self, sql: &str, params: &[V]) -> Result<u64> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[V]) -> Result<Vec<Row>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => V::Null,
                    ValueRef::Integer(n) => V::Int(n),
                    ValueRef::Real(f) => V::Real(f),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        V::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn now_ms_sql(&self) -> &'static str {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    }

    fn lock_row_sql(&self) -> &'static str {
        // One writer at a time: the database itself is the lock.
        ""
    }
}

/// The embedded store.
pub type Sqlite = SqlStore<SqliteConn>;

impl SqlStore<SqliteConn> {
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
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut conn = SqliteConn(conn);
        super::migrate::migrate(&mut conn, MIGRATIONS)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            private(Path::new(&side))?;
        }
        Ok(SqlStore::new(conn))
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
    // 14: the leader's lease, when several coordinators share one database (`leader.rs`):
    // who holds it, where clients reach it, its term (one more at each change of holder).
    "CREATE TABLE leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        term INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
     );",
    // 15: a host's VMs without reading every VM (reconciliation at scale).
    "CREATE INDEX vms_host ON vms(host);",
    // 16: what the idle keeper reads (VMs with a run timeout, or of a base with timeouts).
    "CREATE INDEX vms_run_timeout ON vms(json_extract(spec, '$.run_timeout_s'));
     CREATE INDEX vms_base ON vms(base);",
    // 17: the database's own id, made with the lease row (agents fence by it and the term).
    "ALTER TABLE leader ADD COLUMN cluster TEXT NOT NULL DEFAULT '';",
];
