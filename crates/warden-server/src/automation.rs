//! Schedules and triggers over HTTP: the operator API (list schedules with their next
//! fire times and success rates, run one now, pause and resume, list triggers) and the
//! webhook endpoint `/hooks/NAME` that signed deliveries reach.
//!
//! A webhook is authenticated by its signature, not a token: a delivery that does not
//! verify runs nothing, is answered 401 and counted against its source like a failed
//! token (aggregated audit records, throttling). Every run goes through the governed
//! path; nothing here decides what may run.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use warden_core::automation::trigger::{self, Answer, Refusal};
use warden_core::automation::{self as automation, scheduler::RunNowError};
use warden_core::call::{CallError, CallReport, Outcome};

use crate::api::{Operator, error, shown};
use crate::state::Server;

/// The operator's routes (behind the token check).
pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/api/schedules", get(schedules))
        .route("/api/schedules/{name}/run", post(run))
        .route("/api/schedules/{name}/pause", post(pause))
        .route("/api/schedules/{name}/resume", post(resume))
        .route("/api/triggers", get(triggers))
}

/// The webhook endpoint (signed deliveries; no token).
pub fn hooks() -> Router<Arc<Server>> {
    Router::new().route("/hooks/{name}", post(hook))
}

async fn schedules(State(server): State<Arc<Server>>, _: Operator) -> Response {
    let rt = server.runtime();
    let store = server.automation.clone();
    let reader = rt.clone();
    let now = warden_core::now_ms() as i64;
    match tokio::task::spawn_blocking(move || automation::summaries(&reader, &store, now)).await {
        Ok(Ok(list)) => shown(&rt, &list),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// What a run's HTTP answer carries.
fn ran(report: &CallReport) -> (StatusCode, serde_json::Value) {
    let status = if matches!(report.outcome, Outcome::Held { .. }) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut v = serde_json::to_value(report).unwrap_or_default();
    // The answer is small: the run is in the history (`/api/runs/{id}`).
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "run_id"
                    | "status"
                    | "tool"
                    | "started_by"
                    | "output"
                    | "reasons"
                    | "error"
                    | "kind"
                    | "approval"
            )
        });
    }
    (status, v)
}

async fn run(State(server): State<Arc<Server>>, _: Operator, Path(name): Path<String>) -> Response {
    let rt = server.runtime();
    let _flight = server.in_flight();
    match server.scheduler.run_now(&rt, &name).await {
        Ok(report) => {
            let (status, mut v) = ran(&report);
            rt.redactor.scrub_value(&mut v);
            (status, Json(v)).into_response()
        }
        Err(RunNowError::Unknown(_)) => {
            error(StatusCode::NOT_FOUND, format!("no schedule {name:?}"))
        }
        Err(e @ RunNowError::Call(CallError::NotRecorded(_))) | Err(e @ RunNowError::Store(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

#[derive(Deserialize, Default)]
struct PauseBody {
    reason: Option<String>,
}

async fn pause(
    State(server): State<Arc<Server>>,
    Operator(p): Operator,
    Path(name): Path<String>,
    body: Option<Json<PauseBody>>,
) -> Response {
    let reason = body.and_then(|Json(b)| b.reason);
    set_paused(&server, &p.name, &name, true, reason).await
}

async fn resume(
    State(server): State<Arc<Server>>,
    Operator(p): Operator,
    Path(name): Path<String>,
) -> Response {
    set_paused(&server, &p.name, &name, false, None).await
}

async fn set_paused(
    server: &Arc<Server>,
    by: &str,
    name: &str,
    paused: bool,
    reason: Option<String>,
) -> Response {
    let rt = server.runtime();
    if !rt.config.schedules.iter().any(|s| s.name == name) {
        return error(StatusCode::NOT_FOUND, format!("no schedule {name:?}"));
    }
    let now = warden_core::now_ms() as i64;
    let changed = match server
        .automation
        .set_paused(name, paused, by, reason.as_deref(), now)
    {
        Ok(changed) => changed,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if changed {
        let record =
            warden_core::runtime::record::schedule_paused(name, paused, by, reason.as_deref());
        if let Some(audit) = &rt.audit
            && let Err(e) = audit.commit(vec![rt.entry(record)], true).await
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, e);
        }
        server.scheduler.wake();
    }
    Json(json!({ "schedule": name, "paused": paused, "changed": changed })).into_response()
}

async fn triggers(State(server): State<Arc<Server>>, _: Operator) -> Response {
    let rt = server.runtime();
    let list: Vec<_> = rt
        .config
        .triggers
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "path": format!("/hooks/{}", t.name),
                "tool": t.tool,
                "principal": t.principal,
                "signature": t.signature,
                "secret": t.secret,
                "events": t.events,
                "enabled": t.enabled,
                "max_body_kb": t.max_body_bytes >> 10,
            })
        })
        .collect();
    shown(&rt, &list)
}

