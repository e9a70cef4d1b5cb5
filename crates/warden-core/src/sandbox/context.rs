//! The sandbox one call runs in: store state, linkers and the WASI context built
//! from the operator's grants.
//!
//! Deny by default. A context built here starts with:
//! - no preopened directories (only the `files` grants, read-only or read-write);
//! - no environment variables, no arguments, no working directory (only `env` grants);
//! - no sockets: TCP, UDP and DNS lookups are refused (`allow_tcp(false)`, etc.);
//! - outgoing HTTP only to `http` grants, checked per request (`egress`);
//! - empty stdin; stdout and stderr captured into the call's bounded log;
//! - for policies, a clock frozen at the request time, randomness seeded from the
//!   action (so a decision is a function of the action alone), and nothing else at all.
//!
//! It must never hand a guest anything from the host process: not its env, cwd,
//! stdio or network.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use wasmtime::Engine;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings;
use crate::call::LogLine;
use crate::config::Limits;
use crate::grants::http::{Egress, EgressMeter, HttpGrant};
use crate::grants::secrets::{CallSecrets, PluginSecrets, Redactor};
use crate::grants::{self, Grants};
use crate::sandbox::interfaces::host::{HasHost, HostView, Progress};
use crate::sandbox::interfaces::log::{GuestLog, HasLog};
use crate::sandbox::limits::{Limited, MemoryLimiter};

/// Store data of a tool call.
pub struct ToolState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub egress: Egress,
    pub log: GuestLog,
    pub progress: Progress,
    pub limiter: MemoryLimiter,
    stdout: Capture,
    stderr: Capture,
    /// Scrubs what is cut from the call's output before it is cut.
    pub redactor: Arc<Redactor>,
    log_budget: usize,
}

/// Store data of a policy decision.
pub struct PolicyState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub log: GuestLog,
    pub limiter: MemoryLimiter,
}

/// A plugin's grants prepared once at load, so building a call's context is cheap.
#[derive(Clone)]
pub struct ToolSandbox {
    pub grants: Grants,
    pub http: Arc<[HttpGrant]>,
    /// The granted secrets with their values.
    pub secrets: Arc<PluginSecrets>,
    pub limits: Limits,
    /// Every granted secret value (of any plugin), scrubbed from what a call leaves.
    pub redactor: Arc<Redactor>,
}

impl ToolSandbox {
    pub fn new(
        grants: Grants,
        secrets: Arc<PluginSecrets>,
        limits: Limits,
        redactor: Arc<Redactor>,
    ) -> ToolSandbox {
        let http = grants.http.clone().into();
        ToolSandbox {
            grants,
            http,
            secrets,
            limits,
            redactor,
        }
    }

    /// A sandbox with no grants at all (used to ask a plugin to `describe` itself).
    pub fn deny_all(limits: Limits) -> ToolSandbox {
        ToolSandbox::new(Grants::default(), Arc::default(), limits, Arc::default())
    }

    /// Fresh state for one call.
    /// A call's store state; its outgoing HTTP counts on `meter`.
    pub fn state(&self, meter: Arc<EgressMeter>) -> Result<ToolState> {
        let log_budget = (self.limits.max_log_kb as usize) << 10;
        // Kept past the budget by the longest secret form, so the cut (made after the
        // text is scrubbed) never splits a value.
        let stdout = Capture::new(log_budget + self.redactor.longest());
        let stderr = Capture::new(log_budget + self.redactor.longest());
        let mut wasi = deny_all_builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        grants::env::apply(&self.grants.env, &mut wasi);
        grants::files::preopen(&self.grants.files, &mut wasi)?;
        Ok(ToolState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            egress: Egress::new(
                self.http.clone(),
                CallSecrets::new(self.secrets.clone()),
                meter,
            ),
            log: GuestLog::new(log_budget),
            progress: Progress::default(),
            limiter: MemoryLimiter::new(self.limits.memory_mb),
            stdout,
            stderr,
            redactor: self.redactor.clone(),
            log_budget,
        })
    }
}

