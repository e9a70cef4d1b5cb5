use std::sync::Arc;

use super::*;
use crate::config::Per;
use crate::config::Scope;

fn limit(name: &str, kind: LimitKind, on_exceed: OnExceed) -> LimitConfig {
    LimitConfig {
        name: name.into(),
        scope: Scope::default(),
        each: None,
        kind,
        on_exceed,
        alert_at: vec![0.8, 1.0],
        span: 0,
    }
}

fn quota(measure: Measure, max: f64, per: Per) -> LimitKind {
    LimitKind::Quota {
        measure,
        max,
        per,
        rolling: false,
        zone: chrono_tz::UTC,
    }
}

fn budgets(limits: Vec<LimitConfig>) -> Arc<Budgets> {
    Budgets::new(&limits, &RunawayConfig::default(), None)
}

const WHO: Who<'static> = Who {
    principal: "agent",
    plugin: "mail",
    tool: "send",
    schedule: None,
};

#[test]
fn a_quota_admits_n_and_refuses_the_next_with_its_reset_time() {
    let b = budgets(vec![limit(
        "daily",
        quota(Measure::Calls, 3.0, Per::Day),
        OnExceed::Deny,
    )]);
    let now = 1_700_000_000_000;
    for _ in 0..3 {
        b.admit(&WHO, 0.0, false, now, None)
            .unwrap()
            .settle(&Used::default(), now);
    }
    let refusal = b.admit(&WHO, 0.0, false, now, None).err().unwrap();
    assert_eq!(refusal.limit, "daily");
    assert_eq!((refusal.used, refusal.max), (3.0, 3.0));
    let (_, midnight) = window::calendar(Per::Day, chrono_tz::UTC, now);
    assert_eq!(refusal.resets_ms, Some(midnight));
    assert!(refusal.to_string().contains("3 calls of 3"), "{refusal}");
    // The next day it starts again.
    b.admit(&WHO, 0.0, false, midnight, None).unwrap();
}

#[test]
fn sixty_four_concurrent_callers_never_overshoot() {
    let b = budgets(vec![
        limit(
            "quota",
            quota(Measure::Calls, 10.0, Per::Hour),
            OnExceed::Deny,
        ),
        limit("flight", LimitKind::Concurrency { max: 64 }, OnExceed::Deny),
    ]);
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(64);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                barrier.wait();
                if let Ok(a) = b.admit(&WHO, 0.0, false, 1_000, None) {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    a.settle(&Used::default(), 1_000);
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 10);
}

#[test]
fn a_call_that_never_ran_gives_its_reservation_back() {
    let b = budgets(vec![
        limit(
            "rate",
            LimitKind::Rate {
                rate: 1.0,
                per: Per::Hour,
                burst: 1.0,
            },
            OnExceed::Deny,
        ),
        limit("flight", LimitKind::Concurrency { max: 1 }, OnExceed::Deny),
        limit("cost", quota(Measure::Cost, 1.0, Per::Day), OnExceed::Deny),
    ]);
    let first = b.admit(&WHO, 0.6, false, 0, None).unwrap();
    assert_eq!(
        b.admit(&WHO, 0.0, false, 0, None).err().unwrap().limit,
        "rate"
    );
    drop(first);
    let again = b.admit(&WHO, 0.6, false, 0, None).unwrap();
    again.settle(&Used::default(), 1);
    // Cost counted at admission stays; the next 0.6 would pass 1.0.
    let refusal = b.admit(&WHO, 0.6, false, 3_600_001, None).err().unwrap();
    assert_eq!(refusal.limit, "cost");
}

