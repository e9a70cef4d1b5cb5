//! The accepted definition of each upstream tool (in the embedded store, or the shared
//! one so every host agrees): recorded at first sight, replaced only by an operator
//! accepting a changed one. It stores digests and definitions; it never
//! decides what a changed definition means for a call (the runtime does).

use std::path::Path;

use super::conn::Conn;
use super::sql::{LiteDb, Row, SqlError, vals};

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
fn pin(r: &Row) -> Result<Pin, SqlError> {
    Ok(Pin {
        upstream: r.text(0)?,
        tool: r.text(1)?,
        digest: r.text(2)?,
        definition: r.text(3)?,
        accepted_by: r.text(4)?,
        accepted_ms: r.int(5)?,
    })
}

pub struct PinStore {
    conn: Conn,
    path: String,
}

impl PinStore {
    pub fn open(path: &Path) -> Result<PinStore, PinsError> {
        let conn = crate::store::db::open(path, true).map_err(|e| PinsError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(PinStore {
            conn: Conn::local(LiteDb(conn)),
            path: path.display().to_string(),
        })
    }

    /// The store `config` names: the shared one when `[store]` sets it, so a
    /// definition accepted on one host is accepted on every host.
    pub fn for_config(config: &crate::Config) -> Result<PinStore, PinsError> {
        let Some(target) = &config.store.shared else {
            return PinStore::open(&config.runs_db);
        };
        Ok(PinStore {
            conn: Conn::shared(target, "warden-pins-db", false).map_err(|message| PinsError {
                path: target.shown.clone(),
                message,
            })?,
            path: target.shown.clone(),
        })
    }

    fn err(&self, e: SqlError) -> PinsError {
        PinsError {
            path: self.path.clone(),
            message: e.0,
        }
    }

    pub fn get(&self, upstream: &str, tool: &str) -> Result<Option<Pin>, PinsError> {
        let (upstream, tool) = (upstream.to_string(), tool.to_string());
        self.conn
            .read(move |sql| {
                sql.query_opt(
                    "SELECT upstream, tool, digest, definition, accepted_by, accepted_ms
                     FROM upstream_pins WHERE upstream = ?1 AND tool = ?2",
                    vals![upstream, tool],
                )?
                .map(|r| pin(&r))
                .transpose()
            })
            .map_err(|e| self.err(e))
    }

    /// Every accepted definition of `upstream`'s tools.
    pub fn all(&self, upstream: &str) -> Result<Vec<Pin>, PinsError> {
        let upstream = upstream.to_string();
        self.conn
            .read(move |sql| {
                sql.query(
                    "SELECT upstream, tool, digest, definition, accepted_by, accepted_ms
                     FROM upstream_pins WHERE upstream = ?1 ORDER BY tool",
                    vals![upstream],
                )?
                .iter()
                .map(pin)
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Record `pin` as the accepted definition, replacing any other.
    pub fn put(&self, pin: &Pin) -> Result<(), PinsError> {
        let p = pin.clone();
        self.conn
            .write(true, move |tx| {
                tx.execute(
                    "INSERT INTO upstream_pins (upstream, tool, digest, definition, accepted_by, accepted_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (upstream, tool) DO UPDATE SET digest = excluded.digest,
                     definition = excluded.definition, accepted_by = excluded.accepted_by,
                     accepted_ms = excluded.accepted_ms",
                    vals![p.upstream, p.tool, p.digest, p.definition, p.accepted_by, p.accepted_ms],
                )?;
                Ok(())
            })
            .map_err(|e| self.err(e))
    }
}
