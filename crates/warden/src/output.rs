//! What commands print, and what they read besides their arguments.
//!
//! Output goes to a locked stdout and is flushed, so a closed pipe surfaces as a
//! `BrokenPipe` error (`exit::is_broken_pipe`) instead of a panic.

use std::io::{Read, Write};

use anyhow::{Context, Result};

pub fn read_input(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading input from stdin")?;
        Ok(s)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading input from {path}"))
    } else {
        Ok(arg.to_string())
    }
}

pub fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
