//! The loaded runtime: the shared engine, every plugin and policy from one config,
//! and the index from tool name to plugin.
//!
//! Loading is all or nothing: any bad component, duplicate tool or policy scope that
//! matches no tool fails the whole load with an error located in warden.toml. It
//! must never serve a partly loaded config.

mod budgets;
pub mod criteria;
pub mod driver;
pub(crate) mod governed;

pub use budgets::{SuspendError, UsageReport};
pub mod record;
pub(crate) mod recovery;
pub(crate) mod upstreams;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::governance::approvals::ApprovalQueue;
use crate::governance::budgets::{Budgets, Target, Used, Who};
use crate::governance::links::LinkSigner;
use crate::governance::notify::Notifier;
use crate::grants::secrets::{PluginSecrets, Redactor, SecretUse};
use crate::sandbox::engine::EngineOptions;
use crate::sandbox::plugin::Plugin;
use crate::sandbox::policy::Policy;
pub use crate::sandbox::shared::Shared;
use crate::store::audit::{AuditLog, AuditOptions, Signer};
use crate::store::runs::RunStore;
use crate::store::suspensions::SuspensionStore;
use crate::store::upstream_pins::PinStore;
use crate::vault::{MasterKey, Vault, VaultError};

/// Why a config could not be loaded into a runtime.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The config or a component is wrong (the CLI exits 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store cannot be used: the audit log (or its signing key), the run history or
    /// the approval queue. Nothing may run unrecorded (the CLI exits 5).
    #[error("{0}")]
    Store(String),
}

/// What a load opens besides the components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stores {
    /// Everything: the audit log (taking its lock), run history, approval queue.
    Open,
    /// Nothing is written: for commands that only look (`check`, `tools`). Such a
    /// runtime refuses calls.
    ReadOnly,
}

pub struct Runtime {
    pub config: Config,
    /// Held for its life: dropping it stops the engine's epoch ticker, which the
    /// plugins' and policies' time limits need.
    _shared: Shared,
    pub plugins: Vec<Plugin>,
    pub policies: Vec<Policy>,
    /// Tool name -> index into `plugins`.
    tools: HashMap<String, usize>,
    /// Scrubs every granted secret value from what leaves a call.
    pub redactor: Arc<Redactor>,
    /// `None` only when the config turns auditing off.
    pub audit: Option<AuditLog>,
    pub runs: Arc<RunStore>,
    /// `None` only when `[approvals] enabled = false` (held calls are then denied).
    pub approvals: Option<Arc<ApprovalQueue>>,
    pub(crate) notifier: Arc<Notifier>,
    /// Limits, runaway guards and the kill switch (their counts outlive a reload).
    pub budgets: Arc<Budgets>,
    /// Where the kill switch is kept.
    pub(crate) suspensions: Arc<SuspensionStore>,
    /// Loaded with [`Stores::ReadOnly`]: calls are refused.
    pub(crate) read_only: bool,
    /// Reports of approved calls run here lately, for their waiters.
    pub(crate) finished: Arc<crate::runtime::driver::Finished>,
    /// The success criteria of schedules and triggers.
    pub(crate) judges: criteria::Judges,
    /// The secrets triggers' deliveries are signed with.
    pub(crate) trigger_keys: TriggerKeys,
    /// The bound on the guest memory of calls in flight.
    pub(crate) capacity: Arc<crate::sandbox::limits::Capacity>,
    /// The upstream MCP servers, running or not (`[[upstream]]`).
    pub upstreams: Vec<Arc<crate::upstream::Upstream>>,
    /// Accepted upstream tool definitions.
    pub pins: Arc<PinStore>,
}

impl Runtime {
    /// Load every component `config` names, compiling through the cache in `cache_dir`,
    /// and open the stores (after a crash, ending what it cut off).
    pub async fn load(config: Config) -> Result<Runtime, LoadError> {
        Runtime::load_with(config, None, Stores::Open).await
    }

    /// Load the components only, writing nothing (see [`Stores::ReadOnly`]).
    pub async fn load_read_only(config: Config) -> Result<Runtime, LoadError> {
        Runtime::load_with(config, None, Stores::ReadOnly).await
    }

