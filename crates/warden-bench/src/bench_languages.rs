//! `warden-bench languages`: one table for tools written in Rust, Python and JavaScript
//! (and a Rust and a Python policy): component size, compile time, load time from a warm
//! compile cache, a fresh-instance tool call, a governed call and the memory it needs.
//!
//! Needs `cargo guests` and `cargo xtask langs` first (examples/languages.toml names
//! their outputs).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use warden_core::bindings::{Action, Annotations};
use warden_core::call::{CallRequest, Outcome};
use warden_core::config::Config;
use warden_core::runtime::{Runtime, Shared};
use warden_core::sandbox::component;
use warden_core::sandbox::engine::EngineOptions;

#[derive(clap::Args)]
pub struct BenchLanguagesArgs {
    /// Measured calls per tool (after a warm-up).
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// Compilations per component without a cache (each takes seconds for Python).
    #[arg(long, default_value_t = 3)]
    compiles: usize,
}

/// (language, tool, input) measured; the config holds their plugins.
const TOOLS: [(&str, &str, &str); 3] = [
    (
        "Rust (#[tool])",
        "text_stats",
        r#"{"text":"the quick brown fox jumps over the lazy dog"}"#,
    ),
    (
        "Python (componentize-py)",
        "csv_to_json",
        r#"{"text":"item,qty\nwidget,3\ngadget,5\n"}"#,
    ),
    (
        "JavaScript (componentize-js)",
        "md_outline",
        "{\"markdown\":\"# Title\\n\\nSome [link](https://example.com).\\n## Part\\n\"}",
    ),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

/// Median compile time without a cache, and median load time from a warm one.
fn compile_and_load(
    uncached: &Shared,
    warm: &Shared,
    path: &Path,
    compiles: usize,
) -> Result<(Duration, Duration)> {
    let mut compile = Vec::new();
    for _ in 0..compiles.max(1) {
        let t = Instant::now();
        component::load(&uncached.engine, &uncached.cache, path, None)?;
        compile.push(t.elapsed());
    }
    component::load(&warm.engine, &warm.cache, path, None)?;
    let mut load = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        component::load(&warm.engine, &warm.cache, path, None)?;
        load.push(t.elapsed());
    }
    Ok((percentile(&mut compile, 0.5), percentile(&mut load, 0.5)))
}

pub async fn run(config: &Path, args: &BenchLanguagesArgs) -> Result<ExitCode> {
    let rt = Runtime::load(Config::load(config)?).await?;
    // Engines configured as the server's, for compiling and loading on their own: one
    // without a cache, one with a cache of its own (emptied at the end).
    let uncached = Shared::new(EngineOptions::default(), None)?;
    let cache_dir = std::env::temp_dir().join(format!("warden-bench-cache-{}", std::process::id()));
    let warm = Shared::new(EngineOptions::default(), Some(&cache_dir))?;
    let warmup = (args.iterations / 10).max(20);
    println!(
        "| tool | component | compile (no cache) | load (warm cache) | tool call p50 / p99 (fresh instance) | first call | governed call p50 | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (lang, tool, input) in TOOLS {
        let plugin = rt
            .plugin_for(tool)
            .with_context(|| format!("{}: no tool {tool}", config.display()))?;
        let size = std::fs::metadata(&plugin.path)?.len();
        let (compile, load) = compile_and_load(&uncached, &warm, &plugin.path, args.compiles)?;
        let t = Instant::now();
        let first = plugin.invoke(tool, input, None).await;
        let first_call = t.elapsed();
        if let Err(e) = &first.result {
            bail!("{tool}: the benchmark call fails: {e}");
        }
        let mut samples = Vec::with_capacity(args.iterations);
        let mut peak = first.peak_memory;
        for i in 0..warmup + args.iterations {
            let t = Instant::now();
            let run = plugin.invoke(tool, input, None).await;
            let took = t.elapsed();
            run.result.map_err(|e| anyhow::anyhow!("{tool}: {e}"))?;
            peak = peak.max(run.peak_memory);
            if i >= warmup {
                samples.push(took);
            }
        }
        let (p50, p99) = (
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99),
        );
        let request = CallRequest {
            principal: "bench",
            tool,
            input,
            started_by: None,
        };
        let mut governed = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            match rt.call(request).await?.outcome {
                Outcome::Ok { .. } => governed.push(t.elapsed()),
                other => bail!("{tool}: {}", serde_json::to_string(&other)?),
            }
        }
        println!(
            "| {lang}: `{tool}` | {:.1} MB | {:.0} ms | {:.1} ms | {:.0} / {:.0} µs | {:.1} ms | {:.0} µs | {:.1} MiB |",
            size as f64 / 1e6,
            ms(compile),
            ms(load),
            us(p50),
            us(p99),
            ms(first_call),
            us(percentile(&mut governed, 0.5)),
            peak as f64 / f64::from(1 << 20),
        );
    }

    println!();
    println!("| policy | component | decision p50 / p99 (fresh instance) |");
    println!("|---|---|---|");
    for policy in rt.policies_for("fetch_json") {
        let size = std::fs::metadata(&policy.path)?.len();
        let action = Action {
            principal: "bench".into(),
            tool: "send_payment".into(),
            plugin: "bench".into(),
            plugin_digest: "sha256:0".into(),
            input: r#"{"amount": 250}"#.into(),
            annotations: Annotations {
                read_only: false,
                destructive: false,
                idempotent: false,
                open_world: false,
            },
            time_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
            config: policy.config.clone(),
            usage: "{}".into(),
        };
        let mut samples = Vec::with_capacity(args.iterations);
        for i in 0..warmup + args.iterations {
            let t = Instant::now();
            let decided = policy.evaluate(&action).await;
            if let Some(why) = decided.failure {
                bail!("policy {} failed: {why}", policy.id);
            }
            if i >= warmup {
                samples.push(t.elapsed());
            }
        }
        println!(
            "| `{}` | {:.2} MB | {:.0} / {:.0} µs |",
            policy.id,
            size as f64 / 1e6,
            us(percentile(&mut samples, 0.5)),
            us(percentile(&mut samples, 0.99)),
        );
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok(ExitCode::SUCCESS)
}
