//! The fleet: every plugin and policy loaded (digest, source file, tools, grants,
//! limits), which policies cover which tools, the limits in force, every token's
//! principal and roles, and what the last reload changed.
//!
//! Operators only. It must never show a secret's value, an environment variable's value
//! or a token's hash: secrets and env grants are listed by name and use.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::{Nav, Viewer, render, when};
use crate::state::Server;
use warden_core::grants::secrets::SecretUse;
use warden_core::runtime::Runtime;

/// What a reload changed, kept for the fleet page.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReloadNote {
    pub at_ms: i64,
    /// `None` when it applied; why not otherwise (the old config kept serving).
    pub refused: Option<String>,
    /// Human lines: `plugin notes: digest sha256:… → sha256:…`, `tool x added`...
    pub changes: Vec<String>,
}

/// The differences between two loaded configs, as lines for people.
pub(crate) fn changes(old: &Runtime, new: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let digests = |rt: &Runtime| -> Vec<(String, String, &'static str)> {
        rt.plugins
            .iter()
            .map(|p| (p.id.clone(), p.digest.clone(), "plugin"))
            .chain(
                rt.policies
                    .iter()
                    .map(|p| (p.id.clone(), p.digest.clone(), "policy")),
            )
            .collect()
    };
    let (before, after) = (digests(old), digests(new));
    for (id, digest, what) in &after {
        match before.iter().find(|(i, _, w)| i == id && w == what) {
            None => out.push(format!("{what} {id} added ({digest})")),
            Some((_, old, _)) if old != digest => {
                out.push(format!("{what} {id} changed: {old} → {digest}"))
            }
            Some(_) => {}
        }
    }
    for (id, _, what) in &before {
        if !after.iter().any(|(i, _, w)| i == id && w == what) {
            out.push(format!("{what} {id} removed"));
        }
    }
    let tools =
        |rt: &Runtime| -> Vec<String> { rt.tool_names().iter().map(|t| t.to_string()).collect() };
    let tokens = |rt: &Runtime| -> Vec<String> {
        rt.config
            .tokens
            .iter()
            .map(|t| format!("{} ({})", t.name, t.principal))
            .collect()
    };
    for (what, before, after) in [
        ("tool", tools(old), tools(new)),
        ("token", tokens(old), tokens(new)),
    ] {
        for name in after.iter().filter(|n| !before.contains(n)) {
            out.push(format!("{what} {name} added"));
        }
        for name in before.iter().filter(|n| !after.contains(n)) {
            out.push(format!("{what} {name} removed"));
        }
    }
    out
}

fn secret_use(usage: &SecretUse) -> String {
    match usage {
        SecretUse::Header { name, .. } => format!("injected as header {name}"),
        SecretUse::Placeholder { query, body } => format!(
            "placeholder substituted in headers{}{}",
            if *query { ", path and query" } else { "" },
            if *body { ", body" } else { "" }
        ),
        SecretUse::Reveal => "revealed to the plugin".into(),
    }
}

fn limits(l: &warden_core::config::Limits) -> Markup {
    html! {
        (l.memory_mb) " MiB, " (l.timeout_ms) " ms, output " (l.max_output_kb) " KiB, log " (l.max_log_kb) " KiB"
        @if let Some(f) = l.fuel { ", fuel " (f) }
    }
}