async fn hook(
    State(server): State<Arc<Server>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rt = server.runtime();
    let Some(t) = rt.config.triggers.iter().find(|t| t.name == name) else {
        server.metrics.delivery(&name, false, "unknown");
        return error(StatusCode::NOT_FOUND, format!("no trigger {name:?}"));
    };
    let now = warden_core::now_ms();
    if server.auth_failures.throttled(source.ip(), now) {
        server.metrics.auth_throttled();
        server.metrics.delivery(&name, true, "throttled");
        return crate::auth::too_many();
    }
    let body = match axum::body::to_bytes(body, t.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            server.metrics.delivery(&name, true, "too-large");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over the trigger's {} KiB limit",
                    t.max_body_bytes >> 10
                ),
            );
        }
    };
    let _flight = server.in_flight();
    let delivered = trigger::deliver(&rt, &server.automation, &name, &headers, &body).await;
    let result = match &delivered {
        Ok(Answer::Ran(_)) => "ran",
        Ok(Answer::Duplicate(_)) => "duplicate",
        Ok(Answer::Ignored(_)) => "ignored",
        Ok(Answer::Challenge(_)) => "challenge",
        Err(r) if r.is_unauthenticated() => "refused-signature",
        Err(Refusal::Payload(_)) | Err(Refusal::Call(CallError::InvalidInput { .. })) => {
            "refused-payload"
        }
        Err(_) => "failed",
    };
    server.metrics.delivery(&name, true, result);
    match delivered {
        Ok(Answer::Ran(report)) => {
            server
                .metrics
                .finished(&t.origin(), report.outcome.status());
            if matches!(report.outcome, Outcome::Unmet { .. }) {
                rt.notify_unmet(&report);
            }
            let (status, mut v) = ran(&report);
            rt.redactor.scrub_value(&mut v);
            (status, Json(v)).into_response()
        }
        Ok(Answer::Duplicate(id)) => {
            Json(json!({ "duplicate": true, "delivery": id, "ran": false })).into_response()
        }
        Ok(Answer::Ignored(why)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "ignored": why, "ran": false })),
        )
            .into_response(),
        Ok(Answer::Challenge(c)) => Json(json!({ "challenge": c })).into_response(),
        Err(refusal) if refusal.is_unauthenticated() => {
            let why = refusal.to_string();
            if crate::auth::refused(&server, &rt, Some(source), &format!("/hooks/{name}"), &why)
                .await
            {
                return crate::auth::too_many();
            }
            error(StatusCode::UNAUTHORIZED, why)
        }
        Err(e @ Refusal::Unknown(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ Refusal::Disabled(_)) => error(StatusCode::FORBIDDEN, e),
        Err(e @ Refusal::TooLarge(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ Refusal::Payload(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(Refusal::Call(e @ (CallError::InvalidInput { .. } | CallError::InvalidJson(_)))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
