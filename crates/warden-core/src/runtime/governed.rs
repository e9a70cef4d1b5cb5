//! The governed call: resolve the tool, validate the input against its schema,
//! evaluate every policy in scope, combine, and run the tool only if allowed.
//!
//! Owns the order of those steps (the shapes of request and report are `crate::call`'s).
//! It must never run a tool that a policy denied or held, nor one whose input failed
//! validation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::bindings::Action;
use crate::call::{CallError, CallReport, CallRequest, Failure, Outcome, Verdict};
use crate::call::{PolicyHold, Tier};
use crate::config::OnExceed;
use crate::governance::approvals::{self, NewRequest};
use crate::governance::budgets::runaway::{BreakerEvent, Pass};
use crate::governance::budgets::{Admission, Budgets, Refusal, Used, Who};
use crate::grants::secrets::Redactor;
use crate::runtime::Runtime;
use crate::runtime::record;
use crate::sandbox::hostcalls::{self, SharedRecorder};
use crate::sandbox::plugin::Plugin;
use crate::sandbox::policy::{self, Combined};
use crate::store::audit::Entry;

/// Most schema errors reported for one input, and the longest text of each: an error
/// quotes the value it is about, which the caller controls.
const MAX_SCHEMA_ERRORS: usize = 10;
const MAX_QUOTED: usize = 512;

