//! The queue in the embedded database: one writer thread committing batches of
//! changes in `BEGIN IMMEDIATE` transactions (each change in its own savepoint), reads on
//! their own connections, per-request locks, and every state change of a request.
//!
//! It must never acknowledge a change before its commit is durable, nor let two
//! processes claim one request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::call::{ApprovalState, Tier, Vote};
use crate::config::ApprovalsConfig;

use super::owner::Owner;

mod rows;

use super::rules::already;
use super::{
    Approval, ApprovalError, Ballot, Choice, HoldSet, Notice, REMOVED, SEALED, Sealer, may_decide,
    tier_name,
};
use rows::{Cast, add_vote, load, set_state, settle_expired};

/// The queue over one store file.
pub struct ApprovalQueue {
    /// For reads; every change goes through the writer thread.
    conn: Mutex<Connection>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: String,
    /// Woken on every change this process makes, so local waiters need not poll.
    pub changed: Arc<tokio::sync::Notify>,
    /// One lock per request, held while its votes go to the audit log and while it is
    /// claimed, so two tasks of this process never audit a vote twice; requests never
    /// wait for each other.
    locks: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    sealer: Arc<Option<Sealer>>,
    owner: Owner,
}

/// One change: run in its own savepoint; says whether it succeeded and what to tell
/// its caller once the commit is known.
pub(super) struct Job {
    run: RunJob,
    /// The caller must not be answered before the commit is fsynced.
    durable: bool,
}
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type RunJob = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// Most changes committed together.
pub(super) const MAX_BATCH: usize = 256;

impl From<rusqlite::Error> for ApprovalError {
    fn from(e: rusqlite::Error) -> ApprovalError {
        // The path is filled in by `ApprovalQueue::write`.
        ApprovalError::Store {
            path: String::new(),
            message: e.to_string(),
        }
    }
}

