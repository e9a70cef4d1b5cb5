//! `warden.toml`: the operator's configuration, parsed strictly.
//!
//! Owns the file format, its defaults and every check that can be made without
//! loading a component. Every error names the file, line, column and key. It must
//! never accept a key it does not understand or return a half-validated config.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::grants::http::{HostPattern, HttpGrant};
use crate::grants::secrets::{SecretGrant, SecretUse};
use crate::tokens::{Role, TokenEntry};

/// Default limits for a plugin that sets none. A plugin with no `[plugin.limits]`
/// must not get 4 GiB and unbounded time.
pub const DEFAULT_PLUGIN_LIMITS: Limits = Limits {
    memory_mb: 64,
    timeout_ms: 5_000,
    max_output_kb: 256,
    max_log_kb: 64,
    fuel: None,
};

/// Default limits for a policy: decisions are small and quick.
pub const DEFAULT_POLICY_LIMITS: Limits = Limits {
    memory_mb: 32,
    timeout_ms: 200,
    max_output_kb: 64,
    max_log_kb: 16,
    fuel: None,
};

/// Largest values a config may ask for.
const MAX_MEMORY_MB: u64 = 4096;
const MAX_TIMEOUT_MS: u64 = 600_000;
const MAX_OUTPUT_KB: u64 = 64 * 1024;

/// A config error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The key the error is about, e.g. `plugin[1].grants.http[0]`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration: every path resolved, every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    /// Compiled components; `<data_dir>/cache` unless set. Several configs may share one.
    pub cache_dir: PathBuf,
    /// The encrypted vault; `<data_dir>/vault.json` unless `[vault] path` is set.
    pub vault_path: PathBuf,
    /// The master key file: `[vault] key_file`, else `<key_dir>/master.key` (outside the
    /// data dir, so a copy of the data dir holds no key). A `master.key` an older warden
    /// left in the data dir is still used, with a warning. `WARDEN_MASTER_KEY` takes
    /// precedence over it. `None`: nowhere to put one (no key dir).
    pub key_file: Option<PathBuf>,
    /// Where warden's keys live when not named one by one: outside the data dir, so a
    /// copy of the data dir holds no key. `key_dir`, or `$XDG_CONFIG_HOME/warden`, or
    /// `~/.config/warden`; `None` when none of those is set.
    pub key_dir: Option<PathBuf>,
    pub audit: AuditConfig,
    /// Run history and the approval queue: `<data_dir>/runs.db`.
    pub runs_db: PathBuf,
    pub approvals: ApprovalsConfig,
    pub server: ServerConfig,
    /// `[[token]]`: bearer tokens (as hashes) and the principals they speak for.
    pub tokens: Vec<TokenEntry>,
    pub plugins: Vec<PluginConfig>,
    pub policies: Vec<PolicyConfig>,
    /// The config file's text, kept to locate errors found while loading components.
    source: String,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub id: String,
    pub component: PathBuf,
    pub sha256: Option<String>,
    pub grants: Grants,
    pub limits: Limits,
    /// Byte offset of this plugin's `id` in the file, for errors found later.
    pub span: usize,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub id: String,
    pub component: PathBuf,
    pub sha256: Option<String>,
    /// Tool-name patterns (`*` wildcard) this policy applies to.
    pub tools: Vec<String>,
    /// The policy's own `config` table, as JSON.
    pub config: serde_json::Value,
    pub limits: Limits,
    pub span: usize,
}

/// `[approvals]`: who may decide held calls, how long they wait, who is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// Held calls are queued for a decision. `false` denies them instead. Default true.
    pub enabled: bool,
    /// Who may decide when no policy names approvers: principals or `group:NAME`.
    /// Default: nobody, so a held call can only be settled by its window or timeout.
    pub approvers: Vec<String>,
    /// `group:NAME` members.
    pub groups: BTreeMap<String, Vec<String>>,
    /// How long a soft request waits for a rejection before it runs (policy's
    /// `timeout-secs` wins). Default 900 s.
    pub soft_window_secs: u32,
    /// How long a hard request waits for sign-off before it is denied (policy's
    /// `timeout-secs` wins). Default 86400 s.
    pub hard_timeout_secs: u32,
    /// Distinct approvals a hard request needs when no policy says. Default 1.
    pub hard_approvals: u32,
    /// How long a caller waits for a decision before it gets a pending result
    /// (`warden call --wait` overrides). Default 0: return at once.
    pub wait_ms: u64,
    /// Base URL of `warden serve`, for one-click links. Default: no links.
    pub public_url: Option<String>,
    /// How long a one-click link stays valid (never past the request's expiry).
    /// Default 86400 s.
    pub link_ttl_secs: u32,
    pub webhook: Option<Webhook>,
}

