//! Upstreams at load: start each, list its tools, keep the ones the operator offers,
//! and compare each definition with the accepted one (the config's pin, else the one
//! recorded at first sight). A changed definition does not stop the load: the tool is
//! withheld at call time (`changed_definition`), until an operator accepts it.
//!
//! An upstream that cannot start does not stop the load either: its tools are absent,
//! and why is in its status (`warden upstreams list`, `warden check`).

use std::sync::Arc;

use crate::call::{PolicyDecision, Tier, Verdict};
use crate::config::{Config, OnChange};
use crate::grants::secrets::Redactor;
use crate::sandbox::plugin::{Plugin, Tool};
use crate::store::upstream_pins::{Pin, PinStore};
use crate::upstream::{Upstream, definition};

use super::{LoadError, UpstreamEnvs};

/// A definition seen for the first time and recorded as accepted.
pub(crate) struct FirstSight {
    pub upstream: String,
    pub tool: String,
    pub digest: String,
}

/// Every upstream as a plugin (absent when it could not start), what was pinned at first
/// sight, and the upstreams themselves (for their status).
pub(crate) struct Loaded {
    pub plugins: Vec<Plugin>,
    pub first_seen: Vec<FirstSight>,
    pub upstreams: Vec<Arc<Upstream>>,
}

/// Start the upstreams of `config` (an upstream in `running` with the same config is
/// kept, process and session). Unless `record` (a read-only load), nothing is written:
/// a definition never seen counts as accepted.
pub(crate) async fn load(
    config: &Config,
    envs: UpstreamEnvs,
    redactor: &Arc<Redactor>,
    pins: &PinStore,
    record: bool,
    running: &[Arc<Upstream>],
) -> Result<Loaded, LoadError> {
    let mut out = Loaded {
        plugins: Vec::new(),
        first_seen: Vec::new(),
        upstreams: Vec::new(),
    };
    for (i, (uc, secrets)) in config.upstreams.iter().zip(envs).enumerate() {
        let key = format!("upstream[{i}]");
        let upstream = match running.iter().find(|u| u.config == *uc) {
            Some(same) => same.clone(),
            None => Arc::new(Upstream::new(uc.clone(), secrets, redactor.clone())),
        };
        out.upstreams.push(upstream.clone());
        // Lazy, and known from before: its tools are the accepted definitions, and the
        // process starts with the first call (a reload, or its list_changed, checks them).
        if uc.lazy {
            let known = pins
                .all(&uc.id)
                .map_err(|e| LoadError::Store(e.to_string()))?;
            let definitions: Vec<_> = known
                .iter()
                .filter(|p| uc.offers(&p.tool))
                .filter_map(|p| {
                    let json: serde_json::Value = serde_json::from_str(&p.definition).ok()?;
                    let def = definition(&json)?;
                    let accepted = uc.pins.get(&def.name).cloned().unwrap_or(p.digest.clone());
                    Some((def, accepted))
                })
                .collect();
            if !definitions.is_empty() {
                let plugin = Plugin::from_upstream(upstream, definitions, redactor.clone())
                    .map_err(|e| {
                        config.error_at(uc.span, &key, format!("upstream {:?}: {e:#}", uc.id))
                    })?;
                out.plugins.push(plugin);
                continue;
            }
        }
        let tools = match upstream.list_tools().await {
            Ok(tools) => tools,
            Err(e) => {
                tracing::warn!(upstream = %uc.id, "{e}; its tools are not offered");
                continue;
            }
        };
        let mut definitions = Vec::new();
        for tool in &tools {
            let Some(def) = definition(tool) else {
                continue;
            };
            if !uc.offers(&def.name) {
                continue;
            }
            let stored = pins
                .get(&uc.id, &def.name)
                .map_err(|e| LoadError::Store(e.to_string()))?;
            let accepted = match (uc.pins.get(&def.name), stored) {
                (Some(pinned), _) => pinned.clone(),
                (None, Some(pin)) => pin.digest,
                (None, None) => {
                    if record {
                        pins.put(&Pin {
                            upstream: uc.id.clone(),
                            tool: def.name.clone(),
                            digest: def.digest.clone(),
                            definition: def.json.to_string(),
                            accepted_by: "first-sight".into(),
                            accepted_ms: crate::now_ms() as i64,
                        })
                        .map_err(|e| LoadError::Store(e.to_string()))?;
                        out.first_seen.push(FirstSight {
                            upstream: uc.id.clone(),
                            tool: def.name.clone(),
                            digest: def.digest.clone(),
                        });
                    }
                    def.digest.clone()
                }
            };
            definitions.push((def, accepted));
        }
        let plugin = Plugin::from_upstream(upstream, definitions, redactor.clone())
            .map_err(|e| config.error_at(uc.span, &key, format!("upstream {:?}: {e:#}", uc.id)))?;
        out.plugins.push(plugin);
    }
    Ok(out)
}

