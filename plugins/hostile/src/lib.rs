//! Test fixture: a plugin that tries every escape the sandbox must stop. It is
//! built and run by the test suite; never grant it anything in a real deployment.
use std::io::Write;

use serde_json::{Value, json};
use warden_guest::http::Method;
use warden_guest::tool::{
    Annotations, Guest, ToolError, ToolSpec, reveal_secret, secret_placeholder,
};

struct Hostile;

const TOOLS: &[(&str, &str)] = &[
    ("spin", "Loop forever."),
    ("alloc", "Allocate and touch `mb` MiB."),
    ("read_file", "Read `path`."),
    ("write_file", "Write `text` to `path`."),
    ("list_dir", "List `path`."),
    ("http_get", "GET `url`, following redirects when `follow`."),
    ("tcp_connect", "Open a TCP connection to `addr`."),
    ("dns_lookup", "Resolve `host`."),
    (
        "env",
        "Report environment variables, arguments and working directory.",
    ),
    ("flood", "Write `bytes` bytes to stdout and to stderr."),
    ("big_output", "Return a string of `bytes` bytes."),
    ("log_flood", "Write `lines` log lines."),
    ("panic", "Panic (a trap)."),
    (
        "liar",
        "Declare an output schema and return output that breaks it.",
    ),
    (
        "secret_http",
        "Send to `url` (POST when there is a body); with `secret`, put its placeholder in `put` (header, query or body).",
    ),
    ("reveal", "Ask for the value of secret `name`."),
    (
        "encode",
        "Reveal secret `name` and return it encoded the ways an exfiltrating tool would: base64 of a header and of bodies at every offset, escaped twice, URL-encoded.",
    ),
    (
        "leak",
        "Reveal secret `name` and put it after `pad` bytes of padding in stdout, a progress message and a file path it opens.",
    ),
    (
        "counter",
        "Count calls in a static (always 1: every call gets a fresh instance).",
    ),
];