/// `[audit]`: the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `false` turns auditing off (for measurements only: `warden check` and
    /// `warden serve` say so loudly). Default true.
    pub enabled: bool,
    /// `[audit] dir`; default `<data_dir>/audit`.
    pub dir: PathBuf,
    /// Size at which a new segment starts (`max_segment_kb`, default 64 MiB).
    pub max_segment_bytes: u64,
    /// The Ed25519 key that signs checkpoints (`signing_key`; default
    /// `<key_dir>/audit-signing.key`, created on first use). Never inside the data dir.
    /// `None` when there is no key dir to default to: opening the log then fails, saying
    /// what to set.
    pub signing_key: Option<PathBuf>,
    /// A checkpoint every this many records (`checkpoint_every`, default 1000)...
    pub checkpoint_every: u64,
    /// ...or this often (`checkpoint_secs`, default 10), and when warden stops.
    pub checkpoint_secs: u64,
    /// `[audit.witness]`: where checkpoints are also sent. Default: nowhere.
    pub witness: crate::store::audit::WitnessConfig,
}

impl AuditConfig {
    /// The signing key's path, or why there is none.
    pub fn signing_key(&self) -> Result<&Path, String> {
        self.signing_key.as_deref().ok_or_else(|| {
            "no place for the audit signing key: set key_dir (a directory outside the data dir) or [audit] signing_key in the config (neither XDG_CONFIG_HOME nor HOME is set)".to_string()
        })
    }
}

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
        }
    }
}

/// `[approvals.webhook]`: a JSON POST for every new held call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// Slack-compatible payload (`{"text": ...}`) instead of warden's JSON.
    pub slack: bool,
    /// Attempts before giving up (backoff 1 s, 2 s, 4 s, ...). Default 5.
    pub attempts: u32,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            enabled: true,
            approvers: Vec::new(),
            groups: BTreeMap::new(),
            soft_window_secs: 900,
            hard_timeout_secs: 86_400,
            hard_approvals: 1,
            wait_ms: 0,
            public_url: None,
            link_ttl_secs: 86_400,
            webhook: None,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory of the whole instance, in MiB.
    pub memory_mb: u64,
    /// Wall-clock time for one call, in milliseconds.
    pub timeout_ms: u64,
    /// Largest output a call may return, in KiB.
    pub max_output_kb: u64,
    /// Largest amount of log (and captured stdout/stderr) kept per call, in KiB.
    pub max_log_kb: u64,
    /// Optional instruction budget per call (wasmtime fuel).
    pub fuel: Option<u64>,
}

