//! `http_get`: fetch a URL from the hosts the operator granted and return its status,
//! content type and (bounded) body. Every request, including each redirect it follows,
//! is checked by the host against the grant.
use serde_json::{Value, json};
use warden_guest::http;
use warden_guest::tool::{Annotations, Guest, ToolError, ToolSpec};

const MAX_BODY: usize = 128 * 1024;
const MAX_REDIRECTS: u32 = 5;

struct HttpFetch;

impl Guest for HttpFetch {
    fn describe() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "http_get".into(),
            description: "GET a URL on a granted host; returns status, content type and body text (first 128 KiB).".into(),
            title: Some("Fetch a URL".into()),
            output_schema: None,
            input_schema: json!({
                "type": "object",
                "properties": {
                    "url": { "type": "string", "pattern": "^https?://", "maxLength": 2048 },
                    "follow_redirects": { "type": "boolean", "default": true }
                },
                "required": ["url"],
                "additionalProperties": false
            })
            .to_string(),
            annotations: Annotations { read_only: true, destructive: false, idempotent: true, open_world: true },
        }]
    }

    fn invoke(tool: String, input: String) -> Result<String, ToolError> {
        if tool != "http_get" {
            return Err(ToolError::new(
                "unknown-tool",
                format!("no tool named {tool}"),
            ));
        }
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::new("invalid-input", e.to_string()))?;
        let mut url = input["url"].as_str().unwrap_or_default().to_string();
        let follow = input["follow_redirects"].as_bool().unwrap_or(true);

        let mut hops = 0;
        loop {
            let response = http::get(&url, &[("accept", "*/*")], MAX_BODY)
                .map_err(|e| ToolError::new("upstream", format!("GET {url}: {e}")))?;
            let location = response.header("location").map(str::to_string);
            if follow && (300..400).contains(&response.status) && hops < MAX_REDIRECTS {
                if let Some(next) = location {
                    url = resolve(&url, &next);
                    hops += 1;
                    continue;
                }
            }
            return Ok(json!({
                "url": url,
                "status": response.status,
                "content_type": response.header("content-type"),
                "body": String::from_utf8_lossy(&response.body),
                "truncated": response.truncated,
            })
            .to_string());
        }
    }
}

/// Resolve a Location header against the URL it came from (absolute or path-absolute).
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let origin_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let origin = match base[origin_end..].find('/') {
        Some(i) => &base[..origin_end + i],
        None => base,
    };
    format!("{origin}/{}", location.trim_start_matches('/'))
}

warden_guest::export_tool!(HttpFetch);
