//! `[store]`: the PostgreSQL several hosts share (the approval queue, run history,
//! limits' counts, schedules' claims, the kill switch, console sessions). Absent, all
//! of it is in the embedded SQLite file in the data dir (no server to run).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};
use crate::store::postgres::Target;

/// `[store]`: the shared store. Default: none (the embedded store).
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// `url` (or the environment variable `url_env` names, or the vault's secret
    /// `url_secret` names): the PostgreSQL the approval queue, run history, limits'
    /// counts, schedules' claims and the kill switch live in, shared by every host
    /// pointing at it. The URL (its password) is
    /// never shown: errors and `warden store check` name `Target::shown`. TLS unless
    /// the URL says `sslmode=disable`, checked against the public roots and `ca_file`
    /// (PEM, relative to the config file).
    pub shared: Option<Target>,
    /// `lease_secs` (default 15): how long a host's claim on a call it is running
    /// outlives its last heartbeat before another host ends that call `failed`
    /// (never runs it again).
    pub lease: Duration,
    /// `host` (default: the machine's host name): this host's name in the shared store
    /// and in every record of its audit log. Hosts sharing a store need distinct names.
    pub host: String,
}

impl PartialEq for StoreConfig {
    fn eq(&self, other: &StoreConfig) -> bool {
        self.shared.as_ref().map(|t| &t.shown) == other.shared.as_ref().map(|t| &t.shown)
            && self.lease == other.lease
            && self.host == other.host
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    url_secret: Option<Spanned<String>>,
    lease_secs: Option<Spanned<u64>>,
    host: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
}

/// The machine's host name (`localhost` when it has none).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte stays 0.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

/// `vault`: the vault's file and master key file, for `url_secret` (`None`: leave a
/// store whose URL is in the vault unset).
pub(super) fn check_store(
    locate: &Locator,
    base: &std::path::Path,
    raw: &RawStore,
    vault: Option<(&std::path::Path, Option<&std::path::Path>)>,
) -> Result<StoreConfig, ConfigError> {
    let host = match &raw.host {
        Some(h) => {
            let name = h.get_ref();
            let fine = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !fine {
                return Err(locate.error(
                    h.span().start,
                    "store.host",
                    "a host name is 1-64 letters, digits, '-', '_' or '.'",
                ));
            }
            name.clone()
        }
        None => host_name(),
    };
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
    let given = [
        (&raw.url, "store.url"),
        (&raw.url_env, "store.url_env"),
        (&raw.url_secret, "store.url_secret"),
    ];
    let mut set = given
        .iter()
        .filter_map(|(v, key)| v.as_ref().map(|v| (v, *key)));
    let (first, second) = (set.next(), set.next());
    if let Some((v, key)) = second {
        return Err(locate.error(
            v.span().start,
            key,
            "set one of url, url_env and url_secret",
        ));
    }
    let (url, at, key) = match first {
        Some((u, key @ "store.url")) => (u.get_ref().clone(), u.span().start, key),
        Some((e, key @ "store.url_env")) => match std::env::var(e.get_ref()) {
            Ok(url) if !url.is_empty() => (url, e.span().start, key),
            _ => {
                return Err(locate.error(
                    e.span().start,
                    key,
                    &format!("the environment variable {} is not set", e.get_ref()),
                ));
            }
        },
        Some((name, key)) => {
            let Some((vault, key_file)) = vault else {
                return Ok(StoreConfig {
                    shared: None,
                    lease,
                    host,
                });
            };
            let read = crate::vault::MasterKey::resolve(key_file)
                .and_then(|master| crate::vault::Vault::open(vault, &master))
                .and_then(|v| v.get(name.get_ref()));
            match read {
                Ok(url) => (url.to_string(), name.span().start, key),
                Err(e) => {
                    return Err(locate.error(
                        name.span().start,
                        key,
                        &format!(
                            "cannot read secret {:?} from the vault: {e}",
                            name.get_ref()
                        ),
                    ));
                }
            }
        }
        None => {
            return Ok(StoreConfig {
                shared: None,
                lease,
                host,
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
    let ca_file = raw
        .ca_file
        .as_ref()
        .map(|c| (base.join(c.get_ref()), c.span().start));
    let target =
        Target::parse(&url, ca_file.as_ref().map(|c| c.0.as_path())).map_err(|m| {
            match (&ca_file, m.starts_with("ca_file")) {
                (Some((_, at)), true) => locate.error(*at, "store.ca_file", &m),
                _ => locate.error(at, key, &m),
            }
        })?;
    Ok(StoreConfig {
        shared: Some(target),
        lease,
        host,
    })
}
