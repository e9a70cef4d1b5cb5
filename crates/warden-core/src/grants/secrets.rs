//! Secrets at run time: what each plugin was granted, getting values into outgoing
//! requests without the plugin holding them, audited reveals, and redaction.
//!
//! Three uses, each granted per secret in warden.toml:
//! - *header*: the host sets a header on requests to the grant's hosts;
//! - *placeholder*: the plugin gets an opaque token; the host substitutes the value in
//!   requests to the grant's hosts and refuses requests carrying it anywhere else;
//! - *reveal*: the plugin gets the value itself, and the reveal is recorded.
//!
//! It must never put a value in a log, an error message or a request to a host the
//! grant does not name, and every string leaving a call passes through [`Redactor`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::bindings::SecretError;
use crate::grants::http::{HostPattern, HttpGrant};

/// How a granted secret may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretUse {
    /// Set header `name` to `format` with `{}` replaced by the value.
    Header { name: HeaderName, format: String },
    /// Substitute placeholders (always in headers; in the path and query, and the body,
    /// when enabled).
    Placeholder { query: bool, body: bool },
    /// Hand the value to the plugin.
    Reveal,
}

/// One `secrets` grant of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretGrant {
    pub secret: String,
    /// Where the value may be sent (not used by `Reveal`).
    pub hosts: Vec<HostPattern>,
    pub usage: SecretUse,
    /// Byte offset of the grant in the config file, for errors found at load.
    pub span: usize,
}

/// One `secrets` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretGrant {
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

impl SecretGrant {
    /// Validate one entry: exactly one use (header, placeholder or reveal), hosts that
    /// the plugin's `http` grant (`http`) can reach.
    pub(crate) fn parse(
        raw: &RawSecretGrant,
        span: usize,
        http: &[HttpGrant],
    ) -> Result<SecretGrant, String> {
        crate::vault::check_name(&raw.name).map_err(|e| e.to_string())?;
        let uses = usize::from(raw.header.is_some())
            + usize::from(raw.placeholder)
            + usize::from(raw.reveal);
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
            let pattern =
                HostPattern::parse(host).map_err(|why| format!("hosts: {host:?}: {why}"))?;
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
}

/// A plugin's grants with their values, decrypted at load and shared by its calls.
#[derive(Default)]
pub struct PluginSecrets {
    grants: Vec<SecretGrant>,
    values: HashMap<String, Zeroizing<String>>,
}

impl PluginSecrets {
    pub fn new(
        grants: Vec<SecretGrant>,
        values: HashMap<String, Zeroizing<String>>,
    ) -> PluginSecrets {
        PluginSecrets { grants, values }
    }

    fn value(&self, grant: &SecretGrant) -> Option<&str> {
        self.values.get(&grant.secret).map(|v| v.as_str())
    }
}

/// Body substitutions to make once the plugin has written the body.
pub struct BodySubstitution {
    pub pairs: Vec<(String, Zeroizing<String>)>,
}

/// One call's secret state: placeholders issued and values revealed.
pub struct CallSecrets {
    plugin: Arc<PluginSecrets>,
    /// (token, index into the plugin's grants)
    placeholders: Vec<(String, usize)>,
    /// Names of the secrets revealed during this call.
    pub reveals: Vec<String>,
}

impl CallSecrets {
    pub fn new(plugin: Arc<PluginSecrets>) -> CallSecrets {
        CallSecrets {
            plugin,
            placeholders: Vec::new(),
            reveals: Vec::new(),
        }
    }

    fn grant(&self, name: &str, wanted: impl Fn(&SecretUse) -> bool) -> Result<usize, SecretError> {
        let mut granted = false;
        for (i, grant) in self.plugin.grants.iter().enumerate() {
            if grant.secret == name {
                granted = true;
                if wanted(&grant.usage) {
                    return Ok(i);
                }
            }
        }
        Err(if granted {
            SecretError::WrongUse
        } else {
            SecretError::NotFound
        })
    }

    /// A fresh placeholder for `name`, if it is granted for placeholder use.
    pub fn placeholder(&mut self, name: &str) -> Result<String, SecretError> {
        let index = self.grant(name, |u| matches!(u, SecretUse::Placeholder { .. }))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SecretError::NotFound)?;
        let token = format!("warden-secret-{}", hex::encode(nonce));
        self.placeholders.push((token.clone(), index));
        Ok(token)
    }

    /// The value of `name`, if it is granted for reveal. Recorded in `reveals`.
    pub fn reveal(&mut self, name: &str) -> Result<String, SecretError> {
        let index = self.grant(name, |u| matches!(u, SecretUse::Reveal))?;
        let value = self
            .plugin
            .value(&self.plugin.grants[index])
            .ok_or(SecretError::NotFound)?;
        self.reveals.push(name.to_string());
        Ok(value.to_string())
    }

