//! Upstream MCP servers: the process, its connection, its tools' definitions and their
//! digests, and one call at a time through it.
//!
//! An upstream is trusted code that sees what it is given (unlike a component): it is
//! started with an environment that holds only what its config lists, its stderr goes
//! to warden's log (bounded, scrubbed), never to an agent. A dead upstream is restarted
//! on the next call after a backoff; a slow one is cut off at its timeout. This module
//! never decides whether a call may run: the governed path does, before it gets here.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use zeroize::Zeroizing;

use crate::call::Failure;
use crate::config::UpstreamConfig;
use crate::grants::secrets::Redactor;
use crate::util::sha256_hex;

/// Longest definition text kept from an upstream (a description, say): a server cannot
/// flood an agent's context or the audit log through warden.
pub const MAX_DESCRIPTION: usize = 4096;
/// Most tools one upstream may offer: a server cannot flood warden's memory or an
/// agent's tool list.
const MAX_TOOLS: usize = 1024;
/// Longest stderr line an upstream may put in warden's log.
const MAX_STDERR_LINE: usize = 1024;
/// How long an upstream has to start and answer `initialize` and `tools/list`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One tool as its upstream defines it, and the digest it is pinned by.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The upstream's own name for it.
    pub name: String,
    /// `{name, title, description, inputSchema, outputSchema, annotations}`, canonical.
    pub json: Value,
    /// `sha256:` of the canonical definition.
    pub digest: String,
}

/// The parts of an upstream's tool a definition is made of, keys sorted, descriptions cut.
pub fn definition(tool: &Value) -> Option<Definition> {
    let name = tool.get("name")?.as_str()?.to_string();
    let cut = |v: Option<&Value>| match v.and_then(Value::as_str) {
        Some(s) => Value::from(crate::util::bounded_to(s, MAX_DESCRIPTION)),
        None => Value::Null,
    };
    let json = serde_json::json!({
        "name": name,
        "title": cut(tool.get("title")),
        "description": cut(tool.get("description")),
        "inputSchema": tool.get("inputSchema").cloned().unwrap_or(Value::Null),
        "outputSchema": tool.get("outputSchema").cloned().unwrap_or(Value::Null),
        "annotations": tool.get("annotations").cloned().unwrap_or(Value::Null),
    });
    let digest = format!("sha256:{}", sha256_hex(canonical(&json).as_bytes()));
    Some(Definition { name, json, digest })
}

/// JSON with every object's keys sorted: the same definition always hashes the same.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// What an upstream gets from the vault: environment variables (a command) and headers
/// (a URL), values already formatted.
#[derive(Default)]
pub struct Secrets {
    pub env: Vec<(String, Zeroizing<String>)>,
    pub headers: Vec<(String, Zeroizing<String>)>,
}

/// What `warden upstreams list` shows of one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub id: String,
    pub running: bool,
    pub restarts: u64,
    pub calls: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The client side of a session: it hears the upstream say its tool list changed.
#[derive(Clone)]
struct Listener {
    changed: Arc<tokio::sync::Notify>,
}

impl rmcp::ClientHandler for Listener {
    fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.changed.notify_one();
        std::future::ready(())
    }
}

