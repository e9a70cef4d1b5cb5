//! The one-click approval pages that webhook notices link to.
//!
//! A link opens a confirmation page (GET) that never decides anything, because mail
//! and chat scanners prefetch links; only the form's POST, carrying the signed token
//! from the link, casts a vote, as the principal the token names. It must never decide
//! on a token that does not verify.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;

use crate::state::Server;
use warden_core::governance::approvals::{Approval, ApprovalError, Ballot, Choice, tier_name};

/// The link pages: a confirmation page (GET) and the form that decides (POST).
pub fn routes() -> Router<Arc<Server>> {
    Router::new().route("/approvals/{id}", get(page).post(decide))
}

#[derive(Deserialize)]
pub struct LinkQuery {
    t: Option<String>,
}

#[derive(Deserialize)]
pub struct DecisionForm {
    t: String,
    decision: String,
    #[serde(default)]
    reason: String,
    /// The input hash the page showed.
    #[serde(default)]
    sha: String,
}

/// A link page in the console's look (and with its headers: the token is in the URL,
/// so the referrer policy keeps it from other sites, and nothing caches the page).
fn html(status: StatusCode, title: &str, body: Markup) -> Response {
    crate::console::render(status, None, title, crate::console::Nav::None, body)
}

impl Server {
    /// The request and the principal the token names, or the page saying why not.
    fn check_link(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> Result<(Approval, String), Box<Response>> {
        let forbidden = |why: &str| {
            Box::new(html(
                StatusCode::FORBIDDEN,
                "Link not valid",
                maud::html! { p { (why) } },
            ))
        };
        let token = token.ok_or_else(|| forbidden("this link has no token"))?;
        let grant = self
            .signer
            .verify(id, token, warden_core::now_ms() as i64)
            .map_err(|e| forbidden(&e))?;
        let rt = self.runtime();
        let queue = rt
            .approvals
            .as_ref()
            .ok_or_else(|| forbidden("the approval queue is disabled"))?;
        match queue.get(id) {
            Ok(Some(a)) => Ok((a, grant.principal)),
            Ok(None) => Err(Box::new(html(
                StatusCode::NOT_FOUND,
                "No such request",
                maud::html! {},
            ))),
            Err(e) => Err(Box::new(html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                maud::html! { p { (e.to_string()) } },
            ))),
        }
    }
}

/// GET: show the request and a form. Never decides.
pub async fn page(
    State(app): State<Arc<Server>>,
    Path(id): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let (a, principal) = match app.check_link(&id, q.t.as_deref()) {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let input = crate::console::pretty(&app.runtime().redactor.scrub(&a.input));
    let body = maud::html! {
        p { b { (a.tool) } " requested by " b { (a.principal) } " needs " b { (tier_name(a.tier)) }
            " approval (" (a.approvals()) " of " (a.required) " so far)." }
        p { "Why: " (a.reasons.join("; ")) }
        p { "Input (" code { (a.input_sha256) } "):" }
        pre.input { (input) }
        p { "State: " b { (a.state.as_str()) } @if let Some(r) = &a.result { " (" (r) ")" } }
        @if a.state == warden_core::call::ApprovalState::Pending {
            form.decide method="post" {
                input type="hidden" name="t" value=(q.t.as_deref().unwrap_or_default());
                // The hash of the input this page shows (not the one the request claims).
                input type="hidden" name="sha" value=(warden_core::governance::approvals::input_hash(&a.input));
                p { "Deciding as " b { (principal) } "." }
                label for="reason" { "Reason (needed to reject)" }
                input #reason name="reason" type="text" maxlength="500";
                div.buttons {
                    button.approve type="submit" name="decision" value="approve" { "Approve" }
                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                }
            }
        }
    };
    html(StatusCode::OK, &format!("Approval {}", a.id), body)
}

/// POST: cast the vote the token allows.
pub async fn decide(
    State(app): State<Arc<Server>>,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    let (_, principal) = match app.check_link(&id, Some(&form.t)) {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let choice = match form.decision.as_str() {
        "approve" => Choice::Approve,
        "reject" => Choice::Reject,
        _ => {
            return html(
                StatusCode::BAD_REQUEST,
                "Bad request",
                maud::html! { p { "decision must be approve or reject" } },
            );
        }
    };
    let reason = form.reason.trim();
    if choice == Choice::Reject && reason.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            "A reason is needed",
            maud::html! { p { "Say why you reject it." } },
        );
    }
    let rt = app.runtime();
    let Some(queue) = rt.approvals.as_ref() else {
        return html(StatusCode::CONFLICT, "Disabled", maud::html! {});
    };
    let ballot = Ballot {
        principal: &principal,
        choice,
        reason: (!reason.is_empty()).then_some(reason),
        via: "link",
        input_sha256: &form.sha,
        on_behalf_of: None,
        now_ms: warden_core::now_ms() as i64,
    };
    match queue.decide(&rt.config.approvals, &id, &ballot).await {
        Ok(a) => html(
            StatusCode::OK,
            "Recorded",
            maud::html! {
                p { (if choice == Choice::Approve { "Approved" } else { "Rejected" }) " by " (principal)
                    ". The request is now " b { (a.state.as_str()) } " (" (a.approvals()) " of "
                    (a.required) " approvals)." }
            },
        ),
        Err(e) => {
            let title = match &e {
                ApprovalError::AlreadyDecided { .. } => "Already decided",
                ApprovalError::NotAllowed { .. } => "Not allowed",
                ApprovalError::InputChanged { .. } => "The request changed",
                _ => "Error",
            };
            html(
                crate::api::decision_status(&e),
                title,
                maud::html! { p { (e.to_string()) } },
            )
        }
    }
}
