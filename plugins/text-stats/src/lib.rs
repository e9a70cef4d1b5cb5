//! `text_stats`: pure computation over a text (no capabilities needed). Written with the
//! typed SDK: the schemas agents see are derived from `Input` and `Stats`.
use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warden_guest::tool::ToolError;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Input {
    /// The text to measure.
    #[schemars(length(max = 1048576))]
    text: String,
    /// How many of the most frequent words to list.
    #[serde(default = "five")]
    #[schemars(range(max = 100))]
    top: u8,
}

fn five() -> u8 {
    5
}

#[derive(Serialize, JsonSchema)]
struct Stats {
    /// Unicode scalar values.
    chars: usize,
    bytes: usize,
    words: u64,
    lines: usize,
    /// The most frequent words, most frequent first.
    top_words: Vec<WordCount>,
}

#[derive(Serialize, JsonSchema)]
struct WordCount {
    word: String,
    count: u64,
}

/// Count characters, words and lines of a text and list its most frequent words.
#[warden_guest::tool(title = "Text statistics", read_only, idempotent)]
fn text_stats(input: Input) -> Result<Stats, ToolError> {
    let text = &input.text;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0u64;
    for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'') {
        if word.is_empty() {
            continue;
        }
        words += 1;
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(usize::from(input.top));

    Ok(Stats {
        chars: text.chars().count(),
        bytes: text.len(),
        words,
        lines: text.lines().count(),
        top_words: ranked
            .into_iter()
            .map(|(word, count)| WordCount { word, count })
            .collect(),
    })
}

warden_guest::export_tools!(text_stats);
