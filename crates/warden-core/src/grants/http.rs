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

use crate::grants::secrets::CallSecrets;

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

/// What a call's outgoing HTTP may still use, checked as it happens: budgets
/// (`governance::budgets`) implement it over their shared counts, so calls running at
/// once draw from one budget.
pub trait EgressBudget: Send + Sync {
    /// Count one more request, or say why it may not be sent.
    fn request(&self) -> Result<(), String>;
    /// Count `n` more bytes (either direction), or say why no more may move.
    fn bytes(&self, n: u64) -> Result<(), String>;
}

/// What one call's outgoing HTTP used: counted by the host, whatever the plugin says.
#[derive(Default)]
pub struct EgressMeter {
    pub requests: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    budget: Option<Arc<dyn EgressBudget>>,
    /// Why bytes stopped moving mid-transfer, the first time they did.
    stopped: Mutex<Option<String>>,
}

impl EgressMeter {
    pub fn new(budget: Option<Arc<dyn EgressBudget>>) -> EgressMeter {
        EgressMeter {
            budget,
            ..EgressMeter::default()
        }
    }

    fn request(&self) -> Result<(), String> {
        if let Some(b) = &self.budget {
            b.request()?;
        }
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn bytes(&self, n: u64) -> Result<(), String> {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let Some(b) = &self.budget else {
            return Ok(());
        };
        b.bytes(n).inspect_err(|why| {
            let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
            stopped.get_or_insert_with(|| format!("a transfer was cut off: {why}"));
        })
    }

    /// Why a transfer was cut off by the budget, if one was.
    pub fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// (requests, bytes) so far.
    pub fn used(&self) -> (u64, u64) {
        (
            self.requests.load(std::sync::atomic::Ordering::Relaxed),
            self.bytes.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// The `wasi:http` hooks for one call: check the grant and the egress budget, put
/// granted secrets in, then send, counting what moves.
pub struct Egress {
    grants: Arc<[HttpGrant]>,
    pub secrets: CallSecrets,
    /// Requests refused during this call (`METHOD uri: why`), never with a secret value.
    pub denied: Arc<Mutex<Vec<String>>>,
    pub meter: Arc<EgressMeter>,
}

impl Egress {
    pub fn new(grants: Arc<[HttpGrant]>, secrets: CallSecrets, meter: Arc<EgressMeter>) -> Egress {
        Egress {
            grants,
            secrets,
            denied: Arc::default(),
            meter,
        }
    }

    /// Refuse a request: the guest gets `HTTP-request-denied` from the response. Its
    /// body is kept (and drained) meanwhile: a client that writes the body while it
    /// waits for the response (`wstd` does) would otherwise see the body fail first and
    /// report a network fault instead of the refusal.
    fn deny(&self, what: String, body: wasmtime_wasi_http::WasiBody) -> SendFuture {
        tracing::debug!(request = %what, "outgoing HTTP refused");
        if let Ok(mut denied) = self.denied.lock() {
            denied.push(what);
        }
        drop(KeepDraining(Some(body)));
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
            let what = format!(
                "{} {}: not in the http grant",
                request.method(),
                request.uri()
            );
            return self.deny(what, request.into_body());
        }
        // Described before secrets go in: the uri may carry a value afterwards.
        let what = format!("{} {}", request.method(), request.uri());
        if let Err(why) = self.meter.request() {
            return self.deny(format!("{what}: {why}"), request.into_body());
        }
        let body_substitution = match self.secrets.prepare(&mut request) {
            Ok(plan) => plan,
            Err(why) => return self.deny(format!("{what}: {why}"), request.into_body()),
        };
        // A request without a body by convention (GET, HEAD...) is sent once the guest
        // has finished its (empty) body, as one: clients such as `wstd` hand the request
        // over first and finish the body after, and a chunked GET is not what a server
        // expects.
        let buffered = body_substitution.is_some()
            || matches!(
                *request.method(),
                http::Method::GET
                    | http::Method::HEAD
                    | http::Method::OPTIONS
                    | http::Method::TRACE
            );
        let meter = self.meter.clone();
        Box::new(async move {
            if buffered {
                let (mut parts, body) = request.into_parts();
                let bytes = http_body_util::Limited::new(body, MAX_SUBSTITUTED_BODY)
                    .collect()
                    .await
                    .map_err(|_| HttpError::HttpRequestBodySize(Some(MAX_SUBSTITUTED_BODY as u64)))?
                    .to_bytes();
                let replaced = match &body_substitution {
                    Some(plan) => plan.apply(&bytes),
                    None => bytes.to_vec(),
                };
                meter
                    .bytes(replaced.len() as u64)
                    .map_err(|_| HttpError::HttpRequestDenied)?;
                if parts.headers.contains_key(http::header::CONTENT_LENGTH) || !replaced.is_empty()
                {
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, replaced.len().into());
                }
                let body = http_body_util::Full::new(bytes::Bytes::from(replaced))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                request = http::Request::from_parts(parts, body);
            } else {
                // The server may answer (and close) before the guest has finished its
                // body; what the guest writes after that is taken and dropped, not
                // turned into an error that reads like a network fault.
                let meter = meter.clone();
                request = request.map(|body| {
                    Metered {
                        body: KeepDraining(Some(body)),
                        meter,
                    }
                    .boxed_unsync()
                });
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(|body| Metered { body, meter }.boxed_unsync()),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// A body whose bytes count against the call's egress: past the budget it ends in an
/// error (a download that would exceed it stops there).
struct Metered<B> {
    body: B,
    meter: Arc<EgressMeter>,
}

impl<B> http_body::Body for Metered<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = HttpError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && self.meter.bytes(data.len() as u64).is_err()
        {
            return std::task::Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body that, when dropped before its end (hyper is done with it), keeps
/// reading what the guest still writes, on a task of its own, so the guest's writes and
/// its `finish` succeed.
struct KeepDraining(Option<wasmtime_wasi_http::WasiBody>);

/// How long a body left behind is drained at most (a call's budget ends it sooner).
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl http_body::Body for KeepDraining {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.0.as_mut() {
            Some(body) => {
                let polled = std::pin::Pin::new(body).poll_frame(cx);
                if let std::task::Poll::Ready(None) = polled {
                    self.0 = None;
                }
                polled
            }
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for KeepDraining {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut body = body;
                // Frames are read and dropped, never kept.
                let _ = tokio::time::timeout(DRAIN_FOR, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            });
        }
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