impl Runtime {
    /// Run one governed call.
    pub async fn call(&self, request: CallRequest<'_>) -> Result<CallReport, CallError> {
        if self.read_only {
            return Err(CallError::NotRecorded(
                "this runtime was loaded read-only (no audit log): it runs nothing".into(),
            ));
        }
        let started = Instant::now();
        let caller = self.audit.as_ref().map(|a| a.caller());
        let time_ms = crate::now_ms();

        let plugin = self
            .plugin_for(request.tool)
            .ok_or_else(|| CallError::UnknownTool {
                tool: request.tool.to_string(),
                hint: suggest(request.tool, &self.tool_names()),
            })?;
        let tool = plugin
            .tool(request.tool)
            .ok_or_else(|| CallError::UnknownTool {
                tool: request.tool.to_string(),
                hint: String::new(),
            })?;
        let input: Value = serde_json::from_str(request.input)
            .map_err(|e| CallError::InvalidJson(e.to_string()))?;
        let mut errors: Vec<String> = Vec::new();
        let mut more = 0usize;
        for e in tool.validator.iter_errors(&input) {
            if errors.len() == MAX_SCHEMA_ERRORS {
                more += 1;
                continue;
            }
            let at = crate::util::bounded_to(&e.instance_path().to_string(), 256);
            // Schema errors quote the offending value, which may be a secret and may be
            // megabytes long: the quote is scrubbed and cut, the rest of the message kept.
            let message = e.to_string();
            let quoted = e.instance().to_string();
            let e = match message.find(&quoted) {
                Some(i) if quoted.len() > MAX_QUOTED => format!(
                    "{}{}{}",
                    self.redactor.bounded(&message[..i], MAX_QUOTED),
                    self.redactor.bounded(&quoted, MAX_QUOTED),
                    self.redactor
                        .bounded(&message[i + quoted.len()..], MAX_QUOTED)
                ),
                _ => self.redactor.bounded(&message, 2 * MAX_QUOTED),
            };
            errors.push(if at.is_empty() {
                e
            } else {
                format!("{at}: {e}")
            });
        }
        if more > 0 {
            errors.push(format!("and {more} more"));
        }
        if !errors.is_empty() {
            return Err(CallError::InvalidInput {
                tool: tool.name.clone(),
                errors,
            });
        }

        let mut report = CallReport::new(
            new_run_id(),
            request.principal,
            &tool.name,
            (&plugin.id, &plugin.digest),
            time_ms,
        );
        report.started_by = request.started_by.map(str::to_string);

        let canonical_input = input.to_string();
        let who = Who {
            principal: request.principal,
            plugin: &plugin.id,
            tool: &tool.name,
            schedule: request.started_by.and_then(|s| s.strip_prefix("schedule:")),
        };
        let now = time_ms as i64;
        // The kill switch, the loop guard and the limits come before any policy: a
        // suspended, looping or over-budget caller costs no policy evaluation. What a
        // call will use is reserved here (with the usage policies see, in one pass) and
        // given back if it does not run.
        let mut guarded = self.guard(&who, &canonical_input, now);
        let mut usage = String::from("{}");
        let mut admission = None;
        let mut over_limit = None;
        if guarded.is_none() && !self.budgets.is_empty() {
            usage = String::with_capacity(self.budgets.usage_capacity());
            match self
                .budgets
                .admit(&who, tool.cost, false, now, Some(&mut usage))
            {
                Ok(a) => admission = Some(a),
                Err(refusal) if refusal.on_exceed == OnExceed::Hold => {
                    usage = self.budgets.usage_json(&who, now);
                    over_limit = Some(refusal);
                }
                Err(refusal) => guarded = Some(limited(&refusal)),
            }
        }
        let mut action = Action {
            principal: request.principal.to_string(),
            tool: tool.name.clone(),
            plugin: plugin.id.clone(),
            plugin_digest: plugin.digest.clone(),
            input: canonical_input,
            annotations: tool.annotations,
            time_ms,
            config: String::new(),
            usage,
        };
        let recorder = self.recorder();
        let recording = self.audit.is_some();
        if guarded.is_none() {
            let evaluate = async {
                let mut decisions = Vec::new();
                for policy in self.policies_for(request.tool) {
                    set_component(&recorder, format!("policy:{}", policy.id));
                    action.config.clone_from(&policy.config);
                    decisions.push(policy.evaluate(&action).await);
                }
                decisions
            };
            report.decisions = if recording {
                hostcalls::record(recorder.clone(), evaluate).await
            } else {
                evaluate.await
            };
            report
                .decisions
                .extend(super::upstreams::decision(plugin, tool));
        }
        report.timings.policy_us = micros(started.elapsed());

        // Nothing runs unless its start and its decisions are in the log: a write that
        // fails (disk full, unwritable) stops the call here. They become durable with
        // the run's last records, before the result is returned.
        let mut first = record::before_execution(&report, &action.input, &self.redactor);
        first.extend(self.take_host_calls(&report.run_id, &recorder));
        self.audit(first, false).await?;

        let mut last = Vec::new();
        let hold = match guarded {
            Some(limited) => {
                report.outcome = limited;
                None
            }
            None => match policy::combine(&report.decisions) {
                Combined::Deny { reasons } => {
                    report.outcome = Outcome::Denied { reasons };
                    None
                }
                Combined::Hold {
                    tier,
                    reasons,
                    approvers,
                    timeout_secs,
                    holds,
                    ..
                } => Some(
                    Hold {
                        tier,
                        reasons,
                        approvers,
                        timeout_secs,
                        holds,
                    }
                    .and_over(over_limit.as_ref()),
                ),
                Combined::Allow => match (over_limit, admission.take()) {
                    (Some(refusal), _) => Some(Hold::over_limit(&refusal)),
                    (None, admission) => {
                        report.usage.cost = tool.cost;
                        match self.budgets.runaway.breaker_admit(&plugin.id, now) {
                            Err(why) => {
                                report.outcome = Outcome::Limited {
                                    limit: "breaker".into(),
                                    reason: why,
                                    resets_ms: None,
                                };
                            }
                            Ok(pass) => {
                                self.invoke(
                                    &mut report,
                                    plugin,
                                    &tool.name,
                                    &action.input,
                                    &recorder,
                                    admission.as_ref(),
                                )
                                .await;
                                self.judges
                                    .judge(&mut report, started.elapsed().as_millis() as u64);
                                last = self.settle(admission, Some(pass), &report, started);
                            }
                        }
                        None
                    }
                },
            },
        };
        // A call that did not run gives back what it reserved.
        drop(admission);
        if let Outcome::Limited { limit, .. } = &report.outcome {
            self.budgets.refused(limit);
        }
        let queued = match hold {
            Some(hold) => self.hold(&mut report, &action.input, request.started_by, hold),
            None => None,
        };
        let Some((approval, notice)) = queued else {
            return self
                .conclude(report, &recorder, &action.input, started, last, caller)
                .await;
        };
        // In the log (durably, with the held run's end) before it exists in the queue:
        // nothing is decided or run on a request the audit log does not know.
        let requested = vec![self.entry(record::approval_requested(&approval))];
        let report = self
            .conclude(report, &recorder, &action.input, started, requested, caller)
            .await?;
        let queue = self
            .approvals
            .as_ref()
            .ok_or_else(|| CallError::NotRecorded("the approval queue is disabled".into()))?;
        queue
            .insert(&approval, notice.as_deref())
            .await
            .map_err(|e| CallError::NotRecorded(e.to_string()))?;
        Ok(report)
    }