// ---- the file format, exactly as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Spanned<String>>,
    cache_dir: Option<Spanned<String>>,
    key_dir: Option<Spanned<String>>,
    #[serde(default)]
    vault: RawVault,
    #[serde(default)]
    audit: RawAudit,
    approvals: Option<RawApprovals>,
    server: Option<RawServer>,
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
    #[serde(default, rename = "plugin")]
    plugins: Vec<RawPlugin>,
    #[serde(default, rename = "policy")]
    policies: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    id: Spanned<String>,
    component: Spanned<String>,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    grants: RawGrants,
    limits: Option<RawLimits>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    http: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<RawFileGrant>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    secrets: Vec<Spanned<RawSecretGrant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretGrant {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    header: Option<String>,
    format: Option<String>,
    #[serde(default)]
    placeholder: bool,
    #[serde(default)]
    substitute: Vec<Substitute>,
    #[serde(default)]
    reveal: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Substitute {
    Header,
    Query,
    Body,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "yes")]
    enabled: bool,
    dir: Option<Spanned<String>>,
    max_segment_kb: Option<Spanned<u64>>,
    signing_key: Option<Spanned<String>>,
    checkpoint_every: Option<Spanned<u64>>,
    checkpoint_secs: Option<Spanned<u64>>,
    witness: Option<RawWitness>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    dir: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            dir: None,
            max_segment_kb: None,
            signing_key: None,
            checkpoint_every: None,
            checkpoint_secs: None,
            witness: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    enabled: Option<bool>,
    #[serde(default)]
    approvers: Vec<Spanned<String>>,
    #[serde(default)]
    groups: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    soft_window_secs: Option<Spanned<u64>>,
    hard_timeout_secs: Option<Spanned<u64>>,
    hard_approvals: Option<Spanned<u64>>,
    wait_ms: Option<Spanned<u64>>,
    public_url: Option<Spanned<String>>,
    link_ttl_secs: Option<Spanned<u64>>,
    webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    stdio_principal: Option<Spanned<String>>,
    shutdown_grace_ms: Option<u64>,
    max_guest_memory_mb: Option<Spanned<u64>>,
    capacity_wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    principal: Spanned<String>,
    roles: Spanned<Vec<String>>,
    sha256: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    format: Option<Spanned<String>>,
    attempts: Option<Spanned<u64>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVault {
    path: Option<String>,
    key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileGrant {
    host: String,
    guest: String,
    mode: Mode,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Ro,
    Rw,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mb: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    max_output_kb: Option<Spanned<u64>>,
    max_log_kb: Option<Spanned<u64>>,
    fuel: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: Spanned<String>,
    component: Spanned<String>,
    sha256: Option<Spanned<String>>,
    tools: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    config: toml::Table,
    limits: Option<RawLimits>,
}

impl Config {
    /// Read and validate `path`. Relative paths inside are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let locate = Locator { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = text[..text.floor_char_boundary(offset)]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = text[line..].lines().next().unwrap_or_default().trim();
            locate.error(
                offset,
                "",
                &format!("{} (in `{line}`)", e.message().trim_end()),
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));

        let data_dir = match &raw.data_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                return Err(locate.error(dir.span().start, "data_dir", "must not be empty"));
            }
            Some(dir) => base.join(dir.get_ref()),
            None => base.join("data"),
        };
        let cache_dir = match &raw.cache_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                return Err(locate.error(dir.span().start, "cache_dir", "must not be empty"));
            }
            Some(dir) => base.join(dir.get_ref()),
            None => data_dir.join("cache"),
        };
        let vault_path = raw
            .vault
            .path
            .as_ref()
            .map_or_else(|| data_dir.join("vault.json"), |p| base.join(p));
        let key_dir = match &raw.key_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                return Err(locate.error(dir.span().start, "key_dir", "must not be empty"));
            }
            Some(dir) => Some(base.join(dir.get_ref())),
            None => default_key_dir(),
        };
        if let (Some(dir), Some(raw_dir)) = (&key_dir, &raw.key_dir)
            && absolute(dir).starts_with(absolute(&data_dir))
        {
            return Err(locate.error(
                raw_dir.span().start,
                "key_dir",
                &format!(
                    "{} is inside the data dir ({}): a copy of the data dir would hold the keys",
                    dir.display(),
                    data_dir.display()
                ),
            ));
        }
        let runs_db = data_dir.join("runs.db");
        let audit = check_audit(&locate, base, &data_dir, key_dir.as_deref(), &raw.audit)?;
        let legacy = data_dir.join("master.key");
        let key_file = match &raw.vault.key_file {
            Some(p) => Some(base.join(p)),
            None if legacy.is_file() => {
                tracing::warn!(
                    "the master key {} is in the data dir, beside the vault: a copy of the data dir holds both; move it to {} (or set [vault] key_file)",
                    legacy.display(),
                    key_dir.as_ref().map_or("a key dir".to_string(), |d| d
                        .join("master.key")
                        .display()
                        .to_string())
                );
                Some(legacy)
            }
            None => key_dir.as_ref().map(|d| d.join("master.key")),
        };
        if let Some(key) = &key_file
            && key.parent().map(absolute) == vault_path.parent().map(absolute)
            && raw.vault.key_file.is_some()
        {
            tracing::warn!(
                "the master key {} and the vault {} are in one directory: whoever copies it has both",
                key.display(),
                vault_path.display()
            );
        }

        let approvals = match &raw.approvals {
            None => ApprovalsConfig::default(),
            Some(raw) => check_approvals(&locate, raw)?,
        };
        let server = match &raw.server {
            None => ServerConfig::default(),
            Some(raw) => check_server(&locate, raw)?,
        };
        let tokens = check_tokens(&locate, &raw.tokens)?;

        let mut ids = HashSet::new();
        let mut plugins = Vec::new();
        for (i, raw) in raw.plugins.iter().enumerate() {
            let key = format!("plugin[{i}]");
            let id = check_id(&locate, &raw.id, &key, &mut ids)?;
            let component = check_component(&locate, base, &raw.component, &key)?;
            let sha256 = check_sha256(&locate, raw.sha256.as_ref(), &key)?;
            let grants = check_grants(&locate, base, &raw.grants, &key)?;
            let limits = check_limits(&locate, raw.limits.as_ref(), DEFAULT_PLUGIN_LIMITS, &key)?;
            plugins.push(PluginConfig {
                id,
                component,
                sha256,
                grants,
                limits,
                span: raw.id.span().start,
            });
        }

        let mut policies = Vec::new();
        for (i, raw) in raw.policies.iter().enumerate() {
            let key = format!("policy[{i}]");
            let id = check_id(&locate, &raw.id, &key, &mut ids)?;
            let component = check_component(&locate, base, &raw.component, &key)?;
            let sha256 = check_sha256(&locate, raw.sha256.as_ref(), &key)?;
            let tools = match &raw.tools {
                None => vec!["*".to_string()],
                Some(list) if list.is_empty() => {
                    return Err(locate.error(
                        raw.id.span().start,
                        &format!("{key}.tools"),
                        "must name at least one tool pattern (use [\"*\"] for all)",
                    ));
                }
                Some(list) => {
                    let mut out = Vec::new();
                    for (j, pattern) in list.iter().enumerate() {
                        let p = pattern.get_ref();
                        if p.is_empty()
                            || !p
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*'))
                        {
                            return Err(locate.error(
                                pattern.span().start,
                                &format!("{key}.tools[{j}]"),
                                &format!("invalid tool pattern {p:?}: use tool names and `*`"),
                            ));
                        }
                        out.push(p.clone());
                    }
                    out
                }
            };
            let config = serde_json::to_value(&raw.config).map_err(|e| {
                locate.error(
                    raw.id.span().start,
                    &format!("{key}.config"),
                    &e.to_string(),
                )
            })?;
            let limits = check_limits(&locate, raw.limits.as_ref(), DEFAULT_POLICY_LIMITS, &key)?;
            policies.push(PolicyConfig {
                id,
                component,
                sha256,
                tools,
                config,
                limits,
                span: raw.id.span().start,
            });
        }

        // warden's own state is never a plugin's: with the vault and key a plugin could
        // decrypt every secret, with the audit log or run history rewrite the record,
        // and with the compile cache plant native code the host maps and runs.
        let protected = [
            ("data dir", data_dir.as_path()),
            ("compile cache", cache_dir.as_path()),
            ("vault", vault_path.parent().unwrap_or(&vault_path)),
            (
                "master key",
                key_file
                    .as_deref()
                    .and_then(Path::parent)
                    .unwrap_or(data_dir.as_path()),
            ),
        ];
        for (what, dir) in protected {
            let dir = absolute(dir);
            for (i, plugin) in plugins.iter().enumerate() {
                let overlapping = plugin
                    .grants
                    .files
                    .iter()
                    .find(|g| dir.starts_with(&g.host) || g.host.starts_with(&dir));
                if let Some(grant) = overlapping {
                    return Err(locate.error(
                        plugin.span,
                        &format!("plugin[{i}].grants.files"),
                        &format!(
                            "{} would expose warden's {what} ({}) to the plugin",
                            grant.host.display(),
                            dir.display()
                        ),
                    ));
                }
            }
        }

        Ok(Config {
            file: path.to_path_buf(),
            data_dir,
            cache_dir,
            vault_path,
            key_file,
            key_dir,
            audit,
            runs_db,
            approvals,
            server,
            tokens,
            plugins,
            policies,
            source: text.to_string(),
        })
    }

    /// The key that signs one-click approval links.
    pub fn links_key(&self) -> PathBuf {
        self.data_dir.join("links.key")
    }

    /// `sha256:<hex>` of the config file's text, as loaded.
    pub fn digest(&self) -> String {
        format!("sha256:{}", crate::util::sha256_hex(self.source.as_bytes()))
    }

    /// An error about something at byte `offset` of the config file, found after parsing
    /// (e.g. while loading the component a plugin names).
    pub fn error_at(&self, offset: usize, key: &str, message: impl fmt::Display) -> ConfigError {
        Locator {
            file: &self.file,
            text: &self.source,
        }
        .error(offset, key, &message.to_string())
    }
}

