//! `warden:plugin/host`: warden's own services for tools: progress, and secrets by
//! placeholder or (where granted) reveal.
//!
//! Owns the per-call progress record. It must never block the guest, grow without
//! bound, or hand out a secret that is not granted for the use asked.

use crate::bindings::{SecretError, ToolHost};
use crate::call::ProgressUpdate;
use crate::grants::secrets::{CallSecrets, Redactor};

/// Most progress updates kept per call; later ones replace the last.
const MAX_UPDATES: usize = 256;
/// Longest progress message kept.
const MAX_MESSAGE: usize = 1024;

#[derive(Debug, Default)]
pub struct Progress {
    pub updates: Vec<ProgressUpdate>,
}

/// What the `host` interface sees of a call's state.
pub struct HostView<'a> {
    pub progress: &'a mut Progress,
    pub secrets: &'a mut CallSecrets,
    pub redactor: &'a Redactor,
}

impl ToolHost for HostView<'_> {
    fn secret_placeholder(&mut self, name: String) -> Result<String, SecretError> {
        self.secrets.placeholder(&name)
    }

    fn reveal_secret(&mut self, name: String) -> Result<String, SecretError> {
        let value = self.secrets.reveal(&name);
        if value.is_ok() {
            tracing::info!(secret = %name, "secret revealed to plugin");
        }
        value
    }

    fn progress(&mut self, done: u64, total: Option<u64>, message: Option<String>) {
        // Scrubbed before it is cut, so a cut never leaves part of a secret.
        let message = message.map(|m| self.redactor.bounded(&m, MAX_MESSAGE));
        self.progress.record(done, total, message);
    }
}

impl Progress {
    fn record(&mut self, done: u64, total: Option<u64>, message: Option<String>) {
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

pub struct HasHost;

impl wasmtime::component::HasData for HasHost {
    type Data<'a> = HostView<'a>;
}
