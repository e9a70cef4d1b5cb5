//! `[[schedule]]` and `[[trigger]]`: work warden starts itself, on a clock or on a signed
//! webhook, with the tool, input and principal it runs as and what a good result is.
//!
//! Everything checkable without the components is checked here (names, cron
//! expressions and zones, principals, secrets' names, JSON Pointers, success schemas);
//! that the tool exists and a schedule's input fits its schema is checked when the
//! components are loaded (`runtime`), with the error located here all the same.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use crate::cron::Timing;

use super::{ConfigError, Locator, valid_principal, yes};

/// Longest jitter a schedule may ask for.
const MAX_JITTER_SECS: u64 = 3600;
/// Largest webhook body a trigger may accept.
const MAX_BODY_KB: u64 = 10 * 1024;

/// What happens when a schedule fires while its previous run has not finished (or is
/// held for approval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// This fire time is skipped (counted).
    Skip,
    /// It runs once the previous run ends; at most one waits.
    Queue,
}

/// What happens to fire times missed while no warden was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// They are skipped.
    Skip,
    /// One run at start for all of them (never a burst).
    Once,
}

/// What a good result is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Criteria {
    /// A JSON Schema the output must satisfy.
    pub output_schema: Option<Value>,
    /// The longest the call may take, end to end.
    pub max_duration_ms: Option<u64>,
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        self.output_schema.is_none() && self.max_duration_ms.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub name: String,
    pub timing: Timing,
    pub tool: String,
    /// The input, a JSON object.
    pub input: Value,
    /// Default `schedule:NAME`.
    pub principal: String,
    /// Each run starts up to this long after its fire time (spreads load). Default 0.
    pub jitter_ms: u64,
    /// Default `skip`.
    pub overlap: Overlap,
    /// Default `skip`.
    pub catch_up: CatchUp,
    /// Default true; `warden schedules pause` pauses an enabled schedule.
    pub enabled: bool,
    pub criteria: Criteria,
    /// Byte offset of `name` in the file, for errors found later.
    pub span: usize,
    /// Byte offset of `input`.
    pub input_span: usize,
}

impl ScheduleConfig {
    /// What its runs are started by, in the audit log and run history.
    pub fn origin(&self) -> String {
        format!("schedule:{}", self.name)
    }
}

/// How a trigger's deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    Github,
    /// `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<body>">` with
    /// `X-Slack-Request-Timestamp`; older than 5 minutes is a replay.
    Slack,
    /// `<header>: [sha256=]<hex HMAC-SHA256 of the body>`.
    Hmac,
}

/// Where a delivery's id is, so a retried delivery runs once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryId {
    Header(String),
    /// A JSON Pointer into the payload.
    Pointer(String),
}

#[derive(Debug, Clone)]
pub struct TriggerConfig {
    pub name: String,
    pub tool: String,
    /// Default `trigger:NAME`.
    pub principal: String,
    pub signature: SignatureKind,
    /// The vault secret the signatures are made with.
    pub secret: String,
    /// The signature header (`hmac`); fixed for `github` and `slack`.
    pub header: String,
    /// Fixed input fields, merged under the mapped ones.
    pub input: Map<String, Value>,
    /// Input field -> JSON Pointer into the payload (`""` is the whole payload).
    pub map: Vec<(String, String)>,
    /// Default: `X-GitHub-Delivery` for github, `/event_id` for slack, none for hmac.
    pub delivery: Option<DeliveryId>,
    /// GitHub events (`X-GitHub-Event`) that run the tool; others are acknowledged and
    /// ignored. Empty: every event but `ping`.
    pub events: Vec<String>,
    /// Default 256 KiB.
    pub max_body_bytes: usize,
    pub enabled: bool,
    pub criteria: Criteria,
    pub span: usize,
}

