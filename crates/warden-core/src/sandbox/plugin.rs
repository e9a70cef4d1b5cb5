//! A loaded tool plugin: its compiled component (or the upstream MCP server it stands
//! for), the tools it declares (with their compiled input schemas) and its sandbox.
//! Owns running one tool call in a fresh instance. It must never reuse a store or
//! instance between calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonschema::Validator;
use serde_json::Value;
use wasmtime::Store;

use crate::bindings::tool::ToolPre;
use crate::bindings::{Annotations, ToolSpec};
use crate::call::{Failure, LimitExceeded, LogLine, ProgressUpdate};
use crate::config::PluginConfig;
use crate::grants::http::{EgressBudget, EgressMeter};
use crate::grants::secrets::{PluginSecrets, Redactor};
use crate::sandbox::component::World;
use crate::sandbox::context::{ToolSandbox, ToolState};
use crate::sandbox::limits;
use crate::sandbox::shared::Shared;

/// One tool a plugin exports, validated at load.
pub struct Tool {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub schema: Value,
    pub output_schema: Option<Value>,
    pub annotations: Annotations,
    pub validator: Validator,
    /// The declared cost of one call (`cost`, `costs` in the plugin's config).
    pub cost: f64,
    /// Output is checked against the declared output schema, if any.
    output_validator: Option<Validator>,
}

pub struct Plugin {
    pub id: String,
    pub digest: String,
    pub path: PathBuf,
    pub sandbox: ToolSandbox,
    pub tools: Vec<Tool>,
    backend: Backend,
}

/// What runs a plugin's tools.
enum Backend {
    /// A component, instantiated afresh for every call.
    Component {
        pre: ToolPre<ToolState>,
        fuel: bool,
    },
    Upstream(UpstreamTools),
}

/// An upstream MCP server's tools, as a plugin.
pub struct UpstreamTools {
    pub upstream: Arc<crate::upstream::Upstream>,
    /// warden's name for a tool -> the upstream's.
    names: HashMap<String, String>,
    /// Tools whose definition differs from the accepted one: warden's name -> (accepted
    /// digest, current digest).
    pub changed: HashMap<String, (String, String)>,
}

/// Longest tool error message kept (before redaction, plus the longest secret form so
/// redaction still sees a value at the cut; `call` cuts it again after scrubbing).
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Everything one tool call produced.
pub struct Invocation {
    pub result: Result<Value, Failure>,
    /// Outgoing HTTP requests sent, and bytes moved (bodies, both directions).
    pub egress_requests: u64,
    pub egress_bytes: u64,
    pub log: Vec<LogLine>,
    pub progress: Vec<ProgressUpdate>,
    /// Outgoing HTTP requests refused by the grant.
    pub denied_requests: Vec<String>,
    /// Secrets revealed to the plugin (names).
    pub reveals: Vec<String>,
    /// Fuel consumed, when the engine counts fuel.
    pub fuel_used: Option<u64>,
    pub peak_memory: usize,
    pub instantiate: Duration,
    pub execute: Duration,
}

impl Plugin {
    /// Compile `config.component`, check its world, and ask it to describe its tools
    /// (in a sandbox with no grants).
    pub async fn load(
        shared: &Shared,
        config: &PluginConfig,
        secrets: Arc<PluginSecrets>,
        redactor: Arc<Redactor>,
    ) -> anyhow::Result<Plugin> {
        let loaded = shared.component(&config.component, config.sha256.as_deref(), World::Tool)?;
        let instance_pre = shared.tool_linker.instantiate_pre(&loaded.component)?;
        let pre = ToolPre::new(instance_pre)?;
        let mut plugin = Plugin {
            id: config.id.clone(),
            digest: loaded.digest,
            path: config.component.clone(),
            sandbox: ToolSandbox::new(config.grants.clone(), secrets, config.limits, redactor),
            tools: Vec::new(),
            backend: Backend::Component {
                pre,
                fuel: shared.fuel,
            },
        };
        let specs = plugin.describe().await?;
        if specs.is_empty() {
            anyhow::bail!("describe returned no tools");
        }
        for spec in specs {
            let mut tool = check_spec(spec)?;
            if plugin.tools.iter().any(|t| t.name == tool.name) {
                anyhow::bail!("describe lists tool `{}` twice", tool.name);
            }
            tool.cost = config.cost_of(&tool.name);
            plugin.tools.push(tool);
        }
        if let Some(unknown) = config
            .costs
            .keys()
            .find(|name| !plugin.tools.iter().any(|t| &t.name == *name))
        {
            anyhow::bail!("costs names tool `{unknown}`, which the plugin does not export");
        }
        Ok(plugin)
    }

