//! `warden runs`: list runs and show one, answering "why did this fail".

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use warden_core::config::Config;
use warden_core::store::runs::{RunFilter, RunStore};

/// `println!` into a String.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        tool: Option<String>,
        /// ok, denied, held, unmet, interrupted, tool-error, trapped, timed-out,
        /// memory-limit, fuel-exhausted, over-capacity, bad-output, host-error.
        #[arg(long)]
        status: Option<String>,
        /// Milliseconds since the Unix epoch.
        #[arg(long)]
        since: Option<i64>,
        /// Only runs started by `schedule:NAME` or `trigger:NAME`.
        #[arg(long, value_name = "ORIGIN")]
        started_by: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one run: outcome, decisions, error and backtrace, log, timings.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, command: &RunsCommand) -> Result<ExitCode> {
    let config = Config::load(config)?;
    let store = RunStore::for_config(&config)?;
    // Written at once at the end: a closed pipe (`| head`) is an error returned, never
    // a panic.
    let mut out = String::new();
    match command {
        RunsCommand::List {
            tool,
            status,
            since,
            started_by,
            limit,
            json,
        } => {
            let filter = RunFilter {
                tool: tool.clone(),
                status: status.clone(),
                since_ms: *since,
                started_by: started_by.clone(),
                limit: *limit,
                ..RunFilter::default()
            };
            for row in store.list(&filter)? {
                if *json {
                    outln!(out, "{}", serde_json::to_string(&row)?);
                } else {
                    outln!(
                        out,
                        "{}  {}  {:<14} {:<16} {:<10} {:>8} µs  {}",
                        row.id,
                        row.started_ms,
                        row.status,
                        row.tool,
                        row.principal,
                        row.total_us,
                        row.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        RunsCommand::Show { id, json } => {
            let Some(row) = store.get(id)? else {
                bail!("no run {id}")
            };
            if *json {
                outln!(out, "{}", serde_json::to_string_pretty(&row)?);
                crate::output::print(&out)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(out, "run {}: {}", row.id, row.status);
            outln!(
                out,
                "  tool {} (plugin {} {}) called by {}",
                row.tool,
                row.plugin,
                row.plugin_digest,
                row.principal
            );
            if !row.host.is_empty() {
                outln!(out, "  on host {}", row.host);
            }
            outln!(out, "  input  {}", row.input);
            if let Some(output) = &row.output {
                outln!(out, "  output {output}");
            }
            if let Some(error) = &row.error {
                outln!(out, "  why    {error}");
            }
            for d in row.decisions.as_array().into_iter().flatten() {
                outln!(
                    out,
                    "  policy {} -> {} {}{}",
                    d["policy"].as_str().unwrap_or(""),
                    d["decision"].as_str().unwrap_or(""),
                    d["reason"].as_str().unwrap_or(""),
                    d["failure"]
                        .as_str()
                        .map(|f| format!(" (policy failed: {f})"))
                        .unwrap_or_default()
                );
            }
            if let Some(bt) = &row.backtrace {
                outln!(out, "  guest backtrace:\n{bt}");
            }
            for line in row.log.as_array().into_iter().flatten() {
                outln!(
                    out,
                    "  [{} {}] {}",
                    line["source"].as_str().unwrap_or(""),
                    line["level"].as_str().unwrap_or(""),
                    line["message"].as_str().unwrap_or("")
                );
            }
            for denied in row.denied_requests.as_array().into_iter().flatten() {
                outln!(out, "  refused: {}", denied.as_str().unwrap_or(""));
            }
            outln!(
                out,
                "  timings: policy {} µs, instantiate {} µs, execute {} µs, total {} µs; peak memory {} bytes; {} host calls{}",
                row.policy_us,
                row.instantiate_us,
                row.execute_us,
                row.total_us,
                row.peak_memory,
                row.host_calls,
                row.fuel_used
                    .map(|f| format!("; fuel {f}"))
                    .unwrap_or_default()
            );
            outln!(out, "  audit records: warden audit search --run {}", row.id);
        }
    }
    crate::output::print(&out)?;
    Ok(ExitCode::SUCCESS)
}
