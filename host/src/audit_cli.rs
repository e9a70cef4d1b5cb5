//! `warden audit`: verify the chain, show the newest records, search them.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use warden::audit;
use warden::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain; exits 1 and names the first bad record on any break.
    Verify,
    /// Show the newest records.
    Tail {
        /// How many records.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// JSON lines (for a SIEM) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the records matching every filter given.
    Search {
        #[arg(long)]
        run: Option<String>,
        /// Plugin or policy id (host calls are matched by component).
        #[arg(long)]
        plugin: Option<String>,
        /// Milliseconds since the Unix epoch.
        #[arg(long)]
        since: Option<u64>,
        /// Record kind: run-start, policy-decision, host-call, grant-denied, secret-reveal, run-end, config-load.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, command: &AuditCommand) -> Result<ExitCode> {
    let config = Config::load(config)?;
    let dir = &config.audit_dir;
    match command {
        AuditCommand::Verify => {
            let verified = audit::verify(dir)?;
            match verified.problem {
                None => {
                    println!(
                        "audit log {} is intact: {} records in {} segments",
                        dir.display(),
                        verified.records,
                        verified.segments
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(p) => {
                    println!(
                        "audit log {} is BROKEN at record {} ({}): {}",
                        dir.display(),
                        p.seq,
                        p.location,
                        p.what
                    );
                    println!("{} records before it verify", verified.records);
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Tail { lines, json } => {
            let mut out = std::io::stdout().lock();
            for record in audit::last_matching(dir, &audit::Search::default(), *lines)? {
                print(&mut out, &record, *json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Search {
            run,
            plugin,
            since,
            kind,
            json,
        } => {
            let search = audit::Search {
                run: run.clone(),
                plugin: plugin.clone(),
                since_ms: *since,
                kind: kind.clone(),
            };
            // Streamed: a write error (a closed pipe) stops the scan and is returned.
            let mut out = std::io::stdout().lock();
            let mut written = Ok(());
            audit::each_matching(dir, &search, |record| {
                written = print(&mut out, &record, *json);
                written.is_ok()
            })?;
            written?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(out: &mut impl Write, r: &Value, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{r}");
    }
    let detail = match r["kind"].as_str().unwrap_or_default() {
        "host-call" => format!(
            "{} {}.{} -> {} ({} µs)",
            r["component"].as_str().unwrap_or(""),
            r["interface"].as_str().unwrap_or(""),
            r["function"].as_str().unwrap_or(""),
            r["outcome"].as_str().unwrap_or(""),
            r["duration_us"]
        ),
        "policy-decision" => format!(
            "{} {} {}",
            r["policy"].as_str().unwrap_or(""),
            r["decision"].as_str().unwrap_or(""),
            r["reason"].as_str().unwrap_or("")
        ),
        "run-start" => format!(
            "{} {} by {}",
            r["tool"].as_str().unwrap_or(""),
            r["plugin"].as_str().unwrap_or(""),
            r["principal"].as_str().unwrap_or("")
        ),
        "run-end" => format!(
            "{} {}",
            r["status"].as_str().unwrap_or(""),
            r["error"].as_str().unwrap_or("")
        ),
        "grant-denied" => r["request"].as_str().unwrap_or("").to_string(),
        "secret-reveal" => format!(
            "{} revealed to {}",
            r["secret"].as_str().unwrap_or(""),
            r["plugin"].as_str().unwrap_or("")
        ),
        "config-load" => format!(
            "{} {}",
            r["config"].as_str().unwrap_or(""),
            r["config_digest"].as_str().unwrap_or("")
        ),
        _ => String::new(),
    };
    writeln!(
        out,
        "{:>8}  {}  {:<16} {:<32} {detail}",
        r["seq"],
        r["ts_ms"],
        r["kind"].as_str().unwrap_or(""),
        r["run"].as_str().unwrap_or("-")
    )
}
