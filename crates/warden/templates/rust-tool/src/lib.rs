//! `{{snake}}`: a warden tool. Its input and output schemas are derived from `Input`
//! and `Output`, its description from the doc comment: change a type and the schema
//! agents see changes with it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warden_guest::tool::ToolError;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// Who to greet.
    #[schemars(length(min = 1, max = 100))]
    name: String,
    /// How many times.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    times: u32,
}

fn one() -> u32 {
    1
}

#[derive(Serialize, JsonSchema)]
struct Output {
    greeting: String,
}

/// Greet someone (replace this with what your tool does: agents read this text).
#[warden_guest::tool(read_only, idempotent)]
fn {{snake}}(input: Input) -> Result<Output, ToolError> {
    if input.name.trim().is_empty() {
        return Err(ToolError::invalid_input("the name is blank"));
    }
    let greeting = vec![format!("Hello, {}!", input.name); input.times as usize].join(" ");
    Ok(Output { greeting })
}

warden_guest::export_tools!({{snake}});
