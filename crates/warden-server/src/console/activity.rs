//! Activity and spend: the last day's calls per hour by outcome, p50/p99 latency per
//! hour, a table per tool, and usage against each limit, drawn as inline SVG by the
//! server (no script, no chart library).
//!
//! Operators only. It reads run history (what every call left) and the limits' live
//! counts; it never changes either.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::{Nav, Viewer, blocking, micros, render};
use crate::state::Server;

const HOURS: usize = 24;
const HOUR_MS: i64 = 3_600_000;

/// What a status counts as on the charts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Ok,
    Held,
    Refused,
    Failed,
}

const CLASSES: [(Class, &str, &str); 4] = [
    (Class::Ok, "ran", "#3c8d5a"),
    (Class::Held, "held", "#c98a14"),
    (Class::Refused, "denied or limited", "#b8433b"),
    (Class::Failed, "failed", "#6b6f76"),
];

fn class(status: &str) -> Class {
    match status {
        "ok" => Class::Ok,
        "held" => Class::Held,
        "denied" | "limited" | "rejected" | "expired" => Class::Refused,
        _ => Class::Failed,
    }
}

/// Calls of one bucket (an hour, a tool).
#[derive(Default)]
struct Tally {
    by_class: [u64; 4],
    latencies: Vec<i64>,
}

impl Tally {
    fn add(&mut self, status: &str, total_us: i64) {
        self.by_class[class(status) as usize] += 1;
        if status == "ok" {
            self.latencies.push(total_us);
        }
    }
    fn total(&self) -> u64 {
        self.by_class.iter().sum()
    }
    /// The `q` quantile of the latencies of calls that ran (sorts them).
    fn quantile(&mut self, q: f64) -> Option<i64> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies.get(i).copied()
    }
}

pub(crate) async fn page(State(server): State<Arc<Server>>, viewer: Viewer) -> Response {
    if let Some(refused) = viewer.unless_operator() {
        return refused;
    }
    let rt = server.runtime();
    let now = warden_core::now_ms() as i64;
    let first = (now - now.rem_euclid(HOUR_MS)) - (HOURS as i64 - 1) * HOUR_MS;
    let runs = rt.runs.clone();
    let counted = blocking(&viewer, move || {
        let mut hours: Vec<Tally> = (0..HOURS).map(|_| Tally::default()).collect();
        let mut tools: BTreeMap<String, Tally> = BTreeMap::new();
        let mut calls = 0usize;
        runs.each_since(first, |started_ms, tool, status, total_us| {
            calls += 1;
            let h = usize::try_from((started_ms - first) / HOUR_MS).unwrap_or(0);
            if let Some(t) = hours.get_mut(h) {
                t.add(status, total_us);
            }
            match tools.get_mut(tool) {
                Some(t) => t.add(status, total_us),
                None => tools
                    .entry(tool.to_string())
                    .or_default()
                    .add(status, total_us),
            }
        })
        .map(|()| (hours, tools, calls))
    })
    .await;
    let (mut hours, mut tools, calls) = match counted {
        Ok(counted) => counted,
        Err(page) => return *page,
    };
    let usage = rt.budgets.snapshot(now);
    let body = html! {
        p { (calls) " calls in the last " (HOURS) " hours (UTC hours; the last bar is this hour so far)." }
        h2 { "Calls per hour" }
        (calls_chart(&hours))
        p.legend {
            @for (_, name, colour) in CLASSES {
                svg width="12" height="12" aria-hidden="true" { rect width="12" height="12" fill=(colour) {} }
                " " (name) " "
            }
        }
        h2 { "Latency of calls that ran (p50, p99)" }
        (latency_chart(&mut hours))
        h2 { "By tool" }
        @if tools.is_empty() { p { "No calls." } } @else {
            table {
                thead { tr { th { "Tool" } th.num { "Calls" } th.num { "Ran" } th.num { "Held" } th.num { "Denied or limited" } th.num { "Failed" } th.num { "p50" } th.num { "p99" } } }
                tbody { @for (tool, t) in tools.iter_mut() {
                    tr {
                        td { (tool) }
                        td.num { (t.total()) }
                        @for n in t.by_class { td.num { (n) } }
                        td.num { (t.quantile(0.5).map(micros).unwrap_or_default()) }
                        td.num { (t.quantile(0.99).map(micros).unwrap_or_default()) }
                    }
                } }
            }
        }
        h2 { "Usage against limits" }
        @if usage.is_empty() { p { "No limits are configured." } } @else {
            table {
                thead { tr { th { "Limit" } th { "Whose" } th { "Used" } th.num { "of" } } }
                tbody { @for u in &usage {
                    @let fill = if u.max > 0.0 { (u.used / u.max).clamp(0.0, 1.0) } else { 0.0 };
                    tr {
                        td { (u.limit) " (" (u.measure) @if let Some(per) = &u.per { " per " (per) } ")" }
                        td { @if u.key.is_empty() { "shared" } @else { (u.key) } }
                        td {
                            svg width="160" height="12" role="img" aria-label={(u.used) " of " (u.max)} {
                                rect width="160" height="12" fill="#e4e6ea" {}
                                rect width=(format!("{:.1}", 160.0 * fill)) height="12"
                                     fill=(if fill >= 1.0 { "#b8433b" } else if fill >= 0.8 { "#c98a14" } else { "#3c8d5a" }) {}
                            }
                            " " (u.used)
                        }
                        td.num { (u.max) }
                    }
                } }
            }
        }
    };
    render(
        StatusCode::OK,
        Some(&viewer),
        "Activity",
        Nav::Activity,
        body,
    )
}