    /// The kill switch and the loop guard: why `who` may not run at all, if so.
    fn guard(&self, who: &Who<'_>, input: &str, now: i64) -> Option<Outcome> {
        if let Some(reason) = self.budgets.suspensions.check(who) {
            return Some(Outcome::Limited {
                limit: "suspended".into(),
                reason,
                resets_ms: None,
            });
        }
        if let Err(caught) = self
            .budgets
            .runaway
            .check_loop(who.principal, who.tool, input, now)
        {
            if caught.first {
                tracing::warn!(
                    principal = who.principal,
                    tool = who.tool,
                    "{}",
                    caught.message
                );
                self.notify(self.notifier.event_payload(
                    "runaway.loop",
                    &caught.message,
                    serde_json::json!({ "principal": who.principal, "tool": who.tool }),
                    &self.redactor,
                ));
            }
            return Some(Outcome::Limited {
                limit: "loop".into(),
                reason: caught.message,
                resets_ms: None,
            });
        }
        None
    }

    /// Put `report` on hold: its approval request (not yet stored) and its notice,
    /// or a denial when the approval queue is off.
    fn hold(
        &self,
        report: &mut CallReport,
        input: &str,
        started_by: Option<&str>,
        hold: Hold,
    ) -> Option<(approvals::Approval, Option<String>)> {
        let Hold {
            tier,
            reasons,
            approvers,
            timeout_secs,
            holds,
        } = hold;
        report.outcome = Outcome::Held {
            tier,
            reasons: reasons.clone(),
            approvers,
            timeout_secs,
        };
        if self.redactor.is_active() {
            scrub_report(&self.redactor, report);
        }
        if self.approvals.is_none() {
            report.outcome = Outcome::Denied {
                reasons: vec![format!(
                    "held for approval ({}), and the approval queue is disabled ([approvals] enabled = false)",
                    reasons.join("; ")
                )],
            };
            return None;
        }
        let decisions = serde_json::to_value(&report.decisions).unwrap_or(Value::Null);
        let approval = approvals::prepare(
            &self.config.approvals,
            &NewRequest {
                run_id: &report.run_id,
                principal: &report.principal,
                tool: &report.tool,
                plugin: &report.plugin,
                plugin_digest: &report.plugin_digest,
                input,
                decisions,
                tier,
                reasons: &reasons,
                holds: &holds,
                timeout_secs,
                now_ms: report.time_ms as i64,
                started_by,
            },
        );
        let notice = self.notifier.payload(&approval, &self.redactor);
        if let Outcome::Held { approvers, .. } = &mut report.outcome {
            approvers.clone_from(&approval.approvers);
        }
        report.approval = Some(approval.reference(Value::Null));
        Some((approval, notice))
    }

