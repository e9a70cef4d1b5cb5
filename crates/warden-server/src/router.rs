//! Every HTTP route, assembled: MCP at `/mcp` (with its body limit and the wait for
//! results to leave), each route module's own routes (`api`, `pages`), the probes, and
//! the `auth` layers in front of them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::auth::{LOOPBACK_HOSTS, authenticate, check_host};
use crate::mcp::WardenMcp;
use crate::state::Server;

/// Every route: MCP and the API behind the token check; health, the link pages (which
/// carry their own signed tokens) and the console (its own sessions) outside it; all
/// behind the Host/Origin check.
pub fn router(server: Arc<Server>, stop: &CancellationToken) -> Router {
    let allowed_hosts: Vec<String> = LOOPBACK_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(server.runtime().config.server.allowed_hosts.iter().cloned())
        .collect();
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts)
        .with_cancellation_token(stop.child_token());
    let for_sessions = server.clone();
    let mcp = StreamableHttpService::new(
        // A handler per session: each has its own log level.
        move || Ok(WardenMcp::new(for_sessions.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(server.clone(), until_sent))
        .layer(middleware::from_fn(json_rpc_body));
    let authenticated = Router::new()
        .merge(mcp)
        .merge(crate::api::routes())
        .merge(crate::automation::routes())
        .merge(crate::budgets::routes())
        .layer(middleware::from_fn_with_state(server.clone(), authenticate));
    Router::new()
        .merge(authenticated)
        .merge(crate::api::probes())
        .merge(crate::pages::routes())
        .merge(crate::console::routes(stop))
        .merge(crate::automation::hooks())
        .layer(middleware::from_fn_with_state(server.clone(), check_host))
        .with_state(server)
}

/// Largest MCP request body taken, in bytes.
const MAX_MCP_BODY: usize = 4 << 20;
/// A larger body is read (and thrown away) up to this much before the 413 goes out, so
/// the client, still sending, reads a status instead of a reset connection.
const MAX_DRAINED: usize = 64 << 20;

/// A JSON-RPC error answer (`id` null: the request could not be read).
fn json_rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Every MCP POST's body: at most `MAX_MCP_BODY` (else 413, whatever its size, after
/// draining it), and JSON (else 400 with the JSON-RPC parse error, -32700), before the
/// MCP service sees it.
async fn json_rpc_body(request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    use http_body_util::BodyExt as _;
    let (parts, mut body) = request.into_parts();
    let mut bytes: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return json_rpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                "Parse error: the body could not be read",
            );
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen += chunk.len();
        if seen <= MAX_MCP_BODY {
            bytes.extend_from_slice(&chunk);
        } else if seen > MAX_DRAINED {
            break;
        }
    }
    if seen > MAX_MCP_BODY {
        return json_rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            &format!(
                "Invalid request: the body is {}{} bytes, over the {MAX_MCP_BODY}-byte limit",
                if seen > MAX_DRAINED { "over " } else { "" },
                seen.min(MAX_DRAINED)
            ),
        );
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return json_rpc_error(
            StatusCode::BAD_REQUEST,
            -32700,
            &format!(
                "Parse error: {}",
                warden_core::util::bounded_to(&e.to_string(), 200)
            ),
        );
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Count an MCP POST as in flight until its response body has been sent to the client
/// (or dropped with the connection), so shutdown can wait for it.
async fn until_sent(State(server): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let sending = server.sending.enter();
    let response = next.run(req).await;
    response.map(|body| {
        axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            let _held = &sending;
            frame
        }))
    })
}
