//! `[[limit]]` and `[runaway]`: what each agent, plugin, tool and schedule may consume
//! (rates, quotas per calendar or rolling window, calls in flight), what happens past a
//! limit (deny, or hold for a human), and the loop and error-rate guards.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};

/// What a limit counts. Every measure is taken by the host; a plugin cannot
/// under-report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Calls that ran (or were admitted to run).
    Calls,
    /// The declared cost of the calls (`[[plugin]] cost`, `costs`), in the operator's unit.
    Cost,
    /// Wall time of the calls, in milliseconds.
    WallMs,
    /// Fuel the calls consumed (plugins with a fuel limit).
    Fuel,
    /// Outgoing HTTP requests.
    EgressRequests,
    /// Outgoing HTTP bytes, both directions (bodies).
    EgressBytes,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Calls => "calls",
            Measure::Cost => "cost",
            Measure::WallMs => "wall_ms",
            Measure::Fuel => "fuel",
            Measure::EgressRequests => "egress_requests",
            Measure::EgressBytes => "egress_bytes",
        }
    }
}

/// The length of a rate's or a quota's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Second => "second",
            Per::Minute => "minute",
            Per::Hour => "hour",
            Per::Day => "day",
            Per::Week => "week",
            Per::Month => "month",
        }
    }

    /// Its length in milliseconds (a month counts 30 days when rolling).
    pub fn ms(self) -> i64 {
        match self {
            Per::Second => 1_000,
            Per::Minute => 60_000,
            Per::Hour => 3_600_000,
            Per::Day => 86_400_000,
            Per::Week => 7 * 86_400_000,
            Per::Month => 30 * 86_400_000,
        }
    }
}

/// What a limit is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitKind {
    /// A token bucket on calls: `rate` per `per`, up to `burst` at once.
    Rate { rate: f64, per: Per, burst: f64 },
    /// At most `max` of `measure` per window: calendar windows start at midnight (the
    /// first of the month, Monday) in `zone`; rolling ones are the last `per`.
    Quota {
        measure: Measure,
        max: f64,
        per: Per,
        rolling: bool,
        zone: chrono_tz::Tz,
    },
    /// At most `max` calls in flight.
    Concurrency { max: u64 },
}

/// Past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    /// The call does not run (`limited`).
    Deny,
    /// The call waits for a human in the approval queue (a hard hold).
    Hold,
}

impl OnExceed {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExceed::Deny => "deny",
            OnExceed::Hold => "hold",
        }
    }
}

/// Which calls a limit counts: every pattern given must match (`*` wildcards); none
/// given is every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub principal: Option<String>,
    pub plugin: Option<String>,
    pub tool: Option<String>,
    /// A schedule's name (the calls it starts).
    pub schedule: Option<String>,
}

/// Whose usage a limit counts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Each {
    Principal,
    Plugin,
    Tool,
    Schedule,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    pub name: String,
    pub scope: Scope,
    /// `None`: one count shared by every call in scope.
    pub each: Option<Each>,
    pub kind: LimitKind,
    pub on_exceed: OnExceed,
    /// Fractions of a quota at which the notification webhook is told (once per window).
    pub alert_at: Vec<f64>,
    pub span: usize,
}

/// `[runaway]`: loops and failing plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct RunawayConfig {
    /// The same principal calling the same tool with the same input more than this many
    /// times within `loop_window_secs` is a loop: refused (`limited`). 0 turns it off.
    pub loop_max: u32,
    pub loop_window_secs: u32,
    /// A plugin whose calls fail (tool errors, traps, limits) at this rate or more over
    /// its last `breaker_calls` calls has its breaker opened: calls fail fast for
    /// `breaker_cooldown_secs`, then one trial call decides. 0.0 turns it off.
    pub breaker_error_rate: f64,
    pub breaker_calls: u32,
    pub breaker_cooldown_secs: u32,
}

