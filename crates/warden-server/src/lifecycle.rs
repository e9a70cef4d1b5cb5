//! The life of `warden serve`: binding and serving (HTTP or stdio), signals (SIGHUP
//! reloads, SIGTERM and Ctrl-C drain and stop), the locked pid file that tells other
//! processes where the server listens, and the listen-address check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::mcp::WardenMcp;
use crate::router::router;
use crate::state::{RESULTS_LEAVE_WITHIN, Server};

/// How `serve` ends: a signal, or (stdio) the client closing.
async fn signals(server: Arc<Server>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        stop.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                match server.reload().await {
                    Ok(tools) => eprintln!("warden serve: reloaded {} ({} tools)", server.config_path.display(), tools.len()),
                    Err(e) => eprintln!("warden serve: reload refused, still serving the old config: {e}"),
                }
            }
        }
    }
    eprintln!("warden serve: shutting down");
    server.stopping.store(true, Ordering::Release);
    stop.cancel();
}

/// Serve HTTP on `listener` until SIGTERM/Ctrl-C. Then: stop accepting connections,
/// let calls in flight finish and answer (up to the grace period), close the MCP
/// sessions, stop the driver, close the audit log.
pub async fn serve_http(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Cancelled only once the calls in flight are done: it closes MCP sessions.
    let sessions = CancellationToken::new();
    let app = router(server.clone(), &sessions);
    server.watch_upstreams();
    let driver = tokio::spawn(server.clone().drive(sessions.clone()));
    let notices = tokio::spawn(server.clone().notices(sessions.clone()));
    let schedules = tokio::spawn(server.clone().schedule(stop.clone()));
    let sig = tokio::spawn(signals(server.clone(), stop.clone()));
    let mut served = tokio::spawn(crate::workers::serve(
        listener,
        app,
        crate::workers::count(),
        &stop,
    )?);
    // A signal stops the server gracefully; with no connection open, `served` is done
    // at the same moment, and the shutdown must still drain: only an end of `served`
    // with no signal is the listener failing.
    let ended_early = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        ended = &mut served => Some(ended),
    };
    if let Some(ended) = &ended_early
        && !stop.is_cancelled()
    {
        sessions.cancel();
        stop.cancel();
        let _ = schedules.await;
        let _ = driver.await;
        let _ = notices.await;
        sig.abort();
        server.runtime().close();
        return match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
            Err(e) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
        };
    }
    server.drain().await;
    // Closing the sessions cancels responses not yet sent: let the results of the calls
    // that just finished reach their clients first.
    let unsent = server.sending.settled(RESULTS_LEAVE_WITHIN).await;
    if unsent > 0 {
        tracing::warn!(
            responses = unsent,
            "shutdown: MCP responses still unsent are dropped"
        );
    }
    sessions.cancel();
    let ended = match ended_early {
        Some(ended) => Ok(ended),
        None => tokio::time::timeout(Duration::from_secs(5), served).await,
    };
    let result = match ended {
        Ok(Ok(r)) => r.map_err(anyhow::Error::from),
        Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server stopped: {e}")),
        Err(_) => Ok(()),
    };
    let _ = schedules.await;
    let _ = driver.await;
    let _ = notices.await;
    sig.abort();
    server.runtime().close();
    result
}

/// Serve MCP on stdin/stdout as `principal` until the client closes it or a signal.
/// Nothing but MCP messages is ever written to stdout. On a signal the service keeps
/// running while the calls in flight finish, so their results still reach the client.
pub async fn serve_stdio(server: Arc<Server>, principal: String) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    server.watch_upstreams();
    let driver = tokio::spawn(server.clone().drive(stop.clone()));
    let notices = tokio::spawn(server.clone().notices(stop.clone()));
    let schedules = tokio::spawn(server.clone().schedule(stop.clone()));
    let sig = tokio::spawn(signals(server.clone(), stop.clone()));
    let handler = WardenMcp::new(server.clone(), Some(principal));
    let (input, output) = crate::stdio::streams();
    let written = Arc::new(AtomicU64::new(0));
    let output = crate::stdio::Counted::new(output, written.clone());
    let running = handler.serve((input, output)).await?;
    let quit = running.cancellation_token();
    let mut waiting = std::pin::pin!(running.waiting());
    let client_left = tokio::select! {
        r = &mut waiting => { r?; true }
        _ = stop.cancelled() => false,
    };
    server.drain().await;
    if !client_left {
        // The results of the calls that just finished are on their way to stdout.
        crate::stdio::quiet(&written, RESULTS_LEAVE_WITHIN).await;
        quit.cancel();
        let _ = waiting.await;
    }
    stop.cancel();
    let _ = schedules.await;
    let _ = driver.await;
    let _ = notices.await;
    sig.abort();
    server.runtime().close();
    Ok(())
}

/// `<data_dir>/serve.pid` while a server runs: its pid and where it listens, under an
/// exclusive lock it holds until it exits (the kernel drops the lock however it dies),
/// so a stale file left by `kill -9` is never mistaken for a live server.
pub struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    /// Write and lock the pid file for this process, serving at `url` (`None`: stdio).
    pub fn take(data_dir: &Path, url: Option<&str>) -> anyhow::Result<PidFile> {
        use anyhow::Context as _;
        use std::io::Write as _;
        let path = data_dir.join("serve.pid");
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            anyhow::bail!(
                "another `warden serve` holds {} (one server per data dir)",
                path.display()
            );
        }
        file.set_len(0)?;
        writeln!(
            file,
            "{}
{}",
            std::process::id(),
            url.unwrap_or("stdio")
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(PidFile { path, _file: file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A server running on a data dir, as its pid file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: i32,
    /// `http://ADDR`, or `None` for a stdio server.
    pub url: Option<String>,
}

/// The server running on `data_dir`, if one is: its pid file exists and is locked.
pub fn running(data_dir: &Path) -> Option<Running> {
    let path = data_dir.join("serve.pid");
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: whatever it says is stale.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).ok()?;
            let mut lines = text.lines();
            let pid = lines.next()?.trim().parse().ok()?;
            let url = lines
                .next()
                .map(str::trim)
                .filter(|u| u.starts_with("http"))
                .map(str::to_string);
            Some(Running { pid, url })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The address to bind, refusing non-loopback ones unless `public` is set.
pub fn check_listen(addr: SocketAddr, public: bool) -> anyhow::Result<SocketAddr> {
    if !addr.ip().is_loopback() && !public {
        anyhow::bail!(
            "{addr} is not a loopback address; pass --public to listen beyond this machine"
        );
    }
    Ok(addr)
}
