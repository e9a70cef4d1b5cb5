//! `warden serve`: the operator's main job. One long-running process that holds the
//! audit log, serves every tool over MCP (stdio, or streamable HTTP at `/mcp`) through
//! the governed path, serves the operator API and the one-click approval pages, drives
//! the approval queue, reloads its config on SIGHUP and shuts down gracefully.
//!
//! Owns the server's state (the current runtime, swapped whole on reload; calls in
//! flight), authentication (bearer tokens checked against hashes, every refusal
//! audited), the Host/Origin checks against DNS rebinding, and the lifecycle. It must
//! never serve a half-loaded config: a reload that fails leaves the old one serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use rmcp::service::SubscriptionSink;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{Peer, RoleServer, ServiceExt};
use tokio_util::sync::CancellationToken;

use crate::mcp::WardenMcp;
use crate::metrics::{Gauges, Metrics};
use warden_core::config::Config;
use warden_core::governance::links::LinkSigner;
use warden_core::runtime::Runtime;
use warden_core::tokens::{self, Role};

/// How long shutdown waits for finished calls' results to reach their clients. Only a
/// POST whose stream never ends on its own (a 2026-07-28 `subscriptions/listen`) waits
/// this long; results leave within milliseconds.
const RESULTS_LEAVE_WITHIN: Duration = Duration::from_secs(2);

/// How often the driver looks at the approval queue when nothing wakes it.
const DRIVE_EVERY: Duration = Duration::from_millis(250);

/// The server's state, shared by every connection and task.
pub struct Server {
    runtime: RwLock<Arc<Runtime>>,
    config_path: PathBuf,
    pub metrics: Metrics,
    pub(crate) signer: LinkSigner,
    peers: Mutex<Vec<Peer<RoleServer>>>,
    sinks: Mutex<Vec<SubscriptionSink>>,
    /// Governed calls running.
    calls: Tally,
    /// MCP POST responses not yet sent (a result leaves its handler before it reaches
    /// the client's stream).
    sending: Tally,
    stopping: AtomicBool,
    /// Serializes reloads (SIGHUP and the API at once).
    reloading: tokio::sync::Mutex<()>,
    /// Failed authentications by source: aggregated records, throttling.
    auth_failures: crate::auth_failures::Ledger,
}

/// Counts things in flight (calls, responses being sent) for a graceful shutdown.
#[derive(Default)]
struct Tally {
    count: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
}

impl Tally {
    fn enter(&self) -> Flight {
        self.count.fetch_add(1, Ordering::AcqRel);
        Flight {
            count: self.count.clone(),
            done: self.done.clone(),
        }
    }

    fn now(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Wait until nothing is in flight, or `limit` passes; what is left.
    async fn settled(&self, limit: Duration) -> u64 {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let done = self.done.notified();
                if self.now() == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
        self.now()
    }
}

/// One thing in flight until dropped.
pub struct Flight {
    count: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }
}

impl Server {
    pub fn new(rt: Runtime, config_path: &Path) -> anyhow::Result<Arc<Server>> {
        let signer = LinkSigner::open(&rt.config.links_key())?;
        Ok(Arc::new(Server {
            runtime: RwLock::new(Arc::new(rt)),
            config_path: config_path.to_path_buf(),
            metrics: Metrics::default(),
            signer,
            peers: Mutex::default(),
            sinks: Mutex::default(),
            calls: Tally::default(),
            sending: Tally::default(),
            stopping: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
            auth_failures: crate::auth_failures::Ledger::default(),
        }))
    }

    /// The runtime new calls use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Count a governed call as running until the guard drops.
    pub fn in_flight(&self) -> Flight {
        self.calls.enter()
    }

