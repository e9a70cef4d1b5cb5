//! Who may reach `warden serve` over HTTP: the Host/Origin checks against DNS
//! rebinding and cross-site pages, and bearer tokens checked against their hashes, every
//! refusal audited (counted per source by `auth_failures`).
//!
//! It must never let a request past without a token that verifies, except the probes
//! and the link pages, which carry their own signed tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use warden_core::runtime::Runtime;
use warden_core::tokens::{self, Role};

use crate::state::Server;

/// Loopback names a `Host` header may carry without being listed.
pub(crate) const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// Refuse requests whose `Host` (DNS rebinding) or `Origin` (a browser page on
/// another site) is not this server's. The server's own origin (the `Host` it was
/// reached by, once that passed the check, or `[approvals] public_url`) is accepted, as
/// the MCP specification's DNS-rebinding guidance expects; any other origin must be
/// listed in `allowed_origins` (`null`, which a browser sends for opaque origins, never
/// passes unless listed).
pub(crate) async fn check_host(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let rt = server.runtime();
    let allowed = &rt.config.server;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if let Some(host) = host {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let ok = LOOPBACK_HOSTS.contains(&name)
            || allowed.allowed_hosts.iter().any(|h| h == host || h == name);
        if !ok {
            return (StatusCode::FORBIDDEN, "Host not allowed\n").into_response();
        }
    }
    if let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok())
    {
        let own = host
            .is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"))
            || rt
                .config
                .approvals
                .public_url
                .as_deref()
                .is_some_and(|u| origin_of(u) == origin);
        if !own && !allowed.allowed_origins.iter().any(|o| o == origin) {
            return (StatusCode::FORBIDDEN, "Origin not allowed\n").into_response();
        }
    }
    next.run(request).await
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Verify the bearer token and put its principal in the request; refusals are audited.
pub(crate) async fn authenticate(
    State(server): State<Arc<Server>>,
    mut request: Request,
    next: Next,
) -> Response {
    let rt = server.runtime();
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let now = warden_core::now_ms();
    if let Some(addr) = source
        && server.auth_failures.throttled(addr.ip(), now)
    {
        server.metrics.auth_throttled();
        return too_many();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let principal = presented.and_then(|t| tokens::verify(&rt.config.tokens, t.trim()));
    let path = request.uri().path().to_string();
    let Some(principal) = principal else {
        server.metrics.auth_failure();
        let why = if presented.is_some() {
            "unknown token"
        } else {
            "no bearer token"
        };
        if refused(&server, &rt, source, &path, why).await {
            return too_many();
        }
        let mut response = (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if path.starts_with("/mcp") && !principal.has(Role::Agent) {
        return (
            StatusCode::FORBIDDEN,
            "this token may not call tools (role agent)\n",
        )
            .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Count and audit a failed authentication of `source` (a token, or a webhook's
/// signature): one record per source per window, the rest counted. Returns true when
/// the source is now throttled (answer 429).
pub(crate) async fn refused(
    server: &Server,
    rt: &Runtime,
    source: Option<SocketAddr>,
    path: &str,
    why: &str,
) -> bool {
    let now = warden_core::now_ms();
    let remote = source.map(|a| a.to_string()).unwrap_or_default();
    let (admission, earlier) = match source {
        Some(addr) => server.auth_failures.fail(addr.ip(), path, now),
        None => (crate::auth_failures::Admission::Record, Vec::new()),
    };
    let mut records: Vec<_> = earlier
        .iter()
        .map(|u| rt.entry(warden_core::runtime::record::auth_denied_counted(u)))
        .collect();
    if admission == crate::auth_failures::Admission::Record {
        records.push(rt.entry(warden_core::runtime::record::auth_denied(
            path, &remote, why,
        )));
    }
    if let Some(audit) = &rt.audit
        && !records.is_empty()
    {
        let _ = audit.commit(records, false).await;
    }
    if admission == crate::auth_failures::Admission::Throttled {
        server.metrics.auth_throttled();
        return true;
    }
    false
}

/// 429 for a source that failed to authenticate too often this window.
pub(crate) fn too_many() -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications from this address; try again later\n",
    )
        .into_response();
    let secs = crate::auth_failures::WINDOW_MS / 1000;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
