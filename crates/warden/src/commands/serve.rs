//! `warden serve` and `warden reload`: start the server (HTTP or stdio) holding the
//! data dir's pid file, and ask a running one to reload its config.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use warden_core::config::Config;

use super::load;
use crate::exit;

pub async fn run(
    config: &Path,
    listen: Option<std::net::SocketAddr>,
    public: bool,
    stdio: bool,
    principal: Option<String>,
) -> Result<ExitCode> {
    let rt = load(config).await?;
    let data_dir = rt.config.data_dir.clone();
    let (default_listen, stdio_principal) = (
        rt.config.server.listen,
        rt.config.server.stdio_principal.clone(),
    );
    if !rt.config.audit.enabled {
        eprintln!(
            "warden serve: WARNING: the audit log is OFF ([audit] enabled = false): calls and host calls are NOT recorded; /readyz and /metrics say so"
        );
    }
    let server = warden_server::Server::new(rt, config)?;
    if stdio {
        let _pid = warden_server::PidFile::take(&data_dir, None)?;
        let principal = principal.unwrap_or(stdio_principal);
        eprintln!("warden serve: MCP on stdio as {principal}");
        warden_server::serve_stdio(server, principal).await?;
    } else {
        let addr = warden_server::check_listen(listen.unwrap_or(default_listen), public)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let _pid = warden_server::PidFile::take(&data_dir, Some(&url))?;
        eprintln!("warden serve: listening on {url} (MCP at /mcp)");
        warden_server::serve_http(server, listener).await?;
    }
    Ok(ExitCode::from(exit::OK))
}

pub fn reload(config: &Path) -> Result<ExitCode> {
    let config = Config::load(config)?;
    // Only a live server holds the pid file's lock: a file left by `kill -9` (whose pid
    // may now be any other process) is never signalled.
    let server = warden_server::running(&config.data_dir).with_context(|| {
        format!(
            "no running server for {} (no locked {})",
            config.data_dir.display(),
            config.data_dir.join("serve.pid").display()
        )
    })?;
    let pid = server.pid;
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    eprintln!(
        "warden reload: asked process {pid} to reload (it logs the result; a bad config is refused and the old one keeps serving)"
    );
    Ok(ExitCode::from(exit::OK))
}