    /// Load `config` as the next version of this runtime: the components are loaded
    /// afresh, the stores (audit log, run history, approval queue) are shared, so calls
    /// in flight on this version finish on it. The stores cannot move: a config whose
    /// data dir, audit or approval settings differ is refused.
    pub async fn reload(&self, config: Config) -> Result<Runtime, LoadError> {
        let same = config.data_dir == self.config.data_dir
            && config.runs_db == self.config.runs_db
            && config.audit == self.config.audit
            && config.store == self.config.store
            && config.approvals.enabled == self.config.approvals.enabled;
        if !same {
            return Err(config
                .error_at(
                    0,
                    "data_dir",
                    "the data dir, [audit], [store] and [approvals] enabled cannot change on reload; restart warden",
                )
                .into());
        }
        let stores = OpenStores {
            audit: self.audit.clone(),
            runs: self.runs.clone(),
            approvals: self.approvals.clone(),
            finished: self.finished.clone(),
            capacity: self.capacity.clone(),
            budgets: self.budgets.clone(),
            suspensions: self.suspensions.clone(),
            upstreams: self.upstreams.clone(),
        };
        Runtime::load_with(config, Some(stores), Stores::Open).await
    }

    async fn load_with(
        config: Config,
        stores: Option<OpenStores>,
        mode: Stores,
    ) -> Result<Runtime, LoadError> {
        let all_limits = config
            .plugins
            .iter()
            .map(|p| p.limits)
            .chain(config.policies.iter().map(|p| p.limits));
        let options = EngineOptions {
            fuel: all_limits.clone().any(|l| l.fuel.is_some()),
            max_memory_bytes: (all_limits.map(|l| l.memory_mb).max().unwrap_or(64) as usize) << 20,
            ..EngineOptions::default()
        };
        let shared = Shared::new(options, Some(&config.cache_dir))
            .map_err(|e| config.error_at(0, "", format!("cannot start the wasm engine: {e:#}")))?;

        let Secrets {
            plugins: secrets,
            trigger_keys,
            redactor,
            upstreams: upstream_envs,
        } = load_secrets(&config)?;
        let redactor = Arc::new(redactor);
        let mut plugins = Vec::new();
        let mut tools: HashMap<String, usize> = HashMap::new();
        for (i, (pc, secrets)) in config.plugins.iter().zip(secrets).enumerate() {
            let key = format!("plugin[{i}]");
            let plugin = Plugin::load(&shared, pc, secrets, redactor.clone())
                .await
                .map_err(|e| {
                    config.error_at(pc.span, &key, format!("plugin {:?}: {e:#}", pc.id))
                })?;
            for tool in &plugin.tools {
                if let Some(&other) = tools.get(&tool.name) {
                    let other: &Plugin = &plugins[other];
                    return Err(config
                        .error_at(
                            pc.span,
                            &key,
                            format!(
                                "plugin {:?} exports tool `{}`, which plugin {:?} already exports",
                                pc.id, tool.name, other.id
                            ),
                        )
                        .into());
                }
                tools.insert(tool.name.clone(), plugins.len());
            }
            plugins.push(plugin);
        }

        // Read in every mode (what `warden tools` shows must be what is served); written
        // (definitions seen for the first time) only when the stores are open.
        let pins =
            Arc::new(PinStore::for_config(&config).map_err(|e| LoadError::Store(e.to_string()))?);
        let running = stores.as_ref().map_or(&[][..], |s| &s.upstreams[..]);
        let from_upstreams = upstreams::load(
            &config,
            upstream_envs,
            &redactor,
            &pins,
            mode == Stores::Open,
            running,
        )
        .await?;
        for plugin in from_upstreams.plugins {
            let span = plugin.upstream().map_or(0, |u| u.upstream.config.span);
            for tool in &plugin.tools {
                if let Some(&other) = tools.get(&tool.name) {
                    return Err(config
                        .error_at(
                            span,
                            "upstream",
                            format!(
                                "upstream {:?} offers tool `{}`, which {:?} already exports (set a `prefix`, or leave it out with `deny_tools`)",
                                plugin.id, tool.name, plugins[other].id
                            ),
                        )
                        .into());
                }
                tools.insert(tool.name.clone(), plugins.len());
            }
            plugins.push(plugin);
        }

        let mut policies = Vec::new();
        for (i, pc) in config.policies.iter().enumerate() {
            let key = format!("policy[{i}]");
            let policy = Policy::load(&shared, pc).map_err(|e| {
                config.error_at(pc.span, &key, format!("policy {:?}: {e:#}", pc.id))
            })?;
            // Only where calls will follow: a look (`tools`, `check`) needs no slot.
            if mode == Stores::Open {
                policy.warm().await;
            }
            // A scope that matches nothing is almost always a typo that would silently
            // switch the policy off.
            for pattern in &policy.tools {
                if !tools
                    .keys()
                    .any(|t| crate::util::pattern_matches(pattern, t))
                {
                    return Err(config
                        .error_at(
                            pc.span,
                            &format!("{key}.tools"),
                            format!(
                                "policy {:?} applies to `{pattern}`, which matches no loaded tool",
                                pc.id
                            ),
                        )
                        .into());
                }
            }
            policies.push(policy);
        }
        let judges = criteria::Judges::load(&config, |t| tools.get(t).map(|&i| &plugins[i]))?;
        check_limit_scopes(&config, &plugins)?;
        let store = |e: &dyn std::fmt::Display| LoadError::Store(e.to_string());
        let capacity = match &stores {
            Some(s) => s.capacity.clone(),
            None => Arc::new(crate::sandbox::limits::Capacity::new(
                config.server.max_guest_memory_mb,
                std::time::Duration::from_millis(config.server.capacity_wait_ms),
            )),
        };
        let (runs, approvals, audit, finished, previous, suspensions) = match stores {
            Some(s) => (
                s.runs,
                s.approvals,
                s.audit,
                s.finished,
                Some(s.budgets),
                s.suspensions,
            ),
            None => {
                let runs = RunStore::for_config(&config).map_err(|e| store(&e))?;
                let approvals = if config.approvals.enabled {
                    Some(Arc::new(open_queue(&config).map_err(|e| store(&e))?))
                } else {
                    None
                };
                let audit = if config.audit.enabled && mode == Stores::Open {
                    Some(open_audit(&config).await?)
                } else {
                    None
                };
                let suspensions =
                    Arc::new(SuspensionStore::for_config(&config).map_err(|e| store(&e))?);
                (
                    Arc::new(runs),
                    approvals,
                    audit,
                    Arc::default(),
                    None,
                    suspensions,
                )
            }
        };
        let signer = match &config.approvals.public_url {
            Some(_) => Some(LinkSigner::open(&config.links_key()).map_err(|e| {
                config.error_at(0, "approvals.public_url", format!("link key: {e}"))
            })?),
            None => None,
        };
        let notifier = Arc::new(Notifier::new(&config.approvals, signer));
        let audit = if let Some(log) = audit {
            let components: Vec<serde_json::Value> = plugins
                .iter()
                .map(|p| serde_json::json!({ "plugin": p.id, "digest": p.digest }))
                .chain(
                    policies
                        .iter()
                        .map(|p| serde_json::json!({ "policy": p.id, "digest": p.digest })),
                )
                .collect();
            let record = record::config_load(
                &config.file.display().to_string(),
                &config.digest(),
                components.into(),
            );
            let mut records = vec![record::redact(&redactor, record)];
            for seen in &from_upstreams.first_seen {
                let pin = record::upstream_pin(
                    &seen.upstream,
                    &seen.tool,
                    &seen.digest,
                    None,
                    "first-sight",
                );
                records.push(record::redact(&redactor, pin));
            }
            log.append(records).await.map_err(|e| store(&e))?;
            Some(log)
        } else {
            None
        };
        // Last, when nothing can fail any more: a reload moves the counts here.
        let fresh = previous.is_none();
        let budgets = Budgets::new(&config.limits, &config.runaway, previous.as_ref());
        if fresh {
            rebuild_budgets(&budgets, &runs, &suspensions, &config.store.host)
                .map_err(|e| store(&e))?;
            if let Some(target) = &config.store.shared
                && !config.limits.is_empty()
                && mode == Stores::Open
            {
                let cluster = crate::governance::budgets::cluster::Cluster::open(target)
                    .map_err(|e| store(&format!("{}: {e}", target.shown)))?;
                budgets.share(Arc::new(cluster));
            }
        }
        let rt = Runtime {
            audit,
            runs,
            approvals,
            notifier,
            budgets,
            suspensions,
            redactor,
            config,
            _shared: shared,
            plugins,
            policies,
            tools,
            read_only: mode == Stores::ReadOnly,
            finished,
            judges,
            trigger_keys,
            capacity,
            upstreams: from_upstreams.upstreams,
            pins,
        };
        if fresh && let Some(log) = &rt.audit {
            crate::runtime::recovery::recover(&rt, log).await?;
        }
        Ok(rt)
    }

