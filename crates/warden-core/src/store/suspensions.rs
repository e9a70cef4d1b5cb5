//! The kill switch's state in the embedded store: which principals, plugins, tools and
//! schedules are suspended, by whom, when and why. It survives restarts; every change
//! is committed durably before the caller is told it took effect.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

#[derive(Debug, thiserror::Error)]
#[error("suspensions store {path}: {message}")]
pub struct SuspensionsError {
    path: String,
    message: String,
}

/// One suspension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suspension {
    /// `principal`, `plugin`, `tool`, `schedule`.
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub by: String,
    pub at_ms: i64,
}

pub struct SuspensionStore {
    conn: Mutex<Connection>,
    path: String,
}

impl SuspensionStore {
    pub fn open(path: &Path) -> Result<SuspensionStore, SuspensionsError> {
        let conn = crate::store::db::open(path, true).map_err(|e| SuspensionsError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SuspensionStore {
            conn: Mutex::new(conn),
            path: path.display().to_string(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> SuspensionsError {
        SuspensionsError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Result<Vec<Suspension>, SuspensionsError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT kind, name, reason, by, at_ms FROM suspensions ORDER BY at_ms")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Suspension {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    reason: r.get(2)?,
                    by: r.get(3)?,
                    at_ms: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Suspend (or suspend again, with a new reason).
    pub fn suspend(&self, s: &Suspension) -> Result<(), SuspensionsError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO suspensions (kind, name, reason, by, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.kind, s.name, s.reason, s.by, s.at_ms],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Lift a suspension; whether there was one.
    pub fn resume(&self, kind: &str, name: &str) -> Result<bool, SuspensionsError> {
        self.conn()
            .execute(
                "DELETE FROM suspensions WHERE kind = ?1 AND name = ?2",
                params![kind, name],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }
}
