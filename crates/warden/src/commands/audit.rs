//! `warden audit`: verify the chain, show and search records, repair what a crash or a
//! full disk left, force a checkpoint, show and rotate the signing key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Value, json};

use warden_core::config::Config;
use warden_core::store::audit::{self, AuditLog, AuditOptions, Repair, Signer, VerifyOptions};

use crate::exit;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every hash, link and signed checkpoint, and the end of the log against
    /// HEAD (and the witness); exits 1 naming the first break and where trust ends.
    Verify {
        /// Verify the log in this directory (a copy, say) without a config.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A public key trusted to sign checkpoints (64 hex digits, or a file holding
        /// them; repeatable). With a config, its signing key is trusted too.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// A witness directory (or file) holding this log's checkpoints (with a config,
        /// `[audit.witness] dir` is used unless this is given).
        #[arg(long, value_name = "PATH")]
        witness: Option<PathBuf>,
        /// Verify without HEAD (records deleted from the end then go unnoticed).
        #[arg(long)]
        no_head: bool,
        /// Verify the logs of hosts sharing a store together (each host's audit dir,
        /// copied here): every chain, and that what crosses hosts agrees (a request
        /// made on one host, decided on another, run on a third; never run twice).
        #[arg(long, value_name = "DIR", num_args = 1.., conflicts_with = "dir")]
        cluster: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
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
        /// Record kind: run-start, policy-decision, host-call, grant-denied, secret-reveal, run-end, config-load, checkpoint, ...
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Repair what a crash or a full disk left: cut a record cut short at the very end
    /// (never a whole record), and, only when told, accept a log shorter than HEAD says
    /// or a missing HEAD. Every repair is recorded in the log.
    Repair {
        /// Accept that records at the end are missing (or not the ones HEAD names).
        #[arg(long)]
        accept_missing_records: bool,
        /// Accept that HEAD is missing.
        #[arg(long)]
        accept_missing_head: bool,
    },
    /// Sign the log as it stands now (warden also does so every `checkpoint_every`
    /// records, every `checkpoint_secs` and when it stops).
    Checkpoint,
    /// Print the public key that verifies this log's checkpoints.
    Key,
    /// Sign with a new key from now on: the old key endorses the new one in the log, then
    /// steps aside (kept as `<key>.retired-<ms>`).
    RotateKey,
}