/// `path` made absolute and canonical as far as it exists (the rest may be created
/// later), so it can be compared with canonical grant directories.
fn absolute(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest.iter().rev().fold(canonical, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
            }
            _ => return path.to_path_buf(),
        }
    }
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, offset: usize, key: &str, message: &str) -> ConfigError {
        let before = &self.text[..self.text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

/// Where keys go when no location is configured: `$XDG_CONFIG_HOME/warden`, or
/// `$HOME/.config/warden`.
fn default_key_dir() -> Option<PathBuf> {
    let set = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    set("XDG_CONFIG_HOME")
        .map(|d| d.join("warden"))
        .or_else(|| set("HOME").map(|h| h.join(".config/warden")))
}

fn check_audit(
    locate: &Locator,
    base: &Path,
    data_dir: &Path,
    key_dir: Option<&Path>,
    raw: &RawAudit,
) -> Result<AuditConfig, ConfigError> {
    let dir = match &raw.dir {
        Some(dir) if dir.get_ref().trim().is_empty() => {
            return Err(locate.error(dir.span().start, "audit.dir", "must not be empty"));
        }
        Some(dir) => base.join(dir.get_ref()),
        None => data_dir.join("audit"),
    };
    let number = |v: &Option<Spanned<u64>>, key: &str, default: u64, max: u64| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => Err(locate.error(
            n.span().start,
            &format!("audit.{key}"),
            &format!("must be between 1 and {max}"),
        )),
    };
    let max_segment_bytes = number(&raw.max_segment_kb, "max_segment_kb", 65536, 1 << 22)? << 10;
    let checkpoint_every = number(&raw.checkpoint_every, "checkpoint_every", 1000, 1_000_000)?;
    let checkpoint_secs = number(&raw.checkpoint_secs, "checkpoint_secs", 10, 86_400)?;
    let (signing_key, at, key) = match &raw.signing_key {
        Some(path) => (
            Some(base.join(path.get_ref())),
            path.span().start,
            "audit.signing_key",
        ),
        None => (key_dir.map(|d| d.join("audit-signing.key")), 0, "key_dir"),
    };
    if let Some(path) = &signing_key
        && absolute(path).starts_with(absolute(data_dir))
    {
        return Err(locate.error(
            at,
            key,
            &format!(
                "the audit signing key {} is inside the data dir ({}): whoever can rewrite the log could then re-sign it",
                path.display(),
                data_dir.display()
            ),
        ));
    }
    let mut witness = crate::store::audit::WitnessConfig::default();
    if let Some(w) = &raw.witness {
        if let Some(d) = &w.dir {
            let path = base.join(d.get_ref());
            if absolute(&path).starts_with(absolute(data_dir)) {
                return Err(locate.error(
                    d.span().start,
                    "audit.witness.dir",
                    "the witness must live outside the data dir (on another volume, ideally another host)",
                ));
            }
            witness.dir = Some(path);
        }
        if let Some(u) = &w.url {
            let text = u.get_ref().trim_end_matches('/');
            let ok = (text.starts_with("http://") || text.starts_with("https://"))
                && text
                    .parse::<http::Uri>()
                    .is_ok_and(|uri| uri.authority().is_some());
            if !ok {
                return Err(locate.error(
                    u.span().start,
                    "audit.witness.url",
                    &format!("{:?} is not an http(s) URL", u.get_ref()),
                ));
            }
            witness.url = Some(u.get_ref().clone());
        }
    }
    Ok(AuditConfig {
        enabled: raw.enabled,
        dir,
        max_segment_bytes,
        signing_key,
        checkpoint_every,
        checkpoint_secs,
        witness,
    })
}

/// Is `name` usable as a principal (or group) name: non-empty, short, no spaces or
/// control characters?
pub fn valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn check_server(locate: &Locator, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
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
    })
}

