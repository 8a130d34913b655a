//! Template records and the instance → template link, in arrowd's SQLite database.

use rusqlite::{params, OptionalExtension, Row};

use super::model::{CloneInfo, TemplateSpec, TemplateState};
use crate::db::Db;
use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS templates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_at INTEGER NOT NULL,
    boot_to_snapshot_ms INTEGER
);
CREATE TABLE IF NOT EXISTS template_clones (
    instance_id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    template_name TEXT NOT NULL,
    pooled INTEGER NOT NULL,
    start_us INTEGER
);
";

/// A stored template.
#[derive(Debug, Clone)]
pub struct TemplateRecord {
    /// Row number (the template VM's vsock CID is derived from it).
    pub seq: i64,
    /// ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// What it runs.
    pub spec: TemplateSpec,
    /// Stored state (never `stale`: that is computed).
    pub state: TemplateState,
    /// Why it failed.
    pub reason: Option<String>,
    /// ms since epoch.
    pub created_at: i64,
    /// Spawn → snapshot written, ms.
    pub boot_to_snapshot_ms: Option<i64>,
}

fn bad(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::<dyn std::error::Error + Send + Sync>::from(what),
    )
}

fn record(row: &Row<'_>) -> rusqlite::Result<TemplateRecord> {
    let spec: String = row.get("spec")?;
    let state: String = row.get("state")?;
    Ok(TemplateRecord {
        seq: row.get("seq")?,
        id: row.get("id")?,
        name: row.get("name")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| bad(format!("template spec is not valid JSON: {e}")))?,
        state: TemplateState::parse(&state)
            .ok_or_else(|| bad(format!("unknown template state {state:?}")))?,
        reason: row.get("reason")?,
        created_at: row.get("created_at")?,
        boot_to_snapshot_ms: row.get("boot_to_snapshot_ms")?,
    })
}

/// Creates the template tables (idempotent).
pub fn init(db: &Db) -> Result<()> {
    db.lock().execute_batch(SCHEMA)?;
    Ok(())
}

/// Inserts a template in state `creating`; `spec.vsock_cid` is derived from the row
/// number (`cid_of`). Fails with a conflict if the name is taken.
pub fn insert(
    db: &Db,
    id: &str,
    name: &str,
    spec: &mut TemplateSpec,
    now: i64,
    cid_of: impl Fn(i64) -> u32,
) -> Result<()> {
    let mut conn = db.lock();
    let tx = conn.transaction()?;
    let taken: i64 = tx.query_row(
        "SELECT COUNT(*) FROM templates WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    if taken > 0 {
        return Err(Error::Conflict(format!(
            "a template named {name:?} exists: choose another name, or remove it (`actl template rm {name}`)"
        )));
    }
    tx.execute(
        "INSERT INTO templates (id, name, spec, state, created_at) VALUES (?1, ?2, '{}', 'creating', ?3)",
        params![id, name, now],
    )?;
    spec.vsock_cid = cid_of(tx.last_insert_rowid());
    let json = serde_json::to_string(spec)
        .map_err(|e| Error::Internal(format!("cannot encode the template spec: {e}")))?;
    tx.execute(
        "UPDATE templates SET spec = ?1 WHERE id = ?2",
        params![json, id],
    )?;
    tx.commit()?;
    Ok(())
}