pub async fn run(config: &Path, command: &AuditCommand) -> Result<ExitCode> {
    if let AuditCommand::Verify {
        dir: Some(dir),
        keys,
        witness,
        no_head,
        json,
        ..
    } = command
    {
        let options = verify_options(keys, None, witness.clone(), *no_head)?;
        return verify(dir, &options, *json);
    }
    if let AuditCommand::Verify {
        cluster,
        keys,
        no_head,
        json,
        ..
    } = command
        && !cluster.is_empty()
    {
        let options = verify_options(keys, None, None, *no_head)?;
        return verify_cluster(cluster, &options, *json);
    }
    let config = Config::load(config)?;
    let dir = &config.audit.dir;
    match command {
        AuditCommand::Verify {
            keys,
            witness,
            no_head,
            json,
            ..
        } => {
            let witness = witness.clone().or(config.audit.witness.dir.clone());
            let options = verify_options(keys, Some(&config), witness, *no_head)?;
            verify(dir, &options, *json)
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
        AuditCommand::Repair {
            accept_missing_records,
            accept_missing_head,
        } => {
            let repair = Repair {
                accept_missing_records: *accept_missing_records,
                accept_missing_head: *accept_missing_head,
                by: operator(),
            };
            let options = options(&config)?;
            let dir = dir.clone();
            let (log, repaired) =
                tokio::task::spawn_blocking(move || AuditLog::repair(&dir, options, &repair))
                    .await??;
            log.checkpoint().await?;
            log.close();
            if repaired.actions.is_empty() {
                eprintln!("warden audit repair: nothing to repair");
            }
            for action in &repaired.actions {
                eprintln!("warden audit repair: {action} (recorded in the log)");
            }
            Ok(ExitCode::from(exit::OK))
        }
        AuditCommand::Checkpoint => {
            let log = open(&config).await?;
            log.checkpoint().await?;
            log.close();
            eprintln!("warden audit checkpoint: signed");
            Ok(ExitCode::from(exit::OK))
        }
        AuditCommand::Key => {
            let path = config.audit.signing_key().map_err(anyhow::Error::msg)?;
            let public = Signer::public_of(path)
                .map_err(anyhow::Error::msg)?
                .with_context(|| {
                    format!(
                        "no signing key at {} yet (warden creates it when it first writes the log)",
                        path.display()
                    )
                })?;
            crate::output::print(&format!("{public}\n"))?;
            eprintln!("warden audit key: the public half of {}", path.display());
            Ok(ExitCode::from(exit::OK))
        }
        AuditCommand::RotateKey => {
            let path = config
                .audit
                .signing_key()
                .map_err(anyhow::Error::msg)?
                .to_path_buf();
            let next_path = path.with_extension(format!("next-{}", warden_core::now_ms()));
            let next = Arc::new(Signer::create_new(&next_path).map_err(anyhow::Error::msg)?);
            let log = open(&config).await?;
            let rotated = log.rotate_key(next.clone()).await;
            log.close();
            if let Err(e) = rotated {
                let _ = std::fs::remove_file(&next_path);
                let _ = std::fs::remove_file(audit::public_path(&next_path));
                return Err(e.into());
            }
            let retired = path.with_extension(format!("retired-{}", warden_core::now_ms()));
            std::fs::rename(&path, &retired)
                .with_context(|| format!("moving {} aside", path.display()))?;
            std::fs::rename(&next_path, &path)
                .with_context(|| format!("putting the new key at {}", path.display()))?;
            let _ = std::fs::remove_file(audit::public_path(&next_path));
            std::fs::write(audit::public_path(&path), format!("{}\n", next.public()))?;
            crate::output::print(&format!("{}\n", next.public()))?;
            eprintln!(
                "warden audit rotate-key: new key in {} (the old one, now {}, endorsed it in the log)",
                path.display(),
                retired.display()
            );
            Ok(ExitCode::from(exit::OK))
        }
    }
}

/// The options the log is opened with, from the config.
fn options(config: &Config) -> Result<AuditOptions> {
    warden_core::runtime::audit_options(config).map_err(anyhow::Error::msg)
}

async fn open(config: &Config) -> Result<AuditLog> {
    let options = options(config)?;
    let dir = config.audit.dir.clone();
    Ok(tokio::task::spawn_blocking(move || AuditLog::open(&dir, options)).await??)
}

/// Who is at the keyboard, for the record of a repair.
fn operator() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    match user {
        Ok(name) => format!("{name} (uid {uid}, warden audit repair)"),
        Err(_) => format!("uid {uid} (warden audit repair)"),
    }
}

fn verify_options(
    keys: &[String],
    config: Option<&Config>,
    witness: Option<PathBuf>,
    no_head: bool,
) -> Result<VerifyOptions> {
    let mut trusted = Vec::new();
    for key in keys {
        trusted.push(audit::parse_public_key(key).map_err(anyhow::Error::msg)?);
    }
    if let Some(config) = config
        && let Some(path) = &config.audit.signing_key
        && let Some(public) = Signer::public_of(path).map_err(anyhow::Error::msg)?
        && !trusted.contains(&public)
    {
        trusted.push(public);
    }
    Ok(VerifyOptions {
        trusted_keys: trusted,
        witness,
        no_head,
    })
}