impl TriggerConfig {
    pub fn origin(&self) -> String {
        format!("trigger:{}", self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    name: Spanned<String>,
    cron: Spanned<String>,
    timezone: Option<Spanned<String>>,
    tool: Spanned<String>,
    input: Option<Spanned<toml::Table>>,
    principal: Option<Spanned<String>>,
    jitter_secs: Option<Spanned<u64>>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    #[serde(default = "yes")]
    enabled: bool,
    success: Option<RawCriteria>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    name: Spanned<String>,
    tool: Spanned<String>,
    principal: Option<Spanned<String>>,
    signature: SignatureKind,
    secret: Spanned<String>,
    header: Option<Spanned<String>>,
    #[serde(default)]
    input: toml::Table,
    #[serde(default)]
    map: toml::Table,
    delivery_header: Option<Spanned<String>>,
    delivery_pointer: Option<Spanned<String>>,
    #[serde(default)]
    events: Vec<String>,
    max_body_kb: Option<Spanned<u64>>,
    #[serde(default = "yes")]
    enabled: bool,
    success: Option<RawCriteria>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCriteria {
    output_schema: Option<Spanned<toml::Table>>,
    max_duration_ms: Option<Spanned<u64>>,
}

/// A schedule or trigger name: used in URLs (`/hooks/NAME`), principals and metrics.
fn check_name(
    locate: &Locator,
    name: &Spanned<String>,
    key: &str,
    seen: &mut HashSet<String>,
) -> Result<String, ConfigError> {
    let value = name.get_ref();
    let valid = (1..=64).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(locate.error(
            name.span().start,
            &format!("{key}.name"),
            &format!("invalid name {value:?}: use 1-64 of a-z, 0-9, '-' and '_'"),
        ));
    }
    if !seen.insert(value.clone()) {
        return Err(locate.error(
            name.span().start,
            &format!("{key}.name"),
            &format!("duplicate name {value:?}"),
        ));
    }
    Ok(value.clone())
}

fn check_tool(locate: &Locator, tool: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let t = tool.get_ref();
    if t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(locate.error(
            tool.span().start,
            &format!("{key}.tool"),
            &format!("invalid tool name {t:?}"),
        ));
    }
    Ok(t.clone())
}

fn check_principal(
    locate: &Locator,
    principal: Option<&Spanned<String>>,
    default: String,
    key: &str,
) -> Result<String, ConfigError> {
    let Some(p) = principal else {
        return Ok(default);
    };
    if !valid_principal(p.get_ref()) {
        return Err(locate.error(
            p.span().start,
            &format!("{key}.principal"),
            "must be non-empty, without spaces or control characters",
        ));
    }
    Ok(p.get_ref().clone())
}

fn check_criteria(
    locate: &Locator,
    raw: Option<&RawCriteria>,
    key: &str,
) -> Result<Criteria, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Criteria::default());
    };
    let output_schema = match &raw.output_schema {
        None => None,
        Some(table) => {
            let schema = serde_json::to_value(table.get_ref()).map_err(|e| {
                locate.error(
                    table.span().start,
                    &format!("{key}.success.output_schema"),
                    &e.to_string(),
                )
            })?;
            jsonschema::validator_for(&schema).map_err(|e| {
                locate.error(
                    table.span().start,
                    &format!("{key}.success.output_schema"),
                    &format!("not a valid JSON Schema: {e}"),
                )
            })?;
            Some(schema)
        }
    };
    let max_duration_ms = match &raw.max_duration_ms {
        Some(v) if *v.get_ref() == 0 => {
            return Err(locate.error(
                v.span().start,
                &format!("{key}.success.max_duration_ms"),
                "must be at least 1",
            ));
        }
        v => v.as_ref().map(|v| *v.get_ref()),
    };
    Ok(Criteria {
        output_schema,
        max_duration_ms,
    })
}

pub(super) fn check_schedules(
    locate: &Locator,
    raw: &[RawSchedule],
) -> Result<Vec<ScheduleConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("schedule[{i}]");
        let name = check_name(locate, &r.name, &key, &mut seen)?;
        let zone = r.timezone.as_ref().map_or("UTC", |z| z.get_ref().as_str());
        let timing = Timing::parse(r.cron.get_ref(), zone).map_err(|e| {
            let (at, field) = match &r.timezone {
                Some(z) if e.contains("time zone") => (z.span().start, "timezone"),
                _ => (r.cron.span().start, "cron"),
            };
            locate.error(at, &format!("{key}.{field}"), &e)
        })?;
        let tool = check_tool(locate, &r.tool, &key)?;
        let (input, input_span) = match &r.input {
            None => (Value::Object(Map::new()), r.name.span().start),
            Some(t) => (
                serde_json::to_value(t.get_ref()).map_err(|e| {
                    locate.error(t.span().start, &format!("{key}.input"), &e.to_string())
                })?,
                t.span().start,
            ),
        };
        let principal = check_principal(
            locate,
            r.principal.as_ref(),
            format!("schedule:{name}"),
            &key,
        )?;
        let jitter_ms = match &r.jitter_secs {
            Some(j) if *j.get_ref() > MAX_JITTER_SECS => {
                return Err(locate.error(
                    j.span().start,
                    &format!("{key}.jitter_secs"),
                    &format!("must be at most {MAX_JITTER_SECS}"),
                ));
            }
            j => j.as_ref().map_or(0, |j| *j.get_ref() * 1000),
        };
        out.push(ScheduleConfig {
            criteria: check_criteria(locate, r.success.as_ref(), &key)?,
            name,
            timing,
            tool,
            input,
            principal,
            jitter_ms,
            overlap: r.overlap.unwrap_or(Overlap::Skip),
            catch_up: r.catch_up.unwrap_or(CatchUp::Skip),
            enabled: r.enabled,
            span: r.name.span().start,
            input_span,
        });
    }
    Ok(out)
}

