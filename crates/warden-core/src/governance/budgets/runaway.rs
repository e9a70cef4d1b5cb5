//! Runaway protection: a loop (the same principal calling the same tool with the same
//! input again and again) and a failing plugin (a circuit breaker that opens past an
//! error rate, fails fast through a cool-down, and closes after a good trial call).
//!
//! Memory is bounded: loop entries older than their window are dropped, and at most
//! `MAX_LOOP_KEYS` keys are kept.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::config::RunawayConfig;

const MAX_LOOP_KEYS: usize = 100_000;

/// A breaker changing state, for the audit log and the notices.
#[derive(Debug, Clone, PartialEq)]
pub enum BreakerEvent {
    Opened {
        plugin: String,
        error_rate: f64,
        calls: usize,
    },
    Closed {
        plugin: String,
    },
}

#[derive(Debug, Default)]
struct Breaker {
    /// Outcomes of the last calls (true: failed), newest last.
    recent: VecDeque<bool>,
    /// Open until then.
    open_until: Option<i64>,
    /// A trial call is out (half-open).
    trial: bool,
}

/// How a call passed the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Closed,
    /// The one call let through to see whether the plugin recovered.
    Trial,
}

/// A call refused as part of a loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopCaught {
    pub message: String,
    /// The first call refused in this loop.
    pub first: bool,
}

#[derive(Default)]
pub struct Runaway {
    config: RunawayConfig,
    /// Shared with the runtime this one replaced (a reload).
    loops: Arc<Mutex<HashMap<u64, VecDeque<i64>>>>,
    breakers: Arc<Mutex<HashMap<String, Breaker>>>,
}

impl Runaway {
    pub fn new(config: RunawayConfig) -> Runaway {
        Runaway {
            config,
            ..Runaway::default()
        }
    }

    /// The same state under a new config (a reload).
    pub fn carry(config: RunawayConfig, previous: &Runaway) -> Runaway {
        Runaway {
            config,
            loops: previous.loops.clone(),
            breakers: previous.breakers.clone(),
        }
    }

