//! What a governed call leaves behind: its audit records and its run-history row.
//!
//! Owns the shape of each record kind (`config-load`, `run-start`, `policy-decision`,
//! `host-call`, `grant-denied`, `secret-reveal`, `run-end`; for held calls
//! `approval-requested`, `approval-vote`, `approval-ended`, `approval-notice` and
//! `run-resume`; for the server `auth-denied`, `console-session`, `config-reload-failed`,
//! `shutdown`). Every record passes
//! through the redactor before it is written; it must never carry a secret value or
//! an unbounded string.

use serde_json::{Map, Value, json};

use crate::governance::approvals::{self, Approval};

use crate::call::{CallReport, Outcome, Verdict, Vote};
use crate::grants::secrets::Redactor;
use crate::sandbox::hostcalls::HostCall;
use crate::store::audit::Entry;
use crate::store::runs::{RunRow, bounded};
use crate::util::bounded_to;

/// Longest input or output text put in an audit record.
const MAX_AUDIT_TEXT: usize = 4096;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Scrub every string of a record, then bound it, and serialize it for the log.
pub fn redact(redactor: &Redactor, record: Map<String, Value>) -> Entry {
    let mut v = Value::Object(record);
    redactor.scrub_value(&mut v);
    bound_strings(&mut v);
    Entry::of(&object(v))
}

/// Cut every string of `v` to `MAX_AUDIT_TEXT` (after it was scrubbed).
fn bound_strings(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_AUDIT_TEXT => *s = bounded_to(s, MAX_AUDIT_TEXT),
        Value::Array(items) => items.iter_mut().for_each(bound_strings),
        Value::Object(map) => map.values_mut().for_each(bound_strings),
        _ => {}
    }
}

/// Builds one record, every string through the redactor: the records of each governed
/// call are written field by field (no JSON map between), the hot path of auditing.
struct Scrubbed<'r> {
    entry: Entry,
    redactor: &'r Redactor,
}

impl<'r> Scrubbed<'r> {
    fn new(redactor: &'r Redactor, kind: &str, ts_ms: u64, run: &str) -> Scrubbed<'r> {
        let mut s = Scrubbed {
            entry: Entry::new(kind),
            redactor,
        };
        s.num("ts_ms", ts_ms).str("run", run);
        s
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.bounded(key, value, MAX_AUDIT_TEXT)
    }

    /// Scrubbed first, then cut to `max` bytes.
    fn bounded(&mut self, key: &str, value: &str, max: usize) -> &mut Self {
        let clean = self.redactor.scrub(value);
        if clean.len() > max {
            self.entry.str(key, &bounded_to(&clean, max));
        } else {
            self.entry.str(key, &clean);
        }
        self
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        let value = value.map(|v| self.redactor.bounded(v, MAX_AUDIT_TEXT));
        self.entry.opt_str(key, value.as_deref());
        self
    }

    fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.entry.num(key, value);
        self
    }

    fn value(&mut self, key: &str, value: &Value) -> &mut Self {
        self.entry.value(key, value);
        self
    }

    fn done(self) -> Entry {
        self.entry
    }
}

pub fn config_load(file: &str, digest: &str, components: Value) -> Map<String, Value> {
    object(
        json!({ "kind": "config-load", "ts_ms": crate::now_ms(), "config": file, "config_digest": digest, "components": components }),
    )
}

/// An upstream tool's definition accepted: at first sight (`by` = `first-sight`) or by
/// an operator over a changed one (`previous` is the digest it replaces).
pub fn upstream_pin(
    upstream: &str,
    tool: &str,
    digest: &str,
    previous: Option<&str>,
    by: &str,
) -> Map<String, Value> {
    object(json!({
        "kind": "upstream-pin",
        "ts_ms": crate::now_ms(),
        "upstream": upstream,
        "tool": tool,
        "digest": digest,
        "previous": previous,
        "by": by,
    }))
}

