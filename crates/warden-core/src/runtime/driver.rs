//! The approval queue's driver: what the process holding the audit log does with the
//! queue (`approvals`): audit every vote, settle requests whose time ran out, run
//! approved calls once, end requests a crash interrupted, and deliver webhook notices
//! (on their own, so a slow webhook never delays an approved call).
//!
//! Votes may be cast by other processes (`warden approvals approve` while a server or
//! a waiting caller holds the log); they reach the audit log when a driver next looks.
//! A caller waiting on its held call gets that call's result, whoever ran it. It must
//! never run a call whose input or plugin is not the one that was approved, and only
//! runs a call after winning its claim.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::governance::approvals::Approval;

use crate::call::{ApprovalState, CallError, CallReport, Failure, LimitExceeded, Outcome};
use crate::runtime::Runtime;
use crate::runtime::record;
use crate::store::runs::RunRow;

/// Where a held call stands.
#[derive(Debug)]
pub enum Resume {
    /// Still waiting for a decision (or running, here or in another process).
    Pending(Approval),
    /// It ran (in this process or another): its result.
    Ran(Box<CallReport>),
    /// It ended without running: rejected, expired, refused or interrupted.
    Ended(Approval),
}

/// What one pass of the driver did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub settled: usize,
    pub ran: usize,
    pub recovered: usize,
}

/// The reports of the approved calls this process ran lately, kept for the callers
/// waiting on them (a server's driver runs a call an MCP client is waiting for).
/// Shared by a runtime and the ones that replace it on reload.
#[derive(Default)]
pub struct Finished {
    reports: Mutex<VecDeque<(String, Arc<CallReport>)>>,
}

/// How many finished reports are kept.
const FINISHED_KEPT: usize = 512;

impl Finished {
    fn publish(&self, approval: &str, report: CallReport) {
        if let Ok(mut reports) = self.reports.lock() {
            if reports.len() >= FINISHED_KEPT {
                reports.pop_front();
            }
            reports.push_back((approval.to_string(), Arc::new(report)));
        }
    }

    fn get(&self, approval: &str) -> Option<Arc<CallReport>> {
        let reports = self.reports.lock().ok()?;
        reports
            .iter()
            .rev()
            .find(|(id, _)| id == approval)
            .map(|(_, r)| r.clone())
    }
}

impl Runtime {
    fn queue_error(e: impl std::fmt::Display) -> CallError {
        CallError::NotRecorded(e.to_string())
    }

    fn queue(&self) -> Result<&Arc<crate::governance::approvals::ApprovalQueue>, CallError> {
        self.approvals
            .as_ref()
            .ok_or_else(|| CallError::NotRecorded("the approval queue is disabled".into()))
    }

    /// One pass over the whole queue (webhook notices are [`Runtime::deliver_notices`]).
    pub async fn drive(&self) -> Result<Pass, CallError> {
        if self.config.store.shared.is_some() {
            // Another host may have suspended or resumed something.
            self.refresh_suspensions()
                .map_err(|e| CallError::NotRecorded(e.to_string()))?;
        }
        let Some(queue) = &self.approvals else {
            return Ok(Pass::default());
        };
        if self.read_only {
            return Ok(Pass::default());
        }
        let now = crate::now_ms() as i64;
        let mut pass = Pass::default();
        for a in queue.recover(now).await.map_err(Self::queue_error)? {
            pass.recovered += 1;
            self.end_unrun(&a, true).await?;
        }
        pass.settled = queue
            .expire_due(now)
            .await
            .map_err(Self::queue_error)?
            .len();
        for id in queue.with_unaudited_votes().map_err(Self::queue_error)? {
            self.audit_votes(&id).await?;
        }
        for id in queue.approved().map_err(Self::queue_error)? {
            if self.claim_and_run(&id).await?.is_some() {
                pass.ran += 1;
            }
        }
        Ok(pass)
    }

    /// Bring `id` forward as far as it can go now.
    pub async fn resume(&self, id: &str) -> Result<Resume, CallError> {
        let queue = self.queue()?;
        let now = crate::now_ms() as i64;
        queue
            .expire_if_due(id, now)
            .await
            .map_err(Self::queue_error)?;
        let Some(a) = queue.get(id).map_err(Self::queue_error)? else {
            return Err(CallError::NotRecorded(format!("no approval request {id}")));
        };
        if a.state == ApprovalState::Approved
            && !self.read_only
            && let Some(report) = self.claim_and_run(id).await?
        {
            return Ok(Resume::Ran(Box::new(report)));
        }
        if !self.read_only {
            self.audit_votes(id).await?;
        }
        let Some(a) = queue.get(id).map_err(Self::queue_error)? else {
            return Err(CallError::NotRecorded(format!("no approval request {id}")));
        };
        match a.state {
            ApprovalState::Executed => match self.result_of(&a)? {
                Some(report) => Ok(Resume::Ran(Box::new(report))),
                // Ran in another process whose run row is not committed yet.
                None => Ok(Resume::Pending(a)),
            },
            s if s.is_final() => Ok(Resume::Ended(a)),
            _ => Ok(Resume::Pending(a)),
        }
    }