impl ToolState {
    /// The call's log with captured stdout and stderr appended. `max_log_kb` bounds each
    /// of the three separately.
    pub fn finish_log(&mut self) -> Vec<LogLine> {
        let mut log = std::mem::take(&mut self.log);
        let note = |source, message| LogLine {
            level: "warn",
            source,
            message,
            fields: vec![],
        };
        if log.dropped > 0 {
            let message = format!("{} log lines were dropped (max_log_kb)", log.dropped);
            log.push_unbudgeted(note("log", message));
        }
        for (source, capture) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, mut dropped) = capture.take();
            let mut text = self.redactor.scrub(&text).into_owned();
            if text.len() > self.log_budget {
                let cut = text.floor_char_boundary(self.log_budget);
                dropped += (text.len() - cut) as u64;
                text.truncate(cut);
            }
            if !text.is_empty() {
                log.push_unbudgeted(LogLine {
                    level: "info",
                    source,
                    message: text,
                    fields: vec![],
                });
            }
            if dropped > 0 {
                log.push_unbudgeted(note(
                    source,
                    format!("{dropped} more bytes of {source} were dropped (max_log_kb)"),
                ));
            }
        }
        log.into_lines()
    }
}

impl PolicyState {
    /// Fresh state for one decision: nothing granted, the clock frozen at `time_ms`,
    /// `wasi:random` a stream determined by `seed` (a digest of the action): two
    /// evaluations of one action cannot tell themselves apart.
    pub fn new(limits: &Limits, time_ms: u64, seed: [u8; 32]) -> PolicyState {
        use rand::SeedableRng as _;
        let mut wasi = deny_all_builder();
        let now = Duration::from_millis(time_ms);
        let mut insecure = seed;
        insecure[0] ^= 0xff;
        let mut seed16 = [0u8; 16];
        seed16.copy_from_slice(&seed[16..]);
        wasi.wall_clock(FrozenClock(now))
            .monotonic_clock(FrozenClock(now))
            .secure_random(rand::rngs::StdRng::from_seed(seed))
            .insecure_random(rand::rngs::StdRng::from_seed(insecure))
            .insecure_random_seed(u128::from_le_bytes(seed16));
        PolicyState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            log: GuestLog::new((limits.max_log_kb as usize) << 10),
            limiter: MemoryLimiter::new(limits.memory_mb),
        }
    }
}

/// The starting point of every context: nothing from the host process.
fn deny_all_builder() -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder
}

/// The linker for tools: all of WASI p2, `wasi:http`, and warden's `log` and `host`.
pub fn tool_linker(engine: &Engine) -> Result<Linker<ToolState>> {
    let mut linker: Linker<ToolState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::policy::warden::plugin::log::add_to_linker::<_, HasLog>(&mut linker, |s| &mut s.log)?;
    bindings::tool::warden::plugin::host::add_to_linker::<_, HasHost>(&mut linker, |s| HostView {
        progress: &mut s.progress,
        secrets: &mut s.egress.secrets,
        redactor: &s.redactor,
    })?;
    Ok(linker)
}

/// The linker for policies: WASI p2 (granting nothing) and `log`.
pub fn policy_linker(engine: &Engine) -> Result<Linker<PolicyState>> {
    let mut linker: Linker<PolicyState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    bindings::policy::warden::plugin::log::add_to_linker::<_, HasLog>(&mut linker, |s| &mut s.log)?;
    Ok(linker)
}

impl WasiView for ToolState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ToolState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

impl WasiView for PolicyState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Limited for ToolState {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl Limited for PolicyState {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// A clock that always reads the same time: policies are pure functions of the action.
struct FrozenClock(Duration);

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A guest's stdout or stderr: kept up to a byte budget, the rest counted and dropped.
/// Writes never fail, so a flooding guest is not told to stop early (it is bounded by
/// its time limit) and the host's own stdout is never involved.
#[derive(Clone)]
struct Capture(Arc<Mutex<CaptureBuf>>);

struct CaptureBuf {
    bytes: Vec<u8>,
    budget: usize,
    dropped: u64,
}

impl Capture {
    fn new(budget: usize) -> Capture {
        Capture(Arc::new(Mutex::new(CaptureBuf {
            bytes: Vec::new(),
            budget,
            dropped: 0,
        })))
    }

    fn take(&self) -> (String, u64) {
        match self.0.lock() {
            Ok(mut buf) => {
                let bytes = std::mem::take(&mut buf.bytes);
                (String::from_utf8_lossy(&bytes).into_owned(), buf.dropped)
            }
            Err(_) => (String::new(), 0),
        }
    }

    fn append(&self, data: &[u8]) {
        if let Ok(mut buf) = self.0.lock() {
            let room = buf.budget.saturating_sub(buf.bytes.len());
            let keep = room.min(data.len());
            buf.bytes.extend_from_slice(&data[..keep]);
            buf.dropped += (data.len() - keep) as u64;
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
