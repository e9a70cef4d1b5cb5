//! The MCP face of warden: every loaded tool, listed and called over MCP (rmcp), each
//! call through the same governed path as `warden call`.
//!
//! Owns the mapping between MCP and a governed call: the tool list (schema, title,
//! annotations), the principal of a request (the stdio principal, or the one the HTTP
//! auth layer put in the request), outcomes as tool results (`isError` with a readable
//! reason for denials, failures and held calls), progress while a held call waits. It
//! must never offer a tool that changes grants, policies, secrets or approvals: agents
//! cannot govern themselves, and only components from the config are listed.

// MCP logging (`logging/setLevel`, `notifications/message`) is deprecated by SEP-2577
// for the newest protocol, and rmcp marks it so; the clients agents use today speak it,
// so warden keeps it until they move on.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, SubscriptionFilter, Tool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::state::Server;
use warden_core::call::{CallError, CallReport, CallRequest, Outcome};
use warden_core::runtime::Runtime;
use warden_core::runtime::driver::Resume;
use warden_core::tokens::Principal;

/// How often a waiting held call reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One MCP session's handler (the HTTP transport makes one per session or request).
#[derive(Clone)]
pub struct WardenMcp {
    pub server: Arc<Server>,
    /// Set for stdio: every call runs as this principal.
    pub stdio_principal: Option<String>,
    /// The level this session's client asked for with `logging/setLevel`: the log lines
    /// of its calls (plugin and policies) at or above it are sent to it as
    /// `notifications/message`. `None` (never asked): none are sent.
    log_level: Arc<std::sync::Mutex<Option<LoggingLevel>>>,
}

/// Most log lines of one call sent to the client, and the longest message.
const MAX_LOG_NOTICES: usize = 100;
const MAX_LOG_MESSAGE: usize = 2048;

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn level_of(name: &str) -> LoggingLevel {
    match name {
        "trace" | "debug" => LoggingLevel::Debug,
        "warn" => LoggingLevel::Warning,
        "error" => LoggingLevel::Error,
        _ => LoggingLevel::Info,
    }
}

/// The MCP description of every tool `rt` serves, sorted by name.
pub fn tools(rt: &Runtime) -> Vec<Tool> {
    rt.tool_names()
        .into_iter()
        .filter_map(|name| tool(rt, name))
        .collect()
}

/// The MCP description of `name`, if `rt` serves it.
pub fn tool(rt: &Runtime, name: &str) -> Option<Tool> {
    rt.plugin_for(name)?.tool(name).map(|t| {
        let schema = match &t.schema {
            Value::Object(m) => m.clone(),
            _ => JsonObject::new(),
        };
        let a = t.annotations;
        let mut tool = Tool::new(t.name.clone(), t.description.clone(), Arc::new(schema))
            .with_annotations(
                ToolAnnotations::new()
                    .read_only(a.read_only)
                    .destructive(a.destructive)
                    .idempotent(a.idempotent)
                    .open_world(a.open_world),
            );
        if let Some(title) = &t.title {
            tool = tool.with_title(title.clone());
        }
        if let Some(Value::Object(out)) = &t.output_schema {
            tool = tool.with_raw_output_schema(Arc::new(out.clone()));
        }
        tool
    })
}

fn text_result(is_error: bool, text: String) -> CallToolResponse {
    let content = vec![ContentBlock::text(text)];
    if is_error {
        CallToolResult::error(content).into()
    } else {
        CallToolResult::success(content).into()
    }
}

/// `_meta` of a result: the run id (`runs show` takes it) and how the run ended. The
/// structured content stays exactly what the tool returned: it must match the tool's
/// declared output schema.
fn meta(run_id: &str, status: &str) -> rmcp::model::MetaObject {
    let mut m = JsonObject::new();
    m.insert("warden/run_id".into(), run_id.into());
    m.insert("warden/status".into(), status.into());
    rmcp::model::MetaObject(m)
}

/// A finished report as an MCP tool result.
fn result_of(report: &CallReport) -> CallToolResponse {
    with_meta(
        outcome_result(report),
        &report.run_id,
        report.outcome.status(),
    )
}