    async fn describe(&self) -> anyhow::Result<Vec<ToolSpec>> {
        let Backend::Component { pre, fuel } = &self.backend else {
            anyhow::bail!("an upstream has no describe export");
        };
        let sandbox = ToolSandbox::deny_all(self.sandbox.limits);
        let _running = crate::sandbox::engine::Running::start();
        let mut store = Store::new(pre.engine(), sandbox.state(Arc::default())?);
        limits::apply(&mut store, &sandbox.limits, *fuel)?;
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        match tokio::time::timeout(limits::call_budget(&sandbox.limits), run).await {
            Ok(Ok(specs)) => Ok(specs),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("describe failed")),
            Err(_) => anyhow::bail!("describe timed out after {} ms", sandbox.limits.timeout_ms),
        }
    }

    /// A plugin standing for `upstream`, offering `definitions` (each with the digest
    /// accepted for it: a different one marks the tool as changed).
    pub fn from_upstream(
        upstream: Arc<crate::upstream::Upstream>,
        definitions: Vec<(crate::upstream::Definition, String)>,
        redactor: Arc<Redactor>,
    ) -> anyhow::Result<Plugin> {
        let config = &upstream.config;
        let limits = crate::config::Limits {
            memory_mb: 0,
            timeout_ms: config.timeout_ms,
            max_output_kb: config.max_output_kb,
            max_log_kb: 64,
            fuel: None,
        };
        let mut tools = Vec::new();
        let mut names = HashMap::new();
        let mut changed = HashMap::new();
        let mut digests = Vec::new();
        for (definition, accepted) in definitions {
            // A changed definition is withheld from agents, not only its calls: its new
            // description and schema are what a poisoned tool would use to reach the
            // model. It is offered as a stub that says so (its calls are refused or held
            // by the upstream's decision) until an operator accepts it.
            let withheld;
            let json = if accepted == definition.digest {
                &definition.json
            } else {
                withheld = serde_json::json!({
                    "description": format!(
                        "Withheld by warden: this tool's definition changed since an operator accepted it (warden upstreams accept {} {}).",
                        config.id, definition.name
                    ),
                    "inputSchema": { "type": "object" },
                    "annotations": definition.json["annotations"],
                });
                &withheld
            };
            let name = format!("{}{}", config.prefix, definition.name);
            let valid = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                anyhow::bail!(
                    "upstream tool name {name:?} is unusable: 1-64 of A-Z, a-z, 0-9, '_', '-' and '.' (rename it with `prefix`, or leave it out with `deny_tools`)"
                );
            }
            let (schema, validator) =
                object_schema(&name, "input", &json["inputSchema"].to_string())?;
            let (output_schema, output_validator) = match &json["outputSchema"] {
                Value::Null => (None, None),
                schema => {
                    let (schema, validator) = object_schema(&name, "output", &schema.to_string())?;
                    (Some(schema), Some(validator))
                }
            };
            let hint = |key: &str| json["annotations"][key].as_bool().unwrap_or(false);
            let description = json["description"]
                .as_str()
                .filter(|d| !d.trim().is_empty())
                .unwrap_or(&definition.name)
                .to_string();
            tools.push(Tool {
                name: name.clone(),
                title: json["title"].as_str().map(str::to_string),
                description,
                schema,
                output_schema,
                // What the server declares, nothing assumed: MCP reads a missing
                // destructiveHint as true, which would hold every unannotated tool.
                annotations: Annotations {
                    read_only: hint("readOnlyHint"),
                    destructive: hint("destructiveHint") && !hint("readOnlyHint"),
                    idempotent: hint("idempotentHint"),
                    open_world: hint("openWorldHint"),
                },
                validator,
                cost: 0.0,
                output_validator,
            });
            digests.push(definition.digest.clone());
            if accepted != definition.digest {
                changed.insert(name.clone(), (accepted, definition.digest.clone()));
            }
            names.insert(name, definition.name);
        }
        digests.sort();
        Ok(Plugin {
            id: config.id.clone(),
            digest: format!(
                "sha256:{}",
                crate::util::sha256_hex(digests.join(",").as_bytes())
            ),
            path: match &config.url {
                Some(url) => PathBuf::from(url),
                None => PathBuf::from(&config.command[0]),
            },
            sandbox: ToolSandbox::new(Default::default(), Arc::default(), limits, redactor),
            tools,
            backend: Backend::Upstream(UpstreamTools {
                upstream,
                names,
                changed,
            }),
        })
    }

    /// The upstream this plugin stands for, if it is one.
    pub fn upstream(&self) -> Option<&UpstreamTools> {
        match &self.backend {
            Backend::Upstream(u) => Some(u),
            Backend::Component { .. } => None,
        }
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Run `tool` with `input` (already validated) in a fresh instance; its outgoing
    /// HTTP draws on `budget`, if any.
    pub async fn invoke(
        &self,
        tool: &str,
        input: &str,
        budget: Option<Arc<dyn EgressBudget>>,
    ) -> Invocation {
        let limits = self.sandbox.limits;
        let mut invocation = Invocation {
            result: Err(Failure::Limit(LimitExceeded::Timeout(limits.timeout_ms))),
            egress_requests: 0,
            egress_bytes: 0,
            log: Vec::new(),
            progress: Vec::new(),
            denied_requests: Vec::new(),
            reveals: Vec::new(),
            fuel_used: None,
            peak_memory: 0,
            instantiate: Duration::ZERO,
            execute: Duration::ZERO,
        };
        let (pre, fuel) = match &self.backend {
            Backend::Component { pre, fuel } => (pre, *fuel),
            Backend::Upstream(upstream) => {
                let started = Instant::now();
                invocation.result = match upstream.names.get(tool) {
                    None => Err(Failure::Host(format!("no upstream tool for `{tool}`"))),
                    Some(name) => match serde_json::from_str::<Value>(input) {
                        Err(e) => Err(Failure::Host(format!("input is not JSON: {e}"))),
                        Ok(input) => upstream.upstream.call(name, &input).await,
                    },
                }
                .and_then(|value| self.check_output_schema(tool, value));
                invocation.execute = started.elapsed();
                return invocation;
            }
        };
        let meter = Arc::new(EgressMeter::new(budget));
        let state = match self.sandbox.state(meter.clone()) {
            Ok(state) => state,
            Err(e) => {
                invocation.result = Err(Failure::Host(format!("{e:#}")));
                return invocation;
            }
        };
        let denied = state.egress.denied.clone();
        let _running = crate::sandbox::engine::Running::start();
        let mut store = Store::new(pre.engine(), state);
        if let Err(e) = limits::apply(&mut store, &limits, fuel) {
            invocation.result = Err(Failure::Host(format!("{e:#}")));
            return invocation;
        }

        let started = Instant::now();
        let mut instantiated = started;
        let (tool, input) = (tool.to_string(), input.to_string());
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instantiated = Instant::now();
            instance.call_invoke(&mut store, &tool, &input).await
        };
        let outcome = tokio::time::timeout(limits::call_budget(&limits), run).await;
        let finished = Instant::now();
        invocation.instantiate = instantiated - started;
        invocation.execute = finished.saturating_duration_since(instantiated);

        invocation.result = match outcome {
            Err(_elapsed) => Err(Failure::Limit(LimitExceeded::Timeout(limits.timeout_ms))),
            Ok(Err(error)) => Err(
                match limits::classify(&error, &limits, store.data().limiter.hit) {
                    Some(limit) => Failure::Limit(limit),
                    None => trap(&error),
                },
            ),
            // A tool's own error text is bounded like its output (it reaches the caller,
            // the log and the run history).
            Ok(Ok(Err(e))) => Err(Failure::Tool {
                code: crate::util::bounded_to(&e.code, 128),
                message: crate::util::bounded_to(
                    &e.message,
                    MAX_ERROR_MESSAGE + self.sandbox.redactor.longest(),
                ),
            }),
            Ok(Ok(Ok(output))) => check_output(&output, limits.max_output_kb)
                .and_then(|value| self.check_output_schema(&tool, value)),
        };
        if fuel {
            let budget = limits.fuel.unwrap_or(u64::MAX);
            invocation.fuel_used = store
                .get_fuel()
                .ok()
                .map(|left| budget.saturating_sub(left));
        }
        let state = store.data_mut();
        invocation.peak_memory = state.limiter.peak;
        invocation.progress = std::mem::take(&mut state.progress.updates);
        invocation.log = state.finish_log();
        invocation.denied_requests = denied.lock().map(|d| d.clone()).unwrap_or_default();
        invocation.reveals = std::mem::take(&mut state.egress.secrets.reveals);
        (invocation.egress_requests, invocation.egress_bytes) = meter.used();
        invocation.denied_requests.extend(meter.stopped());
        invocation
    }
}

