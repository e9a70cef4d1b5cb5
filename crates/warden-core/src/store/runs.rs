//! Run history: one row per governed call in the embedded store (`db`). Owns writing
//! rows (batched on one writer thread, off the call path) and reading them back. It
//! must never store an unredacted value or an unbounded one.
//!
//! A call's row is queued, not waited for: the audit log (durable before the call
//! returns) is the record, and each queued row carries its run's audit guard until it
//! is committed, so after a crash the next start reads the log back far enough to
//! rebuild a row that never reached the store (`recovery`). A row that cannot be
//! written keeps its guard for good (the next start rebuilds it) and refuses the rows
//! after it until a write succeeds again: nothing runs unrecorded.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

/// Most rows committed together.
const MAX_BATCH: usize = 1024;
/// How long the writer waits after a row arrives for more to commit with it: one
/// wake-up and one commit per batch, not per call.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Largest input or output text kept per run.
pub const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("run history {path}: {cause}")]
pub struct RunsError {
    path: String,
    cause: StoreError,
}

/// What went wrong under the run history.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Schema(#[from] crate::store::db::SchemaError),
    #[error("cannot start the writer: {0}")]
    Thread(String),
}

/// One run, as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub started_ms: i64,
    pub principal: String,
    pub tool: String,
    pub plugin: String,
    pub plugin_digest: String,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub backtrace: Option<String>,
    pub decisions: Value,
    pub log: Value,
    pub denied_requests: Value,
    pub secret_reveals: Value,
    pub policy_us: i64,
    pub instantiate_us: i64,
    pub execute_us: i64,
    pub total_us: i64,
    pub fuel_used: Option<i64>,
    pub peak_memory: i64,
    pub host_calls: i64,
    /// The approval request, when the call was held.
    pub approval: Option<String>,
    /// What started the run when no caller did (`schedule:NAME`, `trigger:NAME`).
    pub started_by: Option<String>,
    /// The declared cost of the call, and its outgoing HTTP (what limits count).
    pub cost: f64,
    pub egress_requests: i64,
    pub egress_bytes: i64,
}

/// What the runs of one caller used in one minute (`started_ms`, its start), for
/// rebuilding limits at start.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUsage {
    pub started_ms: i64,
    pub principal: String,
    pub tool: String,
    pub plugin: String,
    pub started_by: Option<String>,
    pub calls: i64,
    pub cost: f64,
    pub total_us: i64,
    pub fuel_used: i64,
    pub egress_requests: i64,
    pub egress_bytes: i64,
}

/// Filters for `runs list`.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub tool: Option<String>,
    pub status: Option<String>,
    pub since_ms: Option<i64>,
    /// Only runs started by this (`schedule:NAME`, `trigger:NAME`).
    pub started_by: Option<String>,
    /// Only runs made by this principal.
    pub principal: Option<String>,
    /// Only runs older than this one (its `started_ms` and `id`): the cursor of the
    /// page after the one that ended with it, so a deep page costs what the first does.
    pub before: Option<(i64, String)>,
    pub limit: usize,
}

/// A row, what to keep until it is committed, and who to tell once it is.
struct Queued {
    row: RunRow,
    keep: Option<Box<dyn Send>>,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

pub struct RunStore {
    /// For reads; writes go through the writer thread, which batches them.
    conn: Mutex<Connection>,
    writer: Mutex<Option<std::sync::mpsc::Sender<Queued>>>,
    /// Why the last write failed, while nothing has been written since.
    failure: Arc<Mutex<Option<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: String,
}

impl RunStore {
    pub fn open(path: &Path) -> Result<RunStore, RunsError> {
        let shown = path.display().to_string();
        let conn = crate::store::db::open(path, false).map_err(|source| RunsError {
            path: shown.clone(),
            cause: source.into(),
        })?;
        let failure = Arc::new(Mutex::new(None));
        let (writer, thread) = RunStore::start_writer(path, failure.clone())?;
        Ok(RunStore {
            conn: Mutex::new(conn),
            writer: Mutex::new(Some(writer)),
            failure,
            thread: Mutex::new(Some(thread)),
            path: shown,
        })
    }