fn with_meta(mut response: CallToolResponse, run_id: &str, status: &str) -> CallToolResponse {
    if let CallToolResponse::Complete(r) = &mut response {
        r.meta = Some(meta(run_id, status));
    }
    response
}

fn outcome_result(report: &CallReport) -> CallToolResponse {
    let run = &report.run_id;
    match &report.outcome {
        Outcome::Ok { output } => {
            let mut r = CallToolResult::success(vec![ContentBlock::text(output.to_string())]);
            if output.is_object() {
                r.structured_content = Some(output.clone());
            }
            r.into()
        }
        Outcome::Denied { reasons } => text_result(
            true,
            format!("denied by policy (run {run}): {}", reasons.join("; ")),
        ),
        Outcome::Failed {
            kind: warden_core::call::Failure::Limit(warden_core::call::LimitExceeded::Capacity(..)),
            error,
        } => text_result(true, format!("{error} (run {run})")),
        Outcome::Failed { error, .. } => {
            text_result(true, format!("the tool failed (run {run}): {error}"))
        }
        Outcome::Interrupted { reason } => {
            text_result(true, format!("interrupted (run {run}): {reason}"))
        }
        Outcome::Limited { reason, .. } => {
            text_result(true, format!("not run: over a limit (run {run}): {reason}"))
        }
        Outcome::Unmet { reasons, .. } => text_result(
            true,
            format!(
                "the tool returned, but not what its success criteria ask (run {run}): {}",
                reasons.join("; ")
            ),
        ),
        Outcome::Held { tier, reasons, .. } => {
            let approval = report.approval.as_ref().map_or("", |a| a.id.as_str());
            let status = json!({
                "status": "held",
                "tier": tier,
                "approval_id": approval,
                "run_id": run,
                "reasons": reasons,
            });
            text_result(
                true,
                format!(
                    "not run yet: held for approval {approval} (run {run}): {}. It runs if approved; its outcome is in run {run}. {status}",
                    reasons.join("; ")
                ),
            )
        }
    }
}

impl WardenMcp {
    /// A handler for one session (its own log level).
    pub fn new(server: Arc<Server>, stdio_principal: Option<String>) -> WardenMcp {
        WardenMcp {
            server,
            stdio_principal,
            log_level: Arc::default(),
        }
    }

    /// Send the log lines of `report` (its policies' and its plugin's, already scrubbed)
    /// at or above the session's level, bounded.
    async fn send_log(&self, report: &CallReport, context: &RequestContext<RoleServer>) {
        // A 2026-07-28 client asks per request (`_meta`); an older one per session.
        let session = *self.log_level.lock().unwrap_or_else(|p| p.into_inner());
        let Some(min) = context.meta.log_level().or(session) else {
            return;
        };
        let mut notices = Vec::new();
        let policy_lines = report
            .decisions
            .iter()
            .flat_map(|d| d.log.iter().map(|l| (format!("policy:{}", d.policy), l)));
        let plugin_lines = report
            .log
            .iter()
            .map(|l| (format!("plugin:{}", report.plugin), l));
        for (logger, line) in policy_lines.chain(plugin_lines) {
            let level = level_of(line.level);
            if rank(level) < rank(min) {
                continue;
            }
            if notices.len() == MAX_LOG_NOTICES {
                break;
            }
            let data = json!({
                "run_id": report.run_id,
                "source": line.source,
                "message": warden_core::util::bounded_to(&line.message, MAX_LOG_MESSAGE),
                "fields": line.fields,
            });
            notices.push(LoggingMessageNotificationParam::new(level, data).with_logger(logger));
        }
        for notice in notices {
            if context.peer.notify_logging_message(notice).await.is_err() {
                return;
            }
        }
    }

    fn principal(&self, context: &RequestContext<RoleServer>) -> Option<String> {
        if let Some(p) = &self.stdio_principal {
            return Some(p.clone());
        }
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .map(|p| p.name.clone())
    }

