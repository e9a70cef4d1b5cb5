//! The kill switch's state in the embedded store (or the shared PostgreSQL, so a
//! suspension made on one host holds on every host): which principals, plugins, tools
//! and schedules are suspended, by whom, when and why. It survives restarts; every
//! change is committed durably before the caller is told it took effect.

use std::path::Path;

use super::conn::Conn;
use super::postgres::Target;
use super::sql::{LiteDb, SqlError, vals};

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
    conn: Conn,
    path: String,
}

impl SuspensionStore {
    pub fn open(path: &Path) -> Result<SuspensionStore, SuspensionsError> {
        let conn = crate::store::db::open(path, true).map_err(|e| SuspensionsError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SuspensionStore {
            conn: Conn::local(LiteDb(conn)),
            path: path.display().to_string(),
        })
    }

    /// The kill switch in the PostgreSQL at `target`, shared by every host.
    pub fn open_shared(target: &Target) -> Result<SuspensionStore, SuspensionsError> {
        Ok(SuspensionStore {
            conn: Conn::shared(target, "warden-suspensions-db", false).map_err(|message| {
                SuspensionsError {
                    path: target.shown.clone(),
                    message,
                }
            })?,
            path: target.shown.clone(),
        })
    }

    /// The store `config` names: the shared one when `[store]` sets it.
    pub fn for_config(config: &crate::Config) -> Result<SuspensionStore, SuspensionsError> {
        match &config.store.shared {
            Some(target) => SuspensionStore::open_shared(target),
            None => SuspensionStore::open(&config.runs_db),
        }
    }

    fn err(&self, e: SqlError) -> SuspensionsError {
        SuspensionsError {
            path: self.path.clone(),
            message: e.0,
        }
    }

    pub fn list(&self) -> Result<Vec<Suspension>, SuspensionsError> {
        self.conn
            .read(|sql| {
                sql.query(
                    "SELECT kind, name, reason, by, at_ms FROM suspensions ORDER BY at_ms",
                    &[],
                )?
                .iter()
                .map(|r| {
                    Ok(Suspension {
                        kind: r.text(0)?,
                        name: r.text(1)?,
                        reason: r.text(2)?,
                        by: r.text(3)?,
                        at_ms: r.int(4)?,
                    })
                })
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Suspend (or suspend again, with a new reason).
    pub fn suspend(&self, s: &Suspension) -> Result<(), SuspensionsError> {
        let s = s.clone();
        self.conn
            .write(true, move |tx| {
                tx.execute(
                    "INSERT INTO suspensions (kind, name, reason, by, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (kind, name) DO UPDATE SET reason = excluded.reason,
                         by = excluded.by, at_ms = excluded.at_ms",
                    vals![s.kind, s.name, s.reason, s.by, s.at_ms],
                )?;
                Ok(())
            })
            .map_err(|e| self.err(e))
    }

    /// Lift a suspension; whether there was one.
    pub fn resume(&self, kind: &str, name: &str) -> Result<bool, SuspensionsError> {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.conn
            .write(true, move |tx| {
                Ok(tx.execute(
                    "DELETE FROM suspensions WHERE kind = ?1 AND name = ?2",
                    vals![kind, name],
                )? > 0)
            })
            .map_err(|e| self.err(e))
    }
}