fn check_tokens(locate: &Locator, raw: &[RawToken]) -> Result<Vec<TokenEntry>, ConfigError> {
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

fn check_approvals(locate: &Locator, raw: &RawApprovals) -> Result<ApprovalsConfig, ConfigError> {
    let d = ApprovalsConfig::default();
    let mut groups = BTreeMap::new();
    for (name, members) in &raw.groups {
        let key = format!("approvals.groups.{}", name.get_ref());
        if !valid_principal(name.get_ref()) || name.get_ref().contains(':') {
            return Err(locate.error(name.span().start, &key, "invalid group name"));
        }
        let mut list = Vec::new();
        for m in members {
            if !valid_principal(m.get_ref()) || m.get_ref().starts_with("group:") {
                return Err(locate.error(
                    m.span().start,
                    &key,
                    &format!(
                        "invalid member {:?}: a principal name (groups do not nest)",
                        m.get_ref()
                    ),
                ));
            }
            list.push(m.get_ref().clone());
        }
        groups.insert(name.get_ref().clone(), list);
    }
    let mut approvers = Vec::new();
    for (i, a) in raw.approvers.iter().enumerate() {
        let key = format!("approvers[{i}]");
        let name = a.get_ref();
        if !valid_principal(name) {
            return Err(locate.error(a.span().start, &key, "invalid principal name"));
        }
        if let Some(group) = name.strip_prefix("group:")
            && !groups.contains_key(group)
        {
            return Err(locate.error(
                a.span().start,
                &format!("approvals.{key}"),
                &format!("group {group:?} is not defined in [approvals.groups]"),
            ));
        }
        approvers.push(name.clone());
    }
    let secs = |v: &Option<Spanned<u64>>, key: &str, default: u32, max: u64| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
        Some(n) => Err(locate.error(
            n.span().start,
            &format!("approvals.{key}"),
            &format!("must be between 1 and {max}"),
        )),
    };
    let month = 30 * 24 * 3600;
    let url = |v: &Spanned<String>, key: &str| {
        let u = v.get_ref().trim_end_matches('/');
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.parse::<http::Uri>()
                .is_ok_and(|uri| uri.authority().is_some());
        if ok {
            Ok(u.to_string())
        } else {
            Err(locate.error(
                v.span().start,
                &format!("approvals.{key}"),
                &format!("{:?} is not an http(s) URL", v.get_ref()),
            ))
        }
    };
    let webhook = match &raw.webhook {
        None => None,
        Some(w) => Some(Webhook {
            url: url(&w.url, "webhook.url")?,
            slack: match &w.format {
                None => false,
                Some(f) if f.get_ref() == "json" => false,
                Some(f) if f.get_ref() == "slack" => true,
                Some(f) => {
                    return Err(locate.error(
                        f.span().start,
                        "approvals.webhook.format",
                        "must be \"json\" or \"slack\"",
                    ));
                }
            },
            attempts: secs(&w.attempts, "webhook.attempts", 5, 20)?,
        }),
    };
    Ok(ApprovalsConfig {
        enabled: raw.enabled.unwrap_or(true),
        approvers,
        groups,
        soft_window_secs: secs(
            &raw.soft_window_secs,
            "soft_window_secs",
            d.soft_window_secs,
            month,
        )?,
        hard_timeout_secs: secs(
            &raw.hard_timeout_secs,
            "hard_timeout_secs",
            d.hard_timeout_secs,
            month,
        )?,
        hard_approvals: secs(&raw.hard_approvals, "hard_approvals", d.hard_approvals, 16)?,
        wait_ms: match &raw.wait_ms {
            None => d.wait_ms,
            Some(ms) if *ms.get_ref() <= 3_600_000 => *ms.get_ref(),
            Some(ms) => {
                return Err(locate.error(
                    ms.span().start,
                    "approvals.wait_ms",
                    "must be at most 3600000 (one hour)",
                ));
            }
        },
        public_url: raw
            .public_url
            .as_ref()
            .map(|u| url(u, "public_url"))
            .transpose()?,
        link_ttl_secs: secs(&raw.link_ttl_secs, "link_ttl_secs", d.link_ttl_secs, month)?,
        webhook,
    })
}

