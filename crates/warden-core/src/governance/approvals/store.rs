//! The queue in a store: the embedded SQLite file, or the PostgreSQL several hosts
//! share (`[store] url`). One writer thread commits batches of changes (each change in
//! its own savepoint), reads run on their own connection, per-request locks keep this
//! process's tasks apart, and every state change of a request is here, written once
//! for both backends (`crate::store::sql`).
//!
//! It must never acknowledge a change before its commit is durable, nor let two
//! processes (or hosts) claim one request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::call::{ApprovalState, Tier, Vote};
use crate::config::ApprovalsConfig;
use crate::store::postgres::{PgDb, Target};
use crate::store::sql::{LiteDb, Sql, SqlError, Val, vals};

use super::owner::Owner;

mod audited;
mod notices;
mod rows;
mod threads;

use super::rules::already;
use super::{
    Approval, ApprovalError, Ballot, Choice, HoldSet, Notice, REMOVED, Ran, SEALED, Sealer,
    may_decide, tier_name,
};
use crate::store::conn::Conn;
use rows::{Cast, add_vote, load, set_state, settle_expired};
use threads::{Heartbeat, Job, Reply, RunJob};

/// The queue over one store.
pub struct ApprovalQueue {
    /// For reads; every change goes through the writer thread.
    reads: Conn,
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The store, as errors name it (a file, or the server without its password).
    path: String,
    /// Woken on every change this process makes (and, on the shared store, every
    /// change another host makes), so local waiters need not poll.
    pub changed: Arc<tokio::sync::Notify>,
    /// One lock per request, held while its votes go to the audit log and while it is
    /// claimed, so two tasks of this process never audit a vote twice; requests never
    /// wait for each other.
    locks: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    sealer: Arc<Option<Sealer>>,
    holder: Holder,
    /// The shared store's listener thread, and what stops it.
    listener: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// Who a claim names, and how a claim whose holder died is told from a live one.
enum Holder {
    /// This process, by a lock file the kernel releases when it dies (one data dir).
    Process(Owner),
    /// This host, by its heartbeat in the shared store: a claim whose host has not
    /// been seen for `lease` is orphaned.
    Host { token: String, lease: Duration },
}

impl Holder {
    fn token(&self) -> &str {
        match self {
            Holder::Process(o) => &o.token,
            Holder::Host { token, .. } => token,
        }
    }
}

impl From<SqlError> for ApprovalError {
    fn from(e: SqlError) -> ApprovalError {
        // The path is filled in by `ApprovalQueue::write` and `read`.
        ApprovalError::Store {
            path: String::new(),
            message: e.0,
        }
    }
}

impl ApprovalQueue {
    /// The queue in the embedded store at `path`, sealing held inputs with `sealer`
    /// when given.
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
        let reads = Conn::local(LiteDb(crate::store::db::open(path, true).map_err(store)?));
        let writer = LiteDb(crate::store::db::open(path, true).map_err(store)?);
        Self::start(
            shown,
            reads,
            Box::new(writer),
            Holder::Process(owner),
            sealer,
            None,
        )
    }

    /// The queue in the PostgreSQL at `target`, shared with other hosts: a claim holds
    /// for `lease` past this host's last heartbeat (sent every third of it); `host`
    /// names this host in the heartbeats.
    pub fn open_shared(
        target: &Target,
        lease: Duration,
        host: &str,
        sealer: Option<Sealer>,
    ) -> Result<ApprovalQueue, ApprovalError> {
        let shown = target.shown.clone();
        let store = |message: String| ApprovalError::Store {
            path: shown.clone(),
            message,
        };
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| store(e.to_string()))?;
        let token = hex::encode(raw);
        // The driver's blocking calls must not run on an async runtime's thread (it
        // refuses to nest runtimes): connections are made on a thread of their own.
        let (first, them, name) = (token.clone(), target.clone(), host.to_string());
        let (writer, reader) = std::thread::spawn(move || -> Result<(PgDb, PgDb), SqlError> {
            let mut writer = PgDb::open(&them)?;
            // Seen before its first claim, so no other host takes that claim for orphaned.
            crate::store::sql::Db::transaction(&mut writer, true, &mut |sql| {
                threads::forget_old_hosts(sql)?;
                threads::beat(sql, &first, &name)
            })?;
            Ok((writer, PgDb::open(&them)?))
        })
        .join()
        .map_err(|_| store("connecting panicked".into()))?
        .map_err(|e| store(e.0))?;
        let reads = Conn::thread(reader, "warden-approvals-read")
            .map_err(|e| store(format!("cannot start the reader: {e}")))?;
        let mut queue = Self::start(
            shown.clone(),
            reads,
            Box::new(writer),
            Holder::Host {
                token: token.clone(),
                lease,
            },
            sealer,
            Some(Heartbeat {
                token,
                host: host.to_string(),
                every: lease / 3,
            }),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = threads::listen(target.clone(), queue.changed.clone(), stop.clone())
            .map_err(|e| store(format!("cannot start the listener: {e}")))?;
        queue.listener = Some((stop, listener));
        Ok(queue)
    }

