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
//! change is acknowledged only once its commit is durable.
//!
//! A request is approved when every policy that held it has its own approvals: the
//! approvers one policy names never satisfy another's hold. A vote carries the input
//! hash its voter was shown, and one cast on another input is refused. A held input
//! is sealed under the vault's key while it waits and removed once the request ends.
//!
//! It must never let a request execute twice: only the `approved -> executing` claim
//! grants execution; the claim names its process by a lock file the kernel releases
//! when the process dies (never by pid, which a restart or pid reuse makes lie), and a
//! claim whose process is gone ends `failed` rather than being retried (the tool may
//! already have had its effect). It never runs tools itself; `runtime::Runtime` does,
//! after a claim.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::call::{ApprovalRef, ApprovalState, PolicyHold, Tier, Vote};
use crate::config::ApprovalsConfig;

/// One holding policy's share of a request: who may approve for it, and how many
/// distinct approvals it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSet {
    pub policy: String,
    pub tier: Tier,
    /// Principals or `group:NAME` (the configured default when the policy named none).
    pub approvers: Vec<String>,
    pub required: u32,
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
    pub tier: Tier,
    pub reasons: Vec<String>,
    /// Principals or `group:NAME` who may decide (every holding policy's).
    pub approvers: Vec<String>,
    /// The most distinct approvals any one hold needs.
    pub required: u32,
    /// Each holding policy's approvers and approvals; all must be satisfied.
    pub holds: Vec<HoldSet>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub state: ApprovalState,
    pub state_ms: i64,
    /// The outcome or why it ended, once it has.
    pub result: Option<String>,
    pub votes: Vec<Vote>,
}

impl Approval {
    /// What a call report shows of this request.
    pub fn reference(&self, held_by: Value) -> ApprovalRef {
        let a = self;
        ApprovalRef {
            id: a.id.clone(),
            state: a.state,
            input_sha256: a.input_sha256.clone(),
            expires_ms: a.expires_ms,
            approvals_required: a.required,
            votes: a.votes.clone(),
            held_by,
        }
    }
}

impl Approval {
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.vote == "approve").count()
    }

    /// For each hold, the distinct approvals it has from its own approvers.
    pub fn progress(&self, config: &ApprovalsConfig) -> Vec<(String, u32, u32)> {
        self.holds
            .iter()
            .map(|h| {
                let allowed = expand(config, &h.approvers);
                let mut by: Vec<&str> = self
                    .votes
                    .iter()
                    .filter(|v| v.vote == "approve" && allowed.contains(&v.principal))
                    .map(|v| v.principal.as_str())
                    .collect();
                by.sort_unstable();
                by.dedup();
                (h.policy.clone(), by.len() as u32, h.required)
            })
            .collect()
    }

    /// Has every hold its approvals?
    pub fn satisfied(&self, config: &ApprovalsConfig) -> bool {
        self.progress(config)
            .iter()
            .all(|(_, have, need)| have >= need)
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
    pub tier: Tier,
    pub reasons: &'a [String],
    /// Each holding policy with the approvers it named (the configured default applies
    /// to a policy that named none).
    pub holds: &'a [PolicyHold],
    pub timeout_secs: Option<u32>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Approve,
    Reject,
}

/// One principal's decision on a request.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    /// Who decides (proved by their token or their link).
    pub principal: &'a str,
    pub choice: Choice,
    pub reason: Option<&'a str>,
    /// `cli`, `link` or `api`.
    pub via: &'a str,
    /// The input hash the decider was shown: a vote on another input is refused.
    pub input_sha256: &'a str,
    /// Break-glass: an operator (`principal`) decides for this approver, and the vote
    /// says so.
    pub on_behalf_of: Option<&'a str>,
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
    #[error(
        "approval {id}: the input you were shown ({shown}) is not the request's ({actual}); look at it again"
    )]
    InputChanged {
        id: String,
        shown: String,
        actual: String,
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
    /// One lock per request, held while its votes go to the audit log and while it is
    /// claimed, so two tasks of this process never audit a vote twice; requests never
    /// wait for each other.
    locks: Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    sealer: Arc<Option<Sealer>>,
    owner: Owner,
}

/// Seals held inputs under a key derived from the vault's master key.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
}

impl Sealer {
    /// A sealer whose key is derived from the vault's master key.
    pub fn new(master: &[u8; 32]) -> Sealer {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(
            &Sha256::new()
                .chain_update(b"warden-approvals-input-1\n")
                .chain_update(master)
                .finalize(),
        );
        Sealer { key }
    }

