//! `warden tools`: every tool with its description, annotations and schemas (what an
//! MCP client is offered).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Value, json};
use warden_core::sandbox::plugin::Tool;

use super::look;
use crate::exit;
use crate::output::print;

pub async fn run(config: &Path, json: bool) -> Result<ExitCode> {
    let rt = look(config).await?;
    let mut list = Vec::new();
    for name in rt.tool_names() {
        let Some(plugin) = rt.plugin_for(name) else {
            continue;
        };
        let Some(tool) = plugin.tool(name) else {
            continue;
        };
        let mut entry = tool_json(tool);
        entry["plugin"] = json!(plugin.id);
        list.push(entry);
    }
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
    } else {
        let mut out = String::new();
        for t in &list {
            out += &tool_text(t);
        }
        print(&out)?;
    }
    Ok(ExitCode::from(exit::OK))
}

/// A tool as an MCP client is offered it (`tools/list`).
pub(crate) fn tool_json(tool: &Tool) -> Value {
    let a = tool.annotations;
    json!({
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "annotations": {
            "readOnlyHint": a.read_only,
            "destructiveHint": a.destructive,
            "idempotentHint": a.idempotent,
            "openWorldHint": a.open_world,
        },
        "inputSchema": tool.schema,
        "outputSchema": tool.output_schema,
    })
}

/// [`tool_json`]'s entry as text: name (plugin), hints, description, schemas.
pub(crate) fn tool_text(t: &Value) -> String {
    let hints: Vec<&str> = [
        ("readOnlyHint", "read-only"),
        ("destructiveHint", "destructive"),
        ("idempotentHint", "idempotent"),
        ("openWorldHint", "open-world"),
    ]
    .into_iter()
    .filter(|(k, _)| t["annotations"][k].as_bool() == Some(true))
    .map(|(_, v)| v)
    .collect();
    let plugin = t["plugin"]
        .as_str()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let mut out = format!(
        "{}{plugin}  [{}]\n  {}\n  input: {}\n",
        t["name"].as_str().unwrap_or_default(),
        hints.join(", "),
        t["description"].as_str().unwrap_or_default(),
        t["inputSchema"]
    );
    if !t["outputSchema"].is_null() {
        out += &format!("  output: {}\n", t["outputSchema"]);
    }
    out
}
