//! The operator HTTP API beside MCP (JSON): runs, approvals, audit search, reload,
//! health and Prometheus metrics.
//!
//! Owns the routes and their role checks (`approver` for approvals, `operator` for
//! the rest; the auth layer in `serve` has already verified the token). Decisions
//! are cast as the token's principal, never as one named in the request. It must
//! never return a secret value: run rows and audit records are stored redacted.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::Server;
use warden_core::call::ApprovalState;
use warden_core::governance::approvals::{ApprovalError, Ballot, Choice};
use warden_core::runtime::Runtime;
use warden_core::store::runs::RunFilter;
use warden_core::tokens::{Principal, Role};

/// The operator API and metrics, for the authenticated side of the router.
pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/approvals", get(approvals))
        .route("/api/approvals/{id}", get(approval))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/reject", post(reject))
        .route("/api/audit", get(audit))
        .route("/api/reload", post(reload))
        .route("/metrics", get(metrics))
}

/// Liveness and readiness, reachable without a token.
pub fn probes() -> Router<Arc<Server>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// `value` as JSON, with every granted secret value scrubbed: approval requests keep
/// their input exactly (to run it exactly), what leaves through the API must not.
pub(crate) fn shown<T: Serialize>(rt: &Runtime, value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(mut v) => {
            rt.redactor.scrub_value(&mut v);
            Json(v).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The answer to a lookup: the value, 404 naming `what`, or 500.
fn found<T: Serialize, E: std::fmt::Display>(
    rt: &Runtime,
    what: &str,
    result: Result<Option<T>, E>,
) -> Response {
    match result {
        Ok(Some(v)) => shown(rt, &v),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no {what}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Run `read` (SQLite, files: blocking) off the async runtime, and answer with what it
/// found.
async fn looked_up<T, E, F>(server: &Server, what: String, read: F) -> Response
where
    T: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: FnOnce(&Runtime) -> Result<Option<T>, E> + Send + 'static,
{
    let rt = server.runtime();
    let reader = rt.clone();
    match tokio::task::spawn_blocking(move || read(&reader)).await {
        Ok(result) => found(&rt, &what, result),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A request whose principal holds the operator role (403 otherwise). Extracted before
/// the query, path and body, so a refusal never depends on them.
pub struct Operator(pub Principal);

/// The request's principal, admitted only with the approver role (operators have it).
pub struct Approver(Principal);

/// The principal the auth layer put on the request, if it holds `role`; else the
/// refusal's status and message.
fn admitted(parts: &Parts, role: Role) -> Result<Principal, (StatusCode, String)> {
    let Some(p) = parts.extensions.get::<Principal>() else {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no principal on the request (the auth layer did not run)".into(),
        ));
    };
    if !p.has(role) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("token {} lacks the {} role", p.token, role.as_str()),
        ));
    }
    Ok(p.clone())
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        admitted(parts, Role::Operator)
            .map(Operator)
            .map_err(|(status, why)| error(status, why))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Approver {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        admitted(parts, Role::Approver)
            .map(Approver)
            .map_err(|(status, why)| error(status, why))
    }
}

#[derive(Deserialize)]
pub struct RunsQuery {
    tool: Option<String>,
    status: Option<String>,
    since: Option<i64>,
    started_by: Option<String>,
    principal: Option<String>,
    limit: Option<usize>,
}

pub async fn runs(
    State(server): State<Arc<Server>>,
    _: Operator,
    Query(q): Query<RunsQuery>,
) -> Response {
    let filter = RunFilter {
        tool: q.tool,
        status: q.status,
        since_ms: q.since,
        started_by: q.started_by,
        principal: q.principal,
        limit: q.limit.unwrap_or(50).min(1000),
        ..RunFilter::default()
    };
    looked_up(&server, "runs".into(), move |rt| {
        rt.runs.list(&filter).map(Some)
    })
    .await
}

pub async fn run(
    State(server): State<Arc<Server>>,
    _: Operator,
    Path(id): Path<String>,
) -> Response {
    looked_up(&server, format!("run {id}"), move |rt| rt.runs.get(&id)).await
}

#[derive(Deserialize)]
pub struct ApprovalsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub async fn approvals(
    State(server): State<Arc<Server>>,
    _: Approver,
    Query(q): Query<ApprovalsQuery>,
) -> Response {
    let state = match q.state.as_deref().map(ApprovalState::parse) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => return error(StatusCode::BAD_REQUEST, "unknown state"),
    };
    if server.runtime().approvals.is_none() {
        return error(StatusCode::CONFLICT, "the approval queue is disabled");
    }
    let limit = q.limit.unwrap_or(50).min(1000);
    looked_up(&server, "approvals".into(), move |rt| match &rt.approvals {
        Some(queue) => queue.list(state, None, limit).map(Some),
        None => Ok(None),
    })
    .await
}

