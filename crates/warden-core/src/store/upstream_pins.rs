//! The accepted definition of each upstream tool: recorded at first sight, replaced only
//! by an operator accepting a changed one. It stores digests and definitions; it never
//! decides what a changed definition means for a call (the runtime does).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("upstream pins in {path}: {message}")]
pub struct PinsError {
    path: String,
    message: String,
}

/// One accepted definition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pin {
    pub upstream: String,
    pub tool: String,
    pub digest: String,
    pub definition: String,
    pub accepted_by: String,
    pub accepted_ms: i64,
}

/// A row of `SELECT upstream, tool, digest, definition, accepted_by, accepted_ms`.
fn pin(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pin> {
    Ok(Pin {
        upstream: r.get(0)?,
        tool: r.get(1)?,
        digest: r.get(2)?,
        definition: r.get(3)?,
        accepted_by: r.get(4)?,
        accepted_ms: r.get(5)?,
    })
}

pub struct PinStore {
    conn: Mutex<Connection>,
    path: String,
}

impl PinStore {
    pub fn open(path: &Path) -> Result<PinStore, PinsError> {
        let conn = crate::store::db::open(path, true).map_err(|e| PinsError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(PinStore {
            conn: Mutex::new(conn),
            path: path.display().to_string(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> PinsError {
        PinsError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, upstream: &str, tool: &str) -> Result<Option<Pin>, PinsError> {
        self.conn()
            .query_row(
                "SELECT upstream, tool, digest, definition, accepted_by, accepted_ms
                 FROM upstream_pins WHERE upstream = ?1 AND tool = ?2",
                params![upstream, tool],
                pin,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every accepted definition of `upstream`'s tools.
    pub fn all(&self, upstream: &str) -> Result<Vec<Pin>, PinsError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT upstream, tool, digest, definition, accepted_by, accepted_ms
                 FROM upstream_pins WHERE upstream = ?1 ORDER BY tool",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![upstream], pin)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Record `pin` as the accepted definition, replacing any other.
    pub fn put(&self, pin: &Pin) -> Result<(), PinsError> {
        self.conn()
            .execute(
                "INSERT INTO upstream_pins (upstream, tool, digest, definition, accepted_by, accepted_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (upstream, tool) DO UPDATE SET digest = ?3, definition = ?4,
                 accepted_by = ?5, accepted_ms = ?6",
                params![
                    pin.upstream,
                    pin.tool,
                    pin.digest,
                    pin.definition,
                    pin.accepted_by,
                    pin.accepted_ms
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}
