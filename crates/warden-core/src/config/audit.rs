//! `[audit]`: where the log lives, how segments roll, checkpoints, the signing key and
//! witnesses.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator, absolute, yes};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) dir: Option<Spanned<String>>,
    pub(super) max_segment_kb: Option<Spanned<u64>>,
    pub(super) signing_key: Option<Spanned<String>>,
    pub(super) checkpoint_every: Option<Spanned<u64>>,
    pub(super) checkpoint_secs: Option<Spanned<u64>>,
    pub(super) witness: Option<RawWitness>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWitness {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
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

pub(super) fn check_audit(
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