    /// Stop the audit writer after writing what is queued (and its `HEAD`).
    pub fn close(&self) {
        if let Some(audit) = &self.audit {
            audit.close();
        }
    }

    /// The digest of `plugin:<id>` or `policy:<id>`.
    pub fn digest_of(&self, component: &str) -> String {
        let found = match component.split_once(':') {
            Some(("plugin", id)) => self
                .plugins
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.digest.clone()),
            Some(("policy", id)) => self
                .policies
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.digest.clone()),
            _ => None,
        };
        found.unwrap_or_default()
    }

    /// The plugin exporting `tool`.
    pub fn plugin_for(&self, tool: &str) -> Option<&Plugin> {
        self.tools.get(tool).map(|&i| &self.plugins[i])
    }

    /// Every tool name, sorted.
    pub fn tool_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tools.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The policies that apply to `tool`, in config order.
    pub fn policies_for<'a>(&'a self, tool: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter(move |p| p.applies_to(tool))
    }
}

/// The redactor for every secret `config` grants, for commands that print stored
/// records without loading the components.
pub fn redactor_for(config: &Config) -> Result<Redactor, ConfigError> {
    load_secrets(config).map(|s| s.redactor)
}

/// The secrets a config's components, triggers and upstreams use, decrypted.
struct Secrets {
    plugins: Vec<Arc<PluginSecrets>>,
    trigger_keys: TriggerKeys,
    redactor: Redactor,
    upstreams: UpstreamEnvs,
}

