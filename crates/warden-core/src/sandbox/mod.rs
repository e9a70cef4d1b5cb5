//! Where components run: the shared engine and its compile cache, loading and checking
//! a component, the per-call store state built from grants, limits, the host interfaces,
//! host-call recording, and the two kinds of component (plugins and policies).
//!
//! It runs what it is given with the grants and limits it is given; it never decides
//! whether a call may run (that is `runtime::governed` with the policies' verdicts).

pub mod cache;
pub mod component;
pub mod context;
pub mod engine;
pub mod hostcalls;
pub mod interfaces;
pub mod limits;
pub mod plugin;
pub mod policy;
pub mod shared;
