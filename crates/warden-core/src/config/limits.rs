//! `[plugin.limits]` and `[policy.limits]`: memory, time, output, log and fuel bounds,
//! their defaults and their ranges.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator};

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory_mb: Option<Spanned<u64>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) max_output_kb: Option<Spanned<u64>>,
    pub(super) max_log_kb: Option<Spanned<u64>>,
    pub(super) fuel: Option<Spanned<u64>>,
}

pub(super) fn check_limits(
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