/// The records written before the tool may run: the run's start and every decision.
pub fn before_execution(report: &CallReport, input: &str, redactor: &Redactor) -> Vec<Entry> {
    let mut out = Vec::with_capacity(1 + report.decisions.len());
    let mut start = Scrubbed::new(redactor, "run-start", report.time_ms, &report.run_id);
    start
        .str("principal", &report.principal)
        .str("tool", &report.tool)
        .str("plugin", &report.plugin)
        .str("digest", &report.plugin_digest)
        .str("input", input)
        .opt_str("started_by", report.started_by.as_deref());
    out.push(start.done());
    for d in &report.decisions {
        let (decision, reason, tier) = match &d.verdict {
            Verdict::Allow => ("allow", None, None),
            Verdict::Deny { reason } => ("deny", Some(reason.as_str()), None),
            Verdict::RequireApproval { tier, reason, .. } => (
                "require-approval",
                Some(reason.as_str()),
                Some(approvals::tier_name(*tier)),
            ),
        };
        let mut r = Scrubbed::new(redactor, "policy-decision", crate::now_ms(), &report.run_id);
        r.str("policy", &d.policy)
            .str("digest", &d.digest)
            .str("decision", decision)
            .opt_str("tier", tier)
            .opt_str("reason", reason)
            .opt_str("failure", d.failure.as_deref())
            .num("duration_us", d.elapsed.as_micros() as u64);
        out.push(r.done());
    }
    out
}

pub fn host_calls<'a>(
    run: &str,
    digest_of: impl Fn(&str) -> String,
    calls: impl Iterator<Item = &'a HostCall>,
    redactor: &Redactor,
) -> Vec<Entry> {
    let ts = crate::now_ms();
    calls
        .map(|c| {
            let mut r = Scrubbed::new(redactor, "host-call", ts, run);
            r.str("component", &c.component)
                .str("digest", &digest_of(&c.component))
                .str("interface", &c.interface)
                .str("function", &c.function)
                .bounded("args", &c.args, crate::sandbox::hostcalls::MAX_SUMMARY)
                .bounded("result", &c.result, crate::sandbox::hostcalls::MAX_SUMMARY)
                .str("outcome", c.outcome())
                .num("duration_us", c.duration_us);
            r.done()
        })
        .collect()
}

/// The host calls of a run past the per-run bound, counted in one record.
pub fn host_call_counts(
    run: &str,
    counts: &[(String, String, String, &'static str, u64)],
) -> Option<Entry> {
    if counts.is_empty() {
        return None;
    }
    let list: Vec<Value> = counts
        .iter()
        .map(|(component, interface, function, outcome, calls)| {
            json!({ "component": component, "interface": interface, "function": function, "outcome": outcome, "calls": calls })
        })
        .collect();
    let mut entry = Entry::new("host-calls-counted");
    entry
        .num("ts_ms", crate::now_ms())
        .str("run", run)
        .num(
            "first_recorded",
            crate::sandbox::hostcalls::MAX_CALLS as u64,
        )
        .value("counts", &Value::from(list));
    Some(entry)
}

/// The records written after the tool ran (or was refused): grant denials, reveals, the end.
pub fn after_execution(report: &CallReport, redactor: &Redactor) -> Vec<Entry> {
    let ts = crate::now_ms();
    let run = report.run_id.as_str();
    let mut out = Vec::new();
    for request in &report.denied_requests {
        let mut r = Scrubbed::new(redactor, "grant-denied", ts, run);
        r.str("plugin", &report.plugin).str("request", request);
        out.push(r.done());
    }
    for secret in &report.secret_reveals {
        let mut r = Scrubbed::new(redactor, "secret-reveal", ts, run);
        r.str("plugin", &report.plugin).str("secret", secret);
        out.push(r.done());
    }
    let joined;
    let error = match &report.outcome {
        Outcome::Failed { error, .. }
        | Outcome::Interrupted { reason: error }
        | Outcome::Limited { reason: error, .. } => Some(error.as_str()),
        Outcome::Denied { reasons }
        | Outcome::Held { reasons, .. }
        | Outcome::Unmet { reasons, .. } => {
            joined = reasons.join("; ");
            Some(joined.as_str())
        }
        Outcome::Ok { .. } => None,
    };
    let mut end = Scrubbed::new(redactor, "run-end", ts, run);
    end.str("status", report.outcome.status())
        .opt_str("error", error)
        .num("host_calls", report.host_calls)
        .num("total_us", report.timings.total_us);
    if let Outcome::Limited { limit, .. } = &report.outcome {
        end.str("limit", limit);
    }
    let u = report.usage;
    if !u.is_zero() {
        end.value("cost", &json!(u.cost))
            .num("egress_requests", u.egress_requests)
            .num("egress_bytes", u.egress_bytes);
    }
    out.push(end.done());
    out
}

/// A quota passed one of its alert thresholds (during run `run`).
pub fn limit_threshold(run: &str, c: &crate::governance::budgets::Crossing) -> Map<String, Value> {
    object(json!({
        "kind": "limit-threshold",
        "ts_ms": crate::now_ms(),
        "run": run,
        "limit": c.limit,
        "key": c.key,
        "fraction": c.fraction,
        "used": c.used,
        "max": c.max,
        "resets_ms": c.resets_ms,
    }))
}

/// A plugin's circuit breaker opened or closed (after run `run`).
pub fn breaker(
    run: &str,
    event: &crate::governance::budgets::runaway::BreakerEvent,
) -> Map<String, Value> {
    use crate::governance::budgets::runaway::BreakerEvent;
    let v = match event {
        BreakerEvent::Opened {
            plugin,
            error_rate,
            calls,
        } => {
            json!({ "kind": "breaker-open", "plugin": plugin, "error_rate": error_rate, "calls": calls })
        }
        BreakerEvent::Closed { plugin } => json!({ "kind": "breaker-close", "plugin": plugin }),
    };
    let mut m = object(v);
    m.insert("ts_ms".into(), json!(crate::now_ms()));
    m.insert("run".into(), json!(run));
    m
}

/// The kill switch changed: `reason` is `None` for a resume.
pub fn suspension(target: &str, name: &str, reason: Option<&str>, by: &str) -> Map<String, Value> {
    object(json!({
        "kind": if reason.is_some() { "suspend" } else { "resume" },
        "ts_ms": crate::now_ms(),
        "target": target,
        "name": name,
        "reason": reason,
        "by": by,
    }))
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
        "holds": a.holds,
        "input_sha256": a.input_sha256,
        "expires_ms": a.expires_ms,
        "started_by": a.started_by,
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
        json!({ "kind": "auth-denied", "ts_ms": crate::now_ms(), "path": path, "remote": remote, "reason": why }),
    )
}

/// A console session began (`sign-in`) or was ended by its holder (`sign-out`).
pub fn console_session(event: &str, principal: &str, remote: &str) -> Map<String, Value> {
    object(json!({
        "kind": "console-session",
        "ts_ms": crate::now_ms(),
        "event": event,
        "principal": principal,
        "remote": remote,
    }))
}

/// Failed authentications of one source in one window that no record has reported yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreported {
    pub source: String,
    pub failures: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// Up to three of the paths asked for.
    pub paths: Vec<String>,
}

