//! What stands between a policy's verdict and a call's run: the approval queue and its
//! votes, the notices and signed one-click links that reach approvers, and the budgets
//! (limits, runaway guards, the kill switch) a call must fit in.
//!
//! It never runs a tool: an approved call is resumed by `runtime::driver`.

pub mod approvals;
pub mod budgets;
pub mod links;
pub(crate) mod notify;
