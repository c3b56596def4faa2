//! The one implementation of [`Store`] in SQL, over any [`Conn`]: SQLite (embedded) and
//! PostgreSQL run the same statements. They are written in the dialect both speak (`?N`
//! parameters, which the PostgreSQL connection renumbers as `$N`; `ON CONFLICT`; `RETURNING`;
//! the `"user"` column quoted; `json_extract` over the spec, which PostgreSQL's schema defines
//! as a function). Every write runs in its own savepoint (a transaction outside a batch), so
//! a failed statement undoes only its own call on both databases.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{
    now_ms, BaseAccess, FeedPage, FeedRow, HostRecord, Lead, OpEvent, OpRecord, OpState, PoolSize,
    Result, Store, StoreError, TokenRecord, UserRecord, VmRecord,
};

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for V {
            fn from(v: $t) -> Self {
                V::Int(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
    )*};
}
from_int!(i64, i32, u32, u64);

impl From<bool> for V {
    fn from(v: bool) -> Self {
        V::Int(i64::from(v))
    }
}
impl From<f64> for V {
    fn from(v: f64) -> Self {
        V::Real(v)
    }
}
impl From<f32> for V {
    fn from(v: f32) -> Self {
        V::Real(f64::from(v))
    }
}
impl From<&str> for V {
    fn from(v: &str) -> Self {
        V::Text(v.to_string())
    }
}
impl From<String> for V {
    fn from(v: String) -> Self {
        V::Text(v)
    }
}
impl From<&String> for V {
    fn from(v: &String) -> Self {
        V::Text(v.clone())
    }
}
impl<T: Into<V>> From<Option<T>> for V {
    fn from(v: Option<T>) -> Self {
        v.map_or(V::Null, Into::into)
    }
}

/// Parameters: `p![a, b, c]`.
macro_rules! p {
    ($($x:expr),* $(,)?) => { &[$($crate::store::sql::V::from($x)),*][..] };
}
pub(crate) use p;

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<V>);

fn column(i: usize, what: &str) -> StoreError {
    StoreError::Database(format!("column {i} is not {what}"))
}

impl Row {
    fn get(&self, i: usize) -> &V {
        self.0.get(i).unwrap_or(&V::Null)
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.get(i) {
            V::Null => Ok(None),
            V::Text(s) => Ok(Some(s.clone())),
            V::Int(n) => Ok(Some(n.to_string())),
            V::Real(_) => Err(column(i, "text")),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| column(i, "set"))
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.get(i) {
            V::Null => Ok(None),
            V::Int(n) => Ok(Some(*n)),
            _ => Err(column(i, "an integer")),
        }
    }
    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| column(i, "set"))
    }
    pub fn uint<T: TryFrom<i64>>(&self, i: usize) -> Result<T> {
        T::try_from(self.int(i)?).map_err(|_| column(i, "in range"))
    }
    pub fn opt_real(&self, i: usize) -> Result<Option<f64>> {
        match self.get(i) {
            V::Null => Ok(None),
            V::Real(f) => Ok(Some(*f)),
            V::Int(n) => Ok(Some(*n as f64)),
            V::Text(_) => Err(column(i, "a number")),
        }
    }
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        Ok(serde_json::from_str(&self.text(i)?)?)
    }
}

/// A database connection as the store uses it.
pub trait Conn: Send {
    /// Runs one statement; the rows it changed.
    fn exec(&mut self, sql: &str, params: &[V]) -> Result<u64>;
    /// Runs one query; its rows.
    fn query(&mut self, sql: &str, params: &[V]) -> Result<Vec<Row>>;
    /// Runs statements without parameters (transactions, migrations).
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// The database's clock in milliseconds since the epoch, as SQL: one clock for every
    /// coordinator's lease.
    fn now_ms_sql(&self) -> &'static str;
    /// What locks a row read until the transaction ends (nothing where writers are
    /// serialised anyway).
    fn lock_row_sql(&self) -> &'static str;
}

struct Inner<C> {
    conn: C,
    /// Inside a batch's transaction (savepoints nest in it).
    in_tx: bool,
    /// The lease (holder, term) every batch must still hold: a coordinator that lost it
    /// writes nothing more.
    fence: Option<(String, i64)>,
}

/// The store over connection `C`.
pub struct SqlStore<C> {
    inner: Mutex<Inner<C>>,
}

impl<C> std::fmt::Debug for SqlStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlStore")
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Database("the store's lock was poisoned".into())
}

const VM_COLUMNS: &str = "name, owner, base, host, desired_state, observed_state, spec";
const OP_COLUMNS: &str = "id, kind, vm, host, \"user\", state, idempotency_key, request, result, error, created_ms, updated_ms";
const INSERT_VM: &str = "INSERT INTO vms (name, owner, base, host, desired_state, observed_state, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
/// Bases made by the API start private.
const PRIVATE: &str = r#"{"public":false,"rules":[]}"#;

