//! Instance and image records in SQLite (WAL). Every change is one transaction; state
//! transitions are conditional (`WHERE state IN (…)`) so that racing operations cannot
//! overwrite each other.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{Error, Result};
use crate::model::{InstanceSpec, State};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    exit_code INTEGER,
    reason TEXT,
    start_latency_ms INTEGER,
    start_count INTEGER NOT NULL DEFAULT 0,
    cgroup TEXT
);
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,
    reference TEXT NOT NULL,
    first_used INTEGER NOT NULL,
    last_used INTEGER NOT NULL
);
";

/// A stored instance.
#[derive(Debug, Clone)]
pub struct Record {
    /// Row number; also the base of the vsock CID.
    pub seq: i64,
    /// ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// What it runs.
    pub spec: InstanceSpec,
    /// State.
    pub state: State,
    /// arrow-vmm PID.
    pub pid: Option<i32>,
    /// The PID's start time (clock ticks since boot, /proc/PID/stat field 22).
    pub pid_start: Option<u64>,
    /// ms since epoch.
    pub created_at: i64,
    /// ms since epoch.
    pub started_at: Option<i64>,
    /// ms since epoch.
    pub finished_at: Option<i64>,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    /// Why it stopped / failed.
    pub reason: Option<String>,
    /// Spawn → APP_STARTED, ms.
    pub start_latency_ms: Option<i64>,
    /// Times started.
    pub start_count: i64,
    /// cgroup directory.
    pub cgroup: Option<String>,
}

/// The database handle (one connection, serialized).
pub struct Db {
    conn: Mutex<Connection>,
}

fn record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let spec_text: String = row.get("spec")?;
    let state_text: String = row.get("state")?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(what),
        )
    };
    Ok(Record {
        seq: row.get("seq")?,
        id: row.get("id")?,
        name: row.get("name")?,
        spec: serde_json::from_str(&spec_text)
            .map_err(|e| bad(format!("instance spec is not valid JSON: {e}")))?,
        state: State::parse(&state_text)
            .ok_or_else(|| bad(format!("unknown state {state_text:?}")))?,
        pid: row.get("pid")?,
        pid_start: row.get::<_, Option<i64>>("pid_start")?.map(|v| v as u64),
        created_at: row.get("created_at")?,
        started_at: row.get("started_at")?,
        finished_at: row.get("finished_at")?,
        exit_code: row.get("exit_code")?,
        reason: row.get("reason")?,
        start_latency_ms: row.get("start_latency_ms")?,
        start_count: row.get("start_count")?,
        cgroup: row.get("cgroup")?,
    })
}

