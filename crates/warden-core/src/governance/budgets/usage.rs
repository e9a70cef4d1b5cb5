//! What limits have counted, as people and policies see it: `action.usage` (written in
//! the admission's pass, or on its own), and the rows of `warden usage`.

use std::fmt::Write as _;

use super::counts::Count;
use super::{Budgets, Who, window};
use crate::config::{Each, LimitConfig, LimitKind, OnExceed, Per};
use crate::util::pattern_matches;

/// Which counts `warden usage` shows.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct UsageFilter {
    pub principal: Option<String>,
    pub plugin: Option<String>,
    pub tool: Option<String>,
}

/// One row of `warden usage`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UsageRow {
    pub limit: String,
    /// What happens past it: `deny` or `hold`.
    pub on_exceed: OnExceed,
    /// Whose count (`each`); empty for a shared one.
    pub key: String,
    pub kind: String,
    pub measure: String,
    pub per: Option<String>,
    pub used: f64,
    pub max: f64,
    pub remaining: f64,
    pub resets_ms: Option<i64>,
}

impl Budgets {
    /// The caller's usage of every limit in scope of `who`, as the JSON object policies
    /// get in `action.usage`: `{"NAME": {"measure", "per", "used", "max",
    /// "resets_ms"}}`, where `measure` is a quota's measure, or `rate` (`used` tokens of
    /// the `max` burst) or `concurrency` (calls in flight). It is kept short: every
    /// policy of every call in scope receives it. ([`Budgets::admit`] writes the same
    /// while it reserves.)
    pub fn usage_json(&self, who: &Who<'_>, now_ms: i64) -> String {
        let mut out = String::from("{");
        let mut counts = self.lock();
        for i in 0..self.limits.len() {
            if !self.covers(i, who) {
                continue;
            }
            let key = who.key(self.limits[i].each);
            let row = self.row_of(i, key, counts[i].get_mut(key), now_ms);
            self.usage_entry(&mut out, i, row.used, row.max, row.resets_ms);
        }
        out.push('}');
        out
    }

    /// Every count, for `warden usage`.
    pub fn snapshot(&self, now_ms: i64) -> Vec<UsageRow> {
        self.usage(&UsageFilter::default(), now_ms)
    }

    /// The counts of the limits that can count a call of `filter`'s principal, plugin
    /// and tool (each given), sorted by limit and key.
    pub fn usage(&self, filter: &UsageFilter, now_ms: i64) -> Vec<UsageRow> {
        let mut out = Vec::new();
        let mut counts = self.lock();
        for (i, c) in self.configs.iter().enumerate() {
            let s = &c.scope;
            let fits = |pattern: &Option<String>, value: &Option<String>| match (pattern, value) {
                (Some(p), Some(v)) => pattern_matches(p, v),
                _ => true,
            };
            if !(fits(&s.principal, &filter.principal)
                && fits(&s.plugin, &filter.plugin)
                && fits(&s.tool, &filter.tool))
            {
                continue;
            }
            let wanted = match c.each {
                Some(Each::Principal) => filter.principal.as_deref(),
                Some(Each::Plugin) => filter.plugin.as_deref(),
                Some(Each::Tool) => filter.tool.as_deref(),
                _ => None,
            };
            let mut rows: Vec<UsageRow> = counts[i]
                .iter_mut()
                .filter(|(key, _)| wanted.is_none_or(|w| w == *key))
                .map(|(key, count)| self.row_of(i, key, Some(count), now_ms))
                .collect();
            if rows.is_empty() {
                rows.push(self.row_of(i, wanted.unwrap_or_default(), None, now_ms));
            }
            rows.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(rows);
        }
        out
    }

    /// Limit `i`'s entry of `action.usage`.
    pub(super) fn usage_entry(
        &self,
        out: &mut String,
        i: usize,
        used: f64,
        max: f64,
        resets_ms: Option<i64>,
    ) {
        if !out.ends_with('{') {
            out.push(',');
        }
        let (start, end) = self.limits[i].prefix;
        out.push_str(&self.prefixes[start as usize..end as usize]);
        out.push_str("\"used\":");
        push_number(out, used);
        out.push_str(",\"max\":");
        push_number(out, max);
        out.push_str(",\"resets_ms\":");
        match resets_ms {
            Some(r) => out.push_str(itoa::Buffer::new().format(r)),
            None => out.push_str("null"),
        }
        out.push('}');
    }

    pub(super) fn row_of(
        &self,
        i: usize,
        key: &str,
        count: Option<&mut Count>,
        now_ms: i64,
    ) -> UsageRow {
        let config = &self.configs[i];
        let base =
            |kind: &str, measure: &str, per: Option<Per>, used: f64, max: f64, resets| UsageRow {
                limit: config.name.clone(),
                on_exceed: config.on_exceed,
                key: key.to_string(),
                kind: kind.to_string(),
                measure: measure.to_string(),
                per: per.map(|p| p.as_str().to_string()),
                used,
                max,
                remaining: (max - used).max(0.0),
                resets_ms: resets,
            };
        match (self.limits[i].kind, count) {
            (LimitKind::Rate { rate, per, burst }, count) => {
                let left = match count {
                    Some(Count::Bucket(b)) => b.available(rate, per, burst, now_ms),
                    _ => burst,
                };
                base("rate", "calls", Some(per), burst - left, burst, None)
            }
            (LimitKind::Concurrency { max }, count) => {
                let n = match count {
                    Some(Count::Flight(n)) => *n,
                    _ => 0,
                };
                base(
                    "concurrency",
                    "calls in flight",
                    None,
                    n as f64,
                    max as f64,
                    None,
                )
            }
            (
                LimitKind::Quota {
                    measure,
                    max,
                    per,
                    rolling,
                    zone,
                },
                count,
            ) => {
                let (used, resets) = match count {
                    Some(Count::Window(w)) => {
                        w.roll(per, rolling, zone, now_ms);
                        (w.used(), w.resets_ms(per, rolling, now_ms))
                    }
                    _ => (
                        0.0,
                        if rolling {
                            now_ms + per.ms()
                        } else {
                            window::calendar(per, zone, now_ms).1
                        },
                    ),
                };
                base(
                    "quota",
                    measure.as_str(),
                    Some(per),
                    used,
                    max,
                    Some(resets),
                )
            }
        }
    }
}

pub(super) fn usage_prefix(c: &LimitConfig) -> String {
    let (measure, per) = match &c.kind {
        LimitKind::Rate { per, .. } => ("rate", Some(*per)),
        LimitKind::Concurrency { .. } => ("concurrency", None),
        LimitKind::Quota { measure, per, .. } => (measure.as_str(), Some(*per)),
    };
    format!(
        "{}:{{\"measure\":\"{measure}\",\"per\":{},",
        serde_json::Value::from(c.name.as_str()),
        per.map_or("null".into(), |p| format!("\"{}\"", p.as_str()))
    )
}

fn push_number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(v as i64));
    } else {
        match serde_json::Number::from_f64(v) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        }
    }
}
