//! The approvals inbox, the approvers' landing page: pending requests newest first, each
//! with its exact input (secrets scrubbed), why it was held, its tier, time left, who may
//! decide and the votes so far, and a form to approve or reject it in one click.
//!
//! A vote carries the input hash the page showed, so a vote on an input that changed is
//! refused; it is cast as the signed-in principal, never as one named in the form.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, Viewer, blocking, pretty, refusal, render, when};
use crate::state::Server;
use warden_core::call::ApprovalState;
use warden_core::governance::approvals::{
    Approval, Ballot, Choice, expand, input_hash, may_decide, tier_name,
};
use warden_core::runtime::Runtime;

/// Pending requests on one page (older ones are a cursor away).
const PAGE: usize = 50;
/// Decided requests shown under the pending ones (among the newest requests).
const RECENT: usize = 20;

#[derive(Deserialize)]
pub(crate) struct InboxQuery {
    /// `list`: only the list of pending requests (for the live update).
    part: Option<String>,
    /// The request just decided here, and its state, for the notice on top.
    done: Option<String>,
    /// The cursor: `CREATED_MS:ID` of the last request of the page before.
    before: Option<String>,
}

pub(crate) async fn page(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Query(q): Query<InboxQuery>,
) -> Response {
    let viewer = &viewer;
    let rt = server.runtime();
    let Some(queue) = rt.approvals.clone() else {
        return refusal(
            StatusCode::CONFLICT,
            Some(viewer),
            "the approval queue is disabled ([approvals] enabled = false)",
        );
    };
    let before = super::cursor(&q.before);
    let first_page = before.is_none();
    let read = blocking(viewer, move || {
        let cursor = before.as_ref().map(|(ms, id)| (*ms, id.as_str()));
        let pending = queue.list(Some(ApprovalState::Pending), cursor, PAGE + 1)?;
        let (waiting, _) = queue.pending_mark()?;
        let recent = if first_page {
            queue.list(None, None, PAGE + RECENT)?
        } else {
            Vec::new()
        };
        Ok::<_, warden_core::governance::approvals::ApprovalError>((pending, waiting, recent))
    })
    .await;
    let (mut pending, waiting, recent) = match read {
        Ok(lists) => lists,
        Err(page) => return *page,
    };
    let more = pending.len() > PAGE;
    pending.truncate(PAGE);
    let next = pending
        .last()
        .filter(|_| more)
        .map(|a| format!("/console/approvals?before={}:{}", a.created_ms, a.id));
    let now = warden_core::now_ms() as i64;
    let list = pending_list(&rt, viewer, &pending, waiting, next.as_deref(), now);
    if q.part.as_deref() == Some("list") {
        return super::secured(axum::response::Html(list.into_string()).into_response());
    }
    let decided: Vec<&Approval> = recent
        .iter()
        .filter(|a| a.state != ApprovalState::Pending)
        .take(RECENT)
        .collect();
    let body = html! {
        @if !first_page {
            p { a href="/console/approvals" { "← Newest requests" } }
        }
        @if let Some(done) = &q.done {
            p.notice role="status" { "Recorded: " (done) }
        }
        p #live.hint aria-live="polite" { }
        (list)
        @if first_page {
        h2 { "Recently decided" }
        @if decided.is_empty() {
            p { "None yet." }
        } @else {
            table {
                thead { tr { th { "Request" } th { "Tool" } th { "Requested by" } th { "State" } th { "Decided" } th { "Votes" } } }
                tbody {
                    @for a in decided {
                        tr {
                            td { code { (a.id) } }
                            td { (a.tool) }
                            td { (a.principal) }
                            td { span class={"state " (a.state.as_str())} { (a.state.as_str()) } }
                            td { (when(a.state_ms)) }
                            td { (votes(a)) }
                        }
                    }
                }
            }
        }
        }
    };
    render(StatusCode::OK, Some(viewer), "Approvals", Nav::Inbox, body)
}

fn votes(a: &Approval) -> Markup {
    html! {
        @if a.votes.is_empty() {
            "none"
        } @else {
            ul.votes {
                @for v in &a.votes {
                    li {
                        strong { (v.principal) } " " (v.vote) " via " (v.via) " " (when(v.at_ms))
                        @if let Some(r) = &v.reason { ": " q { (r) } }
                    }
                }
            }
        }
    }
}

