//! Budgets on a loaded runtime: the kill switch (suspending and resuming principals,
//! plugins, tools and schedules) and the usage report. A suspension is audited and
//! committed to the store before it takes effect, and takes effect at once for new
//! calls (calls in flight finish).

use crate::governance::budgets::{Target, UsageFilter, UsageRow};
use crate::runtime::{Runtime, record};
use crate::store::runs::Totals;
use crate::store::suspensions::Suspension;

/// Why the kill switch could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The plugin, tool or schedule named is not loaded (the CLI exits 2).
    #[error("no {0} named `{1}` is loaded")]
    Unknown(&'static str, String),
    #[error("a suspension needs a reason")]
    NoReason,
    /// The change could not be audited or stored; it did not take effect.
    #[error("the change could not be recorded, so it was not made: {0}")]
    NotRecorded(String),
}

impl Runtime {
    /// Suspend `name` (a plugin, tool or schedule must exist; a principal need not, so
    /// one can be stopped before it first calls).
    pub async fn suspend(
        &self,
        target: Target,
        name: &str,
        reason: &str,
        by: &str,
    ) -> Result<(), SuspendError> {
        self.check_target(target, name)?;
        if reason.trim().is_empty() {
            return Err(SuspendError::NoReason);
        }
        let record = record::suspension(target.as_str(), name, Some(reason), by);
        self.audit(vec![self.entry(record)], true)
            .await
            .map_err(|e| SuspendError::NotRecorded(e.to_string()))?;
        self.suspensions
            .suspend(&Suspension {
                kind: target.as_str().into(),
                name: name.into(),
                reason: reason.into(),
                by: by.into(),
                at_ms: crate::now_ms() as i64,
            })
            .map_err(|e| SuspendError::NotRecorded(e.to_string()))?;
        self.budgets
            .suspensions
            .set(target, name, Some(reason.to_string()));
        Ok(())
    }

    /// Lift a suspension; whether there was one.
    pub async fn unsuspend(
        &self,
        target: Target,
        name: &str,
        by: &str,
    ) -> Result<bool, SuspendError> {
        let was = self
            .suspended()?
            .iter()
            .any(|s| s.kind == target.as_str() && s.name == name);
        if !was {
            return Ok(false);
        }
        let record = record::suspension(target.as_str(), name, None, by);
        self.audit(vec![self.entry(record)], true)
            .await
            .map_err(|e| SuspendError::NotRecorded(e.to_string()))?;
        self.suspensions
            .resume(target.as_str(), name)
            .map_err(|e| SuspendError::NotRecorded(e.to_string()))?;
        self.budgets.suspensions.set(target, name, None);
        Ok(true)
    }

    /// Take the kill switch from the store again (hosts sharing one change it for each
    /// other).
    pub fn refresh_suspensions(&self) -> Result<(), SuspendError> {
        let all = self.suspended()?;
        self.budgets.suspensions.replace(
            all.into_iter()
                .filter_map(|s| Some((Target::parse(&s.kind)?, s.name, s.reason))),
        );
        Ok(())
    }

    /// What is suspended, oldest first.
    pub fn suspended(&self) -> Result<Vec<Suspension>, SuspendError> {
        self.suspensions
            .list()
            .map_err(|e| SuspendError::NotRecorded(e.to_string()))
    }

    fn check_target(&self, target: Target, name: &str) -> Result<(), SuspendError> {
        let known = match target {
            Target::Principal => true,
            Target::Plugin => self.plugins.iter().any(|p| p.id == name),
            Target::Tool => self.plugin_for(name).is_some(),
            Target::Schedule => self.config.schedules.iter().any(|s| s.name == name),
        };
        if known {
            Ok(())
        } else {
            Err(SuspendError::Unknown(target.as_str(), name.to_string()))
        }
    }
}

/// `warden usage` and `/api/usage`: every limit's count against its limit, what runs
/// used since a time, open breakers, the kill switch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UsageReport {
    pub limits: Vec<UsageRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub totals: Vec<Totals>,
    pub open_breakers: Vec<String>,
    pub suspended: Vec<Suspension>,
}

impl Runtime {
    /// The usage report for `filter`, with run totals since `since_ms` if given.
    pub fn usage_report(
        &self,
        filter: &UsageFilter,
        since_ms: Option<i64>,
    ) -> Result<UsageReport, String> {
        let now = crate::now_ms() as i64;
        let totals = match since_ms {
            Some(since) => self
                .runs
                .totals(
                    since,
                    filter.principal.as_deref(),
                    filter.plugin.as_deref(),
                    filter.tool.as_deref(),
                )
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok(UsageReport {
            limits: self.budgets.usage(filter, now),
            since_ms,
            totals,
            open_breakers: self.budgets.runaway.open_breakers(now),
            suspended: self.suspended().map_err(|e| e.to_string())?,
        })
    }
}
