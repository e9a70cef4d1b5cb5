//! The approval queue's driver: what the process holding the audit log does with the
//! queue (`approvals`): audit every vote, settle requests whose time ran out, run
//! approved calls once, end requests a crash interrupted, and deliver webhook notices.
//!
//! Votes may be cast by other processes (`warden approvals approve` while a server or
//! a waiting caller holds the log); they reach the audit log when a driver next looks.
//! It must never run a call whose input or plugin is not the one that was approved,
//! and only runs a call after winning its claim.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::approvals::{Approval, State};
use crate::call::{ApprovalRef, CallError, CallReport, Outcome};
use crate::record;
use crate::runtime::Runtime;

/// Where a held call stands.
#[derive(Debug)]
pub enum Resume {
    /// Still waiting for a decision (or running in another process).
    Pending(Approval),
    /// This process ran it now.
    Ran(Box<CallReport>),
    /// It ended without this process running it: rejected, expired, refused, or run
    /// by another process (its run row has the outcome).
    Ended(Approval),
}

/// What one pass of the driver did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub settled: usize,
    pub ran: usize,
    pub recovered: usize,
    pub notices: usize,
}

impl Runtime {
    fn queue_error(e: impl std::fmt::Display) -> CallError {
        CallError::NotRecorded(e.to_string())
    }

    /// One pass over the whole queue.
    pub async fn drive(&self) -> Result<Pass, CallError> {
        let Some(queue) = &self.approvals else {
            return Ok(Pass::default());
        };
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
        self.audit_votes().await?;
        for id in queue.approved().map_err(Self::queue_error)? {
            if let Some(a) = queue.get(&id).map_err(Self::queue_error)?
                && self.claim_and_run(a).await?.is_some()
            {
                pass.ran += 1;
            }
        }
        pass.notices = self.deliver_notices().await?;
        Ok(pass)
    }

    /// Bring `id` forward as far as it can go now.
    pub async fn resume(&self, id: &str) -> Result<Resume, CallError> {
        // A resumed run commits like a call: with company, through the group commit.
        let _caller = self.audit.as_ref().map(|a| a.caller());
        let queue = self
            .approvals
            .as_ref()
            .ok_or_else(|| CallError::NotRecorded("the approval queue is disabled".into()))?;
        let now = crate::now_ms() as i64;
        queue
            .expire_if_due(id, now)
            .await
            .map_err(Self::queue_error)?;
        let Some(a) = queue.get(id).map_err(Self::queue_error)? else {
            return Err(CallError::NotRecorded(format!("no approval request {id}")));
        };
        if a.state == State::Approved
            && let Some(report) = self.claim_and_run(a).await?
        {
            return Ok(Resume::Ran(Box::new(report)));
        }
        self.audit_votes().await?;
        match queue.get(id).map_err(Self::queue_error)? {
            Some(a) if a.state.is_final() => Ok(Resume::Ended(a)),
            Some(a) => Ok(Resume::Pending(a)),
            None => Err(CallError::NotRecorded(format!("no approval request {id}"))),
        }
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

    /// Put every vote not yet audited in the audit log; a vote that ended a request
    /// (a rejection, a hard timeout) also ends its run.
    pub async fn audit_votes(&self) -> Result<(), CallError> {
        let Some(queue) = &self.approvals else {
            return Ok(());
        };
        let _auditing = queue.auditing.lock().await;
        let votes = queue.unaudited_votes().map_err(Self::queue_error)?;
        if votes.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        let mut done = Vec::new();
        let mut rows = Vec::new();
        for (a, v) in &votes {
            records.push(self.entry(record::approval_vote(a, v)));
            done.push((a.id.clone(), v.seq));
            let ends = matches!(v.vote.as_str(), "reject" | "expire")
                && matches!(a.state, State::Rejected | State::Expired);
            if ends {
                let row = self.unrun_row(a, false);
                records.extend(record::after_execution(&row, &self.redactor));
                rows.push(record::run_row(&row, &self.redactor.scrub(&a.input)));
            }
        }
        self.audit(records, true).await?;
        for row in rows {
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
        report.approval = Some(ApprovalRef::of(a, held_by));
        report
    }

    /// Why `a` must not run as approved, if it must not.
    fn refusal(&self, a: &Approval) -> Option<String> {
        let hash = crate::approvals::input_hash(&a.input);
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
            Some(_) => None,
        }
    }

    /// Claim an approved request and run it. Its votes go to the audit log first (the
    /// claim marks them audited); `None` when another process claimed it.
    async fn claim_and_run(&self, a: Approval) -> Result<Option<CallReport>, CallError> {
        let queue = self
            .approvals
            .as_ref()
            .ok_or_else(|| CallError::NotRecorded("the approval queue is disabled".into()))?;
        let auditing = queue.auditing.lock().await;
        // Read again under the lock: another task may have audited the votes meanwhile.
        let Some(a) = queue.get(&a.id).map_err(Self::queue_error)? else {
            return Ok(None);
        };
        if a.state != State::Approved {
            return Ok(None);
        }
        let votes = a
            .votes
            .iter()
            .filter(|v| !v.audited)
            .map(|v| self.entry(record::approval_vote(&a, v)))
            .collect();
        // Written now, durable with the run's last records.
        self.audit(votes, false).await?;
        let now = crate::now_ms() as i64;
        let claimed = queue.claim(&a.id, now).await.map_err(Self::queue_error)?;
        drop(auditing);
        match claimed {
            Some(claimed) => Ok(Some(self.run_approved(claimed).await?)),
            None => Ok(None),
        }
    }

    /// Run a claimed request, exactly as it was approved.
    async fn run_approved(&self, mut a: Approval) -> Result<CallReport, CallError> {
        let started = Instant::now();
        let queue = self
            .approvals
            .as_ref()
            .ok_or_else(|| CallError::NotRecorded("the approval queue is disabled".into()))?;
        let now = || crate::now_ms() as i64;
        if let Some(why) = self.refusal(&a) {
            let why = format!("refused after approval: {why}");
            queue
                .finish(&a.id, State::Failed, &why, now())
                .await
                .map_err(Self::queue_error)?;
            a.state = State::Failed;
            a.result = Some(why);
            self.end_unrun(&a, false).await?;
            let mut report = self.unrun_row(&a, false);
            report.approval = Some(ApprovalRef::of(&a, a.decisions.clone()));
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
        self.invoke(&mut report, plugin, &a.tool, &a.input, &recorder)
            .await;
        let status = report.outcome.status();
        let concluded = self
            .conclude(report, &recorder, &a.input, started, Vec::new(), caller)
            .await;
        let result = match &concluded {
            Ok(_) => format!("ran: {status}"),
            Err(e) => format!("ran: {status}, but {e}"),
        };
        queue
            .finish(&a.id, State::Executed, &result, now())
            .await
            .map_err(Self::queue_error)?;
        let mut report = concluded?;
        if let Some(r) = &mut report.approval {
            r.state = State::Executed;
        }
        Ok(report)
    }

    /// Try every notice that is due once; returns how many were delivered.
    pub async fn deliver_notices(&self) -> Result<usize, CallError> {
        let Some(queue) = &self.approvals else {
            return Ok(0);
        };
        if !self.notifier.enabled() {
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
