//! Test fixture: HTTP requests made with `wstd` (the async `wasi:http` client most Rust
//! guests use), so the suite covers its way of sending a request: the request handed
//! over first, its body (empty for a GET) written and finished after.
use serde_json::{Value, json};
use warden_guest::tool::{Annotations, Guest, ToolError, ToolSpec};
use wstd::http::{Body, Client, Request};

struct WstdFetch;

impl Guest for WstdFetch {
    fn describe() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "wstd_get".into(),
            description: "GET `url` `times` times with wstd; how many answered, and the errors."
                .into(),
            title: None,
            input_schema: json!({
                "type": "object",
                "properties": { "url": { "type": "string" }, "times": { "type": "integer" } },
                "required": ["url"],
            })
            .to_string(),
            output_schema: None,
            annotations: Annotations {
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: true,
            },
        }]
    }

    fn invoke(_tool: String, input: String) -> Result<String, ToolError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::new("invalid-input", e.to_string()))?;
        let url = input["url"].as_str().unwrap_or_default().to_string();
        let times = input["times"].as_u64().unwrap_or(1);
        wstd::runtime::block_on(async move {
            let client = Client::new();
            let (mut ok, mut errors) = (0u64, Vec::new());
            for _ in 0..times {
                let request = Request::get(url.as_str())
                    .body(Body::empty())
                    .map_err(|e| ToolError::new("request", e.to_string()))?;
                match client.send(request).await {
                    Ok(mut response) => match response.body_mut().contents().await {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(format!("body: {e:?}")),
                    },
                    Err(e) => errors.push(format!("send: {e:?}")),
                }
            }
            Ok(json!({ "ok": ok, "errors": errors }).to_string())
        })
    }
}

warden_guest::export_tool!(WstdFetch);
