//! What a governed call leaves behind: its audit records and its run-history row.
//!
//! Owns the shape of each record kind (`config-load`, `run-start`, `policy-decision`,
//! `host-call`, `grant-denied`, `secret-reveal`, `run-end`; for held calls
//! `approval-requested`, `approval-vote`, `approval-ended`, `approval-notice` and
//! `run-resume`; for the server `auth-denied`, `config-reload-failed`, `shutdown`). Every record passes
//! through the redactor before it is written; it must never carry a secret value or
//! an unbounded string.

use serde_json::{Map, Value, json};

use crate::approvals::{self, Approval, Vote};
use crate::call::{CallReport, Outcome};
use crate::hostcalls::HostCall;
use crate::policy::Verdict;
use crate::runs::{RunRow, bounded, bounded_to};
use crate::secrets::Redactor;

/// Longest input or output text put in an audit record.
const MAX_AUDIT_TEXT: usize = 4096;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Scrub every string of every record.
pub fn redact(redactor: &Redactor, records: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    if !redactor.is_active() {
        return records;
    }
    records
        .into_iter()
        .map(|r| {
            let mut v = Value::Object(r);
            redactor.scrub_value(&mut v);
            object(v)
        })
        .collect()
}

pub fn config_load(file: &str, digest: &str, components: Value) -> Map<String, Value> {
    object(
        json!({ "kind": "config-load", "ts_ms": crate::now_ms(), "config": file, "config_digest": digest, "components": components }),
    )
}

/// The records written before the tool may run: the run's start and every decision.
pub fn before_execution(report: &CallReport, input: &str) -> Vec<Map<String, Value>> {
    let mut out = vec![object(json!({
        "kind": "run-start",
        "ts_ms": report.time_ms,
        "run": report.run_id,
        "principal": report.principal,
        "tool": report.tool,
        "plugin": report.plugin,
        "digest": report.plugin_digest,
        "input": bounded_to(input, MAX_AUDIT_TEXT),
    }))];
    for d in &report.decisions {
        let (decision, reason, tier) = match &d.verdict {
            Verdict::Allow => ("allow", None, None),
            Verdict::Deny { reason } => ("deny", Some(reason.as_str()), None),
            Verdict::RequireApproval { tier, reason, .. } => {
                ("require-approval", Some(reason.as_str()), Some(*tier))
            }
        };
        out.push(object(json!({
            "kind": "policy-decision",
            "ts_ms": crate::now_ms(),
            "run": report.run_id,
            "policy": d.policy,
            "digest": d.digest,
            "decision": decision,
            "tier": tier,
            "reason": reason,
            "failure": d.failure,
            "duration_us": d.elapsed.as_micros() as u64,
        })));
    }
    out
}

pub fn host_calls<'a>(
    run: &str,
    digest_of: impl Fn(&str) -> String,
    calls: impl Iterator<Item = &'a HostCall>,
) -> Vec<Map<String, Value>> {
    let ts = crate::now_ms();
    calls
        .map(|c| {
            object(json!({
                "kind": "host-call",
                "ts_ms": ts,
                "run": run,
                "component": c.component,
                "digest": digest_of(&c.component),
                "interface": c.interface,
                "function": c.function,
                "args": c.args,
                "result": c.result,
                "outcome": c.outcome(),
                "duration_us": c.duration_us,
            }))
        })
        .collect()
}

/// The records written after the tool ran (or was refused): grant denials, reveals, the end.
pub fn after_execution(report: &CallReport) -> Vec<Map<String, Value>> {
    let ts = crate::now_ms();
    let mut out = Vec::new();
    for request in &report.denied_requests {
        out.push(object(json!({ "kind": "grant-denied", "ts_ms": ts, "run": report.run_id, "plugin": report.plugin, "request": request })));
    }
    for secret in &report.secret_reveals {
        out.push(object(json!({ "kind": "secret-reveal", "ts_ms": ts, "run": report.run_id, "plugin": report.plugin, "secret": secret })));
    }
    let error = match &report.outcome {
        Outcome::Failed { error, .. } => Some(error.clone()),
        Outcome::Denied { reasons } | Outcome::Held { reasons, .. } => Some(reasons.join("; ")),
        Outcome::Ok { .. } => None,
    };
    out.push(object(json!({
        "kind": "run-end",
        "ts_ms": ts,
        "run": report.run_id,
        "status": report.outcome.status(),
        "error": error,
        "host_calls": report.host_calls,
        "total_us": report.timings.total_us,
    })));
    out
}

pub fn approval_requested(a: &Approval) -> Map<String, Value> {
    object(json!({
        "kind": "approval-requested",
        "ts_ms": crate::now_ms(),
        "run": a.run_id,
        "approval": a.id,
        "principal": a.principal,
        "tool": a.tool,
        "digest": a.plugin_digest,
        "tier": approvals::tier_name(a.tier),
        "reasons": a.reasons,
        "approvers": a.approvers,
        "approvals_required": a.required,
        "input_sha256": a.input_sha256,
        "expires_ms": a.expires_ms,
    }))
}