    /// Count this call; refuse it when it is one too many of the same within the window
    /// (and say whether it is the first refused in this loop, the one to tell people
    /// about). Refused calls count too, so a loop that keeps going stays refused.
    pub fn check_loop(
        &self,
        principal: &str,
        tool: &str,
        input: &str,
        now_ms: i64,
    ) -> Result<(), LoopCaught> {
        let c = &self.config;
        if c.loop_max == 0 {
            return Ok(());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (principal, tool, input).hash(&mut hasher);
        let key = hasher.finish();
        let window = i64::from(c.loop_window_secs) * 1000;
        let mut loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        if loops.len() >= MAX_LOOP_KEYS {
            loops.retain(|_, times| times.back().is_some_and(|t| *t > now_ms - window));
        }
        let times = loops.entry(key).or_default();
        while times.front().is_some_and(|t| *t <= now_ms - window) {
            times.pop_front();
        }
        let seen = times.len();
        times.push_back(now_ms);
        if seen >= c.loop_max as usize {
            // Bounded: the window need only remember enough to stay refused.
            while times.len() > c.loop_max as usize + 1 {
                times.pop_front();
            }
            return Err(LoopCaught {
                message: format!(
                    "a loop: {principal} called `{tool}` with the same input more than {} times within {} s (runaway.loop_max)",
                    c.loop_max, c.loop_window_secs,
                ),
                first: seen == c.loop_max as usize,
            });
        }
        Ok(())
    }

    /// May a call of `plugin` go ahead?
    pub fn breaker_admit(&self, plugin: &str, now_ms: i64) -> Result<Pass, String> {
        if self.config.breaker_error_rate <= 0.0 {
            return Ok(Pass::Closed);
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = breakers.entry(plugin.to_string()).or_default();
        match b.open_until {
            None => Ok(Pass::Closed),
            Some(until) if now_ms < until => Err(format!(
                "plugin {plugin}'s circuit breaker is open (too many failures) for {} s more",
                (until - now_ms + 999) / 1000
            )),
            Some(_) if b.trial => Err(format!(
                "plugin {plugin}'s circuit breaker is testing the plugin with one call; try again shortly"
            )),
            Some(_) => {
                b.trial = true;
                Ok(Pass::Trial)
            }
        }
    }

    /// Record how a call of `plugin` ended; the breaker's change, if any.
    pub fn breaker_record(
        &self,
        plugin: &str,
        pass: Pass,
        failed: bool,
        now_ms: i64,
    ) -> Option<BreakerEvent> {
        let c = &self.config;
        if c.breaker_error_rate <= 0.0 {
            return None;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = breakers.entry(plugin.to_string()).or_default();
        if pass == Pass::Trial {
            b.trial = false;
            if failed {
                b.open_until = Some(now_ms + i64::from(c.breaker_cooldown_secs) * 1000);
                return None;
            }
            b.open_until = None;
            b.recent.clear();
            return Some(BreakerEvent::Closed {
                plugin: plugin.to_string(),
            });
        }
        if b.open_until.is_some() {
            return None;
        }
        b.recent.push_back(failed);
        while b.recent.len() > c.breaker_calls as usize {
            b.recent.pop_front();
        }
        if b.recent.len() < c.breaker_calls as usize {
            return None;
        }
        let failures = b.recent.iter().filter(|f| **f).count();
        let rate = failures as f64 / b.recent.len() as f64;
        if rate >= c.breaker_error_rate {
            b.open_until = Some(now_ms + i64::from(c.breaker_cooldown_secs) * 1000);
            return Some(BreakerEvent::Opened {
                plugin: plugin.to_string(),
                error_rate: rate,
                calls: b.recent.len(),
            });
        }
        None
    }

    /// Plugins whose breaker is open now.
    pub fn open_breakers(&self, now_ms: i64) -> Vec<String> {
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers
            .iter()
            .filter(|(_, b)| b.open_until.is_some_and(|u| u > now_ms) || b.trial)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunawayConfig {
        RunawayConfig {
            loop_max: 3,
            loop_window_secs: 10,
            breaker_error_rate: 0.5,
            breaker_calls: 4,
            breaker_cooldown_secs: 5,
        }
    }

    #[test]
    fn the_same_call_too_often_is_a_loop_and_the_window_forgets() {
        let r = Runaway::new(config());
        for t in 0..3 {
            r.check_loop("a", "send", "{}", t).unwrap();
        }
        let caught = r.check_loop("a", "send", "{}", 3).unwrap_err();
        assert!(
            caught.message.contains("loop") && caught.first,
            "{caught:?}"
        );
        assert!(!r.check_loop("a", "send", "{}", 4).unwrap_err().first);
        r.check_loop("a", "send", "{\"other\":1}", 3).unwrap();
        r.check_loop("b", "send", "{}", 3).unwrap();
        // Refused calls count too: the loop goes on being refused while it goes on.
        assert!(r.check_loop("a", "send", "{}", 5_000).is_err());
        r.check_loop("a", "send", "{}", 20_005).unwrap();
    }

    #[test]
    fn the_breaker_opens_fails_fast_and_closes_after_a_good_trial() {
        let r = Runaway::new(config());
        for (i, failed) in [true, false, true, true].into_iter().enumerate() {
            let pass = r.breaker_admit("p", i as i64).unwrap();
            let event = r.breaker_record("p", pass, failed, i as i64);
            assert_eq!(event.is_some(), i == 3, "{i}: {event:?}");
        }
        assert!(r.breaker_admit("p", 100).is_err(), "open");
        assert_eq!(r.open_breakers(100), ["p"]);
        let trial = r.breaker_admit("p", 5_003).unwrap();
        assert_eq!(trial, Pass::Trial);
        assert!(r.breaker_admit("p", 5_004).is_err(), "one trial at a time");
        // A failed trial opens it again.
        assert_eq!(r.breaker_record("p", trial, true, 5_005), None);
        assert!(r.breaker_admit("p", 6_000).is_err());
        let trial = r.breaker_admit("p", 10_005).unwrap();
        assert_eq!(
            r.breaker_record("p", trial, false, 10_006),
            Some(BreakerEvent::Closed { plugin: "p".into() })
        );
        assert_eq!(r.breaker_admit("p", 10_007), Ok(Pass::Closed));
    }
}