/// The upstream's own say on a call: a changed definition is withheld (denied, or held
/// hard, by `on_change`); a destructive tool needs at least `destructive_tier`. An
/// upstream can raise a tier this way, never lower one (policies decide the rest).
pub(crate) fn decision(plugin: &Plugin, tool: &Tool) -> Option<PolicyDecision> {
    let upstream = plugin.upstream()?;
    let config = &upstream.upstream.config;
    let verdict = if let Some((accepted, current)) = upstream.changed.get(&tool.name) {
        let why = format!(
            "the definition of `{}` changed since it was accepted ({accepted} -> {current}); an operator must accept it: warden upstreams accept {} {}",
            tool.name,
            config.id,
            tool.name
                .strip_prefix(config.prefix.as_str())
                .unwrap_or(&tool.name)
        );
        match config.on_change {
            OnChange::Deny => Verdict::Deny { reason: why },
            OnChange::Hold => Verdict::RequireApproval {
                tier: Tier::Hard,
                reason: why,
                approvers: Vec::new(),
                timeout_secs: None,
                approvals_required: None,
            },
        }
    } else if tool.annotations.destructive
        && let Some(tier) = config.destructive_tier
    {
        Verdict::RequireApproval {
            tier,
            reason: format!("upstream {} marks `{}` destructive", config.id, tool.name),
            approvers: Vec::new(),
            timeout_secs: None,
            approvals_required: None,
        }
    } else {
        return None;
    };
    Some(PolicyDecision {
        policy: format!("upstream:{}", config.id),
        digest: plugin.digest.clone(),
        verdict,
        failure: None,
        log: Vec::new(),
        elapsed: std::time::Duration::ZERO,
    })
}

/// One definition an operator accepted.
#[derive(Debug, serde::Serialize)]
pub struct Accepted {
    pub tool: String,
    pub previous: Option<String>,
    pub digest: String,
}

impl super::Runtime {
    /// Accept what upstream `id` defines now for `tool` (every tool when `None`) as the
    /// definition its calls are checked against; audited with both digests. A running
    /// server picks it up on its next reload.
    pub async fn accept_upstream(
        &self,
        id: &str,
        tool: Option<&str>,
        by: &str,
    ) -> Result<Vec<Accepted>, crate::CallError> {
        let fail = |m: String| crate::CallError::NotRecorded(m);
        if self.read_only {
            return Err(fail("this runtime was loaded read-only".into()));
        }
        let pins = &self.pins;
        let upstream = self
            .upstreams
            .iter()
            .find(|u| u.config.id == id)
            .ok_or_else(|| fail(format!("no upstream {id:?} in the config")))?;
        let definitions: Vec<_> = upstream
            .list_tools()
            .await
            .map_err(fail)?
            .iter()
            .filter_map(definition)
            .collect();
        let mut accepted = Vec::new();
        let mut records = Vec::new();
        let mut changes = Vec::new();
        for def in definitions.iter().cloned() {
            if tool.is_some_and(|t| t != def.name) || !upstream.config.offers(&def.name) {
                continue;
            }
            if upstream.config.pins.contains_key(&def.name) {
                return Err(fail(format!(
                    "`{}` is pinned in the config (upstream {id:?} pins): change the pin there",
                    def.name
                )));
            }
            let previous = pins
                .get(id, &def.name)
                .map_err(|e| fail(e.to_string()))?
                .map(|p| p.digest);
            if previous.as_deref() == Some(def.digest.as_str()) {
                continue;
            }
            changes.push(Pin {
                upstream: id.to_string(),
                tool: def.name.clone(),
                digest: def.digest.clone(),
                definition: def.json.to_string(),
                accepted_by: by.to_string(),
                accepted_ms: crate::now_ms() as i64,
            });
            records.push(self.entry(super::record::upstream_pin(
                id,
                &def.name,
                &def.digest,
                previous.as_deref(),
                by,
            )));
            accepted.push(Accepted {
                tool: def.name,
                previous,
                digest: def.digest,
            });
        }
        if let Some(name) = tool
            && accepted.is_empty()
            && !definitions.iter().any(|d| d.name == name)
        {
            return Err(fail(format!("upstream {id:?} offers no tool `{name}`")));
        }
        // In the log first: an accepted definition the log does not know is never used.
        self.audit(records, true).await?;
        for pin in &changes {
            pins.put(pin).map_err(|e| fail(e.to_string()))?;
        }
        Ok(accepted)
    }
}