/// A vote, with the request's state after it.
pub fn approval_vote(a: &Approval, v: &Vote) -> Map<String, Value> {
    object(json!({
        "kind": "approval-vote",
        "ts_ms": v.at_ms,
        "run": a.run_id,
        "approval": a.id,
        "principal": v.principal,
        "vote": v.vote,
        "reason": v.reason,
        "via": v.via,
        "input_sha256": v.input_sha256,
        "state": a.state.as_str(),
    }))
}

/// A request that ended without running (refused at execution, or interrupted).
pub fn approval_ended(a: &Approval) -> Map<String, Value> {
    object(json!({
        "kind": "approval-ended",
        "ts_ms": crate::now_ms(),
        "run": a.run_id,
        "approval": a.id,
        "state": a.state.as_str(),
        "result": a.result,
    }))
}

/// An approved call about to run.
pub fn run_resume(a: &Approval) -> Map<String, Value> {
    let approved_by: Vec<&str> = a
        .votes
        .iter()
        .filter(|v| matches!(v.vote.as_str(), "approve" | "window"))
        .map(|v| v.principal.as_str())
        .collect();
    object(json!({
        "kind": "run-resume",
        "ts_ms": crate::now_ms(),
        "run": a.run_id,
        "approval": a.id,
        "approved_by": approved_by,
        "input_sha256": a.input_sha256,
        "digest": a.plugin_digest,
    }))
}

pub fn notice_attempt(
    approval: &str,
    attempt: u32,
    error: Option<&str>,
    gave_up: bool,
) -> Map<String, Value> {
    object(json!({
        "kind": "approval-notice",
        "ts_ms": crate::now_ms(),
        "approval": approval,
        "attempt": attempt,
        "outcome": if error.is_none() { "delivered" } else if gave_up { "gave-up" } else { "retrying" },
        "error": error,
    }))
}

/// A request refused for a missing or unknown bearer token.
pub fn auth_denied(path: &str, remote: &str, why: &str) -> Map<String, Value> {
    object(
        json!({ "kind": "auth-denied", "ts_ms": crate::now_ms(), "path": bounded_to(path, 256), "remote": remote, "reason": why }),
    )
}

/// A reload that was refused (the old config keeps serving).
pub fn reload_failed(file: &str, error: &str) -> Map<String, Value> {
    object(
        json!({ "kind": "config-reload-failed", "ts_ms": crate::now_ms(), "config": file, "error": bounded_to(error, MAX_AUDIT_TEXT) }),
    )
}

/// Shutdown cut off calls still running after the grace period.
pub fn shutdown(interrupted: u64) -> Map<String, Value> {
    object(
        json!({ "kind": "shutdown", "ts_ms": crate::now_ms(), "interrupted_calls": interrupted }),
    )
}

/// The run-history row (the report is already redacted).
pub fn run_row(report: &CallReport, input: &str) -> RunRow {
    let (output, error, backtrace) = match &report.outcome {
        Outcome::Ok { output } => (Some(bounded(&output.to_string())), None, None),
        Outcome::Failed { kind, error } => {
            let backtrace = match kind {
                crate::plugin::Failure::Trap { backtrace, .. } if !backtrace.is_empty() => {
                    Some(bounded(backtrace))
                }
                _ => None,
            };
            (None, Some(error.clone()), backtrace)
        }
        Outcome::Denied { reasons } | Outcome::Held { reasons, .. } => {
            (None, Some(reasons.join("; ")), None)
        }
    };
    let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    RunRow {
        id: report.run_id.clone(),
        started_ms: to_i64(report.time_ms),
        principal: report.principal.clone(),
        tool: report.tool.clone(),
        plugin: report.plugin.clone(),
        plugin_digest: report.plugin_digest.clone(),
        status: report.outcome.status().to_string(),
        input: bounded(input),
        output,
        error,
        backtrace,
        decisions: match &report.approval {
            // A call run after approval: the decisions that held it.
            Some(a) if report.decisions.is_empty() => a.held_by.clone(),
            _ => serde_json::to_value(&report.decisions).unwrap_or(Value::Null),
        },
        log: serde_json::to_value(&report.log).unwrap_or(Value::Null),
        denied_requests: serde_json::to_value(&report.denied_requests).unwrap_or(Value::Null),
        secret_reveals: serde_json::to_value(&report.secret_reveals).unwrap_or(Value::Null),
        policy_us: to_i64(report.timings.policy_us),
        instantiate_us: to_i64(report.timings.instantiate_us),
        execute_us: to_i64(report.timings.execute_us),
        total_us: to_i64(report.timings.total_us),
        fuel_used: report.fuel_used.map(to_i64),
        peak_memory: i64::try_from(report.peak_memory_bytes).unwrap_or(i64::MAX),
        host_calls: to_i64(report.host_calls),
        approval: report.approval.as_ref().map(|a| a.id.clone()),
    }
}
