//! `warden approvals`: list, show, approve, reject and process held calls.
//!
//! Deciding proves who decides: the approver's token (`--token` or `WARDEN_TOKEN`, as
//! `warden tokens create` made it), checked against the config's `[[token]]` hashes.
//! With a server running, the decision goes to it over the operator API (the server
//! checks the token again and runs the call at once); without one it is recorded in
//! the store here, and this command then runs the call itself when no other warden
//! process holds the audit log. A vote always carries the input hash this command
//! showed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use warden_core::call::ApprovalState;
use warden_core::config::Config;
use warden_core::governance::approvals::{
    Approval, ApprovalError, ApprovalQueue, Ballot, Choice, tier_name,
};
use warden_core::grants::secrets::Redactor;
use warden_core::runtime::Runtime;
use warden_core::runtime::driver::Resume;
use warden_core::tokens::{Principal, Role};

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
    /// Approve a request as the token's principal; it runs once every policy that held
    /// it has its approvals.
    Approve {
        id: String,
        #[command(flatten)]
        who: Decider,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a request as the token's principal; it will not run.
    Reject {
        id: String,
        #[command(flatten)]
        who: Decider,
        #[arg(long)]
        reason: String,
    },
    /// Run approved requests, settle expired ones and send due notices, once (what
    /// `warden serve` does continuously).
    Process,
}

/// Who decides: their token, and (break-glass, operators only) whom they decide for.
#[derive(clap::Args)]
pub struct Decider {
    /// Your bearer token (from `warden tokens create`); default `WARDEN_TOKEN`.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Break-glass: decide for this approver (your token needs the operator role, and
    /// the vote records that you cast it for them).
    #[arg(long = "for", value_name = "PRINCIPAL", requires = "token")]
    on_behalf_of: Option<String>,
}

