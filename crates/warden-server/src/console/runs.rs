//! Runs: the list, filtered by tool, principal, status and time and paged by cursor (so
//! the thousandth page costs what the first does), and one run's page, which answers
//! "why did this fail": each policy decision, the approval and its votes, the error and
//! guest backtrace, the plugin's log and output, refused requests, host calls with their
//! durations, timings, fuel and peak memory, and a link to its audit records.
//!
//! Operators only. Run rows are stored redacted; inputs and outputs are shown as text.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Nav, Viewer, blocking, given, micros, pretty, refusal, render, when};
use crate::state::Server;
use warden_core::store::runs::{RunFilter, RunRow};

/// Runs on one page.
const PAGE: usize = 50;

#[derive(Deserialize, Default)]
pub(crate) struct RunsQuery {
    tool: Option<String>,
    principal: Option<String>,
    status: Option<String>,
    /// Only the last this many hours.
    hours: Option<String>,
    /// The cursor: `STARTED_MS:ID` of the last run of the page before.
    before: Option<String>,
}

/// Every status a run may end in (`Outcome::status`, and a held call's end).
const STATUSES: [&str; 16] = [
    "ok",
    "denied",
    "held",
    "limited",
    "unmet",
    "tool-error",
    "trapped",
    "timed-out",
    "memory-limit",
    "fuel-exhausted",
    "over-capacity",
    "bad-output",
    "host-error",
    "interrupted",
    "rejected",
    "expired",
];

