//! What schedules and triggers keep between runs, in the embedded store (or the
//! shared PostgreSQL, so hosts fire each time once in the cluster): each
//! schedule's pause (it survives restarts), the fire times claimed (a lease per fire
//! time, so processes sharing a data dir fire each time once, and a restart never fires
//! a time that already ran), and trigger deliveries seen (a redelivery runs once).
//!
//! Claims are made in one transaction per batch of due schedules. It must never let two
//! claims of one fire time or one delivery both succeed.

use std::collections::HashMap;
use std::path::Path;

use super::conn::Conn;
use super::postgres::Target;
use super::sql::{LiteDb, Row, Sql, SqlError, vals};

/// Fire times and deliveries older than this are forgotten (the run history keeps the
/// runs); a redelivery older than this would run again.
pub const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
#[error("schedules and triggers store {path}: {message}")]
pub struct AutomationError {
    path: String,
    message: String,
}

/// A schedule's persistent state.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ScheduleState {
    /// When this data dir first saw the schedule (catch-up never reaches before it).
    pub seen_ms: i64,
    pub paused: bool,
    pub paused_by: Option<String>,
    pub paused_ms: Option<i64>,
    pub reason: Option<String>,
    /// The last fire time claimed, by any process.
    pub last_fire_ms: Option<i64>,
}

/// One fire time to claim.
#[derive(Debug, Clone, Copy)]
pub struct Fire<'a> {
    pub name: &'a str,
    pub fire_ms: i64,
    /// `scheduled`, `catch-up`, `manual`.
    pub kind: &'a str,
}

pub struct AutomationStore {
    conn: Conn,
    path: String,
}