/// Each upstream's secret environment variables and headers: (name, value).
pub(crate) type UpstreamEnvs = Vec<crate::upstream::Secrets>;

/// The secrets triggers verify signatures with, by trigger name.
pub(crate) type TriggerKeys = HashMap<String, zeroize::Zeroizing<String>>;

/// Decrypt the secrets the plugins are granted and the triggers sign with. The vault is
/// opened only when some plugin has a secret grant or some trigger exists; a secret the
/// vault lacks, or a vault that cannot be decrypted, fails the load.
fn load_secrets(config: &Config) -> Result<Secrets, ConfigError> {
    let granted = config.plugins.iter().any(|p| !p.grants.secrets.is_empty())
        || config
            .upstreams
            .iter()
            .any(|u| !u.secret_env.is_empty() || !u.secret_headers.is_empty());
    if !granted && config.triggers.is_empty() {
        return Ok(Secrets {
            plugins: config.plugins.iter().map(|_| Arc::default()).collect(),
            trigger_keys: HashMap::new(),
            redactor: Redactor::default(),
            upstreams: config
                .upstreams
                .iter()
                .map(|_| Default::default())
                .collect(),
        });
    }
    let vault_error = |e: VaultError| {
        config.error_at(
            0,
            "vault",
            format!("cannot open the vault {}: {e}", config.vault_path.display()),
        )
    };
    let key = MasterKey::resolve(config.key_file.as_deref()).map_err(vault_error)?;
    let vault = Vault::open(&config.vault_path, &key).map_err(vault_error)?;
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (i, plugin) in config.plugins.iter().enumerate() {
        let mut values = HashMap::new();
        for (j, grant) in plugin.grants.secrets.iter().enumerate() {
            let key = format!("plugin[{i}].grants.secrets[{j}]");
            let value = match vault.get(&grant.secret) {
                Ok(value) => value,
                Err(VaultError::NotFound(_)) => {
                    return Err(config.error_at(
                        grant.span,
                        &key,
                        format!(
                            "secret {:?} is not in the vault {}",
                            grant.secret,
                            config.vault_path.display()
                        ),
                    ));
                }
                Err(e) => return Err(config.error_at(grant.span, &key, e)),
            };
            let formats = match &grant.usage {
                SecretUse::Header { format, .. } => vec![format.clone()],
                _ => Vec::new(),
            };
            all.push((value.clone(), formats));
            values.insert(grant.secret.clone(), value);
        }
        out.push(Arc::new(PluginSecrets::new(
            plugin.grants.secrets.clone(),
            values,
        )));
    }
    let mut keys = TriggerKeys::new();
    for (i, t) in config.triggers.iter().enumerate() {
        let value = match vault.get(&t.secret) {
            Ok(value) => value,
            Err(VaultError::NotFound(_)) => {
                return Err(config.error_at(
                    t.span,
                    &format!("trigger[{i}].secret"),
                    format!(
                        "secret {:?} is not in the vault {}",
                        t.secret,
                        config.vault_path.display()
                    ),
                ));
            }
            Err(e) => return Err(config.error_at(t.span, &format!("trigger[{i}].secret"), e)),
        };
        // Never a plugin's to see, but scrubbed like one in case a payload echoes it.
        all.push((value.clone(), Vec::new()));
        keys.insert(t.name.clone(), value);
    }
    let mut envs = UpstreamEnvs::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let mut secrets = crate::upstream::Secrets::default();
        let wanted = u
            .secret_env
            .iter()
            .map(|(var, secret)| (format!("secret_env.{var}"), var, secret, "{}"))
            .chain(u.secret_headers.iter().enumerate().map(|(j, h)| {
                (
                    format!("secret_headers[{j}]"),
                    &h.header,
                    &h.secret,
                    h.format.as_str(),
                )
            }));
        for (at, name, secret, format) in wanted {
            let key = format!("upstream[{i}].{at}");
            let value = match vault.get(secret) {
                Ok(value) => value,
                Err(VaultError::NotFound(_)) => {
                    return Err(config.error_at(
                        u.span,
                        &key,
                        format!(
                            "secret {secret:?} is not in the vault {}",
                            config.vault_path.display()
                        ),
                    ));
                }
                Err(e) => return Err(config.error_at(u.span, &key, e)),
            };
            // The upstream sees it; its results, logs and records never show it.
            all.push((value.clone(), vec![format.to_string()]));
            let formatted = zeroize::Zeroizing::new(format.replace("{}", &value));
            if at.starts_with("secret_env") {
                secrets.env.push((name.clone(), formatted));
            } else {
                secrets.headers.push((name.clone(), formatted));
            }
        }
        envs.push(secrets);
    }
    let redactor = Redactor::new(all.iter().map(|(v, f)| (v.as_str(), f.clone())));
    Ok(Secrets {
        plugins: out,
        trigger_keys: keys,
        redactor,
        upstreams: envs,
    })
}

