//! Tools as typed functions (feature `sdk`): what `#[tool]` and `export_tools!` expand to.
//!
//! ```ignore
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use warden_guest::tool::ToolError;
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Input {
//!     /// The text to count.
//!     text: String,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct Count {
//!     words: usize,
//! }
//!
//! /// Count the words of a text.
//! #[warden_guest::tool(read_only, idempotent)]
//! fn word_count(input: Input) -> Result<Count, ToolError> {
//!     Ok(Count { words: input.text.split_whitespace().count() })
//! }
//!
//! warden_guest::export_tools!(word_count);
//! ```
//!
//! The input schema is the JSON Schema (draft 2020-12) schemars derives for the
//! argument's type; field doc comments become descriptions, `#[serde(default)]` makes a
//! field optional, `#[serde(deny_unknown_fields)]` refuses unknown ones, and
//! `#[schemars(range(max = 100), length(max = 1024), regex(pattern = ..))]` bound
//! values (warden validates input against the schema before any policy or the tool
//! runs). The output schema is the return type's, promised only when it is an object.
//! This module owns the glue between JSON text and those types; it grants nothing, and
//! it must never panic on input: a bad input is an `invalid-input` tool error.

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::tool::{Annotations, ToolError, ToolSpec};

pub use schemars;
pub use serde;
pub use serde_json;

/// One `#[tool]` function, as `export_tools!` sees it.
#[doc(hidden)]
pub struct Tool {
    pub name: &'static str,
    pub title: Option<&'static str>,
    pub description: &'static str,
    pub annotations: Annotations,
    pub input_schema: fn() -> Value,
    pub output_schema: fn() -> Option<Value>,
    pub call: fn(&str) -> Result<String, ToolError>,
}

impl Tool {
    /// The spec warden reads from `describe`.
    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            title: self.title.map(Into::into),
            description: self.description.into(),
            input_schema: (self.input_schema)().to_string(),
            output_schema: (self.output_schema)().map(|s| s.to_string()),
            annotations: self.annotations,
        }
    }
}

/// The schema of `T` (draft 2020-12), without the root's `title` (schemars puts the
/// Rust type's name there, which says nothing to an agent).
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("title");
    }
    schema
}

#[doc(hidden)]
pub fn input_schema_of<T: schemars::JsonSchema>() -> Value {
    schema_of::<T>()
}

/// MCP promises structured output only as an object; anything else goes out unpromised.
#[doc(hidden)]
pub fn output_schema_of<T: schemars::JsonSchema>() -> Option<Value> {
    let schema = schema_of::<T>();
    (schema.get("type").and_then(Value::as_str) == Some("object")).then_some(schema)
}

/// The input of a tool that takes none: an empty object, nothing else.
#[doc(hidden)]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoInput {}

#[doc(hidden)]
pub fn no_input_schema() -> Value {
    serde_json::json!({ "type": "object", "properties": {}, "additionalProperties": false })
}

#[doc(hidden)]
pub fn parse_input<T: DeserializeOwned>(input: &str) -> Result<T, ToolError> {
    serde_json::from_str(input).map_err(|e| ToolError::new("invalid-input", e.to_string()))
}

#[doc(hidden)]
pub fn to_output<T: Serialize>(output: &T) -> Result<String, ToolError> {
    serde_json::to_string(output)
        .map_err(|e| ToolError::new("internal", format!("the tool's output: {e}")))
}

#[doc(hidden)]
pub fn describe(tools: &[Tool]) -> Vec<ToolSpec> {
    tools.iter().map(Tool::spec).collect()
}

#[doc(hidden)]
pub fn invoke(tools: &[Tool], name: &str, input: &str) -> Result<String, ToolError> {
    match tools.iter().find(|t| t.name == name) {
        Some(tool) => (tool.call)(input),
        None => Err(ToolError::new(
            "unknown-tool",
            format!("no tool named {name}"),
        )),
    }
}

impl ToolError {
    /// The input was well-formed but unusable (the schema let it through).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new("invalid-input", message)
    }

    /// What the input names does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not-found", message)
    }

    /// A system the tool talks to failed or refused.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new("upstream", message)
    }
}

// `?` on the errors a tool meets most. A tool that wants its own code uses
// `ToolError::new` or `map_err`.
impl From<String> for ToolError {
    fn from(message: String) -> Self {
        Self::new("failed", message)
    }
}

impl From<&str> for ToolError {
    fn from(message: &str) -> Self {
        Self::new("failed", message)
    }
}

impl From<serde_json::Error> for ToolError {
    fn from(e: serde_json::Error) -> Self {
        Self::new("invalid-data", e.to_string())
    }
}

impl From<std::io::Error> for ToolError {
    fn from(e: std::io::Error) -> Self {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => "not-found",
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                "permission-denied"
            }
            std::io::ErrorKind::AlreadyExists => "already-exists",
            _ => "io",
        };
        Self::new(code, e.to_string())
    }
}

impl From<core::num::ParseIntError> for ToolError {
    fn from(e: core::num::ParseIntError) -> Self {
        Self::new("invalid-input", e.to_string())
    }
}

impl From<core::num::ParseFloatError> for ToolError {
    fn from(e: core::num::ParseFloatError) -> Self {
        Self::new("invalid-input", e.to_string())
    }
}

impl From<core::str::Utf8Error> for ToolError {
    fn from(e: core::str::Utf8Error) -> Self {
        Self::new("invalid-data", e.to_string())
    }
}

impl From<std::string::FromUtf8Error> for ToolError {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Self::new("invalid-data", e.to_string())
    }
}

impl From<crate::tool::SecretError> for ToolError {
    fn from(e: crate::tool::SecretError) -> Self {
        let message = match e {
            crate::tool::SecretError::NotFound => "the secret is not granted to this plugin",
            crate::tool::SecretError::WrongUse => "the secret is granted, but not for this use",
        };
        Self::new("secret", message)
    }
}
