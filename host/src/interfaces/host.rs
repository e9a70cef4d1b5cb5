//! `warden:plugin/host`: warden's own services for tools (progress for now).
//!
//! Owns the per-call progress record. It must never block the guest or grow
//! without bound.

use serde::Serialize;

use crate::bindings::ToolHost;

/// Most progress updates kept per call; later ones replace the last.
const MAX_UPDATES: usize = 256;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProgressUpdate {
    pub done: u64,
    pub total: Option<u64>,
    pub message: Option<String>,
}

#[derive(Debug, Default)]
pub struct Progress {
    pub updates: Vec<ProgressUpdate>,
}

impl ToolHost for Progress {
    fn progress(&mut self, done: u64, total: Option<u64>, message: Option<String>) {
        let message = message.map(|mut m| {
            m.truncate(m.floor_char_boundary(1024));
            m
        });
        let update = ProgressUpdate {
            done,
            total,
            message,
        };
        if self.updates.len() < MAX_UPDATES {
            self.updates.push(update);
        } else if let Some(last) = self.updates.last_mut() {
            *last = update;
        }
    }
}

pub struct HasProgress;

impl wasmtime::component::HasData for HasProgress {
    type Data<'a> = &'a mut Progress;
}