fn left(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s left"),
        60..3600 => format!("{} min left", s / 60),
        _ => format!("{} h {} min left", s / 3600, (s % 3600) / 60),
    }
}

/// The pending requests, each a section with its form.
fn pending_list(
    rt: &Runtime,
    viewer: &Viewer,
    pending: &[Approval],
    waiting: u64,
    next: Option<&str>,
    now: i64,
) -> Markup {
    let config = &rt.config.approvals;
    html! {
        section #pending aria-labelledby="pending-title" data-count=(waiting) {
            h2 #pending-title { "Waiting for a decision (" (waiting) ")" }
            @if pending.is_empty() {
                p { "Nothing is waiting. New requests appear here as they come." }
            }
            @for a in pending {
                @let deciders: Vec<String> = expand(config, &a.approvers)
                    .into_iter()
                    .filter(|p| *p != a.principal)
                    .collect();
                @let allowed = may_decide(config, a, &viewer.principal.name);
                article.request id={"req-" (a.id)} {
                    h3 {
                        span class={"tier " (tier_name(a.tier))} { (tier_name(a.tier)) }
                        " " (a.tool) " requested by " (a.principal)
                    }
                    p.meta {
                        code { (a.id) } " · asked " (when(a.created_ms)) " · "
                        span title="expires" { (left(a.expires_ms - now)) }
                        @if let Some(by) = &a.started_by { " · started by " (by) }
                        " · run " a href={"/console/runs/" (a.run_id)} { (a.run_id) }
                    }
                    h4 { "Why it was held" }
                    (super::runs::decisions(&a.decisions))
                    @for (policy, have, need) in a.progress(config) {
                        p.progress { (policy) ": " (have) " of " (need) " approval" @if need != 1 { "s" } }
                    }
                    p { "May decide: " (deciders.join(", ")) }
                    div { "Votes so far: " (votes(a)) }
                    h4 { "Input " small { code.sha { (a.input_sha256) } } }
                    pre.input { (pretty(&rt.redactor.scrub(&a.input))) }
                    @match allowed {
                        Ok(()) => {
                            form.decide method="post" action={"/console/approvals/" (a.id)} {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                // The hash of the input shown here, not the one the request claims.
                                input type="hidden" name="sha" value=(input_hash(&a.input));
                                label for={"reason-" (a.id)} { "Reason (needed to reject)" }
                                input id={"reason-" (a.id)} name="reason" type="text" maxlength="500";
                                div.buttons {
                                    button.approve type="submit" name="decision" value="approve" { "Approve" }
                                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                                }
                            }
                        }
                        Err(e) => { p.hint { "You cannot decide this one: " (e.to_string()) } }
                    }
                }
            }
            @if let Some(next) = next {
                nav.pager aria-label="Pages" { a rel="next" href=(next) { "Older requests →" } }
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    sha: String,
    decision: String,
    #[serde(default)]
    reason: String,
}

/// Cast the viewer's vote, then back to the inbox.
pub(crate) async fn decide(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    if let Some(refused) = viewer.unless_csrf(&form.csrf) {
        return refused;
    }
    let choice = match form.decision.as_str() {
        "approve" => Choice::Approve,
        "reject" => Choice::Reject,
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                Some(&viewer),
                "decision must be approve or reject",
            );
        }
    };
    let reason = form.reason.trim();
    if choice == Choice::Reject && reason.is_empty() {
        return refusal(
            StatusCode::BAD_REQUEST,
            Some(&viewer),
            "Say why you reject it: a rejection needs a reason. Go back and fill in the reason.",
        );
    }
    let rt = server.runtime();
    let Some(queue) = &rt.approvals else {
        return refusal(
            StatusCode::CONFLICT,
            Some(&viewer),
            "the approval queue is disabled",
        );
    };
    let ballot = Ballot {
        principal: &viewer.principal.name,
        choice,
        reason: (!reason.is_empty()).then_some(reason),
        via: "console",
        input_sha256: &form.sha,
        on_behalf_of: None,
        now_ms: warden_core::now_ms() as i64,
    };
    match queue.decide(&rt.config.approvals, &id, &ballot).await {
        Ok(a) => Redirect::to(&format!(
            "/console/approvals?done={}",
            super::session::encode(&format!("{} is {}", a.id, a.state.as_str()))
        ))
        .into_response(),
        Err(e) => refusal(
            crate::api::decision_status(&e),
            Some(&viewer),
            &e.to_string(),
        ),
    }
}