fn vm_params(vm: &VmRecord) -> Result<Vec<V>> {
    Ok(p![
        &vm.name,
        &vm.owner,
        vm.base.clone(),
        vm.host.clone(),
        vm.desired_state.as_str(),
        vm.observed_state.as_str(),
        serde_json::to_string(&vm.spec)?,
    ]
    .to_vec())
}

/// A running VM's observed state, as stored.
fn running() -> &'static str {
    crate::states::Observed::Domain(corral_client::proto::DomainState::Running).as_str()
}

fn vm_from(r: &Row) -> Result<VmRecord> {
    Ok(VmRecord {
        name: r.text(0)?,
        owner: r.text(1)?,
        base: r.opt_text(2)?,
        host: r.opt_text(3)?,
        desired_state: crate::states::Desired::parse(&r.text(4)?),
        observed_state: crate::states::Observed::parse(&r.text(5)?),
        spec: r.json(6)?,
    })
}

fn op_from(r: &Row) -> Result<OpRecord> {
    Ok(OpRecord {
        id: r.text(0)?,
        kind: r.text(1)?,
        vm: r.opt_text(2)?,
        host: r.opt_text(3)?,
        user: r.opt_text(4)?,
        state: OpState::parse(&r.text(5)?)?,
        idempotency_key: r.opt_text(6)?,
        request: r.json(7)?,
        result: r
            .opt_text(8)?
            .map(|t| serde_json::from_str(&t))
            .transpose()?,
        error: r.opt_text(9)?,
        created_ms: r.int(10)?,
        updated_ms: r.int(11)?,
    })
}

fn plan_from(r: &Row) -> Result<crate::plans::Plan> {
    Ok(crate::plans::Plan {
        name: r.text(0)?,
        memory_mib: r.uint(1)?,
        vcpus: r.uint(2)?,
        disk_bytes: r.uint(3)?,
    })
}

fn user_from(r: &Row) -> Result<UserRecord> {
    Ok(UserRecord {
        name: r.text(0)?,
        role: r.text(1)?,
        attributes: r.json(2)?,
    })
}

/// The first row, if any.
fn first<C: Conn>(c: &mut C, sql: &str, params: &[V]) -> Result<Option<Row>> {
    Ok(c.query(sql, params)?.into_iter().next())
}

/// Fails with NotFound(`what`) when `n` rows changed is 0.
fn changed(n: u64, what: impl FnOnce() -> String) -> Result<()> {
    if n == 0 {
        return Err(StoreError::NotFound(what()));
    }
    Ok(())
}

/// What holds `name` in the one namespace of VMs and bases.
fn taken<C: Conn>(c: &mut C, name: &str) -> Result<Option<&'static str>> {
    let row = first(
        c,
        "SELECT 'VM' FROM vms WHERE name = ?1 UNION ALL SELECT 'base' FROM bases WHERE name = ?1 LIMIT 1",
        p![name],
    )?;
    row.map(|r| r.text(0))
        .transpose()
        .map(|w| w.map(|w| if w == "VM" { "VM" } else { "base" }))
}

/// `(key, JSON)` rows as a map.
fn json_map<T: serde::de::DeserializeOwned>(rows: Vec<Row>) -> Result<HashMap<String, T>> {
    rows.iter().map(|r| Ok((r.text(0)?, r.json(1)?))).collect()
}

impl<C: Conn> SqlStore<C> {
    pub fn new(conn: C) -> Self {
        Self {
            inner: Mutex::new(Inner {
                conn,
                in_tx: false,
                fence: None,
            }),
        }
    }

    /// Reads with the connection.
    fn read<T>(&self, f: impl FnOnce(&mut C) -> Result<T>) -> Result<T> {
        let mut g = self.inner.lock().map_err(poisoned)?;
        f(&mut g.conn)
    }

    /// Changes through the connection, all or nothing: a savepoint inside a batch, a
    /// transaction outside one.
    fn write<T>(&self, f: impl FnOnce(&mut C) -> Result<T>) -> Result<T> {
        let mut g = self.inner.lock().map_err(poisoned)?;
        let (open, keep, undo) = if g.in_tx {
            (
                "SAVEPOINT corral_write",
                "RELEASE SAVEPOINT corral_write",
                "ROLLBACK TO SAVEPOINT corral_write; RELEASE SAVEPOINT corral_write",
            )
        } else {
            ("BEGIN", "COMMIT", "ROLLBACK")
        };
        g.conn.batch(open)?;
        match f(&mut g.conn) {
            Ok(v) => {
                if let Err(e) = g.conn.batch(keep) {
                    let _ = g.conn.batch(undo);
                    return Err(e);
                }
                Ok(v)
            }
            Err(e) => {
                let _ = g.conn.batch(undo);
                Err(e)
            }
        }
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<usize> {
        self.read(|c| super::migrate::version(c))
    }

    /// Runs `sql` for the tests and tools that look into the database.
    pub fn raw_query(&self, sql: &str) -> Result<Vec<Row>> {
        self.read(|c| c.query(sql, &[]))
    }

    /// (name, count) rows as a map.
    fn counts(&self, sql: &str) -> Result<HashMap<String, u32>> {
        let rows = self.read(|c| c.query(sql, &[]))?;
        rows.iter().map(|r| Ok((r.text(0)?, r.uint(1)?))).collect()
    }

    fn vms_where(&self, condition: &str) -> Result<Vec<VmRecord>> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE {condition} ORDER BY name");
        self.read(|c| c.query(&sql, &[])?.iter().map(vm_from).collect())
    }

