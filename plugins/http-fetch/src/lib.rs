//! `http_get`: fetch a URL from the hosts the operator granted and return its status,
//! content type and (bounded) body. Every request, including each redirect it follows,
//! is checked by the host against the grant.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warden_guest::http;
use warden_guest::tool::ToolError;

const MAX_BODY: usize = 128 * 1024;
const MAX_REDIRECTS: u32 = 5;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    #[schemars(regex(pattern = "^https?://"), length(max = 2048))]
    url: String,
    /// Follow up to 5 redirects (each checked against the grant again).
    #[serde(default = "yes")]
    follow_redirects: bool,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, JsonSchema)]
struct Fetched {
    /// The URL finally fetched (after redirects).
    url: String,
    status: u16,
    content_type: Option<String>,
    body: String,
    /// The body was longer than 128 KiB and was cut there.
    truncated: bool,
}

/// GET a URL on a granted host; returns status, content type and body text (first 128 KiB).
#[warden_guest::tool(title = "Fetch a URL", read_only, idempotent, open_world)]
fn http_get(input: Input) -> Result<Fetched, ToolError> {
    let mut url = input.url;
    let mut hops = 0;
    loop {
        let response = http::get(&url, &[("accept", "*/*")], MAX_BODY)
            .map_err(|e| ToolError::upstream(format!("GET {url}: {e}")))?;
        let location = response.header("location").map(str::to_string);
        if input.follow_redirects
            && (300..400).contains(&response.status)
            && hops < MAX_REDIRECTS
            && let Some(next) = location
        {
            url = resolve(&url, &next);
            hops += 1;
            continue;
        }
        return Ok(Fetched {
            content_type: response.header("content-type").map(str::to_string),
            body: String::from_utf8_lossy(&response.body).into_owned(),
            truncated: response.truncated,
            status: response.status,
            url,
        });
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

warden_guest::export_tools!(http_get);