    /// The result of the run an executed request made: this process's report, the
    /// run-history row another process sharing the data dir wrote, or what the host
    /// that ran it kept with the request (the shared store).
    fn result_of(&self, a: &Approval) -> Result<Option<CallReport>, CallError> {
        if let Some(report) = self.finished.get(&a.id) {
            return Ok(Some((*report).clone()));
        }
        let row = self
            .runs
            .get(&a.run_id)
            .map_err(|e| CallError::NotRecorded(e.to_string()))?;
        match row {
            Some(row) if row.status != "held" => Ok(Some(self.report_of_row(a, &row))),
            Some(mut held) => {
                let Some(ran) = self.queue()?.ran(&a.id).map_err(Self::queue_error)? else {
                    return Ok(None);
                };
                (held.status, held.output, held.error, held.backtrace) =
                    (ran.status, ran.output, ran.error, ran.backtrace);
                Ok(Some(self.report_of_row(a, &held)))
            }
            None => Ok(None),
        }
    }

    /// A report of a run from its run-history row (output as stored: bounded).
    fn report_of_row(&self, a: &Approval, row: &RunRow) -> CallReport {
        let mut report = self.report_for(a, a.decisions.clone());
        let error = row.error.clone().unwrap_or_default();
        report.outcome = match row.status.as_str() {
            "ok" => {
                let text = row.output.clone().unwrap_or_default();
                Outcome::Ok {
                    output: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                }
            }
            "unmet" => {
                let text = row.output.clone().unwrap_or_default();
                Outcome::Unmet {
                    output: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    reasons: vec![error],
                }
            }
            "interrupted" => Outcome::Interrupted { reason: error },
            "denied" => Outcome::Denied {
                reasons: vec![error],
            },
            status => {
                let kind = match status {
                    "timed-out" => Failure::Limit(LimitExceeded::Timeout(0)),
                    "memory-limit" => Failure::Limit(LimitExceeded::Memory(0)),
                    "fuel-exhausted" => Failure::Limit(LimitExceeded::Fuel(0)),
                    "trapped" => Failure::Trap {
                        message: error.clone(),
                        backtrace: row.backtrace.clone().unwrap_or_default(),
                    },
                    "bad-output" => Failure::BadOutput(error.clone()),
                    _ => Failure::Tool {
                        code: status.to_string(),
                        message: error.clone(),
                    },
                };
                Outcome::Failed { kind, error }
            }
        };
        if let Some(r) = &mut report.approval {
            r.state = ApprovalState::Executed;
        }
        report
    }

