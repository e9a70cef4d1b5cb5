//! `warden approvals`: list, show, approve, reject and process held calls.
//!
//! A decision is recorded in the store at once. The call then runs in the warden
//! process that holds the audit log (a server, or a caller waiting with `--wait`);
//! when none does, this command becomes that process and runs it itself.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use warden::approvals::{
    Approval, ApprovalError, ApprovalQueue, Ballot, State, Verdict, tier_name,
};
use warden::config::Config;
use warden::driver::Resume;
use warden::runtime::Runtime;
use warden::secrets::Redactor;

use crate::exit;

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// List requests, newest first.
    List {
        /// pending, approved, rejected, expired, executing, executed or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one request: the exact input, why it was held, who may decide, every vote.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request; it runs once it has the approvals it needs.
    Approve {
        id: String,
        /// The principal deciding (never the one who made the request).
        #[arg(long = "as")]
        principal: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a request; it will not run.
    Reject {
        id: String,
        #[arg(long = "as")]
        principal: String,
        #[arg(long)]
        reason: String,
    },
    /// Run approved requests, settle expired ones and send due notices, once (what
    /// `warden serve` does continuously).
    Process,
}

pub async fn run(config_path: &Path, command: &ApprovalsCommand) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    if !config.approvals.enabled {
        anyhow::bail!(
            "the approval queue is disabled in {} ([approvals] enabled = false)",
            config.file.display()
        );
    }
    let queue = ApprovalQueue::open(&config.runs_db)?;
    let now = warden::now_ms() as i64;
    match command {
        ApprovalsCommand::List { state, limit, json } => {
            let state = match state {
                None => None,
                Some(s) => Some(State::parse(s).with_context(|| {
                    format!("unknown state {s:?} (pending, approved, rejected, expired, executing, executed, failed)")
                })?),
            };
            let mut out = String::new();
            let redactor = warden::runtime::redactor_for(&config)?;
            for mut a in queue.list(state, *limit)? {
                redact(&redactor, &mut a);
                if *json {
                    out += &serde_json::to_string(&a)?;
                    out += "\n";
                } else {
                    out += &format!(
                        "{}  {:<9} {:<4} {:<16} {:<14} {}/{}  {:<18} {}\n",
                        a.id,
                        a.state.as_str(),
                        tier_name(a.tier),
                        a.tool,
                        a.principal,
                        a.approvals(),
                        a.required,
                        when(&a, now),
                        a.reasons.join("; ")
                    );
                }
            }
            crate::print(&out)?;
            Ok(ExitCode::from(exit::OK))
        }
        ApprovalsCommand::Show { id, json } => {
            let mut a = queue
                .get(id)?
                .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
            redact(&warden::runtime::redactor_for(&config)?, &mut a);
            if *json {
                let mut v = serde_json::to_value(&a)?;
                v["notice"] = serde_json::to_value(queue.notice(id)?)?;
                crate::print(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            } else {
                crate::print(&show(&a, &queue, now)?)?;
            }
            Ok(ExitCode::from(exit::OK))
        }
        ApprovalsCommand::Approve {
            id,
            principal,
            reason,
        } => {
            decide(
                &config,
                &queue,
                id,
                principal,
                Verdict::Approve,
                reason.as_deref(),
            )
            .await
        }
        ApprovalsCommand::Reject {
            id,
            principal,
            reason,
        } => {
            decide(
                &config,
                &queue,
                id,
                principal,
                Verdict::Reject,
                Some(reason),
            )
            .await
        }
        ApprovalsCommand::Process => {
            let rt = Runtime::load(config).await?;
            let pass = rt.drive().await?;
            eprintln!(
                "approvals: ran {}, settled {} by their time, ended {} interrupted, delivered {} notices",
                pass.ran, pass.settled, pass.recovered, pass.notices
            );
            Ok(ExitCode::from(exit::OK))
        }
    }
}

async fn decide(
    config: &Config,
    queue: &ApprovalQueue,
    id: &str,
    principal: &str,
    verdict: Verdict,
    reason: Option<&str>,
) -> Result<ExitCode> {
    let now = warden::now_ms() as i64;
    let ballot = Ballot {
        principal,
        verdict,
        reason,
        via: "cli",
        now_ms: now,
    };
    let a = match queue.decide(&config.approvals, id, &ballot).await {
        Ok(a) => a,
        Err(
            e @ (ApprovalError::AlreadyDecided { .. }
            | ApprovalError::NotAllowed { .. }
            | ApprovalError::NotFound(_)),
        ) => {
            eprintln!("warden approvals: {e}");
            return Ok(ExitCode::from(exit::USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "approval {}: {} by {principal} ({} of {} approvals); now {}",
        a.id,
        if verdict == Verdict::Approve {
            "approved"
        } else {
            "rejected"
        },
        a.approvals(),
        a.required,
        a.state.as_str()
    );
    if a.state == State::Pending {
        return Ok(ExitCode::from(exit::HELD));
    }
    // A short-lived process (another command) lets go of the log within moments; one
    // that keeps it (a server, a caller waiting for this decision) drives the queue.
    if config.audit.enabled
        && !warden::audit::wait_until_free(&config.audit.dir, std::time::Duration::from_secs(2))
    {
        eprintln!(
            "approval {}: another warden process holds the audit log ({}); it will {} the call",
            a.id,
            config.audit.dir.display(),
            if a.state == State::Approved {
                "run"
            } else {
                "record the end of"
            }
        );
        return Ok(ExitCode::from(if a.state == State::Approved {
            exit::OK
        } else {
            exit::DENIED
        }));
    }
    let rt = Runtime::load(config.clone()).await?;
    match rt.resume(id).await? {
        Resume::Ran(report) => crate::print_outcome(&report, false, false),
        Resume::Ended(a) | Resume::Pending(a) => {
            eprintln!(
                "approval {}: {}{}",
                a.id,
                a.state.as_str(),
                a.result.map(|r| format!(": {r}")).unwrap_or_default()
            );
            Ok(ExitCode::from(match a.state {
                State::Rejected | State::Expired | State::Failed => exit::DENIED,
                _ => exit::OK,
            }))
        }
    }
}

/// Scrub every granted secret value from what is printed of `a`: the stored input is
/// exact (it runs exactly), the screen must not show a secret.
fn redact(r: &Redactor, a: &mut Approval) {
    r.scrub_string(&mut a.input);
    a.reasons.iter_mut().for_each(|s| r.scrub_string(s));
    if let Some(result) = &mut a.result {
        r.scrub_string(result);
    }
    for v in &mut a.votes {
        if let Some(reason) = &mut v.reason {
            r.scrub_string(reason);
        }
    }
    r.scrub_value(&mut a.decisions);
}

/// "expires in 5m", "expired 2s ago", or when it was settled.
fn when(a: &Approval, now: i64) -> String {
    if a.state == State::Pending {
        let left = (a.expires_ms - now) / 1000;
        if left >= 0 {
            format!("expires in {}", duration(left))
        } else {
            format!("overdue {}", duration(-left))
        }
    } else {
        format!(
            "{} {} ago",
            a.state.as_str(),
            duration((now - a.state_ms) / 1000)
        )
    }
}

fn duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn show(a: &Approval, queue: &ApprovalQueue, now: i64) -> Result<String> {
    let mut out = format!(
        "approval {}  ({})\n  state:     {}{}\n  run:       {}\n  tool:      {} (plugin {} {})\n  requested: by {} at {} ms\n  tier:      {}, needs {} approval(s), {}\n  why held:  {}\n  approvers: {}\n  input:     {}\n  input sha: {}\n",
        a.id,
        when(a, now),
        a.state.as_str(),
        a.result
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        a.run_id,
        a.tool,
        a.plugin,
        a.plugin_digest,
        a.principal,
        a.created_ms,
        tier_name(a.tier),
        a.required,
        match a.tier {
            warden::policy::Hold::Soft => "runs when its window passes unless rejected",
            warden::policy::Hold::Hard => "denied if not approved in time",
        },
        a.reasons.join("; "),
        if a.approvers.is_empty() {
            "none (only the window or timeout settles it)".to_string()
        } else {
            a.approvers.join(", ")
        },
        a.input,
        a.input_sha256,
    );
    if a.votes.is_empty() {
        out += "  votes:     none yet\n";
    }
    for v in &a.votes {
        out += &format!(
            "  vote:      {} {} via {} at {} ms{}\n",
            v.principal,
            v.vote,
            v.via,
            v.at_ms,
            v.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    if let Some(n) = queue.notice(&a.id)? {
        out += &format!(
            "  notice:    {} after {} attempt(s){}\n",
            if n.delivered {
                "delivered"
            } else if n.gave_up {
                "gave up"
            } else {
                "pending"
            },
            n.attempts,
            n.last_error
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(out)
}
