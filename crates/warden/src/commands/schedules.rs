//! `warden schedules` and `warden triggers`: what is scheduled (next fire times in each
//! schedule's zone, the last run, the success rate), running a schedule now, pausing
//! and resuming one; the configured webhook triggers.
//!
//! Changes are made by an operator, proved by their token (`--token` or
//! `WARDEN_TOKEN`). With a server running they go through its operator API (its
//! scheduler sees them at once); without one they are made here, and a run happens in
//! this process, through the governed path like any call.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;

use warden_core::automation;
use warden_core::config::Config;
use warden_core::runtime::Runtime;
use warden_core::store::automation::AutomationStore;
use warden_core::tokens::Principal;

use super::operator::{Operator, operator, through};
use crate::exit;
use crate::output::print;

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: next three fire times, last run, success rate, paused or not.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a schedule now, through the governed path (whatever its overlap setting).
    Run {
        name: String,
        #[command(flatten)]
        who: Operator,
    },
    /// Pause a schedule (it survives restarts) until `resume`.
    Pause {
        name: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        who: Operator,
    },
    /// Resume a paused schedule.
    Resume {
        name: String,
        #[command(flatten)]
        who: Operator,
    },
}

#[derive(Subcommand)]
pub enum TriggersCommand {
    /// Every trigger: its URL path, tool, principal and signature kind.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config_path: &Path, command: &SchedulesCommand) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let server = warden_server::running(&config.data_dir).and_then(|s| s.url);
    match command {
        SchedulesCommand::List { json } => list(config, *json).await,
        SchedulesCommand::Run { name, who } => {
            let p = operator(&config, who)?;
            known(&config, name)?;
            match server {
                Some(url) => {
                    through(
                        &url,
                        who,
                        "POST",
                        &format!("/api/schedules/{name}/run"),
                        None,
                    )
                    .await
                }
                None => run_here(config, name, &p).await,
            }
        }
        SchedulesCommand::Pause { name, reason, who } => {
            let p = operator(&config, who)?;
            known(&config, name)?;
            match server {
                Some(url) => {
                    let body = json!({ "reason": reason });
                    through(
                        &url,
                        who,
                        "POST",
                        &format!("/api/schedules/{name}/pause"),
                        Some(body),
                    )
                    .await
                }
                None => set_paused(config, name, true, reason.as_deref(), &p).await,
            }
        }
        SchedulesCommand::Resume { name, who } => {
            let p = operator(&config, who)?;
            known(&config, name)?;
            match server {
                Some(url) => {
                    through(
                        &url,
                        who,
                        "POST",
                        &format!("/api/schedules/{name}/resume"),
                        None,
                    )
                    .await
                }
                None => set_paused(config, name, false, None, &p).await,
            }
        }
    }
}

fn known(config: &Config, name: &str) -> Result<()> {
    if config.schedules.iter().any(|s| s.name == name) {
        Ok(())
    } else {
        bail!("no schedule {name:?} in {}", config.file.display())
    }
}

async fn list(config: Config, json: bool) -> Result<ExitCode> {
    let store = AutomationStore::for_config(&config)?;
    let rt = Runtime::load_read_only(config).await?;
    let now = warden_core::now_ms() as i64;
    let all = automation::summaries(&rt, &store, now)?;
    if json {
        let mut out = String::new();
        for s in &all {
            out += &serde_json::to_string(s)?;
            out.push('\n');
        }
        print(&out)?;
        return Ok(ExitCode::from(exit::OK));
    }
    let mut out = String::new();
    for s in &all {
        let state = match (s.enabled, s.paused) {
            (false, _) => "disabled".to_string(),
            (true, true) => format!(
                "PAUSED by {}{}",
                s.paused_by.as_deref().unwrap_or("?"),
                s.pause_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            (true, false) => "active".to_string(),
        };
        out += &format!(
            "{}  {} ({})  -> {} as {}  [{state}]\n",
            s.name, s.cron, s.timezone, s.tool, s.principal
        );
        if !s.next.is_empty() {
            out += &format!("  next:    {}\n", s.next.join(", "));
        }
        match &s.last_run {
            Some(r) => out += &format!("  last:    {} {} (run {})\n", r.status, r.started_ms, r.id),
            None => out += "  last:    never ran\n",
        }
        if let Some(rate) = s.success_rate {
            out += &format!(
                "  success: {:.0}% of the last {} runs\n",
                rate * 100.0,
                s.recent_runs
            );
        }
    }
    if all.is_empty() {
        out += "no schedules\n";
    }
    print(&out)?;
    Ok(ExitCode::from(exit::OK))
}

async fn run_here(config: Config, name: &str, p: &Principal) -> Result<ExitCode> {
    let rt = Runtime::load(config).await?;
    let s = rt
        .config
        .schedules
        .iter()
        .find(|s| s.name == name)
        .context("the schedule vanished")?;
    eprintln!("warden schedules: running {name} now (asked by {})", p.name);
    let report = automation::scheduler::run_schedule(&rt, s).await;
    let code = match report {
        Ok(report) => super::call::print_outcome(&report, false, false),
        Err(e) => {
            eprintln!("warden schedules: {e}");
            Ok(ExitCode::from(match e {
                warden_core::CallError::NotRecorded(_) => exit::NOT_RECORDED,
                _ => exit::USAGE,
            }))
        }
    };
    rt.close();
    code
}

async fn set_paused(
    config: Config,
    name: &str,
    paused: bool,
    reason: Option<&str>,
    p: &Principal,
) -> Result<ExitCode> {
    let store = AutomationStore::for_config(&config)?;
    let rt = Runtime::load(config).await?;
    let now = warden_core::now_ms() as i64;
    let changed = store.set_paused(name, paused, &p.name, reason, now)?;
    if changed && let Some(audit) = &rt.audit {
        let record = warden_core::runtime::record::schedule_paused(name, paused, &p.name, reason);
        audit.commit(vec![rt.entry(record)], true).await?;
    }
    rt.close();
    let verb = if paused { "paused" } else { "resumed" };
    eprintln!(
        "warden schedules: {name} {}",
        if changed {
            verb.to_string()
        } else {
            format!("was already {verb}")
        }
    );
    Ok(ExitCode::from(exit::OK))
}

pub fn triggers(config_path: &Path, command: &TriggersCommand) -> Result<ExitCode> {
    let TriggersCommand::List { json } = command;
    let config = Config::load(config_path)?;
    let mut out = String::new();
    for t in &config.triggers {
        if *json {
            out += &serde_json::to_string(&json!({
                "name": t.name,
                "path": format!("/hooks/{}", t.name),
                "tool": t.tool,
                "principal": t.principal,
                "signature": t.signature,
                "secret": t.secret,
                "events": t.events,
                "enabled": t.enabled,
            }))?;
            out.push('\n');
        } else {
            out += &format!(
                "{}  POST /hooks/{}  -> {} as {}  [{:?} signature, secret {}{}]\n",
                t.name,
                t.name,
                t.tool,
                t.principal,
                t.signature,
                t.secret,
                if t.enabled { "" } else { ", disabled" }
            );
        }
    }
    if config.triggers.is_empty() && !*json {
        out += "no triggers\n";
    }
    print(&out)?;
    Ok(ExitCode::from(exit::OK))
}
