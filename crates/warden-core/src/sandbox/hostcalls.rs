//! Capturing every host call a component makes, for the audit log.
//!
//! wasmtime's generated bindings (WASI's, and ours with the `tracing` flag) open a
//! TRACE span named `wit-bindgen import` (fields `module`, `function`) around each
//! import call and emit a `call` event (arguments) and a `return` event (result) in it.
//! A governed call runs under [`record`], which installs a small subscriber that turns
//! those spans into [`HostCall`]s for the current run. It must never see or keep
//! anything outside the run it records, and it keeps only a bounded summary.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};

/// Longest argument or result summary put in a record (after redaction).
pub const MAX_SUMMARY: usize = 512;
/// Most host calls recorded one by one per run; later ones are counted per component,
/// interface, function and outcome, and the counts go in one summary record, so a guest
/// looping on a host call cannot flood the log.
pub const MAX_CALLS: usize = 1_000;

/// WASI and `wasi:http` error codes that mean "refused" (by a grant or the sandbox),
/// as their Debug text names them.
const DENIED_CODES: [&str; 6] = [
    "access",
    "not-permitted",
    "read-only",
    "access-denied",
    "ErrorCode::HttpRequestDenied",
    "HttpRequestDenied",
];

/// One host call.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// Who made it: `plugin:<id>` or `policy:<id>`.
    pub component: String,
    pub interface: String,
    pub function: String,
    pub args: String,
    pub result: String,
    pub duration_us: u64,
}

impl HostCall {
    /// `ok`, `error`, or `denied` (refused by a grant or the sandbox), by the error code
    /// the call returned.
    pub fn outcome(&self) -> &'static str {
        let Some(code) = error_code(&self.result) else {
            return "ok";
        };
        // Name lookups are never granted: any failure of one is the sandbox refusing.
        let lookup = self.interface.ends_with("ip-name-lookup");
        if lookup || DENIED_CODES.contains(&code) {
            "denied"
        } else {
            "error"
        }
    }
}

/// The error code of a result's Debug text, if it is an error: WASI's `Err(<code>
/// (error N))`, `wasi:http`'s `Err(ErrorCode::<Name>)`, or a bare `Err(<code>)`.
fn error_code(result: &str) -> Option<&str> {
    let at = result.find("Err(")?;
    let rest = &result[at + 4..];
    let end = rest
        .find(['(', ')', ' ', ',', '{', '\n'])
        .unwrap_or(rest.len());
    let code = rest[..end].trim_end_matches(':');
    Some(if code.is_empty() { "error" } else { code })
}