    fn set_base_column(&self, name: &str, column: &str, value: V) -> Result<()> {
        let sql = format!("UPDATE bases SET {column} = ?2 WHERE name = ?1");
        let n = self.write(|c| c.exec(&sql, &[V::from(name), value]))?;
        changed(n, || format!("base {name}"))
    }

    /// A base's optional JSON column: NotFound for no base, the default when unset.
    fn base_json<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
        column: &str,
    ) -> Result<T> {
        let sql = format!("SELECT {column} FROM bases WHERE name = ?1");
        let row = self.read(|c| first(c, &sql, p![name]))?;
        match row {
            None => Err(StoreError::NotFound(format!("base {name}"))),
            Some(r) => match r.opt_text(0)? {
                None => Ok(T::default()),
                Some(t) => Ok(serde_json::from_str(&t)?),
            },
        }
    }

    fn base_json_map<T: serde::de::DeserializeOwned>(
        &self,
        column: &str,
    ) -> Result<HashMap<String, T>> {
        let sql = format!("SELECT name, {column} FROM bases WHERE {column} IS NOT NULL");
        self.read(|c| json_map(c.query(&sql, &[])?))
    }

    fn records<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>> {
        self.read(|c| c.query(sql, &[])?.iter().map(|r| r.json(0)).collect())
    }
}

impl<C: Conn> Store for SqlStore<C> {
    fn begin_batch(&self) -> Result<()> {
        let mut g = self.inner.lock().map_err(poisoned)?;
        g.conn.batch("BEGIN")?;
        if let Some((holder, term)) = g.fence.clone() {
            // Locked until the batch ends: no other coordinator takes the lease while this
            // batch writes, and none of it is written once another has taken it.
            let sql = format!(
                "SELECT 1 FROM leader WHERE id = 1 AND holder = ?1 AND term = ?2{}",
                g.conn.lock_row_sql()
            );
            let held = first(&mut g.conn, &sql, p![holder, term]);
            if !matches!(held, Ok(Some(_))) {
                let _ = g.conn.batch("ROLLBACK");
                return Err(StoreError::NotLeader(format!(
                    "this coordinator's lease (term {term}) was taken over"
                )));
            }
        }
        g.in_tx = true;
        Ok(())
    }

    fn set_fence(&self, fence: Option<(String, i64)>) -> Result<()> {
        self.inner.lock().map_err(poisoned)?.fence = fence;
        Ok(())
    }

    fn lead(&self, me: &str, address: &str, lease_ms: i64) -> Result<Lead> {
        self.write(|c| {
            let now = c.now_ms_sql();
            let sql = format!(
                "INSERT INTO leader (id, holder, address, term, expires_ms) VALUES (1, ?1, ?2, 1, {now} + ?3)
                 ON CONFLICT(id) DO UPDATE SET
                   term = CASE WHEN leader.holder = ?1 THEN leader.term ELSE leader.term + 1 END,
                   holder = ?1, address = ?2, expires_ms = {now} + ?3
                 WHERE leader.holder = ?1 OR leader.expires_ms < {now}"
            );
            c.exec(&sql, p![me, address, lease_ms])?;
            let made = uuid::Uuid::new_v4().simple().to_string();
            c.exec(
                "UPDATE leader SET cluster = ?1 WHERE id = 1 AND cluster = ''",
                p![made],
            )?;
            let r = first(
                c,
                "SELECT holder, address, term, cluster FROM leader WHERE id = 1",
                &[],
            )?
            .ok_or_else(|| StoreError::Database("no leader row".into()))?;
            let holder = r.text(0)?;
            Ok(Lead {
                mine: holder == me,
                holder,
                address: r.text(1)?,
                term: r.int(2)?,
                cluster: r.text(3)?,
            })
        })
    }