fn check_id(
    locate: &Locator,
    id: &Spanned<String>,
    key: &str,
    seen: &mut HashSet<String>,
) -> Result<String, ConfigError> {
    let value = id.get_ref();
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(locate.error(
            id.span().start,
            &format!("{key}.id"),
            &format!("invalid id {value:?}: use 1-64 of a-z, 0-9, '-' and '_'"),
        ));
    }
    if !seen.insert(value.clone()) {
        return Err(locate.error(
            id.span().start,
            &format!("{key}.id"),
            &format!("duplicate id {value:?}: plugin and policy ids must be unique"),
        ));
    }
    Ok(value.clone())
}

fn check_component(
    locate: &Locator,
    base: &Path,
    component: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let path = base.join(component.get_ref());
    if !path.is_file() {
        return Err(locate.error(
            component.span().start,
            &format!("{key}.component"),
            &format!("component file not found: {}", path.display()),
        ));
    }
    Ok(path.canonicalize().unwrap_or(path))
}

fn check_sha256(
    locate: &Locator,
    sha: Option<&Spanned<String>>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(sha) = sha else { return Ok(None) };
    let value = sha
        .get_ref()
        .strip_prefix("sha256:")
        .unwrap_or(sha.get_ref())
        .to_ascii_lowercase();
    if value.len() != 64 || !value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(locate.error(
            sha.span().start,
            &format!("{key}.sha256"),
            "must be 64 hex digits (the SHA-256 of the component file)",
        ));
    }
    Ok(Some(value))
}

