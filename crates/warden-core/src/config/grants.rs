//! `[plugin.grants]`: http, files, env and secrets, as written and as validated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::grants::http::{HostPattern, HttpGrant};
use crate::grants::secrets::{SecretGrant, SecretUse};

use super::{ConfigError, Locator};

/// What a plugin may touch. Everything not listed is denied.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub http: Vec<HttpGrant>,
    pub files: Vec<FileGrant>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGrant {
    /// Absolute, canonical host directory.
    pub host: PathBuf,
    /// Absolute path the guest sees.
    pub guest: String,
    pub writable: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrants {
    #[serde(default)]
    pub(super) http: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) files: Vec<Spanned<RawFileGrant>>,
    #[serde(default)]
    pub(super) env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub(super) secrets: Vec<Spanned<RawSecretGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretGrant {
    pub(super) name: String,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) header: Option<String>,
    pub(super) format: Option<String>,
    #[serde(default)]
    pub(super) placeholder: bool,
    #[serde(default)]
    pub(super) substitute: Vec<Substitute>,
    #[serde(default)]
    pub(super) reveal: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Substitute {
    Header,
    Query,
    Body,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileGrant {
    pub(super) host: String,
    pub(super) guest: String,
    pub(super) mode: Mode,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum Mode {
    Ro,
    Rw,
}

pub(super) fn check_grants(
    locate: &Locator,
    base: &Path,
    raw: &RawGrants,
    key: &str,
) -> Result<Grants, ConfigError> {
    let mut grants = Grants::default();
    for (i, pattern) in raw.http.iter().enumerate() {
        let grant = HttpGrant::parse(pattern.get_ref()).map_err(|e| {
            locate.error(pattern.span().start, &format!("{key}.grants.http[{i}]"), &e)
        })?;
        grants.http.push(grant);
    }
    for (i, file) in raw.files.iter().enumerate() {
        let at = file.span().start;
        let fkey = format!("{key}.grants.files[{i}]");
        let f = file.get_ref();
        let host = base.join(&f.host);
        let host = host.canonicalize().map_err(|e| {
            locate.error(
                at,
                &format!("{fkey}.host"),
                &format!("cannot use directory {}: {e}", host.display()),
            )
        })?;
        if !host.is_dir() {
            return Err(locate.error(
                at,
                &format!("{fkey}.host"),
                &format!("{} is not a directory", host.display()),
            ));
        }
        let guest = f.guest.trim_end_matches('/');
        if !f.guest.starts_with('/') || guest.split('/').any(|c| c == ".." || c == ".") {
            return Err(locate.error(
                at,
                &format!("{fkey}.guest"),
                &format!(
                    "must be an absolute path without `.` or `..`, got {:?}",
                    f.guest
                ),
            ));
        }
        let guest = if guest.is_empty() {
            "/".to_string()
        } else {
            guest.to_string()
        };
        if grants.files.iter().any(|g: &FileGrant| g.guest == guest) {
            return Err(locate.error(
                at,
                &format!("{fkey}.guest"),
                &format!("{guest} is granted twice"),
            ));
        }
        grants.files.push(FileGrant {
            host,
            guest,
            writable: matches!(f.mode, Mode::Rw),
        });
    }
    for (name, value) in &raw.env {
        let n = name.get_ref();
        if n.is_empty() || n.contains(['=', '\0']) || value.contains('\0') {
            return Err(locate.error(
                name.span().start,
                &format!("{key}.grants.env.{n}"),
                "invalid environment variable",
            ));
        }
        grants.env.insert(n.clone(), value.clone());
    }
    for (i, secret) in raw.secrets.iter().enumerate() {
        let skey = format!("{key}.grants.secrets[{i}]");
        let grant = check_secret_grant(secret.get_ref(), secret.span().start, &grants.http)
            .map_err(|e| locate.error(secret.span().start, &skey, &e))?;
        grants.secrets.push(grant);
    }
    Ok(grants)
}

/// One secret grant: exactly one use (header, placeholder or reveal), hosts that the
/// plugin's `http` grant can reach.
pub(super) fn check_secret_grant(
    raw: &RawSecretGrant,
    span: usize,
    http: &[HttpGrant],
) -> Result<SecretGrant, String> {
    crate::vault::check_name(&raw.name).map_err(|e| e.to_string())?;
    let uses =
        usize::from(raw.header.is_some()) + usize::from(raw.placeholder) + usize::from(raw.reveal);
    if uses != 1 {
        return Err(
            "give exactly one use: `header = \"...\"`, `placeholder = true` or `reveal = true`"
                .into(),
        );
    }
    if raw.format.is_some() && raw.header.is_none() {
        return Err("`format` goes with `header`".into());
    }
    if !raw.substitute.is_empty() && !raw.placeholder {
        return Err("`substitute` goes with `placeholder = true`".into());
    }
    let mut hosts = Vec::new();
    for host in &raw.hosts {
        let pattern = HostPattern::parse(host).map_err(|why| format!("hosts: {host:?}: {why}"))?;
        let covered = |g: &HttpGrant| {
            g.host == pattern
                || (g.host.matches(&pattern.host) && (!pattern.wildcard || g.host.wildcard))
        };
        if !http.iter().any(covered) {
            return Err(format!(
                "hosts: {host:?} is not reachable: no `http` grant of this plugin covers it"
            ));
        }
        hosts.push(pattern);
    }
    let usage = if let Some(header) = &raw.header {
        let name = http::HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("invalid header name {header:?}"))?;
        if name == http::header::HOST {
            return Err("the Host header cannot carry a secret".into());
        }
        let format = raw.format.clone().unwrap_or_else(|| "{}".into());
        if format.matches("{}").count() != 1 {
            return Err(format!(
                "format {format:?} must contain `{{}}` exactly once"
            ));
        }
        SecretUse::Header { name, format }
    } else if raw.placeholder {
        SecretUse::Placeholder {
            query: raw.substitute.contains(&Substitute::Query),
            body: raw.substitute.contains(&Substitute::Body),
        }
    } else {
        if !raw.hosts.is_empty() {
            return Err("a `reveal` grant takes no `hosts`: the plugin holds the value".into());
        }
        SecretUse::Reveal
    };
    if !matches!(usage, SecretUse::Reveal) && hosts.is_empty() {
        return Err("`hosts` must name where the secret may be sent".into());
    }
    Ok(SecretGrant {
        secret: raw.name.clone(),
        hosts,
        usage,
        span,
    })
}
