//! warden-server: `warden serve`, the operator's main job, over warden-core.
//!
//! - `state`: the server's state (the current runtime, swapped whole on reload; calls in
//!   flight), reload, the background tasks that drive the approval queue;
//! - `auth`: the Host/Origin checks and bearer tokens;
//! - `router`: every HTTP route assembled from the route modules' own routers;
//! - `lifecycle`: serving over HTTP or stdio, signals, the pid file;
//! - `mcp`: every loaded tool over MCP, each call through the governed path;
//! - `api`: the operator HTTP API (runs, approvals, audit search, reload, health);
//! - `automation`: schedules and triggers over HTTP, and the `/hooks/NAME` endpoint;
//! - `budgets`: the usage report and the kill switch over HTTP;
//! - `console`: the operator console in the browser (`/console`): sign-in, sessions,
//!   the approvals inbox, runs, audit, fleet and activity;
//! - `pages`: the one-click approval pages webhook notices link to;
//! - `metrics`: Prometheus metrics with bounded labels;
//! - `auth_failures`: failed authentications counted per source, and throttled;
//! - `stdio`: stdin and stdout as nonblocking async streams for `serve --stdio`;
//! - `workers`: the threads that serve HTTP, one single-threaded runtime per core.
//!
//! It never decides what a call may do: that is warden-core's governed path, the same
//! one `warden call` takes. Arrows point one way: the route modules (`api`, `pages`,
//! `mcp`) and `auth` use `state`; `router` uses them; `lifecycle` uses `router` and
//! `workers`.

mod api;
mod auth;
mod auth_failures;
mod automation;
mod budgets;
mod console;
mod lifecycle;
mod mcp;
mod metrics;
mod pages;
mod router;
mod state;
mod stdio;
mod workers;

pub use console::embedded_asset_bytes;
pub use lifecycle::{PidFile, check_listen, running, serve_http, serve_stdio};
pub use state::Server;
