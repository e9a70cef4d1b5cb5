//! Run history: one row per governed call, in the embedded store (`db`) or the shared
//! PostgreSQL (`[store] url`, where every host's runs are, each naming its host). Owns
//! writing rows (batched on one writer thread, off the call path) and reading them
//! back. It must never store an unredacted value or an unbounded one.
//!
//! A call's row is queued, not waited for: the audit log (durable before the call
//! returns) is the record, and each queued row carries its run's audit guard until it
//! is committed, so after a crash the next start reads the log back far enough to
//! rebuild a row that never reached the store (`recovery`). A row that cannot be
//! written keeps its guard and is tried again (every second) until it is written or the
//! process ends (the next start then rebuilds it); meanwhile new rows are refused:
//! nothing runs unrecorded.

use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

mod write;

use super::conn::Conn;
use super::postgres::{PgDb, Target};
use super::sql::{Db, LiteDb, Row, SqlError, Val, vals};
use write::Writer;

/// Most rows committed together.
const MAX_BATCH: usize = 1024;
/// How long the writer waits after a row arrives for more to commit with it: one
/// wake-up and one commit per batch, not per call.
const LINGER: Duration = Duration::from_millis(5);
/// How long the writer waits before trying rows that could not be written again.
const RETRY: Duration = Duration::from_secs(1);

/// Largest input or output text kept per run.
pub const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("run history {path}: {message}")]
pub struct RunsError {
    path: String,
    message: String,
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
    /// The host that ran it, on a shared store ('' on the embedded one); the store
    /// fills it in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
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
    /// The host whose runs these were ('' on the embedded store).
    pub host: String,
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
    #[expect(dead_code, reason = "held until the row is written, then dropped")]
    keep: Option<Box<dyn Send>>,
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

pub struct RunStore {
    /// For reads; writes go through the writer thread, which batches them.
    reader: Conn,
    writer: Mutex<Option<Sender<Queued>>>,
    /// Why the last write failed, while nothing has been written since.
    failure: Arc<Mutex<Option<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: String,
}

impl RunStore {
    /// The run history in the embedded store at `path`.
    pub fn open(path: &Path) -> Result<RunStore, RunsError> {
        let shown = path.display().to_string();
        let lite = || {
            crate::store::db::open(path, false)
                .map(LiteDb)
                .map_err(|e| RunsError {
                    path: shown.clone(),
                    message: e.to_string(),
                })
        };
        let reader = Conn::local(lite()?);
        let writer = lite()?;
        RunStore::start(reader, shown.clone(), String::new(), false, move || {
            Ok(writer)
        })
    }

    /// The run history in the PostgreSQL at `target`, this host's rows naming `host`.
    pub fn open_shared(target: &Target, host: &str) -> Result<RunStore, RunsError> {
        let shown = target.shown.clone();
        let reader =
            Conn::shared(target, "warden-runs-reader", false).map_err(|message| RunsError {
                path: shown.clone(),
                message,
            })?;
        let target = target.clone();
        // Rows may be lost with the server's last fraction of a second (as with SQLite's
        // `synchronous = NORMAL` on a power cut): the audit log is the record.
        RunStore::start(reader, shown, host.to_string(), true, move || {
            PgDb::relaxed(&target)
        })
    }

    /// The run history `config` names: the shared store's when `[store]` sets one.
    pub fn for_config(config: &crate::Config) -> Result<RunStore, RunsError> {
        match &config.store.shared {
            Some(target) => RunStore::open_shared(target, &config.store.host),
            None => RunStore::open(&config.runs_db),
        }
    }

    /// Start the writer thread on the connection `connect` makes there (PostgreSQL's
    /// driver must connect off the async runtime); fails if it cannot connect.
    fn start<D: Db + 'static>(
        reader: Conn,
        path: String,
        host: String,
        postgres: bool,
        connect: impl FnOnce() -> Result<D, SqlError> + Send + 'static,
    ) -> Result<RunStore, RunsError> {
        let err = |message: String| RunsError {
            path: path.clone(),
            message,
        };
        let failure = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let (ready, connected) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let writer = Writer {
            path: path.clone(),
            host,
            failure: failure.clone(),
            postgres,
        };
        let thread = std::thread::Builder::new()
            .name("warden-runs".into())
            .spawn(move || match connect() {
                Ok(mut db) => {
                    let _ = ready.send(Ok(()));
                    writer.run(&mut db, &rx);
                }
                Err(e) => {
                    let _ = ready.send(Err(e.0));
                }
            })
            .map_err(|e| err(format!("cannot start the writer: {e}")))?;
        connected
            .recv()
            .unwrap_or_else(|_| Err("the writer stopped".into()))
            .map_err(err)?;
        Ok(RunStore {
            reader,
            writer: Mutex::new(Some(tx)),
            failure,
            thread: Mutex::new(Some(thread)),
            path,
        })
    }