    /// Count what a call that ran used, and tell the breaker how it ended: the audit
    /// records of the thresholds it passed and the breaker's change, if any.
    pub(crate) fn settle(
        &self,
        admission: Option<Admission>,
        pass: Option<Pass>,
        report: &CallReport,
        started: Instant,
    ) -> Vec<Entry> {
        let now = crate::now_ms() as i64;
        let used = Used {
            calls: 1.0,
            cost: report.usage.cost,
            wall_ms: started.elapsed().as_secs_f64() * 1000.0,
            fuel: report.fuel_used.unwrap_or(0) as f64,
            egress_requests: report.usage.egress_requests as f64,
            egress_bytes: report.usage.egress_bytes as f64,
        };
        let mut out = Vec::new();
        let crossings = admission.map(|a| a.settle(&used, now)).unwrap_or_default();
        for c in crossings {
            let text = format!(
                "limit {} passed {:.0}% ({} of {}){}",
                c.limit,
                c.fraction * 100.0,
                c.used,
                c.max,
                if c.key.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", c.key)
                }
            );
            tracing::warn!("{text}");
            out.push(self.entry(record::limit_threshold(&report.run_id, &c)));
            self.notify(self.notifier.event_payload(
                "limit.threshold",
                &text,
                serde_json::json!({ "limit": c.limit, "key": c.key, "fraction": c.fraction,
                    "used": c.used, "max": c.max, "resets_ms": c.resets_ms }),
                &self.redactor,
            ));
        }
        if let Some(pass) = pass {
            let failed = matches!(report.outcome, Outcome::Failed { .. });
            if let Some(event) =
                self.budgets
                    .runaway
                    .breaker_record(&report.plugin, pass, failed, now)
            {
                let (name, text) = match &event {
                    BreakerEvent::Opened {
                        plugin,
                        error_rate,
                        calls,
                    } => (
                        "breaker.opened",
                        format!(
                            "plugin {plugin}'s circuit breaker opened: {:.0}% of its last {calls} calls failed",
                            error_rate * 100.0
                        ),
                    ),
                    BreakerEvent::Closed { plugin } => (
                        "breaker.closed",
                        format!("plugin {plugin}'s circuit breaker closed: a trial call succeeded"),
                    ),
                };
                tracing::warn!("{text}");
                out.push(self.entry(record::breaker(&report.run_id, &event)));
                self.notify(self.notifier.event_payload(
                    name,
                    &text,
                    serde_json::json!({ "plugin": report.plugin }),
                    &self.redactor,
                ));
            }
        }
        out
    }

    /// Send `payload` to the notification webhook on its own task, retried with
    /// backoff, never holding up the caller.
    pub(crate) fn notify(&self, payload: Option<String>) {
        let Some(payload) = payload else {
            return;
        };
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            let mut attempts = 0;
            loop {
                match notifier.deliver(&payload).await {
                    Ok(()) => return,
                    Err(e) => {
                        attempts += 1;
                        let now = crate::now_ms() as i64;
                        let Some(at) = notifier.retry_at(attempts, now) else {
                            tracing::warn!("notice not delivered: {e}");
                            return;
                        };
                        tokio::time::sleep(Duration::from_millis(
                            u64::try_from(at - now).unwrap_or(0),
                        ))
                        .await;
                    }
                }
            }
        });
    }

    /// Run `tool` for `report` under the recorder and fill in what it did.
    pub(crate) async fn invoke(
        &self,
        report: &mut CallReport,
        plugin: &Plugin,
        tool: &str,
        input: &str,
        recorder: &SharedRecorder,
        admission: Option<&Admission>,
    ) {
        set_component(recorder, format!("plugin:{}", plugin.id));
        let _reserved = match self.capacity.admit(plugin.sandbox.limits.memory_mb).await {
            Ok(permit) => permit,
            Err(limit) => {
                let failure = Failure::Limit(limit);
                report.outcome = Outcome::Failed {
                    error: failure.to_string(),
                    kind: failure,
                };
                return;
            }
        };
        // A plugin granted no host makes no request: nothing to draw on.
        let egress = admission
            .filter(|_| !plugin.sandbox.grants.http.is_empty())
            .and_then(Budgets::egress);
        let invoke = plugin.invoke(tool, input, egress);
        let run = if self.audit.is_some() {
            hostcalls::record(recorder.clone(), invoke).await
        } else {
            invoke.await
        };
        report.outcome = match run.result {
            Ok(output) => Outcome::Ok { output },
            Err(failure) => Outcome::Failed {
                error: failure.to_string(),
                kind: failure,
            },
        };
        report.log = run.log;
        report.progress = run.progress;
        report.denied_requests = run.denied_requests;
        report.secret_reveals = run.reveals;
        report.peak_memory_bytes = run.peak_memory;
        report.fuel_used = run.fuel_used;
        report.usage.egress_requests = run.egress_requests;
        report.usage.egress_bytes = run.egress_bytes;
        report.timings.instantiate_us = micros(run.instantiate);
        report.timings.execute_us = micros(run.execute);
    }

    /// Redact the report, make its last records durable, queue its run row (which
    /// keeps the run's audit guard, `caller`, until it is committed).
    pub(crate) async fn conclude(
        &self,
        mut report: CallReport,
        recorder: &SharedRecorder,
        input: &str,
        started: Instant,
        mut last: Vec<Entry>,
        mut caller: Option<crate::store::audit::Caller>,
    ) -> Result<CallReport, CallError> {
        if self.redactor.is_active() {
            scrub_report(&self.redactor, &mut report);
        }
        last.extend(self.take_host_calls(&report.run_id, recorder));
        report.host_calls = recorder.lock().map_or(0, |r| r.total());
        let counts = recorder
            .lock()
            .map(|mut r| r.take_counts())
            .unwrap_or_default();
        last.extend(record::host_call_counts(&report.run_id, &counts));
        report.timings.total_us = micros(started.elapsed());
        last.extend(record::after_execution(&report, &self.redactor));
        self.audit(last, true).await?;
        if let Some(c) = &mut caller {
            c.finished();
        }
        let row = record::run_row(&report, &self.redactor.scrub(input));
        let keep = caller.map(|c| Box::new(c) as Box<dyn Send>);
        self.runs
            .insert(row, keep)
            .map_err(CallError::NotRecorded)?;
        Ok(report)
    }
}