struct Connection {
    service: Option<RunningService<RoleClient, Listener>>,
    /// When the next start may be tried (after a failure, with backoff).
    next_try: Option<Instant>,
    backoff: Duration,
    /// It ran once: a later start is a restart.
    started: bool,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    /// Secret-bearing environment and headers: never logged, never in a record.
    secrets: Secrets,
    redactor: Arc<Redactor>,
    connection: tokio::sync::Mutex<Connection>,
    restarts: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    /// Signalled when the upstream says its tools changed (and when it is dropped, so
    /// that a watcher can let go).
    changed: Arc<tokio::sync::Notify>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.changed.notify_one();
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig, secrets: Secrets, redactor: Arc<Redactor>) -> Upstream {
        Upstream {
            config,
            secrets,
            redactor,
            connection: tokio::sync::Mutex::new(Connection {
                service: None,
                next_try: None,
                backoff: FIRST_BACKOFF,
                started: false,
            }),
            restarts: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Signalled when the upstream's tool list changed, or it was dropped.
    pub fn list_changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    fn listener(&self) -> Listener {
        Listener {
            changed: self.changed.clone(),
        }
    }

    fn note_error(&self, error: &str) -> String {
        let error = self.redactor.bounded(error, 1024);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.clone());
        }
        error
    }

    async fn spawn(&self) -> Result<RunningService<RoleClient, Listener>, String> {
        if let Some(url) = &self.config.url {
            return self.connect(url).await;
        }
        let argv = &self.config.command;
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&self.config.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.config.env)
            .envs(self.secrets.env.iter().map(|(k, v)| (k, v.as_str())))
            .kill_on_drop(true);
        let (transport, stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
        if let Some(stderr) = stderr {
            let id = self.config.id.clone();
            let redactor = self.redactor.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = redactor.bounded(&line, MAX_STDERR_LINE);
                    tracing::info!(target: "warden::upstream", upstream = %id, "{line}");
                }
            });
        }
        match tokio::time::timeout(START_TIMEOUT, self.listener().serve(transport)).await {
            Ok(Ok(service)) => Ok(service),
            Ok(Err(e)) => Err(format!("initialize failed: {e}")),
            Err(_) => Err(format!(
                "did not answer initialize within {} s",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// A session with the streamable HTTP endpoint `url` (TLS verified against the
    /// system's roots), its headers and secret headers on every request.
    async fn connect(&self, url: &str) -> Result<RunningService<RoleClient, Listener>, String> {
        use rmcp::transport::StreamableHttpClientTransport;
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        // rmcp's reqwest client needs a process-wide TLS provider; the first call wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = std::collections::HashMap::new();
        let mut bearer = None;
        let plain = self
            .config
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str(), false));
        let secret = self
            .secrets
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str(), true));
        for (name, value, sensitive) in plain.chain(secret) {
            // rmcp sends a bearer token itself (and would drop ours on the first request).
            if name.eq_ignore_ascii_case("authorization")
                && let Some(token) = value.strip_prefix("Bearer ")
            {
                bearer = Some(token.to_string());
                continue;
            }
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is invalid"))?;
            let mut value = http::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name} is invalid"))?;
            value.set_sensitive(sensitive);
            headers.insert(name, value);
        }
        let mut config =
            StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(headers);
        if let Some(token) = bearer {
            config = config.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        match tokio::time::timeout(START_TIMEOUT, self.listener().serve(transport)).await {
            Ok(Ok(service)) => Ok(service),
            Ok(Err(e)) => Err(format!("initialize at {url} failed: {e}")),
            Err(_) => Err(format!(
                "{url} did not answer initialize within {} s",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// A live connection: the current one, or a new process when it died (not before its
    /// backoff has passed).
    async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut conn = self.connection.lock().await;
        if let Some(service) = &conn.service {
            // The service loop may not have noticed yet that the process died; its
            // transport has.
            if !service.is_closed() && !service.peer().is_transport_closed() {
                return Ok(service.peer().clone());
            }
            conn.service = None;
            if conn.next_try.is_none() {
                conn.next_try = Some(Instant::now() + conn.backoff);
            }
        }
        if let Some(at) = conn.next_try
            && Instant::now() < at
        {
            return Err(format!(
                "upstream {} is down (restarting in {} ms)",
                self.config.id,
                at.saturating_duration_since(Instant::now()).as_millis()
            ));
        }
        match self.spawn().await {
            Ok(service) => {
                if conn.started {
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                }
                conn.started = true;
                conn.backoff = FIRST_BACKOFF;
                conn.next_try = None;
                let peer = service.peer().clone();
                conn.service = Some(service);
                Ok(peer)
            }
            Err(e) => {
                conn.next_try = Some(Instant::now() + conn.backoff);
                conn.backoff = (conn.backoff * 2).min(MAX_BACKOFF);
                Err(self.note_error(&format!("upstream {}: {e}", self.config.id)))
            }
        }
    }

    /// Start the upstream (if it is not running) and list its tools.
    pub async fn list_tools(&self) -> Result<Vec<Value>, String> {
        let peer = self.peer().await?;
        let tools = tokio::time::timeout(START_TIMEOUT, peer.list_all_tools())
            .await
            .map_err(|_| format!("upstream {}: tools/list timed out", self.config.id))?
            .map_err(|e| {
                self.note_error(&format!("upstream {}: tools/list: {e}", self.config.id))
            })?;
        if tools.len() > MAX_TOOLS {
            return Err(self.note_error(&format!(
                "upstream {} lists {} tools, more than {MAX_TOOLS}",
                self.config.id,
                tools.len()
            )));
        }
        tools
            .iter()
            .map(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
            .collect()
    }

    /// Call upstream tool `name` (its own name) with `input`, within the timeout.
    pub async fn call(&self, name: &str, input: &Value) -> Result<Value, Failure> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call_inner(name, input).await;
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn call_inner(&self, name: &str, input: &Value) -> Result<Value, Failure> {
        let peer = self.peer().await.map_err(|e| Failure::Tool {
            code: "upstream-unavailable".into(),
            message: e,
        })?;
        let mut params = CallToolRequestParams::new(name.to_string());
        params.arguments = input.as_object().cloned();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let answer = match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => {
                self.note_error(&format!("{name}: timed out"));
                return Err(Failure::Limit(crate::call::LimitExceeded::Timeout(
                    self.config.timeout_ms,
                )));
            }
            Ok(Err(e)) => {
                let message = self.note_error(&format!("upstream {}: {e}", self.config.id));
                return Err(Failure::Tool {
                    code: "upstream-failed".into(),
                    message,
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let answer =
            serde_json::to_value(&answer).map_err(|e| Failure::BadOutput(e.to_string()))?;
        let size = answer.to_string().len() as u64;
        if size > self.config.max_output_kb * 1024 {
            return Err(Failure::BadOutput(format!(
                "the upstream answered {size} bytes, more than max_output_kb = {}",
                self.config.max_output_kb
            )));
        }
        let text: Vec<&str> = answer["content"]
            .as_array()
            .map(|items| items.iter().filter_map(|c| c["text"].as_str()).collect())
            .unwrap_or_default();
        if answer["isError"].as_bool() == Some(true) {
            return Err(Failure::Tool {
                code: "upstream-tool-error".into(),
                message: crate::util::bounded_to(&text.join("\n"), 4096),
            });
        }
        Ok(match answer.get("structuredContent") {
            Some(structured) if !structured.is_null() => structured.clone(),
            _ if text.len() == answer["content"].as_array().map_or(0, Vec::len) => {
                serde_json::json!({ "text": text.join("\n") })
            }
            _ => serde_json::json!({ "content": answer["content"] }),
        })
    }

    pub fn status(&self) -> Status {
        let running = self
            .connection
            .try_lock()
            .map(|c| {
                c.service
                    .as_ref()
                    .is_some_and(|s| !s.is_closed() && !s.peer().is_transport_closed())
            })
            .unwrap_or(true);
        Status {
            id: self.config.id.clone(),
            running,
            restarts: self.restarts.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}
