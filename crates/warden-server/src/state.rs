//! The state of `warden serve`: the current runtime (swapped whole on reload), calls in
//! flight, MCP peers and subscriptions, the background tasks that drive the approval
//! queue and deliver notices, and reload.
//!
//! It must never serve a half-loaded config: a reload that fails leaves the old one
//! serving. It knows nothing of routes or transports (`router`, `lifecycle`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rmcp::service::SubscriptionSink;
use rmcp::{Peer, RoleServer};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Gauges, Metrics};
use warden_core::automation::scheduler::{Events, Scheduler};
use warden_core::config::Config;
use warden_core::governance::links::LinkSigner;
use warden_core::runtime::Runtime;
use warden_core::store::automation::AutomationStore;

/// How long shutdown waits for finished calls' results to reach their clients. Only a
/// POST whose stream never ends on its own (a 2026-07-28 `subscriptions/listen`) waits
/// this long; results leave within milliseconds.
pub(crate) const RESULTS_LEAVE_WITHIN: Duration = Duration::from_secs(2);

/// How long the driver and the notice sender sleep at most with nothing due: what no
/// event announces (a decision written by another process, the claim of a process that
/// died) is seen within this. Expiries, notice retries and the end of an
/// authentication-failure window wake them at their time; a change to the queue at once.
const LOOK_EVERY: Duration = Duration::from_secs(30);

/// How long from now until `at_ms` (none: `LOOK_EVERY`), at most `LOOK_EVERY`.
fn until(at_ms: Option<i64>) -> Duration {
    let now = warden_core::now_ms() as i64;
    at_ms.map_or(LOOK_EVERY, |at| {
        Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)).min(LOOK_EVERY)
    })
}

/// The server's state, shared by every connection and task.
pub struct Server {
    runtime: RwLock<Arc<Runtime>>,
    pub(crate) config_path: PathBuf,
    pub metrics: Arc<Metrics>,
    pub(crate) signer: LinkSigner,
    /// Schedules' pauses and claims, triggers' deliveries.
    pub(crate) automation: Arc<AutomationStore>,
    pub(crate) scheduler: Arc<Scheduler>,
    peers: Mutex<Vec<Peer<RoleServer>>>,
    sinks: Mutex<Vec<SubscriptionSink>>,
    /// Governed calls running.
    calls: Tally,
    /// MCP POST responses not yet sent (a result leaves its handler before it reaches
    /// the client's stream).
    pub(crate) sending: Tally,
    pub(crate) stopping: AtomicBool,
    /// Serializes reloads (SIGHUP and the API at once).
    reloading: tokio::sync::Mutex<()>,
    /// Failed authentications by source: aggregated records, throttling.
    pub(crate) auth_failures: crate::auth_failures::Ledger,
    /// The console's signed-in sessions.
    pub(crate) console: crate::console::Sessions,
    /// The console's last verification of the audit chain.
    pub(crate) last_verify: Mutex<crate::console::audit::LastVerify>,
    /// What the last reload changed (or why it was refused).
    pub(crate) last_reload: Mutex<Option<crate::console::fleet::ReloadNote>>,
}

/// Counts things in flight (calls, responses being sent) for a graceful shutdown.
#[derive(Default, Clone)]
pub(crate) struct Tally {
    count: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
}

