//! What stands between a policy's hold and a call's run: the approval queue and its
//! votes, the notices and signed one-click links that reach approvers.
//!
//! It never runs a tool: an approved call is resumed by `runtime::driver`.

pub mod approvals;
pub mod links;
pub(crate) mod notify;
