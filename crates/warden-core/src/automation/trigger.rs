//! A trigger's delivery, from bytes to a governed call: bounded, signature verified,
//! deduplicated by its delivery id, its payload mapped onto the tool's input by JSON
//! Pointers, and run through the same path as any call, as the trigger's principal.
//!
//! It must never run anything for a delivery whose signature did not verify, nor run a
//! redelivered event twice (a delivery id is claimed before the call).

use serde_json::{Map, Value};

use crate::automation::signature::{self, Refused};
use crate::call::{CallError, CallReport, CallRequest};
use crate::config::{DeliveryId, SignatureKind, TriggerConfig};
use crate::runtime::Runtime;
use crate::store::automation::AutomationStore;

/// Longest delivery id kept.
const MAX_DELIVERY_ID: usize = 256;

/// What a delivery led to.
#[derive(Debug)]
pub enum Answer {
    /// The call ran (or was held, denied...): its report.
    Ran(Box<CallReport>),
    /// This delivery id ran before: nothing ran now.
    Duplicate(String),
    /// A verified delivery that asks for nothing (a GitHub `ping`, an event not listed).
    Ignored(String),
    /// Slack's URL verification: answer with this challenge.
    Challenge(String),
}

/// Why a delivery ran nothing.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no trigger {0:?}")]
    Unknown(String),
    #[error("trigger {0:?} is disabled")]
    Disabled(String),
    #[error("the body is over the trigger's {0} KiB limit")]
    TooLarge(usize),
    #[error(transparent)]
    Signature(#[from] Refused),
    #[error("the payload {0}")]
    Payload(String),
    #[error(transparent)]
    Call(CallError),
    #[error("{0}")]
    Store(String),
}

impl Refusal {
    /// A refusal of the sender (its signature), as opposed to its payload or warden.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Refusal::Signature(_))
    }
}

/// Handle one delivery to trigger `name`.
pub async fn deliver(
    rt: &Runtime,
    store: &AutomationStore,
    name: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Answer, Refusal> {
    let trigger = rt
        .config
        .triggers
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Refusal::Unknown(name.to_string()))?;
    if body.len() > trigger.max_body_bytes {
        return Err(Refusal::TooLarge(trigger.max_body_bytes >> 10));
    }
    let key = rt
        .trigger_keys
        .get(name)
        .ok_or_else(|| Refusal::Store(format!("trigger {name:?} has no key loaded")))?;
    let now_ms = crate::now_ms() as i64;
    signature::verify(
        trigger.signature,
        &trigger.header,
        key.as_bytes(),
        headers,
        body,
        now_ms,
    )?;
    // Verified: from here on, it is the sender speaking.
    if !trigger.enabled {
        return Err(Refusal::Disabled(name.to_string()));
    }
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| Refusal::Payload(format!("is not JSON: {e}")))?;
    if let Some(answer) = preamble(trigger, headers, &payload) {
        return Ok(answer);
    }
    let input = map_input(trigger, &payload)?;
    let delivery = delivery_id(trigger, headers, &payload)?;
    if let Some(id) = &delivery
        && !store
            .claim_delivery(name, id, now_ms)
            .map_err(|e| Refusal::Store(e.to_string()))?
    {
        return Ok(Answer::Duplicate(id.clone()));
    }
    let origin = trigger.origin();
    let input = Value::Object(input).to_string();
    let called = rt
        .call(CallRequest {
            principal: &trigger.principal,
            tool: &trigger.tool,
            input: &input,
            started_by: Some(&origin),
        })
        .await;
    match called {
        Ok(report) => Ok(Answer::Ran(Box::new(report))),
        Err(e) => {
            // Nothing ran: a retry of this delivery may.
            if let Some(id) = &delivery {
                let _ = store.release_delivery(name, id);
            }
            Err(Refusal::Call(e))
        }
    }
}

/// What a verified delivery answers without a call: GitHub's `ping` and events the
/// trigger does not list, Slack's URL verification.
fn preamble(trigger: &TriggerConfig, headers: &http::HeaderMap, payload: &Value) -> Option<Answer> {
    match trigger.signature {
        SignatureKind::Github => {
            let event = headers
                .get("x-github-event")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if event == "ping" {
                return Some(Answer::Ignored("ping".into()));
            }
            if !trigger.events.is_empty() && !trigger.events.iter().any(|e| e == event) {
                return Some(Answer::Ignored(format!(
                    "event {event:?} is not one of this trigger's"
                )));
            }
            None
        }
        SignatureKind::Slack if payload["type"] == "url_verification" => Some(Answer::Challenge(
            payload["challenge"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )),
        _ => None,
    }
}

/// The tool's input: the fixed fields, then each mapped field from the payload.
fn map_input(trigger: &TriggerConfig, payload: &Value) -> Result<Map<String, Value>, Refusal> {
    let mut input = trigger.input.clone();
    for (field, pointer) in &trigger.map {
        let value = payload.pointer(pointer).ok_or_else(|| {
            Refusal::Payload(format!(
                "has no value at {pointer:?} (for input field `{field}`)"
            ))
        })?;
        input.insert(field.clone(), value.clone());
    }
    Ok(input)
}

fn delivery_id(
    trigger: &TriggerConfig,
    headers: &http::HeaderMap,
    payload: &Value,
) -> Result<Option<String>, Refusal> {
    let id = match &trigger.delivery {
        None => return Ok(None),
        Some(DeliveryId::Header(h)) => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Some(DeliveryId::Pointer(p)) => payload.pointer(p).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
    };
    match id {
        Some(id) if !id.is_empty() && id.len() <= MAX_DELIVERY_ID => Ok(Some(id)),
        Some(_) => Err(Refusal::Payload(
            "has an empty or oversized delivery id".into(),
        )),
        // A delivery without its id cannot be told from its retries: it runs (GitHub and
        // Slack always send one; a generic sender may not).
        None => Ok(None),
    }
}