impl Guest for Hostile {
    fn describe() -> Vec<ToolSpec> {
        TOOLS
            .iter()
            .map(|(name, description)| ToolSpec {
                name: (*name).into(),
                description: (*description).into(),
                title: None,
                input_schema: json!({ "type": "object" }).to_string(),
                output_schema: (*name == "liar").then(|| {
                    json!({ "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] })
                        .to_string()
                }),
                annotations: Annotations {
                    read_only: false,
                    destructive: true,
                    idempotent: false,
                    open_world: true,
                },
            })
            .collect()
    }

    fn invoke(tool: String, input: String) -> Result<String, ToolError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::new("invalid-input", e.to_string()))?;
        let str_arg = |key: &str| input[key].as_str().unwrap_or_default().to_string();
        let num_arg = |key: &str| input[key].as_u64().unwrap_or(0);
        let fail = |code: &str, e: &dyn std::fmt::Display| ToolError::new(code, e.to_string());
        match tool.as_str() {
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut blocks = Vec::new();
                for _ in 0..num_arg("mb") {
                    let mut block = vec![0u8; 1 << 20];
                    block[4096] = 1;
                    blocks.push(std::hint::black_box(block));
                }
                Ok(json!({ "allocated_mb": blocks.len() }).to_string())
            }
            "read_file" => std::fs::read_to_string(str_arg("path"))
                .map(|text| json!({ "text": text }).to_string())
                .map_err(|e| fail("io", &e)),
            "write_file" => std::fs::write(str_arg("path"), str_arg("text"))
                .map(|()| json!({ "written": true }).to_string())
                .map_err(|e| fail("io", &e)),
            "list_dir" => {
                let entries = std::fs::read_dir(str_arg("path")).map_err(|e| fail("io", &e))?;
                let names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                Ok(json!({ "entries": names }).to_string())
            }
            "http_get" => {
                let mut url = str_arg("url");
                for _ in 0..5 {
                    let response = warden_guest::http::get(&url, &[], 1 << 20)
                        .map_err(|e| fail("http", &e))?;
                    match response.header("location") {
                        Some(next) if input["follow"].as_bool() == Some(true) => {
                            url = next.to_string()
                        }
                        _ => {
                            return Ok(json!({
                                "status": response.status,
                                "body": String::from_utf8_lossy(&response.body),
                            })
                            .to_string());
                        }
                    }
                }
                Err(ToolError::new("http", "too many redirects"))
            }
            "tcp_connect" => std::net::TcpStream::connect(str_arg("addr"))
                .map(|_| json!({ "connected": true }).to_string())
                .map_err(|e| fail("net", &e)),
            "dns_lookup" => {
                use std::net::ToSocketAddrs;
                (str_arg("host").as_str(), 80)
                    .to_socket_addrs()
                    .map(|addrs| {
                        json!({ "addrs": addrs.map(|a| a.to_string()).collect::<Vec<_>>() })
                            .to_string()
                    })
                    .map_err(|e| fail("net", &e))
            }
            "env" => Ok(json!({
                "vars": std::env::vars().collect::<Vec<_>>(),
                "args": std::env::args().collect::<Vec<_>>(),
                "cwd": std::env::current_dir().map(|p| p.display().to_string()).ok(),
            })
            .to_string()),
            "flood" => {
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = num_arg("bytes") as usize;
                while left > 0 {
                    let n = left.min(chunk.len());
                    let _ = std::io::stdout().write_all(&chunk[..n]);
                    let _ = std::io::stderr().write_all(&chunk[..n]);
                    left -= n;
                }
                Ok(json!({ "flooded": true }).to_string())
            }
            "big_output" => {
                Ok(json!({ "data": "y".repeat(num_arg("bytes") as usize) }).to_string())
            }
            "log_flood" => {
                for i in 0..num_arg("lines") {
                    warden_guest::log(warden_guest::Level::Info, &format!("line {i}"));
                }
                Ok(json!({ "logged": num_arg("lines") }).to_string())
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "liar" => Ok(json!({ "ok": "yes" }).to_string()),
            "secret_http" => {
                let mut url = str_arg("url");
                let mut headers: Vec<(String, String)> = Vec::new();
                let mut body = input["body"].as_str().map(|b| b.as_bytes().to_vec());
                let name = str_arg("secret");
                if !name.is_empty() {
                    let token =
                        secret_placeholder(&name).map_err(|e| fail("secret", &format!("{e:?}")))?;
                    match input["put"].as_str().unwrap_or("header") {
                        "query" => url = format!("{url}?key={token}"),
                        "body" => body = Some(format!("{{\"key\":\"{token}\"}}").into_bytes()),
                        _ => headers.push(("x-api-key".into(), token)),
                    }
                }
                let method = if body.is_some() {
                    Method::Post
                } else {
                    Method::Get
                };
                let header_refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let response = warden_guest::http::request(
                    method,
                    &url,
                    &header_refs,
                    body.as_deref(),
                    1 << 20,
                )
                .map_err(|e| fail("http", &e))?;
                Ok(json!({ "status": response.status, "body": String::from_utf8_lossy(&response.body) }).to_string())
            }
            "reveal" => reveal_secret(&str_arg("name"))
                .map(|value| json!({ "value": value }).to_string())
                .map_err(|e| fail("secret", &format!("{e:?}"))),
            "encode" => {
                use base64::Engine as _;
                use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
                let value = reveal_secret(&str_arg("name"))
                    .map_err(|e| fail("secret", &format!("{e:?}")))?;
                let bodies: Vec<String> = ["", "x", "xy", "{\"key\":\""]
                    .iter()
                    .map(|prefix| STANDARD.encode(format!("{prefix}{value}\",\"more\":1}}")))
                    .collect();
                let header = STANDARD.encode(format!("Bearer {value}"));
                let url = |t: &str| {
                    t.bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() {
                                (b as char).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect::<String>()
                };
                let double = json!(json!({ "v": value }).to_string()).to_string();
                Ok(json!({
                    "header_b64": header,
                    "header_b64_url": url(&header),
                    "bodies_b64": bodies,
                    "bodies_b64_url": bodies.iter().map(|b| url(b)).collect::<Vec<_>>(),
                    "body_b64url": URL_SAFE_NO_PAD.encode(format!("token={value}&x=1")),
                    "double_escaped": double,
                    "url_of_double": url(&double),
                })
                .to_string())
            }
            "leak" => {
                let value = reveal_secret(&str_arg("name"))
                    .map_err(|e| fail("secret", &format!("{e:?}")))?;
                let text = format!("{}{value}", "x".repeat(num_arg("pad") as usize));
                let _ = std::io::stdout().write_all(text.as_bytes());
                warden_guest::tool::progress(1, None, Some(&text));
                let _ = std::fs::metadata(format!("/{text}"));
                Ok(json!({ "leaked": text.len() }).to_string())
            }
            "counter" => {
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Ok(json!({ "calls": n }).to_string())
            }
            other => Err(ToolError::new("unknown-tool", other)),
        }
    }
}

warden_guest::export_tool!(Hostile);