    fn end_batch(&self) -> Result<()> {
        let mut g = self.inner.lock().map_err(poisoned)?;
        g.in_tx = false;
        if let Err(e) = g.conn.batch("COMMIT") {
            let _ = g.conn.batch("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    fn abort_batch(&self) -> Result<()> {
        let mut g = self.inner.lock().map_err(poisoned)?;
        g.in_tx = false;
        g.conn.batch("ROLLBACK")
    }

    fn begin_call(&self) -> Result<()> {
        self.read(|c| c.batch("SAVEPOINT corral_call"))
    }

    fn end_call(&self, keep: bool) -> Result<()> {
        self.read(|c| {
            c.batch(if keep {
                "RELEASE SAVEPOINT corral_call"
            } else {
                "ROLLBACK TO SAVEPOINT corral_call; RELEASE SAVEPOINT corral_call"
            })
        })
    }

    fn create_operation(&self, op: &OpRecord) -> Result<(OpRecord, bool)> {
        self.write(|c| {
            if let Some(key) = &op.idempotency_key {
                let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE idempotency_key = ?1");
                if let Some(r) = first(c, &sql, p![key])? {
                    return Ok((op_from(&r)?, false));
                }
            }
            let sql = format!(
                "INSERT INTO operations ({OP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            );
            c.exec(
                &sql,
                p![
                    &op.id,
                    &op.kind,
                    op.vm.clone(),
                    op.host.clone(),
                    op.user.clone(),
                    op.state.as_str(),
                    op.idempotency_key.clone(),
                    serde_json::to_string(&op.request)?,
                    op.result.as_ref().map(serde_json::to_string).transpose()?,
                    op.error.clone(),
                    op.created_ms,
                    op.updated_ms,
                ],
            )?;
            Ok((op.clone(), true))
        })
    }

    fn operation(&self, id: &str) -> Result<OpRecord> {
        let sql = format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1");
        self.read(|c| first(c, &sql, p![id]))?
            .map(|r| op_from(&r))
            .unwrap_or_else(|| Err(StoreError::NotFound(format!("operation {id}"))))
    }

    fn operations(&self, unfinished_only: bool) -> Result<Vec<OpRecord>> {
        let filter = if unfinished_only {
            "WHERE state IN ('queued', 'running') "
        } else {
            ""
        };
        let sql = format!("SELECT {OP_COLUMNS} FROM operations {filter}ORDER BY created_ms, id");
        self.read(|c| c.query(&sql, &[])?.iter().map(op_from).collect())
    }

    fn set_operation_state(
        &self,
        id: &str,
        state: OpState,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<()> {
        self.write(|c| {
            let current = first(c, "SELECT state FROM operations WHERE id = ?1", p![id])?
                .ok_or_else(|| StoreError::NotFound(format!("operation {id}")))?
                .text(0)?;
            let current = OpState::parse(&current)?;
            if !current.can_become(state) {
                return Err(StoreError::Conflict(format!(
                    "operation {id} cannot go from {} to {}",
                    current.as_str(),
                    state.as_str()
                )));
            }
            c.exec(
                "UPDATE operations SET state = ?2, result = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
                p![id, state.as_str(), result.map(serde_json::to_string).transpose()?, error, now_ms()],
            )?;
            Ok(())
        })
    }

    fn append_event(&self, event: &OpEvent) -> Result<OpEvent> {
        self.write(|c| {
            let seq = first(
                c,
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM operation_events WHERE op_id = ?1",
                p![&event.op_id],
            )?
            .map_or(Ok(1), |r| r.int(0))?;
            c.exec(
                "INSERT INTO operation_events (op_id, seq, at_ms, phase, percent, bytes, message, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                p![
                    &event.op_id,
                    seq,
                    event.at_ms,
                    &event.phase,
                    event.percent,
                    event.bytes,
                    &event.message,
                    event.state.map(OpState::as_str),
                ],
            )?;
            Ok(OpEvent {
                seq: u64::try_from(seq).unwrap_or(0),
                ..event.clone()
            })
        })
    }

    fn events(&self, op_id: &str, after: u64) -> Result<Vec<OpEvent>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT op_id, seq, at_ms, phase, percent, bytes, message, state FROM operation_events WHERE op_id = ?1 AND seq > ?2 ORDER BY seq",
                p![op_id, after],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(OpEvent {
                    op_id: r.text(0)?,
                    seq: r.uint(1)?,
                    at_ms: r.int(2)?,
                    phase: r.text(3)?,
                    percent: r.opt_real(4)?.map(|p| p as f32),
                    bytes: r.opt_int(5)?.map(|b| b as u64),
                    message: r.text(6)?,
                    state: r.opt_text(7)?.map(|s| OpState::parse(&s)).transpose()?,
                })
            })
            .collect()
    }

    fn put_host(&self, h: &HostRecord) -> Result<()> {
        self.write(|c| {
            c.exec(
                "INSERT INTO hosts (name, address, enabled, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET address = ?2, enabled = ?3, last_seen_ms = ?4",
                p![&h.name, &h.address, h.enabled, h.last_seen_ms],
            )
            .map(|_| ())
        })
    }

