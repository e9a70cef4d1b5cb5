//! `warden.toml`: the operator's configuration, parsed strictly.
//!
//! Owns the file format, its defaults and every check that can be made without
//! loading a component. Every error names the file, line, column and key. It must
//! never accept a key it does not understand or return a half-validated config.
//!
//! This module reads the file and checks what spans sections (directories, keys, no
//! grant over warden's own state); each section's types, raw form and checks live in
//! their own file: `components` (`[[plugin]]`, `[[policy]]`), `limits`,
//! `audit`, `approvals`, `server` (and `[[token]]`), `automation` (`[[schedule]]`,
//! `[[trigger]]`). `[plugin.grants]` is parsed by
//! `crate::grants`, one module per capability; this module locates its errors.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::tokens::TokenEntry;

mod approvals;
mod audit;
mod automation;
mod budgets;
mod components;
mod limits;
mod server;
mod store;
mod upstreams;

pub use approvals::{ApprovalsConfig, Webhook};
pub use audit::AuditConfig;
pub use automation::{
    CatchUp, Criteria, DeliveryId, Overlap, ScheduleConfig, SignatureKind, TriggerConfig,
};
pub use budgets::{Each, LimitConfig, LimitKind, Measure, OnExceed, Per, RunawayConfig, Scope};
pub use components::{PluginConfig, PolicyConfig};
pub use limits::{DEFAULT_PLUGIN_LIMITS, DEFAULT_POLICY_LIMITS, Limits};
pub use server::{ServerConfig, valid_principal};
pub use store::StoreConfig;
pub use upstreams::{OnChange, UpstreamConfig};

use crate::grants::Grants;
use approvals::{RawApprovals, check_approvals};
use audit::{RawAudit, check_audit};
use automation::{RawSchedule, RawTrigger, check_schedules, check_triggers};
use budgets::{RawLimit, RawRunaway, check_limits_list, check_runaway};
use components::{RawPlugin, RawPolicy, check_component, check_costs, check_id, check_sha256};
use limits::check_limits;
use server::{RawServer, RawToken, check_server, check_tokens};
use store::{RawStore, check_store};
use upstreams::{RawUpstream, check_upstreams};

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
    /// `[store]`: the approval queue on a PostgreSQL shared by several hosts.
    pub store: StoreConfig,
    pub server: ServerConfig,
    /// `[[token]]`: bearer tokens (as hashes) and the principals they speak for.
    pub tokens: Vec<TokenEntry>,
    pub plugins: Vec<PluginConfig>,
    pub policies: Vec<PolicyConfig>,
    /// `[[upstream]]`: MCP servers whose tools warden governs.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[schedule]]`: tool calls warden starts on a clock.
    pub schedules: Vec<ScheduleConfig>,
    /// `[[trigger]]`: tool calls started by signed webhooks at `/hooks/NAME`.
    pub triggers: Vec<TriggerConfig>,
    /// `[[limit]]`: rates, quotas and concurrency bounds.
    pub limits: Vec<LimitConfig>,
    /// `[runaway]`: loop detection and circuit breakers.
    pub runaway: RunawayConfig,
    /// The config file's text, kept to locate errors found while loading components.
    source: String,
}

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
    #[serde(default)]
    store: RawStore,
    approvals: Option<RawApprovals>,
    server: Option<RawServer>,
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
    #[serde(default, rename = "plugin")]
    plugins: Vec<RawPlugin>,
    #[serde(default, rename = "policy")]
    policies: Vec<RawPolicy>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<RawUpstream>,
    #[serde(default, rename = "schedule")]
    schedules: Vec<RawSchedule>,
    #[serde(default, rename = "trigger")]
    triggers: Vec<RawTrigger>,
    #[serde(default, rename = "limit")]
    limits: Vec<RawLimit>,
    runaway: Option<RawRunaway>,
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

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read config: {e}"),
    })
}

impl Config {
    /// Read and validate `path`. Relative paths inside are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(path, &read(path)?)
    }

    /// As `load`, but a shared store's URL kept in the vault (`store.url_secret`) is not
    /// read (the store is left unset): for the vault's own commands, which must work
    /// before that secret is in it.
    pub fn load_for_vault(path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(path, &read(path)?, false)
    }

    /// Validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(path, text, true)
    }

    /// `parse`; `vault_store`: read `store.url_secret` from the vault.
    fn parse_with(path: &Path, text: &str, vault_store: bool) -> Result<Config, ConfigError> {
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

        let vault = (vault_path.as_path(), key_file.as_deref());
        let store = check_store(&locate, base, &raw.store, vault_store.then_some(vault))?;

        let approvals = match &raw.approvals {
            None => ApprovalsConfig::default(),
            Some(raw) => check_approvals(&locate, raw)?,
        };
        let server = match &raw.server {
            None => ServerConfig::default(),
            Some(raw) => check_server(&locate, raw)?,
        };
        let tokens = check_tokens(&locate, &raw.tokens)?;
        let schedules = check_schedules(&locate, &raw.schedules)?;
        let triggers = check_triggers(&locate, &raw.triggers)?;
        let limits = check_limits_list(&locate, &raw.limits)?;
        let runaway = check_runaway(&locate, raw.runaway.as_ref())?;

        let mut ids = HashSet::new();
        let mut plugins = Vec::new();
        for (i, raw) in raw.plugins.iter().enumerate() {
            let key = format!("plugin[{i}]");
            let id = check_id(&locate, &raw.id, &key, &mut ids)?;
            let component = check_component(&locate, base, &raw.component, &key)?;
            let sha256 = check_sha256(&locate, raw.sha256.as_ref(), &key)?;
            let grants = Grants::parse(&raw.grants, base)
                .map_err(|e| locate.error(e.at, &format!("{key}.{}", e.key), &e.message))?;
            let limits = check_limits(&locate, raw.limits.as_ref(), DEFAULT_PLUGIN_LIMITS, &key)?;
            let (cost, costs) = check_costs(&locate, raw, &key)?;
            plugins.push(PluginConfig {
                id,
                component,
                sha256,
                grants,
                limits,
                cost,
                costs,
                span: raw.id.span().start,
            });
        }

        let upstreams = check_upstreams(&locate, base, &raw.upstreams, &mut ids)?;

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
            store,
            runs_db,
            approvals,
            server,
            tokens,
            plugins,
            policies,
            upstreams,
            schedules,
            triggers,
            limits,
            runaway,
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