/// Open the audit log (off the async runtime: it may wait for another process) with
/// its signing key and checkpoint settings.
/// The options `config` opens its audit log with.
pub fn audit_options(config: &Config) -> Result<AuditOptions, String> {
    let a = &config.audit;
    let signer = a
        .signing_key()
        .and_then(Signer::open)
        .map_err(|e| format!("audit signing key: {e}"))?;
    Ok(AuditOptions {
        max_segment_bytes: a.max_segment_bytes,
        signer: Some(Arc::new(signer)),
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: std::time::Duration::from_secs(a.checkpoint_secs),
        witness: a.witness.clone(),
        host: config
            .store
            .shared
            .as_ref()
            .map(|_| config.store.host.clone()),
    })
}

async fn open_audit(config: &Config) -> Result<AuditLog, LoadError> {
    let options = audit_options(config).map_err(LoadError::Store)?;
    let a = &config.audit;
    let dir = a.dir.clone();
    tokio::task::spawn_blocking(move || AuditLog::open(&dir, options))
        .await
        .map_err(|e| LoadError::Store(format!("opening the audit log: {e}")))?
        .map_err(|e| LoadError::Store(e.to_string()))
}

/// What seals held inputs: the vault's master key, when one can be had (a key file
/// or `WARDEN_MASTER_KEY`). Without one no secret is granted, so none can be held.
pub fn sealer(config: &Config) -> Option<crate::governance::approvals::Sealer> {
    MasterKey::resolve(config.key_file.as_deref())
        .ok()
        .map(|key| crate::governance::approvals::Sealer::new(key.bytes()))
}

/// The approval queue `config` names: on the shared PostgreSQL when `[store]` sets
/// one, else in the embedded store.
pub fn open_queue(
    config: &Config,
) -> Result<ApprovalQueue, crate::governance::approvals::ApprovalError> {
    match &config.store.shared {
        Some(target) => ApprovalQueue::open_shared(
            target,
            config.store.lease,
            &config.store.host,
            sealer(config),
        ),
        None => ApprovalQueue::open(&config.runs_db, sealer(config)),
    }
}

