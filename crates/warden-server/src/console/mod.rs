//! The operator console at `/console`: server-rendered pages (maud templates, checked at
//! compile time) for the approvals inbox, runs, the audit log, the fleet and activity,
//! with its stylesheet and one small script embedded in the binary.
//!
//! Owns the console's routes, its page layout and the headers every page carries
//! (a strict Content-Security-Policy with no inline script, no framing, no caching).
//! Each view is its own module; `session` owns sign-in and who a request speaks for.
//! It must never render anything a tool, a plugin or a caller wrote as HTML (maud
//! escapes every interpolation; nothing here uses `PreEscaped` on such text), never
//! show a secret value or a token hash, and never change state on a GET.

mod activity;
pub(crate) mod audit;
mod events;
pub(crate) mod fleet;
mod inbox;
mod runs;
pub(crate) mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use tokio_util::sync::CancellationToken;

use crate::state::Server;
pub(crate) use session::{Sessions, Viewer};

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// The console's routes. `stop` ends the live-update streams at shutdown.
pub fn routes(stop: &CancellationToken) -> Router<Arc<Server>> {
    let stop = stop.child_token();
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route(
            "/console/login",
            get(session::login_page).post(session::sign_in),
        )
        .route("/console/logout", post(session::sign_out))
        .route("/console/approvals", get(inbox::page))
        .route("/console/approvals/{id}", post(inbox::decide))
        .route(
            "/console/events",
            get(
                move |server: axum::extract::State<Arc<Server>>, viewer: Viewer| {
                    events::stream(server, viewer, stop.clone())
                },
            ),
        )
        .route("/console/runs", get(runs::list))
        .route("/console/runs/{id}", get(runs::page))
        .route("/console/audit", get(audit::page))
        .route("/console/audit/export", get(audit::export))
        .route("/console/audit/verify", post(audit::verify))
        .route("/console/fleet", get(fleet::page))
        .route("/console/activity", get(activity::page))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .route("/console/csp-report", post(csp_report))
}

/// Every console page's (and link page's) headers: only the console's own script and
/// stylesheet run; nothing frames it, caches it or learns its URLs.
pub(crate) fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             report-uri /console/csp-report",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null`
    // on the page's own form posts, which the origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Which view a page belongs to, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Inbox,
    Runs,
    Audit,
    Fleet,
    Activity,
    None,
}

/// A whole page: the layout around `body`, with the navigation `viewer` may use.
pub(crate) fn render(
    status: StatusCode,
    viewer: Option<&Viewer>,
    title: &str,
    nav: Nav,
    body: Markup,
) -> Response {
    let operator = viewer.is_some_and(Viewer::is_operator);
    let link = |href: &str, name: &str, this: Nav| {
        html! {
            @if this == nav {
                a href=(href) aria-current="page" { (name) }
            } @else {
                a href=(href) { (name) }
            }
        }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · warden" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Console" {
                        span.brand { "warden" }
                        @if viewer.is_some() {
                            (link("/console/approvals", "Approvals", Nav::Inbox))
                        }
                        @if operator {
                            (link("/console/runs", "Runs", Nav::Runs))
                            (link("/console/audit", "Audit", Nav::Audit))
                            (link("/console/fleet", "Fleet", Nav::Fleet))
                            (link("/console/activity", "Activity", Nav::Activity))
                        }
                    }
                    @if let Some(v) = viewer {
                        form.signout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span { "Signed in as " strong { (v.principal.name) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    secured((status, axum::response::Html(markup.into_string())).into_response())
}

/// A page that only says why not (403, 404, 409, 500...).
pub(crate) fn refusal(status: StatusCode, viewer: Option<&Viewer>, why: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    render(
        status,
        viewer,
        title,
        Nav::None,
        html! { p.error { (why) } },
    )
}

/// A time as UTC text in a `<time>` the script shows in the viewer's zone (the UTC value
/// stays in its title); without the script it reads as UTC.
pub(crate) fn when(ms: i64) -> Markup {
    let utc = chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string());
    html! { time datetime=(utc) title=(utc) { (utc) } }
}

/// A duration in µs, short.
pub(crate) fn micros(us: i64) -> String {
    match us {
        i64::MIN..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// JSON text pretty-printed when it parses, as it came otherwise.
pub(crate) fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// A query value that was left empty in a form counts as not given.
pub(crate) fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A page cursor `MS:ID` (a row's time and id) from the query, if one was given.
pub(crate) fn cursor(value: &Option<String>) -> Option<(i64, String)> {
    let given = given(value)?;
    let (ms, id) = given.split_once(':')?;
    Some((ms.parse().ok()?, id.to_string()))
}

/// Run `read` (SQLite, files: blocking) off the async runtime: what it found, or the
/// 500 page saying why not.
pub(crate) async fn blocking<T, E>(
    viewer: &Viewer,
    read: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Box<Response>>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let why = match tokio::task::spawn_blocking(read).await {
        Ok(Ok(found)) => return Ok(found),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    Err(Box::new(refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(viewer),
        &why,
    )))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, kind)], body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// A browser reporting a Content-Security-Policy violation: counted (a console page
/// that triggers one is a defect) and logged, bounded and quoted (anyone may post
/// here: it is a signal, never trusted).
async fn csp_report(
    axum::extract::State(server): axum::extract::State<Arc<Server>>,
    body: axum::body::Bytes,
) -> StatusCode {
    server.metrics.csp_report();
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
    tracing::warn!(report = ?text, "console: Content-Security-Policy violation reported");
    StatusCode::NO_CONTENT
}

/// The assets' size in bytes (for BENCHMARKS.md).
pub fn embedded_asset_bytes() -> usize {
    STYLESHEET.len() + SCRIPT.len()
}
