//! The networked store: PostgreSQL (Debian's), for coordinators that must survive losing
//! their machine. The same statements as SQLite ([`super::sql`]); [`MIGRATIONS`] are the same
//! numbered steps in PostgreSQL's dialect (BIGINT columns, PL/pgSQL triggers for the feed, a
//! `json_extract` function so the shared statements and indexes read the same).
//!
//! The synchronous `postgres` client runs its own small runtime: it is only ever called from
//! the store thread or a blocking task, never from an async worker.

use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::sql::{Conn, Row, SqlStore, V};
use super::{Result, StoreError};

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.code() {
            // The database's own text (table and column names) means nothing to a user.
            Some(c) if c.code().starts_with("23") => {
                Self::AlreadyExists("a stored record with the same key".into())
            }
            _ => Self::Database(match e.as_db_error() {
                Some(db) => format!("postgres: {}", db.message()),
                None => format!("postgres: {}", crate::hosts::with_causes(&e)),
            }),
        }
    }
}

impl ToSql for V {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            V::Null => Ok(IsNull::Yes),
            V::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => n.to_sql(ty, out),
            },
            V::Real(f) => match *ty {
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => f.to_sql(ty, out),
            },
            V::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// `?N` parameters as PostgreSQL's `$N`.
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(ch);
        }
    }
    out
}

/// A PostgreSQL connection with its statements prepared once.
pub struct PgConn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl PgConn {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dollars(sql))?;
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

fn params(v: &[V]) -> Vec<&(dyn ToSql + Sync)> {
    v.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn value(r: &postgres::Row, i: usize) -> Result<V> {
    let ty = r.columns()[i].type_().clone();
    let v = match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(V::Int),
        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|n| V::Int(n.into())),
        Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|n| V::Int(n.into())),
        Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|b| V::Int(b.into())),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(V::Real),
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(|f| V::Real(f.into())),
        _ => r.try_get::<_, Option<String>>(i)?.map(V::Text),
    };
    Ok(v.unwrap_or(V::Null))
}

impl Conn for PgConn {
    fn exec(&mut self, sql: &str, p: &[V]) -> Result<u64> {
        let s = self.statement(sql)?;
        Ok(self.client.execute(&s, &params(p))?)
    }

    fn query(&mut self, sql: &str, p: &[V]) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        let rows = self.client.query(&s, &params(p))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| value(r, i))
                    .collect::<Result<_>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn now_ms_sql(&self) -> &'static str {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    }

    fn lock_row_sql(&self) -> &'static str {
        " FOR SHARE"
    }
}

/// The networked store.
pub type Postgres = SqlStore<PgConn>;

/// A schema name the store may create: lowercase letters, digits and `_`.
fn check_schema(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "schema {s:?}: lowercase letters, digits and _, starting with a letter"
        )))
    }
}

impl SqlStore<PgConn> {
    /// Connects to `url` (`postgres://...` or `host=... dbname=...`), in `schema` when given
    /// (created if missing), and brings the schema up to date. Coordinators starting together
    /// migrate one at a time (an advisory lock).
    pub fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let client = Client::connect(url, NoTls).map_err(|e| {
            StoreError::Database(format!(
                "cannot connect to PostgreSQL: {}",
                crate::hosts::with_causes(&e)
            ))
        })?;
        let mut conn = PgConn {
            client,
            prepared: HashMap::new(),
        };
        if let Some(s) = schema {
            check_schema(s)?;
            conn.batch(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s}; SET search_path TO {s}"
            ))?;
        }
        conn.batch("SET client_min_messages TO warning; SELECT pg_advisory_lock(7700)")?;
        let migrated = super::migrate::migrate(&mut conn, MIGRATIONS);
        conn.batch("SELECT pg_advisory_unlock(7700)")?;
        migrated?;
        Ok(SqlStore::new(conn))
    }
}

