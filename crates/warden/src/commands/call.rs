//! `warden call`: one governed call from the command line, its output on stdout and its
//! outcome in the exit code; a held call waits (`--wait`) and runs here if approved.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Value, json};

use warden_core::call::{CallRequest, Outcome};
use warden_core::runtime::driver::Resume;

use super::load;
use crate::exit;
use crate::output::{print, read_input};

pub async fn run(
    config: &Path,
    tool: &str,
    input: &str,
    principal: &str,
    wait_ms: Option<u64>,
    full_report: bool,
    verbose: bool,
) -> Result<ExitCode> {
    let input = read_input(input)?;
    let rt = load(config).await?;
    let report = match rt
        .call(CallRequest {
            principal,
            tool,
            input: &input,
            started_by: None,
        })
        .await
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("warden call: {e}");
            let code = match e {
                warden_core::CallError::NotRecorded(_) => exit::NOT_RECORDED,
                _ => exit::USAGE,
            };
            return Ok(ExitCode::from(code));
        }
    };
    let report = match (&report.outcome, &report.approval) {
        (Outcome::Held { .. }, Some(approval)) => {
            let wait = wait_ms.unwrap_or(rt.config.approvals.wait_ms);
            let id = approval.id.clone();
            // Tell the approvers now; a notice not sent within a moment is retried by
            // the next process that drives the queue.
            let notify =
                tokio::time::timeout(std::time::Duration::from_secs(2), rt.deliver_notices());
            let (notified, resumed) = tokio::join!(
                notify,
                rt.wait_for(&id, std::time::Duration::from_millis(wait))
            );
            if let Ok(Err(e)) = notified {
                eprintln!("warden call: {e}");
            }
            match resumed {
                Ok(Resume::Ran(done)) => *done,
                Ok(Resume::Ended(a)) => {
                    let mut ended = report;
                    ended.outcome = Outcome::Denied {
                        reasons: vec![
                            a.result
                                .clone()
                                .unwrap_or_else(|| format!("approval {}", a.state.as_str())),
                        ],
                    };
                    ended
                }
                Ok(Resume::Pending(_)) => report,
                Err(e) => {
                    eprintln!("warden call: {e}");
                    return Ok(ExitCode::from(exit::NOT_RECORDED));
                }
            }
        }
        _ => report,
    };
    let code = print_outcome(&report, full_report, verbose);
    // This process holds the audit log: approved calls that were waiting for whoever
    // holds it run now, before it lets go.
    if let Err(e) = rt.drive().await {
        eprintln!("warden call: approval queue: {e}");
    }
    code
}

/// Print a call's outcome (output JSON, or a status object) and pick the exit code.
pub fn print_outcome(
    report: &warden_core::CallReport,
    full_report: bool,
    verbose: bool,
) -> Result<ExitCode> {
    let tool = &report.tool;
    if verbose {
        for d in &report.decisions {
            for line in &d.log {
                eprintln!("[policy {}] {} {}", d.policy, line.level, line.message);
            }
        }
        for line in &report.log {
            eprintln!(
                "[{} {}] {} {}",
                report.plugin, line.source, line.level, line.message
            );
        }
    }
    let (code, stdout) = match &report.outcome {
        Outcome::Ok { output } => (exit::OK, output.clone()),
        Outcome::Denied { reasons } => {
            eprintln!("warden call: {tool} denied: {}", reasons.join("; "));
            (
                exit::DENIED,
                json!({ "status": "denied", "run_id": report.run_id, "reasons": reasons }),
            )
        }
        Outcome::Held {
            tier,
            reasons,
            approvers,
            timeout_secs,
        } => {
            let tier = serde_json::to_value(tier)?;
            eprintln!(
                "warden call: {tool} held for {} approval (not executed yet): {}{}",
                tier.as_str().unwrap_or_default(),
                reasons.join("; "),
                report
                    .approval
                    .as_ref()
                    .map(|a| format!(
                        "; approval {}, outcome later with `warden runs show {}`",
                        a.id, report.run_id
                    ))
                    .unwrap_or_default()
            );
            let approval = report.approval.as_ref();
            let v = json!({ "status": "held", "run_id": report.run_id, "approval_id": approval.map(|a| &a.id), "expires_ms": approval.map(|a| a.expires_ms), "approvals_required": approval.map(|a| a.approvals_required), "tier": tier, "reasons": reasons, "approvers": approvers, "timeout_secs": timeout_secs });
            (exit::HELD, v)
        }
        Outcome::Unmet { output, reasons } => {
            eprintln!(
                "warden call: {tool} returned, but its success criteria are unmet: {}",
                reasons.join("; ")
            );
            (
                exit::TOOL_ERROR,
                json!({ "status": "unmet", "output": output, "reasons": reasons, "run_id": report.run_id }),
            )
        }
        Outcome::Limited {
            limit,
            reason,
            resets_ms,
        } => {
            eprintln!("warden call: {tool} not run: {reason}");
            (
                exit::DENIED,
                json!({ "status": "limited", "limit": limit, "error": reason, "resets_ms": resets_ms, "run_id": report.run_id }),
            )
        }
        Outcome::Interrupted { reason } => {
            eprintln!("warden call: {tool} interrupted: {reason}");
            (
                exit::TOOL_ERROR,
                json!({ "status": "interrupted", "error": reason, "run_id": report.run_id }),
            )
        }
        Outcome::Failed { kind, error } => {
            eprintln!("warden call: {tool} failed: {error}");
            if let warden_core::call::Failure::Trap { backtrace, .. } = kind
                && verbose
                && !backtrace.is_empty()
            {
                eprintln!("{backtrace}");
            }
            let v: Value = serde_json::to_value(&report.outcome)?;
            (
                exit::TOOL_ERROR,
                json!({ "status": v["status"], "kind": v["kind"], "error": error, "run_id": report.run_id }),
            )
        }
    };
    let text = if full_report {
        serde_json::to_string_pretty(&report)?
    } else {
        serde_json::to_string_pretty(&stdout)?
    };
    print(&format!("{text}\n"))?;
    Ok(ExitCode::from(code))
}
