//! The audit view: search the log by run, plugin, kind and time; the chain's state (the
//! last verification's result, records, the last signed checkpoint), verified on demand;
//! a search exported as JSON lines.
//!
//! Operators only. Records are stored redacted and shown as text. Verifying reads the
//! whole log, so it runs only when asked (a POST with the session's CSRF token) and off
//! the async runtime; its result is kept for the next visitor.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{Nav, Viewer, blocking, given, render, when};
use crate::state::Server;
use warden_core::store::audit::{self, Search, Signer, Verified, VerifyOptions};

/// Records shown on the page (the newest that match).
const SHOWN: usize = 200;
/// Records an export holds at most.
const EXPORTED: usize = 100_000;

/// The last verification: when, and what it found.
pub(crate) type LastVerify = Option<(i64, Result<Verified, String>)>;

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    run: Option<String>,
    plugin: Option<String>,
    kind: Option<String>,
    hours: Option<String>,
}

impl AuditQuery {
    fn search(&self) -> Search {
        Search {
            run: given(&self.run),
            plugin: given(&self.plugin),
            kind: given(&self.kind),
            since_ms: given(&self.hours)
                .and_then(|h| h.parse::<u64>().ok())
                .map(|h| warden_core::now_ms().saturating_sub(h * 3_600_000)),
        }
    }

    fn query_string(&self) -> String {
        [
            ("run", &self.run),
            ("plugin", &self.plugin),
            ("kind", &self.kind),
            ("hours", &self.hours),
        ]
        .iter()
        .filter_map(|(k, v)| given(v).map(|v| format!("{k}={}", super::session::encode(&v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

pub(crate) async fn page(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let rt = server.runtime();
    let dir = rt.config.audit.dir.clone();
    let search = q.search();
    let found = blocking(&viewer, move || audit::last_matching(&dir, &search, SHOWN)).await;
    let mut records = match found {
        Ok(records) => records,
        Err(page) => return *page,
    };
    records.reverse();
    let last = server
        .last_verify
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let value = |v: &Option<String>| given(v).unwrap_or_default();
    let body = html! {
        section.chain aria-labelledby="chain-title" {
            h2 #chain-title { "Chain" }
            @match &last {
                None => p { "Not verified since this server started." },
                Some((at, Err(e))) => p.error { "Verification at " (when(*at)) " could not run: " (e) },
                Some((at, Ok(v))) => {
                    p {
                        @match &v.problem {
                            None => span.intact { "Intact" },
                            Some(p) => span.broken { "BROKEN at record " (p.seq) " (" (p.location) "): " (p.what) },
                        }
                        " — verified " (when(*at)) ": " (v.records) " records in " (v.segments) " segments, "
                        (v.checkpoints) " signed checkpoints"
                        @if let Some(c) = v.last_checkpoint { " (last covers record " (c) ")" }
                        ", " (v.unsigned) " records after it"
                        @if v.trusted { ", checked against the configured key" }
                        @if let Some(w) = v.witnessed { ", witnessed up to " (w) }
                        "."
                    }
                }
            }
            form method="post" action="/console/audit/verify" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                button type="submit" { "Verify now" }
            }
        }
        form.filters method="get" action="/console/audit" role="search" {
            label { "Run " input type="text" name="run" value=(value(&q.run)) size="20"; }
            label { "Plugin or policy " input type="text" name="plugin" value=(value(&q.plugin)) size="12"; }
            label { "Kind " input type="text" name="kind" value=(value(&q.kind)) size="14" list="kinds"; }
            datalist #kinds {
                @for k in ["run-start", "policy-decision", "host-call", "grant-denied", "secret-reveal", "run-end",
                           "approval-requested", "approval-vote", "approval-ended", "auth-denied", "console-session",
                           "config-load", "checkpoint"] {
                    option value=(k) {}
                }
            }
            label { "Time " select name="hours" {
                option value="" { "all" }
                @for (h, name) in [("1", "last hour"), ("24", "last day"), ("168", "last week")] {
                    option value=(h) selected[given(&q.hours).as_deref() == Some(h)] { (name) }
                }
            } }
            button type="submit" { "Search" }
            a href={"/console/audit/export?" (q.query_string())} download { "Export as JSON lines" }
        }
        p { (records.len()) " records, newest first" @if records.len() == SHOWN { " (the newest " (SHOWN) "; narrow the search or export it)" } "." }
        table.audit {
            thead { tr { th { "Seq" } th { "Time" } th { "Kind" } th { "Run" } th { "Record" } } }
            tbody {
                @for r in &records {
                    tr {
                        td.num { (r["seq"].as_u64().map(|s| s.to_string()).unwrap_or_default()) }
                        td { @if let Some(ts) = r["ts_ms"].as_i64() { (when(ts)) } }
                        td { (r["kind"].as_str().unwrap_or("")) }
                        td { @if let Some(run) = r["run"].as_str() { a href={"/console/runs/" (run)} { code { (run) } } } }
                        td { code.record { (r.to_string()) } }
                    }
                }
            }
        }
    };
    render(StatusCode::OK, Some(&viewer), "Audit log", Nav::Audit, body)
}

/// The search as JSON lines, oldest first, one record per line as stored.
pub(crate) async fn export(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let dir = server.runtime().config.audit.dir.clone();
    let search = q.search();
    let found = blocking(&viewer, move || {
        audit::last_matching(&dir, &search, EXPORTED)
    })
    .await;
    let records = match found {
        Ok(records) => records,
        Err(page) => return *page,
    };
    let mut body = String::new();
    for r in &records {
        body += &r.to_string();
        body.push('\n');
    }
    let mut response = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"warden-audit.jsonl\""),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    csrf: String,
}

/// Verify the whole chain now (against the configured signing key and witness).
pub(crate) async fn verify(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Form(form): Form<VerifyForm>,
) -> Response {
    if let Some(refused) = viewer
        .unless_operator()
        .or_else(|| viewer.unless_csrf(&form.csrf))
    {
        return refused;
    }
    let config = server.runtime().config.audit.clone();
    // A verification that could not run is kept as its result, not shown as a 500.
    let found = tokio::task::spawn_blocking(move || {
        let mut options = VerifyOptions {
            witness: config.witness.dir.clone(),
            ..VerifyOptions::default()
        };
        if let Some(path) = &config.signing_key
            && let Some(public) = Signer::public_of(path)?
        {
            options.trusted_keys.push(public);
        }
        audit::verify(&config.dir, &options).map_err(|e| e.to_string())
    })
    .await;
    let result = found.map_err(|e| e.to_string()).and_then(|r| r);
    if let Ok(mut last) = server.last_verify.lock() {
        *last = Some((warden_core::now_ms() as i64, result));
    }
    Redirect::to("/console/audit").into_response()
}
