//! Applies a database's numbered migrations, each in its own transaction, recording the last
//! in `schema_version`.

use super::sql::{p, Conn};
use super::{now_ms, Result};

/// The schema version in force.
pub fn version<C: Conn>(c: &mut C) -> Result<usize> {
    let rows = c.query("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?;
    Ok(rows
        .first()
        .map(|r| r.int(0))
        .transpose()?
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(0))
}

/// Brings the schema up to `steps.len()`.
pub fn migrate<C: Conn>(c: &mut C, steps: &[&str]) -> Result<()> {
    c.batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )?;
    let current = version(c)?;
    for (i, sql) in steps.iter().enumerate().skip(current) {
        c.batch("BEGIN")?;
        let applied = c.batch(sql).and_then(|()| {
            c.exec(
                "INSERT INTO schema_version (version, applied_ms) VALUES (?1, ?2)",
                p![i as i64 + 1, now_ms()],
            )
        });
        match applied {
            Ok(_) => c.batch("COMMIT")?,
            Err(e) => {
                let _ = c.batch("ROLLBACK");
                return Err(e);
            }
        }
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}
