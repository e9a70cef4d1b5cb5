//! Budgets over HTTP: the usage report (`/api/usage`) and the kill switch
//! (`/api/suspensions`), for operators. A suspension takes effect at once for new
//! calls on this server; nothing here decides whether a call may run.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use warden_core::governance::budgets::{Target, UsageFilter};
use warden_core::runtime::SuspendError;

use crate::api::{Operator, error, shown};
use crate::state::Server;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/api/usage", get(usage))
        .route("/api/suspensions", get(suspensions))
        .route(
            "/api/suspensions/{kind}/{name}",
            post(suspend).delete(unsuspend),
        )
}

#[derive(Deserialize)]
struct UsageQuery {
    principal: Option<String>,
    plugin: Option<String>,
    tool: Option<String>,
    since_ms: Option<i64>,
}

async fn usage(
    State(server): State<Arc<Server>>,
    _: Operator,
    Query(q): Query<UsageQuery>,
) -> Response {
    let rt = server.runtime();
    let filter = UsageFilter {
        principal: q.principal,
        plugin: q.plugin,
        tool: q.tool,
    };
    let reader = rt.clone();
    match tokio::task::spawn_blocking(move || reader.usage_report(&filter, q.since_ms)).await {
        Ok(Ok(report)) => shown(&rt, &report),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn suspensions(State(server): State<Arc<Server>>, _: Operator) -> Response {
    let rt = server.runtime();
    match rt.suspended() {
        Ok(list) => shown(&rt, &list),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize, Default)]
struct SuspendBody {
    reason: Option<String>,
}

fn unknown_kind(kind: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("cannot suspend a {kind:?}: principal, plugin, tool or schedule"),
    )
}

async fn suspend(
    State(server): State<Arc<Server>>,
    Operator(p): Operator,
    Path((kind, name)): Path<(String, String)>,
    body: Option<Json<SuspendBody>>,
) -> Response {
    let Some(target) = Target::parse(&kind) else {
        return unknown_kind(&kind);
    };
    let reason = body.and_then(|Json(b)| b.reason).unwrap_or_default();
    let rt = server.runtime();
    match rt.suspend(target, &name, &reason, &p.name).await {
        Ok(()) => Json(
            json!({ "suspended": { "kind": kind, "name": name, "reason": reason, "by": p.name } }),
        )
        .into_response(),
        Err(e) => refused(e),
    }
}

async fn unsuspend(
    State(server): State<Arc<Server>>,
    Operator(p): Operator,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    let Some(target) = Target::parse(&kind) else {
        return unknown_kind(&kind);
    };
    let rt = server.runtime();
    match rt.unsuspend(target, &name, &p.name).await {
        Ok(was) => Json(json!({ "resumed": { "kind": kind, "name": name }, "was_suspended": was }))
            .into_response(),
        Err(e) => refused(e),
    }
}

fn refused(e: SuspendError) -> Response {
    let status = match e {
        SuspendError::Unknown(..) => StatusCode::NOT_FOUND,
        SuspendError::NoReason => StatusCode::UNPROCESSABLE_ENTITY,
        SuspendError::NotRecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e)
}
