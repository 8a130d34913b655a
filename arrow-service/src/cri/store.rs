//! CRI records in arrowd's SQLite database (its own tables, its own connection): pod
//! sandboxes (a record each, no VM) and containers (each tied to one Arrow instance).
//! The CRI configs are stored whole as JSON, so status calls answer with what kubelet sent.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cri_sandboxes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    runtime_handler TEXT NOT NULL,
    ready INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cri_containers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    sandbox_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    config TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    log_path TEXT NOT NULL,
    log_offset INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cri_networks (
    sandbox_id TEXT PRIMARY KEY,
    netns TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT NOT NULL
);
";

/// A pod sandbox.
#[derive(Debug, Clone)]
pub struct SandboxRecord {
    /// 64 hex digits.
    pub id: String,
    /// What kubelet sent.
    pub config: PodSandboxConfig,
    /// RuntimeClass handler.
    pub runtime_handler: String,
    /// `SANDBOX_READY` until stopped.
    pub ready: bool,
    /// ns since the epoch.
    pub created_at: i64,
}

/// A CRI container.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// The Arrow instance that runs it.
    pub instance_id: String,
    /// What kubelet sent.
    pub config: ContainerConfig,
    /// Resolved image ID (`sha256:…`).
    pub image_ref: String,
    /// Full path of the CRI log ("" when none was asked for).
    pub log_path: String,
    /// Bytes of the instance's console already copied to the log.
    pub log_offset: u64,
    /// ns since the epoch.
    pub created_at: i64,
}

/// A sandbox's pod network: its pinned namespace and what CNI ADD used and returned
/// (DEL repeats the same configuration with that result).
#[derive(Debug, Clone)]
pub struct NetworkRecord {
    pub sandbox_id: String,
    /// Path of the pinned network namespace.
    pub netns: String,
    /// The network configuration ADD ran (a .conflist as JSON).
    pub config: serde_json::Value,
    /// ADD's result (`Null` while ADD has not finished).
    pub result: serde_json::Value,
}

/// The CRI tables.
pub struct CriStore {
    conn: Mutex<Connection>,
}

fn bad(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::<dyn std::error::Error + Send + Sync>::from(what),
    )
}

fn sandbox(row: &Row<'_>) -> rusqlite::Result<SandboxRecord> {
    let config: String = row.get("config")?;
    Ok(SandboxRecord {
        id: row.get("id")?,
        config: serde_json::from_str(&config)
            .map_err(|e| bad(format!("stored sandbox config is not valid JSON: {e}")))?,
        runtime_handler: row.get("runtime_handler")?,
        ready: row.get("ready")?,
        created_at: row.get("created_at")?,
    })
}

