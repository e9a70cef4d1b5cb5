//! `[[upstream]]`: MCP servers an operator already runs, whose tools warden governs.
//!
//! An upstream is started as a command (stdio: argv, working dir, an environment that
//! starts empty and gets only what is listed, vault secrets put into it by name), or
//! reached at a streamable HTTP URL (https, or http on loopback; headers, vault secrets
//! put into them by name, TLS verified). Its
//! tools can be filtered (`tools`, `deny_tools`), renamed with a `prefix`, bounded in
//! time and output, and pinned (`pins`, tool -> `sha256:` of its definition). Nothing
//! here starts a process; that is `upstream`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::components::check_id;
use super::{ConfigError, Locator};

/// What happens to a call of a tool whose definition changed since it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Refused until an operator accepts the new definition.
    Deny,
    /// Held for a hard approval (the approver sees why) until it is accepted.
    Hold,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub id: String,
    /// argv: the program and its arguments (empty for an HTTP upstream).
    pub command: Vec<String>,
    /// The streamable HTTP endpoint (`None` for a command).
    pub url: Option<String>,
    /// Headers sent to an HTTP upstream with every request.
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from the vault.
    pub secret_headers: Vec<SecretHeader>,
    /// The working directory; the config file's directory when unset.
    pub cwd: PathBuf,
    /// The whole environment of the process (nothing is inherited but `PATH`).
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values come from the vault: variable -> secret.
    pub secret_env: BTreeMap<String, String>,
    /// Tool-name patterns to offer (`*` wildcard); all when empty.
    pub tools: Vec<String>,
    /// Tool-name patterns never to offer (applied after `tools`).
    pub deny_tools: Vec<String>,
    /// Prepended to each of its tools' names (e.g. `time_`).
    pub prefix: String,
    pub timeout_ms: u64,
    pub max_output_kb: u64,
    /// Pinned definitions: upstream tool name -> `sha256:<hex>`.
    pub pins: BTreeMap<String, String>,
    pub on_change: OnChange,
    /// A destructive tool needs at least this tier (`None`: no floor).
    pub destructive_tier: Option<crate::call::Tier>,
    /// Started on its first call, its tools offered from the definitions accepted
    /// before (`start = "lazy"`); started with warden otherwise.
    pub lazy: bool,
    pub span: usize,
}

/// A header an HTTP upstream gets with a vault secret in it: `format` with `{}` for the
/// value (default `{}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretHeader {
    pub header: String,
    pub secret: String,
    #[serde(default = "bare")]
    pub format: String,
}

fn bare() -> String {
    "{}".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    id: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    secret_headers: Vec<SecretHeader>,
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secret_env: BTreeMap<String, String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    deny_tools: Vec<String>,
    prefix: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<u64>>,
    max_output_kb: Option<Spanned<u64>>,
    #[serde(default)]
    pins: BTreeMap<String, String>,
    on_change: Option<Spanned<String>>,
    destructive_tier: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
}

