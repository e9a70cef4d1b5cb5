//! `warden tools`: every tool with its description, annotations and schemas (what an
//! MCP client is offered).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

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
        let a = tool.annotations;
        list.push(json!({
            "name": tool.name,
            "title": tool.title,
            "plugin": plugin.id,
            "description": tool.description,
            "annotations": {
                "readOnlyHint": a.read_only,
                "destructiveHint": a.destructive,
                "idempotentHint": a.idempotent,
                "openWorldHint": a.open_world,
            },
            "inputSchema": tool.schema,
            "outputSchema": tool.output_schema,
        }));
    }
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
    } else {
        let mut out = String::new();
        for t in &list {
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
            out += &format!(
                "{} ({})  [{}]\n  {}\n  input: {}\n",
                t["name"].as_str().unwrap_or_default(),
                t["plugin"].as_str().unwrap_or_default(),
                hints.join(", "),
                t["description"].as_str().unwrap_or_default(),
                t["inputSchema"]
            );
        }
        print(&out)?;
    }
    Ok(ExitCode::from(exit::OK))
}