fn container(row: &Row<'_>) -> rusqlite::Result<ContainerRecord> {
    let config: String = row.get("config")?;
    Ok(ContainerRecord {
        id: row.get("id")?,
        sandbox_id: row.get("sandbox_id")?,
        instance_id: row.get("instance_id")?,
        config: serde_json::from_str(&config)
            .map_err(|e| bad(format!("stored container config is not valid JSON: {e}")))?,
        image_ref: row.get("image_ref")?,
        log_path: row.get("log_path")?,
        log_offset: row.get::<_, i64>("log_offset")?.max(0) as u64,
        created_at: row.get("created_at")?,
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| Error::Internal(format!("cannot encode a CRI record: {e}")))
}

/// What a lookup by ID or prefix found.
fn one<T>(found: Vec<T>, kind: &str, reference: &str) -> Result<T> {
    let n = found.len();
    match found.into_iter().next() {
        Some(r) if n == 1 => Ok(r),
        Some(_) => Err(Error::Invalid(format!(
            "{kind} ID prefix {reference:?} is ambiguous: give more digits"
        ))),
        None => Err(Error::NotFound(format!(
            "{kind} {reference:?} not found: it does not exist or was removed (crictl {} lists them)",
            if kind == "pod sandbox" { "pods" } else { "ps -a" }
        ))),
    }
}

impl CriStore {
    /// Opens arrowd's database file with a connection of our own.
    pub fn open(path: &Path) -> Result<CriStore> {
        let conn = Connection::open(path).map_err(|e| {
            Error::Internal(format!(
                "cannot open the state database {}: {e}",
                path.display()
            ))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(CriStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new sandbox.
    pub fn insert_sandbox(&self, s: &SandboxRecord) -> Result<()> {
        self.lock().execute(
            "INSERT INTO cri_sandboxes (id, config, runtime_handler, ready, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id, json(&s.config)?, s.runtime_handler, s.ready, s.created_at],
        )?;
        Ok(())
    }

    /// All sandboxes, oldest first.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT * FROM cri_sandboxes ORDER BY seq")?;
        let rows = stmt.query_map([], sandbox)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A sandbox by full ID or unique prefix.
    pub fn sandbox(&self, reference: &str) -> Result<SandboxRecord> {
        let found = self.find("cri_sandboxes", reference, sandbox)?;
        one(found, "pod sandbox", reference)
    }

    /// Marks a sandbox not ready.
    pub fn set_sandbox_ready(&self, id: &str, ready: bool) -> Result<()> {
        self.lock().execute(
            "UPDATE cri_sandboxes SET ready = ?2 WHERE id = ?1",
            params![id, ready],
        )?;
        Ok(())
    }

    /// Deletes a sandbox record.
    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.lock()
            .execute("DELETE FROM cri_sandboxes WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records a new container.
    pub fn insert_container(&self, c: &ContainerRecord) -> Result<()> {
        self.lock().execute(
            "INSERT INTO cri_containers (id, sandbox_id, instance_id, config, image_ref, log_path, log_offset, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.id,
                c.sandbox_id,
                c.instance_id,
                json(&c.config)?,
                c.image_ref,
                c.log_path,
                c.log_offset as i64,
                c.created_at
            ],
        )?;
        Ok(())
    }

    /// All containers, oldest first.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT * FROM cri_containers ORDER BY seq")?;
        let rows = stmt.query_map([], container)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A container by full ID or unique prefix.
    pub fn container(&self, reference: &str) -> Result<ContainerRecord> {
        let found = self.find("cri_containers", reference, container)?;
        one(found, "container", reference)
    }

    /// A container by exact ID, if it still exists.
    pub fn container_by_id(&self, id: &str) -> Result<Option<ContainerRecord>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT * FROM cri_containers WHERE id = ?1",
                [id],
                container,
            )
            .optional()?)
    }

    /// Remembers how much of the console the log writer has copied.
    pub fn set_log_offset(&self, id: &str, offset: u64) -> Result<()> {
        self.lock().execute(
            "UPDATE cri_containers SET log_offset = ?2 WHERE id = ?1",
            params![id, offset as i64],
        )?;
        Ok(())
    }

    /// Deletes a container record.
    pub fn delete_container(&self, id: &str) -> Result<()> {
        self.lock()
            .execute("DELETE FROM cri_containers WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records (or replaces) a sandbox's network.
    pub fn put_network(&self, n: &NetworkRecord) -> Result<()> {
        self.lock().execute(
            "INSERT OR REPLACE INTO cri_networks (sandbox_id, netns, config, result) VALUES (?1, ?2, ?3, ?4)",
            params![n.sandbox_id, n.netns, n.config.to_string(), n.result.to_string()],
        )?;
        Ok(())
    }

    /// A sandbox's network, if it has one.
    pub fn network(&self, sandbox_id: &str) -> Result<Option<NetworkRecord>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT netns, config, result FROM cri_networks WHERE sandbox_id = ?1",
                [sandbox_id],
                |r| {
                    let parse = |i: usize| -> rusqlite::Result<serde_json::Value> {
                        let t: String = r.get(i)?;
                        serde_json::from_str(&t)
                            .map_err(|e| bad(format!("stored CNI data is not valid JSON: {e}")))
                    };
                    Ok(NetworkRecord {
                        sandbox_id: sandbox_id.to_owned(),
                        netns: r.get(0)?,
                        config: parse(1)?,
                        result: parse(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Sandbox IDs that have a network row but no sandbox row (arrowd stopped between
    /// CNI ADD and recording the sandbox).
    pub fn orphan_networks(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT sandbox_id FROM cri_networks WHERE sandbox_id NOT IN (SELECT id FROM cri_sandboxes)",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Forgets a sandbox's network (after DEL and the namespace's removal).
    pub fn delete_network(&self, sandbox_id: &str) -> Result<()> {
        self.lock().execute(
            "DELETE FROM cri_networks WHERE sandbox_id = ?1",
            [sandbox_id],
        )?;
        Ok(())
    }

    fn find<T>(
        &self,
        table: &str,
        reference: &str,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        // IDs are hex: anything else cannot match, and must not reach LIKE as a pattern.
        if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM {table} WHERE id LIKE ?1 || '%' ORDER BY seq LIMIT 2"
        ))?;
        let rows = stmt.query_map([reference.to_ascii_lowercase()], map)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = CriStore::open(&dir.path().join("db")).unwrap();
        let mk = |id: &str| SandboxRecord {
            id: id.to_owned(),
            config: PodSandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            },
            runtime_handler: String::new(),
            ready: true,
            created_at: 1,
        };
        s.insert_sandbox(&mk("abc1")).unwrap();
        s.insert_sandbox(&mk("abc2")).unwrap();
        assert_eq!(s.sandbox("abc1").unwrap().config.hostname, "h");
        assert!(matches!(s.sandbox("abc"), Err(Error::Invalid(_))));
        assert!(matches!(s.sandbox("ff"), Err(Error::NotFound(_))));
        assert!(matches!(s.sandbox("a%"), Err(Error::NotFound(_))));
        s.set_sandbox_ready("abc2", false).unwrap();
        assert!(!s.sandbox("abc2").unwrap().ready);
        let n = NetworkRecord {
            sandbox_id: "abc2".into(),
            netns: "/run/netns/x".into(),
            config: serde_json::json!({"name": "pods"}),
            result: serde_json::Value::Null,
        };
        s.put_network(&n).unwrap();
        let orphan = NetworkRecord {
            sandbox_id: "dead".into(),
            ..n.clone()
        };
        s.put_network(&orphan).unwrap();
        assert_eq!(s.orphan_networks().unwrap(), ["dead"]);
        let back = s.network("abc2").unwrap().unwrap();
        assert_eq!(
            (back.netns.as_str(), &back.config, &back.result),
            ("/run/netns/x", &n.config, &n.result)
        );
        s.delete_network("abc2").unwrap();
        assert!(s.network("abc2").unwrap().is_none());
        s.delete_sandbox("abc1").unwrap();
        assert_eq!(s.sandbox("abc").unwrap().id, "abc2");
    }
}