/// All templates, oldest first.
pub fn list(db: &Db) -> Result<Vec<TemplateRecord>> {
    let conn = db.lock();
    let mut stmt = conn.prepare("SELECT * FROM templates ORDER BY seq")?;
    let rows = stmt.query_map([], record)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A template by exact name or ID.
pub fn find(db: &Db, reference: &str) -> Result<Option<TemplateRecord>> {
    Ok(db
        .lock()
        .query_row(
            "SELECT * FROM templates WHERE name = ?1 OR id = ?1",
            [reference],
            record,
        )
        .optional()?)
}

/// `creating` → `ready` with the measured time.
pub fn set_ready(db: &Db, id: &str, boot_to_snapshot_ms: i64) -> Result<()> {
    db.lock().execute(
        "UPDATE templates SET state = 'ready', reason = NULL, boot_to_snapshot_ms = ?2 WHERE id = ?1",
        params![id, boot_to_snapshot_ms],
    )?;
    Ok(())
}

/// → `failed` with the reason.
pub fn set_failed(db: &Db, id: &str, reason: &str) -> Result<()> {
    db.lock().execute(
        "UPDATE templates SET state = 'failed', reason = ?2 WHERE id = ?1",
        params![id, reason],
    )?;
    Ok(())
}

/// Deletes a template record.
pub fn delete(db: &Db, id: &str) -> Result<()> {
    db.lock()
        .execute("DELETE FROM templates WHERE id = ?1", [id])?;
    Ok(())
}

/// Records that the instance's current run was cloned from a template (or, with
/// `None`, that it was not).
pub fn set_clone(db: &Db, instance_id: &str, info: Option<&CloneInfo>) -> Result<()> {
    let conn = db.lock();
    match info {
        Some(c) => conn.execute(
            "INSERT INTO template_clones (instance_id, template_id, template_name, pooled, start_us)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(instance_id) DO UPDATE SET template_id = ?2, template_name = ?3, pooled = ?4, start_us = ?5",
            params![instance_id, c.template_id, c.template, c.pooled, c.start_us],
        )?,
        None => conn.execute(
            "DELETE FROM template_clones WHERE instance_id = ?1",
            [instance_id],
        )?,
    };
    Ok(())
}

/// How the instance's current (or last) run was cloned, if it was.
pub fn clone_of(db: &Db, instance_id: &str) -> Result<Option<CloneInfo>> {
    Ok(db
        .lock()
        .query_row(
            "SELECT template_id, template_name, pooled, start_us FROM template_clones WHERE instance_id = ?1",
            [instance_id],
            |r| {
                Ok(CloneInfo {
                    template_id: r.get(0)?,
                    template: r.get(1)?,
                    pooled: r.get(2)?,
                    generic: r
                        .get::<_, String>(0)?
                        .starts_with(super::generic::PREFIX),
                    start_us: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Active instances (and their PIDs) cloned from `template_id`.
pub fn active_clones(db: &Db, template_id: &str) -> Result<Vec<(String, Option<i32>)>> {
    let conn = db.lock();
    let mut stmt = conn.prepare(
        "SELECT i.id, i.pid FROM instances i JOIN template_clones c ON c.instance_id = i.id
         WHERE c.template_id = ?1 AND i.state IN ('starting', 'running', 'stopping') ORDER BY i.seq",
    )?;
    let rows = stmt.query_map([template_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Forgets links of removed instances.
pub fn prune_clones(db: &Db) -> Result<()> {
    db.lock().execute(
        "DELETE FROM template_clones WHERE instance_id NOT IN (SELECT id FROM instances)",
        [],
    )?;
    Ok(())
}

/// Every instance ID in the database (to tell leftover pool directories apart).
pub fn instance_ids(db: &Db) -> Result<std::collections::HashSet<String>> {
    let conn = db.lock();
    let mut stmt = conn.prepare("SELECT id FROM instances")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Highest vsock CID recorded for any instance at or above `floor` (pool CIDs).
pub fn max_cid_from(db: &Db, floor: u32) -> Result<u32> {
    let conn = db.lock();
    let mut stmt = conn.prepare("SELECT spec FROM instances")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut max = floor;
    for spec in rows {
        let v: serde_json::Value = serde_json::from_str(&spec?).unwrap_or_default();
        if let Some(cid) = v["vsock_cid"].as_u64().and_then(|c| u32::try_from(c).ok()) {
            max = max.max(cid);
        }
    }
    Ok(max)
}
