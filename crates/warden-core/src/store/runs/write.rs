//! Writing run history: the writer thread that commits queued rows in batches, and
//! the statements it runs (row by row on SQLite, one statement per batch on
//! PostgreSQL). It must never write a row twice into a minute's usage, nor let a held
//! row replace its run's outcome.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{COLUMNS, LINGER, MAX_BATCH, Queued, RETRY, RunRow};
use crate::store::sql::{Db, Sql, SqlError, vals};

/// The writer thread: commits whatever is queued in one transaction (rows that arrive
/// while a commit runs share the next one).
pub(super) struct Writer {
    pub(super) path: String,
    pub(super) host: String,
    pub(super) failure: Arc<Mutex<Option<String>>>,
    /// The batch goes in one statement (see `insert_batch`).
    pub(super) postgres: bool,
}

impl Writer {
    pub(super) fn run(&self, db: &mut dyn Db, rx: &Receiver<Queued>) {
        // Rows not yet written, with their guards: after a failure they wait here and
        // are tried again, so the log is not closed clean while one is missing.
        let mut pending: Vec<Queued> = Vec::new();
        loop {
            if pending.is_empty() {
                let Ok(first) = rx.recv() else { break };
                if first.done.is_none() {
                    std::thread::sleep(LINGER);
                }
                pending.push(first);
            } else {
                match rx.recv_timeout(RETRY) {
                    Ok(more) => pending.push(more),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => pending.push(more),
                    Err(_) => break,
                }
            }
            let batch: Vec<Queued> = pending.drain(..pending.len().min(MAX_BATCH)).collect();
            let rows = || batch.iter().map(|q| &q.row);
            let written = if self.postgres {
                let batch = batch_json(rows(), &self.host);
                db.autocommit(&mut |sql| insert_batch(sql, &batch))
            } else {
                db.transaction(false, &mut |sql| insert_all(sql, &self.host, rows()))
            }
            .map_err(|e| format!("run history {}: {e}", self.path));
            let failed_before = self
                .failure
                .lock()
                .ok()
                .and_then(|mut f| std::mem::replace(&mut *f, written.as_ref().err().cloned()));
            if let Err(e) = &written
                && failed_before.as_ref() != Some(e)
            {
                tracing::error!(runs = batch.len(), "{e}");
            }
            let mut kept = Vec::new();
            for mut q in batch {
                if let Some(done) = q.done.take() {
                    let _ = done.send(written.clone());
                } else if written.is_err() {
                    kept.push(q);
                }
            }
            kept.append(&mut pending);
            pending = kept;
        }
        drop(pending);
    }
}

/// Did a run with this status run its tool (and so use what limits count)?
fn used_something(status: &str) -> bool {
    !matches!(status, "held" | "denied" | "limited")
}

/// `INSERT INTO runs` of every column, then `tail` (what to do when the id is there).
fn insert_run(tail: &str) -> String {
    let places: Vec<String> = (1..=COLUMNS.split(',').count())
        .map(|i| format!("?{i}"))
        .collect();
    format!(
        "INSERT INTO runs ({COLUMNS}) VALUES ({}) ON CONFLICT (id) {tail}",
        places.join(", ")
    )
}

/// A held run's row never replaces its outcome: the host that ran the approved call
/// (perhaps another one) may have written that first.
static INSERT_HELD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_run("DO NOTHING"));
static INSERT_OTHER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_run(&format!("DO UPDATE SET {}", replace_all())));

/// `column = excluded.column` for every column but the id.
fn replace_all() -> String {
    let set: Vec<String> = COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|c| *c != "id")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    set.join(", ")
}

/// Insert `rows` (run by `host`) in the caller's transaction, one statement at a time
/// (SQLite: its statements are calls into a library, not round trips).
fn insert_all<'a>(
    sql: &mut dyn Sql,
    host: &str,
    rows: impl Iterator<Item = &'a RunRow>,
) -> Result<(), SqlError> {
    for row in rows {
        // A run that ran a tool is summed once: when its row first says so (a held row
        // is replaced by its outcome; a row written again is not summed again).
        if used_something(&row.status) {
            let was = sql.query_opt("SELECT status FROM runs WHERE id = ?1", vals![&row.id])?;
            let was = was.map(|r| r.text(0)).transpose()?;
            if was.as_deref().is_none_or(|s| !used_something(s)) {
                sql.execute(
                    "INSERT INTO usage_minutes (minute_ms, principal, plugin, tool, started_by,
                         host, calls, cost, wall_us, fuel, egress_requests, egress_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (minute_ms, principal, plugin, tool, started_by, host)
                     DO UPDATE SET calls = usage_minutes.calls + 1,
                       cost = usage_minutes.cost + excluded.cost,
                       wall_us = usage_minutes.wall_us + excluded.wall_us,
                       fuel = usage_minutes.fuel + excluded.fuel,
                       egress_requests = usage_minutes.egress_requests + excluded.egress_requests,
                       egress_bytes = usage_minutes.egress_bytes + excluded.egress_bytes",
                    vals![
                        row.started_ms - row.started_ms.rem_euclid(60_000),
                        &row.principal,
                        &row.plugin,
                        &row.tool,
                        row.started_by.as_deref().unwrap_or_default(),
                        host,
                        row.cost,
                        row.total_us,
                        row.fuel_used.unwrap_or(0),
                        row.egress_requests,
                        row.egress_bytes,
                    ],
                )?;
            }
        }
        let insert = if row.status == "held" {
            &INSERT_HELD
        } else {
            &INSERT_OTHER
        };
        sql.execute(
            insert,
            vals![
                &row.id,
                row.started_ms,
                &row.principal,
                &row.tool,
                &row.plugin,
                &row.plugin_digest,
                &row.status,
                &row.input,
                row.output.as_deref(),
                row.error.as_deref(),
                row.backtrace.as_deref(),
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
                row.approval.as_deref(),
                row.started_by.as_deref(),
                row.cost,
                row.egress_requests,
                row.egress_bytes,
                host,
            ],
        )?;
    }
    Ok(())
}

