//! `warden secrets`: manage the vault. Values are read from stdin or a hidden prompt,
//! never from the command line, and never printed.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use zeroize::Zeroizing;

use warden_core::config::Config;
use warden_core::vault::{MASTER_KEY_ENV, MasterKey, Vault};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Create the master key file (mode 0600) and an empty vault. With
    /// WARDEN_MASTER_KEY set, that key is used and no key file is written.
    Init,
    /// Add a secret; the value is read from stdin, or prompted for without echo.
    Set { name: String },
    /// Add a new version of a secret; older versions stay until removed.
    Rotate { name: String },
    /// List secrets: names, versions, times, and which plugins are granted each. Every
    /// version is decrypted to check the vault is intact; no value is shown.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret, or one version of it.
    Rm {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

pub fn run(config: &Path, command: &SecretsCommand) -> Result<ExitCode> {
    let config = Config::load_for_vault(config)?;
    let open = || -> Result<Vault> {
        let key = MasterKey::resolve(config.key_file.as_deref())?;
        Ok(Vault::open(&config.vault_path, &key)?)
    };
    match command {
        SecretsCommand::Init => {
            Vault::init(&config.vault_path, config.key_file.as_deref())?;
            eprintln!(
                "created vault {} (key: {})",
                config.vault_path.display(),
                config
                    .key_file
                    .as_ref()
                    .map_or(MASTER_KEY_ENV.to_string(), |k| k.display().to_string())
            );
        }
        SecretsCommand::Set { name } | SecretsCommand::Rotate { name } => {
            let mut vault = open()?;
            let value = read_value(name)?;
            let version = match command {
                SecretsCommand::Set { .. } => vault.set(name, &value)?,
                _ => vault.rotate(name, &value)?,
            };
            eprintln!("stored {name} version {version}");
        }
        SecretsCommand::List { json } => {
            let vault = open()?;
            // Listing is when an operator looks: decrypt every version so tampering shows.
            vault.verify()?;
            let mut rows = Vec::new();
            for info in vault.list() {
                let plugins: Vec<&str> = config
                    .plugins
                    .iter()
                    .filter(|p| p.grants.secrets.iter().any(|g| g.secret == info.name))
                    .map(|p| p.id.as_str())
                    .collect();
                rows.push(serde_json::json!({
                    "name": info.name,
                    "versions": info.versions.iter().map(|(v, t)| serde_json::json!({ "version": v, "created_ms": t })).collect::<Vec<_>>(),
                    "granted_to": plugins,
                }));
            }
            if *json {
                crate::output::print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
            } else {
                let mut out = String::new();
                for (row, info) in rows.iter().zip(vault.list()) {
                    let created = info.versions.first().map_or(0, |v| v.1);
                    let rotated = info.versions.last().map_or(0, |v| v.1);
                    let granted = row["granted_to"].as_array().map_or(0, Vec::len);
                    out += &format!(
                        "{}  versions {}  created {}  rotated {}  granted to {}\n",
                        info.name,
                        info.versions.len(),
                        time(created),
                        time(rotated),
                        if granted == 0 {
                            "no plugin".to_string()
                        } else {
                            row["granted_to"].to_string()
                        }
                    );
                }
                crate::output::print(&out)?;
            }
        }
        SecretsCommand::Rm { name, version } => {
            let mut vault = open()?;
            vault.remove(name, *version)?;
            eprintln!(
                "removed {name}{}",
                version.map(|v| format!(" version {v}")).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_value(name: &str) -> Result<Zeroizing<String>> {
    if std::io::stdin().is_terminal() {
        let value = rpassword::prompt_password(format!("value for {name}: "))
            .context("reading the value")?;
        return Ok(Zeroizing::new(value));
    }
    let mut value = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut value)
        .context("reading the value from stdin")?;
    // `echo value | warden secrets set x` adds a newline that is not part of the value.
    let trimmed = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v));
    Ok(Zeroizing::new(trimmed.unwrap_or(&value).to_string()))
}

/// Seconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
fn time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}