impl Default for RunawayConfig {
    fn default() -> Self {
        RunawayConfig {
            loop_max: 0,
            loop_window_secs: 60,
            breaker_error_rate: 0.0,
            breaker_calls: 20,
            breaker_cooldown_secs: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    name: Spanned<String>,
    #[serde(default)]
    scope: RawScope,
    each: Option<Each>,
    kind: Spanned<String>,
    measure: Option<Measure>,
    max: Option<Spanned<f64>>,
    rate: Option<Spanned<f64>>,
    burst: Option<Spanned<f64>>,
    per: Option<Per>,
    #[serde(default)]
    rolling: bool,
    timezone: Option<Spanned<String>>,
    on_exceed: Option<OnExceed>,
    alert_at: Option<Vec<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    principal: Option<String>,
    plugin: Option<String>,
    tool: Option<String>,
    schedule: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunaway {
    loop_max: Option<u32>,
    loop_window_secs: Option<Spanned<u32>>,
    breaker_error_rate: Option<Spanned<f64>>,
    breaker_calls: Option<Spanned<u32>>,
    breaker_cooldown_secs: Option<u32>,
}

fn positive(
    locate: &Locator,
    v: Option<&Spanned<f64>>,
    at: usize,
    key: &str,
) -> Result<f64, ConfigError> {
    match v {
        None => Err(locate.error(at, key, "is required for this kind of limit")),
        Some(v) if v.get_ref().is_finite() && *v.get_ref() > 0.0 => Ok(*v.get_ref()),
        Some(v) => Err(locate.error(v.span().start, key, "must be a positive number")),
    }
}

pub(super) fn check_limits_list(
    locate: &Locator,
    raw: &[RawLimit],
) -> Result<Vec<LimitConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("limit[{i}]");
        let at = r.name.span().start;
        let name = r.name.get_ref().clone();
        let valid = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(locate.error(
                at,
                &format!("{key}.name"),
                &format!("invalid name {name:?}: use 1-64 of a-z, 0-9, '-' and '_'"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(locate.error(
                at,
                &format!("{key}.name"),
                &format!("duplicate limit {name:?}"),
            ));
        }
        for (field, pattern) in [
            ("principal", &r.scope.principal),
            ("plugin", &r.scope.plugin),
            ("tool", &r.scope.tool),
            ("schedule", &r.scope.schedule),
        ] {
            if let Some(p) = pattern
                && (p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(locate.error(
                    at,
                    &format!("{key}.scope.{field}"),
                    &format!("invalid pattern {p:?}"),
                ));
            }
        }
        let kind = match r.kind.get_ref().as_str() {
            "rate" => {
                let rate = positive(locate, r.rate.as_ref(), at, &format!("{key}.rate"))?;
                let per = r.per.unwrap_or(Per::Second);
                if matches!(per, Per::Day | Per::Week | Per::Month) {
                    return Err(locate.error(
                        at,
                        &format!("{key}.per"),
                        "a rate is per second, minute or hour (use a quota for longer windows)",
                    ));
                }
                let burst = match &r.burst {
                    None => rate.max(1.0),
                    b => positive(locate, b.as_ref(), at, &format!("{key}.burst"))?,
                };
                LimitKind::Rate { rate, per, burst }
            }
            "quota" => {
                let measure = r.measure.ok_or_else(|| {
                    locate.error(at, &format!("{key}.measure"), "a quota needs a measure")
                })?;
                let max = positive(locate, r.max.as_ref(), at, &format!("{key}.max"))?;
                let per = r.per.unwrap_or(Per::Day);
                let zone = match &r.timezone {
                    None => chrono_tz::Tz::UTC,
                    Some(z) => z.get_ref().parse().map_err(|_| {
                        locate.error(
                            z.span().start,
                            &format!("{key}.timezone"),
                            &format!("unknown time zone {:?}", z.get_ref()),
                        )
                    })?,
                };
                LimitKind::Quota {
                    measure,
                    max,
                    per,
                    rolling: r.rolling,
                    zone,
                }
            }
            "concurrency" => {
                let max = positive(locate, r.max.as_ref(), at, &format!("{key}.max"))?;
                if max.fract() != 0.0 {
                    return Err(locate.error(at, &format!("{key}.max"), "must be a whole number"));
                }
                LimitKind::Concurrency { max: max as u64 }
            }
            other => {
                return Err(locate.error(
                    r.kind.span().start,
                    &format!("{key}.kind"),
                    &format!("unknown kind {other:?} (rate, quota or concurrency)"),
                ));
            }
        };
        let alert_at = r.alert_at.clone().unwrap_or_else(|| vec![0.8, 1.0]);
        if alert_at
            .iter()
            .any(|f| !(f.is_finite() && *f > 0.0 && *f <= 1.0))
        {
            return Err(locate.error(
                at,
                &format!("{key}.alert_at"),
                "fractions of the limit, above 0 and at most 1",
            ));
        }
        out.push(LimitConfig {
            name,
            scope: Scope {
                principal: r.scope.principal.clone(),
                plugin: r.scope.plugin.clone(),
                tool: r.scope.tool.clone(),
                schedule: r.scope.schedule.clone(),
            },
            each: r.each,
            kind,
            on_exceed: r.on_exceed.unwrap_or(OnExceed::Deny),
            alert_at,
            span: at,
        });
    }
    Ok(out)
}

pub(super) fn check_runaway(
    locate: &Locator,
    raw: Option<&RawRunaway>,
) -> Result<RunawayConfig, ConfigError> {
    let d = RunawayConfig::default();
    let Some(r) = raw else {
        return Ok(d);
    };
    let rate = match &r.breaker_error_rate {
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            return Err(locate.error(
                v.span().start,
                "runaway.breaker_error_rate",
                "a fraction between 0 and 1",
            ));
        }
        v => v.as_ref().map_or(d.breaker_error_rate, |v| *v.get_ref()),
    };
    let at_least_one = |v: &Option<Spanned<u32>>, key: &str, default: u32| match v {
        Some(v) if *v.get_ref() == 0 => {
            Err(locate.error(v.span().start, key, "must be at least 1"))
        }
        v => Ok(v.as_ref().map_or(default, |v| *v.get_ref())),
    };
    Ok(RunawayConfig {
        loop_max: r.loop_max.unwrap_or(d.loop_max),
        loop_window_secs: at_least_one(
            &r.loop_window_secs,
            "runaway.loop_window_secs",
            d.loop_window_secs,
        )?,
        breaker_error_rate: rate,
        breaker_calls: at_least_one(&r.breaker_calls, "runaway.breaker_calls", d.breaker_calls)?,
        breaker_cooldown_secs: r.breaker_cooldown_secs.unwrap_or(d.breaker_cooldown_secs),
    })
}