impl Runtime {
    /// Write `records` (already redacted: see [`Runtime::entry`]) and wait until they
    /// are written, or `durable`; a failure stops the call.
    pub(crate) async fn audit(&self, records: Vec<Entry>, durable: bool) -> Result<(), CallError> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        audit
            .commit(records, durable)
            .await
            .map_err(|e| CallError::NotRecorded(e.to_string()))
    }

    /// A record redacted and ready for [`Runtime::audit`].
    pub fn entry(&self, record: serde_json::Map<String, Value>) -> Entry {
        record::redact(&self.redactor, record)
    }

    /// A recorder for one run's host calls.
    pub(crate) fn recorder(&self) -> SharedRecorder {
        Arc::new(std::sync::Mutex::new(hostcalls::Recorder::keeping(
            hostcalls::MAX_SUMMARY + self.redactor.longest(),
        )))
    }

    /// The host calls recorded so far, as audit records.
    fn take_host_calls(&self, run: &str, recorder: &SharedRecorder) -> Vec<Entry> {
        let Ok(mut r) = recorder.lock() else {
            return Vec::new();
        };
        let calls = r.take();
        record::host_calls(
            run,
            |component| self.digest_of(component),
            calls.iter(),
            &self.redactor,
        )
    }
}

/// A hold, from the policies or from a limit whose `on_exceed` is `hold`.
struct Hold {
    tier: Tier,
    reasons: Vec<String>,
    approvers: Vec<String>,
    timeout_secs: Option<u32>,
    holds: Vec<PolicyHold>,
}

impl Hold {
    /// A policy's hold of a call that is also over a `hold` limit: hard, and the
    /// limit's reason beside the policies'.
    fn and_over(mut self, refusal: Option<&Refusal>) -> Hold {
        if let Some(r) = refusal {
            let limit = Hold::over_limit(r);
            self.tier = Tier::Hard;
            self.reasons.extend(limit.reasons);
            self.holds.extend(limit.holds);
        }
        self
    }

