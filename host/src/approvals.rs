//! The approval queue: held calls persisted in the embedded store (`db`), the votes on
//! them, who may cast them, expiry, and the claim that makes execution exactly-once.
//!
//! Owns every state change of a request:
//!
//! ```text
//! pending --approve (quorum reached)--> approved --claim--> executing --> executed | failed
//!    |  \--reject--> rejected            ^
//!    |--soft window passes---------------/
//!    \--hard timeout passes--> expired
//! ```
//!
//! Every change runs on one writer thread, inside a `BEGIN IMMEDIATE` transaction on a
//! connection that fsyncs its commits; changes queued together share one commit (each
//! in its own savepoint, so one refused change does not undo the others). Concurrent
//! deciders (tasks or processes) are serialized and the first decision stands; a
//! change is acknowledged only once its commit is durable. It must never let a request execute twice: only the `approved ->
//! executing` claim grants execution, and a claim interrupted by a crash ends `failed`
//! rather than being retried (the tool may already have had its effect). It never runs
//! tools itself; `runtime::Runtime` does, after a claim.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::config::ApprovalsConfig;
use crate::policy::Hold;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Rejected,
    Expired,
    Executing,
    Executed,
    Failed,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Approved,
        State::Rejected,
        State::Expired,
        State::Executing,
        State::Executed,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Executing => "executing",
            State::Executed => "executed",
            State::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Nothing more will happen to the request.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Rejected | State::Expired | State::Executed | State::Failed
        )
    }
}

/// One vote on a request. The queue's own votes (a soft window passing, a hard
/// timeout) are cast by the principal `warden`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vote {
    pub seq: i64,
    pub principal: String,
    /// `approve`, `reject`, `window` (soft window passed) or `expire`.
    pub vote: String,
    pub reason: Option<String>,
    /// The input hash the voter saw; execution checks it is still the input's.
    pub input_sha256: String,
    pub at_ms: i64,
    /// `cli`, `link`, `api` or `queue`.
    pub via: String,
    /// Already in the audit log.
    #[serde(skip)]
    pub audited: bool,
}

/// A request, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub id: String,
    pub run_id: String,
    pub principal: String,
    pub tool: String,
    pub plugin: String,
    pub plugin_digest: String,
    /// The canonical input that will run, exactly.
    pub input: String,
    pub input_sha256: String,
    /// The policy decisions that held the call.
    pub decisions: Value,
    pub tier: Hold,
    pub reasons: Vec<String>,
    /// Principals or `group:NAME` who may decide.
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub required: u32,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub state: State,
    pub state_ms: i64,
    /// The outcome or why it ended, once it has.
    pub result: Option<String>,
    pub votes: Vec<Vote>,
}

impl Approval {
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.vote == "approve").count()
    }
}

/// A call the policies held, to be queued.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub run_id: &'a str,
    pub principal: &'a str,
    pub tool: &'a str,
    pub plugin: &'a str,
    pub plugin_digest: &'a str,
    pub input: &'a str,
    pub decisions: Value,
    pub tier: Hold,
    pub reasons: &'a [String],
    /// Approvers the policies named (the configured default applies when empty).
    pub approvers: &'a [String],
    pub timeout_secs: Option<u32>,
    pub approvals_required: Option<u32>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

/// One principal's decision on a request.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    pub principal: &'a str,
    pub verdict: Verdict,
    pub reason: Option<&'a str>,
    /// `cli`, `link` or `api`.
    pub via: &'a str,
    pub now_ms: i64,
}

/// The delivery state of a request's webhook notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub attempts: u32,
    pub delivered: bool,
    pub gave_up: bool,
    pub last_error: Option<String>,
}

/// What a caller of the queue must branch on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("approval {id} is already decided: {state}{detail}")]
    AlreadyDecided {
        id: String,
        state: &'static str,
        detail: String,
    },
    #[error("{principal} may not decide approval {id}: {why}")]
    NotAllowed {
        id: String,
        principal: String,
        why: String,
    },
    #[error("approval queue {path}: {message}")]
    Store { path: String, message: String },
}

/// The queue over one store file.
pub struct ApprovalQueue {
    /// For reads; every change goes through the writer thread.
    conn: Mutex<Connection>,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: String,
    /// Woken on every change this process makes, so local waiters need not poll.
    pub changed: Arc<tokio::sync::Notify>,
    /// Held while votes are put in the audit log and marked, so two tasks of this
    /// process never audit the same vote twice.
    pub auditing: tokio::sync::Mutex<()>,
}

/// One change: run in its own savepoint; says whether it succeeded and what to tell
/// its caller once the commit is known.
struct Job {
    run: RunJob,
    /// The caller must not be answered before the commit is fsynced.
    durable: bool,
}
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type RunJob = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// Most changes committed together.
const MAX_BATCH: usize = 256;