fn states_sql(states: &[State]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

impl Db {
    /// Opens (creating) the database at `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path).map_err(|e| {
            Error::Internal(format!(
                "cannot open the state database {}: {e}; check the --state-dir permissions",
                path.display()
            ))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock only means another request panicked mid-call; the connection
        // itself is still consistent (SQLite rolled back any open transaction).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a new instance (state `created`) and records its image, in one transaction.
    /// The vsock CID is taken from the row number: `spec.vsock_cid` is filled in here.
    pub fn insert(&self, id: &str, name: &str, spec: &mut InstanceSpec, now: i64) -> Result<i64> {
        self.insert_with_cid(id, name, spec, now, None)
    }

    /// [`Db::insert`], with a CID chosen beforehand (a warm-pool VMM already has its own).
    pub fn insert_with_cid(
        &self,
        id: &str,
        name: &str,
        spec: &mut InstanceSpec,
        now: i64,
        cid: Option<u32>,
    ) -> Result<i64> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let taken: bool = tx
            .query_row(
                "SELECT COUNT(*) FROM instances WHERE name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)?;
        if taken {
            return Err(Error::Conflict(format!(
                "the name {name:?} is already in use: choose another name, or remove that instance (`actl rm {name}`)"
            )));
        }
        tx.execute(
            "INSERT INTO instances (id, name, spec, state, created_at) VALUES (?1, ?2, '{}', 'created', ?3)",
            params![id, name, now],
        )?;
        let seq = tx.last_insert_rowid();
        spec.vsock_cid = cid.unwrap_or_else(|| u32::try_from(seq + 2).unwrap_or(u32::MAX));
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| Error::Internal(format!("cannot encode the instance spec: {e}")))?;
        tx.execute(
            "UPDATE instances SET spec = ?1 WHERE seq = ?2",
            params![spec_json, seq],
        )?;
        tx.execute(
            "INSERT INTO images (digest, reference, first_used, last_used) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(digest) DO UPDATE SET last_used = ?3, reference = ?2",
            params![spec.image_digest, spec.image, now],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// All instances, oldest first.
    pub fn list(&self) -> Result<Vec<Record>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT * FROM instances ORDER BY seq")?;
        let rows = stmt.query_map([], record)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One instance by exact ID.
    pub fn get(&self, id: &str) -> Result<Option<Record>> {
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT * FROM instances WHERE id = ?1", [id], record)
            .optional()?)
    }

    /// Resolves a user's reference: exact ID, exact name, or unique ID prefix.
    pub fn find(&self, reference: &str) -> Result<Record> {
        let conn = self.lock();
        if let Some(r) = conn
            .query_row(
                "SELECT * FROM instances WHERE id = ?1 OR name = ?1",
                [reference],
                record,
            )
            .optional()?
        {
            return Ok(r);
        }
        let not_found = || {
            Error::NotFound(format!(
                "no instance {reference:?}: it does not exist or was removed; `actl ps -a` lists instances"
            ))
        };
        if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let mut stmt = conn.prepare("SELECT * FROM instances WHERE id LIKE ?1 || '%' LIMIT 2")?;
        let found = stmt
            .query_map([reference], record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        match found.len() {
            1 => Ok(found.into_iter().next().ok_or_else(not_found)?),
            0 => Err(not_found()),
            _ => Err(Error::Invalid(format!(
                "instance ID prefix {reference:?} is ambiguous: give more digits"
            ))),
        }
    }

    /// Moves `id` from one of `from` to `starting` (clearing the last run's results).
    pub fn begin_start(&self, id: &str, from: &[State], now: i64) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!(
                "UPDATE instances SET state = 'starting', pid = NULL, pid_start = NULL, exit_code = NULL,
                 reason = NULL, finished_at = NULL, start_latency_ms = NULL, started_at = ?2,
                 start_count = start_count + 1 WHERE id = ?1 AND state IN ({})",
                states_sql(from)
            ),
            params![id, now],
        )?;
        Ok(n == 1)
    }

    /// Records the spawned process: `starting` → `running`.
    pub fn set_running(
        &self,
        id: &str,
        pid: i32,
        pid_start: u64,
        cgroup: Option<&str>,
    ) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE instances SET state = 'running', pid = ?2, pid_start = ?3, cgroup = ?4
             WHERE id = ?1 AND state IN ('starting', 'running')",
            params![id, pid, pid_start as i64, cgroup],
        )?;
        Ok(n == 1)
    }

    /// Sets the state of an active instance (e.g. `stopping`).
    pub fn set_state(&self, id: &str, from: &[State], to: State) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            &format!(
                "UPDATE instances SET state = ?2 WHERE id = ?1 AND state IN ({})",
                states_sql(from)
            ),
            params![id, to.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Ends a run: active → `exited`/`failed` with exit code and reason.
    pub fn finish(
        &self,
        id: &str,
        state: State,
        exit_code: Option<i32>,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE instances SET state = ?2, exit_code = ?3, reason = ?4, finished_at = ?5, pid = NULL, pid_start = NULL
             WHERE id = ?1 AND state IN ('starting', 'running', 'stopping')",
            params![id, state.as_str(), exit_code, reason, now],
        )?;
        Ok(n == 1)
    }

    /// Records the start latency of the current run.
    pub fn set_start_latency(&self, id: &str, ms: i64) -> Result<()> {
        self.lock().execute(
            "UPDATE instances SET start_latency_ms = ?2 WHERE id = ?1",
            params![id, ms],
        )?;
        Ok(())
    }

    /// Deletes a finished or never-started instance.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let n = self.lock().execute(
            "DELETE FROM instances WHERE id = ?1 AND state IN ('created', 'exited', 'failed')",
            [id],
        )?;
        Ok(n == 1)
    }

    /// Number of instances in each state.
    pub fn count_by_state(&self) -> Result<Vec<(State, i64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM instances GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (s, n) = row?;
            if let Some(st) = State::parse(&s) {
                out.push((st, n));
            }
        }
        Ok(out)
    }
}
