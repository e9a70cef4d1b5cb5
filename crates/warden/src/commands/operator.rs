//! Who a command speaks for: a bearer token proved against the config's `[[token]]`s,
//! and a change sent through the running server's operator API.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use warden_core::config::Config;
use warden_core::tokens::{self, Principal, Role};

use crate::exit;
use crate::output::print;

/// The principal `token` speaks for (`needs`: what asked for it; `role`: the role a
/// new token would need, for the hint).
pub(crate) fn principal_of(
    config: &Config,
    token: Option<&str>,
    needs: &str,
    role: &str,
) -> Result<Principal> {
    let token = token.with_context(|| {
        format!(
            "{needs} needs your token: pass --token or set WARDEN_TOKEN (`warden tokens create NAME --role {role}` makes one)"
        )
    })?;
    tokens::verify(&config.tokens, token.trim()).with_context(|| {
        format!(
            "the token matches no [[token]] in {}",
            config.file.display()
        )
    })
}

/// The operator making a change.
#[derive(clap::Args)]
pub struct Operator {
    /// Your bearer token (operator role); default `WARDEN_TOKEN`.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub(crate) fn operator(config: &Config, who: &Operator) -> Result<Principal> {
    let p = principal_of(config, who.token.as_deref(), "this", "operator")?;
    if !p.has(Role::Operator) {
        bail!("token {} lacks the operator role", p.token);
    }
    Ok(p)
}

/// Make the change through the running server.
pub(crate) async fn through(
    url: &str,
    who: &Operator,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<ExitCode> {
    let token = who.token.as_deref().unwrap_or_default().trim();
    let (status, answer) =
        crate::client::request(method, &format!("{url}{path}"), token, body).await?;
    if !(200..300).contains(&status) {
        eprintln!(
            "warden: the server at {url} refused ({status}): {}",
            answer["error"].as_str().unwrap_or_default()
        );
        return Ok(ExitCode::from(if status == 503 {
            exit::NOT_RECORDED
        } else {
            exit::USAGE
        }));
    }
    print(&format!("{}\n", serde_json::to_string_pretty(&answer)?))?;
    let code = match answer["status"].as_str() {
        None | Some("ok") => exit::OK,
        Some("held") => exit::HELD,
        Some("denied" | "limited") => exit::DENIED,
        Some(_) => exit::TOOL_ERROR,
    };
    Ok(ExitCode::from(code))
}
