//! `warden upstreams list` and `warden upstreams accept`: the MCP servers warden governs,
//! their state and tools, and accepting a tool definition that changed.
//!
//! Both start the upstreams the config names (they are processes of this command). An
//! accepted definition is recorded in the store and the audit log; a running server
//! uses it after its next `warden reload`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;

use super::operator::{Operator, operator};
use crate::exit;
use crate::output::print;

#[derive(Subcommand)]
pub enum UpstreamsCommand {
    /// Every upstream: running or not, restarts, last error, and its tools (a changed
    /// definition is marked, with the accepted and the current digest).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Accept upstream ID's current definition of TOOL (of every tool when none is
    /// named) after it changed; audited with both digests.
    Accept {
        id: String,
        /// The upstream's own name for the tool (without warden's prefix).
        tool: Option<String>,
        #[command(flatten)]
        who: Operator,
    },
}

pub async fn run(config_path: &Path, command: &UpstreamsCommand) -> Result<ExitCode> {
    match command {
        UpstreamsCommand::List { json } => {
            let rt = super::load(config_path).await?;
            let mut list = Vec::new();
            for upstream in &rt.upstreams {
                let status = upstream.status();
                let plugin = rt.plugins.iter().find(|p| p.id == status.id);
                let tools: Vec<_> = plugin
                    .map(|p| {
                        let changed = p.upstream().map(|u| &u.changed);
                        p.tools
                            .iter()
                            .map(|t| {
                                let change = changed.and_then(|c| c.get(&t.name));
                                json!({
                                    "name": t.name,
                                    "destructive": t.annotations.destructive,
                                    "changed": change.map(|(accepted, current)| json!({ "accepted": accepted, "current": current })),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                list.push(json!({
                    "id": status.id,
                    "running": status.running,
                    "restarts": status.restarts,
                    "last_error": status.last_error,
                    "tools": tools,
                }));
            }
            rt.close();
            if *json {
                print(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
            } else {
                let mut out = String::new();
                for u in &list {
                    out += &format!(
                        "{}  {}  restarts {}{}\n",
                        u["id"].as_str().unwrap_or_default(),
                        if u["running"] == true {
                            "running"
                        } else {
                            "down"
                        },
                        u["restarts"],
                        u["last_error"]
                            .as_str()
                            .map(|e| format!("  last error: {e}"))
                            .unwrap_or_default()
                    );
                    for t in u["tools"].as_array().into_iter().flatten() {
                        out += &format!(
                            "  {}{}\n",
                            t["name"].as_str().unwrap_or_default(),
                            if t["changed"].is_null() {
                                String::new()
                            } else {
                                format!(
                                    "  CHANGED (accepted {}, now {}): withheld until `warden upstreams accept`",
                                    t["changed"]["accepted"].as_str().unwrap_or_default(),
                                    t["changed"]["current"].as_str().unwrap_or_default()
                                )
                            }
                        );
                    }
                }
                print(&out)?;
            }
            Ok(ExitCode::from(exit::OK))
        }
        UpstreamsCommand::Accept { id, tool, who } => {
            let config = warden_core::config::Config::load(config_path)?;
            let by = operator(&config, who)?.name;
            let rt = warden_core::runtime::Runtime::load(config).await?;
            let accepted = rt.accept_upstream(id, tool.as_deref(), &by).await;
            rt.close();
            let accepted = accepted?;
            if accepted.is_empty() {
                bail!("nothing to accept: upstream {id:?}'s definitions are the accepted ones");
            }
            let mut out = String::new();
            for a in &accepted {
                out += &format!(
                    "accepted {id} {}: {} (was {})\n",
                    a.tool,
                    a.digest,
                    a.previous.as_deref().unwrap_or("none")
                );
            }
            print(&out)?;
            Ok(ExitCode::from(exit::OK))
        }
    }
}
