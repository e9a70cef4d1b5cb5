//! Webhook notices for new held calls (and for runs whose success criteria were
//! unmet, limits' thresholds, loops and circuit breakers): the payload (warden JSON or Slack-compatible), the one-click links in it,
//! and one delivery attempt.
//!
//! Owns what a notice says and how it is sent. Notices are queued in the store with
//! the request (`approvals`) and delivered by the queue's driver, so a webhook that is
//! down only delays notices: it must never block, fail or reorder the queue, and a
//! payload never carries a secret value (it passes through the redactor).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::call::{CallReport, Outcome};
use crate::config::{ApprovalsConfig, Webhook};
use crate::governance::approvals::{self, Approval};
use crate::governance::links::LinkSigner;
use crate::grants::secrets::Redactor;
use crate::util::bounded_to;

/// Longest input text put in a notice.
const MAX_NOTICE_INPUT: usize = 2048;
/// A delivery attempt gives up after this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Notifier {
    webhook: Option<Webhook>,
    config: ApprovalsConfig,
    signer: Option<LinkSigner>,
}

impl Notifier {
    /// `signer` is needed only when `[approvals] public_url` is set (links).
    pub fn new(config: &ApprovalsConfig, signer: Option<LinkSigner>) -> Notifier {
        Notifier {
            webhook: config.webhook.clone(),
            config: config.clone(),
            signer,
        }
    }

    pub fn enabled(&self) -> bool {
        self.webhook.is_some()
    }

    /// One-click links for `a`, one per principal who may decide it.
    pub fn links(&self, a: &Approval) -> Vec<(String, String)> {
        let (Some(base), Some(signer)) = (&self.config.public_url, &self.signer) else {
            return Vec::new();
        };
        let until = a
            .expires_ms
            .min(a.created_ms + i64::from(self.config.link_ttl_secs) * 1000);
        approvals::expand(&self.config, &a.approvers)
            .into_iter()
            .filter(|p| *p != a.principal)
            .map(|p| {
                let token = signer.sign(&a.id, &p, until);
                let url = format!("{base}/approvals/{}?t={token}", a.id);
                (p, url)
            })
            .collect()
    }

    /// The notice for a new request, or `None` when no webhook is configured.
    pub fn payload(&self, a: &Approval, redactor: &Redactor) -> Option<String> {
        let webhook = self.webhook.as_ref()?;
        let links = self.links(a);
        let input = bounded_to(&redactor.scrub(&a.input), MAX_NOTICE_INPUT);
        let tier = approvals::tier_name(a.tier);
        let mut v = if webhook.slack {
            let mut text = format!(
                "*warden*: `{}` requested by *{}* needs {tier} approval ({} of {}): {}\nInput: `{input}`\nApproval {} (run {}), expires <!date^{}^{{date_short_pretty}} {{time}}|at {} ms>.",
                a.tool,
                a.principal,
                a.required,
                a.required,
                a.reasons.join("; "),
                a.id,
                a.run_id,
                a.expires_ms / 1000,
                a.expires_ms,
            );
            if tier == "soft" {
                text += " It runs when the window passes unless someone rejects it.";
            }
            for (who, url) in &links {
                text += &format!("\n<{url}|Review as {who}>");
            }
            json!({ "text": text })
        } else {
            json!({
                "event": "approval.requested",
                "approval": {
                    "id": a.id,
                    "run": a.run_id,
                    "tool": a.tool,
                    "plugin": a.plugin,
                    "principal": a.principal,
                    "tier": tier,
                    "reasons": a.reasons,
                    "approvers": a.approvers,
                    "approvals_required": a.required,
                    "input": input,
                    "input_sha256": a.input_sha256,
                    "created_ms": a.created_ms,
                    "expires_ms": a.expires_ms,
                },
                "links": links.iter().map(|(p, u)| json!({ "principal": p, "url": u })).collect::<Vec<Value>>(),
            })
        };
        redactor.scrub_value(&mut v);
        Some(v.to_string())
    }

    /// The notice for a run whose success criteria were unmet, or `None` when no webhook
    /// is configured.
    pub fn unmet_payload(&self, report: &CallReport, redactor: &Redactor) -> Option<String> {
        let webhook = self.webhook.as_ref()?;
        let Outcome::Unmet { reasons, .. } = &report.outcome else {
            return None;
        };
        let origin = report.started_by.as_deref().unwrap_or("a caller");
        let mut v = if webhook.slack {
            json!({ "text": format!(
                "*warden*: `{}` started by *{origin}* returned, but its success criteria are unmet: {} (run {})",
                report.tool,
                reasons.join("; "),
                report.run_id
            ) })
        } else {
            json!({
                "event": "run.unmet",
                "run": {
                    "id": report.run_id,
                    "started_by": origin,
                    "tool": report.tool,
                    "principal": report.principal,
                    "reasons": reasons,
                    "total_us": report.timings.total_us,
                },
            })
        };
        redactor.scrub_value(&mut v);
        Some(v.to_string())
    }

    /// The notice of an event (a limit's threshold passed, a loop caught, a breaker
    /// opened or closed), or `None` when no webhook is configured.
    pub fn event_payload(
        &self,
        event: &str,
        text: &str,
        details: Value,
        redactor: &Redactor,
    ) -> Option<String> {
        let webhook = self.webhook.as_ref()?;
        let mut v = if webhook.slack {
            json!({ "text": format!("*warden*: {text}") })
        } else {
            json!({ "event": event, "text": text, "details": details })
        };
        redactor.scrub_value(&mut v);
        Some(v.to_string())
    }

    /// When to try again after `attempts` failed attempts, or `None` to give up.
    pub fn retry_at(&self, attempts: u32, now_ms: i64) -> Option<i64> {
        let webhook = self.webhook.as_ref()?;
        (attempts < webhook.attempts)
            .then(|| now_ms + 1000 * (1i64 << attempts.min(16).saturating_sub(1)))
    }

    /// POST `payload` to the webhook once; any 2xx is a delivery.
    pub async fn deliver(&self, payload: &str) -> Result<(), String> {
        let Some(webhook) = &self.webhook else {
            return Ok(());
        };
        let request = http::Request::post(&webhook.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("warden/", env!("CARGO_PKG_VERSION")),
            )
            .body(
                Full::new(Bytes::from(payload.to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| format!("bad webhook request: {e}"))?;
        let send = async {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let conn = tokio::spawn(io);
            let status = response.status();
            // Drain the (small) body so the connection closes cleanly.
            let _ = response.into_body().collect().await;
            conn.abort();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("webhook answered {status}"))
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, send).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
        }
    }
}