impl Plugin {
    /// Hold the tool to the output schema it declared, if any.
    fn check_output_schema(&self, tool: &str, value: Value) -> Result<Value, Failure> {
        let Some(validator) = self.tool(tool).and_then(|t| t.output_validator.as_ref()) else {
            return Ok(value);
        };
        let error = validator.iter_errors(&value).next().map(|e| {
            format!(
                "output does not match the tool's output schema at `{}`: {e}",
                e.instance_path()
            )
        });
        match error {
            Some(why) => Err(Failure::BadOutput(why)),
            None => Ok(value),
        }
    }
}

fn trap(error: &wasmtime::Error) -> Failure {
    let backtrace = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string())
        .unwrap_or_default();
    let message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    };
    Failure::Trap { message, backtrace }
}

fn check_output(output: &str, max_kb: u64) -> Result<Value, Failure> {
    let max = (max_kb as usize) << 10;
    if output.len() > max {
        return Err(Failure::BadOutput(format!(
            "output is {} bytes, over the {max_kb} KiB limit (max_output_kb)",
            output.len()
        )));
    }
    serde_json::from_str(output)
        .map_err(|e| Failure::BadOutput(format!("output is not valid JSON: {e}")))
}

fn check_spec(spec: ToolSpec) -> anyhow::Result<Tool> {
    let name = spec.name;
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        anyhow::bail!("tool name {name:?} is invalid: use 1-64 of A-Z, a-z, 0-9, '_' and '-'");
    }
    if spec.description.trim().is_empty() {
        anyhow::bail!("tool `{name}` has no description");
    }
    if spec
        .title
        .as_ref()
        .is_some_and(|t| t.trim().is_empty() || t.len() > 128)
    {
        anyhow::bail!("tool `{name}`: title must be 1-128 bytes");
    }
    let (schema, validator) = object_schema(&name, "input", &spec.input_schema)?;
    let (output_schema, output_validator) = match &spec.output_schema {
        Some(text) => {
            let (schema, validator) = object_schema(&name, "output", text)?;
            (Some(schema), Some(validator))
        }
        None => (None, None),
    };
    Ok(Tool {
        name,
        title: spec.title,
        description: spec.description,
        schema,
        output_schema,
        annotations: spec.annotations,
        validator,
        cost: 0.0,
        output_validator,
    })
}

/// Parse and compile a schema that must describe a JSON object (as MCP requires).
fn object_schema(tool: &str, which: &str, text: &str) -> anyhow::Result<(Value, Validator)> {
    let schema: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("tool `{tool}`: {which} schema is not JSON: {e}"))?;
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        anyhow::bail!("tool `{tool}`: {which} schema must have \"type\": \"object\"");
    }
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        anyhow::anyhow!("tool `{tool}`: {which} schema is not a valid JSON Schema: {e}")
    })?;
    Ok((schema, validator))
}