impl ApprovalQueue {
    /// The queue in the store at `path`, sealing held inputs with `sealer` when given.
    pub fn open(path: &Path, sealer: Option<Sealer>) -> Result<ApprovalQueue, ApprovalError> {
        let shown = path.display().to_string();
        let owners = path.parent().unwrap_or(Path::new(".")).join("owners");
        let owner = Owner::take(&owners).map_err(|e| ApprovalError::Store {
            path: owners.display().to_string(),
            message: e.to_string(),
        })?;
        let store = |e: crate::store::db::SchemaError| ApprovalError::Store {
            path: shown.clone(),
            message: e.to_string(),
        };
        let conn = crate::store::db::open(path, true).map_err(store)?;
        let mut writer_conn = crate::store::db::open(path, true).map_err(store)?;
        let changed = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let notify = changed.clone();
        let writer = std::thread::Builder::new()
            .name("warden-approvals".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&mut writer_conn, batch);
                    notify.notify_waiters();
                }
            })
            .map_err(|e| ApprovalError::Store {
                path: shown.clone(),
                message: format!("cannot start the writer: {e}"),
            })?;
        Ok(ApprovalQueue {
            conn: Mutex::new(conn),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            path: shown,
            changed,
            locks: Mutex::default(),
            sealer: Arc::new(sealer),
            owner,
        })
    }

    /// The lock of request `id` (see the field).
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| l.strong_count() > 0);
            match locks.get(id).and_then(std::sync::Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(id.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    fn store(&self, e: rusqlite::Error) -> ApprovalError {
        ApprovalError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Run `f` in the writer's next transaction; its changes are durable when this
    /// returns `Ok`, and undone when `f` fails.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        self.write_with(true, f).await
    }

    /// `write`, but when `durable` is false the commit may skip its fsync (it becomes
    /// durable with the next durable commit). Only for changes whose loss in a power
    /// cut is safe: a `finish` lost leaves the request `executing`, which recovery ends
    /// `failed` and never runs again.
    async fn write_with<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run: RunJob = Box::new(move |conn: &Connection| {
            let out = f(conn);
            let ok = out.is_ok();
            let reply: Reply = Box::new(move |committed| {
                let result = match committed {
                    Ok(()) => out,
                    Err(message) => Err(ApprovalError::Store {
                        path: String::new(),
                        message,
                    }),
                };
                let _ = tx.send(result);
            });
            (ok, reply)
        });
        let job = Job { run, durable };
        let sent = self
            .jobs
            .lock()
            .ok()
            .and_then(|j| j.as_ref().map(|j| j.send(job).is_ok()))
            .unwrap_or(false);
        let stopped = || ApprovalError::Store {
            path: self.path.clone(),
            message: "the queue's writer has stopped".into(),
        };
        if !sent {
            return Err(stopped());
        }
        match rx.await {
            Ok(Err(ApprovalError::Store { path, message })) if path.is_empty() => {
                Err(ApprovalError::Store {
                    path: self.path.clone(),
                    message,
                })
            }
            Ok(result) => result,
            Err(_) => Err(stopped()),
        }
    }

    /// Queue `a` (and its webhook notice) in one commit; durable when this returns.
    pub async fn insert(&self, a: &Approval, notice: Option<&str>) -> Result<(), ApprovalError> {
        let a = a.clone();
        let notice = notice.map(str::to_string);
        let (input, sealed) = match self.sealer.as_ref() {
            Some(sealer) => (
                sealer
                    .seal(&a.id, &a.input)
                    .map_err(|message| ApprovalError::Store {
                        path: self.path.clone(),
                        message,
                    })?,
                true,
            ),
            None => (a.input.clone(), false),
        };
        let holds = serde_json::to_string(&a.holds).unwrap_or_default();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO approvals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, NULL, NULL, ?18, NULL, ?19, ?20)",
                params![
                    a.id,
                    a.run_id,
                    a.principal,
                    a.tool,
                    a.plugin,
                    a.plugin_digest,
                    input,
                    a.input_sha256,
                    a.decisions.to_string(),
                    tier_name(a.tier),
                    Value::from(a.reasons.clone()).to_string(),
                    Value::from(a.approvers.clone()).to_string(),
                    a.required,
                    a.created_ms,
                    a.expires_ms,
                    a.state.as_str(),
                    a.state_ms,
                    holds,
                    sealed,
                    a.started_by,
                ],
            )?;
            if let Some(payload) = notice {
                tx.execute(
                    "INSERT INTO approval_notices (approval_id, payload, next_ms) VALUES (?1, ?2, ?3)",
                    params![a.id, payload, a.created_ms],
                )?;
            }
            Ok(())
        })
        .await
    }

    pub fn get(&self, id: &str) -> Result<Option<Approval>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        load(&conn, id, self.sealer.as_ref().as_ref()).map_err(|e| self.store(e))
    }

    /// Requests, newest first, optionally in one state; with `before` (a request's
    /// `created_ms` and id), only those older than it: the next page after it.
    pub fn list(
        &self,
        state: Option<ApprovalState>,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Approval>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM approvals WHERE (?1 IS NULL OR state = ?1)
                     AND (?3 IS NULL OR created_ms < ?3 OR (created_ms = ?3 AND id < ?4))
                     ORDER BY created_ms DESC, id DESC LIMIT ?2",
                )
                .map_err(|e| self.store(e))?;
            let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            stmt.query_map(
                params![
                    state.map(ApprovalState::as_str),
                    limit,
                    before.map(|b| b.0),
                    before.map(|b| b.1)
                ],
                |r| r.get(0),
            )
            .and_then(|rows| rows.collect())
            .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(a) =
                load(&conn, &id, self.sealer.as_ref().as_ref()).map_err(|e| self.store(e))?
            {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// When the clock alone next changes something: the earliest expiry (or soft
    /// window's end) of a pending request. A driver sleeps until then, not on a poll.
    pub fn next_expiry_ms(&self) -> Result<Option<i64>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT min(expires_ms) FROM approvals WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.store(e))
    }

    /// When the next notice is due to be sent or retried.
    pub fn next_notice_ms(&self) -> Result<Option<i64>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT min(next_ms) FROM approval_notices WHERE delivered_ms IS NULL AND gave_up = 0",
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.store(e))
    }

    /// How many requests are pending and when the newest of them was made: what a
    /// watcher compares to see the inbox changed (in this process or another).
    pub fn pending_mark(&self) -> Result<(u64, i64), ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT count(*), coalesce(max(created_ms), 0) FROM approvals WHERE state = 'pending'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)),
        )
        .map_err(|e| self.store(e))
    }

    /// How many requests are pending.
    pub fn pending(&self) -> Result<u64, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT count(*) FROM approvals WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(|e| self.store(e))
    }

    /// Record `principal`'s vote. The first decision stands: a request that is no
    /// longer pending (or whose time has run out, which settles it now) refuses it.
    pub async fn decide(
        &self,
        config: &ApprovalsConfig,
        id: &str,
        ballot: &Ballot<'_>,
    ) -> Result<Approval, ApprovalError> {
        let config = config.clone();
        let id = id.to_string();
        // Break-glass: the vote counts for the approver it is cast for, and says who cast it.
        let (principal, via) = match ballot.on_behalf_of {
            Some(approver) => (
                approver.to_string(),
                format!("{} (break-glass by {})", ballot.via, ballot.principal),
            ),
            None => (ballot.principal.to_string(), ballot.via.to_string()),
        };
        let reason = ballot.reason.map(str::to_string);
        let shown = ballot.input_sha256.to_string();
        let (choice, now_ms) = (ballot.choice, ballot.now_ms);
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let mut a = load(tx, &id, sealer.as_ref().as_ref())?
                .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
            if a.state == ApprovalState::Pending && now_ms >= a.expires_ms {
                // Settled now, in this commit, and then refused below.
                settle_expired(tx, &mut a, now_ms)?;
                return Ok(Err(already(&a)));
            }
            if a.state != ApprovalState::Pending {
                return Err(already(&a));
            }
            may_decide(&config, &a, &principal)?;
            if shown != a.input_sha256 {
                return Err(ApprovalError::InputChanged {
                    id: a.id.clone(),
                    shown,
                    actual: a.input_sha256.clone(),
                });
            }
            if a.votes.iter().any(|v| v.principal == principal) {
                return Err(ApprovalError::AlreadyDecided {
                    id: a.id.clone(),
                    state: "pending",
                    detail: format!(" ({principal} has already approved it)"),
                });
            }
            let name = match choice {
                Choice::Approve => "approve",
                Choice::Reject => "reject",
            };
            add_vote(
                tx,
                &mut a,
                Cast {
                    principal: &principal,
                    vote: name,
                    reason: reason.as_deref(),
                    via: &via,
                    input_sha256: &shown,
                },
                now_ms,
            )?;
            let next = match choice {
                Choice::Reject => Some(ApprovalState::Rejected),
                Choice::Approve if a.satisfied(&config) => Some(ApprovalState::Approved),
                Choice::Approve => None,
            };
            if let Some(next) = next {
                let result = (next == ApprovalState::Rejected).then(|| {
                    format!(
                        "rejected by {principal}{}",
                        reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                });
                set_state(tx, &mut a, next, result, now_ms)?;
            }
            Ok(Ok(a))
        })
        .await?
    }

    /// Settle every pending request whose time has run out: a soft one is approved by
    /// its window, a hard one expires (denied). Returns the ones settled.
    pub async fn expire_due(&self, now_ms: i64) -> Result<Vec<Approval>, ApprovalError> {
        let due: Vec<String> = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM approvals WHERE state = 'pending' AND expires_ms <= ?1",
                )
                .map_err(|e| self.store(e))?;
            stmt.query_map([now_ms], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for id in due {
            out.extend(self.expire_if_due(&id, now_ms).await?);
        }
        Ok(out)
    }

    /// Settle `id` if its time has run out.
    pub async fn expire_if_due(
        &self,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Approval>, ApprovalError> {
        // Most looks find nothing due: answer those from a read.
        let due = self
            .get(id)?
            .is_some_and(|a| a.state == ApprovalState::Pending && now_ms >= a.expires_ms);
        if !due {
            return Ok(None);
        }
        let id = id.to_string();
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let Some(mut a) = load(tx, &id, sealer.as_ref().as_ref())? else {
                return Ok(None);
            };
            if a.state == ApprovalState::Pending && now_ms >= a.expires_ms {
                settle_expired(tx, &mut a, now_ms)?;
                return Ok(Some(a));
            }
            Ok(None)
        })
        .await
    }

    /// Approved requests waiting to run.
    pub fn approved(&self) -> Result<Vec<String>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT id FROM approvals WHERE state = 'approved' ORDER BY state_ms")
            .map_err(|e| self.store(e))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.store(e))
    }

    /// Take the right to execute `id`: `approved -> executing`, recording this
    /// process (by its owner lock), and marking its votes audited (the caller has
    /// written them to the audit log). `None` when it is not approved (another process
    /// claimed it first, or it was never approved).
    pub async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<Approval>, ApprovalError> {
        let id = id.to_string();
        let owner = self.owner.token.clone();
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            let changed = tx.execute(
                "UPDATE approvals SET state = 'executing', state_ms = ?2, owner = ?3
                 WHERE id = ?1 AND state = 'approved'",
                params![id, now_ms, owner],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            tx.execute(
                "UPDATE approval_votes SET audited = 1 WHERE approval_id = ?1",
                [&id],
            )?;
            Ok(load(tx, &id, sealer.as_ref().as_ref())?)
        })
        .await
    }

    /// End a claimed request: `executed` (the tool ran, whatever it returned) or
    /// `failed` (refused or interrupted before or while running).
    pub async fn finish(
        &self,
        id: &str,
        state: ApprovalState,
        result: &str,
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        let (id, result) = (id.to_string(), result.to_string());
        self.write_with(false, move |tx| {
            tx.execute(
                "UPDATE approvals SET state = ?2, state_ms = ?3, result = ?4, input = ?5, sealed = 0
                 WHERE id = ?1 AND state = 'executing'",
                params![id, state.as_str(), now_ms, result, REMOVED],
            )?;
            Ok(())
        })
        .await
    }

    /// Requests left `executing` by a process that is gone (its owner lock is free)
    /// end `failed`: the tool may have run, so running it again could do its effect
    /// twice. Returns them.
    pub async fn recover(&self, now_ms: i64) -> Result<Vec<Approval>, ApprovalError> {
        let stuck: Vec<(String, String)> = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, coalesce(owner, '') FROM approvals WHERE state = 'executing'",
                )
                .map_err(|e| self.store(e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for (id, owner) in stuck {
            if !self.owner.is_gone(&owner) {
                continue;
            }
            let why = "interrupted: warden stopped while the tool ran; not run again (it may have had its effect)";
            let key = id.clone();
            let found = self
                .write(move |tx| {
                    let changed = tx.execute(
                        "UPDATE approvals SET state = 'failed', state_ms = ?2, result = ?3, input = ?4, sealed = 0
                         WHERE id = ?1 AND state = 'executing' AND coalesce(owner, '') = ?5",
                        params![key, now_ms, why, REMOVED, owner],
                    )?;
                    Ok(changed > 0)
                })
                .await?;
            if found {
                out.extend(self.get(&id)?);
            }
        }
        Ok(out)
    }

    /// Requests with votes not yet in the audit log, oldest vote first.
    pub fn with_unaudited_votes(&self) -> Result<Vec<String>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT approval_id FROM approval_votes WHERE audited = 0
                 GROUP BY approval_id ORDER BY min(at_ms)",
            )
            .map_err(|e| self.store(e))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.store(e))
    }

    pub async fn mark_audited(&self, votes: Vec<(String, i64)>) -> Result<(), ApprovalError> {
        if votes.is_empty() {
            return Ok(());
        }
        self.write_with(false, move |tx| {
            for (id, seq) in &votes {
                tx.execute(
                    "UPDATE approval_votes SET audited = 1 WHERE approval_id = ?1 AND seq = ?2",
                    params![id, seq],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Webhook notices due for a delivery attempt: (approval id, payload, attempts so far).
    pub fn due_notices(&self, now_ms: i64) -> Result<Vec<(String, String, u32)>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT approval_id, payload, attempts FROM approval_notices
                 WHERE delivered_ms IS NULL AND gave_up = 0 AND next_ms <= ?1 ORDER BY next_ms",
            )
            .map_err(|e| self.store(e))?;
        stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.store(e))
    }

    /// Record one delivery attempt: delivered, or failed with the next attempt at
    /// `retry_at` (`None`: give up).
    pub async fn notice_attempted(
        &self,
        id: &str,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        let id = id.to_string();
        self.write_with(false, move |tx| {
            let r = match &outcome {
                Ok(()) => tx.execute(
                    "UPDATE approval_notices SET attempts = attempts + 1, delivered_ms = ?2, last_error = NULL
                     WHERE approval_id = ?1",
                    params![id, now_ms],
                ),
                Err(e) => tx.execute(
                    "UPDATE approval_notices SET attempts = attempts + 1, last_error = ?2,
                     next_ms = coalesce(?3, next_ms), gave_up = (?3 IS NULL) WHERE approval_id = ?1",
                    params![id, e, retry_at],
                ),
            };
            r?;
            Ok(())
        })
        .await
    }

    pub fn notice(&self, id: &str) -> Result<Option<Notice>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT attempts, delivered_ms IS NOT NULL, gave_up, last_error FROM approval_notices WHERE approval_id = ?1",
            [id],
            |r| {
                Ok(Notice {
                    attempts: r.get(0)?,
                    delivered: r.get(1)?,
                    gave_up: r.get(2)?,
                    last_error: r.get(3)?,
                })
            },
        )
        .optional()
        .map_err(|e| self.store(e))
    }
}

/// Run `batch` in one transaction, each job in its own savepoint, then tell every
/// job's caller how the commit went.
pub(super) fn commit_batch(conn: &mut Connection, batch: Vec<Job>) {
    let mut replies = Vec::with_capacity(batch.len());
    let durable = batch.iter().any(|j| j.durable);
    let committed = (|| -> rusqlite::Result<()> {
        conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut jobs = batch.into_iter();
        for job in jobs.by_ref() {
            tx.execute_batch("SAVEPOINT job")?;
            let (ok, reply) = (job.run)(&tx);
            replies.push(reply);
            if !ok {
                tx.execute_batch("ROLLBACK TO job")?;
            }
            tx.execute_batch("RELEASE job")?;
        }
        tx.commit()
    })();
    let committed = committed.map_err(|e| e.to_string());
    for reply in replies {
        reply(committed.clone());
    }
}

impl Drop for ApprovalQueue {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests;