    fn seal(&self, id: &str, input: &str) -> Result<String, String> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()));
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: input.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| "cannot seal the input".to_string())?;
        Ok(format!("{}:{}", B64.encode(nonce), B64.encode(ct)))
    }

    fn open(&self, id: &str, sealed: &str) -> Option<String> {
        let (nonce, ct) = sealed.split_once(':')?;
        let nonce = B64.decode(nonce).ok().filter(|n| n.len() == 24)?;
        let ct = B64.decode(ct).ok()?;
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()));
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: id.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// What a sealed input reads as without the key (or after tampering).
pub const SEALED: &str = "[sealed: the vault's master key is needed to read this input]";
/// What an ended request's input reads as: it ran (or never will) and its run keeps
/// the redacted input.
pub const REMOVED: &str = "[removed when the request ended: `warden runs show` has it, redacted]";

/// This process, as claims name it: a token and a lock file (`owners/<token>.lock`)
/// it holds until it exits. The kernel drops the lock when the process dies, however
/// it dies, so another process can tell a live claim from an orphaned one.
struct Owner {
    token: String,
    dir: PathBuf,
    _lock: File,
}

impl Owner {
    fn take(dir: &Path) -> std::io::Result<Owner> {
        std::fs::create_dir_all(dir)?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
        let token = hex::encode(raw);
        let lock = File::create(dir.join(format!("{token}.lock")))?;
        lock.lock()?;
        Ok(Owner {
            token,
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Is the process that took `token` gone? (Its lock file is free or missing.)
    fn is_gone(&self, token: &str) -> bool {
        if token == self.token {
            return false;
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            // A pid from an older warden, or garbage: no lock can prove it alive.
            return true;
        }
        let path = self.dir.join(format!("{token}.lock"));
        match File::open(&path) {
            Err(_) => true,
            Ok(f) => match f.try_lock() {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    true
                }
                Err(_) => false,
            },
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(format!("{}.lock", self.token)));
    }
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
    format!("sha256:{}", crate::util::sha256_hex(input.as_bytes()))
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

    /// The request a held call becomes (not yet queued: see `insert`).
    pub fn prepare(&self, config: &ApprovalsConfig, request: &NewRequest<'_>) -> Approval {
        let timeout = match request.tier {
            Tier::Soft => request.timeout_secs.unwrap_or(config.soft_window_secs),
            Tier::Hard => request.timeout_secs.unwrap_or(config.hard_timeout_secs),
        };
        let holds: Vec<HoldSet> = request
            .holds
            .iter()
            .map(|h| HoldSet {
                policy: h.policy.clone(),
                tier: h.tier,
                approvers: if h.approvers.is_empty() {
                    config.approvers.clone()
                } else {
                    h.approvers.clone()
                },
                required: match h.tier {
                    Tier::Soft => 1,
                    Tier::Hard => h.approvals_required.unwrap_or(config.hard_approvals).max(1),
                },
            })
            .collect();
        let mut approvers: Vec<String> = Vec::new();
        for h in &holds {
            for a in &h.approvers {
                if !approvers.contains(a) {
                    approvers.push(a.clone());
                }
            }
        }
        let required = holds.iter().map(|h| h.required).max().unwrap_or(1);
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
            holds,
            created_ms: request.now_ms,
            expires_ms: request.now_ms + i64::from(timeout) * 1000,
            state: ApprovalState::Pending,
            state_ms: request.now_ms,
            result: None,
            votes: Vec::new(),
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
                "INSERT INTO approvals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, NULL, NULL, ?18, NULL, ?19)",
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

    /// Requests, newest first, optionally in one state.
    pub fn list(
        &self,
        state: Option<ApprovalState>,
        limit: usize,
    ) -> Result<Vec<Approval>, ApprovalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<String> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM approvals WHERE (?1 IS NULL OR state = ?1)
                     ORDER BY created_ms DESC, id DESC LIMIT ?2",
                )
                .map_err(|e| self.store(e))?;
            let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
            stmt.query_map(params![state.map(ApprovalState::as_str), limit], |r| {
                r.get(0)
            })
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
    if a.holds.iter().all(|h| h.approvers.is_empty()) {
        return Err(refuse(
            "the request names no approvers and [approvals] approvers is empty".into(),
        ));
    }
    if a.holds
        .iter()
        .any(|h| expand(config, &h.approvers).iter().any(|p| p == principal))
    {
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
        Tier::Soft => {
            let sha = a.input_sha256.clone();
            add_vote(
                tx,
                a,
                Cast {
                    principal: "warden",
                    vote: "window",
                    reason: Some("soft window passed with no rejection"),
                    via: "queue",
                    input_sha256: &sha,
                },
                now_ms,
            )?;
            set_state(tx, a, ApprovalState::Approved, None, now_ms)
        }
        Tier::Hard => {
            let why = format!(
                "hard approval timed out after {} s ({} of {} approvals)",
                (a.expires_ms - a.created_ms) / 1000,
                a.approvals(),
                a.required
            );
            let sha = a.input_sha256.clone();
            add_vote(
                tx,
                a,
                Cast {
                    principal: "warden",
                    vote: "expire",
                    reason: Some(&why),
                    via: "queue",
                    input_sha256: &sha,
                },
                now_ms,
            )?;
            set_state(tx, a, ApprovalState::Expired, Some(why), now_ms)
        }
    }
}

/// One vote to add.
struct Cast<'a> {
    principal: &'a str,
    vote: &'a str,
    reason: Option<&'a str>,
    via: &'a str,
    /// The input hash the voter was shown.
    input_sha256: &'a str,
}

fn add_vote(
    tx: &Connection,
    a: &mut Approval,
    cast: Cast<'_>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let seq = a.votes.len() as i64 + 1;
    tx.execute(
        "INSERT INTO approval_votes (approval_id, seq, principal, vote, reason, input_sha256, at_ms, via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![a.id, seq, cast.principal, cast.vote, cast.reason, cast.input_sha256, now_ms, cast.via],
    )?;
    a.votes.push(Vote {
        seq,
        principal: cast.principal.to_string(),
        vote: cast.vote.to_string(),
        reason: cast.reason.map(str::to_string),
        input_sha256: cast.input_sha256.to_string(),
        at_ms: now_ms,
        via: cast.via.to_string(),
        audited: false,
    });
    Ok(())
}

fn set_state(
    tx: &Connection,
    a: &mut Approval,
    state: ApprovalState,
    result: Option<String>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE approvals SET state = ?2, state_ms = ?3, result = coalesce(?4, result) WHERE id = ?1",
        params![a.id, state.as_str(), now_ms, result],
    )?;
    if state.is_final() {
        // It will never run: its input (which may hold a secret) has no reason to stay.
        tx.execute(
            "UPDATE approvals SET input = ?2, sealed = 0 WHERE id = ?1",
            params![a.id, REMOVED],
        )?;
    }
    a.state = state;
    a.state_ms = now_ms;
    if result.is_some() {
        a.result = result;
    }
    Ok(())
}