    pub fn add_peer(&self, peer: Peer<RoleServer>) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|p| !p.is_transport_closed());
            peers.push(peer);
        }
    }

    pub fn add_sink(&self, sink: SubscriptionSink) {
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.push(sink);
        }
    }

    /// Re-read the config and components; swap them in whole or not at all. Returns
    /// the tool names now served.
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<String>, String> {
        let _one = self.reloading.lock().await;
        let current = self.runtime();
        let loaded = load_elsewhere(current.clone(), self.config_path.clone()).await;
        let next = match loaded {
            Ok(next) => next,
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!("reload refused, the old config keeps serving: {e}");
                let record = warden_core::runtime::record::reload_failed(
                    &self.config_path.display().to_string(),
                    &e,
                );
                if let Some(audit) = &current.audit {
                    let _ = audit.append(vec![current.entry(record)]).await;
                }
                return Err(e);
            }
        };
        let tools = next.tool_names().iter().map(|t| t.to_string()).collect();
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.metrics.reload(true);
        let server = self.clone();
        tokio::spawn(async move { server.tools_changed().await });
        Ok(tools)
    }

    /// Tell every connected client the tool list changed.
    async fn tools_changed(&self) {
        let peers: Vec<_> = self.peers.lock().map(|p| p.clone()).unwrap_or_default();
        let mut alive = Vec::new();
        for p in peers {
            if !p.is_transport_closed() && p.notify_tool_list_changed().await.is_ok() {
                alive.push(p);
            }
        }
        if let Ok(mut peers) = self.peers.lock() {
            *peers = alive;
        }
        let sinks: Vec<_> = self.sinks.lock().map(|s| s.clone()).unwrap_or_default();
        let mut alive = Vec::new();
        for s in sinks {
            if s.notify_tool_list_changed().await.is_ok() {
                alive.push(s);
            }
        }
        if let Ok(mut sinks) = self.sinks.lock() {
            *sinks = alive;
        }
    }

    pub fn render_metrics(&self) -> String {
        let rt = self.runtime();
        let gauges = Gauges {
            pending_approvals: rt
                .approvals
                .as_ref()
                .and_then(|q| q.pending().ok())
                .unwrap_or(0),
            audit_lag_records: rt.audit.as_ref().map_or(0, |a| a.lag()),
            in_flight: self.calls.now(),
            audit_enabled: rt.config.audit.enabled,
        };
        self.metrics.render(&gauges)
    }

    /// Has shutdown begun (new calls are refused; the ones in flight finish)?
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub async fn ready(&self) -> Result<(), String> {
        if self.is_stopping() {
            return Err("shutting down".into());
        }
        match &self.runtime().audit {
            Some(a) if a.has_failed() => Err("the audit log refuses writes".into()),
            _ => Ok(()),
        }
    }

    /// Deliver webhook notices until `stop` is cancelled: on their own task, so a slow
    /// webhook never delays an approved call.
    async fn notices(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let rt = self.runtime();
            if let Err(e) = rt.deliver_notices().await {
                tracing::error!("approval notices: {e}");
            }
            let changed = rt.approvals.as_ref().map(|q| q.changed.clone());
            drop(rt);
            let woken = async {
                match changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(DRIVE_EVERY * 4) => {}
                _ = woken => {}
            }
        }
    }

    /// Record the failed authentications no record has reported yet (`all`: also
    /// those of windows still open, at shutdown).
    async fn report_auth_failures(&self, all: bool) {
        let unreported = if all {
            self.auth_failures.drain()
        } else {
            self.auth_failures.ended(warden_core::now_ms())
        };
        if unreported.is_empty() {
            return;
        }
        let rt = self.runtime();
        if let Some(audit) = &rt.audit {
            let records = unreported
                .iter()
                .map(|u| rt.entry(warden_core::runtime::record::auth_denied_counted(u)))
                .collect();
            let _ = audit.commit(records, false).await;
        }
    }

    /// Drive the approval queue until `stop` is cancelled.
    async fn drive(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let rt = self.runtime();
            if let Err(e) = rt.drive().await {
                tracing::error!("approval queue: {e}");
            }
            self.report_auth_failures(false).await;
            let changed = rt.approvals.as_ref().map(|q| q.changed.clone());
            drop(rt);
            let woken = async {
                match changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(DRIVE_EVERY) => {}
                _ = woken => {}
            }
        }
    }

    /// Wait up to the grace period for calls in flight; record the ones cut off.
    async fn drain(&self) {
        self.report_auth_failures(true).await;
        let grace = Duration::from_millis(self.runtime().config.server.shutdown_grace_ms);
        let left = self.calls.settled(grace).await;
        if left > 0 {
            tracing::warn!(
                calls = left,
                "shutdown grace period over; calls still running are interrupted"
            );
            let rt = self.runtime();
            if let Some(audit) = &rt.audit {
                let _ = audit
                    .append(vec![rt.entry(warden_core::runtime::record::shutdown(left))])
                    .await;
            }
        }
    }
}

