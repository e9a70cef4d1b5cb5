//! `warden-bench in-process --only budgets`: what limits add to a governed call (ten
//! limits in scope against none, alternating rounds in one run), and how many limit
//! decisions per second one hot limit takes from 64 callers at once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use warden_core::call::{CallRequest, Outcome};
use warden_core::config::{
    Config, Each, LimitConfig, LimitKind, Measure, OnExceed, Per, RunawayConfig, Scope,
};
use warden_core::governance::budgets::{Budgets, Used, Who};
use warden_core::runtime::Runtime;

use crate::bench::{BenchCall, median};

/// Ten limits every call of the benchmark counts against: rates, quotas of every
/// measure (calendar and rolling, in a zone), concurrency; shared and per principal.
fn ten_limits() -> Vec<LimitConfig> {
    let quota = |measure, per, rolling| LimitKind::Quota {
        measure,
        max: 1e15,
        per,
        rolling,
        zone: "Europe/Paris".parse().unwrap_or(chrono_tz::UTC),
    };
    let kinds = [
        (
            None,
            LimitKind::Rate {
                rate: 1e9,
                per: Per::Second,
                burst: 1e9,
            },
        ),
        (
            Some(Each::Principal),
            LimitKind::Rate {
                rate: 1e9,
                per: Per::Minute,
                burst: 1e9,
            },
        ),
        (None, LimitKind::Concurrency { max: 1_000_000 }),
        (Some(Each::Tool), LimitKind::Concurrency { max: 1_000_000 }),
        (
            Some(Each::Principal),
            quota(Measure::Calls, Per::Day, false),
        ),
        (
            Some(Each::Principal),
            quota(Measure::Cost, Per::Month, false),
        ),
        (None, quota(Measure::WallMs, Per::Hour, false)),
        (Some(Each::Plugin), quota(Measure::Fuel, Per::Day, false)),
        (None, quota(Measure::EgressRequests, Per::Hour, true)),
        (Some(Each::Tool), quota(Measure::Calls, Per::Hour, true)),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, (each, kind))| LimitConfig {
            name: format!("bench-{i}"),
            scope: Scope {
                principal: Some("*".into()),
                ..Scope::default()
            },
            each,
            kind,
            on_exceed: OnExceed::Deny,
            alert_at: vec![0.8, 1.0],
            span: 0,
        })
        .collect()
}

pub async fn run(config: &Path, call: &BenchCall, iterations: usize) -> Result<()> {
    let none = Runtime::load(Config::load(config)?).await?;
    let mut with = Config::load(config)?;
    with.limits = ten_limits();
    let ten = Runtime::load(with).await?;
    let request = CallRequest {
        principal: "bench",
        tool: &call.tool,
        input: &call.input,
        started_by: None,
    };
    for rt in [&none, &ten] {
        let report = rt.call(request).await?;
        if !matches!(report.outcome, Outcome::Ok { .. }) {
            bail!(
                "the benchmark call does not succeed: {}",
                serde_json::to_string(&report.outcome)?
            );
        }
    }
    // One call with no limits, one with ten, in turn, so the machine's drift (tens of
    // percent between seconds here) falls on both alike; p50 of each per round, the
    // difference and ratio per round, the median of the rounds.
    const ROUNDS: usize = 15;
    let per_round = (iterations / ROUNDS).max(200);
    let (mut added, mut ratios, mut p50s) = (Vec::new(), Vec::new(), [Vec::new(), Vec::new()]);
    for _ in 0..ROUNDS {
        let mut samples = [Vec::with_capacity(per_round), Vec::with_capacity(per_round)];
        for _ in 0..per_round {
            for (slot, rt) in [&none, &ten].into_iter().enumerate() {
                let t = Instant::now();
                rt.call(request).await?;
                samples[slot].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let [a, b] = samples;
        let (a, b) = (median(a), median(b));
        p50s[0].push(a);
        p50s[1].push(b);
        added.push(b - a);
        ratios.push(b / a);
    }
    println!(
        "governed call p50: no limits {:.1} µs, ten limits in scope {:.1} µs: +{:.2} µs, {:.3}x (median of {ROUNDS} rounds of {per_round} calls of each, in turn; added per round {})",
        median(p50s[0].clone()),
        median(p50s[1].clone()),
        median(added.clone()),
        median(ratios),
        added
            .iter()
            .map(|a| format!("{a:+.2}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    // The limit machinery alone, without the call around it: with its data in the
    // cache, and with the cache emptied before each call (8 MiB written), as a call
    // that instantiates two components leaves it.
    let budgets = Budgets::new(&ten_limits(), &RunawayConfig::default(), None);
    let who = Who {
        principal: "bench",
        plugin: "text-stats",
        tool: &call.tool,
        schedule: None,
    };
    let mut usage = String::new();
    let mut junk = vec![0u8; 8 << 20];
    for cold in [false, true] {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let n = if cold { 2_000 } else { 20_000 };
            let mut total = Duration::ZERO;
            for k in 0..n {
                if cold {
                    junk.iter_mut()
                        .step_by(64)
                        .for_each(|b| *b = b.wrapping_add(k as u8));
                    std::hint::black_box(&junk);
                }
                let t = Instant::now();
                let now = warden_core::now_ms() as i64;
                let admission = budgets.admit(&who, 0.01, false, now, Some(&mut usage));
                std::hint::black_box(&usage);
                if let Ok(a) = admission {
                    a.settle(&Used::default(), now);
                }
                total += t.elapsed();
            }
            samples.push(total.as_secs_f64() * 1e6 / f64::from(n));
        }
        println!(
            "ten limits alone, cache {} (usage for policies + admit + settle): {:.2} µs per call (median of {ROUNDS} rounds)",
            if cold { "cold" } else { "warm" },
            median(samples)
        );
    }
    hot_limit().await;
    none.close();
    ten.close();
    Ok(())
}

/// One shared limit, 64 tasks on the runtime's worker threads deciding as fast as they
/// can: decisions per second.
async fn hot_limit() {
    let limit = LimitConfig {
        name: "hot".into(),
        scope: Scope::default(),
        each: None,
        kind: LimitKind::Quota {
            measure: Measure::Calls,
            max: 1e15,
            per: Per::Day,
            rolling: false,
            zone: chrono_tz::UTC,
        },
        on_exceed: OnExceed::Deny,
        alert_at: vec![1.0],
        span: 0,
    };
    let budgets = Budgets::new(&[limit], &RunawayConfig::default(), None);
    let mut rates = Vec::new();
    for _ in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let decided = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (budgets, stop, decided) = (budgets.clone(), stop.clone(), decided.clone());
                tokio::spawn(async move {
                    let who = Who {
                        principal: "agent",
                        plugin: "p",
                        tool: "t",
                        schedule: None,
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            let now = warden_core::now_ms() as i64;
                            if let Ok(a) = budgets.admit(&who, 0.0, false, now, None) {
                                a.settle(&Used::default(), now);
                            }
                            n += 1;
                        }
                        // A caller between calls gives the others their turn.
                        tokio::task::yield_now().await;
                    }
                    decided.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        rates.push(decided.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "one hot limit, 64 callers at once: {:.0} decisions/s (admit + settle; median of 5 runs of 0.5 s)",
        median(rates)
    );
}
