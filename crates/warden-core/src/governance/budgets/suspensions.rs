//! The kill switch as every call sees it: which principals, plugins, tools and
//! schedules are suspended, and why. The store keeps it across restarts
//! (`store::suspensions`); this is the copy consulted on the call path.

use std::collections::HashMap;
use std::sync::RwLock;

use super::Who;

/// What can be suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Principal,
    Plugin,
    Tool,
    Schedule,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "principal" => Some(Target::Principal),
            "plugin" => Some(Target::Plugin),
            "tool" => Some(Target::Tool),
            "schedule" => Some(Target::Schedule),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Principal => "principal",
            Target::Plugin => "plugin",
            Target::Tool => "tool",
            Target::Schedule => "schedule",
        }
    }
}

/// Suspended targets, with why (by kind, then name: a call looks them up without
/// copying its names).
#[derive(Default)]
pub struct Suspensions(RwLock<HashMap<Target, HashMap<String, String>>>);

impl Suspensions {
    /// Suspend `name` for `reason`, or lift its suspension (`None`).
    pub fn set(&self, target: Target, name: &str, reason: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => {
                map.entry(target).or_default().insert(name.to_string(), r);
            }
            None => {
                if let Some(names) = map.get_mut(&target) {
                    names.remove(name);
                    if names.is_empty() {
                        map.remove(&target);
                    }
                }
            }
        }
    }

    /// Make the set exactly `all` (kind, name, reason): what the shared store says,
    /// when another host may have changed it.
    pub fn replace(&self, all: impl IntoIterator<Item = (Target, String, String)>) {
        let mut fresh: HashMap<Target, HashMap<String, String>> = HashMap::new();
        for (target, name, reason) in all {
            fresh.entry(target).or_default().insert(name, reason);
        }
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Why the call `who` may not run, if something it involves is suspended.
    pub fn check(&self, who: &Who<'_>) -> Option<String> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return None;
        }
        let targets = [
            (Target::Principal, Some(who.principal)),
            (Target::Plugin, Some(who.plugin)),
            (Target::Tool, Some(who.tool)),
            (Target::Schedule, who.schedule),
        ];
        targets.into_iter().find_map(|(t, name)| {
            let name = name?;
            map.get(&t)?
                .get(name)
                .map(|why| format!("{} {name} is suspended: {why}", t.as_str()))
        })
    }
}