    fn start(
        shown: String,
        reads: Conn,
        mut writer_db: Box<dyn crate::store::sql::Db>,
        holder: Holder,
        sealer: Option<Sealer>,
        heartbeat: Option<Heartbeat>,
    ) -> Result<ApprovalQueue, ApprovalError> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let notify = changed.clone();
        let writer = std::thread::Builder::new()
            .name("warden-approvals".into())
            .spawn(move || threads::write_loop(&mut *writer_db, rx, notify, heartbeat))
            .map_err(|e| ApprovalError::Store {
                path: shown.clone(),
                message: format!("cannot start the writer: {e}"),
            })?;
        Ok(ApprovalQueue {
            reads,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            path: shown,
            changed,
            locks: Mutex::default(),
            sealer: Arc::new(sealer),
            holder,
            listener: None,
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

    /// An error of this store, naming it.
    fn named(&self, e: ApprovalError) -> ApprovalError {
        match e {
            ApprovalError::Store { path, message } if path.is_empty() => ApprovalError::Store {
                path: self.path.clone(),
                message,
            },
            other => other,
        }
    }

    /// Run `f`'s reads on the queue's read connection.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        self.reads.read(f).map_err(|e| self.named(e.into()))
    }

    /// Run `f` in the writer's next transaction; its changes are durable when this
    /// returns `Ok`, and undone when `f` fails.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, ApprovalError> + Send + 'static,
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
        f: impl FnOnce(&mut dyn Sql) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Whichever of `run` and `fail` the writer calls answers the caller.
        let tx = Arc::new(Mutex::new(Some(tx)));
        let answer = tx.clone();
        let run: RunJob = Box::new(move |sql: &mut dyn Sql| {
            let out = f(sql);
            let ok = out.is_ok();
            let reply: Reply = Box::new(move |committed| {
                let result = match committed {
                    Ok(()) => out,
                    Err(message) => Err(ApprovalError::Store {
                        path: String::new(),
                        message,
                    }),
                };
                if let Some(tx) = answer.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(result);
                }
            });
            (ok, reply)
        });
        let fail: Reply = Box::new(move |committed| {
            let message = committed.err().unwrap_or_default();
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(Err(ApprovalError::Store {
                    path: String::new(),
                    message,
                }));
            }
        });
        let job = Job { run, fail, durable };
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
            Ok(result) => result.map_err(|e| self.named(e)),
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
                "INSERT INTO approvals (id, run_id, principal, tool, plugin, plugin_digest, input,
                     input_sha256, decisions, tier, reasons, approvers, required, created_ms,
                     expires_ms, state, state_ms, holds, sealed, started_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
                vals![
                    &a.id,
                    &a.run_id,
                    &a.principal,
                    &a.tool,
                    &a.plugin,
                    &a.plugin_digest,
                    input,
                    &a.input_sha256,
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
                    a.started_by.clone(),
                ],
            )?;
            if let Some(payload) = notice {
                tx.execute(
                    "INSERT INTO approval_notices (approval_id, payload, next_ms) VALUES (?1, ?2, ?3)",
                    vals![&a.id, payload, a.created_ms],
                )?;
            }
            Ok(())
        })
        .await
    }

    pub fn get(&self, id: &str) -> Result<Option<Approval>, ApprovalError> {
        let (id, sealer) = (id.to_string(), self.sealer.clone());
        self.read(move |sql| load(sql, &id, sealer.as_ref().as_ref(), false))
    }

    /// Requests, newest first, optionally in one state; with `before` (a request's
    /// `created_ms` and id), only those older than it: the next page after it.
    pub fn list(
        &self,
        state: Option<ApprovalState>,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Approval>, ApprovalError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let before = before.map(|(ms, id)| (ms, id.to_string()));
        let sealer = self.sealer.clone();
        // Only the conditions given are in the SQL, so each uses its index (a `?N IS
        // NULL OR` disjunction would keep SQLite from it).
        let mut query = String::from("SELECT id FROM approvals WHERE 1 = 1");
        let mut params = vec![Val::from(limit)];
        if let Some(state) = state {
            params.push(state.as_str().into());
            query += &format!(" AND state = ?{}", params.len());
        }
        if let Some((ms, id)) = before {
            params.extend([Val::from(ms), Val::from(id)]);
            let (m, i) = (params.len() - 1, params.len());
            query += &format!(" AND created_ms <= ?{m} AND (created_ms < ?{m} OR id < ?{i})");
        }
        query += " ORDER BY created_ms DESC, id DESC LIMIT ?1";
        self.read(move |sql| {
            let ids = sql.query(&query, &params)?;
            let mut out = Vec::new();
            for row in ids {
                if let Some(a) = load(sql, &row.text(0)?, sealer.as_ref().as_ref(), false)? {
                    out.push(a);
                }
            }
            Ok(out)
        })
    }

    /// One integer (or none) a query returns.
    fn scalar(&self, query: &'static str) -> Result<Option<i64>, ApprovalError> {
        self.read(move |sql| sql.query_one(query, &[])?.opt_int(0))
    }

    /// When the clock alone next changes something: the earliest expiry (or soft
    /// window's end) of a pending request. A driver sleeps until then, not on a poll.
    pub fn next_expiry_ms(&self) -> Result<Option<i64>, ApprovalError> {
        self.scalar("SELECT min(expires_ms) FROM approvals WHERE state = 'pending'")
    }

    /// How many requests are pending and when the newest of them was made: what a
    /// watcher compares to see the inbox changed (in this process or another).
    pub fn pending_mark(&self) -> Result<(u64, i64), ApprovalError> {
        self.read(|sql| {
            let r = sql.query_one(
                "SELECT count(*), coalesce(max(created_ms), 0) FROM approvals WHERE state = 'pending'",
                &[],
            )?;
            Ok((r.int(0)? as u64, r.int(1)?))
        })
    }

    /// How many requests are pending.
    pub fn pending(&self) -> Result<u64, ApprovalError> {
        Ok(self
            .scalar("SELECT count(*) FROM approvals WHERE state = 'pending'")?
            .unwrap_or(0) as u64)
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
        let by = self.holder.token().to_string();
        self.write(move |tx| {
            let mut a = load(tx, &id, sealer.as_ref().as_ref(), true)?
                .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
            if a.state == ApprovalState::Pending && now_ms >= a.expires_ms {
                // Settled now, in this commit, and then refused below.
                settle_expired(tx, &mut a, &by, now_ms)?;
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
                    by: &by,
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
        let due: Vec<String> = self.read(move |sql| {
            sql.query(
                "SELECT id FROM approvals WHERE state = 'pending' AND expires_ms <= ?1",
                vals![now_ms],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })?;
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
        let by = self.holder.token().to_string();
        self.write(move |tx| {
            let Some(mut a) = load(tx, &id, sealer.as_ref().as_ref(), true)? else {
                return Ok(None);
            };
            if a.state == ApprovalState::Pending && now_ms >= a.expires_ms {
                settle_expired(tx, &mut a, &by, now_ms)?;
                return Ok(Some(a));
            }
            Ok(None)
        })
        .await
    }

    /// Approved requests waiting to run.
    pub fn approved(&self) -> Result<Vec<String>, ApprovalError> {
        self.ids("SELECT id FROM approvals WHERE state = 'approved' ORDER BY state_ms")
    }

    /// The first column of a query's rows.
    fn ids(&self, query: &'static str) -> Result<Vec<String>, ApprovalError> {
        self.read(move |sql| sql.query(query, &[])?.iter().map(|r| r.text(0)).collect())
    }

    /// Take the right to execute `id`: `approved -> executing`, recording this
    /// process (by its owner lock, or this host by its token), and marking votes
    /// `audited` (the caller has written them to its audit log), in one commit. The
    /// votes are marked whether or not the claim is won. `None` when it is not
    /// approved (another process claimed it first, or it was never approved).
    pub async fn claim(
        &self,
        id: &str,
        audited: Vec<i64>,
        now_ms: i64,
    ) -> Result<Option<Approval>, ApprovalError> {
        let id = id.to_string();
        let owner = self.holder.token().to_string();
        let sealer = self.sealer.clone();
        self.write(move |tx| {
            for seq in &audited {
                tx.execute(
                    "UPDATE approval_votes SET audited = 1 WHERE approval_id = ?1 AND seq = ?2",
                    vals![&id, *seq],
                )?;
            }
            let changed = tx.execute(
                "UPDATE approvals SET state = 'executing', state_ms = ?2, owner = ?3
                 WHERE id = ?1 AND state = 'approved'",
                vals![&id, now_ms, owner],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            Ok(load(tx, &id, sealer.as_ref().as_ref(), false)?)
        })
        .await
    }

    /// End a claimed request: `executed` (the tool ran, whatever it returned, `ran`
    /// says what) or `failed` (refused or interrupted before or while running).
    pub async fn finish(
        &self,
        id: &str,
        state: ApprovalState,
        result: &str,
        ran: Option<&Ran>,
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        let (id, result) = (id.to_string(), result.to_string());
        let ran = ran.and_then(|r| serde_json::to_string(r).ok());
        self.write_with(false, move |tx| {
            tx.execute(
                "UPDATE approvals SET state = ?2, state_ms = ?3, result = ?4, input = ?5, sealed = 0,
                     outcome = ?6
                 WHERE id = ?1 AND state = 'executing'",
                vals![id, state.as_str(), now_ms, result, REMOVED, ran],
            )?;
            Ok(())
        })
        .await
    }

    /// What the run of executed request `id` returned, wherever it ran.
    pub fn ran(&self, id: &str) -> Result<Option<Ran>, ApprovalError> {
        let id = id.to_string();
        let text = self.read(move |sql| {
            sql.query_opt("SELECT outcome FROM approvals WHERE id = ?1", vals![id])?
                .map_or(Ok(None), |r| r.opt_text(0))
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Requests left `executing` by a process that is gone (its owner lock is free) or,
    /// on the shared store, by a host not seen for its lease, end `failed`: the tool
    /// may have run, so running it again could do its effect twice. Returns them.
    pub async fn recover(&self, now_ms: i64) -> Result<Vec<Approval>, ApprovalError> {
        const WHY: &str = "interrupted: warden stopped while the tool ran; not run again (it may have had its effect)";
        let owner = match &self.holder {
            Holder::Process(owner) => owner,
            Holder::Host { token, lease } => {
                let (token, lease) = (token.clone(), lease.as_millis() as i64);
                let ids: Vec<String> = self
                    .write(move |tx| {
                        let rows = tx.query(
                            "UPDATE approvals SET state = 'failed', state_ms = ?1, result = ?2, input = ?3, sealed = 0
                             WHERE state = 'executing' AND coalesce(owner, '') <> ?4
                               AND coalesce(owner, '') NOT IN (SELECT token FROM hosts
                                   WHERE seen_ms >= (extract(epoch from clock_timestamp()) * 1000)::bigint - ?5)
                             RETURNING id",
                            vals![now_ms, WHY, REMOVED, token, lease],
                        )?;
                        Ok(rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?)
                    })
                    .await?;
                let mut out = Vec::new();
                for id in ids {
                    out.extend(self.get(&id)?);
                }
                return Ok(out);
            }
        };
        let stuck: Vec<(String, String)> = self.read(|sql| {
            sql.query(
                "SELECT id, coalesce(owner, '') FROM approvals WHERE state = 'executing'",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
        })?;
        let mut out = Vec::new();
        for (id, holder) in stuck {
            if !owner.is_gone(&holder) {
                continue;
            }
            let key = id.clone();
            let found = self
                .write(move |tx| {
                    let changed = tx.execute(
                        "UPDATE approvals SET state = 'failed', state_ms = ?2, result = ?3, input = ?4, sealed = 0
                         WHERE id = ?1 AND state = 'executing' AND coalesce(owner, '') = ?5",
                        vals![key, now_ms, WHY, REMOVED, holder],
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
}

impl Drop for ApprovalQueue {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        if let Some((stop, listener)) = self.listener.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = listener.join();
        }
    }
}

#[cfg(test)]
mod tests;
