//! `[server]` and `[[token]]`: where `warden serve` listens, its bounds, and the bearer
//! tokens it accepts (hashes only).

use serde::Deserialize;
use toml::Spanned;

use crate::tokens::{Role, TokenEntry};

use super::{ConfigError, Locator};

/// `[server]`: how `warden serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Default `127.0.0.1:8700`; `--listen` overrides.
    pub listen: std::net::SocketAddr,
    /// `Host` header values accepted besides loopback names (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted from browsers; requests without `Origin` are not
    /// browsers and pass. Default: none.
    pub allowed_origins: Vec<String>,
    /// The principal `warden serve --stdio` calls run as (`--as` overrides).
    /// Default `local-agent`.
    pub stdio_principal: String,
    /// On SIGTERM, how long calls in flight may take to finish. Default 10000.
    pub shutdown_grace_ms: u64,
    /// The guest memory all tool calls in flight may hold together (each reserves its
    /// `memory_mb`), in MiB. Default 1024.
    pub max_guest_memory_mb: u64,
    /// How long a call waits for room under that bound before it is refused
    /// (`over-capacity`). Default 5000.
    pub capacity_wait_ms: u64,
    /// A console session ends after this long without a request, in seconds.
    /// Default 1800 (30 minutes).
    pub session_idle_secs: u64,
    /// ... and this long after sign-in, however busy. Default 43200 (12 hours).
    pub session_max_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8700)),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            stdio_principal: "local-agent".into(),
            shutdown_grace_ms: 10_000,
            max_guest_memory_mb: 1024,
            capacity_wait_ms: 5_000,
            session_idle_secs: 1800,
            session_max_secs: 43_200,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    pub(super) stdio_principal: Option<Spanned<String>>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) max_guest_memory_mb: Option<Spanned<u64>>,
    pub(super) capacity_wait_ms: Option<u64>,
    pub(super) session_idle_secs: Option<Spanned<u64>>,
    pub(super) session_max_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: Spanned<String>,
    pub(super) principal: Spanned<String>,
    pub(super) roles: Spanned<Vec<String>>,
    pub(super) sha256: Spanned<String>,
}

/// Is `name` usable as a principal (or group) name: non-empty, short, no spaces or
/// control characters?
pub fn valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

pub(super) fn check_server(locate: &Locator, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
    let d = ServerConfig::default();
    let listen = match &raw.listen {
        None => d.listen,
        Some(l) => l.get_ref().parse().map_err(|_| {
            locate.error(
                l.span().start,
                "server.listen",
                &format!("{:?} is not an address like 127.0.0.1:8700", l.get_ref()),
            )
        })?,
    };
    let stdio_principal = match &raw.stdio_principal {
        None => d.stdio_principal,
        Some(p) if valid_principal(p.get_ref()) => p.get_ref().clone(),
        Some(p) => {
            return Err(locate.error(
                p.span().start,
                "server.stdio_principal",
                "invalid principal name",
            ));
        }
    };
    Ok(ServerConfig {
        listen,
        allowed_hosts: raw.allowed_hosts.clone(),
        allowed_origins: raw.allowed_origins.clone(),
        stdio_principal,
        shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(d.shutdown_grace_ms),
        max_guest_memory_mb: match &raw.max_guest_memory_mb {
            None => d.max_guest_memory_mb,
            Some(mb) if (1..=1 << 20).contains(mb.get_ref()) => *mb.get_ref(),
            Some(mb) => {
                return Err(locate.error(
                    mb.span().start,
                    "server.max_guest_memory_mb",
                    "must be between 1 and 1048576",
                ));
            }
        },
        capacity_wait_ms: raw.capacity_wait_ms.unwrap_or(d.capacity_wait_ms),
        session_idle_secs: session_secs(
            locate,
            &raw.session_idle_secs,
            "server.session_idle_secs",
            d.session_idle_secs,
        )?,
        session_max_secs: session_secs(
            locate,
            &raw.session_max_secs,
            "server.session_max_secs",
            d.session_max_secs,
        )?,
    })
}

/// A session lifetime: between a second and 30 days.
fn session_secs(
    locate: &Locator,
    raw: &Option<Spanned<u64>>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) if (1..=30 * 86_400).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(locate.error(
            v.span().start,
            key,
            "must be between 1 and 2592000 seconds (30 days)",
        )),
    }
}

pub(super) fn check_tokens(
    locate: &Locator,
    raw: &[RawToken],
) -> Result<Vec<TokenEntry>, ConfigError> {
    let mut out: Vec<TokenEntry> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let key = format!("token[{i}]");
        let name = t.name.get_ref();
        if name.is_empty() || out.iter().any(|o| o.name == *name) {
            return Err(locate.error(
                t.name.span().start,
                &format!("{key}.name"),
                "token names must be non-empty and unique",
            ));
        }
        if !valid_principal(t.principal.get_ref()) || t.principal.get_ref() == "warden" {
            return Err(locate.error(
                t.principal.span().start,
                &format!("{key}.principal"),
                "invalid principal name",
            ));
        }
        let mut roles = Vec::new();
        for r in t.roles.get_ref() {
            roles.push(Role::parse(r).ok_or_else(|| {
                locate.error(
                    t.roles.span().start,
                    &format!("{key}.roles"),
                    &format!("unknown role {r:?} (agent, approver, operator)"),
                )
            })?);
        }
        if roles.is_empty() {
            return Err(locate.error(
                t.roles.span().start,
                &format!("{key}.roles"),
                "name at least one role",
            ));
        }
        let hash = t.sha256.get_ref().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(locate.error(
                t.sha256.span().start,
                &format!("{key}.sha256"),
                "must be the 64-hex-digit SHA-256 of the token (from `warden tokens create`), never the token itself",
            ));
        }
        out.push(TokenEntry {
            name: name.clone(),
            principal: t.principal.get_ref().clone(),
            roles,
            sha256: hash,
        });
    }
    Ok(out)
}
