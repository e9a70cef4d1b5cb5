//! `[approvals]`: approvers and groups, windows and timeouts, notices and webhooks.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Locator, valid_principal};

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) approvers: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) groups: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    pub(super) soft_window_secs: Option<Spanned<u64>>,
    pub(super) hard_timeout_secs: Option<Spanned<u64>>,
    pub(super) hard_approvals: Option<Spanned<u64>>,
    pub(super) wait_ms: Option<Spanned<u64>>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) link_ttl_secs: Option<Spanned<u64>>,
    pub(super) webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) url: Spanned<String>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) attempts: Option<Spanned<u64>>,
}

pub(super) fn check_approvals(
    locate: &Locator,
    raw: &RawApprovals,
) -> Result<ApprovalsConfig, ConfigError> {
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
