//! warden-server: `warden serve`, the operator's main job, over warden-core.
//!
//! - `state`: the server's state (the current runtime, swapped whole on reload; calls in
//!   flight), authentication, the Host/Origin checks and the lifecycle;
//! - `mcp`: every loaded tool over MCP, each call through the governed path;
//! - `api`: the operator HTTP API (runs, approvals, audit search, reload, health);
//! - `pages`: the one-click approval pages webhook notices link to;
//! - `metrics`: Prometheus metrics with bounded labels;
//! - `auth_failures`: failed authentications counted per source, and throttled;
//! - `stdio`: stdin and stdout as nonblocking async streams for `serve --stdio`.
//!
//! It never decides what a call may do: that is warden-core's governed path, the same
//! one `warden call` takes.

pub mod api;
pub mod auth_failures;
pub mod mcp;
pub mod metrics;
pub mod pages;
pub mod state;
pub mod stdio;

pub use state::{PidFile, Server, check_listen, running, serve_http, serve_stdio};