impl Tally {
    pub(crate) fn enter(&self) -> Flight {
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
    pub(crate) async fn settled(&self, limit: Duration) -> u64 {
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

/// What the scheduler reports: metrics, and each run counted in flight (a shutdown
/// lets it finish like any call).
struct SchedulerEvents {
    metrics: Arc<Metrics>,
    calls: Tally,
}

impl Events for SchedulerEvents {
    fn fired(&self, schedule: &str, kind: &str, lag_ms: u64) {
        self.metrics.fired(schedule, kind, lag_ms);
    }
    fn skipped(&self, schedule: &str, reason: &str) {
        self.metrics.skipped(schedule, reason);
    }
    fn finished(&self, origin: &str, status: &str) {
        self.metrics.finished(origin, status);
    }
    fn run_guard(&self) -> Option<Box<dyn Send>> {
        Some(Box::new(self.calls.enter()))
    }
}

impl Server {
    pub fn new(rt: Runtime, config_path: &Path) -> anyhow::Result<Arc<Server>> {
        let signer = LinkSigner::open(&rt.config.links_key())?;
        let automation = Arc::new(AutomationStore::for_config(&rt.config)?);
        let console = crate::console::Sessions::for_config(&rt.config)
            .map_err(|e| anyhow::anyhow!("console sessions: {e}"))?;
        let metrics = Arc::new(Metrics::default());
        let calls = Tally::default();
        let scheduler = Scheduler::new(
            automation.clone(),
            Arc::new(SchedulerEvents {
                metrics: metrics.clone(),
                calls: calls.clone(),
            }),
        );
        Ok(Arc::new(Server {
            runtime: RwLock::new(Arc::new(rt)),
            config_path: config_path.to_path_buf(),
            metrics,
            signer,
            automation,
            scheduler,
            peers: Mutex::default(),
            sinks: Mutex::default(),
            calls,
            sending: Tally::default(),
            stopping: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
            auth_failures: crate::auth_failures::Ledger::default(),
            console,
            last_verify: Mutex::default(),
            last_reload: Mutex::default(),
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
                self.noted_reload(Some(e.clone()), Vec::new());
                return Err(e);
            }
        };
        let tools = next.tool_names().iter().map(|t| t.to_string()).collect();
        self.noted_reload(None, crate::console::fleet::changes(&current, &next));
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.metrics.reload(true);
        self.scheduler.wake();
        self.watch_upstreams();
        let server = self.clone();
        tokio::spawn(async move { server.tools_changed().await });
        Ok(tools)
    }

    fn noted_reload(&self, refused: Option<String>, changes: Vec<String>) {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(crate::console::fleet::ReloadNote {
                at_ms: warden_core::now_ms() as i64,
                refused,
                changes,
            });
        }
    }

    /// Fire the schedules of whichever runtime is current until `stop`.
    pub(crate) async fn schedule(self: Arc<Self>, stop: CancellationToken) {
        let server = self.clone();
        self.scheduler
            .clone()
            .run(move || server.runtime(), stop.cancelled_owned())
            .await;
    }

    /// Reload when an upstream of the current runtime says its tool list changed: the
    /// new list is read (definitions checked against the accepted ones), the upstreams
    /// whose config is unchanged keep running, and clients are told. Watchers of a
    /// runtime that was replaced, or of an upstream dropped, let go.
    pub fn watch_upstreams(self: &Arc<Self>) {
        let rt = self.runtime();
        for upstream in &rt.upstreams {
            let changed = upstream.list_changed();
            let id = upstream.config.id.clone();
            let (server, rt, upstream) = (
                Arc::downgrade(self),
                Arc::downgrade(&rt),
                Arc::downgrade(upstream),
            );
            tokio::spawn(async move {
                changed.notified().await;
                let (Some(server), Some(rt), Some(_)) =
                    (server.upgrade(), rt.upgrade(), upstream.upgrade())
                else {
                    return;
                };
                if !Arc::ptr_eq(&server.runtime(), &rt) {
                    // A newer runtime kept this upstream: its watcher takes the news.
                    changed.notify_one();
                    return;
                }
                tracing::info!(upstream = %id, "its tool list changed; reloading");
                drop(rt);
                if let Err(e) = server.reload().await {
                    tracing::warn!(upstream = %id, "reload after a tool list change: {e}");
                }
            });
        }
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
            limits: rt.budgets.snapshot(warden_core::now_ms() as i64),
            refusals: rt.budgets.refusals(),
            plugins: rt.plugins.iter().map(|p| p.id.clone()).collect(),
            open_breakers: rt
                .budgets
                .runaway
                .open_breakers(warden_core::now_ms() as i64),
            upstreams: rt.upstreams.iter().map(|u| u.status()).collect(),
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
        let rt = self.runtime();
        if let Some(a) = &rt.audit
            && a.has_failed()
        {
            return Err("the audit log refuses writes".into());
        }
        if let Some(target) = &rt.config.store.shared
            && warden_core::store::postgres::STATS
                .up
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        {
            return Err(format!(
                "the shared store {} is unreachable (held calls, shared limits and schedules wait for it)",
                target.shown
            ));
        }
        Ok(())
    }

    /// Deliver webhook notices until `stop` is cancelled: on their own task, so a slow
    /// webhook never delays an approved call.
    pub(crate) async fn notices(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let rt = self.runtime();
            if let Err(e) = rt.deliver_notices().await {
                tracing::error!("approval notices: {e}");
            }
            let changed = rt.approvals.as_ref().map(|q| q.changed.clone());
            let due = rt
                .approvals
                .as_ref()
                .and_then(|q| q.next_notice_ms().ok().flatten());
            drop(rt);
            let woken = async {
                match changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(until(due)) => {}
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
    pub(crate) async fn drive(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let rt = self.runtime();
            if let Err(e) = rt.drive().await {
                tracing::error!("approval queue: {e}");
            }
            self.report_auth_failures(false).await;
            let changed = rt.approvals.as_ref().map(|q| q.changed.clone());
            let expiry = rt
                .approvals
                .as_ref()
                .and_then(|q| q.next_expiry_ms().ok().flatten());
            let window = self.auth_failures.next_end_ms().map(|ms| ms as i64);
            let due = match (expiry, window) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            drop(rt);
            let woken = async {
                match changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            // Hosts sharing a store look at least twice per lease: a claim whose host
            // died is theirs to end, and no change would wake them for it.
            let lease = self
                .runtime()
                .config
                .store
                .shared
                .as_ref()
                .map(|_| self.runtime().config.store.lease / 2);
            let sleep = lease.map_or(until(due), |l| until(due).min(l));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(sleep) => {}
                _ = woken => {}
            }
        }
    }

    /// Wait up to the grace period for calls in flight; record the ones cut off.
    pub(crate) async fn drain(&self) {
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
