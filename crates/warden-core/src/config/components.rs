//! `[[plugin]]` and `[[policy]]`: ids, component files and their pins, a policy's tool
//! patterns and config table.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::limits::RawLimits;
use super::{ConfigError, Grants, Limits, Locator};
use crate::grants::RawGrants;

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub id: String,
    pub component: PathBuf,
    pub sha256: Option<String>,
    pub grants: Grants,
    pub limits: Limits,
    /// The declared cost of a call of any of its tools (`cost`), in the operator's
    /// unit; `costs` sets it per tool. Default 0.
    pub cost: f64,
    pub costs: std::collections::BTreeMap<String, f64>,
    /// Byte offset of this plugin's `id` in the file, for errors found later.
    pub span: usize,
}

impl PluginConfig {
    /// The declared cost of one call of `tool`.
    pub fn cost_of(&self, tool: &str) -> f64 {
        self.costs.get(tool).copied().unwrap_or(self.cost)
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) id: Spanned<String>,
    pub(super) component: Spanned<String>,
    pub(super) sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) grants: RawGrants,
    pub(super) limits: Option<RawLimits>,
    pub(super) cost: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) costs: std::collections::BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) id: Spanned<String>,
    pub(super) component: Spanned<String>,
    pub(super) sha256: Option<Spanned<String>>,
    pub(super) tools: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) config: toml::Table,
    pub(super) limits: Option<RawLimits>,
}

pub(super) fn check_id(
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

pub(super) fn check_component(
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

pub(super) fn check_sha256(
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

/// A plugin's declared costs: finite and not negative.
pub(super) fn check_costs(
    locate: &Locator,
    raw: &RawPlugin,
    key: &str,
) -> Result<(f64, std::collections::BTreeMap<String, f64>), ConfigError> {
    let ok = |c: f64| c.is_finite() && c >= 0.0;
    let cost = match &raw.cost {
        Some(c) if !ok(*c.get_ref()) => {
            return Err(locate.error(
                c.span().start,
                &format!("{key}.cost"),
                "must be a number of at least 0",
            ));
        }
        c => c.as_ref().map_or(0.0, |c| *c.get_ref()),
    };
    for (tool, c) in &raw.costs {
        if !ok(*c) {
            return Err(locate.error(
                raw.id.span().start,
                &format!("{key}.costs.{tool}"),
                "must be a number of at least 0",
            ));
        }
    }
    Ok((cost, raw.costs.clone()))
}