fn verify(dir: &Path, options: &VerifyOptions, json: bool) -> Result<ExitCode> {
    let v = audit::verify(dir, options)?;
    if json {
        let report = json!({
            "dir": dir.display().to_string(),
            "intact": v.problem.is_none(),
            "records": v.records,
            "segments": v.segments,
            "checkpoints": v.checkpoints,
            "last_checkpoint": v.last_checkpoint,
            "unsigned": v.unsigned,
            "keys": v.keys,
            "trusted": v.trusted,
            "witnessed": v.witnessed,
            "live": v.live,
            "problem": v.problem.as_ref().map(|p| json!({ "seq": p.seq, "location": p.location, "what": p.what })),
        });
        crate::output::print(&format!("{report}\n"))?;
    } else {
        let mut out = String::new();
        match &v.problem {
            None => {
                out += &format!(
                    "audit log {} is intact: {} records in {} segments{}\n",
                    dir.display(),
                    v.records,
                    v.segments,
                    if v.live { " (being written)" } else { "" }
                );
            }
            Some(p) => {
                out += &format!(
                    "audit log {} is BROKEN at record {} ({}): {}\n",
                    dir.display(),
                    p.seq,
                    p.location,
                    p.what
                );
                out += &format!("{} records before it verify\n", v.records);
            }
        }
        out += &match (v.last_checkpoint, v.trusted) {
            (None, _) => "  checkpoints: none\n".to_string(),
            (Some(c), trusted) => format!(
                "  checkpoints: {} verified, the last at record {c}, signed by {}{}\n",
                v.checkpoints,
                v.keys.join(", "),
                if trusted {
                    " (trusted)"
                } else {
                    " (checked against the keys the log names only: pass --key to check who signed)"
                }
            ),
        };
        if v.unsigned > 0 {
            out += &format!(
                "  {} records after the last checkpoint are not signed yet\n",
                v.unsigned
            );
        }
        match (&v.head, options.no_head) {
            (_, true) => out += "  HEAD: not checked (--no-head)\n",
            (None, false) => out += "  HEAD: missing\n",
            (Some(h), false) => {
                out += &format!(
                    "  HEAD: names record {}{}\n",
                    h.seq,
                    if h.clean {
                        " (warden stopped cleanly)"
                    } else {
                        ""
                    }
                )
            }
        }
        if let Some(w) = v.witnessed {
            out += &format!("  witness: agrees up to record {w}\n");
        }
        crate::output::print(&out)?;
    }
    if v.problem.is_some() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every host's log, then what crosses hosts.
fn verify_cluster(dirs: &[PathBuf], options: &VerifyOptions, json: bool) -> Result<ExitCode> {
    let mut logs = Vec::new();
    let mut reports = Vec::new();
    let mut broken = false;
    for dir in dirs {
        let v = audit::verify(dir, options).with_context(|| format!("{}", dir.display()))?;
        let records = audit::read_all(dir)?;
        let host = records
            .iter()
            .find_map(|r| r["host"].as_str())
            .map_or_else(|| dir.display().to_string(), str::to_string);
        broken |= v.problem.is_some();
        reports.push(json!({
            "dir": dir.display().to_string(),
            "host": host,
            "intact": v.problem.is_none(),
            "records": v.records,
            "problem": v.problem.as_ref().map(|p| format!("record {} ({}): {}", p.seq, p.location, p.what)),
        }));
        logs.push((host, records));
    }
    let (requests, problems) = audit::cross_check(&logs);
    if json {
        let report = json!({"logs": reports, "requests": requests, "consistent": problems.is_empty(), "problems": problems});
        crate::output::print(&format!("{report}\n"))?;
    } else {
        let mut out = String::new();
        for r in &reports {
            out += &match r["problem"].as_str() {
                None => format!(
                    "host {}: {} intact, {} records\n",
                    r["host"].as_str().unwrap_or_default(),
                    r["dir"].as_str().unwrap_or_default(),
                    r["records"]
                ),
                Some(p) => format!(
                    "host {}: {} is BROKEN at {p}\n",
                    r["host"].as_str().unwrap_or_default(),
                    r["dir"].as_str().unwrap_or_default()
                ),
            };
        }
        if problems.is_empty() {
            out += &format!(
                "across {} hosts: {requests} approval requests, every record where it belongs\n",
                logs.len()
            );
        } else {
            for p in &problems {
                out += &format!("INCONSISTENT: {p}\n");
            }
        }
        crate::output::print(&out)?;
    }
    Ok(if broken || !problems.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(out: &mut impl Write, r: &Value, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{r}");
    }
    let s = |k: &str| r[k].as_str().unwrap_or("");
    let detail = match s("kind") {
        "host-call" => format!(
            "{} {}.{} -> {} ({} µs)",
            s("component"),
            s("interface"),
            s("function"),
            s("outcome"),
            r["duration_us"]
        ),
        "policy-decision" => format!("{} {} {}", s("policy"), s("decision"), s("reason")),
        "run-start" => format!("{} {} by {}", s("tool"), s("plugin"), s("principal")),
        "run-end" => format!("{} {}", s("status"), s("error")),
        "grant-denied" => s("request").to_string(),
        "secret-reveal" => format!("{} revealed to {}", s("secret"), s("plugin")),
        "config-load" => format!("{} {}", s("config"), s("config_digest")),
        "checkpoint" => format!("signs record {} ({})", r["covers"], s("key")),
        "key-rotation" => format!("{} ({})", s("key"), s("reason")),
        "audit-repair" => format!("{} by {}", s("action"), s("by")),
        "audit-write-failed" => s("error").to_string(),
        _ => String::new(),
    };
    writeln!(
        out,
        "{:>8}  {}  {:<16} {:<32} {detail}",
        r["seq"],
        r["ts_ms"],
        s("kind"),
        r["run"].as_str().unwrap_or("-")
    )
}