/// What a reloaded runtime shares with the one it replaces.
struct OpenStores {
    audit: Option<AuditLog>,
    runs: Arc<RunStore>,
    approvals: Option<Arc<ApprovalQueue>>,
    finished: Arc<crate::runtime::driver::Finished>,
    capacity: Arc<crate::sandbox::limits::Capacity>,
    budgets: Arc<Budgets>,
    suspensions: Arc<SuspensionStore>,
    /// Upstreams whose config did not change keep running (and their sessions).
    upstreams: Vec<Arc<crate::upstream::Upstream>>,
}

/// At start: the kill switch from the store, and every quota's count from the runs in
/// its current window (so counters survive restarts). On a shared store other hosts'
/// runs count their calls and cost (as the cluster's count does: a host's own count
/// never exceeds it) but not their wall time, fuel or egress, which a host's own count
/// holds for its own calls only (the cluster's count of those is checked at admission).
fn rebuild_budgets(
    budgets: &Budgets,
    runs: &RunStore,
    suspensions: &SuspensionStore,
    host: &str,
) -> Result<(), String> {
    for s in suspensions.list().map_err(|e| e.to_string())? {
        if let Some(target) = Target::parse(&s.kind) {
            budgets.suspensions.set(target, &s.name, Some(s.reason));
        }
    }
    let now = crate::now_ms() as i64;
    let Some(since) = budgets.replay_from(now) else {
        return Ok(());
    };
    for run in runs.usage_since(since).map_err(|e| e.to_string())? {
        let who = Who {
            principal: &run.principal,
            plugin: &run.plugin,
            tool: &run.tool,
            schedule: run
                .started_by
                .as_deref()
                .and_then(|s| s.strip_prefix("schedule:")),
        };
        let ours = if run.host.is_empty() || run.host == host {
            1.0
        } else {
            0.0
        };
        let used = Used {
            calls: run.calls as f64,
            cost: run.cost,
            wall_ms: ours * run.total_us as f64 / 1000.0,
            fuel: ours * run.fuel_used as f64,
            egress_requests: ours * run.egress_requests as f64,
            egress_bytes: ours * run.egress_bytes as f64,
        };
        budgets.replay(&who, run.started_ms, &used, now);
    }
    Ok(())
}

/// A limit whose scope names a plugin, tool, principal or schedule that matches
/// nothing would silently count nothing: almost always a typo.
fn check_limit_scopes(config: &Config, plugins: &[Plugin]) -> Result<(), ConfigError> {
    use crate::util::pattern_matches;
    let mut principals: Vec<&str> = config
        .tokens
        .iter()
        .map(|t| t.principal.as_str())
        .chain(config.schedules.iter().map(|s| s.principal.as_str()))
        .chain(config.triggers.iter().map(|t| t.principal.as_str()))
        .collect();
    principals.push(&config.server.stdio_principal);
    principals.push(crate::tokens::LOCAL_OPERATOR);
    for (i, l) in config.limits.iter().enumerate() {
        let s = &l.scope;
        let fail = |field: &str, pattern: &str, what: &str| {
            Err(config.error_at(
                l.span,
                &format!("limit[{i}].{field}"),
                format!(
                    "limit {:?} counts {field} `{pattern}`, which matches no {what}",
                    l.name
                ),
            ))
        };
        let in_plugin = |p: &&Plugin| {
            s.plugin
                .as_deref()
                .is_none_or(|pat| pattern_matches(pat, &p.id))
        };
        if let Some(pat) = &s.plugin
            && !plugins.iter().any(|p| pattern_matches(pat, &p.id))
        {
            return fail("plugin", pat, "configured plugin");
        }
        if let Some(pat) = &s.tool
            && !plugins
                .iter()
                .filter(in_plugin)
                .flat_map(|p| &p.tools)
                .any(|t| pattern_matches(pat, &t.name))
        {
            return fail("tool", pat, "tool of the plugins in its scope");
        }
        if let Some(pat) = &s.principal
            && !principals.iter().any(|p| pattern_matches(pat, p))
        {
            return fail(
                "principal",
                pat,
                "principal of a [[token]], schedule, trigger, the stdio principal or local-operator",
            );
        }
        if let Some(pat) = &s.schedule
            && !config
                .schedules
                .iter()
                .any(|x| pattern_matches(pat, &x.name))
        {
            return fail("schedule", pat, "[[schedule]]");
        }
    }
    Ok(())
}