    /// Wait for a held call's decision (up to the configured wait), reporting progress.
    async fn wait_held(
        &self,
        rt: &Runtime,
        report: CallReport,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let Some(approval) = report.approval.clone() else {
            return result_of(&report);
        };
        let wait = Duration::from_millis(rt.config.approvals.wait_ms);
        let started = Instant::now();
        let token = context.meta.get_progress_token();
        let mut step = 0u32;
        loop {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return result_of(&report);
            }
            if let Some(token) = &token {
                step += 1;
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_message(format!(
                                "waiting for approval {} ({} s so far)",
                                approval.id,
                                started.elapsed().as_secs()
                            )),
                    )
                    .await;
            }
            let resumed = tokio::select! {
                r = rt.wait_for(&approval.id, left.min(PROGRESS_EVERY)) => r,
                _ = context.ct.cancelled() => return result_of(&report),
            };
            match resumed {
                Ok(Resume::Pending(_)) => {}
                Ok(Resume::Ran(done)) => {
                    self.send_log(&done, context).await;
                    return result_of(&done);
                }
                Ok(Resume::Ended(a)) => {
                    let why = a
                        .result
                        .clone()
                        .unwrap_or_else(|| format!("approval {}", a.state.as_str()));
                    return with_meta(
                        text_result(
                            true,
                            format!("not run: {why} (approval {}, run {})", a.id, a.run_id),
                        ),
                        &a.run_id,
                        a.state.as_str(),
                    );
                }
                Err(e) => return text_result(true, e.to_string()),
            }
        }
    }
}

impl ServerHandler for WardenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Tools run as sandboxed components behind approval policies. A result with \
             isError may be a policy denial or a call held for human approval: its text says \
             which, with the run id to look the outcome up later.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools(
            &self.server.runtime(),
        )))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = Some(request.level);
        Ok(())
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tool(&self.server.runtime(), name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let principal = self
            .principal(&context)
            .ok_or_else(|| ErrorData::invalid_request("no authenticated principal", None))?;
        // Calls in flight keep the version they started on across a reload.
        let rt = self.server.runtime();
        let _flight = self.server.in_flight();
        if self.server.is_stopping() {
            self.server.metrics.call(
                &request.name,
                rt.plugin_for(&request.name).is_some(),
                "shutting-down",
                None,
            );
            return Ok(text_result(
                true,
                "not run: warden is shutting down; call again once it is back".into(),
            ));
        }
        let input = Value::Object(request.arguments.clone().unwrap_or_default()).to_string();
        let result = rt
            .call(CallRequest {
                principal: &principal,
                tool: &request.name,
                input: &input,
                started_by: None,
            })
            .await;
        let report = match result {
            Ok(report) => report,
            // A tool that does not exist is a malformed request; bad input is the
            // model's to fix, so it gets a readable tool error.
            Err(e @ CallError::UnknownTool { .. }) => {
                self.server
                    .metrics
                    .call(&request.name, false, "unknown-tool", None);
                return Err(ErrorData::invalid_params(e.to_string(), None));
            }
            Err(e @ (CallError::InvalidJson(_) | CallError::InvalidInput { .. })) => {
                self.server.metrics.call(
                    &request.name,
                    rt.plugin_for(&request.name).is_some(),
                    "invalid-input",
                    None,
                );
                return Ok(text_result(true, e.to_string()));
            }
            Err(e @ CallError::NotRecorded(_)) => {
                self.server.metrics.call(
                    &request.name,
                    rt.plugin_for(&request.name).is_some(),
                    "not-recorded",
                    None,
                );
                return Ok(text_result(true, e.to_string()));
            }
        };
        self.server.metrics.call(
            &report.tool,
            true,
            report.outcome.status(),
            Some(report.timings.policy_us),
        );
        self.send_log(&report, &context).await;
        if matches!(report.outcome, Outcome::Held { .. }) {
            return Ok(self.wait_held(&rt, report, &context).await);
        }
        Ok(result_of(&report))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.server.add_peer(context.peer);
    }

    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        self.server.add_sink(context.sink().clone());
        context.cancelled().await;
        Ok(())
    }
}