pub async fn approval(
    State(server): State<Arc<Server>>,
    _: Approver,
    Path(id): Path<String>,
) -> Response {
    if server.runtime().approvals.is_none() {
        return error(StatusCode::CONFLICT, "the approval queue is disabled");
    }
    looked_up(
        &server,
        format!("approval request {id}"),
        move |rt| match &rt.approvals {
            Some(queue) => queue.get(&id),
            None => Ok(None),
        },
    )
    .await
}

#[derive(Deserialize, Default)]
pub struct DecisionBody {
    reason: Option<String>,
    /// The input hash the decider was shown (`GET /api/approvals/ID`): a decision on
    /// another input is refused.
    input_sha256: Option<String>,
    /// Break-glass (operators only): decide for this approver; recorded as such.
    on_behalf_of: Option<String>,
}

async fn decide(
    server: &Server,
    p: &Principal,
    id: &str,
    choice: Choice,
    body: DecisionBody,
) -> Response {
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    if choice == Choice::Reject && reason.is_none() {
        return error(StatusCode::BAD_REQUEST, "a rejection needs a reason");
    }
    let Some(seen) = body.input_sha256.filter(|s| !s.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "input_sha256 is required: the hash of the input you were shown (GET /api/approvals/ID)",
        );
    };
    if body.on_behalf_of.is_some() {
        if !p.has(Role::Operator) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "token {} may not decide on someone's behalf (operator role)",
                    p.token
                ),
            );
        }
        if reason.is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "a break-glass decision needs a reason",
            );
        }
    }
    let rt = server.runtime();
    let Some(queue) = &rt.approvals else {
        return error(StatusCode::CONFLICT, "the approval queue is disabled");
    };
    let ballot = Ballot {
        principal: &p.name,
        choice,
        reason: reason.as_deref(),
        via: "api",
        input_sha256: &seen,
        on_behalf_of: body.on_behalf_of.as_deref(),
        now_ms: warden_core::now_ms() as i64,
    };
    match queue.decide(&rt.config.approvals, id, &ballot).await {
        // The driver runs an approved call (and audits the vote) at once: it is woken
        // by the change.
        Ok(a) => shown(&rt, &a),
        Err(e) => error(decision_status(&e), e),
    }
}

/// The HTTP status of a decision refused by the queue.
pub(crate) fn decision_status(e: &ApprovalError) -> StatusCode {
    match e {
        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
        ApprovalError::AlreadyDecided { .. } | ApprovalError::InputChanged { .. } => {
            StatusCode::CONFLICT
        }
        ApprovalError::NotAllowed { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub async fn approve(
    State(server): State<Arc<Server>>,
    Approver(p): Approver,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    decide(&server, &p, &id, Choice::Approve, body).await
}

pub async fn reject(
    State(server): State<Arc<Server>>,
    Approver(p): Approver,
    Path(id): Path<String>,
    body: Option<Json<DecisionBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    decide(&server, &p, &id, Choice::Reject, body).await
}

#[derive(Deserialize)]
pub struct AuditQuery {
    run: Option<String>,
    plugin: Option<String>,
    since: Option<u64>,
    kind: Option<String>,
    limit: Option<usize>,
}

pub async fn audit(
    State(server): State<Arc<Server>>,
    _: Operator,
    Query(q): Query<AuditQuery>,
) -> Response {
    let dir = server.runtime().config.audit.dir.clone();
    let search = warden_core::store::audit::Search {
        run: q.run,
        plugin: q.plugin,
        since_ms: q.since,
        kind: q.kind,
    };
    let limit = q.limit.unwrap_or(1000).min(100_000);
    // Reading the log is blocking file I/O.
    let hits = tokio::task::spawn_blocking(move || {
        warden_core::store::audit::last_matching(&dir, &search, limit)
    })
    .await;
    match hits {
        Ok(records) => found(&server.runtime(), "records", records.map(Some)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

pub async fn reload(State(server): State<Arc<Server>>, _: Operator) -> Response {
    match server.reload().await {
        Ok(tools) => Json(json!({ "reloaded": true, "tools": tools })).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

pub async fn metrics(State(server): State<Arc<Server>>, _: Operator) -> Response {
    let text = server.render_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the audit log takes records (nothing can run unaudited otherwise); a
/// server with auditing turned off says so on every probe.
pub async fn readyz(State(server): State<Arc<Server>>) -> Response {
    match server.ready().await {
        Ok(()) if !server.runtime().config.audit.enabled => (
            StatusCode::OK,
            "ready, but the AUDIT LOG IS OFF ([audit] enabled = false): calls are not recorded\n",
        )
            .into_response(),
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
