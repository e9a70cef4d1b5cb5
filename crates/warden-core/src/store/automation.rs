//! What schedules and triggers keep between runs, in the embedded store: each
//! schedule's pause (it survives restarts), the fire times claimed (a lease per fire
//! time, so processes sharing a data dir fire each time once, and a restart never fires
//! a time that already ran), and trigger deliveries seen (a redelivery runs once).
//!
//! Claims are made in one transaction per batch of due schedules. It must never let two
//! claims of one fire time or one delivery both succeed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

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
    conn: Mutex<Connection>,
    path: String,
}

impl AutomationStore {
    pub fn open(path: &Path) -> Result<AutomationStore, AutomationError> {
        let conn = crate::store::db::open(path, false).map_err(|e| AutomationError {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(AutomationStore {
            conn: Mutex::new(conn),
            path: path.display().to_string(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> AutomationError {
        AutomationError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `names` as seen at `now_ms` (those seen before keep their first sight) and
    /// return every one's state.
    pub fn register(
        &self,
        names: &[&str],
        now_ms: i64,
    ) -> Result<HashMap<String, ScheduleState>, AutomationError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR IGNORE INTO schedules (name, seen_ms) VALUES (?1, ?2)")
                .map_err(|e| self.err(e))?;
            for name in names {
                insert
                    .execute(params![name, now_ms])
                    .map_err(|e| self.err(e))?;
            }
        }
        let mut out = HashMap::new();
        for name in names {
            if let Some(state) = read_state(&tx, name).map_err(|e| self.err(e))? {
                out.insert(name.to_string(), state);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    pub fn state(&self, name: &str) -> Result<Option<ScheduleState>, AutomationError> {
        read_state(&self.conn(), name).map_err(|e| self.err(e))
    }

    /// The paused schedules.
    pub fn paused(&self) -> Result<std::collections::HashSet<String>, AutomationError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM schedules WHERE paused = 1")
            .map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(names)
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
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO schedules (name, seen_ms) VALUES (?1, ?2)",
            params![name, now_ms],
        )
        .map_err(|e| self.err(e))?;
        let changed = conn
            .execute(
                "UPDATE schedules SET paused = ?2, paused_by = ?3, paused_ms = ?4, reason = ?5
                 WHERE name = ?1 AND paused != ?2",
                params![name, paused, by, now_ms, reason],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    /// Claim `fires` for `owner` in one transaction: `true` for each this call claimed,
    /// `false` for each another claim (another process, an earlier run) already holds.
    pub fn claim(
        &self,
        fires: &[Fire<'_>],
        owner: &str,
        now_ms: i64,
    ) -> Result<Vec<bool>, AutomationError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(fires.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO schedule_fires (name, fire_ms, kind, owner, claimed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for f in fires {
                let n = insert
                    .execute(params![f.name, f.fire_ms, f.kind, owner, now_ms])
                    .map_err(|e| self.err(e))?;
                out.push(n == 1);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Claim delivery `id` of trigger `name`: `false` when it was seen before.
    pub fn claim_delivery(
        &self,
        name: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, AutomationError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO trigger_deliveries (name, delivery, at_ms) VALUES (?1, ?2, ?3)",
                params![name, id, now_ms],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Forget delivery `id` of trigger `name` (its call ran nothing: a retry may run).
    pub fn release_delivery(&self, name: &str, id: &str) -> Result<(), AutomationError> {
        self.conn()
            .execute(
                "DELETE FROM trigger_deliveries WHERE name = ?1 AND delivery = ?2",
                params![name, id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forget fire times and deliveries older than [`KEEP_MS`] (keeping each schedule's
    /// last fire time, which catch-up needs).
    pub fn prune(&self, now_ms: i64) -> Result<(), AutomationError> {
        let before = now_ms - KEEP_MS;
        let conn = self.conn();
        conn.execute(
            "DELETE FROM schedule_fires WHERE fire_ms < ?1 AND fire_ms <
                 (SELECT MAX(f.fire_ms) FROM schedule_fires f WHERE f.name = schedule_fires.name)",
            [before],
        )
        .map_err(|e| self.err(e))?;
        conn.execute("DELETE FROM trigger_deliveries WHERE at_ms < ?1", [before])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn read_state(conn: &Connection, name: &str) -> rusqlite::Result<Option<ScheduleState>> {
    conn.prepare_cached(
        "SELECT seen_ms, paused, paused_by, paused_ms, reason,
                (SELECT MAX(fire_ms) FROM schedule_fires WHERE name = ?1)
         FROM schedules WHERE name = ?1",
    )?
    .query_row([name], |r| {
        Ok(ScheduleState {
            seen_ms: r.get(0)?,
            paused: r.get(1)?,
            paused_by: r.get(2)?,
            paused_ms: r.get(3)?,
            reason: r.get(4)?,
            last_fire_ms: r.get(5)?,
        })
    })
    .optional()
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