    /// Put granted secrets into `request` (to an already permitted host): set header
    /// grants, substitute placeholders. A placeholder bound for a host its grant does
    /// not name refuses the request (the error names the secret, never its value).
    pub fn prepare<B>(
        &self,
        request: &mut http::Request<B>,
    ) -> Result<Option<BodySubstitution>, String> {
        let plugin = &self.plugin;
        let host = request.uri().host().map(normalize_host).unwrap_or_default();
        for grant in &plugin.grants {
            if let SecretUse::Header { name, format } = &grant.usage
                && grant.hosts.iter().any(|h| h.matches(&host))
                && let Some(value) = plugin.value(grant)
            {
                let text = Zeroizing::new(format.replace("{}", value));
                let mut header = HeaderValue::from_str(&text).map_err(|_| {
                    format!(
                        "secret {} is not a valid value for header {name}",
                        grant.secret
                    )
                })?;
                header.set_sensitive(true);
                request.headers_mut().insert(name.clone(), header);
            }
        }
        if self.placeholders.is_empty() {
            return Ok(None);
        }

        let mut body = Vec::new();
        for (token, index) in &self.placeholders {
            let grant = &plugin.grants[*index];
            let SecretUse::Placeholder {
                query,
                body: in_body,
            } = grant.usage
            else {
                continue;
            };
            let Some(value) = plugin.value(grant) else {
                continue;
            };
            let allowed = grant.hosts.iter().any(|h| h.matches(&host));
            let refuse = || {
                format!(
                    "placeholder for secret {} sent to {host}, which its grant does not name",
                    grant.secret
                )
            };

            for header in request.headers_mut().values_mut() {
                let Ok(text) = header.to_str() else { continue };
                if text.contains(token.as_str()) {
                    if !allowed {
                        return Err(refuse());
                    }
                    let replaced = Zeroizing::new(text.replace(token.as_str(), value));
                    let mut new = HeaderValue::from_str(&replaced).map_err(|_| {
                        format!("secret {} is not a valid header value", grant.secret)
                    })?;
                    new.set_sensitive(true);
                    *header = new;
                }
            }
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            if path.contains(token.as_str()) {
                if !allowed {
                    return Err(refuse());
                }
                if query {
                    let encoded =
                        percent_encoding::utf8_percent_encode(value, URL_VALUE).to_string();
                    let mut parts = request.uri().clone().into_parts();
                    parts.path_and_query = Some(
                        path.replace(token.as_str(), &encoded)
                            .parse()
                            .map_err(|_| {
                                format!("secret {} cannot be put in a URL", grant.secret)
                            })?,
                    );
                    *request.uri_mut() = http::Uri::from_parts(parts)
                        .map_err(|_| format!("secret {} cannot be put in a URL", grant.secret))?;
                }
            }
            if allowed && in_body {
                body.push((token.clone(), Zeroizing::new(value.to_string())));
            }
        }
        Ok((!body.is_empty()).then_some(BodySubstitution { pairs: body }))
    }
}

impl BodySubstitution {
    /// Replace every placeholder in `body`.
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let patterns: Vec<&str> = self.pairs.iter().map(|(t, _)| t.as_str()).collect();
        let Ok(ac) = AhoCorasick::new(&patterns) else {
            return body.to_vec();
        };
        let values: Vec<&str> = self.pairs.iter().map(|(_, v)| v.as_str()).collect();
        ac.replace_all_bytes(body, &values)
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a URL.
const URL_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Scrubs every known secret value from text leaving a call, in the forms it takes on
/// its way out: as it is and as a header carries it (`Bearer <value>`), each of those
/// JSON-escaped once and twice, base64 (standard and URL alphabets, padded or not) at
/// each of the three byte offsets it can sit at inside a larger encoded body, and the
/// URL-encoding of all of them.
#[derive(Default)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    /// The longest form of any value, in bytes: text kept to be cut at N bytes must be
    /// kept to N + this before it is scrubbed, or a value straddling the cut leaks its
    /// first bytes.
    longest: usize,
}

pub const REDACTED: &str = "[REDACTED]";

/// Shorter base64 runs than this are not searched for inside larger bodies: too
/// short, they would match ordinary text.
const MIN_CORE: usize = 8;

/// The base64 characters that `form` alone determines when it sits at byte offset
/// `offset` (0, 1 or 2) of a larger base64-encoded body, in `engine`'s alphabet.
fn base64_core(engine: &base64::engine::GeneralPurpose, form: &[u8], offset: usize) -> String {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(form);
    let encoded = engine.encode(&padded);
    // A group (3 bytes, 4 characters) holding a byte from before or after the form
    // depends on it: keep only the groups made of the form's bytes alone.
    let first = if offset == 0 { 0 } else { 4 };
    let last = 4 * (padded.len() / 3);
    encoded
        .get(first..last.max(first))
        .unwrap_or_default()
        .trim_end_matches('=')
        .to_string()
}

