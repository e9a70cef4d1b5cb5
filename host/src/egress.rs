//! Outgoing HTTP: the operator's `http` grant and its enforcement.
//!
//! Owns the `scheme://host[:port]` grant patterns and the `wasi:http` hook that
//! checks every request a plugin sends, including each hop of a redirect the plugin
//! chooses to follow (the host itself never follows redirects), and puts granted
//! secrets into requests (see `secrets`). It must never let a request leave for a
//! destination no grant matches.

use std::future::Future;
use std::sync::{Arc, Mutex};

use http::uri::Scheme;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::secrets::CallSecrets;

/// A host name, exact or `*.suffix` (which matches subdomains of the suffix only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host; for a wildcard, the suffix after `*.`.
    pub host: String,
    pub wildcard: bool,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let host = pattern
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(suffix) => (true, suffix.to_string()),
            None => (false, host),
        };
        if host.is_empty() || host.contains('*') {
            return Err("`*` is only allowed as a leading `*.` label".into());
        }
        let ipv6 = host.parse::<std::net::Ipv6Addr>().is_ok();
        if !ipv6 && host.contains(['/', ':', '@', '?', '#', ' ', '[', ']']) {
            return Err("a host name only (no scheme, port or path)".into());
        }
        Ok(HostPattern { host, wildcard })
    }

    /// Does `host` (lower-case, without brackets) match?
    pub fn matches(&self, host: &str) -> bool {
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{star}{}", self.host)
    }
}

/// One `http` grant: scheme, host pattern, and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub https: bool,
    pub host: HostPattern,
    pub port: u16,
}

impl HttpGrant {
    /// Parse `https://api.example.com`, `http://127.0.0.1:8080` or `https://*.example.com`.
    pub fn parse(pattern: &str) -> Result<HttpGrant, String> {
        let bad = |why: &str| {
            format!("invalid HTTP grant {pattern:?}: {why} (expected scheme://host[:port])")
        };
        let (https, rest) = if let Some(rest) = pattern.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = pattern.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("scheme must be http or https"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only scheme, host and port are allowed"));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("unexpected text after `]`")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad("port must be a number 1-65535")),
            },
        };
        let host = HostPattern::parse(host).map_err(|why| bad(&why))?;
        Ok(HttpGrant { https, host, port })
    }

    fn permits(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https && self.port == port && self.host.matches(host)
    }
}

impl std::fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Does any grant permit a request to `uri`?
pub fn permitted(grants: &[HttpGrant], uri: &http::Uri) -> bool {
    let https = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => return false,
    };
    let Some(host) = uri.host() else { return false };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    grants.iter().any(|g| g.permits(https, &host, port))
}

/// The `wasi:http` hooks for one call: check the grant, put granted secrets in,
/// then send.
pub struct Egress {
    grants: Arc<[HttpGrant]>,
    pub secrets: CallSecrets,
    /// Requests refused during this call (`METHOD uri: why`), never with a secret value.
    pub denied: Arc<Mutex<Vec<String>>>,
}

impl Egress {
    pub fn new(grants: Arc<[HttpGrant]>, secrets: CallSecrets) -> Egress {
        Egress {
            grants,
            secrets,
            denied: Arc::default(),
        }
    }

    fn deny(&self, what: String) -> SendFuture {
        tracing::debug!(request = %what, "outgoing HTTP refused");
        if let Ok(mut denied) = self.denied.lock() {
            denied.push(what);
        }
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// Largest request body the host buffers to substitute placeholders in it.
const MAX_SUBSTITUTED_BODY: usize = 1 << 20;

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        if !permitted(&self.grants, request.uri()) {
            return self.deny(format!(
                "{} {}: not in the http grant",
                request.method(),
                request.uri()
            ));
        }
        // Described before secrets go in: the uri may carry a value afterwards.
        let what = format!("{} {}", request.method(), request.uri());
        let body_substitution = match self.secrets.prepare(&mut request) {
            Ok(plan) => plan,
            Err(why) => return self.deny(format!("{what}: {why}")),
        };
        Box::new(async move {
            if let Some(plan) = body_substitution {
                let (mut parts, body) = request.into_parts();
                let bytes = http_body_util::Limited::new(body, MAX_SUBSTITUTED_BODY)
                    .collect()
                    .await
                    .map_err(|_| HttpError::HttpRequestBodySize(Some(MAX_SUBSTITUTED_BODY as u64)))?
                    .to_bytes();
                let replaced = plan.apply(&bytes);
                if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, replaced.len().into());
                }
                let body = http_body_util::Full::new(bytes::Bytes::from(replaced))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                request = http::Request::from_parts(parts, body);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(grant: &str, url: &str) -> bool {
        let grant = HttpGrant::parse(grant).unwrap();
        permitted(&[grant], &url.parse().unwrap())
    }

    #[test]
    fn grants_match_scheme_host_and_port() {
        assert!(allows(
            "https://api.github.com",
            "https://api.github.com/repos"
        ));
        assert!(allows(
            "https://api.github.com",
            "https://API.github.com:443/"
        ));
        assert!(!allows("https://api.github.com", "http://api.github.com/"));
        assert!(!allows(
            "https://api.github.com",
            "https://api.github.com:8443/"
        ));
        assert!(!allows(
            "https://api.github.com",
            "https://api.github.com.evil.com/"
        ));
        assert!(!allows(
            "https://api.github.com",
            "https://evil.com@api.github.co/"
        ));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081/x"));
        assert!(allows("http://[::1]:8080", "http://[::1]:8080/x"));
        assert!(allows("https://[::1]", "https://[::1]/x"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(allows("https://*.example.com", "https://a.example.com/"));
        assert!(allows("https://*.example.com", "https://a.b.example.com/"));
        assert!(!allows("https://*.example.com", "https://example.com/"));
        assert!(!allows("https://*.example.com", "https://badexample.com/"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in [
            "ftp://x",
            "https://",
            "https://x/path",
            "https://a.*.com",
            "https://x:0",
            "https://u@x",
            "x.com",
        ] {
            assert!(HttpGrant::parse(bad).is_err(), "{bad}");
        }
    }
}