    /// One connection that inserts whatever is queued, in a single transaction: rows
    /// that arrive while a commit runs share the next one.
    fn start_writer(
        path: &Path,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Result<(std::sync::mpsc::Sender<Queued>, std::thread::JoinHandle<()>), RunsError> {
        let shown = path.display().to_string();
        let mut conn = crate::store::db::open(path, false).map_err(|source| RunsError {
            path: shown.clone(),
            cause: source.into(),
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let thread = std::thread::Builder::new()
            .name("warden-runs".into())
            .spawn(move || {
                // Guards of rows that could not be written: kept until the process ends,
                // so the log is not closed clean and the next start rebuilds those rows.
                let mut lost: Vec<Box<dyn Send>> = Vec::new();
                while let Ok(first) = rx.recv() {
                    if first.done.is_none() {
                        std::thread::sleep(LINGER);
                    }
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let written = insert_all(&mut conn, batch.iter().map(|q| &q.row))
                        .map_err(|e| format!("run history {shown}: {e}"));
                    if let Ok(mut f) = failure.lock() {
                        *f = written.as_ref().err().cloned();
                    }
                    if let Err(e) = &written {
                        tracing::error!(runs = batch.len(), "{e}");
                    }
                    for q in batch {
                        if written.is_err() {
                            lost.extend(q.keep);
                        }
                        if let Some(done) = q.done {
                            let _ = done.send(written.clone());
                        }
                    }
                }
                drop(lost);
            })
            .map_err(|e| RunsError {
                path: path.display().to_string(),
                cause: StoreError::Thread(e.to_string()),
            })?;
        Ok((tx, thread))
    }

    fn err(&self, source: rusqlite::Error) -> RunsError {
        RunsError {
            path: self.path.clone(),
            cause: source.into(),
        }
    }

    /// Queue `row`, keeping `keep` (the run's audit guard) until it is committed. Refused
    /// while the last write failed.
    pub fn insert(&self, row: RunRow, keep: Option<Box<dyn Send>>) -> Result<(), String> {
        if let Some(why) = self.failure.lock().ok().and_then(|f| f.clone()) {
            return Err(format!(
                "{why}; nothing runs unrecorded until a write succeeds"
            ));
        }
        self.send(Queued {
            row,
            keep,
            done: None,
        })
    }

    /// Commit `row` and wait until it is in the store.
    pub async fn commit(&self, row: RunRow) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Queued {
            row,
            keep: None,
            done: Some(done),
        })?;
        wait.await
            .unwrap_or_else(|_| Err(format!("run history {}: writer stopped", self.path)))
    }

    fn send(&self, queued: Queued) -> Result<(), String> {
        let sender = self
            .writer
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .ok_or("run history is closed")?;
        sender
            .send(queued)
            .map_err(|_| format!("run history {}: writer stopped", self.path))
    }

    pub fn get(&self, id: &str) -> Result<Option<RunRow>, RunsError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT * FROM runs WHERE id = ?1", [id], row_from_sql)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Runs matching `filter`, newest first. Only the conditions given are in the SQL,
    /// so each uses its index (a `?N IS NULL OR` disjunction would keep SQLite from it).
    pub fn list(&self, filter: &RunFilter) -> Result<Vec<RunRow>, RunsError> {
        use rusqlite::types::Value as Sql;
        let mut conditions: Vec<&str> = Vec::new();
        let mut values: Vec<Sql> = Vec::new();
        let mut text = |condition: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                conditions.push(condition);
                values.push(Sql::Text(v.clone()));
            }
        };
        text("tool = ?", &filter.tool);
        text("status = ?", &filter.status);
        text("started_by = ?", &filter.started_by);
        text("principal = ?", &filter.principal);
        if let Some(since) = filter.since_ms {
            conditions.push("started_ms >= ?");
            values.push(Sql::Integer(since));
        }
        if let Some((ms, id)) = &filter.before {
            // The first term bounds the index range; the second breaks ties.
            conditions.push("started_ms <= ? AND (started_ms < ? OR id < ?)");
            values.extend([Sql::Integer(*ms), Sql::Integer(*ms), Sql::Text(id.clone())]);
        }
        let mut sql = String::from("SELECT * FROM runs");
        if !conditions.is_empty() {
            sql += " WHERE ";
            sql += &conditions.join(" AND ");
        }
        sql += " ORDER BY started_ms DESC, id DESC LIMIT ?";
        values.push(Sql::Integer(
            i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX),
        ));
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), row_from_sql)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

impl RunStore {
    /// Call `each(started_ms, tool, status, total_us)` for every run since `since_ms`,
    /// oldest first, without copying a string (a day of a busy deployment is 100k rows).
    pub fn each_since(
        &self,
        since_ms: i64,
        mut each: impl FnMut(i64, &str, &str, i64),
    ) -> Result<(), RunsError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT started_ms, tool, status, total_us FROM runs WHERE started_ms >= ?1
                 ORDER BY started_ms",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([since_ms]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let text = |i: usize| {
                r.get_ref(i)
                    .ok()
                    .and_then(|v| v.as_str().ok())
                    .unwrap_or("")
            };
            each(
                r.get(0).map_err(|e| self.err(e))?,
                text(1),
                text(2),
                r.get(3).map_err(|e| self.err(e))?,
            );
        }
        Ok(())
    }
}

