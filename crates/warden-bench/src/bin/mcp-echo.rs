//! `mcp-echo`: the smallest MCP server (stdio, one tool `echo`), in Rust with the
//! standard library and serde_json only. It is the floor a fresh native process shows
//! on this machine for start-up and a first call, for `warden-bench mcp --server
//! target/release/mcp-echo --tool echo --input '{"text":"hi"}'` (BENCHMARKS.md, #19):
//! what warden's start-up and first-call figures cannot beat on the same machine.
//!
//! It answers `initialize`, `tools/list` and `tools/call` and ignores notifications;
//! it is a measuring stick, not a server to run.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

fn main() {
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else { return };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = message.get("id") else {
            continue;
        };
        let result = match message["method"].as_str() {
            Some("initialize") => json!({
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-echo", "version": "0"},
            }),
            Some("tools/list") => json!({"tools": [{
                "name": "echo",
                "description": "echo its arguments",
                "inputSchema": {"type": "object"},
            }]}),
            Some("tools/call") => json!({
                "content": [{"type": "text", "text": message["params"]["arguments"].to_string()}],
                "isError": false,
            }),
            _ => json!({}),
        };
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
        if writeln!(stdout, "{answer}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}
