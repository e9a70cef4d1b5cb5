//! The one-click approval pages that webhook notices link to.
//!
//! A link opens a confirmation page (GET) that never decides anything, because mail
//! and chat scanners prefetch links; only the form's POST, carrying the signed token
//! from the link, casts a vote, as the principal the token names. It must never decide
//! on a token that does not verify.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::state::Server;
use warden_core::governance::approvals::{Approval, Ballot, Choice, tier_name};

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

fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    // The token is in the URL: never leak it to another site or a cache. `same-origin`
    // (not `no-referrer`, which makes a browser send `Origin: null`) lets the page's own
    // form carry its real origin back.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    response
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    secure(
        (
            status,
            Html(format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
                 <style>body{{font-family:sans-serif;max-width:44em;margin:2em auto}}pre{{white-space:pre-wrap;background:#f4f4f4;padding:.5em}}</style>\
                 </head><body><h1>{t}</h1>{body}</body></html>",
                t = escape(title)
            )),
        )
            .into_response(),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
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
                &format!("<p>{}</p>", escape(why)),
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
            Ok(None) => Err(Box::new(html(StatusCode::NOT_FOUND, "No such request", ""))),
            Err(e) => Err(Box::new(html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                &format!("<p>{}</p>", escape(&e.to_string())),
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
    let input = app.runtime().redactor.scrub(&a.input);
    let mut body = format!(
        "<p><b>{tool}</b> requested by <b>{who}</b> needs <b>{tier}</b> approval ({n} of {req} so far).</p>\
         <p>Why: {why}</p><p>Input (sha {sha}):</p><pre>{input}</pre><p>State: <b>{state}</b>{result}</p>",
        tool = escape(&a.tool),
        who = escape(&a.principal),
        tier = tier_name(a.tier),
        n = a.approvals(),
        req = a.required,
        why = escape(&a.reasons.join("; ")),
        sha = escape(&a.input_sha256),
        input = escape(&input),
        state = a.state.as_str(),
        result = a
            .result
            .as_ref()
            .map(|r| format!(" ({})", escape(r)))
            .unwrap_or_default(),
    );
    if a.state == warden_core::call::ApprovalState::Pending {
        body += &format!(
            "<form method=\"post\"><input type=\"hidden\" name=\"t\" value=\"{t}\">\
             <input type=\"hidden\" name=\"sha\" value=\"{sha}\">\
             <p>Deciding as <b>{p}</b>. Reason: <input name=\"reason\" size=\"40\"></p>\
             <button name=\"decision\" value=\"approve\">Approve</button> \
             <button name=\"decision\" value=\"reject\">Reject</button></form>",
            t = escape(q.t.as_deref().unwrap_or_default()),
            // The hash of the input this page shows (not the one the request claims).
            sha = escape(&warden_core::governance::approvals::input_hash(&a.input)),
            p = escape(&principal),
        );
    }
    html(StatusCode::OK, &format!("Approval {}", a.id), &body)
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
                "<p>decision must be approve or reject</p>",
            );
        }
    };
    let reason = form.reason.trim();
    if choice == Choice::Reject && reason.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            "A reason is needed",
            "<p>Say why you reject it.</p>",
        );
    }
    let rt = app.runtime();
    let Some(queue) = rt.approvals.as_ref() else {
        return html(StatusCode::CONFLICT, "Disabled", "");
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
            &format!(
                "<p>{} by {}. The request is now <b>{}</b> ({} of {} approvals).</p>",
                if choice == Choice::Approve {
                    "Approved"
                } else {
                    "Rejected"
                },
                escape(&principal),
                a.state.as_str(),
                a.approvals(),
                a.required
            ),
        ),
        Err(e @ warden_core::governance::approvals::ApprovalError::AlreadyDecided { .. }) => html(
            StatusCode::CONFLICT,
            "Already decided",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
        Err(e @ warden_core::governance::approvals::ApprovalError::NotAllowed { .. }) => html(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
        Err(e @ warden_core::governance::approvals::ApprovalError::InputChanged { .. }) => html(
            StatusCode::CONFLICT,
            "The request changed",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
    }
}
