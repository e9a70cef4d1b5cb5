//! Where components run: the shared engine and its compile cache, loading and checking
//! a component, the per-call store state built from grants, limits, the host interfaces,
//! host-call recording, and the two kinds of component (plugins and policies).
//!
//! It runs what it is given with the grants and limits it is given; it never decides
//! whether a call may run (that is `runtime::governed` with the policies' verdicts).

pub(crate) mod cache;
pub mod component;
pub(crate) mod context;
pub mod engine;
pub(crate) mod hostcalls;
pub(crate) mod interfaces;
pub(crate) mod limits;
pub mod plugin;
pub mod policy;
pub(crate) mod shared;