/// Read the config and load its components on a thread of their own (compiling is CPU
/// work that would stall the serving runtime: under `serve --stdio` it is a single
/// thread), then hand the result back.
async fn load_elsewhere(current: Arc<Runtime>, path: PathBuf) -> Result<Runtime, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("warden-reload".into())
        .spawn(move || {
            let loaded = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    match Config::load(&path) {
                        Ok(config) => current.reload(config).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }),
                Err(e) => Err(format!("cannot start a runtime to load the config: {e}")),
            };
            let _ = tx.send(loaded);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start the reload: {e}"));
    }
    rx.await
        .unwrap_or_else(|_| Err("the reload stopped before it finished".into()))
}

/// Loopback names a `Host` header may carry without being listed.
const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// Refuse requests whose `Host` (DNS rebinding) or `Origin` (a browser page on
/// another site) is not this server's. The server's own origin (the `Host` it was
/// reached by, once that passed the check, or `[approvals] public_url`) is accepted, as
/// the MCP specification's DNS-rebinding guidance expects; any other origin must be
/// listed in `allowed_origins` (`null`, which a browser sends for opaque origins, never
/// passes unless listed).
async fn check_host(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
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
async fn authenticate(
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
        let remote = source.map(|a| a.to_string()).unwrap_or_default();
        let (admission, earlier) = match source {
            Some(addr) => server.auth_failures.fail(addr.ip(), &path, now),
            None => (crate::auth_failures::Admission::Record, Vec::new()),
        };
        let mut records: Vec<_> = earlier
            .iter()
            .map(|u| rt.entry(warden_core::runtime::record::auth_denied_counted(u)))
            .collect();
        if admission == crate::auth_failures::Admission::Record {
            records.push(rt.entry(warden_core::runtime::record::auth_denied(
                &path, &remote, why,
            )));
        }
        if let Some(audit) = &rt.audit
            && !records.is_empty()
        {
            let _ = audit.commit(records, false).await;
        }
        if admission == crate::auth_failures::Admission::Throttled {
            server.metrics.auth_throttled();
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

/// 429 for a source that failed to authenticate too often this window.
fn too_many() -> Response {
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

/// Every route: MCP and the API behind the token check, health and the link pages
/// (which carry their own signed tokens) outside it, all behind the Host/Origin check.
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
        .route("/api/runs", get(crate::api::runs))
        .route("/api/runs/{id}", get(crate::api::run))
        .route("/api/approvals", get(crate::api::approvals))
        .route("/api/approvals/{id}", get(crate::api::approval))
        .route("/api/approvals/{id}/approve", post(crate::api::approve))
        .route("/api/approvals/{id}/reject", post(crate::api::reject))
        .route("/api/audit", get(crate::api::audit))
        .route("/api/reload", post(crate::api::reload))
        .route("/metrics", get(crate::api::metrics))
        .layer(middleware::from_fn_with_state(server.clone(), authenticate));
    Router::new()
        .merge(authenticated)
        .route("/healthz", get(crate::api::healthz))
        .route("/readyz", get(crate::api::readyz))
        .route(
            "/approvals/{id}",
            get(crate::pages::page).post(crate::pages::decide),
        )
        .layer(middleware::from_fn_with_state(server.clone(), check_host))
        .with_state(server)
}

/// How `serve` ends: a signal, or (stdio) the client closing.
async fn signals(server: Arc<Server>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        stop.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                match server.reload().await {
                    Ok(tools) => eprintln!("warden serve: reloaded {} ({} tools)", server.config_path.display(), tools.len()),
                    Err(e) => eprintln!("warden serve: reload refused, still serving the old config: {e}"),
                }
            }
        }
    }
    eprintln!("warden serve: shutting down");
    server.stopping.store(true, Ordering::Release);
    stop.cancel();
}