/// The batch for `insert_batch`: one JSON object per run id, keyed by column (each
/// id's last row that is not `held`, else its held row: what writing them in order
/// would leave), its JSON columns as text, no NUL character (PostgreSQL's text has
/// none).
fn batch_json<'a>(rows: impl Iterator<Item = &'a RunRow>, host: &str) -> String {
    let mut last: Vec<&RunRow> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for row in rows {
        match at.get(row.id.as_str()) {
            Some(&i) if row.status == "held" && last[i].status != "held" => {}
            Some(&i) => last[i] = row,
            None => {
                at.insert(&row.id, last.len());
                last.push(row);
            }
        }
    }
    let text = |s: &str| -> Value {
        if s.contains('\0') {
            Value::from(s.replace('\0', "\u{fffd}"))
        } else {
            Value::from(s)
        }
    };
    let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
    let objects: Vec<Value> = last
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": text(&r.id),
                "started_ms": r.started_ms,
                "principal": text(&r.principal),
                "tool": text(&r.tool),
                "plugin": text(&r.plugin),
                "plugin_digest": text(&r.plugin_digest),
                "status": text(&r.status),
                "input": text(&r.input),
                "output": opt(&r.output),
                "error": opt(&r.error),
                "backtrace": opt(&r.backtrace),
                "decisions": text(&r.decisions.to_string()),
                "log": text(&r.log.to_string()),
                "denied_requests": text(&r.denied_requests.to_string()),
                "secret_reveals": text(&r.secret_reveals.to_string()),
                "policy_us": r.policy_us,
                "instantiate_us": r.instantiate_us,
                "execute_us": r.execute_us,
                "total_us": r.total_us,
                "fuel_used": r.fuel_used,
                "peak_memory": r.peak_memory,
                "host_calls": r.host_calls,
                "approval": opt(&r.approval),
                "started_by": opt(&r.started_by),
                "cost": r.cost,
                "egress_requests": r.egress_requests,
                "egress_bytes": r.egress_bytes,
                "host": text(host),
            })
        })
        .collect();
    Value::from(objects).to_string()
}

/// Write a batch (`batch_json`) to PostgreSQL in one statement, one round trip however
/// many rows: the runs (a held row never replaces an outcome) and what the runs that
/// first say they ran a tool used, summed into their minutes. What the statement reads
/// of `runs` is from before it writes.
fn insert_batch(sql: &mut dyn Sql, batch: &str) -> Result<(), SqlError> {
    const NOT_USED: &str = "('held', 'denied', 'limited')";
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH batch AS (SELECT * FROM json_populate_recordset(NULL::runs, CAST(?1 AS json))),
             used AS (
                SELECT * FROM batch b WHERE b.status NOT IN {NOT_USED} AND NOT EXISTS
                    (SELECT 1 FROM runs r WHERE r.id = b.id AND r.status NOT IN {NOT_USED})
             ),
             minutes AS (
                INSERT INTO usage_minutes (minute_ms, principal, plugin, tool, started_by,
                    host, calls, cost, wall_us, fuel, egress_requests, egress_bytes)
                SELECT started_ms - MOD(started_ms, 60000), principal, plugin, tool,
                    COALESCE(started_by, ''), host, COUNT(*), SUM(cost), SUM(total_us),
                    SUM(COALESCE(fuel_used, 0)), SUM(egress_requests), SUM(egress_bytes)
                FROM used GROUP BY 1, 2, 3, 4, 5, 6
                ON CONFLICT (minute_ms, principal, plugin, tool, started_by, host)
                DO UPDATE SET calls = usage_minutes.calls + excluded.calls,
                    cost = usage_minutes.cost + excluded.cost,
                    wall_us = usage_minutes.wall_us + excluded.wall_us,
                    fuel = usage_minutes.fuel + excluded.fuel,
                    egress_requests = usage_minutes.egress_requests + excluded.egress_requests,
                    egress_bytes = usage_minutes.egress_bytes + excluded.egress_bytes
             )
             INSERT INTO runs SELECT * FROM batch
             ON CONFLICT (id) DO UPDATE SET {} WHERE excluded.status <> 'held'",
            replace_all()
        )
    });
    sql.execute(&INSERT, vals![batch])?;
    Ok(())
}