    fn err(&self, e: SqlError) -> RunsError {
        RunsError {
            path: self.path.clone(),
            message: e.0,
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
        let id = id.to_string();
        self.reader
            .read(move |sql| {
                let query = format!("SELECT {COLUMNS} FROM runs WHERE id = ?1");
                sql.query_opt(&query, vals![id])?
                    .map(|r| run_from(&r))
                    .transpose()
            })
            .map_err(|e| self.err(e))
    }

    /// Runs matching `filter`, newest first. Only the conditions given are in the SQL,
    /// so each uses its index (a `?N IS NULL OR` disjunction would keep SQLite from it).
    pub fn list(&self, filter: &RunFilter) -> Result<Vec<RunRow>, RunsError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Val> = Vec::new();
        let mut condition = |column: &str, value: Val, values: &mut Vec<Val>| {
            values.push(value);
            conditions.push(format!("{column} ?{}", values.len()));
        };
        for (column, value) in [
            ("tool =", &filter.tool),
            ("status =", &filter.status),
            ("started_by =", &filter.started_by),
            ("principal =", &filter.principal),
        ] {
            if let Some(v) = value {
                condition(column, v.into(), &mut values);
            }
        }
        if let Some(since) = filter.since_ms {
            condition("started_ms >=", since.into(), &mut values);
        }
        if let Some((ms, id)) = &filter.before {
            // The first term bounds the index range; the second breaks ties.
            values.extend([Val::Int(*ms), Val::Text(id.clone())]);
            let (m, i) = (values.len() - 1, values.len());
            conditions.push(format!(
                "started_ms <= ?{m} AND (started_ms < ?{m} OR id < ?{i})"
            ));
        }
        let mut query = format!("SELECT {COLUMNS} FROM runs");
        if !conditions.is_empty() {
            query += " WHERE ";
            query += &conditions.join(" AND ");
        }
        values.push(Val::Int(
            i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX),
        ));
        query += &format!(" ORDER BY started_ms DESC, id DESC LIMIT ?{}", values.len());
        self.reader
            .read(move |sql| sql.query(&query, &values)?.iter().map(run_from).collect())
            .map_err(|e| self.err(e))
    }

    /// Call `each(started_ms, tool, status, total_us)` for every run since `since_ms`,
    /// oldest first (a day of a busy deployment is 100k rows: names are kept once each,
    /// not copied per row).
    pub fn each_since(
        &self,
        since_ms: i64,
        mut each: impl FnMut(i64, &str, &str, i64),
    ) -> Result<(), RunsError> {
        let (names, seen) = self
            .reader
            .read(move |sql| {
                let mut names = Names::default();
                let mut seen: Vec<(i64, u32, u32, i64)> = Vec::new();
                sql.each(
                    "SELECT started_ms, tool, status, total_us FROM runs WHERE started_ms >= ?1
                     ORDER BY started_ms",
                    vals![since_ms],
                    &mut |r| {
                        let (tool, status) = (names.of(r.str(1)?), names.of(r.str(2)?));
                        seen.push((r.int(0)?, tool, status, r.int(3)?));
                        Ok(())
                    },
                )?;
                Ok((names.all, seen))
            })
            .map_err(|e| self.err(e))?;
        let name = |i: u32| names.get(i as usize).map_or("", String::as_str);
        for (started_ms, tool, status, total_us) in seen {
            each(started_ms, name(tool), name(status), total_us);
        }
        Ok(())
    }

    /// What runs that ran a tool used since `since_ms`, summed per minute, caller and
    /// host, oldest first (limits are rebuilt from these at start).
    pub fn usage_since(&self, since_ms: i64) -> Result<Vec<RunUsage>, RunsError> {
        let from = since_ms - since_ms.rem_euclid(60_000);
        self.reader
            .read(move |sql| {
                sql.query(
                    "SELECT minute_ms, principal, tool, plugin, started_by, calls, cost, wall_us,
                            fuel, egress_requests, egress_bytes, host
                     FROM usage_minutes WHERE minute_ms >= ?1 ORDER BY minute_ms",
                    vals![from],
                )?
                .iter()
                .map(|r| {
                    let started_by = r.text(4)?;
                    Ok(RunUsage {
                        started_ms: r.int(0)?,
                        principal: r.text(1)?,
                        tool: r.text(2)?,
                        plugin: r.text(3)?,
                        started_by: (!started_by.is_empty()).then_some(started_by),
                        calls: r.int(5)?,
                        cost: r.number(6),
                        total_us: r.int(7)?,
                        fuel_used: r.int(8)?,
                        egress_requests: r.int(9)?,
                        egress_bytes: r.int(10)?,
                        host: r.text(11)?,
                    })
                })
                .collect()
            })
            .map_err(|e| self.err(e))
    }
}