impl RunStore {
    /// What runs that ran a tool used since `since_ms`, summed per minute and caller,
    /// oldest first (limits are rebuilt from these at start).
    pub fn usage_since(&self, since_ms: i64) -> Result<Vec<RunUsage>, RunsError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT minute_ms, principal, tool, plugin, started_by, calls, cost, wall_us, fuel,
                        egress_requests, egress_bytes
                 FROM usage_minutes WHERE minute_ms >= ?1 ORDER BY minute_ms",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([since_ms - since_ms.rem_euclid(60_000)], |r| {
                let started_by: String = r.get(4)?;
                Ok(RunUsage {
                    started_ms: r.get(0)?,
                    principal: r.get(1)?,
                    tool: r.get(2)?,
                    plugin: r.get(3)?,
                    started_by: (!started_by.is_empty()).then_some(started_by),
                    calls: r.get(5)?,
                    cost: r.get(6)?,
                    total_us: r.get(7)?,
                    fuel_used: r.get(8)?,
                    egress_requests: r.get(9)?,
                    egress_bytes: r.get(10)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// What runs used since a time, per principal and tool (`warden usage --since`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Totals {
    pub principal: String,
    pub tool: String,
    pub calls: i64,
    /// Calls refused by a limit, a runaway guard or the kill switch.
    pub limited: i64,
    pub cost: f64,
    pub wall_ms: f64,
    pub egress_requests: i64,
    pub egress_bytes: i64,
}

impl RunStore {
    /// Totals since `since_ms`, optionally of one principal, plugin or tool.
    pub fn totals(
        &self,
        since_ms: i64,
        principal: Option<&str>,
        plugin: Option<&str>,
        tool: Option<&str>,
    ) -> Result<Vec<Totals>, RunsError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT principal, tool,
                        SUM(status NOT IN ('held', 'denied', 'limited')),
                        SUM(status = 'limited'),
                        SUM(cost), SUM(total_us) / 1000.0, SUM(egress_requests), SUM(egress_bytes)
                 FROM runs
                 WHERE started_ms >= ?1 AND (?2 IS NULL OR principal = ?2)
                   AND (?3 IS NULL OR plugin = ?3) AND (?4 IS NULL OR tool = ?4)
                 GROUP BY principal, tool ORDER BY principal, tool",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since_ms, principal, plugin, tool], |r| {
                Ok(Totals {
                    principal: r.get(0)?,
                    tool: r.get(1)?,
                    calls: r.get(2)?,
                    limited: r.get(3)?,
                    cost: r.get(4)?,
                    wall_ms: r.get(5)?,
                    egress_requests: r.get(6)?,
                    egress_bytes: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

impl Drop for RunStore {
    fn drop(&mut self) {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// Did a run with this status run its tool (and so use what limits count)?
fn used_something(status: &str) -> bool {
    !matches!(status, "held" | "denied" | "limited")
}

/// Insert `rows` in one transaction.
fn insert_all<'a>(
    conn: &mut Connection,
    rows: impl Iterator<Item = &'a RunRow>,
) -> rusqlite::Result<()> {
    // Immediate: the write lock is taken (waiting for another writer) at the start. A
    // transaction that reads first (the runs' prior status below) and writes later
    // could not wait for it: SQLite refuses such an upgrade at once.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        const COLUMNS: &str = "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)";
        // A held run's row never replaces its outcome: the process that ran the approved
        // call (perhaps another one) may have written that first.
        let mut held = tx.prepare_cached(&format!("INSERT OR IGNORE INTO runs {COLUMNS}"))?;
        let mut other = tx.prepare_cached(&format!("INSERT OR REPLACE INTO runs {COLUMNS}"))?;
        let mut before = tx.prepare_cached("SELECT status FROM runs WHERE id = ?1")?;
        let mut minute = tx.prepare_cached(
            "INSERT INTO usage_minutes VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT DO UPDATE SET calls = calls + 1, cost = cost + ?6,
               wall_us = wall_us + ?7, fuel = fuel + ?8,
               egress_requests = egress_requests + ?9, egress_bytes = egress_bytes + ?10",
        )?;
        for row in rows {
            // A run that ran a tool is summed once: when its row first says so (a held
            // row is replaced by its outcome; a row written again is not summed again).
            if used_something(&row.status) {
                let was: Option<String> = before.query_row([&row.id], |r| r.get(0)).optional()?;
                if was.as_deref().is_none_or(|s| !used_something(s)) {
                    minute.execute(params![
                        row.started_ms - row.started_ms.rem_euclid(60_000),
                        row.principal,
                        row.plugin,
                        row.tool,
                        row.started_by.as_deref().unwrap_or_default(),
                        row.cost,
                        row.total_us,
                        row.fuel_used.unwrap_or(0),
                        row.egress_requests,
                        row.egress_bytes,
                    ])?;
                }
            }
            let stmt = if row.status == "held" {
                &mut held
            } else {
                &mut other
            };
            stmt.execute(params![
                row.id,
                row.started_ms,
                row.principal,
                row.tool,
                row.plugin,
                row.plugin_digest,
                row.status,
                row.input,
                row.output,
                row.error,
                row.backtrace,
                row.decisions.to_string(),
                row.log.to_string(),
                row.denied_requests.to_string(),
                row.secret_reveals.to_string(),
                row.policy_us,
                row.instantiate_us,
                row.execute_us,
                row.total_us,
                row.fuel_used,
                row.peak_memory,
                row.host_calls,
                row.approval,
                row.started_by,
                row.cost,
                row.egress_requests,
                row.egress_bytes,
            ])?;
        }
    }
    tx.commit()
}

fn row_from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let json = |i: usize| -> rusqlite::Result<Value> {
        let text: String = r.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    Ok(RunRow {
        id: r.get(0)?,
        started_ms: r.get(1)?,
        principal: r.get(2)?,
        tool: r.get(3)?,
        plugin: r.get(4)?,
        plugin_digest: r.get(5)?,
        status: r.get(6)?,
        input: r.get(7)?,
        output: r.get(8)?,
        error: r.get(9)?,
        backtrace: r.get(10)?,
        decisions: json(11)?,
        log: json(12)?,
        denied_requests: json(13)?,
        secret_reveals: json(14)?,
        policy_us: r.get(15)?,
        instantiate_us: r.get(16)?,
        execute_us: r.get(17)?,
        total_us: r.get(18)?,
        fuel_used: r.get(19)?,
        peak_memory: r.get(20)?,
        host_calls: r.get(21)?,
        approval: r.get(22)?,
        started_by: r.get(23)?,
        cost: r.get(24)?,
        egress_requests: r.get(25)?,
        egress_bytes: r.get(26)?,
    })
}

/// Cut `text` to at most `MAX_TEXT` bytes, marking the cut.
pub fn bounded(text: &str) -> String {
    crate::util::bounded_to(text, MAX_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: &str, cost: f64) -> RunRow {
        RunRow {
            id: id.into(),
            started_ms: 120_500,
            principal: "agent".into(),
            tool: "send".into(),
            plugin: "mail".into(),
            plugin_digest: String::new(),
            status: status.into(),
            input: "{}".into(),
            output: None,
            error: None,
            backtrace: None,
            decisions: Value::Null,
            log: Value::Null,
            denied_requests: Value::Null,
            secret_reveals: Value::Null,
            policy_us: 0,
            instantiate_us: 0,
            execute_us: 0,
            total_us: 2_000,
            fuel_used: None,
            peak_memory: 0,
            host_calls: 0,
            approval: None,
            started_by: None,
            cost,
            egress_requests: 1,
            egress_bytes: 10,
        }
    }

    #[tokio::test]
    async fn a_run_is_summed_into_its_minute_once_whatever_rows_it_gets() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        // Held, then its outcome; a second run; a denied one; the first written again.
        for r in [
            row("a", "held", 0.5),
            row("a", "ok", 0.5),
            row("b", "tool-error", 0.25),
            row("c", "denied", 9.0),
            row("d", "limited", 9.0),
            row("a", "ok", 0.5),
        ] {
            store.commit(r).await.unwrap();
        }
        let minutes = store.usage_since(0).unwrap();
        assert_eq!(minutes.len(), 1, "{minutes:?}");
        let m = &minutes[0];
        assert_eq!((m.started_ms, m.calls, m.cost), (120_000, 2, 0.75));
        assert_eq!(
            (m.total_us, m.egress_requests, m.egress_bytes),
            (4_000, 2, 20)
        );
        assert!(store.usage_since(180_000).unwrap().is_empty());
    }
}
