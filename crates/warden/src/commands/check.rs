//! `warden check`: validate the config, load every component, and print tools,
//! policies, each plugin's effective grants and limits, and where records go.
//!
//! It changes nothing: the runtime is loaded read-only, so it never waits for the audit
//! log's lock held by a running server.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use warden_core::grants::secrets::SecretUse;

use super::look;
use crate::exit;
use crate::output::print;

pub async fn run(config: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let rt = look(config).await?;
    let mut out = String::new();
    let c = &rt.config;
    out += &format!(
        "config {} is valid (loaded in {} ms)\n",
        c.file.display(),
        started.elapsed().as_millis()
    );
    out += &format!(
        "data dir: {}\n\nplugins ({}):\n",
        c.data_dir.display(),
        rt.plugins.len()
    );
    for p in &rt.plugins {
        let g = &p.sandbox.grants;
        let l = &p.sandbox.limits;
        out += &format!("  {}  {}  {}\n", p.id, p.digest, p.path.display());
        if let Some(u) = p.upstream() {
            let c = &u.upstream.config;
            let tools: Vec<String> = p.tools.iter().map(|t| t.name.clone()).collect();
            out += &format!(
                "    upstream MCP server: {}\n",
                match &c.url {
                    Some(url) => url.clone(),
                    None => c.command.join(" "),
                }
            );
            out += &format!("    tools:  {}\n", list_or_none(tools));
            out += &format!(
                "    trusted code outside the sandbox: it sees its environment ({}) and secrets ({})\n",
                list_or_none(c.env.keys().cloned().collect()),
                list_or_none(
                    c.secret_env
                        .keys()
                        .cloned()
                        .chain(
                            c.secret_headers
                                .iter()
                                .map(|h| format!("header {}", h.header))
                        )
                        .collect()
                )
            );
            out += &format!(
                "    limits: {} ms per call, {} KiB of output\n",
                c.timeout_ms, c.max_output_kb
            );
            continue;
        }
        let tools = p.tools.iter().map(|t| t.name.clone()).collect();
        let http = g.http.iter().map(ToString::to_string).collect();
        let files = g
            .files
            .iter()
            .map(|f| {
                let mode = if f.writable { "rw" } else { "ro" };
                format!("{} -> {} ({mode})", f.guest, f.host.display())
            })
            .collect();
        let env = g.env.keys().cloned().collect();
        let secrets = g
            .secrets
            .iter()
            .map(|s| {
                let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
                match &s.usage {
                    SecretUse::Header { name, .. } => {
                        format!("{} (header {name} to {})", s.secret, hosts.join(" "))
                    }
                    SecretUse::Placeholder { query, body } => {
                        let mut places = vec!["headers"];
                        places.extend(query.then_some("query"));
                        places.extend(body.then_some("body"));
                        format!(
                            "{} (placeholder in {} to {})",
                            s.secret,
                            places.join("+"),
                            hosts.join(" ")
                        )
                    }
                    SecretUse::Reveal => format!("{} (revealed to the plugin)", s.secret),
                }
            })
            .collect();
        out += &format!("    tools:  {}\n", list_or_none(tools));
        out += &format!("    http:   {}\n", list_or_none(http));
        out += &format!("    files:  {}\n", list_or_none(files));
        out += &format!("    env:    {}\n", list_or_none(env));
        out += &format!("    secrets: {}\n", list_or_none(secrets));
        out += "    sockets, DNS, host env/args/cwd/stdio: denied\n";
        out += &format!("    limits: {}\n", limits_text(l));
    }
    for u in &rt.upstreams {
        if !rt.plugins.iter().any(|p| p.id == u.config.id) {
            let status = u.status();
            out += &format!(
                "  {}  DOWN, its tools are not offered: {}\n",
                status.id,
                status.last_error.unwrap_or_default()
            );
        }
    }
    if c.audit.enabled {
        out += &format!(
            "audit log: {} (segments of {} KiB), checkpoints every {} records or {} s signed by {}{}\n",
            c.audit.dir.display(),
            c.audit.max_segment_bytes >> 10,
            c.audit.checkpoint_every,
            c.audit.checkpoint_secs,
            c.audit
                .signing_key
                .as_ref()
                .map_or("(no key dir: set key_dir)".to_string(), |k| k
                    .display()
                    .to_string()),
            match (&c.audit.witness.dir, &c.audit.witness.url) {
                (None, None) => ", no witness".to_string(),
                (dir, url) => format!(
                    ", witnessed by {}",
                    dir.iter()
                        .map(|d| d.display().to_string())
                        .chain(url.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            }
        );
    } else {
        out += "audit log: DISABLED ([audit] enabled = false): calls and host calls are NOT recorded\n";
    }
    out += &format!("run history: {}\n", c.runs_db.display());
    if let Some(target) = &c.store.shared {
        out += &format!(
            "shared store: {} (host {}, lease {} s): approval queue, limits' counts, schedules and triggers, kill switch\n",
            target.shown,
            c.store.host,
            c.store.lease.as_secs()
        );
    }
    if !c.schedules.is_empty() {
        out += &format!("\nschedules ({}):\n", c.schedules.len());
        for s in &c.schedules {
            out += &format!(
                "  {}  {}  -> {} as {}{}\n",
                s.name,
                s.timing,
                s.tool,
                s.principal,
                if s.enabled { "" } else { "  (disabled)" }
            );
        }
    }
    if !c.triggers.is_empty() {
        out += &format!("\ntriggers ({}):\n", c.triggers.len());
        for t in &c.triggers {
            out += &format!(
                "  {}  POST /hooks/{}  -> {} as {}  ({:?} signature, secret {})\n",
                t.name, t.name, t.tool, t.principal, t.signature, t.secret
            );
        }
    }
    out += &format!("\npolicies ({}):\n", rt.policies.len());
    for p in &rt.policies {
        out += &format!("  {}  {}  {}\n", p.id, p.digest, p.path.display());
        out += &format!(
            "    applies to: {}\n    limits: {}\n",
            p.tools.join(", "),
            limits_text(&p.limits)
        );
    }
    print(&out)?;
    Ok(ExitCode::from(exit::OK))
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn limits_text(l: &warden_core::config::Limits) -> String {
    let fuel = l.fuel.map_or("unlimited".to_string(), |f| f.to_string());
    format!(
        "memory {} MiB, timeout {} ms, output {} KiB, log {} KiB, fuel {fuel}",
        l.memory_mb, l.timeout_ms, l.max_output_kb, l.max_log_kb
    )
}
