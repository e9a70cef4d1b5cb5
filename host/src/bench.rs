//! `warden bench`: in-process measurements of the governed path, for BENCHMARKS.md.
//! Figures are medians and percentiles over many iterations, never single timings.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use warden::bindings::Action;
use warden::call::{CallRequest, Outcome};
use warden::config::Config;
use warden::runtime::Runtime;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The tool to call (a pure tool measures the runtime, not the tool).
    #[arg(long, default_value = "text_stats")]
    tool: String,
    /// Input JSON for the tool.
    #[arg(
        long,
        default_value = r#"{"text":"the quick brown fox jumps over the lazy dog"}"#
    )]
    input: String,
    /// Measured iterations per scenario (after a warm-up).
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// Thread counts for the throughput scenario, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

fn line(name: &str, s: &Stats) {
    println!(
        "{name:<48} p50 {:>8.1} µs   p90 {:>8.1} µs   p99 {:>8.1} µs",
        s.p50.as_secs_f64() * 1e6,
        s.p90.as_secs_f64() * 1e6,
        s.p99.as_secs_f64() * 1e6
    );
}

pub async fn run(config: &Path, args: &BenchArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let rt = Arc::new(Runtime::load(Config::load(config)?).await?);
    println!(
        "loaded {} in {} ms",
        config.display(),
        started.elapsed().as_millis()
    );
    let plugin = rt
        .plugin_for(&args.tool)
        .with_context(|| format!("no tool {}", args.tool))?;
    let tool = plugin.tool(&args.tool).context("tool vanished")?;
    let policies: Vec<_> = rt.policies_for(&args.tool).collect();
    println!(
        "tool {} (plugin {}), {} policies in scope, {} iterations",
        args.tool,
        plugin.id,
        policies.len(),
        args.iterations
    );
    let request = CallRequest {
        principal: "bench",
        tool: &args.tool,
        input: &args.input,
    };
    let first = rt.call(request).await?;
    if !matches!(first.outcome, Outcome::Ok { .. }) {
        bail!(
            "the benchmark call does not succeed: {}",
            serde_json::to_string(&first.outcome)?
        );
    }
    let warmup = (args.iterations / 10).max(50);

    if let Some(policy) = policies.first() {
        let action = Action {
            principal: "bench".into(),
            tool: args.tool.clone(),
            plugin: plugin.id.clone(),
            plugin_digest: plugin.digest.clone(),
            input: args.input.clone(),
            annotations: tool.annotations,
            time_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
            config: policy.config.clone(),
            usage: "{}".into(),
        };
        let mut samples = Vec::with_capacity(args.iterations);
        for i in 0..warmup + args.iterations {
            let t = Instant::now();
            let decision = policy.evaluate(&action).await;
            if i >= warmup {
                samples.push(t.elapsed());
            }
            if decision.failure.is_some() {
                bail!("policy {} failed: {:?}", policy.id, decision.failure);
            }
        }
        line(
            &format!("policy decision alone ({}, fresh instance)", policy.id),
            &stats(samples),
        );
    }

    let mut samples = Vec::with_capacity(args.iterations);
    for i in 0..warmup + args.iterations {
        let t = Instant::now();
        let run = plugin.invoke(&args.tool, &args.input).await;
        if i >= warmup {
            samples.push(t.elapsed());
        }
        run.result.map_err(|f| anyhow::anyhow!("{f}"))?;
    }
    line(
        "tool call alone (fresh instance, no policy)",
        &stats(samples),
    );

    let mut samples = Vec::with_capacity(args.iterations);
    for i in 0..warmup + args.iterations {
        let t = Instant::now();
        let report = rt.call(request).await?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
        if !matches!(report.outcome, Outcome::Ok { .. }) {
            bail!("call failed during the benchmark");
        }
    }
    line(
        &format!(
            "governed call ({} policies + fresh tool instance)",
            policies.len()
        ),
        &stats(samples),
    );

    for &threads in &args.threads {
        let per_thread = args.iterations.max(threads) / threads;
        let started = Instant::now();
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let rt = rt.clone();
                    scope.spawn(move || -> Result<()> {
                        let local = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        local.block_on(async {
                            for _ in 0..per_thread {
                                rt.call(request).await?;
                            }
                            Ok(())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                })
                .collect()
        });
        for r in results {
            r?;
        }
        let elapsed = started.elapsed();
        let calls = per_thread * threads;
        println!(
            "{:<48} {:>10.0} calls/s ({calls} calls in {:.2} s)",
            format!("governed calls, {threads} thread(s)"),
            calls as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
