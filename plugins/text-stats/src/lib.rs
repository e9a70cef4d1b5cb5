//! `text_stats`: pure computation over a text (no capabilities needed).
use std::collections::HashMap;

use serde_json::{Value, json};
use warden_guest::tool::{Annotations, Guest, ToolError, ToolSpec};

struct TextStats;

impl Guest for TextStats {
    fn describe() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "text_stats".into(),
            description:
                "Count characters, words and lines of a text and list its most frequent words."
                    .into(),
            title: Some("Text statistics".into()),
            output_schema: Some(
                json!({
                    "type": "object",
                    "properties": {
                        "chars": { "type": "integer" },
                        "bytes": { "type": "integer" },
                        "words": { "type": "integer" },
                        "lines": { "type": "integer" },
                        "top_words": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": { "word": { "type": "string" }, "count": { "type": "integer" } },
                                "required": ["word", "count"]
                            }
                        }
                    },
                    "required": ["chars", "bytes", "words", "lines", "top_words"]
                })
                .to_string(),
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string", "maxLength": 1048576 },
                    "top": { "type": "integer", "minimum": 0, "maximum": 100, "default": 5 }
                },
                "required": ["text"],
                "additionalProperties": false
            })
            .to_string(),
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
        }]
    }

    fn invoke(tool: String, input: String) -> Result<String, ToolError> {
        if tool != "text_stats" {
            return Err(ToolError::new(
                "unknown-tool",
                format!("no tool named {tool}"),
            ));
        }
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::new("invalid-input", e.to_string()))?;
        let text = input["text"].as_str().unwrap_or_default();
        let top = input["top"].as_u64().unwrap_or(5) as usize;

        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut words = 0u64;
        for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'') {
            if word.is_empty() {
                continue;
            }
            words += 1;
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(top);

        Ok(json!({
            "chars": text.chars().count(),
            "bytes": text.len(),
            "words": words,
            "lines": text.lines().count(),
            "top_words": ranked.into_iter().map(|(w, n)| json!({"word": w, "count": n})).collect::<Vec<_>>(),
        })
        .to_string())
    }
}

warden_guest::export_tool!(TextStats);
