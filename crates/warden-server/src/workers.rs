//! The threads that serve HTTP: one single-threaded tokio runtime per core, each
//! accepting connections from the same listening socket and serving them to the end.
//!
//! A request is read, authenticated, governed and answered on the thread that accepted
//! its connection: on a multi-threaded runtime the same request hopped between worker
//! threads at every hand-off inside the MCP layer (transport, session, handler), and on
//! a VM each of those wake-ups costs more CPU than the call (measured in BENCHMARKS.md).
//! Connections spread over the threads as the kernel wakes them; everything they share
//! (the runtime, the queue, the audit log) is thread-safe and runtime-agnostic.
//!
//! It owns only the threads and their runtimes: what to serve is the router it is
//! given, and when to stop is the token. It must never block a worker on another
//! worker: a task stays on the runtime that spawned it.

use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;
use tokio_util::sync::CancellationToken;

/// How many threads serve HTTP: one per core this process may use.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Serve `app` on `listener` from `workers` threads until `stop` is cancelled and their
/// connections have closed. Resolves when all of them have ended, or with the first
/// error one of them ends on.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    workers: usize,
    stop: &CancellationToken,
) -> std::io::Result<impl Future<Output = std::io::Result<()>> + Send + 'static> {
    let listener = listener.into_std()?;
    listener.set_nonblocking(true)?;
    let (done, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let workers = workers.max(1);
    for i in 0..workers {
        let listener = listener.try_clone()?;
        let (app, stop, done) = (app.clone(), stop.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("warden-http-{i}"))
            .spawn(move || {
                let _ = done.send(serve_one(listener, app, stop));
            })?;
    }
    Ok(async move {
        for _ in 0..workers {
            match ended.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(std::io::Error::other("an HTTP worker thread died")),
            }
        }
        Ok(())
    })
}

/// One worker: its own runtime, accepting and serving until `stop`.
fn serve_one(
    listener: std::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Small JSON-RPC messages: without TCP_NODELAY a response can wait 40 ms for
        // an ACK.
        let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    })
}
