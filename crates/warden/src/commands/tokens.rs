//! `warden tokens`: make bearer tokens for `warden serve`; the config keeps only their
//! hashes and the token is printed once.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use warden_core::config::Config;

use crate::exit;
use crate::output::print;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Make a new token for PRINCIPAL and print it once; the config keeps only its hash.
    Create {
        /// A name for the token (to tell tokens apart in the config and the audit log).
        name: String,
        /// The principal calls made with the token run as (default: the name).
        #[arg(long)]
        principal: Option<String>,
        /// agent (call tools over MCP), approver (decide approvals), operator (everything).
        #[arg(long = "role", default_value = "agent")]
        roles: Vec<String>,
        /// Append the `[[token]]` entry to the config file instead of printing it.
        #[arg(long)]
        write: bool,
    },
}

pub fn run(config: &Path, command: &TokensCommand) -> Result<ExitCode> {
    let TokensCommand::Create {
        name,
        principal,
        roles,
        write,
    } = command;
    let principal = principal.clone().unwrap_or_else(|| name.clone());
    if !warden_core::config::valid_principal(&principal)
        || !warden_core::config::valid_principal(name)
    {
        anyhow::bail!("names and principals are non-empty, without spaces or control characters");
    }
    for r in roles {
        if warden_core::tokens::Role::parse(r).is_none() {
            anyhow::bail!("unknown role {r:?} (agent, approver, operator)");
        }
    }
    let token = warden_core::tokens::generate().map_err(anyhow::Error::msg)?;
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    let entry = format!(
        "\n[[token]]\nname = {name:?}\nprincipal = {principal:?}\nroles = [{}]\nsha256 = \"{}\"\n",
        roles.join(", "),
        warden_core::tokens::hash(&token)
    );
    if *write {
        // Checked before writing: the config must still load with the entry added.
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        Config::parse(config, &(text.clone() + &entry))?;
        std::fs::write(config, text + &entry)
            .with_context(|| format!("writing {}", config.display()))?;
        eprintln!(
            "warden tokens: added token {name:?} for {principal} to {} (run `warden reload` if a server is running)",
            config.display()
        );
    } else {
        eprintln!("warden tokens: add this to {}:{entry}", config.display());
    }
    eprintln!(
        "warden tokens: the token, shown only now (send it as `Authorization: Bearer <token>`):"
    );
    print(&format!("{token}\n"))?;
    Ok(ExitCode::from(exit::OK))
}
