//! Schedules and triggers as a loaded runtime knows them: the tools they name exist, a
//! schedule's input fits its tool's schema (checked at load, located in warden.toml),
//! and each one's success criteria, compiled, judge the reports of the runs they start.
//!
//! A run that returns but fails its criteria ends `unmet`: the tool ran and its output
//! is kept, but "did the agent do what it should" is answered no. It must never turn a
//! denial, a hold or a failure into anything else: criteria judge only outputs.

use std::collections::HashMap;

use serde_json::Value;

use crate::call::{CallReport, Outcome};
use crate::config::{Config, ConfigError, Criteria};
use crate::sandbox::plugin::Plugin;

/// One schedule's or trigger's criteria, ready to judge.
pub struct Compiled {
    schema: Option<jsonschema::Validator>,
    max_duration_ms: Option<u64>,
}

/// Criteria by what they belong to (`schedule:NAME`, `trigger:NAME`).
#[derive(Default)]
pub struct Judges(HashMap<String, Compiled>);

impl Judges {
    /// Check every schedule and trigger of `config` against the loaded tools and compile
    /// their criteria.
    pub fn load<'p>(
        config: &Config,
        plugin_for: impl Fn(&str) -> Option<&'p Plugin>,
    ) -> Result<Judges, ConfigError> {
        let mut judges = HashMap::new();
        for (i, s) in config.schedules.iter().enumerate() {
            let key = format!("schedule[{i}]");
            let plugin = plugin_for(&s.tool).ok_or_else(|| {
                config.error_at(
                    s.span,
                    &format!("{key}.tool"),
                    format!(
                        "schedule {:?} calls `{}`, which no plugin exports",
                        s.name, s.tool
                    ),
                )
            })?;
            if let Some(tool) = plugin.tool(&s.tool)
                && let Some(e) = tool.validator.iter_errors(&s.input).next()
            {
                return Err(config.error_at(
                    s.input_span,
                    &format!("{key}.input"),
                    format!(
                        "does not match the input schema of `{}` at `{}`: {e}",
                        s.tool,
                        e.instance_path()
                    ),
                ));
            }
            if let Some(c) = compile(config, &s.criteria, s.span, &key)? {
                judges.insert(s.origin(), c);
            }
        }
        for (i, t) in config.triggers.iter().enumerate() {
            let key = format!("trigger[{i}]");
            if plugin_for(&t.tool).is_none() {
                return Err(config.error_at(
                    t.span,
                    &format!("{key}.tool"),
                    format!(
                        "trigger {:?} calls `{}`, which no plugin exports",
                        t.name, t.tool
                    ),
                ));
            }
            if let Some(c) = compile(config, &t.criteria, t.span, &key)? {
                judges.insert(t.origin(), c);
            }
        }
        Ok(Judges(judges))
    }

    /// Turn an `ok` outcome that fails the criteria of what started it into `unmet`.
    /// `elapsed_ms` is the call's time from request to result.
    pub fn judge(&self, report: &mut CallReport, elapsed_ms: u64) {
        let Some(origin) = report.started_by.as_deref() else {
            return;
        };
        let Some(c) = self.0.get(origin) else {
            return;
        };
        let Outcome::Ok { output } = &report.outcome else {
            return;
        };
        let mut reasons = Vec::new();
        if let Some(schema) = &c.schema {
            for e in schema.iter_errors(output).take(5) {
                reasons.push(crate::util::bounded_to(
                    &format!("output at `{}`: {e}", e.instance_path()),
                    512,
                ));
            }
        }
        if let Some(max) = c.max_duration_ms
            && elapsed_ms > max
        {
            reasons.push(format!("took {elapsed_ms} ms, over the {max} ms allowed"));
        }
        if !reasons.is_empty() {
            let output = std::mem::replace(
                &mut report.outcome,
                Outcome::Ok {
                    output: Value::Null,
                },
            );
            if let Outcome::Ok { output } = output {
                report.outcome = Outcome::Unmet { output, reasons };
            }
        }
    }
}

fn compile(
    config: &Config,
    criteria: &Criteria,
    span: usize,
    key: &str,
) -> Result<Option<Compiled>, ConfigError> {
    if criteria.is_empty() {
        return Ok(None);
    }
    let schema = match &criteria.output_schema {
        None => None,
        Some(s) => Some(jsonschema::validator_for(s).map_err(|e| {
            config.error_at(span, &format!("{key}.success.output_schema"), e.to_string())
        })?),
    };
    Ok(Some(Compiled {
        schema,
        max_duration_ms: criteria.max_duration_ms,
    }))
}

impl crate::runtime::Runtime {
    /// Tell the notification webhook that `report`'s criteria were unmet: on its own
    /// task, retried with backoff, never holding up the caller.
    pub fn notify_unmet(&self, report: &CallReport) {
        self.notify(self.notifier.unmet_payload(report, &self.redactor));
    }
}