pub async fn run(config_path: &Path, command: &ApprovalsCommand) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    if !config.approvals.enabled {
        anyhow::bail!(
            "the approval queue is disabled in {} ([approvals] enabled = false)",
            config.file.display()
        );
    }
    let queue = warden_core::runtime::open_queue(&config)?;
    let now = warden_core::now_ms() as i64;
    match command {
        ApprovalsCommand::List { state, limit, json } => {
            let state = match state {
                None => None,
                Some(s) => Some(ApprovalState::parse(s).with_context(|| {
                    format!("unknown state {s:?} (pending, approved, rejected, expired, executing, executed, failed)")
                })?),
            };
            let mut out = String::new();
            let redactor = warden_core::runtime::redactor_for(&config)?;
            for mut a in queue.list(state, None, *limit)? {
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
            crate::output::print(&out)?;
            Ok(ExitCode::from(exit::OK))
        }
        ApprovalsCommand::Show { id, json } => {
            let mut a = queue
                .get(id)?
                .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
            redact(&warden_core::runtime::redactor_for(&config)?, &mut a);
            if *json {
                let mut v = serde_json::to_value(&a)?;
                v["notice"] = serde_json::to_value(queue.notice(id)?)?;
                crate::output::print(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            } else {
                crate::output::print(&show(&a, &queue, now)?)?;
            }
            Ok(ExitCode::from(exit::OK))
        }
        ApprovalsCommand::Approve { id, who, reason } => {
            decide(&config, queue, id, who, Choice::Approve, reason.as_deref()).await
        }
        ApprovalsCommand::Reject { id, who, reason } => {
            decide(&config, queue, id, who, Choice::Reject, Some(reason)).await
        }
        ApprovalsCommand::Process => {
            drop(queue);
            let rt = Runtime::load(config).await?;
            let pass = rt.drive().await?;
            let notices = rt.deliver_notices().await?;
            eprintln!(
                "approvals: ran {}, settled {} by their time, ended {} interrupted, delivered {notices} notices",
                pass.ran, pass.settled, pass.recovered
            );
            Ok(ExitCode::from(exit::OK))
        }
    }
}

/// The principal `who`'s token speaks for, checked against the config: an approver
/// (or operator); an operator for a break-glass decision.
fn decider(config: &Config, who: &Decider) -> Result<Principal> {
    let p = super::operator::principal_of(config, who.token.as_deref(), "deciding", "approver")?;
    if !p.has(Role::Approver) {
        bail!("token {} may not decide approvals (approver role)", p.token);
    }
    if who.on_behalf_of.is_some() && !p.has(Role::Operator) {
        bail!(
            "token {} may not decide on someone's behalf (operator role)",
            p.token
        );
    }
    Ok(p)
}

async fn decide(
    config: &Config,
    queue: ApprovalQueue,
    id: &str,
    who: &Decider,
    choice: Choice,
    reason: Option<&str>,
) -> Result<ExitCode> {
    let p = match decider(config, who) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warden approvals: {e:#}");
            return Ok(ExitCode::from(exit::USAGE));
        }
    };
    if who.on_behalf_of.is_some() && reason.is_none() {
        eprintln!("warden approvals: a break-glass decision needs --reason");
        return Ok(ExitCode::from(exit::USAGE));
    }
    let redactor = warden_core::runtime::redactor_for(config)?;
    if let Some(url) = warden_server::running(&config.data_dir).and_then(|s| s.url) {
        drop(queue);
        return decide_through(&url, id, who, choice, reason, &redactor).await;
    }
    let Some(a) = queue.get(id)? else {
        eprintln!("warden approvals: no approval request {id}");
        return Ok(ExitCode::from(exit::USAGE));
    };
    eprint!("{}", summary(&a, &redactor));
    // The hash of the input shown above, not the one the request claims: a tampered
    // input is refused here rather than approved blind.
    let shown = warden_core::governance::approvals::input_hash(&a.input);
    let now = warden_core::now_ms() as i64;
    let ballot = Ballot {
        principal: &p.name,
        choice,
        reason,
        via: "cli",
        input_sha256: &shown,
        on_behalf_of: who.on_behalf_of.as_deref(),
        now_ms: now,
    };
    let a = match queue.decide(&config.approvals, id, &ballot).await {
        Ok(a) => a,
        Err(
            e @ (ApprovalError::AlreadyDecided { .. }
            | ApprovalError::NotAllowed { .. }
            | ApprovalError::InputChanged { .. }
            | ApprovalError::NotFound(_)),
        ) => {
            eprintln!("warden approvals: {e}");
            return Ok(ExitCode::from(exit::USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    drop(queue);
    let decided_by = match &who.on_behalf_of {
        Some(for_whom) => format!("{} for {for_whom} (break-glass)", p.name),
        None => p.name.clone(),
    };
    eprintln!(
        "approval {}: {} by {decided_by} ({} of {} approvals); now {}",
        a.id,
        if choice == Choice::Approve {
            "approved"
        } else {
            "rejected"
        },
        a.approvals(),
        a.required,
        a.state.as_str()
    );
    if a.state == ApprovalState::Pending {
        return Ok(ExitCode::from(exit::HELD));
    }
    // A short-lived process (another command) lets go of the log within moments; one
    // that keeps it drives the queue: `warden serve` at once, `warden call` as it ends.
    if config.audit.enabled
        && !warden_core::store::audit::wait_until_free(
            &config.audit.dir,
            std::time::Duration::from_secs(2),
        )
    {
        eprintln!(
            "approval {}: another warden process holds the audit log ({}); {} when it next drives the queue (`warden call` does as it finishes), or at the next `warden approvals process` or `warden serve`",
            a.id,
            config.audit.dir.display(),
            if a.state == ApprovalState::Approved {
                "the call runs"
            } else {
                "its end is recorded"
            }
        );
        return Ok(ExitCode::from(if a.state == ApprovalState::Approved {
            exit::OK
        } else {
            exit::DENIED
        }));
    }
    let rt = Runtime::load(config.clone()).await?;
    match rt.resume(id).await? {
        Resume::Ran(report) => super::call::print_outcome(&report, false, false),
        Resume::Ended(a) | Resume::Pending(a) => {
            eprintln!(
                "approval {}: {}{}",
                a.id,
                a.state.as_str(),
                a.result.map(|r| format!(": {r}")).unwrap_or_default()
            );
            Ok(ExitCode::from(match a.state {
                ApprovalState::Rejected | ApprovalState::Expired | ApprovalState::Failed => {
                    exit::DENIED
                }
                _ => exit::OK,
            }))
        }
    }
}

/// What the decider is shown before the decision is cast (and so what it is cast on).
fn summary(a: &Approval, r: &Redactor) -> String {
    format!(
        "approval {}: {} requested by {} ({} approval)\n  why held: {}\n  input:    {}\n  input sha: {}\n",
        a.id,
        a.tool,
        a.principal,
        tier_name(a.tier),
        r.scrub(&a.reasons.join("; ")),
        r.scrub(&a.input),
        warden_core::governance::approvals::input_hash(&a.input)
    )
}

/// Decide through the running server's operator API: it checks the token too, and
/// runs an approved call at once.
async fn decide_through(
    url: &str,
    id: &str,
    who: &Decider,
    choice: Choice,
    reason: Option<&str>,
    redactor: &Redactor,
) -> Result<ExitCode> {
    let token = who.token.as_deref().unwrap_or_default().trim();
    let (status, shown) =
        crate::client::request("GET", &format!("{url}/api/approvals/{id}"), token, None).await?;
    if status != 200 {
        eprintln!(
            "warden approvals: the server answered {status}: {}",
            shown["error"].as_str().unwrap_or_default()
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    let input = shown["input"].as_str().unwrap_or_default();
    let sha = shown["input_sha256"].as_str().unwrap_or_default();
    eprint!(
        "approval {id}: {} requested by {}\n  input:    {}\n  input sha: {sha}\n",
        shown["tool"].as_str().unwrap_or_default(),
        shown["principal"].as_str().unwrap_or_default(),
        redactor.scrub(input),
    );
    let verb = match choice {
        Choice::Approve => "approve",
        Choice::Reject => "reject",
    };
    let body = serde_json::json!({
        "reason": reason,
        "input_sha256": sha,
        "on_behalf_of": who.on_behalf_of,
    });
    let (status, answer) = crate::client::request(
        "POST",
        &format!("{url}/api/approvals/{id}/{verb}"),
        token,
        Some(body),
    )
    .await?;
    if status != 200 {
        eprintln!(
            "warden approvals: the server refused ({status}): {}",
            answer["error"].as_str().unwrap_or_default()
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    let state = answer["state"].as_str().unwrap_or_default();
    eprintln!(
        "approval {id}: {verb}d through the server at {url}; now {state}{}",
        if state == "approved" {
            " (the server runs it now)"
        } else {
            ""
        }
    );
    Ok(ExitCode::from(match state {
        "pending" => exit::HELD,
        "rejected" | "expired" | "failed" => exit::DENIED,
        _ => exit::OK,
    }))
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
    if a.state == ApprovalState::Pending {
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
            warden_core::call::Tier::Soft => "runs when its window passes unless rejected",
            warden_core::call::Tier::Hard => "denied if not approved in time",
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