fn check_grants(
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
fn check_secret_grant(
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

fn check_limits(
    locate: &Locator,
    raw: Option<&RawLimits>,
    defaults: Limits,
    key: &str,
) -> Result<Limits, ConfigError> {
    let Some(raw) = raw else { return Ok(defaults) };
    let range = |value: &Option<Spanned<u64>>,
                 name: &str,
                 max: u64,
                 default: u64|
     -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(locate.error(
                v.span().start,
                &format!("{key}.limits.{name}"),
                &format!("must be between 1 and {max}, got {}", v.get_ref()),
            )),
        }
    };
    Ok(Limits {
        memory_mb: range(
            &raw.memory_mb,
            "memory_mb",
            MAX_MEMORY_MB,
            defaults.memory_mb,
        )?,
        timeout_ms: range(
            &raw.timeout_ms,
            "timeout_ms",
            MAX_TIMEOUT_MS,
            defaults.timeout_ms,
        )?,
        max_output_kb: range(
            &raw.max_output_kb,
            "max_output_kb",
            MAX_OUTPUT_KB,
            defaults.max_output_kb,
        )?,
        max_log_kb: range(
            &raw.max_log_kb,
            "max_log_kb",
            MAX_OUTPUT_KB,
            defaults.max_log_kb,
        )?,
        fuel: match &raw.fuel {
            None => defaults.fuel,
            Some(v) => Some(range(&Some(v.clone()), "fuel", u64::MAX, 0)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_column_and_key() {
        let text = "[[plugin]]\nid = \"x\"\ncomponent = \"x.wasm\"\nbogus = 1\n";
        let err = Config::parse(Path::new("w.toml"), text).unwrap_err();
        assert_eq!((err.line, err.column), (4, 1), "{err}");
        assert!(err.message.contains("bogus"), "{err}");
    }
}
