//! `notes_*`: list, read and write text notes in the directory the operator grants
//! at `/notes`. Everything it can touch is that one preopened directory.
use std::fs;
use std::io::ErrorKind;

use serde_json::{Value, json};
use warden_guest::tool::{Annotations, Guest, ToolError, ToolSpec};

const ROOT: &str = "/notes";
const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";

struct Notes;

impl Guest for Notes {
    fn describe() -> Vec<ToolSpec> {
        let name = json!({ "type": "string", "pattern": NAME_PATTERN });
        vec![
            spec(
                "notes_list",
                "List the notes (file names and sizes).",
                json!({ "type": "object", "properties": {}, "additionalProperties": false }),
                true,
                false,
            ),
            spec(
                "notes_read",
                "Read one note by name.",
                json!({ "type": "object", "properties": { "name": name }, "required": ["name"], "additionalProperties": false }),
                true,
                false,
            ),
            spec(
                "notes_write",
                "Create or replace a note.",
                json!({
                    "type": "object",
                    "properties": { "name": name, "text": { "type": "string", "maxLength": 65536 } },
                    "required": ["name", "text"],
                    "additionalProperties": false
                }),
                false,
                true,
            ),
        ]
    }

    fn invoke(tool: String, input: String) -> Result<String, ToolError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::new("invalid-input", e.to_string()))?;
        match tool.as_str() {
            "notes_list" => {
                let entries = fs::read_dir(ROOT).map_err(io_error)?;
                let mut notes = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(io_error)?;
                    let meta = entry.metadata().map_err(io_error)?;
                    if meta.is_file() {
                        notes.push(json!({ "name": entry.file_name().to_string_lossy(), "bytes": meta.len() }));
                    }
                }
                notes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Ok(json!({ "notes": notes }).to_string())
            }
            "notes_read" => {
                let name = note_name(&input)?;
                let text = fs::read_to_string(format!("{ROOT}/{name}")).map_err(io_error)?;
                Ok(json!({ "name": name, "text": text }).to_string())
            }
            "notes_write" => {
                let name = note_name(&input)?;
                let text = input["text"].as_str().unwrap_or_default();
                fs::write(format!("{ROOT}/{name}"), text).map_err(io_error)?;
                warden_guest::log(warden_guest::Level::Info, &format!("wrote note {name}"));
                Ok(json!({ "name": name, "bytes": text.len() }).to_string())
            }
            other => Err(ToolError::new(
                "unknown-tool",
                format!("no tool named {other}"),
            )),
        }
    }
}

fn note_name(input: &Value) -> Result<&str, ToolError> {
    // The schema already restricts names; this keeps the plugin safe on its own.
    let name = input["name"].as_str().unwrap_or_default();
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(ToolError::new(
            "invalid-input",
            format!("bad note name {name:?}"),
        ));
    }
    Ok(name)
}

fn spec(
    name: &str,
    description: &str,
    schema: Value,
    read_only: bool,
    destructive: bool,
) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        title: None,
        input_schema: schema.to_string(),
        output_schema: None,
        annotations: Annotations {
            read_only,
            destructive,
            idempotent: true,
            open_world: false,
        },
    }
}

fn io_error(e: std::io::Error) -> ToolError {
    let code = match e.kind() {
        ErrorKind::NotFound => "not-found",
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => "permission-denied",
        _ => "io",
    };
    ToolError::new(code, e.to_string())
}

warden_guest::export_tool!(Notes);