impl From<rusqlite::Error> for ApprovalError {
    fn from(e: rusqlite::Error) -> ApprovalError {
        // The path is filled in by `ApprovalQueue::write`.
        ApprovalError::Store {
            path: String::new(),
            message: e.to_string(),
        }
    }
}

/// `sha256:<hex>` of an input.
pub fn input_hash(input: &str) -> String {
    format!("sha256:{}", crate::cache::sha256_hex(input.as_bytes()))
}

impl ApprovalQueue {
    pub fn open(path: &Path) -> Result<ApprovalQueue, ApprovalError> {
        let shown = path.display().to_string();
        let store = |e: crate::db::SchemaError| ApprovalError::Store {
            path: shown.clone(),
            message: e.to_string(),
        };
        let conn = crate::db::open(path, true).map_err(store)?;
        let mut writer_conn = crate::db::open(path, true).map_err(store)?;
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
            auditing: tokio::sync::Mutex::new(()),
        })
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

    /// The request a held call becomes (not yet queued: see `insert`).
    pub fn prepare(&self, config: &ApprovalsConfig, request: &NewRequest<'_>) -> Approval {
        let (timeout, required) = match request.tier {
            Hold::Soft => (request.timeout_secs.unwrap_or(config.soft_window_secs), 1),
            Hold::Hard => (
                request.timeout_secs.unwrap_or(config.hard_timeout_secs),
                request
                    .approvals_required
                    .unwrap_or(config.hard_approvals)
                    .max(1),
            ),
        };
        let approvers = if request.approvers.is_empty() {
            config.approvers.clone()
        } else {
            request.approvers.to_vec()
        };
        Approval {
            id: new_id(request.run_id),
            run_id: request.run_id.to_string(),
            principal: request.principal.to_string(),
            tool: request.tool.to_string(),
            plugin: request.plugin.to_string(),
            plugin_digest: request.plugin_digest.to_string(),
            input: request.input.to_string(),
            input_sha256: input_hash(request.input),
            decisions: request.decisions.clone(),
            tier: request.tier,
            reasons: request.reasons.to_vec(),
            approvers,
            required,
            created_ms: request.now_ms,
            expires_ms: request.now_ms + i64::from(timeout) * 1000,
            state: State::Pending,
            state_ms: request.now_ms,
            result: None,
            votes: Vec::new(),
        }
    }

    /// Queue `a` (and its webhook notice) in one commit; durable when this returns.
    pub async fn insert(&self, a: &Approval, notice: Option<&str>) -> Result<(), ApprovalError> {
        let a = a.clone();
        let notice = notice.map(str::to_string);
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO approvals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, NULL, NULL)",
                params![
                    a.id,
                    a.run_id,
                    a.principal,
                    a.tool,
                    a.plugin,
                    a.plugin_digest,
                    a.input,
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
        load(&conn, id).map_err(|e| self.store(e))
    }

    /// Requests, newest first, optionally in one state.
    pub fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Approval>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM approvals WHERE (?1 IS NULL OR state = ?1)
                     ORDER BY created_ms DESC, id DESC LIMIT ?2",
                )
                .map_err(|e| self.store(e))?;
            let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            stmt.query_map(params![state.map(State::as_str), limit], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(a) = load(&conn, &id).map_err(|e| self.store(e))? {
                out.push(a);
            }
        }
        Ok(out)
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
        let principal = ballot.principal.to_string();
        let reason = ballot.reason.map(str::to_string);
        let (verdict, via, now_ms) = (ballot.verdict, ballot.via.to_string(), ballot.now_ms);
        self.write(move |tx| {
            let mut a = load(tx, &id)?.ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
            if a.state == State::Pending && now_ms >= a.expires_ms {
                // Settled now, in this commit, and then refused below.
                settle_expired(tx, &mut a, now_ms)?;
                return Ok(Err(already(&a)));
            }
            if a.state != State::Pending {
                return Err(already(&a));
            }
            may_decide(&config, &a, &principal)?;
            if a.votes.iter().any(|v| v.principal == principal) {
                return Err(ApprovalError::AlreadyDecided {
                    id: a.id.clone(),
                    state: "pending",
                    detail: format!(" ({principal} has already approved it)"),
                });
            }
            let name = match verdict {
                Verdict::Approve => "approve",
                Verdict::Reject => "reject",
            };
            add_vote(
                tx,
                &mut a,
                &principal,
                name,
                reason.as_deref(),
                &via,
                now_ms,
            )?;
            let next = match verdict {
                Verdict::Reject => Some(State::Rejected),
                Verdict::Approve if a.approvals() >= a.required as usize => Some(State::Approved),
                Verdict::Approve => None,
            };
            if let Some(next) = next {
                let result = (next == State::Rejected).then(|| {
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
            .is_some_and(|a| a.state == State::Pending && now_ms >= a.expires_ms);
        if !due {
            return Ok(None);
        }
        let id = id.to_string();
        self.write(move |tx| {
            let Some(mut a) = load(tx, &id)? else {
                return Ok(None);
            };
            if a.state == State::Pending && now_ms >= a.expires_ms {
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
    /// process, and marking its votes audited (the caller has written them to the
    /// audit log). `None` when it is not approved (another process claimed it first,
    /// or it was never approved).
    pub async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<Approval>, ApprovalError> {
        let id = id.to_string();
        self.write(move |tx| {
            let changed = tx.execute(
                "UPDATE approvals SET state = 'executing', state_ms = ?2, claimed_by = ?3
                 WHERE id = ?1 AND state = 'approved'",
                params![id, now_ms, std::process::id()],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            tx.execute(
                "UPDATE approval_votes SET audited = 1 WHERE approval_id = ?1",
                [&id],
            )?;
            Ok(load(tx, &id)?)
        })
        .await
    }

    /// End a claimed request: `executed` (the tool ran, whatever it returned) or
    /// `failed` (refused or interrupted before or while running).
    pub async fn finish(
        &self,
        id: &str,
        state: State,
        result: &str,
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        let (id, result) = (id.to_string(), result.to_string());
        self.write_with(false, move |tx| {
            tx.execute(
                "UPDATE approvals SET state = ?2, state_ms = ?3, result = ?4
                 WHERE id = ?1 AND state = 'executing'",
                params![id, state.as_str(), now_ms, result],
            )?;
            Ok(())
        })
        .await
    }

    /// Requests left `executing` by a process that is gone end `failed`: the tool may
    /// have run, so running it again could do its effect twice. Returns them.
    pub async fn recover(&self, now_ms: i64) -> Result<Vec<Approval>, ApprovalError> {
        let stuck: Vec<(String, i64)> = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, coalesce(claimed_by, 0) FROM approvals WHERE state = 'executing'",
                )
                .map_err(|e| self.store(e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for (id, pid) in stuck {
            if process_alive(pid) {
                continue;
            }
            let why = "interrupted: warden stopped while the tool ran; not run again (it may have had its effect)";
            let key = id.clone();
            self.write(move |tx| {
                tx.execute(
                    "UPDATE approvals SET state = 'failed', state_ms = ?2, result = ?3
                     WHERE id = ?1 AND state = 'executing'",
                    params![key, now_ms, why],
                )?;
                Ok(())
            })
            .await?;
            out.extend(self.get(&id)?);
        }
        Ok(out)
    }

    /// Votes not yet in the audit log, oldest first, with their request.
    pub fn unaudited_votes(&self) -> Result<Vec<(Approval, Vote)>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<(String, i64)> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT approval_id, seq FROM approval_votes WHERE audited = 0 ORDER BY at_ms, seq",
                )
                .map_err(|e| self.store(e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.store(e))?
        };
        let mut out = Vec::new();
        for (id, seq) in keys {
            if let Some(a) = load(&conn, &id).map_err(|e| self.store(e))?
                && let Some(v) = a.votes.iter().find(|v| v.seq == seq).cloned()
            {
                out.push((a, v));
            }
        }
        Ok(out)
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
fn commit_batch(conn: &mut Connection, batch: Vec<Job>) {
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

/// May `principal` vote on `a`? Never on its own request; otherwise only if named by
/// the request's approvers, directly or through a configured group.
pub fn may_decide(
    config: &ApprovalsConfig,
    a: &Approval,
    principal: &str,
) -> Result<(), ApprovalError> {
    let refuse = |why: String| ApprovalError::NotAllowed {
        id: a.id.clone(),
        principal: principal.to_string(),
        why,
    };
    if principal == a.principal {
        return Err(refuse(
            "nobody may approve or reject their own request".into(),
        ));
    }
    if principal == "warden" {
        return Err(refuse("`warden` is the queue's own principal".into()));
    }
    if a.approvers.is_empty() {
        return Err(refuse(
            "the request names no approvers and [approvals] approvers is empty".into(),
        ));
    }
    if expand(config, &a.approvers).iter().any(|p| p == principal) {
        Ok(())
    } else {
        Err(refuse(format!(
            "not among the approvers ({})",
            a.approvers.join(", ")
        )))
    }
}

/// Approver entries as principals: `group:NAME` replaced by its members.
pub fn expand(config: &ApprovalsConfig, approvers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in approvers {
        let members = match entry.strip_prefix("group:") {
            Some(group) => config.groups.get(group).cloned().unwrap_or_default(),
            None => vec![entry.clone()],
        };
        for m in members {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

fn already(a: &Approval) -> ApprovalError {
    let detail = match a.votes.last() {
        Some(v) if v.principal == "warden" => format!(" ({} at {} ms)", v.vote, v.at_ms),
        Some(v) => format!(" (last decided by {}: {})", v.principal, v.vote),
        None => a
            .result
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    };
    ApprovalError::AlreadyDecided {
        id: a.id.clone(),
        state: a.state.as_str(),
        detail,
    }
}

/// A pending request whose time ran out: soft runs (nobody rejected it), hard expires.
fn settle_expired(tx: &Connection, a: &mut Approval, now_ms: i64) -> rusqlite::Result<()> {
    match a.tier {
        Hold::Soft => {
            add_vote(
                tx,
                a,
                "warden",
                "window",
                Some("soft window passed with no rejection"),
                "queue",
                now_ms,
            )?;
            set_state(tx, a, State::Approved, None, now_ms)
        }
        Hold::Hard => {
            let why = format!(
                "hard approval timed out after {} s ({} of {} approvals)",
                (a.expires_ms - a.created_ms) / 1000,
                a.approvals(),
                a.required
            );
            add_vote(tx, a, "warden", "expire", Some(&why), "queue", now_ms)?;
            set_state(tx, a, State::Expired, Some(why), now_ms)
        }
    }
}

fn add_vote(
    tx: &Connection,
    a: &mut Approval,
    principal: &str,
    vote: &str,
    reason: Option<&str>,
    via: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let seq = a.votes.len() as i64 + 1;
    tx.execute(
        "INSERT INTO approval_votes (approval_id, seq, principal, vote, reason, input_sha256, at_ms, via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![a.id, seq, principal, vote, reason, a.input_sha256, now_ms, via],
    )?;
    a.votes.push(Vote {
        seq,
        principal: principal.to_string(),
        vote: vote.to_string(),
        reason: reason.map(str::to_string),
        input_sha256: a.input_sha256.clone(),
        at_ms: now_ms,
        via: via.to_string(),
        audited: false,
    });
    Ok(())
}

fn set_state(
    tx: &Connection,
    a: &mut Approval,
    state: State,
    result: Option<String>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE approvals SET state = ?2, state_ms = ?3, result = coalesce(?4, result) WHERE id = ?1",
        params![a.id, state.as_str(), now_ms, result],
    )?;
    a.state = state;
    a.state_ms = now_ms;
    if result.is_some() {
        a.result = result;
    }
    Ok(())
}

fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Approval>> {
    let json_list =
        |text: String| -> Vec<String> { serde_json::from_str(&text).unwrap_or_default() };
    let a = conn
        .prepare_cached(
            "SELECT id, run_id, principal, tool, plugin, plugin_digest, input, input_sha256,
                    decisions, tier, reasons, approvers, required, created_ms, expires_ms,
                    state, state_ms, result
             FROM approvals WHERE id = ?1",
        )?
        .query_row([id], |r| {
            let tier: String = r.get(9)?;
            let state: String = r.get(15)?;
            Ok(Approval {
                id: r.get(0)?,
                run_id: r.get(1)?,
                principal: r.get(2)?,
                tool: r.get(3)?,
                plugin: r.get(4)?,
                plugin_digest: r.get(5)?,
                input: r.get(6)?,
                input_sha256: r.get(7)?,
                decisions: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
                tier: if tier == "hard" {
                    Hold::Hard
                } else {
                    Hold::Soft
                },
                reasons: json_list(r.get(10)?),
                approvers: json_list(r.get(11)?),
                required: r.get(12)?,
                created_ms: r.get(13)?,
                expires_ms: r.get(14)?,
                // An unknown state (a hand-edited row) is treated as failed: never run.
                state: State::parse(&state).unwrap_or(State::Failed),
                state_ms: r.get(16)?,
                result: r.get(17)?,
                votes: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut a) = a else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, principal, vote, reason, input_sha256, at_ms, via, audited FROM approval_votes
         WHERE approval_id = ?1 ORDER BY seq",
    )?;
    a.votes = stmt
        .query_map([id], |r| {
            Ok(Vote {
                seq: r.get(0)?,
                principal: r.get(1)?,
                vote: r.get(2)?,
                reason: r.get(3)?,
                input_sha256: r.get(4)?,
                at_ms: r.get(5)?,
                via: r.get(6)?,
                audited: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(a))
}

pub fn tier_name(tier: Hold) -> &'static str {
    match tier {
        Hold::Soft => "soft",
        Hold::Hard => "hard",
    }
}

/// An approval id derived from its run id (one request per run).
fn new_id(run_id: &str) -> String {
    format!("apr-{}", run_id.strip_prefix("run-").unwrap_or(run_id))
}

fn process_alive(pid: i64) -> bool {
    pid > 0 && (pid == i64::from(std::process::id()) || Path::new(&format!("/proc/{pid}")).exists())
}
