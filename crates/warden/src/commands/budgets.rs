//! `warden usage`, `warden suspend` and `warden resume`: what each limit has counted
//! against its maximum (and when it resets), what runs used since a time, and the kill
//! switch.
//!
//! With a server running, `usage` reads its live counts and a suspension goes through
//! its operator API (it takes effect there at once); without one, counts are rebuilt
//! from the run history and a suspension is written to the store, which the next
//! server reads.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;

use warden_core::config::Config;
use warden_core::governance::budgets::{Target, UsageFilter};
use warden_core::runtime::{Runtime, UsageReport};

use super::operator::{Operator, operator, through};
use crate::exit;
use crate::output::print;

#[derive(clap::Args)]
pub struct UsageArgs {
    /// Only limits that can count this principal's calls (and its own count).
    #[arg(long)]
    principal: Option<String>,
    #[arg(long)]
    plugin: Option<String>,
    #[arg(long)]
    tool: Option<String>,
    /// Also total what runs used since then: a duration back from now (`30m`, `24h`,
    /// `7d`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    json: bool,
    /// Your bearer token (operator role), to read a running server's live counts;
    /// default `WARDEN_TOKEN`.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
pub struct SuspendArgs {
    /// principal, plugin, tool or schedule.
    kind: String,
    name: String,
    /// Why (kept with the suspension and in the audit log).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    who: Operator,
}

#[derive(clap::Args)]
pub struct ResumeArgs {
    /// principal, plugin, tool or schedule.
    kind: String,
    name: String,
    #[command(flatten)]
    who: Operator,
}

pub async fn usage(config_path: &Path, args: &UsageArgs) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let since_ms = args.since.as_deref().map(parse_since).transpose()?;
    let filter = UsageFilter {
        principal: args.principal.clone(),
        plugin: args.plugin.clone(),
        tool: args.tool.clone(),
    };
    let server = warden_server::running(&config.data_dir).and_then(|s| s.url);
    let report: UsageReport = match (server, args.token.as_deref()) {
        (Some(url), Some(token)) => {
            let mut query = Vec::new();
            for (k, v) in [
                ("principal", &filter.principal),
                ("plugin", &filter.plugin),
                ("tool", &filter.tool),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", urlencoding(v)));
                }
            }
            if let Some(s) = since_ms {
                query.push(format!("since_ms={s}"));
            }
            let (status, answer) = crate::client::request(
                "GET",
                &format!("{url}/api/usage?{}", query.join("&")),
                token.trim(),
                None,
            )
            .await?;
            if status != 200 {
                bail!(
                    "the server at {url} refused ({status}): {}",
                    answer["error"].as_str().unwrap_or_default()
                );
            }
            if args.json {
                print(&format!("{answer}\n"))?;
                return Ok(ExitCode::from(exit::OK));
            }
            serde_json::from_value(answer).context("the server's usage report")?
        }
        (Some(url), None) => {
            eprintln!(
                "warden usage: a server runs at {url}; without --token (or WARDEN_TOKEN) these counts are rebuilt from the run history and miss calls in flight"
            );
            local(config, &filter, since_ms).await?
        }
        (None, _) => local(config, &filter, since_ms).await?,
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string(&report)?))?;
    } else {
        print(&render(&report))?;
    }
    Ok(ExitCode::from(exit::OK))
}

async fn local(config: Config, filter: &UsageFilter, since_ms: Option<i64>) -> Result<UsageReport> {
    let rt = Runtime::load_read_only(config).await?;
    rt.usage_report(filter, since_ms)
        .map_err(anyhow::Error::msg)
}