pub(crate) async fn page(State(server): State<Arc<Server>>, viewer: Viewer) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let rt = server.runtime();
    let reload = server
        .last_reload
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let config = &rt.config;
    let usage = rt.budgets.snapshot(warden_core::now_ms() as i64);
    let body = html! {
        p { "Config " code { (server.config_path.display()) } }
        h2 { "Plugins (" (rt.plugins.len()) ")" }
        @for p in &rt.plugins {
            @let grants = config.plugins.iter().find(|c| c.id == p.id);
            article.component {
                h3 { (p.id) }
                dl.facts {
                    dt { "Digest" } dd { code { (p.digest) } }
                    dt { "Component" } dd { code { (p.path.display()) } }
                    dt { "Tools" } dd {
                        ul { @for t in &p.tools {
                            li {
                                strong { (t.name) } " — " (t.description)
                                @if t.annotations.read_only { " · read-only" }
                                @if t.annotations.destructive { " · destructive" }
                                @if t.annotations.idempotent { " · idempotent" }
                                @if t.annotations.open_world { " · open-world" }
                                @if t.cost > 0.0 { " · cost " (t.cost) }
                                " · policies: "
                                @let covering: Vec<&str> = rt.policies_for(&t.name).map(|p| p.id.as_str()).collect();
                                @if covering.is_empty() { em { "none (every call runs)" } } @else { (covering.join(", ")) }
                            }
                        } }
                    }
                    @if let Some(c) = grants {
                        dt { "Files" } dd {
                            @if c.grants.files.is_empty() { "none" }
                            @for f in &c.grants.files {
                                code { (f.guest) } " ← " code { (f.host.display()) } (if f.writable { " (read-write)" } else { " (read-only)" }) br;
                            }
                        }
                        dt { "Hosts" } dd {
                            @if c.grants.http.is_empty() { "none" }
                            @for h in &c.grants.http { code { (h.to_string()) } " " }
                        }
                        dt { "Environment" } dd {
                            @if c.grants.env.is_empty() { "none" }
                            @for name in c.grants.env.keys() { code { (name) } " " }
                        }
                        dt { "Secrets" } dd {
                            @if c.grants.secrets.is_empty() { "none" }
                            @for s in &c.grants.secrets {
                                code { (s.secret) } ": " (secret_use(&s.usage))
                                @if !s.hosts.is_empty() {
                                    " for " (s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", "))
                                }
                                br;
                            }
                        }
                        dt { "Limits" } dd { (limits(&c.limits)) }
                    }
                }
            }
        }
        h2 { "Policies (" (rt.policies.len()) ")" }
        table {
            thead { tr { th { "Policy" } th { "Digest" } th { "Component" } th { "Tools" } th { "Limits" } } }
            tbody { @for p in &rt.policies {
                tr {
                    td { (p.id) }
                    td { code { (p.digest) } }
                    td { code { (p.path.display()) } }
                    td { (p.tools.join(", ")) }
                    td { (limits(&p.limits)) }
                }
            } }
        }
        h2 { "Limits (" (config.limits.len()) ")" }
        @if usage.is_empty() { p { "No limits are configured." } } @else {
            table {
                thead { tr { th { "Limit" } th { "Whose" } th { "Kind" } th { "Measure" } th.num { "Used" } th.num { "Max" } th { "Past it" } } }
                tbody { @for u in &usage {
                    tr {
                        td { (u.limit) }
                        td { @if u.key.is_empty() { "shared" } @else { (u.key) } }
                        td { (u.kind) @if let Some(per) = &u.per { " per " (per) } }
                        td { (u.measure) }
                        td.num { (u.used) }
                        td.num { (u.max) }
                        td { (format!("{:?}", u.on_exceed).to_lowercase()) }
                    }
                } }
            }
        }
        h2 { "Tokens (" (config.tokens.len()) ")" }
        table {
            thead { tr { th { "Token" } th { "Principal" } th { "Roles" } } }
            tbody { @for t in &config.tokens {
                tr {
                    td { (t.name) }
                    td { (t.principal) }
                    td { (t.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
                }
            } }
        }
        h2 { "Last reload" }
        @match &reload {
            None => p { "No reload since this server started." },
            Some(r) => {
                p {
                    (when(r.at_ms)) ": "
                    @match &r.refused {
                        Some(why) => span.broken { "refused (the old config kept serving): " (why) },
                        None => { "applied" }
                    }
                }
                @if r.refused.is_none() {
                    @if r.changes.is_empty() { p { "Nothing changed." } }
                    ul { @for c in &r.changes { li { (c) } } }
                }
            }
        }
    };
    render(StatusCode::OK, Some(&viewer), "Fleet", Nav::Fleet, body)
}