/// Serve HTTP on `listener` until SIGTERM/Ctrl-C. Then: stop accepting connections,
/// let calls in flight finish and answer (up to the grace period), close the MCP
/// sessions, stop the driver, close the audit log.
pub async fn serve_http(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Cancelled only once the calls in flight are done: it closes MCP sessions.
    let sessions = CancellationToken::new();
    let app = router(server.clone(), &sessions);
    let driver = tokio::spawn(server.clone().drive(sessions.clone()));
    let notices = tokio::spawn(server.clone().notices(sessions.clone()));
    let sig = tokio::spawn(signals(server.clone(), stop.clone()));
    // Small JSON-RPC messages: without TCP_NODELAY a response can wait 40 ms for an ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut served = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future(),
    );
    // A signal stops the server gracefully; with no connection open, `served` is done
    // at the same moment, and the shutdown must still drain: only an end of `served`
    // with no signal is the listener failing.
    let ended_early = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        ended = &mut served => Some(ended),
    };
    if let Some(ended) = &ended_early
        && !stop.is_cancelled()
    {
        sessions.cancel();
        let _ = driver.await;
        let _ = notices.await;
        sig.abort();
        server.runtime().close();
        return match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
            Err(e) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
        };
    }
    server.drain().await;
    // Closing the sessions cancels responses not yet sent: let the results of the calls
    // that just finished reach their clients first.
    let unsent = server.sending.settled(RESULTS_LEAVE_WITHIN).await;
    if unsent > 0 {
        tracing::warn!(
            responses = unsent,
            "shutdown: MCP responses still unsent are dropped"
        );
    }
    sessions.cancel();
    let ended = match ended_early {
        Some(ended) => Ok(ended),
        None => tokio::time::timeout(Duration::from_secs(5), served).await,
    };
    let result = match ended {
        Ok(Ok(r)) => r.map_err(anyhow::Error::from),
        Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
        Err(_) => Ok(()),
    };
    let _ = driver.await;
    let _ = notices.await;
    sig.abort();
    server.runtime().close();
    result
}

/// Serve MCP on stdin/stdout as `principal` until the client closes it or a signal.
/// Nothing but MCP messages is ever written to stdout. On a signal the service keeps
/// running while the calls in flight finish, so their results still reach the client.
pub async fn serve_stdio(server: Arc<Server>, principal: String) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let driver = tokio::spawn(server.clone().drive(stop.clone()));
    let notices = tokio::spawn(server.clone().notices(stop.clone()));
    let sig = tokio::spawn(signals(server.clone(), stop.clone()));
    let handler = WardenMcp::new(server.clone(), Some(principal));
    let (input, output) = crate::stdio::streams();
    let written = Arc::new(AtomicU64::new(0));
    let output = crate::stdio::Counted::new(output, written.clone());
    let running = handler.serve((input, output)).await?;
    let quit = running.cancellation_token();
    let mut waiting = std::pin::pin!(running.waiting());
    let client_left = tokio::select! {
        r = &mut waiting => { r?; true }
        _ = stop.cancelled() => false,
    };
    server.drain().await;
    if !client_left {
        // The results of the calls that just finished are on their way to stdout.
        crate::stdio::quiet(&written, RESULTS_LEAVE_WITHIN).await;
        quit.cancel();
        let _ = waiting.await;
    }
    stop.cancel();
    let _ = driver.await;
    let _ = notices.await;
    sig.abort();
    server.runtime().close();
    Ok(())
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

/// `<data_dir>/serve.pid` while a server runs: its pid and where it listens, under an
/// exclusive lock it holds until it exits (the kernel drops the lock however it dies),
/// so a stale file left by `kill -9` is never mistaken for a live server.
pub struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    /// Write and lock the pid file for this process, serving at `url` (`None`: stdio).
    pub fn take(data_dir: &Path, url: Option<&str>) -> anyhow::Result<PidFile> {
        use anyhow::Context as _;
        use std::io::Write as _;
        let path = data_dir.join("serve.pid");
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            anyhow::bail!(
                "another `warden serve` holds {} (one server per data dir)",
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(
            file,
            "{}
{}",
            std::process::id(),
            url.unwrap_or("stdio")
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile { path, _file: file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A server running on a data dir, as its pid file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: i32,
    /// `http://ADDR`, or `None` for a stdio server.
    pub url: Option<String>,
}

/// The server running on `data_dir`, if one is: its pid file exists and is locked.
pub fn running(data_dir: &Path) -> Option<Running> {
    let path = data_dir.join("serve.pid");
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: whatever it says is stale.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).ok()?;
            let mut lines = text.lines();
            let pid = lines.next()?.trim().parse().ok()?;
            let url = lines
                .next()
                .map(str::trim)
                .filter(|u| u.starts_with("http"))
                .map(str::to_string);
            Some(Running { pid, url })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The address to bind, refusing non-loopback ones unless `public` is set.
pub fn check_listen(addr: SocketAddr, public: bool) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() && !public {
        anyhow::bail!(
            "{addr} is not a loopback address; pass --public to listen beyond this machine"
        );
    }
    Ok(addr)
}
