//! What a crash cut off, made visible when warden starts again.
//!
//! When the last process to write the audit log did not stop cleanly, the log says
//! where the oldest run then in flight began (`AuditLog::recovery`). This reads the log
//! from there and, for every run it sees start:
//! - a run-start with no run-end (and not resumed from the approval queue, whose own
//!   recovery ends those) gets a run-end `interrupted` and a run-history row saying so;
//! - a run-end whose run-history row is missing gets a row rebuilt from its records
//!   (its output and log are not in the audit log, so the row says they are unknown).
//!
//! It must never end a run twice, nor invent a run it did not see in the log.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::call::{CallReport, Outcome};
use crate::runtime::record;
use crate::runtime::{LoadError, Runtime};
use crate::store::audit::{AuditLog, Entry};
use crate::store::runs::RunRow;

const INTERRUPTED: &str = "interrupted: warden stopped (a crash or kill) while the call ran; whether the tool had its effect is unknown";

/// One run, as far as its records go.
#[derive(Default)]
struct Seen {
    start: Option<Value>,
    decisions: Vec<Value>,
    end: Option<Value>,
    /// Resumed after approval: the approval queue ends it if it was cut off.
    resumed: bool,
    /// Order of first appearance, so rows and records follow the log.
    order: u64,
}

/// End what the crash cut off (see the module header), then let the log move on.
pub async fn recover(rt: &Runtime, log: &AuditLog) -> Result<(), LoadError> {
    let Some(from) = log.recovery() else {
        return Ok(());
    };
    let dir = rt.config.audit.dir.clone();
    let runs = tokio::task::spawn_blocking(move || scan(&dir, from))
        .await
        .map_err(|e| LoadError::Store(format!("recovery: {e}")))?
        .map_err(|e| LoadError::Store(format!("recovery: {e}")))?;
    let mut records: Vec<Entry> = Vec::new();
    let mut rows = Vec::new();
    let (mut interrupted, mut rebuilt) = (Vec::new(), 0u64);
    let mut ordered: Vec<(String, Seen)> = runs.into_iter().collect();
    ordered.sort_by_key(|(_, s)| s.order);
    for (id, seen) in ordered {
        match (&seen.start, &seen.end) {
            (Some(start), None) if !seen.resumed => {
                let report = interrupted_report(&id, start);
                records.extend(record::after_execution(&report, &rt.redactor));
                let input = start["input"].as_str().unwrap_or_default();
                rows.push(record::run_row(&report, input));
                interrupted.push(id);
            }
            (_, Some(end)) => {
                let missing = rt
                    .runs
                    .get(&id)
                    .map_err(|e| LoadError::Store(e.to_string()))?
                    .is_none();
                if missing {
                    rows.push(rebuilt_row(&id, &seen, end));
                    rebuilt += 1;
                }
            }
            _ => {}
        }
    }
    if !interrupted.is_empty() || rebuilt > 0 {
        let mut note = Entry::new("recovery");
        note.num("ts_ms", crate::now_ms())
            .num("from_record", from)
            .value("interrupted", &json!(interrupted))
            .num("rows_rebuilt", rebuilt);
        records.push(note);
        tracing::warn!(
            interrupted = interrupted.len(),
            rows_rebuilt = rebuilt,
            "recovered from an unclean stop"
        );
    }
    log.commit(records, true)
        .await
        .map_err(|e| LoadError::Store(e.to_string()))?;
    for row in rows {
        rt.runs.commit(row).await.map_err(LoadError::Store)?;
    }
    log.recovered();
    Ok(())
}

/// Every run seen in the log from record `from` on.
fn scan(
    dir: &std::path::Path,
    from: u64,
) -> Result<BTreeMap<String, Seen>, crate::store::audit::AuditError> {
    let mut runs: BTreeMap<String, Seen> = BTreeMap::new();
    let mut order = 0;
    crate::store::audit::each_from(dir, from, |r| {
        let Some(id) = r["run"].as_str().map(str::to_string) else {
            return true;
        };
        let kind = r["kind"].as_str().unwrap_or_default().to_string();
        let seen = runs.entry(id).or_insert_with(|| {
            order += 1;
            Seen {
                order,
                ..Seen::default()
            }
        });
        match kind.as_str() {
            "run-start" => seen.start = Some(r),
            "policy-decision" => seen.decisions.push(r),
            "run-end" => seen.end = Some(r),
            "run-resume" => {
                seen.resumed = true;
                // A resumed run ends again: the held run-end before it is not its end.
                seen.end = None;
            }
            _ => {}
        }
        true
    })?;
    Ok(runs)
}

fn interrupted_report(id: &str, start: &Value) -> CallReport {
    let s = |k: &str| start[k].as_str().unwrap_or_default();
    let mut report = CallReport::new(
        id.to_string(),
        s("principal"),
        s("tool"),
        (s("plugin"), s("digest")),
        start["ts_ms"].as_u64().unwrap_or(0),
    );
    report.outcome = Outcome::Interrupted {
        reason: INTERRUPTED.into(),
    };
    report.started_by = start["started_by"].as_str().map(str::to_string);
    report
}

/// A row for a run whose end is in the log but whose row was lost.
fn rebuilt_row(id: &str, seen: &Seen, end: &Value) -> RunRow {
    let start = seen.start.clone().unwrap_or(Value::Null);
    let s = |k: &str| start[k].as_str().unwrap_or_default().to_string();
    let n = |k: &str| i64::try_from(end[k].as_u64().unwrap_or(0)).unwrap_or(i64::MAX);
    let decisions: Vec<Value> = seen
        .decisions
        .iter()
        .map(|d| {
            json!({ "policy": d["policy"], "digest": d["digest"], "decision": d["decision"],
                    "tier": d["tier"], "reason": d["reason"], "failure": d["failure"] })
        })
        .collect();
    RunRow {
        id: id.to_string(),
        started_ms: i64::try_from(start["ts_ms"].as_u64().unwrap_or(0)).unwrap_or(0),
        principal: s("principal"),
        tool: s("tool"),
        plugin: s("plugin"),
        plugin_digest: s("digest"),
        status: end["status"].as_str().unwrap_or("unknown").to_string(),
        input: s("input"),
        output: None,
        error: end["error"].as_str().map(str::to_string),
        backtrace: None,
        decisions: Value::from(decisions),
        log: json!([{ "level": "warn", "source": "warden",
            "message": "rebuilt from the audit log after an unclean stop: the output and the log were not recorded" }]),
        denied_requests: json!([]),
        secret_reveals: json!([]),
        policy_us: 0,
        instantiate_us: 0,
        execute_us: 0,
        total_us: n("total_us"),
        fuel_used: None,
        peak_memory: 0,
        host_calls: n("host_calls"),
        approval: None,
        started_by: start["started_by"].as_str().map(str::to_string),
        // The run-end record carries what a call used, so quotas rebuilt from this row
        // count it.
        cost: end["cost"].as_f64().unwrap_or(0.0),
        egress_requests: n("egress_requests"),
        egress_bytes: n("egress_bytes"),
        host: String::new(),
    }
}