fn tool_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(super) fn check_upstreams(
    locate: &Locator,
    base: &Path,
    raw: &[RawUpstream],
    ids: &mut HashSet<String>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("upstream[{i}]");
        let at = raw.id.span().start;
        let id = check_id(locate, &raw.id, &key, ids)?;
        let command = match (&raw.command, &raw.url) {
            (Some(_), Some(url)) => {
                return Err(locate.error(
                    url.span().start,
                    &format!("{key}.url"),
                    "an upstream has a command or a url, not both",
                ));
            }
            (Some(c), None) if !c.get_ref().is_empty() && !c.get_ref()[0].trim().is_empty() => {
                let mut argv = c.get_ref().clone();
                // A program named by a relative path is relative to the config file, like
                // every path in it; a bare name is looked up on PATH.
                if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
                    let program = base.join(&argv[0]);
                    // Absolute: the process starts in `cwd`, not where warden was started.
                    argv[0] = std::path::absolute(&program)
                        .unwrap_or(program)
                        .display()
                        .to_string();
                }
                argv
            }
            (Some(c), None) => {
                return Err(locate.error(
                    c.span().start,
                    &format!("{key}.command"),
                    "must name a program: [\"program\", \"arg\", ...]",
                ));
            }
            (None, Some(_)) => Vec::new(),
            (None, None) => {
                return Err(locate.error(
                    at,
                    &key,
                    "needs a command (argv, e.g. [\"uvx\", \"mcp-server-time\"]) or a url",
                ));
            }
        };
        let url = match &raw.url {
            None => None,
            Some(u) => {
                let text = u.get_ref();
                let host = text
                    .strip_prefix("https://")
                    .or_else(|| text.strip_prefix("http://"))
                    .map(|rest| rest.split(['/', '?']).next().unwrap_or_default());
                let loopback = host.is_some_and(|h| {
                    let h = h.rsplit_once(':').map_or(h, |(h, _)| h);
                    h == "localhost" || h == "127.0.0.1" || h == "[::1]"
                });
                if host.is_none_or(str::is_empty) || (text.starts_with("http://") && !loopback) {
                    return Err(locate.error(
                        u.span().start,
                        &format!("{key}.url"),
                        "must be an https:// URL (http:// only on loopback)",
                    ));
                }
                Some(text.clone())
            }
        };
        if raw.url.is_none() && !(raw.headers.is_empty() && raw.secret_headers.is_empty()) {
            return Err(locate.error(
                at,
                &format!("{key}.headers"),
                "headers are for an upstream reached at a url",
            ));
        }
        for (j, h) in raw.secret_headers.iter().enumerate() {
            if h.header.trim().is_empty() || h.secret.trim().is_empty() || !h.format.contains("{}")
            {
                return Err(locate.error(
                    at,
                    &format!("{key}.secret_headers[{j}]"),
                    "needs a header, a secret, and a format with {} for the value",
                ));
            }
        }
        let cwd = raw
            .cwd
            .as_ref()
            .map_or_else(|| base.to_path_buf(), |d| base.join(d.get_ref()));
        for (name, secret) in &raw.secret_env {
            if raw.env.contains_key(name) {
                return Err(locate.error(
                    at,
                    &format!("{key}.secret_env.{name}"),
                    "is also in env: one value per variable",
                ));
            }
            if secret.trim().is_empty() {
                return Err(locate.error(
                    at,
                    &format!("{key}.secret_env.{name}"),
                    "must name a secret in the vault",
                ));
            }
        }
        let prefix = raw.prefix.as_ref().map(|p| p.get_ref().clone());
        if let Some(p) = &raw.prefix
            && (p.get_ref().len() > 32 || !tool_chars_ok(p.get_ref()))
        {
            return Err(locate.error(
                p.span().start,
                &format!("{key}.prefix"),
                "use at most 32 of A-Z, a-z, 0-9, '_', '-' and '.'",
            ));
        }
        let positive = |v: &Option<Spanned<u64>>, name: &str, default: u64, max: u64| match v {
            None => Ok(default),
            Some(v) if (1..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(locate.error(
                v.span().start,
                &format!("{key}.{name}"),
                &format!("must be between 1 and {max}"),
            )),
        };
        let timeout_ms = positive(&raw.timeout_ms, "timeout_ms", 30_000, 3_600_000)?;
        let max_output_kb = positive(&raw.max_output_kb, "max_output_kb", 256, 65_536)?;
        for (tool, digest) in &raw.pins {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(locate.error(
                    at,
                    &format!("{key}.pins.{tool}"),
                    "must be `sha256:` and 64 hex digits (see `warden upstreams list`)",
                ));
            }
        }
        let on_change = match raw.on_change.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("deny") => OnChange::Deny,
            Some("hold") => OnChange::Hold,
            Some(other) => {
                return Err(locate.error(
                    raw.on_change.as_ref().map_or(at, |s| s.span().start),
                    &format!("{key}.on_change"),
                    &format!("{other:?}: use \"deny\" or \"hold\""),
                ));
            }
        };
        let destructive_tier = match raw.destructive_tier.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("soft") => Some(crate::call::Tier::Soft),
            Some("hard") => Some(crate::call::Tier::Hard),
            Some("none") => None,
            Some(other) => {
                return Err(locate.error(
                    raw.destructive_tier.as_ref().map_or(at, |s| s.span().start),
                    &format!("{key}.destructive_tier"),
                    &format!("{other:?}: use \"soft\", \"hard\" or \"none\""),
                ));
            }
        };
        let lazy = match raw.start.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("eager") => false,
            Some("lazy") => true,
            Some(other) => {
                return Err(locate.error(
                    raw.start.as_ref().map_or(at, |s| s.span().start),
                    &format!("{key}.start"),
                    &format!("{other:?}: use \"eager\" or \"lazy\""),
                ));
            }
        };
        out.push(UpstreamConfig {
            id,
            lazy,
            command,
            url,
            headers: raw.headers.clone(),
            secret_headers: raw.secret_headers.clone(),
            cwd,
            env: raw.env.clone(),
            secret_env: raw.secret_env.clone(),
            tools: raw.tools.clone(),
            deny_tools: raw.deny_tools.clone(),
            prefix: prefix.unwrap_or_default(),
            timeout_ms,
            max_output_kb,
            pins: raw.pins.clone(),
            on_change,
            destructive_tier,
            span: at,
        });
    }
    Ok(out)
}

impl UpstreamConfig {
    /// Does the operator offer upstream tool `name`?
    pub fn offers(&self, name: &str) -> bool {
        let allowed = self.tools.is_empty()
            || self
                .tools
                .iter()
                .any(|p| crate::util::pattern_matches(p, name));
        allowed
            && !self
                .deny_tools
                .iter()
                .any(|p| crate::util::pattern_matches(p, name))
    }
}
