//! `notes_*`: list, read and write text notes in the directory the operator grants
//! at `/notes`. Everything it can touch is that one preopened directory.
use std::fs;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warden_guest::tool::ToolError;

const ROOT: &str = "/notes";

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Named {
    /// The note's file name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    name: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewNote {
    /// The note's file name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))]
    name: String,
    #[schemars(length(max = 65536))]
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Listing {
    notes: Vec<Entry>,
}

#[derive(Serialize, JsonSchema)]
struct Entry {
    name: String,
    bytes: u64,
}

#[derive(Serialize, JsonSchema)]
struct Note {
    name: String,
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Written {
    name: String,
    bytes: usize,
}

/// List the notes (file names and sizes).
#[warden_guest::tool(read_only, idempotent)]
fn notes_list() -> Result<Listing, ToolError> {
    let mut notes = Vec::new();
    for entry in fs::read_dir(ROOT)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            notes.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                bytes: meta.len(),
            });
        }
    }
    notes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing { notes })
}

/// Read one note by name.
#[warden_guest::tool(read_only, idempotent)]
fn notes_read(input: Named) -> Result<Note, ToolError> {
    let name = checked(input.name)?;
    let text = fs::read_to_string(format!("{ROOT}/{name}"))?;
    Ok(Note { name, text })
}

/// Create or replace a note.
#[warden_guest::tool(destructive, idempotent)]
fn notes_write(input: NewNote) -> Result<Written, ToolError> {
    let name = checked(input.name)?;
    fs::write(format!("{ROOT}/{name}"), &input.text)?;
    warden_guest::log(warden_guest::Level::Info, &format!("wrote note {name}"));
    Ok(Written {
        name,
        bytes: input.text.len(),
    })
}

/// The schema already restricts names; this keeps the plugin safe on its own.
fn checked(name: String) -> Result<String, ToolError> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(ToolError::invalid_input(format!("bad note name {name:?}")));
    }
    Ok(name)
}

warden_guest::export_tools!(notes_list, notes_read, notes_write);