#[test]
fn hold_limits_say_so_and_an_approved_call_is_counted_but_not_refused() {
    let b = budgets(vec![limit(
        "spend",
        quota(Measure::Calls, 1.0, Per::Day),
        OnExceed::Hold,
    )]);
    b.admit(&WHO, 0.0, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    let refusal = b.admit(&WHO, 0.0, false, 0, None).err().unwrap();
    assert_eq!(refusal.on_exceed, OnExceed::Hold);
    b.admit(&WHO, 0.0, true, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    let rows = b.snapshot(0);
    assert_eq!(rows[0].used, 2.0);
}

#[test]
fn scopes_and_each_count_apart() {
    let mut per_principal = limit("each", quota(Measure::Calls, 1.0, Per::Day), OnExceed::Deny);
    per_principal.each = Some(Each::Principal);
    per_principal.scope.tool = Some("se*".into());
    let b = budgets(vec![per_principal]);
    b.admit(&WHO, 0.0, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    let other = Who {
        principal: "other",
        ..WHO
    };
    b.admit(&other, 0.0, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    assert!(b.admit(&WHO, 0.0, false, 0, None).is_err());
    let unscoped = Who {
        tool: "read",
        ..WHO
    };
    b.admit(&unscoped, 0.0, false, 0, None).unwrap();
    let usage: serde_json::Value = serde_json::from_str(&b.usage_json(&WHO, 0)).unwrap();
    assert_eq!(usage["each"]["used"], 1);
    assert_eq!(usage["each"]["max"], 1);
    assert_eq!(b.usage_json(&unscoped, 0), "{}");
}

#[test]
fn counts_carry_over_a_reload_and_are_rebuilt_from_history() {
    let limits = vec![limit(
        "daily",
        quota(Measure::Cost, 10.0, Per::Day),
        OnExceed::Deny,
    )];
    let b = budgets(limits.clone());
    b.admit(&WHO, 4.0, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    let reloaded = Budgets::new(&limits, &RunawayConfig::default(), Some(&b));
    assert_eq!(reloaded.snapshot(1)[0].used, 4.0);

    let fresh = Budgets::new(&limits, &RunawayConfig::default(), None);
    let used = Used {
        cost: 7.0,
        ..Used::default()
    };
    fresh.replay(&WHO, 10, &used, 20);
    // Yesterday's runs do not count today.
    fresh.replay(&WHO, -86_400_000, &used, 20);
    assert_eq!(fresh.snapshot(20)[0].used, 7.0);
}

#[test]
fn alerts_fire_once_per_threshold_per_window() {
    let b = budgets(vec![limit(
        "spend",
        quota(Measure::Cost, 10.0, Per::Day),
        OnExceed::Deny,
    )]);
    let a = b.admit(&WHO, 5.0, false, 0, None).unwrap();
    assert!(a.crossings.is_empty());
    a.settle(&Used::default(), 0);
    let a = b.admit(&WHO, 3.5, false, 0, None).unwrap();
    assert_eq!(a.crossings.len(), 1);
    assert_eq!(a.crossings[0].fraction, 0.8);
    a.settle(&Used::default(), 0);
    let a = b.admit(&WHO, 0.5, false, 0, None).unwrap();
    assert!(a.crossings.is_empty(), "0.8 was told already");
}

#[test]
fn egress_is_drawn_as_it_goes_and_the_request_past_the_budget_is_refused() {
    let b = budgets(vec![
        limit(
            "requests",
            quota(Measure::EgressRequests, 2.0, Per::Hour),
            OnExceed::Deny,
        ),
        limit(
            "bytes",
            quota(Measure::EgressBytes, 100.0, Per::Hour),
            OnExceed::Deny,
        ),
    ]);
    let a = b.admit(&WHO, 0.0, false, 0, None).unwrap();
    let egress = Budgets::egress(&a).unwrap();
    egress.request().unwrap();
    egress.bytes(60).unwrap();
    egress.request().unwrap();
    assert!(egress.bytes(60).unwrap_err().contains("bytes"));
    let err = egress.request().unwrap_err();
    assert!(err.contains("requests"), "{err}");
}

#[test]
fn suspensions_name_what_is_suspended() {
    let s = Suspensions::default();
    assert_eq!(s.check(&WHO), None);
    s.set(Target::Tool, "send", Some("incident 42".into()));
    assert_eq!(
        s.check(&WHO).unwrap(),
        "tool send is suspended: incident 42"
    );
    s.set(Target::Tool, "send", None);
    assert_eq!(s.check(&WHO), None);
}

#[test]
fn a_daily_quota_rolls_over_at_its_zone_s_midnight_not_utc_s() {
    let zone: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let b = budgets(vec![limit(
        "daily",
        LimitKind::Quota {
            measure: Measure::Calls,
            max: 1.0,
            per: Per::Day,
            rolling: false,
            zone,
        },
        OnExceed::Deny,
    )]);
    // 2026-03-08 is a DST change in New York: 23:30 local on the 7th is 04:30 UTC on
    // the 8th, and the next local midnight is 05:00 UTC.
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    b.admit(&WHO, 0.0, false, at("2026-03-08T04:30:00Z"), None)
        .unwrap()
        .settle(&Used::default(), 0);
    // UTC's midnight has passed, New York's has not.
    let refusal = b
        .admit(&WHO, 0.0, false, at("2026-03-08T04:59:59Z"), None)
        .err()
        .unwrap();
    assert_eq!(refusal.resets_ms, Some(at("2026-03-08T05:00:00Z")));
    b.admit(&WHO, 0.0, false, at("2026-03-08T05:00:00Z"), None)
        .unwrap()
        .settle(&Used::default(), 0);
    // That day is 23 hours long: the next window starts at 04:00 UTC on the 9th.
    let refusal = b
        .admit(&WHO, 0.0, false, at("2026-03-09T03:59:00Z"), None)
        .err()
        .unwrap();
    assert_eq!(refusal.resets_ms, Some(at("2026-03-09T04:00:00Z")));
}

#[test]
fn admission_writes_the_usage_policies_see_as_it_was_before_the_call() {
    let b = budgets(vec![
        limit(
            "spend",
            quota(Measure::Cost, 100.0, Per::Day),
            OnExceed::Deny,
        ),
        limit(
            "rate",
            LimitKind::Rate {
                rate: 10.0,
                per: Per::Minute,
                burst: 5.0,
            },
            OnExceed::Deny,
        ),
        limit("flight", LimitKind::Concurrency { max: 3 }, OnExceed::Deny),
    ]);
    b.admit(&WHO, 12.5, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    let before = b.usage_json(&WHO, 0);
    let mut written = String::new();
    let held = b.admit(&WHO, 1.0, false, 0, Some(&mut written)).unwrap();
    assert_eq!(written, before);
    let usage: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(usage["spend"]["used"], 12.5);
    assert_eq!(usage["spend"]["per"], "day");
    assert_eq!(usage["rate"]["used"], 1);
    assert_eq!(usage["flight"]["max"], 3);
    assert_eq!(usage["flight"]["measure"], "concurrency");
    drop(held);
}

#[test]
fn a_call_admitted_before_a_reload_settles_in_the_budgets_that_replaced_it() {
    let limits = vec![
        limit("flight", LimitKind::Concurrency { max: 1 }, OnExceed::Deny),
        limit(
            "daily",
            quota(Measure::Calls, 5.0, Per::Day),
            OnExceed::Deny,
        ),
    ];
    let old = budgets(limits.clone());
    let running = old.admit(&WHO, 0.0, false, 0, None).unwrap();
    let new = Budgets::new(&limits, &RunawayConfig::default(), Some(&old));
    // The slot moved with the count: the new budgets see the call in flight.
    assert_eq!(
        new.admit(&WHO, 0.0, false, 0, None).err().unwrap().limit,
        "flight"
    );
    // Admitting on the old budgets now admits on the new ones.
    assert_eq!(
        old.admit(&WHO, 0.0, false, 0, None).err().unwrap().limit,
        "flight"
    );
    running.settle(&Used::default(), 1);
    new.admit(&WHO, 0.0, false, 1, None)
        .unwrap()
        .settle(&Used::default(), 1);
    let rows = new.snapshot(1);
    assert_eq!(rows.iter().find(|r| r.limit == "flight").unwrap().used, 0.0);
    assert_eq!(rows.iter().find(|r| r.limit == "daily").unwrap().used, 2.0);
}

#[test]
fn budgets_made_again_from_a_replaced_one_find_the_counts_where_they_went() {
    let limits = vec![limit(
        "daily",
        quota(Measure::Calls, 5.0, Per::Day),
        OnExceed::Deny,
    )];
    let first = budgets(limits.clone());
    first
        .admit(&WHO, 0.0, false, 0, None)
        .unwrap()
        .settle(&Used::default(), 0);
    // A reload whose runtime was then dropped, and another from the same runtime.
    let _abandoned = Budgets::new(&limits, &RunawayConfig::default(), Some(&first));
    let second = Budgets::new(&limits, &RunawayConfig::default(), Some(&first));
    assert_eq!(second.snapshot(0)[0].used, 1.0);
}
