//! Live updates for an open inbox: a server-sent event stream that says "the pending
//! requests changed", so the page fetches its list again instead of being reloaded.
//!
//! It wakes on the queue's own changes (this process) and looks at the queue's pending
//! count and newest request every `LOOK_EVERY` (requests held by another process, such
//! as `warden call`); it does that only while a console has the stream open. It carries
//! no request data: the page fetches that with its session like any other.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::{Viewer, refusal};
use crate::state::Server;
use warden_core::governance::approvals::ApprovalQueue;

const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The queue's (pending count, newest) read off the async runtime (SQLite).
async fn look(queue: &Arc<ApprovalQueue>) -> Option<(u64, i64)> {
    let queue = queue.clone();
    tokio::task::spawn_blocking(move || queue.pending_mark().ok())
        .await
        .ok()
        .flatten()
}

pub(crate) async fn stream(
    State(server): State<Arc<Server>>,
    viewer: Viewer,
    stop: CancellationToken,
) -> Response {
    let rt = server.runtime();
    let Some(queue) = rt.approvals.clone() else {
        return refusal(
            StatusCode::CONFLICT,
            Some(&viewer),
            "the approval queue is disabled",
        );
    };
    drop(rt);
    let mark = look(&queue).await;
    let events = futures_util::stream::unfold((queue, mark), move |(queue, mut mark)| {
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = queue.changed.notified() => {}
                    _ = tokio::time::sleep(LOOK_EVERY) => {}
                }
                let now = look(&queue).await;
                if now != mark {
                    mark = now;
                    let count = now.map(|(n, _)| n).unwrap_or_default();
                    let event = Event::default().event("approvals").data(count.to_string());
                    return Some((Ok::<_, Infallible>(event), (queue, mark)));
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(30)))
        .into_response()
}