/// Each distinct name once, numbered.
#[derive(Default)]
struct Names {
    all: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

impl Names {
    fn of(&mut self, name: &str) -> u32 {
        // A day's runs name a few tools and statuses: comparing with each is cheaper
        // than hashing (100k rows, two names each); many names go through the map.
        if self.all.len() <= 16 {
            if let Some(i) = self.all.iter().position(|n| n == name) {
                return i as u32;
            }
        } else if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = u32::try_from(self.all.len()).unwrap_or(u32::MAX);
        self.all.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
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
        let params = vec![
            Val::from(since_ms),
            Val::from(principal),
            Val::from(plugin),
            Val::from(tool),
        ];
        self.reader
            .read(move |sql| {
                // Sums are cast back: PostgreSQL sums BIGINTs as NUMERIC.
                sql.query(
                    "SELECT principal, tool,
                        CAST(SUM(CASE WHEN status IN ('held', 'denied', 'limited') THEN 0 ELSE 1 END)
                             AS BIGINT),
                        CAST(SUM(CASE WHEN status = 'limited' THEN 1 ELSE 0 END) AS BIGINT),
                        SUM(cost), CAST(SUM(total_us) AS DOUBLE PRECISION) / 1000.0,
                        CAST(SUM(egress_requests) AS BIGINT), CAST(SUM(egress_bytes) AS BIGINT)
                     FROM runs
                     WHERE started_ms >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR principal = ?2)
                       AND (CAST(?3 AS TEXT) IS NULL OR plugin = ?3)
                       AND (CAST(?4 AS TEXT) IS NULL OR tool = ?4)
                     GROUP BY principal, tool ORDER BY principal, tool",
                    &params,
                )?
                .iter()
                .map(|r| {
                    Ok(Totals {
                        principal: r.text(0)?,
                        tool: r.text(1)?,
                        calls: r.int(2)?,
                        limited: r.int(3)?,
                        cost: r.number(4),
                        wall_ms: r.number(5),
                        egress_requests: r.int(6)?,
                        egress_bytes: r.int(7)?,
                    })
                })
                .collect()
            })
            .map_err(|e| self.err(e))
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

/// The columns of `runs`, in the order `run_from` reads and `insert_all` writes them.
const COLUMNS: &str = "id, started_ms, principal, tool, plugin, plugin_digest, status, input, \
    output, error, backtrace, decisions, log, denied_requests, secret_reveals, policy_us, \
    instantiate_us, execute_us, total_us, fuel_used, peak_memory, host_calls, approval, \
    started_by, cost, egress_requests, egress_bytes, host";

fn run_from(r: &Row) -> Result<RunRow, SqlError> {
    let json = |i: usize| -> Result<Value, SqlError> {
        Ok(serde_json::from_str(r.str(i)?).unwrap_or(Value::Null))
    };
    Ok(RunRow {
        id: r.text(0)?,
        started_ms: r.int(1)?,
        principal: r.text(2)?,
        tool: r.text(3)?,
        plugin: r.text(4)?,
        plugin_digest: r.text(5)?,
        status: r.text(6)?,
        input: r.text(7)?,
        output: r.opt_text(8)?,
        error: r.opt_text(9)?,
        backtrace: r.opt_text(10)?,
        decisions: json(11)?,
        log: json(12)?,
        denied_requests: json(13)?,
        secret_reveals: json(14)?,
        policy_us: r.int(15)?,
        instantiate_us: r.int(16)?,
        execute_us: r.int(17)?,
        total_us: r.int(18)?,
        fuel_used: r.opt_int(19)?,
        peak_memory: r.int(20)?,
        host_calls: r.int(21)?,
        approval: r.opt_text(22)?,
        started_by: r.opt_text(23)?,
        cost: r.number(24),
        egress_requests: r.int(25)?,
        egress_bytes: r.int(26)?,
        host: r.text(27)?,
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
            host: String::new(),
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