    /// Wait up to `wait` for `id` to be decided, running it here if it is approved.
    pub async fn wait_for(&self, id: &str, wait: Duration) -> Result<Resume, CallError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.approvals.as_ref().map(|q| q.changed.notified());
            let state = self.resume(id).await?;
            let Resume::Pending(a) = &state else {
                return Ok(state);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(state);
            }
            // Votes from other processes arrive through the store, so poll it too.
            let until_expiry =
                Duration::from_millis((a.expires_ms - crate::now_ms() as i64).max(0) as u64);
            let nap = left.min(until_expiry).min(Duration::from_millis(100));
            match notified {
                Some(n) => {
                    let _ = tokio::time::timeout(nap, n).await;
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    /// Put the votes on `id` not yet audited in the audit log; a vote that ended the
    /// request (a rejection, a hard timeout) also ends its run. Under the request's
    /// lock, so no vote is audited twice.
    pub async fn audit_votes(&self, id: &str) -> Result<(), CallError> {
        let queue = self.queue()?;
        let _lock = queue.lock(id).await;
        let Some(a) = queue.get(id).map_err(Self::queue_error)? else {
            return Ok(());
        };
        let due = queue.votes_due(id).map_err(Self::queue_error)?;
        let votes: Vec<_> = a
            .votes
            .iter()
            .filter(|v| !v.audited && due.contains(&v.seq))
            .collect();
        if votes.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        let mut done = Vec::new();
        let mut row = None;
        for v in votes {
            records.push(self.entry(record::approval_vote(&a, v)));
            done.push((a.id.clone(), v.seq));
            let ends = matches!(v.vote.as_str(), "reject" | "expire")
                && matches!(a.state, ApprovalState::Rejected | ApprovalState::Expired);
            if ends {
                let report = self.unrun_row(&a, false);
                records.extend(record::after_execution(&report, &self.redactor));
                row = Some(record::run_row(&report, &self.redactor.scrub(&a.input)));
            }
        }
        self.audit(records, true).await?;
        if let Some(row) = row {
            self.runs
                .commit(row)
                .await
                .map_err(CallError::NotRecorded)?;
        }
        queue.mark_audited(done).await.map_err(Self::queue_error)
    }

    /// The report of a held run that ended without running (or was cut off while it
    /// ran: `interrupted`).
    fn unrun_row(&self, a: &Approval, interrupted: bool) -> CallReport {
        let reason = a
            .result
            .clone()
            .unwrap_or_else(|| format!("approval {}", a.state.as_str()));
        let mut report = self.report_for(a, Value::Null);
        report.outcome = if interrupted {
            Outcome::Interrupted { reason }
        } else {
            Outcome::Denied {
                reasons: vec![reason],
            }
        };
        report
    }

    /// End a request that will never run (interrupted, or refused at execution).
    async fn end_unrun(&self, a: &Approval, interrupted: bool) -> Result<(), CallError> {
        let report = self.unrun_row(a, interrupted);
        let mut records = vec![self.entry(record::approval_ended(a))];
        records.extend(record::after_execution(&report, &self.redactor));
        self.audit(records, true).await?;
        self.runs
            .commit(record::run_row(&report, &self.redactor.scrub(&a.input)))
            .await
            .map_err(CallError::NotRecorded)
    }

    fn report_for(&self, a: &Approval, held_by: Value) -> CallReport {
        // The run keeps its id and the time it was requested.
        let mut report = CallReport::new(
            a.run_id.clone(),
            &a.principal,
            &a.tool,
            (&a.plugin, &a.plugin_digest),
            u64::try_from(a.created_ms).unwrap_or(0),
        );
        report.approval = Some(a.reference(held_by));
        report.started_by.clone_from(&a.started_by);
        report
    }

    /// Why `a` must not run as approved, if it must not.
    fn refusal(&self, a: &Approval) -> Option<String> {
        if a.input == crate::governance::approvals::SEALED {
            return Some(
                "its input is sealed under the vault's master key, which this process cannot use"
                    .into(),
            );
        }
        let hash = crate::governance::approvals::input_hash(&a.input);
        if hash != a.input_sha256 {
            return Some(format!(
                "the stored input no longer matches the request ({hash}, requested {})",
                a.input_sha256
            ));
        }
        if let Some(v) = a.votes.iter().find(|v| v.input_sha256 != hash) {
            return Some(format!(
                "{} decided on a different input ({}, now {hash})",
                v.principal, v.input_sha256
            ));
        }
        match self.plugin_for(&a.tool) {
            None => Some(format!("tool `{}` is no longer loaded", a.tool)),
            Some(p) if p.id != a.plugin || p.digest != a.plugin_digest => Some(format!(
                "plugin {} was replaced after the request ({}, requested {}); an approval does not carry over",
                p.id, p.digest, a.plugin_digest
            )),
            Some(p) => {
                let who = crate::governance::budgets::Who {
                    principal: &a.principal,
                    plugin: &p.id,
                    tool: &a.tool,
                    schedule: a
                        .started_by
                        .as_deref()
                        .and_then(|s| s.strip_prefix("schedule:")),
                };
                // The kill switch stops approved calls too: it takes effect at once.
                self.budgets.suspensions.check(&who)
            }
        }
    }

    /// Claim approved request `id` and run it. Its votes go to the audit log first (the
    /// claim marks them audited); `None` when it is not approved any more (another task
    /// or process claimed it).
    async fn claim_and_run(&self, id: &str) -> Result<Option<CallReport>, CallError> {
        let queue = self.queue()?;
        let lock = queue.lock(id).await;
        // Read again under the lock: another task may have audited the votes meanwhile.
        let Some(a) = queue.get(id).map_err(Self::queue_error)? else {
            return Ok(None);
        };
        if a.state != ApprovalState::Approved {
            return Ok(None);
        }
        let due = queue.votes_due(id).map_err(Self::queue_error)?;
        let (votes, seqs): (Vec<_>, Vec<_>) = a
            .votes
            .iter()
            .filter(|v| !v.audited && due.contains(&v.seq))
            .map(|v| (self.entry(record::approval_vote(&a, v)), v.seq))
            .unzip();
        // Written now, durable with the run's last records.
        self.audit(votes, false).await?;
        let now = crate::now_ms() as i64;
        let claimed = queue
            .claim(&a.id, seqs, now)
            .await
            .map_err(Self::queue_error)?;
        drop(lock);
        match claimed {
            Some(claimed) => Ok(Some(self.run_approved(claimed).await?)),
            None => Ok(None),
        }
    }

    /// Run a claimed request, exactly as it was approved.
    async fn run_approved(&self, mut a: Approval) -> Result<CallReport, CallError> {
        let started = Instant::now();
        let queue = self.queue()?;
        let now = || crate::now_ms() as i64;
        if let Some(why) = self.refusal(&a) {
            let why = format!("refused after approval: {why}");
            queue
                .finish(&a.id, ApprovalState::Failed, &why, None, now())
                .await
                .map_err(Self::queue_error)?;
            a.state = ApprovalState::Failed;
            a.result = Some(why);
            self.end_unrun(&a, false).await?;
            let mut report = self.unrun_row(&a, false);
            report.approval = Some(a.reference(a.decisions.clone()));
            return Ok(report);
        }
        let plugin = self
            .plugin_for(&a.tool)
            .ok_or_else(|| CallError::NotRecorded(format!("tool `{}` is not loaded", a.tool)))?;
        let mut report = self.report_for(&a, a.decisions.clone());
        let caller = self.audit.as_ref().map(|log| log.caller());
        let recorder = self.recorder();
        self.audit(vec![self.entry(record::run_resume(&a))], false)
            .await?;
        // A human approved it: limits count it but do not refuse it (an over-budget
        // call held by a `hold` limit runs here once approved).
        let who = crate::governance::budgets::Who {
            principal: &a.principal,
            plugin: &plugin.id,
            tool: &a.tool,
            schedule: a
                .started_by
                .as_deref()
                .and_then(|s| s.strip_prefix("schedule:")),
        };
        let cost = plugin.tool(&a.tool).map_or(0.0, |t| t.cost);
        report.usage.cost = cost;
        let admission = self.budgets.admit(&who, cost, true, now(), None).ok();
        self.invoke(
            &mut report,
            plugin,
            &a.tool,
            &a.input,
            &recorder,
            admission.as_ref(),
        )
        .await;
        self.judges
            .judge(&mut report, started.elapsed().as_millis() as u64);
        let last = self.settle(admission, None, &report, started);
        let status = report.outcome.status();
        let concluded = self
            .conclude(report, &recorder, &a.input, started, last, caller)
            .await;
        let result = match &concluded {
            Ok(_) => format!("ran: {status}"),
            Err(e) => format!("ran: {status}, but {e}"),
        };
        if let Ok(report) = &concluded {
            // Published before the request says `executed`, so whoever waits on it and
            // sees `executed` finds the result.
            let mut published = report.clone();
            if let Some(r) = &mut published.approval {
                r.state = ApprovalState::Executed;
            }
            self.finished.publish(&a.id, published);
        }
        let ran = concluded.as_ref().ok().map(|report| {
            let row = record::run_row(report, "");
            crate::governance::approvals::Ran {
                status: row.status,
                output: row.output,
                error: row.error,
                backtrace: row.backtrace,
            }
        });
        queue
            .finish(&a.id, ApprovalState::Executed, &result, ran.as_ref(), now())
            .await
            .map_err(Self::queue_error)?;
        let mut report = concluded?;
        if let Some(r) = &mut report.approval {
            r.state = ApprovalState::Executed;
        }
        Ok(report)
    }

    /// Try every notice that is due once; returns how many were delivered.
    pub async fn deliver_notices(&self) -> Result<usize, CallError> {
        let Some(queue) = &self.approvals else {
            return Ok(0);
        };
        if !self.notifier.enabled() || self.read_only {
            return Ok(0);
        }
        let due = queue
            .due_notices(crate::now_ms() as i64)
            .map_err(Self::queue_error)?;
        let mut delivered = 0;
        for (id, payload, attempts) in due {
            let outcome = self.notifier.deliver(&payload).await;
            let now = crate::now_ms() as i64;
            let attempt = attempts + 1;
            let retry = match &outcome {
                Ok(()) => None,
                Err(_) => self.notifier.retry_at(attempt, now),
            };
            if let Err(e) = &outcome {
                tracing::warn!(approval = %id, attempt, "webhook delivery failed: {e}");
            } else {
                delivered += 1;
            }
            let notice = record::notice_attempt(
                &id,
                attempt,
                outcome.as_ref().err().map(String::as_str),
                outcome.is_err() && retry.is_none(),
            );
            self.audit(vec![self.entry(notice)], false).await?;
            queue
                .notice_attempted(&id, outcome, retry, now)
                .await
                .map_err(Self::queue_error)?;
        }
        Ok(delivered)
    }
}
