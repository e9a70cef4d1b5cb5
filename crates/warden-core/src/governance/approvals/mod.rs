//! The approval queue: held calls persisted in the embedded store (`db`), the votes on
//! them, who may cast them, expiry, and the claim that makes execution exactly-once.
//!
//! Owns every state change of a request:
//!
//! ```text
//! pending --approve (quorum reached)--> approved --claim--> executing --> executed | failed
//!    |  \--reject--> rejected            ^
//!    |--soft window passes---------------/
//!    \--hard timeout passes--> expired
//! ```
//!
//! Every change runs on one writer thread, inside a `BEGIN IMMEDIATE` transaction on a
//! connection that fsyncs its commits; changes queued together share one commit (each
//! in its own savepoint, so one refused change does not undo the others). Concurrent
//! deciders (tasks or processes) are serialized and the first decision stands; a
//! change is acknowledged only once its commit is durable.
//!
//! A request is approved when every policy that held it has its own approvals: the
//! approvers one policy names never satisfy another's hold. A vote carries the input
//! hash its voter was shown, and one cast on another input is refused. A held input
//! is sealed under the vault's key while it waits and removed once the request ends.
//!
//! It must never let a request execute twice: only the `approved -> executing` claim
//! grants execution; the claim names its process by a lock file the kernel releases
//! when the process dies (never by pid, which a restart or pid reuse makes lie), and a
//! claim whose process is gone ends `failed` rather than being retried (the tool may
//! already have had its effect). It never runs tools itself; `runtime::Runtime` does,
//! after a claim.
//!
//! `model` is what a request is; `rules` what may happen to one (pure); `store` where
//! requests are kept and changed; `seal` and `owner` the held input at rest and the
//! process a claim names.

mod model;
mod owner;
mod rules;
mod seal;
mod store;

use thiserror::Error;

pub use model::{Approval, Ballot, Choice, HoldSet, NewRequest, Notice, Ran};
pub use rules::{expand, input_hash, may_decide, prepare, tier_name};
pub use seal::{REMOVED, SEALED, Sealer};
pub use store::ApprovalQueue;

/// What a caller of the queue must branch on.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("approval {id} is already decided: {state}{detail}")]
    AlreadyDecided {
        id: String,
        state: &'static str,
        detail: String,
    },
    #[error("{principal} may not decide approval {id}: {why}")]
    NotAllowed {
        id: String,
        principal: String,
        why: String,
    },
    #[error(
        "approval {id}: the input you were shown ({shown}) is not the request's ({actual}); look at it again"
    )]
    InputChanged {
        id: String,
        shown: String,
        actual: String,
    },
    #[error("approval queue {path}: {message}")]
    Store { path: String, message: String },
}