/// Failed authentications of one source in one window, counted in one record.
pub fn auth_denied_counted(u: &Unreported) -> Map<String, Value> {
    object(json!({
        "kind": "auth-denied",
        "ts_ms": crate::now_ms(),
        "remote": u.source,
        "failures": u.failures,
        "first_ms": u.first_ms,
        "last_ms": u.last_ms,
        "paths": u.paths,
        "reason": "further failures from this source, counted (one record per source per window)",
    }))
}

/// A schedule paused or resumed, by whom and why.
pub fn schedule_paused(
    name: &str,
    paused: bool,
    by: &str,
    reason: Option<&str>,
) -> Map<String, Value> {
    let kind = if paused {
        "schedule-paused"
    } else {
        "schedule-resumed"
    };
    object(
        json!({ "kind": kind, "ts_ms": crate::now_ms(), "schedule": name, "by": by, "reason": reason }),
    )
}

/// A reload that was refused (the old config keeps serving).
pub fn reload_failed(file: &str, error: &str) -> Map<String, Value> {
    object(
        json!({ "kind": "config-reload-failed", "ts_ms": crate::now_ms(), "config": file, "error": error }),
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
        Outcome::Unmet { output, reasons } => (
            Some(bounded(&output.to_string())),
            Some(reasons.join("; ")),
            None,
        ),
        Outcome::Failed { kind, error } => {
            let backtrace = match kind {
                crate::call::Failure::Trap { backtrace, .. } if !backtrace.is_empty() => {
                    Some(bounded(backtrace))
                }
                _ => None,
            };
            (None, Some(error.clone()), backtrace)
        }
        Outcome::Denied { reasons } | Outcome::Held { reasons, .. } => {
            (None, Some(reasons.join("; ")), None)
        }
        Outcome::Interrupted { reason } | Outcome::Limited { reason, .. } => {
            (None, Some(reason.clone()), None)
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
        started_by: report.started_by.clone(),
        cost: report.usage.cost,
        egress_requests: to_i64(report.usage.egress_requests),
        egress_bytes: to_i64(report.usage.egress_bytes),
        host: String::new(),
    }
}