    fn insert_host(&self, h: &HostRecord) -> Result<()> {
        self.write(|c| {
            let taken = first(
                c,
                "SELECT name, address FROM hosts WHERE name = ?1 OR address = ?2",
                p![&h.name, &h.address],
            )?;
            if let Some(r) = taken {
                let (n, a) = (r.text(0)?, r.text(1)?);
                return Err(StoreError::AlreadyExists(if n == h.name {
                    format!("host {n}")
                } else {
                    format!("agent address {a} (host {n})")
                }));
            }
            c.exec(
                "INSERT INTO hosts (name, address, enabled, last_seen_ms) VALUES (?1, ?2, ?3, ?4)",
                p![&h.name, &h.address, h.enabled, h.last_seen_ms],
            )
            .map(|_| ())
        })
    }

    fn hosts(&self) -> Result<Vec<HostRecord>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT name, address, enabled, last_seen_ms FROM hosts ORDER BY name",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(HostRecord {
                    name: r.text(0)?,
                    address: r.text(1)?,
                    enabled: r.int(2)? != 0,
                    last_seen_ms: r.int(3)?,
                })
            })
            .collect()
    }

    fn remove_host(&self, name: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM hosts WHERE name = ?1", p![name]))?;
        changed(n, || format!("host {name}"))
    }

    fn put_vm(&self, vm: &VmRecord) -> Result<()> {
        let params = vm_params(vm)?;
        self.write(|c| {
            c.exec(
                "INSERT INTO vms (name, owner, base, host, desired_state, observed_state, spec) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET owner = ?2, base = ?3, host = ?4, desired_state = ?5, observed_state = ?6, spec = ?7",
                &params,
            )
            .map(|_| ())
        })
    }

    fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        let params = vm_params(vm)?;
        self.write(|c| {
            if let Some(what) = taken(c, &vm.name)? {
                return Err(StoreError::AlreadyExists(format!("{what} {}", vm.name)));
            }
            c.exec(INSERT_VM, &params).map(|_| ())
        })
    }

    fn name_taken(&self, name: &str) -> Result<Option<&'static str>> {
        self.read(|c| taken(c, name))
    }

    fn vm(&self, name: &str) -> Result<VmRecord> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE name = ?1");
        self.read(|c| first(c, &sql, p![name]))?
            .map(|r| vm_from(&r))
            .unwrap_or_else(|| Err(StoreError::NotFound(format!("VM {name}"))))
    }

    fn vm_counts_of(&self, owner: &str) -> Result<Vec<(String, u32)>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT host, COUNT(*) FROM vms WHERE owner = ?1 AND host IS NOT NULL GROUP BY host",
                p![owner],
            )
        })?;
        rows.iter().map(|r| Ok((r.text(0)?, r.uint(1)?))).collect()
    }

    fn vms(&self) -> Result<Vec<VmRecord>> {
        self.vms_where("TRUE")
    }

    fn vms_per_host(&self) -> Result<HashMap<String, u32>> {
        self.counts("SELECT host, COUNT(*) FROM vms WHERE host IS NOT NULL GROUP BY host")
    }

    fn clones_per_base(&self) -> Result<HashMap<String, u32>> {
        self.counts("SELECT base, COUNT(*) FROM vms WHERE base IS NOT NULL GROUP BY base")
    }

    fn clones_of(&self, base: &str) -> Result<Vec<String>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT name FROM vms WHERE base = ?1 ORDER BY name",
                p![base],
            )
        })?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    fn vms_of_owner(&self, owner: &str) -> Result<Vec<VmRecord>> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE owner = ?1 ORDER BY name");
        self.read(|c| c.query(&sql, p![owner])?.iter().map(vm_from).collect())
    }

    fn vms_on(&self, host: &str) -> Result<Vec<VmRecord>> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE host = ?1 ORDER BY name");
        self.read(|c| c.query(&sql, p![host])?.iter().map(vm_from).collect())
    }

    fn volatile_vms(&self) -> Result<Vec<VmRecord>> {
        // The same expression as the index of migration 5, so that the database uses it.
        self.vms_where("json_extract(spec, '$.volatile') = 1")
    }

    fn pool_vms(&self) -> Result<Vec<VmRecord>> {
        // The same expression as the index of migration 6.
        self.vms_where("json_extract(spec, '$.pool') = 1")
    }

    fn running_domains(&self) -> Result<Vec<(String, String, String)>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT name, host, spec FROM vms WHERE observed_state = ?1 AND host IS NOT NULL",
                p![running()],
            )
        })?;
        rows.iter()
            .map(|r| {
                let (name, spec) = (r.text(0)?, r.text(2)?);
                // Most specs name no domain of their own: parsed only when one might.
                let domain = if spec.contains("\"domain\"") {
                    serde_json::from_str::<serde_json::Value>(&spec)?
                        .get("domain")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string)
                } else {
                    None
                };
                Ok((name.clone(), r.text(1)?, domain.unwrap_or(name)))
            })
            .collect()
    }

    fn vms_with_timeouts(&self, bases: &[String]) -> Result<Vec<VmRecord>> {
        let running = running();
        // ?1 is the state; the bases are ?2.. (the same expressions as migration 16's indexes).
        let listed: Vec<String> = (0..bases.len()).map(|i| format!("?{}", i + 2)).collect();
        let of_bases = if listed.is_empty() {
            String::new()
        } else {
            format!(" OR base IN ({})", listed.join(", "))
        };
        let sql = format!(
            "SELECT {VM_COLUMNS} FROM vms WHERE observed_state = ?1
             AND (json_extract(spec, '$.run_timeout_s') > 0{of_bases}) ORDER BY name"
        );
        let params: Vec<V> = std::iter::once(V::from(running))
            .chain(bases.iter().map(|b| V::from(b.as_str())))
            .collect();
        self.read(|c| c.query(&sql, &params)?.iter().map(vm_from).collect())
    }

    fn vm_states(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            c.query(
                "SELECT observed_state, COUNT(*) FROM vms GROUP BY observed_state ORDER BY observed_state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0))))
            .collect()
        })
    }

    fn hand_out(&self, pool_vm: &str, vm: &VmRecord) -> Result<()> {
        let params = vm_params(vm)?;
        // Checked first, then changed, in one savepoint: nothing else comes between.
        self.write(|c| {
            if let Some(what) = taken(c, &vm.name)? {
                return Err(StoreError::AlreadyExists(format!("{what} {}", vm.name)));
            }
            let gone = c.exec(
                "DELETE FROM vms WHERE name = ?1 AND json_extract(spec, '$.pool') = 1",
                p![pool_vm],
            )?;
            changed(gone, || format!("pool clone {pool_vm}"))?;
            c.exec(INSERT_VM, &params).map(|_| ())
        })
    }

    fn remove_vm(&self, name: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM vms WHERE name = ?1", p![name]))?;
        changed(n, || format!("VM {name}"))
    }

    fn put_base(&self, name: &str, parent: Option<&str>, spec: &serde_json::Value) -> Result<()> {
        let spec = serde_json::to_string(spec)?;
        self.write(|c| {
            c.exec(
                "INSERT INTO bases (name, parent, spec, access) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET parent = ?2, spec = ?3",
                p![name, parent, spec, PRIVATE],
            )
            .map(|_| ())
        })
    }

    fn base_spec(&self, name: &str) -> Result<serde_json::Value> {
        self.read(|c| first(c, "SELECT spec FROM bases WHERE name = ?1", p![name]))?
            .ok_or_else(|| StoreError::NotFound(format!("base {name}")))?
            .json(0)
    }

    fn base_parent(&self, name: &str) -> Result<Option<String>> {
        self.read(|c| first(c, "SELECT parent FROM bases WHERE name = ?1", p![name]))?
            .ok_or_else(|| StoreError::NotFound(format!("base {name}")))?
            .opt_text(0)
    }

    fn remove_base(&self, name: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM bases WHERE name = ?1", p![name]))?;
        changed(n, || format!("base {name}"))
    }

    fn set_base_host(&self, base: &str, host: &str, present: bool) -> Result<()> {
        self.write(|c| {
            if present {
                c.exec(
                    "INSERT INTO base_hosts (base, host, state) VALUES (?1, ?2, 'present')
                     ON CONFLICT(base, host) DO UPDATE SET state = 'present'",
                    p![base, host],
                )
            } else {
                c.exec(
                    "DELETE FROM base_hosts WHERE base = ?1 AND host = ?2",
                    p![base, host],
                )
            }
            .map(|_| ())
        })
    }

    fn bases(&self) -> Result<Vec<(String, Vec<String>)>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT b.name, bh.host FROM bases b LEFT JOIN base_hosts bh ON bh.base = b.name ORDER BY b.name, bh.host",
                &[],
            )
        })?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in &rows {
            let (base, host) = (r.text(0)?, r.opt_text(1)?);
            if out.last().is_none_or(|(b, _)| b != &base) {
                out.push((base, Vec::new()));
            }
            if let (Some(h), Some(last)) = (host, out.last_mut()) {
                last.1.push(h);
            }
        }
        Ok(out)
    }

    fn base_holders(&self, name: &str) -> Result<Vec<String>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT bh.host FROM bases b LEFT JOIN base_hosts bh ON bh.base = b.name WHERE b.name = ?1 ORDER BY bh.host",
                p![name],
            )
        })?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!("base {name}")));
        }
        rows.iter()
            .filter_map(|r| r.opt_text(0).transpose())
            .collect()
    }

    fn base_names(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.query("SELECT name FROM bases ORDER BY name", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })
    }

    fn base_access(&self, name: &str) -> Result<BaseAccess> {
        self.read(|c| first(c, "SELECT access FROM bases WHERE name = ?1", p![name]))?
            .ok_or_else(|| StoreError::NotFound(format!("base {name}")))?
            .json(0)
    }

    fn set_base_access(&self, name: &str, access: &BaseAccess) -> Result<()> {
        self.set_base_column(name, "access", serde_json::to_string(access)?.into())
    }

    fn base_pools(&self) -> Result<HashMap<String, PoolSize>> {
        self.base_json_map("pool")
    }

    fn set_base_pool(&self, name: &str, pool: &PoolSize) -> Result<()> {
        let text = (pool.clones > 0)
            .then(|| serde_json::to_string(pool))
            .transpose()?;
        self.set_base_column(name, "pool", text.into())
    }

    fn base_timeouts(&self) -> Result<HashMap<String, crate::idle::Timeouts>> {
        self.base_json_map("timeouts")
    }

    fn set_base_timeouts(&self, name: &str, t: &crate::idle::Timeouts) -> Result<()> {
        let text = (!t.is_none())
            .then(|| serde_json::to_string(t))
            .transpose()?;
        self.set_base_column(name, "timeouts", text.into())
    }

    fn base_display(&self, name: &str) -> Result<crate::display::DisplayPolicy> {
        self.base_json(name, "display")
    }

    fn set_base_display(&self, name: &str, d: &crate::display::DisplayPolicy) -> Result<()> {
        self.set_base_column(name, "display", serde_json::to_string(d)?.into())
    }

    fn base_post_load(&self, name: &str) -> Result<crate::guests::PostLoad> {
        self.base_json(name, "post_load")
    }

    fn set_base_post_load(&self, name: &str, p: &crate::guests::PostLoad) -> Result<()> {
        let text = (!p.commands.is_empty())
            .then(|| serde_json::to_string(p))
            .transpose()?;
        self.set_base_column(name, "post_load", text.into())
    }

    fn plans(&self) -> Result<Vec<crate::plans::Plan>> {
        self.read(|c| {
            c.query(
                "SELECT name, memory_mib, vcpus, disk_bytes FROM plans ORDER BY name",
                &[],
            )?
            .iter()
            .map(plan_from)
            .collect()
        })
    }

    fn plan(&self, name: &str) -> Result<crate::plans::Plan> {
        self.read(|c| {
            first(
                c,
                "SELECT name, memory_mib, vcpus, disk_bytes FROM plans WHERE name = ?1",
                p![name],
            )
        })?
        .map(|r| plan_from(&r))
        .unwrap_or_else(|| Err(StoreError::NotFound(format!("plan {name}"))))
    }

    fn insert_plan(&self, p: &crate::plans::Plan) -> Result<()> {
        let n = self.write(|c| {
            c.exec(
                "INSERT INTO plans (name, memory_mib, vcpus, disk_bytes) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO NOTHING",
                p![&p.name, p.memory_mib, p.vcpus, p.disk_bytes],
            )
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("plan {}", p.name)));
        }
        Ok(())
    }

    fn remove_plan(&self, name: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM plans WHERE name = ?1", p![name]))?;
        changed(n, || format!("plan {name}"))
    }

    fn images(&self) -> Result<Vec<crate::images::ImageRecord>> {
        self.records("SELECT record FROM images ORDER BY name, version")
    }

    fn insert_image(&self, i: &crate::images::ImageRecord) -> Result<()> {
        let record = serde_json::to_string(i)?;
        let n = self.write(|c| {
            c.exec(
                "INSERT INTO images (name, version, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name, version) DO NOTHING",
                p![&i.name, i.version, record],
            )
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "image {} version {}",
                i.name, i.version
            )));
        }
        Ok(())
    }

    fn remove_image(&self, name: &str, version: u32) -> Result<()> {
        let n = self.write(|c| {
            c.exec(
                "DELETE FROM images WHERE name = ?1 AND version = ?2",
                p![name, version],
            )
        })?;
        changed(n, || format!("image {name} version {version}"))
    }

    fn backups(&self) -> Result<Vec<crate::backups::BackupRecord>> {
        self.records("SELECT record FROM backups ORDER BY vm, number")
    }

    fn insert_backup(&self, b: &crate::backups::BackupRecord) -> Result<()> {
        let record = serde_json::to_string(b)?;
        let n = self.write(|c| {
            c.exec(
                "INSERT INTO backups (vm, number, owner, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(vm, number) DO NOTHING",
                p![&b.vm, b.number, &b.owner, record],
            )
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!(
                "backup {} of VM {}",
                b.number, b.vm
            )));
        }
        Ok(())
    }

    fn remove_backup(&self, vm: &str, number: u32) -> Result<()> {
        let n = self.write(|c| {
            c.exec(
                "DELETE FROM backups WHERE vm = ?1 AND number = ?2",
                p![vm, number],
            )
        })?;
        changed(n, || format!("backup {number} of VM {vm}"))
    }

    fn repository_hosts(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.query("SELECT host FROM repository_hosts ORDER BY host", &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        })
    }

    fn set_repository_host(&self, host: &str, on: bool) -> Result<()> {
        self.write(|c| {
            if on {
                c.exec(
                    "INSERT INTO repository_hosts (host) VALUES (?1) ON CONFLICT(host) DO NOTHING",
                    p![host],
                )
            } else {
                c.exec("DELETE FROM repository_hosts WHERE host = ?1", p![host])
            }
            .map(|_| ())
        })
    }

    fn set_base_image(&self, base: &str, image: &str) -> Result<()> {
        self.set_base_column(base, "image", image.into())
    }

    fn base_images(&self) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            c.query(
                "SELECT name, image FROM bases WHERE image IS NOT NULL ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
        })
    }

    fn base_accesses(&self) -> Result<HashMap<String, BaseAccess>> {
        self.read(|c| json_map(c.query("SELECT name, access FROM bases", &[])?))
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        self.read(|c| {
            c.query(
                "SELECT name, role, attributes FROM users ORDER BY name",
                &[],
            )?
            .iter()
            .map(user_from)
            .collect()
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT hash, \"user\", created_ms, expires_ms FROM tokens ORDER BY created_ms",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    hash: r.text(0)?,
                    user: r.text(1)?,
                    created_ms: r.int(2)?,
                    expires_ms: r.opt_int(3)?,
                })
            })
            .collect()
    }

    fn remove_token(&self, token_hash: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM tokens WHERE hash = ?1", p![token_hash]))?;
        changed(n, || "token".into())
    }

    fn remove_user(&self, name: &str) -> Result<()> {
        let n = self.write(|c| c.exec("DELETE FROM users WHERE name = ?1", p![name]))?;
        changed(n, || format!("user {name}"))
    }

    fn put_user(&self, u: &UserRecord) -> Result<()> {
        let attrs = serde_json::to_string(&u.attributes)?;
        self.write(|c| {
            c.exec(
                "INSERT INTO users (name, role, attributes) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET role = ?2, attributes = ?3",
                p![&u.name, &u.role, attrs],
            )
            .map(|_| ())
        })
    }

    fn insert_user(&self, u: &UserRecord) -> Result<()> {
        let attrs = serde_json::to_string(&u.attributes)?;
        let n = self.write(|c| {
            c.exec(
                "INSERT INTO users (name, role, attributes) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
                p![&u.name, &u.role, attrs],
            )
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("user {}", u.name)));
        }
        Ok(())
    }

    fn add_token(&self, user: &str, token_hash: &str, expires_ms: Option<i64>) -> Result<()> {
        self.write(|c| {
            c.exec(
                "INSERT INTO tokens (hash, \"user\", created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                p![token_hash, user, now_ms(), expires_ms],
            )
            .map(|_| ())
        })
    }

    fn user_by_token(&self, token_hash: &str) -> Result<UserRecord> {
        self.read(|c| {
            first(
                c,
                "SELECT u.name, u.role, u.attributes FROM tokens t JOIN users u ON u.name = t.\"user\" WHERE t.hash = ?1",
                p![token_hash],
            )
        })?
        .map(|r| user_from(&r))
        .unwrap_or_else(|| Err(StoreError::NotFound("token".into())))
    }

    fn feed(&self, after: u64, viewer: Option<&str>, limit: usize) -> Result<FeedPage> {
        let (bounds, rows) = self.read(|c| {
            let bounds = first(
                c,
                "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM feed",
                &[],
            )?;
            let after = V::from(after.min(i64::MAX as u64));
            let limit = V::from(limit as u64);
            let rows = match viewer {
                None => c.query(
                    "SELECT seq, at_ms, kind, subject, body FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    &[after, limit],
                )?,
                Some(user) => c.query(
                    "SELECT seq, at_ms, kind, subject, body FROM feed WHERE owner = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2",
                    &[after, limit, V::from(user)],
                )?,
            };
            Ok((bounds, rows))
        })?;
        let (oldest, newest) = match bounds {
            Some(b) => (b.uint(0)?, b.uint(1)?),
            None => (0, 0),
        };
        let rows = rows
            .iter()
            .map(|r| {
                Ok(FeedRow {
                    seq: r.uint(0)?,
                    at_ms: r.int(1)?,
                    kind: r.text(2)?,
                    subject: r.text(3)?,
                    body: r.json(4)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FeedPage {
            oldest,
            newest,
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
        let body = serde_json::to_string(body)?;
        self.write(|c| {
            first(
                c,
                "INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
                p![now_ms(), kind, subject, owner, body],
            )?
            .ok_or_else(|| StoreError::Database("no sequence number returned".into()))?
            .uint(0)
        })
    }
}