/// The same numbered steps as SQLite's [`super::sqlite::MIGRATIONS`], in PostgreSQL's dialect.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        enabled BIGINT NOT NULL DEFAULT 1,
        last_seen_ms BIGINT NOT NULL DEFAULT 0
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
        \"user\" TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        created_ms BIGINT NOT NULL
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
        \"user\" TEXT,
        state TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        request TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL
     );
     CREATE INDEX operations_unfinished ON operations(state) WHERE state IN ('queued', 'running');
     CREATE TABLE operation_events (
        op_id TEXT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        phase TEXT NOT NULL,
        percent DOUBLE PRECISION,
        bytes BIGINT,
        message TEXT NOT NULL,
        state TEXT,
        PRIMARY KEY (op_id, seq)
     );",
    // 2
    "CREATE INDEX vms_owner ON vms(owner, host);",
    // 3
    "ALTER TABLE bases ADD COLUMN access TEXT NOT NULL DEFAULT '{\"public\":true,\"rules\":[]}';",
    // 4
    "ALTER TABLE tokens ADD COLUMN expires_ms BIGINT;",
    // 5: SQLite's json_extract for the top-level flags the statements read (1 for true).
    "CREATE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS BIGINT
       LANGUAGE sql IMMUTABLE STRICT AS $$
         SELECT CASE jsonb_typeof(doc::jsonb -> substr(path, 3))
           WHEN 'boolean' THEN (doc::jsonb ->> substr(path, 3))::boolean::int::bigint
           WHEN 'number' THEN (doc::jsonb ->> substr(path, 3))::numeric::bigint
         END $$;
     CREATE INDEX vms_volatile ON vms(json_extract(spec, '$.volatile'));",
    // 6
    "ALTER TABLE bases ADD COLUMN pool TEXT;
     CREATE INDEX vms_pool ON vms(json_extract(spec, '$.pool'));",
    // 7
    "ALTER TABLE bases ADD COLUMN timeouts TEXT;",
    // 8
    "ALTER TABLE bases ADD COLUMN display TEXT;",
    // 9
    "CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        memory_mib BIGINT NOT NULL,
        vcpus BIGINT NOT NULL,
        disk_bytes BIGINT NOT NULL
     );",
    // 10
    "ALTER TABLE bases ADD COLUMN post_load TEXT;",
    // 11
    "CREATE TABLE images (
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (name, version)
     );
     CREATE TABLE repository_hosts (host TEXT PRIMARY KEY);
     ALTER TABLE bases ADD COLUMN image TEXT;",
    // 12
    "CREATE TABLE backups (
        vm TEXT NOT NULL,
        number BIGINT NOT NULL,
        owner TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (vm, number)
     );",
    // 13: the events feed, written by triggers in the changes' transactions.
    "CREATE TABLE feed (
        seq BIGSERIAL PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        owner TEXT,
        body TEXT NOT NULL
     );
     CREATE INDEX feed_owner ON feed(owner, seq);
     CREATE FUNCTION feed_vm() RETURNS trigger LANGUAGE plpgsql AS $$
     DECLARE r vms; ev TEXT;
     BEGIN
       IF TG_OP = 'DELETE' THEN r := OLD; ev := 'removed';
       ELSIF TG_OP = 'INSERT' THEN r := NEW; ev := 'created';
       ELSE
         IF OLD.observed_state IS NOT DISTINCT FROM NEW.observed_state
            AND OLD.desired_state IS NOT DISTINCT FROM NEW.desired_state
            AND OLD.host IS NOT DISTINCT FROM NEW.host
            AND OLD.owner IS NOT DISTINCT FROM NEW.owner
            AND OLD.name IS NOT DISTINCT FROM NEW.name THEN RETURN NULL; END IF;
         r := NEW; ev := 'changed';
       END IF;
       INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
         (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 'vm', r.name, r.owner,
         json_build_object('event', ev, 'state', r.observed_state,
                           'desired', r.desired_state, 'host', r.host)::text);
       RETURN NULL;
     END $$;
     CREATE TRIGGER feed_vm AFTER INSERT OR UPDATE OR DELETE ON vms
       FOR EACH ROW EXECUTE FUNCTION feed_vm();
     CREATE FUNCTION feed_op() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF TG_OP = 'INSERT' THEN
         INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
           NEW.created_ms, 'operation', NEW.id, NEW.\"user\",
           json_build_object('event', 'created', 'kind', NEW.kind, 'vm', NEW.vm,
                             'state', NEW.state)::text);
       ELSIF OLD.state IS DISTINCT FROM NEW.state THEN
         INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
           NEW.updated_ms, 'operation', NEW.id, NEW.\"user\",
           json_build_object('event', 'state', 'kind', NEW.kind, 'vm', NEW.vm,
                             'state', NEW.state, 'error', NEW.error)::text);
       END IF;
       RETURN NULL;
     END $$;
     CREATE TRIGGER feed_op AFTER INSERT OR UPDATE OF state ON operations
       FOR EACH ROW EXECUTE FUNCTION feed_op();
     CREATE FUNCTION feed_progress() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       INSERT INTO feed (at_ms, kind, subject, owner, body)
       SELECT NEW.at_ms, 'operation', o.id, o.\"user\",
         json_build_object('event', 'progress', 'kind', o.kind, 'vm', o.vm, 'state', o.state,
                           'phase', NEW.phase, 'percent', NEW.percent,
                           'message', NEW.message)::text
       FROM operations o WHERE o.id = NEW.op_id;
       RETURN NULL;
     END $$;
     CREATE TRIGGER feed_progress AFTER INSERT ON operation_events
       FOR EACH ROW EXECUTE FUNCTION feed_progress();
     CREATE FUNCTION feed_host() RETURNS trigger LANGUAGE plpgsql AS $$
     DECLARE ev TEXT; n TEXT;
     BEGIN
       IF TG_OP = 'INSERT' THEN
         n := NEW.name;
         INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 'host', n, NULL,
           json_build_object('event', 'added', 'enabled', NEW.enabled <> 0)::text);
         RETURN NULL;
       ELSIF TG_OP = 'DELETE' THEN n := OLD.name; ev := 'removed';
       ELSIF OLD.enabled IS DISTINCT FROM NEW.enabled THEN
         n := NEW.name;
         ev := CASE WHEN NEW.enabled <> 0 THEN 'enabled' ELSE 'disabled' END;
       ELSE RETURN NULL;
       END IF;
       INSERT INTO feed (at_ms, kind, subject, owner, body) VALUES (
         (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 'host', n, NULL,
         json_build_object('event', ev)::text);
       RETURN NULL;
     END $$;
     CREATE TRIGGER feed_host AFTER INSERT OR DELETE OR UPDATE OF enabled ON hosts
       FOR EACH ROW EXECUTE FUNCTION feed_host();
     CREATE FUNCTION feed_keep() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF NEW.seq % 1000 = 0 THEN DELETE FROM feed WHERE seq <= NEW.seq - 100000; END IF;
       RETURN NULL;
     END $$;
     CREATE TRIGGER feed_keep AFTER INSERT ON feed FOR EACH ROW EXECUTE FUNCTION feed_keep();",
    // 14: the leader's lease.
    "CREATE TABLE leader (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        term BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
     );",
    // 15: a host's VMs without reading every VM (reconciliation at scale).
    "CREATE INDEX vms_host ON vms(host);",
    // 16: what the idle keeper reads (VMs with a run timeout, or of a base with timeouts).
    "CREATE INDEX vms_run_timeout ON vms(json_extract(spec, '$.run_timeout_s'));
     CREATE INDEX vms_base ON vms(base);",
    // 17: the database's own id, made with the lease row (agents fence by it and the term).
    "ALTER TABLE leader ADD COLUMN cluster TEXT NOT NULL DEFAULT '';",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_and_schemas_checked() {
        assert_eq!(
            dollars("SELECT ?1, '?', json_extract(spec, '$.pool') WHERE a = ?12"),
            "SELECT $1, '?', json_extract(spec, '$.pool') WHERE a = $12"
        );
        assert!(check_schema("corral_t1").is_ok());
        for bad in ["", "1x", "a-b", "A", "x; DROP TABLE vms"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_connection_string_says_why() {
        let Err(e) = Postgres::connect("host=/nowhere colour=blue", None) else {
            panic!("a connection string with an unknown option was taken");
        };
        let text = e.to_string();
        assert!(
            text.contains("invalid connection string") && text.contains("colour"),
            "{text}"
        );
    }
}