/// Debug text of a host error without the host's own stack (wasmtime errors carry one
/// when `RUST_BACKTRACE` is set): the log says what the guest did, not where the host was.
fn without_host_backtrace(text: &str) -> &str {
    match text.find("\nStack backtrace:") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The host calls of one run.
pub struct Recorder {
    component: String,
    /// Bytes of each summary kept before redaction: `MAX_SUMMARY` plus the longest
    /// secret form, so a value straddling the cut is still whole when it is scrubbed.
    keep: usize,
    open: HashMap<u64, (HostCall, Instant)>,
    stack: Vec<u64>,
    calls: Vec<HostCall>,
    /// Calls already taken with [`Recorder::take`].
    taken: u64,
    /// Calls beyond `MAX_CALLS`, counted only: (component, interface, function,
    /// outcome) -> calls.
    counted: std::collections::BTreeMap<(String, String, String, &'static str), u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::keeping(MAX_SUMMARY)
    }
}

impl Recorder {
    /// A recorder keeping `keep` bytes of each argument and result summary.
    pub fn keeping(keep: usize) -> Recorder {
        Recorder {
            component: String::new(),
            keep: keep.max(MAX_SUMMARY),
            open: HashMap::new(),
            stack: Vec::new(),
            calls: Vec::new(),
            taken: 0,
            counted: std::collections::BTreeMap::new(),
        }
    }

    /// Attribute the host calls that follow to `component`.
    pub fn set_component(&mut self, component: String) {
        self.component = component;
    }

    /// The calls recorded since the last `take`.
    pub fn take(&mut self) -> Vec<HostCall> {
        self.taken += self.calls.len() as u64;
        std::mem::take(&mut self.calls)
    }

    /// Every call recorded, taken or not, kept or only counted.
    pub fn total(&self) -> u64 {
        self.taken + self.calls.len() as u64 + self.counted.values().sum::<u64>()
    }

    /// The calls past the per-run bound, counted: (component, interface, function,
    /// outcome, calls). Taken once.
    pub fn take_counts(&mut self) -> Vec<(String, String, String, &'static str, u64)> {
        std::mem::take(&mut self.counted)
            .into_iter()
            .map(|((c, i, f, o), n)| (c, i, f, o, n))
            .collect()
    }
}

pub type SharedRecorder = Arc<Mutex<Recorder>>;

tokio::task_local! {
    static CURRENT: SharedRecorder;
}

static DISPATCH: LazyLock<Dispatch> = LazyLock::new(|| Dispatch::new(HostCallSubscriber));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Run `future` recording its host calls into `recorder`.
pub async fn record<F: Future>(recorder: SharedRecorder, future: F) -> F::Output {
    let dispatch = DISPATCH.clone();
    CURRENT
        .scope(
            recorder,
            tracing::instrument::WithSubscriber::with_subscriber(future, dispatch),
        )
        .await
}

fn with_recorder<R>(f: impl FnOnce(&mut Recorder) -> R) -> Option<R> {
    CURRENT
        .try_with(|r| r.lock().ok().map(|mut r| f(&mut r)))
        .ok()
        .flatten()
}

const IMPORT_SPAN: &str = "wit-bindgen import";
/// Targets (module paths) of the generated bindings whose imports are recorded.
const BINDINGS: [&str; 2] = ["wasmtime_wasi", "warden_core::"];

struct HostCallSubscriber;

impl Subscriber for HostCallSubscriber {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // Only the generated bindings (WASI's and warden's own) make import spans and
        // their events. Every other callsite in the process is never of interest, so
        // it costs nothing while a call is recorded.
        let bindings = BINDINGS.iter().any(|t| meta.target().starts_with(t));
        if !bindings || (meta.is_span() && meta.name() != IMPORT_SPAN) {
            Interest::never()
        } else {
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        let inside_import = with_recorder(|r| !r.stack.is_empty()).unwrap_or(false);
        (meta.is_span() && meta.name() == IMPORT_SPAN && CURRENT.try_with(|_| ()).is_ok())
            || (meta.is_event() && inside_import)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut fields = Fields::keeping(with_recorder(|r| r.keep).unwrap_or(MAX_SUMMARY));
        attrs.record(&mut fields);
        with_recorder(|r| {
            let call = HostCall {
                component: r.component.clone(),
                interface: fields.module,
                function: fields.function,
                args: String::new(),
                result: String::new(),
                duration_us: 0,
            };
            r.open.insert(id, (call, Instant::now()));
        });
        Id::from_u64(id)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::keeping(with_recorder(|r| r.keep).unwrap_or(MAX_SUMMARY));
        event.record(&mut fields);
        with_recorder(|r| {
            let Some(id) = r.stack.last().copied() else {
                return;
            };
            if let Some((call, _)) = r.open.get_mut(&id) {
                let text = without_host_backtrace(&fields.rest).to_string();
                match fields.message.as_str() {
                    "call" => call.args = text,
                    "return" => call.result = text,
                    _ => {}
                }
            }
        });
    }

    fn enter(&self, span: &Id) {
        with_recorder(|r| r.stack.push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        with_recorder(|r| {
            if let Some(pos) = r.stack.iter().rposition(|&s| s == span.into_u64()) {
                r.stack.remove(pos);
            }
        });
    }

    fn try_close(&self, span: Id) -> bool {
        with_recorder(|r| {
            if let Some((mut call, started)) = r.open.remove(&span.into_u64()) {
                call.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if r.taken as usize + r.calls.len() < MAX_CALLS {
                    r.calls.push(call);
                } else {
                    let outcome = call.outcome();
                    *r.counted
                        .entry((call.component, call.interface, call.function, outcome))
                        .or_default() += 1;
                }
            }
        });
        true
    }
}

/// Field values of a span or event, as bounded text.
struct Fields {
    module: String,
    function: String,
    message: String,
    rest: String,
    keep: usize,
}

impl Fields {
    fn keeping(keep: usize) -> Fields {
        Fields {
            module: String::new(),
            function: String::new(),
            message: String::new(),
            rest: String::new(),
            keep,
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "module" => self.module = value.to_string(),
            "function" => self.function = value.to_string(),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
            return;
        }
        if self.rest.len() >= self.keep {
            return;
        }
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
        let _ = write!(self.rest, "{}={value:?}", field.name());
        if self.rest.len() > self.keep {
            let cut = self.rest.floor_char_boundary(self.keep);
            self.rest.truncate(cut);
            self.rest.push('…');
        }
    }
}