    /// An over-budget call needs a human: a hard hold any approver may decide.
    fn over_limit(refusal: &Refusal) -> Hold {
        let policy = format!("limit:{}", refusal.limit);
        Hold {
            tier: Tier::Hard,
            reasons: vec![format!("{policy}: {refusal}")],
            approvers: Vec::new(),
            timeout_secs: None,
            holds: vec![PolicyHold {
                policy,
                tier: Tier::Hard,
                approvers: Vec::new(),
                approvals_required: None,
            }],
        }
    }
}

/// The outcome of a call a `deny` limit refused.
fn limited(refusal: &Refusal) -> Outcome {
    Outcome::Limited {
        limit: refusal.limit.clone(),
        reason: refusal.to_string(),
        resets_ms: refusal.resets_ms,
    }
}

fn set_component(recorder: &SharedRecorder, component: String) {
    if let Ok(mut r) = recorder.lock() {
        r.set_component(component);
    }
}

/// Scrub secret values from every string a report carries out of the call.
fn scrub_report(r: &Redactor, report: &mut CallReport) {
    match &mut report.outcome {
        Outcome::Ok { output } => r.scrub_value(output),
        Outcome::Unmet { output, reasons } => {
            r.scrub_value(output);
            reasons.iter_mut().for_each(|s| r.scrub_string(s))
        }
        Outcome::Denied { reasons } | Outcome::Held { reasons, .. } => {
            reasons.iter_mut().for_each(|s| r.scrub_string(s))
        }
        Outcome::Interrupted { reason } | Outcome::Limited { reason, .. } => r.scrub_string(reason),
        Outcome::Failed { kind, error } => {
            r.scrub_string(error);
            match kind {
                Failure::Tool { code, message } => {
                    r.scrub_string(code);
                    // Kept past its bound by the longest secret form (`plugin`): cut
                    // now that it is scrubbed.
                    *message = r.bounded(message, crate::sandbox::plugin::MAX_ERROR_MESSAGE);
                    *error = crate::util::bounded_to(
                        error,
                        crate::sandbox::plugin::MAX_ERROR_MESSAGE + 64,
                    );
                }
                Failure::Trap { message, backtrace } => {
                    r.scrub_string(message);
                    r.scrub_string(backtrace);
                }
                Failure::BadOutput(why) | Failure::Host(why) => r.scrub_string(why),
                Failure::Limit(_) => {}
            }
        }
    }
    let lines = report
        .log
        .iter_mut()
        .chain(report.decisions.iter_mut().flat_map(|d| d.log.iter_mut()));
    for line in lines {
        r.scrub_string(&mut line.message);
        for (k, v) in &mut line.fields {
            r.scrub_string(k);
            r.scrub_string(v);
        }
    }
    for d in &mut report.decisions {
        if let Some(f) = &mut d.failure {
            r.scrub_string(f);
        }
        match &mut d.verdict {
            Verdict::Deny { reason } | Verdict::RequireApproval { reason, .. } => {
                r.scrub_string(reason)
            }
            Verdict::Allow => {}
        }
    }
    report
        .denied_requests
        .iter_mut()
        .for_each(|s| r.scrub_string(s));
    for p in &mut report.progress {
        if let Some(m) = &mut p.message {
            r.scrub_string(m);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A run id unique within this host: time, process and a counter.
fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "run-{nanos:016x}-{:05x}-{n:x}",
        std::process::id() & 0xfffff
    )
}

/// ", did you mean `x`?" for the closest known tool name, if any is close.
fn suggest(tool: &str, known: &[&str]) -> String {
    let best = known.iter().map(|k| (edit_distance(tool, k), *k)).min();
    match best {
        Some((d, name)) if d <= 3 || name.contains(tool) => format!(", did you mean `{name}`?"),
        _ if known.is_empty() => " (no tools are loaded)".to_string(),
        _ => format!(" (known tools: {})", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}