fn check_pointer(
    locate: &Locator,
    pointer: &str,
    at: usize,
    key: &str,
) -> Result<String, ConfigError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(locate.error(
            at,
            key,
            &format!("{pointer:?} is not a JSON Pointer (it starts with `/`, or is empty for the whole payload)"),
        ));
    }
    Ok(pointer.to_string())
}

pub(super) fn check_triggers(
    locate: &Locator,
    raw: &[RawTrigger],
) -> Result<Vec<TriggerConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("trigger[{i}]");
        let at = r.name.span().start;
        let name = check_name(locate, &r.name, &key, &mut seen)?;
        let tool = check_tool(locate, &r.tool, &key)?;
        let principal = check_principal(
            locate,
            r.principal.as_ref(),
            format!("trigger:{name}"),
            &key,
        )?;
        crate::vault::check_name(r.secret.get_ref()).map_err(|e| {
            locate.error(
                r.secret.span().start,
                &format!("{key}.secret"),
                &e.to_string(),
            )
        })?;
        let header = match (r.signature, &r.header) {
            (SignatureKind::Hmac, Some(h)) => {
                http::HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                    locate.error(
                        h.span().start,
                        &format!("{key}.header"),
                        &format!("invalid header name {:?}", h.get_ref()),
                    )
                })?;
                h.get_ref().to_ascii_lowercase()
            }
            (SignatureKind::Hmac, None) => "x-signature-256".into(),
            (_, Some(h)) => {
                return Err(locate.error(
                    h.span().start,
                    &format!("{key}.header"),
                    "`header` goes with `signature = \"hmac\"` (github and slack use their own)",
                ));
            }
            (SignatureKind::Github, None) => "x-hub-signature-256".into(),
            (SignatureKind::Slack, None) => "x-slack-signature".into(),
        };
        if !r.events.is_empty() && r.signature != SignatureKind::Github {
            return Err(locate.error(
                at,
                &format!("{key}.events"),
                "`events` filters GitHub deliveries (`signature = \"github\"`)",
            ));
        }
        let input = match serde_json::to_value(&r.input) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let mut map = Vec::new();
        for (field, pointer) in &r.map {
            let Some(pointer) = pointer.as_str() else {
                return Err(locate.error(
                    at,
                    &format!("{key}.map.{field}"),
                    "must be a JSON Pointer string",
                ));
            };
            map.push((
                field.clone(),
                check_pointer(locate, pointer, at, &format!("{key}.map.{field}"))?,
            ));
        }
        let delivery = match (&r.delivery_header, &r.delivery_pointer) {
            (Some(h), Some(_)) => {
                return Err(locate.error(
                    h.span().start,
                    &format!("{key}.delivery_header"),
                    "give `delivery_header` or `delivery_pointer`, not both",
                ));
            }
            (Some(h), None) => {
                http::HeaderName::from_bytes(h.get_ref().as_bytes()).map_err(|_| {
                    locate.error(
                        h.span().start,
                        &format!("{key}.delivery_header"),
                        &format!("invalid header name {:?}", h.get_ref()),
                    )
                })?;
                Some(DeliveryId::Header(h.get_ref().to_ascii_lowercase()))
            }
            (None, Some(p)) => Some(DeliveryId::Pointer(check_pointer(
                locate,
                p.get_ref(),
                p.span().start,
                &format!("{key}.delivery_pointer"),
            )?)),
            (None, None) => match r.signature {
                SignatureKind::Github => Some(DeliveryId::Header("x-github-delivery".into())),
                SignatureKind::Slack => Some(DeliveryId::Pointer("/event_id".into())),
                SignatureKind::Hmac => None,
            },
        };
        let max_body_bytes = match &r.max_body_kb {
            Some(v) if !(1..=MAX_BODY_KB).contains(v.get_ref()) => {
                return Err(locate.error(
                    v.span().start,
                    &format!("{key}.max_body_kb"),
                    &format!("must be between 1 and {MAX_BODY_KB}"),
                ));
            }
            v => v.as_ref().map_or(256, |v| *v.get_ref()) as usize * 1024,
        };
        out.push(TriggerConfig {
            criteria: check_criteria(locate, r.success.as_ref(), &key)?,
            name,
            tool,
            principal,
            signature: r.signature,
            secret: r.secret.get_ref().clone(),
            header,
            input,
            map,
            delivery,
            events: r.events.clone(),
            max_body_bytes,
            enabled: r.enabled,
            span: at,
        });
    }
    Ok(out)
}