pub(crate) async fn list(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Query(q): Query<RunsQuery>,
) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let hours = given(&q.hours).and_then(|h| h.parse::<i64>().ok());
    let before = super::cursor(&q.before);
    let filter = RunFilter {
        tool: given(&q.tool),
        status: given(&q.status),
        principal: given(&q.principal),
        since_ms: hours.map(|h| warden_core::now_ms() as i64 - h * 3_600_000),
        before,
        limit: PAGE + 1,
        ..RunFilter::default()
    };
    let rt = server.runtime();
    let runs = rt.runs.clone();
    let rows = match blocking(&viewer, move || runs.list(&filter)).await {
        Ok(rows) => rows,
        Err(page) => return *page,
    };
    let more = rows.len() > PAGE;
    let shown = &rows[..rows.len().min(PAGE)];
    let next = shown.last().filter(|_| more).map(|last| {
        let mut query = vec![format!("before={}:{}", last.started_ms, last.id)];
        for (k, v) in [
            ("tool", &q.tool),
            ("principal", &q.principal),
            ("status", &q.status),
            ("hours", &q.hours),
        ] {
            if let Some(v) = given(v) {
                query.push(format!("{k}={}", super::session::encode(&v)));
            }
        }
        format!("/console/runs?{}", query.join("&"))
    });
    let tools = rt.tool_names();
    let value = |v: &Option<String>| given(v).unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/runs" role="search" {
            label { "Tool " select name="tool" {
                option value="" { "any" }
                @for t in &tools {
                    option value=(t) selected[given(&q.tool).as_deref() == Some(*t)] { (t) }
                }
            } }
            label { "Principal " input type="text" name="principal" value=(value(&q.principal)) size="12"; }
            label { "Status " select name="status" {
                option value="" { "any" }
                @for s in STATUSES {
                    option value=(s) selected[given(&q.status).as_deref() == Some(s)] { (s) }
                }
            } }
            label { "Time " select name="hours" {
                option value="" { "all" }
                @for (h, name) in [("1", "last hour"), ("24", "last day"), ("168", "last week")] {
                    option value=(h) selected[given(&q.hours).as_deref() == Some(h)] { (name) }
                }
            } }
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p { "No runs match." }
        } @else {
            table.runs {
                thead { tr { th { "Started" } th { "Run" } th { "Tool" } th { "Principal" } th { "Status" } th.num { "Time" } } }
                tbody {
                    @for r in shown {
                        tr {
                            td { (when(r.started_ms)) }
                            td { a href={"/console/runs/" (r.id)} { code { (r.id) } } }
                            td { (r.tool) }
                            td { (r.principal) @if let Some(by) = &r.started_by { " (" (by) ")" } }
                            td { span class={"state " (r.status)} { (r.status) } }
                            td.num { (micros(r.total_us)) }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.before.is_some() { a href="/console/runs" { "← Newest" } }
            @if let Some(next) = next { a rel="next" href=(next) { "Older →" } }
        }
    };
    render(StatusCode::OK, Some(&viewer), "Runs", Nav::Runs, body)
}

pub(crate) async fn page(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let rt = server.runtime();
    let reader = rt.clone();
    let wanted = id.clone();
    let read = blocking(&viewer, move || {
        let row = reader.runs.get(&wanted).map_err(|e| e.to_string())?;
        let approval = match (
            row.as_ref().and_then(|r| r.approval.clone()),
            &reader.approvals,
        ) {
            (Some(a), Some(queue)) => queue.get(&a).map_err(|e| e.to_string())?,
            _ => None,
        };
        let search = warden_core::store::audit::Search {
            run: Some(wanted),
            ..Default::default()
        };
        let calls =
            warden_core::store::audit::last_matching(&reader.config.audit.dir, &search, 2000)
                .map(|records| {
                    records
                        .into_iter()
                        .filter(|r| r["kind"] == "host-call")
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
        Ok::<_, String>((row, approval, calls))
    })
    .await;
    let (row, approval, calls) = match read {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let Some(r) = row else {
        return refusal(
            StatusCode::NOT_FOUND,
            Some(&viewer),
            &format!("no run {id}"),
        );
    };
    let body = run_page(&r, approval.as_ref(), &calls);
    render(
        StatusCode::OK,
        Some(&viewer),
        &format!("Run {}", r.id),
        Nav::Runs,
        body,
    )
}

/// Each policy's decision (a run's or a request's `decisions`).
pub(crate) fn decisions(decisions: &Value) -> Markup {
    let list = decisions.as_array().map(Vec::as_slice).unwrap_or_default();
    html! {
        @if list.is_empty() {
            p { "No policy decided on this call." }
        } @else {
            ul.decisions {
                @for d in list {
                    li {
                        strong { (d["policy"].as_str().unwrap_or("?")) } ": "
                        span class={"verdict " (d["decision"].as_str().unwrap_or(""))} {
                            (d["decision"].as_str().unwrap_or("?"))
                        }
                        @if let Some(tier) = d["tier"].as_str() { " (" (tier) ")" }
                        @if let Some(reason) = d["reason"].as_str() { ": " (reason) }
                        @if let Some(failure) = d["failure"].as_str() { " — the policy failed: " (failure) }
                    }
                }
            }
        }
    }
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x.as_str() {
                    Some(s) => s.to_string(),
                    None => x.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_page(
    r: &RunRow,
    approval: Option<&warden_core::governance::approvals::Approval>,
    calls: &[Value],
) -> Markup {
    let longest = calls
        .iter()
        .filter_map(|c| c["duration_us"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1);
    let log = texts(&r.log);
    let denied = texts(&r.denied_requests);
    html! {
        dl.facts {
            dt { "Status" } dd { span class={"state " (r.status)} { (r.status) } }
            dt { "Tool" } dd { (r.tool) " (plugin " (r.plugin) ", " code { (r.plugin_digest) } ")" }
            dt { "Principal" } dd { (r.principal) @if let Some(by) = &r.started_by { " — started by " (by) } }
            dt { "Started" } dd { (when(r.started_ms)) }
            @if !r.host.is_empty() { dt { "Host" } dd { (r.host) } }
            dt { "Timings" } dd {
                "policies " (micros(r.policy_us)) ", sandbox " (micros(r.instantiate_us))
                ", execution " (micros(r.execute_us)) ", total " (micros(r.total_us))
            }
            dt { "Fuel" } dd { (r.fuel_used.map(|f| f.to_string()).unwrap_or_else(|| "not metered".into())) }
            dt { "Peak memory" } dd { (r.peak_memory / 1024) " KiB" }
            dt { "Egress" } dd { (r.egress_requests) " requests, " (r.egress_bytes) " bytes" }
            dt { "Audit" } dd { a href={"/console/audit?run=" (r.id)} { "this run's audit records" } }
        }
        h2 { "Policy decisions" }
        (decisions(&r.decisions))
        @if let Some(a) = approval {
            h2 { "Approval " code { (a.id) } }
            p { "State " strong { (a.state.as_str()) } @if let Some(res) = &a.result { ": " (res) } }
            ul.votes {
                @for v in &a.votes {
                    li { strong { (v.principal) } " " (v.vote) " via " (v.via) " " (when(v.at_ms))
                         @if let Some(reason) = &v.reason { ": " q { (reason) } } }
                }
            }
        }
        @if let Some(e) = &r.error {
            h2 { "Error" }
            pre.error { (e) }
        }
        @if let Some(bt) = &r.backtrace {
            h2 { "Guest backtrace" }
            pre { (bt) }
        }
        @if !denied.is_empty() {
            h2 { "Refused requests" }
            ul { @for d in &denied { li { code { (d) } } } }
        }
        h2 { "Host calls (" (calls.len()) " recorded, " (r.host_calls) " made)" }
        @if calls.is_empty() {
            p { "None recorded." }
        } @else {
            ol.timeline {
                @for c in calls {
                    @let us = c["duration_us"].as_u64().unwrap_or(0);
                    li {
                        svg width="120" height="10" role="img" aria-label={(us) " µs"} {
                            rect x="0" y="1" height="8" width=(1 + us * 119 / longest) fill="#4a6fa5" {}
                        }
                        " " code { (c["interface"].as_str().unwrap_or("")) "." (c["function"].as_str().unwrap_or("")) }
                        " " (c["outcome"].as_str().unwrap_or("")) " · " (micros(us as i64))
                        @if let Some(args) = c["args"].as_str() { " · " span.args { (args) } }
                    }
                }
            }
        }
        h2 { "Input" }
        pre.input { (pretty(&r.input)) }
        h2 { "Output" }
        @match &r.output {
            Some(o) => pre.output { (pretty(o)) },
            None => p { "No output." },
        }
        h2 { "Log" }
        @if log.is_empty() { p { "Nothing logged." } } @else {
            pre.log { @for line in &log { (line) "\n" } }
        }
    }
}