/// Stacked bars: calls per hour by outcome.
fn calls_chart(hours: &[Tally]) -> Markup {
    let (w, h, bar) = (720.0, 160.0, 26.0);
    let top = hours.iter().map(Tally::total).max().unwrap_or(0).max(1) as f64;
    // (x, y, height, colour, calls) of every bar segment, bottom up.
    let mut segments = Vec::new();
    for (i, t) in hours.iter().enumerate() {
        let x = i as f64 * 30.0;
        let mut y = h;
        for (c, _, colour) in CLASSES {
            let n = t.by_class[c as usize];
            if n > 0 {
                let height = n as f64 / top * (h - 10.0);
                y -= height;
                segments.push((x, y, height, colour, n));
            }
        }
    }
    html! {
        svg.chart viewBox={"0 0 " (w) " " (h + 20.0)} role="img" aria-label="Calls per hour by outcome" {
            @for (x, y, height, colour, n) in segments {
                rect x=(x) y=(format!("{y:.1}")) width=(bar) height=(format!("{height:.1}")) fill=(colour) {
                    title { (n) }
                }
            }
            @for i in (0..HOURS).step_by(3) {
                text x=(i as f64 * 30.0) y=(h + 14.0) font-size="10" { "-" (HOURS - 1 - i) "h" }
            }
            text x="0" y="10" font-size="10" { "max " (top) }
        }
    }
}

/// An hour's p50 and p99, when any call ran.
type Quantiles = (Option<i64>, Option<i64>);

/// p50 and p99 per hour, as two lines.
fn latency_chart(hours: &mut [Tally]) -> Markup {
    let (h, step) = (120.0, 30.0);
    let q: Vec<Quantiles> = hours
        .iter_mut()
        .map(|t| (t.quantile(0.5), t.quantile(0.99)))
        .collect();
    let top = q
        .iter()
        .filter_map(|(_, p99)| *p99)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let line = |pick: fn(&Quantiles) -> Option<i64>| -> String {
        q.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                pick(v).map(|us| {
                    format!(
                        "{:.1},{:.1}",
                        i as f64 * step + 13.0,
                        h - us as f64 / top * (h - 10.0)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let y = |us: i64| h - us as f64 / top * (h - 10.0);
    html! {
        svg.chart viewBox={"0 0 720 " (h + 20.0)} role="img" aria-label="Latency per hour, p50 and p99" {
            polyline points=(line(|v| v.1)) fill="none" stroke="#b8433b" stroke-width="2" {}
            polyline points=(line(|v| v.0)) fill="none" stroke="#4a6fa5" stroke-width="2" {}
            @for (i, (p50, p99)) in q.iter().enumerate() {
                @if let (Some(p50), Some(p99)) = (p50, p99) {
                    circle cx=(format!("{:.1}", i as f64 * step + 13.0)) cy=(format!("{:.1}", y(*p99))) r="3" fill="#b8433b" { title { "p99 " (micros(*p99)) } }
                    circle cx=(format!("{:.1}", i as f64 * step + 13.0)) cy=(format!("{:.1}", y(*p50))) r="3" fill="#4a6fa5" { title { "p50 " (micros(*p50)) } }
                }
            }
            text x="0" y="10" font-size="10" { "max " (micros(top as i64)) " · blue p50 · red p99" }
        }
    }
}