fn load(
    conn: &Connection,
    id: &str,
    sealer: Option<&Sealer>,
) -> rusqlite::Result<Option<Approval>> {
    let json_list =
        |text: String| -> Vec<String> { serde_json::from_str(&text).unwrap_or_default() };
    let a = conn
        .prepare_cached(
            "SELECT id, run_id, principal, tool, plugin, plugin_digest, input, input_sha256,
                    decisions, tier, reasons, approvers, required, created_ms, expires_ms,
                    state, state_ms, result, holds, sealed
             FROM approvals WHERE id = ?1",
        )?
        .query_row([id], |r| {
            let stored_tier: String = r.get(9)?;
            let state: String = r.get(15)?;
            let id: String = r.get(0)?;
            let stored: String = r.get(6)?;
            let sealed: bool = r.get(19)?;
            let input = if sealed {
                sealer
                    .and_then(|s| s.open(&id, &stored))
                    .unwrap_or_else(|| SEALED.to_string())
            } else {
                stored
            };
            let approvers = json_list(r.get(11)?);
            let required: u32 = r.get(12)?;
            // An unknown tier or state (a hand-edited row) fails closed: never run.
            let (tier, known_tier) = match stored_tier.as_str() {
                "soft" => (Tier::Soft, true),
                "hard" => (Tier::Hard, true),
                _ => (Tier::Hard, false),
            };
            let mut state = ApprovalState::parse(&state).unwrap_or(ApprovalState::Failed);
            let mut result: Option<String> = r.get(17)?;
            if !known_tier && !state.is_final() {
                state = ApprovalState::Failed;
                result = Some(format!(
                    "the stored tier {stored_tier:?} is not one warden knows: not run (fail closed)"
                ));
            }
            // Requests from before per-policy holds: one hold with every approver.
            let holds = r
                .get::<_, Option<String>>(18)?
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_else(|| {
                    vec![HoldSet {
                        policy: "*".into(),
                        tier,
                        approvers: approvers.clone(),
                        required,
                    }]
                });
            Ok(Approval {
                id,
                run_id: r.get(1)?,
                principal: r.get(2)?,
                tool: r.get(3)?,
                plugin: r.get(4)?,
                plugin_digest: r.get(5)?,
                input,
                input_sha256: r.get(7)?,
                decisions: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
                tier,
                reasons: json_list(r.get(10)?),
                approvers,
                required,
                holds,
                created_ms: r.get(13)?,
                expires_ms: r.get(14)?,
                state,
                state_ms: r.get(16)?,
                result,
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

pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Soft => "soft",
        Tier::Hard => "hard",
    }
}

/// An approval id derived from its run id (one request per run).
fn new_id(run_id: &str) -> String {
    format!("apr-{}", run_id.strip_prefix("run-").unwrap_or(run_id))
}