impl Redactor {
    /// A redactor for `secrets`: each value with the header formats (`Bearer {}`) its
    /// grants send it in.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, Vec<String>)>) -> Redactor {
        let mut patterns: Vec<String> = Vec::new();
        let add = |form: String, patterns: &mut Vec<String>| {
            if !form.is_empty() && !patterns.contains(&form) {
                patterns.push(form);
            }
        };
        for (value, formats) in secrets {
            if value.is_empty() {
                continue;
            }
            let mut bases = vec![value.to_string()];
            bases.extend(
                formats
                    .iter()
                    .map(|f| f.replace("{}", value))
                    .filter(|f| f != value),
            );
            let mut forms = Vec::new();
            for base in bases {
                let once = serde_json::to_string(&base).unwrap_or_default();
                let once = once[1..once.len().saturating_sub(1).max(1)].to_string();
                let twice = serde_json::to_string(&once).unwrap_or_default();
                let twice = twice[1..twice.len().saturating_sub(1).max(1)].to_string();
                forms.push(base);
                forms.push(once);
                forms.push(twice);
            }
            let mut encoded = Vec::new();
            for form in &forms {
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    encoded.push(engine.encode(form));
                    for offset in 0..3 {
                        let core = base64_core(engine, form.as_bytes(), offset);
                        if core.len() >= MIN_CORE {
                            encoded.push(core);
                        }
                    }
                }
            }
            forms.extend(encoded);
            for form in forms {
                let url = [
                    percent_encoding::utf8_percent_encode(
                        &form,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string(),
                    percent_encoding::utf8_percent_encode(&form, URL_VALUE).to_string(),
                ];
                add(form, &mut patterns);
                for u in url {
                    add(u, &mut patterns);
                }
            }
        }
        let matcher = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        Redactor { matcher, longest }
    }

    /// See [`Redactor::longest`] (the field).
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Scrub `text`, then cut it to `max` bytes: never the other way round.
    pub fn bounded(&self, text: &str, max: usize) -> String {
        crate::util::bounded_to(&self.scrub(text), max)
    }

    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.matcher {
            Some(m) if m.is_match(text) => {
                Cow::Owned(m.replace_all(text, &vec![REDACTED; m.patterns_len()]))
            }
            _ => Cow::Borrowed(text),
        }
    }

    pub fn scrub_string(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.scrub(text) {
            *text = clean;
        }
    }

    /// Scrub every string (and object key) in a JSON value.
    pub fn scrub_value(&self, value: &mut Value) {
        if self.matcher.is_none() {
            return;
        }
        match value {
            Value::String(s) => self.scrub_string(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_value(v)),
            Value::Object(map) => {
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                for (mut key, mut v) in entries {
                    self.scrub_string(&mut key);
                    self.scrub_value(&mut v);
                    map.insert(key, v);
                }
            }
            _ => {}
        }
    }

    pub fn is_active(&self) -> bool {
        self.matcher.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_value_and_its_encodings() {
        let r = Redactor::new([("p@ss w/rd\"x", vec![])]);
        for text in [
            "p@ss w/rd\"x",
            "p@ss w/rd\\\"x",
            &STANDARD.encode("p@ss w/rd\"x"),
            &URL_SAFE_NO_PAD.encode("p@ss w/rd\"x"),
            "p%40ss%20w%2Frd%22x",
        ] {
            let out = r.scrub(&format!("before {text} after")).into_owned();
            assert_eq!(out, format!("before {REDACTED} after"), "{text}");
        }
        let mut v = serde_json::json!({ "k": ["p@ss w/rd\"x"], "p@ss w/rd\"x": 1 });
        r.scrub_value(&mut v);
        assert!(!v.to_string().contains("p@ss"), "{v}");
    }

    /// The forms an output carries a secret in when a tool encodes it, as the issue
    /// that found them listed: base64 of a formatted header and of a larger body at
    /// every byte offset, JSON escaped twice, and the URL-encoding of each.
    #[test]
    fn redacts_the_forms_a_secret_takes_inside_larger_encoded_text() {
        let value = "s3cr\"t\\v4lue-long-enough";
        let r = Redactor::new([(value, vec!["Bearer {}".to_string()])]);
        let url = |t: &str| {
            percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut leaks = vec![
            STANDARD.encode(format!("Bearer {value}")),
            URL_SAFE_NO_PAD.encode(format!("Authorization: Bearer {value}")),
            serde_json::to_string(
                &serde_json::to_string(&serde_json::json!({ "v": value })).unwrap(),
            )
            .unwrap(),
        ];
        for prefix in ["", "a", "ab", "abc", "{\"token\":\""] {
            let body = format!("{prefix}{value}\", and more text after it");
            leaks.push(STANDARD.encode(&body));
            leaks.push(URL_SAFE.encode(&body));
        }
        let encoded: Vec<String> = leaks.iter().map(|l| url(l)).collect();
        leaks.extend(encoded);
        for leak in &leaks {
            let out = r.scrub(leak);
            for piece in ["s3cr", "v4lue-long"] {
                assert!(!out.contains(piece), "{leak} -> {out}");
            }
            // Decoded, nothing of the value is left either.
            for engine in [&STANDARD, &URL_SAFE] {
                let decoded = engine
                    .decode(out.trim_matches(|c| c == '[' || c == ']'))
                    .unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&decoded).contains("v4lue-long"),
                    "{leak} -> {out}"
                );
            }
        }
    }
}