fn render(r: &UsageReport) -> String {
    let mut out = String::new();
    if r.limits.is_empty() {
        out += "no limits in scope ([[limit]] in warden.toml)\n";
    }
    for row in &r.limits {
        let who = if row.key.is_empty() {
            String::new()
        } else {
            format!(" [{}]", row.key)
        };
        let per = row
            .per
            .as_ref()
            .map(|p| format!(" per {p}"))
            .unwrap_or_default();
        let resets = row
            .resets_ms
            .map(|t| format!(", resets {}", warden_core::util::rfc3339_ms(t)))
            .unwrap_or_default();
        out += &format!(
            "{}{who}: {} {} of {}{per} used, {} left{resets} (past it: {})\n",
            row.limit,
            number(row.used),
            row.measure,
            number(row.max),
            number(row.remaining),
            row.on_exceed.as_str(),
        );
    }
    if let Some(since) = r.since_ms {
        out += &format!("\nsince {}:\n", warden_core::util::rfc3339_ms(since));
        if r.totals.is_empty() {
            out += "  no runs\n";
        }
        for t in &r.totals {
            out += &format!(
                "  {} -> {}: {} calls, {} limited, cost {}, {} ms, {} requests, {} bytes out and in\n",
                t.principal,
                t.tool,
                t.calls,
                t.limited,
                number(t.cost),
                number(t.wall_ms),
                t.egress_requests,
                t.egress_bytes
            );
        }
    }
    if !r.open_breakers.is_empty() {
        out += &format!("\ncircuit breakers open: {}\n", r.open_breakers.join(", "));
    }
    for s in &r.suspended {
        out += &format!(
            "SUSPENDED {} {} by {} at {}: {}\n",
            s.kind,
            s.name,
            s.by,
            warden_core::util::rfc3339_ms(s.at_ms),
            s.reason
        );
    }
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn urlencoding(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `30m`, `24h`, `7d`, `90s` back from now, or an RFC 3339 time: ms since the epoch.
fn parse_since(text: &str) -> Result<i64> {
    let now = warden_core::now_ms() as i64;
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = text.chars().last()
        && let Some(ms) = unit(last)
        && let Ok(n) = text[..text.len() - 1].parse::<i64>()
    {
        return Ok(now - n.saturating_mul(ms));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("--since {text:?}: a duration (30m, 24h, 7d) or an RFC 3339 time"))
}

fn target(kind: &str) -> Result<Target> {
    Target::parse(kind)
        .with_context(|| format!("cannot suspend a {kind:?}: principal, plugin, tool or schedule"))
}

pub async fn suspend(config_path: &Path, args: &SuspendArgs) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let p = operator(&config, &args.who)?;
    let t = target(&args.kind)?;
    let server = warden_server::running(&config.data_dir).and_then(|s| s.url);
    if let Some(url) = server {
        let body = json!({ "reason": args.reason });
        let path = format!("/api/suspensions/{}/{}", args.kind, urlencoding(&args.name));
        return through(&url, &args.who, "POST", &path, Some(body)).await;
    }
    let rt = Runtime::load(config).await?;
    let done = rt.suspend(t, &args.name, &args.reason, &p.name).await;
    rt.close();
    done?;
    eprintln!(
        "warden suspend: {} {} is suspended; new calls are refused until `warden resume {} {}`",
        args.kind, args.name, args.kind, args.name
    );
    Ok(ExitCode::from(exit::OK))
}

pub async fn resume(config_path: &Path, args: &ResumeArgs) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let p = operator(&config, &args.who)?;
    let t = target(&args.kind)?;
    let server = warden_server::running(&config.data_dir).and_then(|s| s.url);
    if let Some(url) = server {
        let path = format!("/api/suspensions/{}/{}", args.kind, urlencoding(&args.name));
        return through(&url, &args.who, "DELETE", &path, None).await;
    }
    let rt = Runtime::load(config).await?;
    let done = rt.unsuspend(t, &args.name, &p.name).await;
    rt.close();
    if done? {
        eprintln!(
            "warden resume: {} {} is no longer suspended",
            args.kind, args.name
        );
    } else {
        eprintln!(
            "warden resume: {} {} was not suspended",
            args.kind, args.name
        );
    }
    Ok(ExitCode::from(exit::OK))
}