impl AutomationStore {
    /// The store in the embedded database at `path`.
    pub fn open(path: &Path) -> Result<AutomationStore, AutomationError> {
        let shown = path.display().to_string();
        let conn = crate::store::db::open(path, false).map_err(|e| AutomationError {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(AutomationStore {
            conn: Conn::local(LiteDb(conn)),
            path: shown,
        })
    }

    /// The store in the PostgreSQL at `target`, shared with other hosts: each fire time
    /// and each delivery is claimed once in the cluster.
    pub fn open_shared(target: &Target) -> Result<AutomationStore, AutomationError> {
        Ok(AutomationStore {
            conn: Conn::shared(target, "warden-automation-db", false).map_err(|message| {
                AutomationError {
                    path: target.shown.clone(),
                    message,
                }
            })?,
            path: target.shown.clone(),
        })
    }

    /// The store `config` names: the shared one when `[store]` sets it.
    pub fn for_config(config: &crate::Config) -> Result<AutomationStore, AutomationError> {
        match &config.store.shared {
            Some(target) => AutomationStore::open_shared(target),
            None => AutomationStore::open(&config.runs_db),
        }
    }

    fn err(&self, e: SqlError) -> AutomationError {
        AutomationError {
            path: self.path.clone(),
            message: e.0,
        }
    }

    /// Record `names` as seen at `now_ms` (those seen before keep their first sight) and
    /// return every one's state.
    pub fn register(
        &self,
        names: &[&str],
        now_ms: i64,
    ) -> Result<HashMap<String, ScheduleState>, AutomationError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.conn
            .write(false, move |tx| {
                for name in &names {
                    tx.execute(
                        "INSERT INTO schedules (name, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        vals![name, now_ms],
                    )?;
                }
                let mut out = HashMap::new();
                for name in names {
                    if let Some(state) = read_state(tx, &name)? {
                        out.insert(name, state);
                    }
                }
                Ok(out)
            })
            .map_err(|e| self.err(e))
    }

    pub fn state(&self, name: &str) -> Result<Option<ScheduleState>, AutomationError> {
        let name = name.to_string();
        self.conn
            .read(move |sql| read_state(sql, &name))
            .map_err(|e| self.err(e))
    }

    /// The paused schedules.
    pub fn paused(&self) -> Result<std::collections::HashSet<String>, AutomationError> {
        self.conn
            .read(|sql| {
                sql.query("SELECT name FROM schedules WHERE paused = 1", &[])?
                    .iter()
                    .map(|r| r.text(0))
                    .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Pause or resume `name`; returns whether that changed anything.
    pub fn set_paused(
        &self,
        name: &str,
        paused: bool,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, AutomationError> {
        let (name, by, reason) = (name.to_string(), by.to_string(), reason.map(str::to_string));
        self.conn
            .write(true, move |tx| {
                tx.execute(
                    "INSERT INTO schedules (name, seen_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    vals![&name, now_ms],
                )?;
                let changed = tx.execute(
                    "UPDATE schedules SET paused = ?2, paused_by = ?3, paused_ms = ?4, reason = ?5
                     WHERE name = ?1 AND paused != ?2",
                    vals![name, paused, by, now_ms, reason],
                )?;
                Ok(changed == 1)
            })
            .map_err(|e| self.err(e))
    }

    /// Claim `fires` for `owner` in one transaction: `true` for each this call claimed,
    /// `false` for each another claim (another process or host, an earlier run)
    /// already holds.
    pub fn claim(
        &self,
        fires: &[Fire<'_>],
        owner: &str,
        now_ms: i64,
    ) -> Result<Vec<bool>, AutomationError> {
        let fires: Vec<(String, i64, String)> = fires
            .iter()
            .map(|f| (f.name.to_string(), f.fire_ms, f.kind.to_string()))
            .collect();
        let owner = owner.to_string();
        self.conn
            .write(true, move |tx| {
                let mut out = Vec::with_capacity(fires.len());
                for (name, fire_ms, kind) in fires {
                    let n = tx.execute(
                        "INSERT INTO schedule_fires (name, fire_ms, kind, owner, claimed_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                        vals![name, fire_ms, kind, &owner, now_ms],
                    )?;
                    out.push(n == 1);
                }
                Ok(out)
            })
            .map_err(|e| self.err(e))
    }

    /// Claim delivery `id` of trigger `name`: `false` when it was seen before.
    pub fn claim_delivery(
        &self,
        name: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, AutomationError> {
        let (name, id) = (name.to_string(), id.to_string());
        self.conn
            .write(true, move |tx| {
                Ok(tx.execute(
                    "INSERT INTO trigger_deliveries (name, delivery, at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    vals![name, id, now_ms],
                )? == 1)
            })
            .map_err(|e| self.err(e))
    }

    /// Forget delivery `id` of trigger `name` (its call ran nothing: a retry may run).
    pub fn release_delivery(&self, name: &str, id: &str) -> Result<(), AutomationError> {
        let (name, id) = (name.to_string(), id.to_string());
        self.conn
            .write(true, move |tx| {
                tx.execute(
                    "DELETE FROM trigger_deliveries WHERE name = ?1 AND delivery = ?2",
                    vals![name, id],
                )?;
                Ok(())
            })
            .map_err(|e| self.err(e))
    }

    /// Forget fire times and deliveries older than [`KEEP_MS`] (keeping each schedule's
    /// last fire time, which catch-up needs).
    pub fn prune(&self, now_ms: i64) -> Result<(), AutomationError> {
        let before = now_ms - KEEP_MS;
        self.conn
            .write(false, move |tx| {
                tx.execute(
                    "DELETE FROM schedule_fires WHERE fire_ms < ?1 AND fire_ms <
                         (SELECT MAX(f.fire_ms) FROM schedule_fires f WHERE f.name = schedule_fires.name)",
                    vals![before],
                )?;
                tx.execute(
                    "DELETE FROM trigger_deliveries WHERE at_ms < ?1",
                    vals![before],
                )?;
                Ok(())
            })
            .map_err(|e| self.err(e))
    }
}

fn read_state(sql: &mut dyn Sql, name: &str) -> Result<Option<ScheduleState>, SqlError> {
    let row: Option<Row> = sql.query_opt(
        "SELECT seen_ms, paused, paused_by, paused_ms, reason,
                (SELECT MAX(fire_ms) FROM schedule_fires WHERE name = ?1)
         FROM schedules WHERE name = ?1",
        vals![name],
    )?;
    row.map(|r| {
        Ok(ScheduleState {
            seen_ms: r.int(0)?,
            paused: r.bool(1)?,
            paused_by: r.opt_text(2)?,
            paused_ms: r.opt_int(3)?,
            reason: r.opt_text(4)?,
            last_fire_ms: r.opt_int(5)?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fire_time_and_a_delivery_are_claimed_once_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("runs.db");
        let (a, b) = (
            AutomationStore::open(&db).unwrap(),
            AutomationStore::open(&db).unwrap(),
        );
        let fire = |ms| Fire {
            name: "nightly",
            fire_ms: ms,
            kind: "scheduled",
        };
        assert_eq!(
            a.claim(&[fire(1000), fire(2000)], "a", 1).unwrap(),
            [true, true]
        );
        assert_eq!(
            b.claim(&[fire(2000), fire(3000)], "b", 2).unwrap(),
            [false, true]
        );
        assert!(a.claim_delivery("gh", "d-1", 5).unwrap());
        assert!(!b.claim_delivery("gh", "d-1", 6).unwrap());

        let state = a.register(&["nightly", "new"], 10).unwrap();
        assert_eq!(state["nightly"].last_fire_ms, Some(3000));
        assert_eq!(state["new"].last_fire_ms, None);
        assert_eq!(state["new"].seen_ms, 10);
        // Seen before: its first sight stays.
        assert_eq!(b.register(&["new"], 99).unwrap()["new"].seen_ms, 10);
    }

    #[test]
    fn a_pause_survives_reopening_and_pruning_keeps_the_last_fire() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("runs.db");
        {
            let s = AutomationStore::open(&db).unwrap();
            assert!(s.set_paused("x", true, "ops", Some("incident"), 5).unwrap());
            assert!(
                !s.set_paused("x", true, "ops", None, 6).unwrap(),
                "already paused"
            );
            let old = Fire {
                name: "x",
                fire_ms: 1,
                kind: "scheduled",
            };
            s.claim(&[old], "a", 1).unwrap();
            s.prune(KEEP_MS * 3).unwrap();
        }
        let s = AutomationStore::open(&db).unwrap();
        let st = s.state("x").unwrap().unwrap();
        assert!(st.paused);
        assert_eq!(st.reason.as_deref(), Some("incident"));
        assert_eq!(st.last_fire_ms, Some(1), "the last fire time is kept");
        assert!(s.paused().unwrap().contains("x"));
        assert_eq!(s.paused().unwrap().len(), 1);
        assert!(s.set_paused("x", false, "ops", None, 7).unwrap());
        assert!(s.paused().unwrap().is_empty());
    }
}
