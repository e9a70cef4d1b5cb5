//! `warden:plugin/log`: structured log lines from tools and policies.
//!
//! Owns the bounded per-call log. It must never write to the host's stdout or
//! stderr, and never grow past its byte budget (extra lines are counted, not kept).

use crate::bindings::{Level, LogHost};
use crate::call::LogLine;

/// One call's log: guest log lines and its captured stdout/stderr.
#[derive(Debug, Default)]
pub struct GuestLog {
    lines: Vec<LogLine>,
    bytes: usize,
    budget: usize,
    /// Lines (or output) dropped because the budget was spent.
    pub dropped: u64,
}

impl GuestLog {
    pub fn new(budget_bytes: usize) -> GuestLog {
        GuestLog {
            budget: budget_bytes,
            ..GuestLog::default()
        }
    }

    pub fn push(&mut self, line: LogLine) {
        let size = line.message.len()
            + line
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if self.bytes + size > self.budget {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.lines.push(line);
    }

    /// Append a line outside the budget: captured output (bounded by its own budget)
    /// and the host's notes about what was dropped.
    pub fn push_unbudgeted(&mut self, line: LogLine) {
        self.lines.push(line);
    }

    pub fn into_lines(self) -> Vec<LogLine> {
        self.lines
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl LogHost for GuestLog {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.push(LogLine {
            level: level_name(level),
            source: "log",
            message,
            fields,
        });
    }
}

/// Linker plumbing: the log interface sees only the store's `GuestLog`.
pub struct HasLog;

impl wasmtime::component::HasData for HasLog {
    type Data<'a> = &'a mut GuestLog;
}
