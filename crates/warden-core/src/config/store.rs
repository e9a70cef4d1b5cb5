//! `[store]`: where the approval queue lives when several hosts share it. Absent, it is
//! the embedded SQLite file in the data dir (no server to run).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};
use crate::store::postgres::Target;

/// `[store]`: the shared store. Default: none (the embedded store).
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// `url` (or the environment variable `url_env` names): the PostgreSQL the approval
    /// queue lives in, shared by every host pointing at it. The URL (its password) is
    /// never shown: errors and `warden store check` name `Target::shown`.
    pub shared: Option<Target>,
    /// `lease_secs` (default 15): how long a host's claim on a call it is running
    /// outlives its last heartbeat before another host ends that call `failed`
    /// (never runs it again).
    pub lease: Duration,
}

impl PartialEq for StoreConfig {
    fn eq(&self, other: &StoreConfig) -> bool {
        self.shared.as_ref().map(|t| &t.shown) == other.shared.as_ref().map(|t| &t.shown)
            && self.lease == other.lease
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    lease_secs: Option<Spanned<u64>>,
}

pub(super) fn check_store(locate: &Locator, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
    let lease = match &raw.lease_secs {
        Some(s) if *s.get_ref() < 3 || *s.get_ref() > 3600 => {
            return Err(locate.error(
                s.span().start,
                "store.lease_secs",
                "must be between 3 and 3600 seconds",
            ));
        }
        Some(s) => Duration::from_secs(*s.get_ref()),
        None => Duration::from_secs(15),
    };
    let (url, at, key) = match (&raw.url, &raw.url_env) {
        (Some(_), Some(e)) => {
            return Err(locate.error(
                e.span().start,
                "store.url_env",
                "set either url or url_env, not both",
            ));
        }
        (Some(u), None) => (u.get_ref().clone(), u.span().start, "store.url"),
        (None, Some(e)) => match std::env::var(e.get_ref()) {
            Ok(url) if !url.is_empty() => (url, e.span().start, "store.url_env"),
            _ => {
                return Err(locate.error(
                    e.span().start,
                    "store.url_env",
                    &format!("the environment variable {} is not set", e.get_ref()),
                ));
            }
        },
        (None, None) => {
            return Ok(StoreConfig {
                shared: None,
                lease,
            });
        }
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(locate.error(
            at,
            key,
            "only PostgreSQL is supported as a shared store (a postgres:// URL)",
        ));
    }
    let target = Target::parse(&url).map_err(|m| locate.error(at, key, &m))?;
    Ok(StoreConfig {
        shared: Some(target),
        lease,
    })
}
