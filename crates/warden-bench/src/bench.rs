//! `warden-bench in-process`: in-process measurements of the governed path, for BENCHMARKS.md.
//! Figures are medians and percentiles over many iterations, never single timings.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use warden_core::bindings::Action;
use warden_core::call::{CallRequest, Outcome};
use warden_core::config::Config;
use warden_core::runtime::Runtime;

/// The call every benchmark makes (`in-process` and `mcp`).
#[derive(clap::Args)]
pub struct BenchCall {
    /// The tool to call (a pure tool measures the runtime, not the tool).
    #[arg(long, default_value = "text_stats")]
    pub tool: String,
    /// Input JSON for the tool.
    #[arg(
        long,
        default_value = r#"{"text":"the quick brown fox jumps over the lazy dog"}"#
    )]
    pub input: String,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    call: BenchCall,
    /// Measured iterations per scenario (after a warm-up).
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// Thread counts for the throughput scenario, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Run only these scenarios (to profile one of them).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One policy decision alone.
    Policy,
    /// One tool call alone, without policies.
    Tool,
    /// Governed calls, one after another.
    Call,
    /// Governed calls from several threads at once.
    Throughput,
    /// Preparing one outgoing request, with and without secret grants (no config needed).
    Egress,
    /// Audit log throughput, size per record, and governed calls with audit on vs off.
    Audit,
    /// Held calls through the queue (enqueue + decide + execute), and what the queue
    /// adds to an auto-tier call.
    Approvals,
    /// What ten limits add to a governed call, and one hot limit's decisions/s.
    Budgets,
}

/// Time `iterations` runs of `f` after `warmup` untimed ones and print the percentiles.
async fn measure<F, Fut>(name: &str, warmup: usize, iterations: usize, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        f().await?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    line(name, &stats(samples));
    Ok(())
}

pub(crate) struct Stats {
    pub(crate) p50: Duration,
    p90: Duration,
    p99: Duration,
}

pub(crate) fn stats(mut samples: Vec<Duration>) -> Stats {
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
    if args.only.is_empty() || args.only.contains(&Scenario::Egress) {
        egress(args.iterations)?;
        if args.only == [Scenario::Egress] {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let started = Instant::now();
    let rt = Arc::new(Runtime::load(Config::load(config)?).await?);
    println!(
        "loaded {} in {} ms",
        config.display(),
        started.elapsed().as_millis()
    );
    let plugin = rt
        .plugin_for(&args.call.tool)
        .with_context(|| format!("no tool {}", args.call.tool))?;
    let tool = plugin.tool(&args.call.tool).context("tool vanished")?;
    let policies: Vec<_> = rt.policies_for(&args.call.tool).collect();
    println!(
        "tool {} (plugin {}), {} policies in scope, {} iterations",
        args.call.tool,
        plugin.id,
        policies.len(),
        args.iterations
    );
    let request = CallRequest {
        principal: "bench",
        tool: &args.call.tool,
        input: &args.call.input,
        started_by: None,
    };
    let first = rt.call(request).await?;
    if !matches!(first.outcome, Outcome::Ok { .. }) {
        bail!(
            "the benchmark call does not succeed: {}",
            serde_json::to_string(&first.outcome)?
        );
    }
    let warmup = (args.iterations / 10).max(50);
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);

    if let Some(policy) = policies.first().filter(|_| wanted(Scenario::Policy)) {
        let action = Action {
            principal: "bench".into(),
            tool: args.call.tool.clone(),
            plugin: plugin.id.clone(),
            plugin_digest: plugin.digest.clone(),
            input: args.call.input.clone(),
            annotations: tool.annotations,
            time_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
            config: policy.config.clone(),
            usage: "{}".into(),
        };
        let name = format!("policy decision alone ({}, fresh instance)", policy.id);
        measure(&name, warmup, args.iterations, || async {
            match policy.evaluate(&action).await.failure {
                None => Ok(()),
                Some(why) => Err(anyhow::anyhow!("policy {} failed: {why}", policy.id)),
            }
        })
        .await?;
    }
    if wanted(Scenario::Tool) {
        measure(
            "tool call alone (fresh instance, no policy)",
            warmup,
            args.iterations,
            || async {
                plugin
                    .invoke(&args.call.tool, &args.call.input, None)
                    .await
                    .result
                    .map(drop)
                    .map_err(|f| anyhow::anyhow!("{f}"))
            },
        )
        .await?;
    }
    if wanted(Scenario::Call) {
        let name = format!(
            "governed call ({} policies + fresh tool instance)",
            policies.len()
        );
        measure(&name, warmup, args.iterations, || async {
            match rt.call(request).await?.outcome {
                Outcome::Ok { .. } => Ok(()),
                other => Err(anyhow::anyhow!(
                    "call did not succeed: {}",
                    serde_json::to_string(&other)?
                )),
            }
        })
        .await?;
    }

    if wanted(Scenario::Approvals) {
        approvals(config, args, &rt).await?;
    }
    if wanted(Scenario::Budgets) {
        crate::bench_budgets::run(config, &args.call, args.iterations).await?;
    }
    if wanted(Scenario::Audit) {
        disk_floor(&rt.config.data_dir)?;
        audit_throughput(&rt.config.data_dir.join("bench-audit")).await?;
        audit_on_off(config, args).await?;
    }
    for &threads in args.threads.iter().filter(|_| wanted(Scenario::Throughput)) {
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

/// What the egress hook adds to one outgoing request: the grant check, then secrets.
/// Timed over batches of 1,000 requests (per-request times are too short for a clock).
fn egress(iterations: usize) -> Result<()> {
    use std::collections::HashMap;
    use warden_core::grants::http::{HostPattern, HttpGrant, permitted};
    use warden_core::grants::secrets::{CallSecrets, PluginSecrets, SecretGrant, SecretUse};
    use zeroize::Zeroizing;

    let http = [HttpGrant::parse("https://api.example.com").map_err(anyhow::Error::msg)?];
    let host = HostPattern::parse("api.example.com").map_err(anyhow::Error::msg)?;
    let value = || {
        HashMap::from([(
            "token".to_string(),
            Zeroizing::new("sk-live-0123456789abcdef".to_string()),
        )])
    };
    let grant = |usage| SecretGrant {
        secret: "token".into(),
        hosts: vec![host.clone()],
        usage,
        span: 0,
    };
    let header = SecretUse::Header {
        name: http::header::AUTHORIZATION,
        format: "Bearer {}".into(),
    };
    let placeholder = SecretUse::Placeholder {
        query: true,
        body: false,
    };
    let cases: [(&str, Arc<PluginSecrets>); 3] = [
        ("no secret grant", Arc::default()),
        (
            "header injection",
            Arc::new(PluginSecrets::new(vec![grant(header)], value())),
        ),
        (
            "placeholder in a header",
            Arc::new(PluginSecrets::new(vec![grant(placeholder)], value())),
        ),
    ];
    let batch = 1000;
    let mut medians = Vec::new();
    for (name, secrets) in cases {
        let mut call = CallSecrets::new(secrets);
        let token = call.placeholder("token").ok();
        let mut samples = Vec::with_capacity(iterations / 10);
        for _ in 0..(iterations / 10).max(100) {
            let t = Instant::now();
            for _ in 0..batch {
                let mut request = http::Request::builder()
                    .uri("https://api.example.com/v1/items?page=2")
                    .header("accept", "application/json")
                    .header("x-api-key", token.as_deref().unwrap_or("none"))
                    .body(())?;
                if !permitted(&http, request.uri()) {
                    bail!("benchmark request not permitted");
                }
                call.prepare(&mut request).map_err(anyhow::Error::msg)?;
                std::hint::black_box(&request);
            }
            samples.push(t.elapsed() / batch);
        }
        let s = stats(samples);
        medians.push(s.p50);
        line(&format!("egress: build + check + {name}"), &s);
    }
    println!(
        "egress: added by header injection {:.2} µs, by placeholder substitution {:.2} µs (p50 differences)",
        (medians[1].as_secs_f64() - medians[0].as_secs_f64()) * 1e6,
        (medians[2].as_secs_f64() - medians[0].as_secs_f64()) * 1e6
    );
    Ok(())
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What durability costs on this disk, whatever warden does: write one audit-sized
/// record and `fdatasync`, over and over, in wall time and in this thread's CPU, both
/// appending (the file grows: the size change is journaled too) and over blocks zeroed
/// beforehand (what the audit log's live segment does). A call that must be durable
/// before it returns, one at a time, costs at least the second.
fn disk_floor(dir: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench-fsync-probe");
    let record = [b'x'; 2048];
    for zeroed in [false, true] {
        let file = std::fs::File::create(&path)?;
        if zeroed {
            file.write_all_at(&vec![0u8; 2048 * 2000], 0)?;
            file.sync_all()?;
        }
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for i in 0..2000u64 {
            let (t, c) = (Instant::now(), thread_cpu());
            file.write_all_at(&record, i * 2048)?;
            file.sync_data()?;
            wall.push(t.elapsed().as_secs_f64() * 1e6);
            cpu.push((thread_cpu() - c).as_secs_f64() * 1e6);
        }
        drop(file);
        std::fs::remove_file(&path)?;
        println!(
            "disk: {} 2 KiB + fdatasync p50 {:.0} µs wall, {:.0} µs CPU (median of 2000{})",
            if zeroed { "overwrite zeroed" } else { "append" },
            median(wall),
            median(cpu),
            if zeroed {
                "; the floor of one durable call at a time"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Records/s through the audit writer with many concurrent appenders (group commit),
/// with signed checkpoints (every 1,000 records) and without, alternating; bytes on
/// disk per record; what one checkpoint signature costs; and how fast `verify` reads.
async fn audit_throughput(dir: &Path) -> Result<()> {
    let keys = dir.with_extension("keys");
    let signer = Arc::new(
        warden_core::store::audit::Signer::open(&keys.join("audit-signing.key"))
            .map_err(anyhow::Error::msg)?,
    );
    let rounds = 3;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.push(audit_round(dir, None).await?);
        with.push(audit_round(dir, Some(signer.clone())).await?);
    }
    let (rate_with, bytes) = with[with.len() / 2];
    println!(
        "audit: {:.0} records/s durable with a signed checkpoint every 1000 records, {:.0} without (medians of {rounds} alternating rounds of {} records from 16 appenders); {bytes} bytes/record on disk",
        median(with.iter().map(|w| w.0).collect()),
        median(without.iter().map(|w| w.0).collect()),
        16 * 100 * 128,
    );
    let _ = rate_with;
    // What one checkpoint costs the writer: the Ed25519 signature.
    let n = 2000;
    let started = Instant::now();
    for i in 0..n {
        std::hint::black_box(signer.checkpoint(i, &"ab".repeat(32), i, 1000));
    }
    println!(
        "audit: one checkpoint signature {:.1} µs (Ed25519, mean of {n})",
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // Verify speed, on the last log written (with checkpoints), trusting the key.
    let options = warden_core::store::audit::VerifyOptions {
        trusted_keys: vec![signer.public().to_string()],
        no_head: false,
        witness: None,
    };
    let mut speeds = Vec::new();
    let mut records = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let verified = warden_core::store::audit::verify(dir, &options)?;
        if let Some(p) = verified.problem {
            bail!("benchmark log does not verify: {p:?}");
        }
        records = verified.records;
        speeds.push(verified.records as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "audit verify: {:.0} records/s ({records} records with their checkpoints, median of 3)",
        median(speeds)
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(&keys);
    Ok(())
}

/// One round of the audit throughput bench: (records/s, bytes per record).
async fn audit_round(
    dir: &Path,
    signer: Option<Arc<warden_core::store::audit::Signer>>,
) -> Result<(f64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut options = warden_core::store::audit::AuditOptions::new(1 << 30);
    options.signer = signer;
    let log = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            warden_core::store::audit::AuditLog::open(&dir, options)
        })
        .await??
    };
    let record = |i: usize| {
        let mut e = warden_core::store::audit::Entry::new("host-call");
        e.num("ts_ms", 1_795_000_000_000u64 + i as u64)
            .str("run", "run-18eba59c816310c9-02b04-0")
            .str("component", "plugin:http-fetch")
            .str("digest", &format!("sha256:{}", "ab".repeat(32)))
            .str("interface", "types")
            .str("function", "[method]descriptor.open-at")
            .str(
                "args",
                "self=Resource { handle: 3 } path=\"notes/welcome.txt\"",
            )
            .str("result", "Ok(Resource { handle: 4 })")
            .str("outcome", "ok")
            .num("duration_us", 12);
        e
    };
    let (producers, batches, per_batch) = (16, 100, 128);
    let total = producers * batches * per_batch;
    let started = Instant::now();
    {
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let log = log.clone();
                tokio::spawn(async move {
                    for b in 0..batches {
                        let records = (0..per_batch)
                            .map(|i| record((p * batches + b) * per_batch + i))
                            .collect();
                        log.append(records).await?;
                    }
                    Ok::<(), warden_core::store::audit::AuditError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
    }
    let elapsed = started.elapsed();
    log.close();
    let bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    Ok((total as f64 / elapsed.as_secs_f64(), bytes / total as u64))
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Run `one` `per_task` times over in each of `concurrency` tasks at once; how long
/// they all took.
/// Hold every call of `config` (soft tier) for `bench-approver`.
pub(crate) fn hold_every_call(config: &mut Config) {
    config.approvals.approvers = vec!["bench-approver".into()];
    for policy in &mut config.policies {
        if let Some(table) = policy.config.as_object_mut() {
            table.insert("default".into(), "soft".into());
        }
    }
}

/// `bench-approver` approves `held` through `rt`'s queue.
pub(crate) async fn approve(rt: &Runtime, held: &warden_core::call::ApprovalRef) -> Result<()> {
    use warden_core::governance::approvals::{Ballot, Choice};
    let ballot = Ballot {
        principal: "bench-approver",
        choice: Choice::Approve,
        reason: None,
        via: "api",
        input_sha256: &held.input_sha256,
        on_behalf_of: None,
        now_ms: warden_core::now_ms() as i64,
    };
    let queue = rt.approvals.as_ref().context("queue disabled")?;
    queue
        .decide(&rt.config.approvals, &held.id, &ballot)
        .await?;
    Ok(())
}

pub(crate) async fn in_flight<F, Fut>(
    concurrency: usize,
    per_task: usize,
    one: F,
) -> Result<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    one().await?;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Governed calls/s with audit on and off, `concurrency` calls in flight over two
/// threads (the way a server runs): group commit shares each fsync among them.
async fn audit_on_off(config: &Path, args: &BenchArgs) -> Result<()> {
    let mut on_config = Config::load(config)?;
    on_config.audit.enabled = true;
    on_config.audit.dir = on_config.data_dir.join("bench-audit-calls");
    let _ = std::fs::remove_dir_all(&on_config.audit.dir);
    let on = &Arc::new(Runtime::load(on_config).await?);
    let mut off_config = Config::load(config)?;
    off_config.audit.enabled = false;
    let off = Arc::new(Runtime::load(off_config).await?);
    let calls = args.iterations.max(1000);
    let call = Arc::new((args.call.tool.clone(), args.call.input.clone()));
    // Alternating on and off rounds, ratio per pair, median of the pairs: this machine's
    // speed drifts by tens of percent between seconds, which a single on-then-off
    // comparison reads as a difference between them.
    const ROUNDS: usize = 5;
    for concurrency in [1usize, 64, 256] {
        let per_task = (calls / ROUNDS / concurrency).max(1);
        let (mut on_rates, mut off_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut on_cpu, mut cpu_ratios) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (mut pair, mut cpu_pair) = ([0.0; 2], [0.0; 2]);
            for (slot, rt) in [on, &off].into_iter().enumerate() {
                let cpu = crate::bench_mcp::cpu_ns(std::process::id())?;
                let (rt, call) = (rt.clone(), call.clone());
                let elapsed = in_flight(concurrency, per_task, move || {
                    let (rt, call) = (rt.clone(), call.clone());
                    async move {
                        rt.call(CallRequest {
                            principal: "bench",
                            tool: &call.0,
                            input: &call.1,
                            started_by: None,
                        })
                        .await?;
                        Ok(())
                    }
                })
                .await?;
                let n = (per_task * concurrency) as f64;
                pair[slot] = n / elapsed.as_secs_f64();
                // CPU as well as wall time: a round that leaves cores idle shows here.
                let used = crate::bench_mcp::cpu_ns(std::process::id())?.saturating_sub(cpu);
                cpu_pair[slot] = used as f64 / n / 1e3;
            }
            on_cpu.push(cpu_pair[0]);
            cpu_ratios.push(cpu_pair[0] / cpu_pair[1]);
            on_rates.push(pair[0]);
            off_rates.push(pair[1]);
            ratios.push(pair[1] / pair[0]);
        }
        println!(
            "governed calls, {concurrency:>3} in flight: audit on {:>7.0} calls/s ({:.0} µs CPU each, {:.2}x off's), off {:>7.0} calls/s: on takes {:.2}x the time of off (median of {ROUNDS} alternating pairs; pairs {})",
            median(on_rates),
            median(on_cpu),
            median(cpu_ratios),
            median(off_rates),
            median(ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    Ok(())
}

/// What the approval machinery adds to an auto-tier call (queue enabled vs disabled,
/// alternating rounds), and held calls/s through enqueue + decide + execute, with the
/// durable audit log on as in production.
async fn approvals(config: &Path, args: &BenchArgs, rt: &Arc<Runtime>) -> Result<()> {
    use warden_core::runtime::driver::Resume;

    let mut off_config = Config::load(config)?;
    off_config.approvals.enabled = false;
    let off = Runtime::load(off_config).await?;
    let request = CallRequest {
        principal: "bench",
        tool: &args.call.tool,
        input: &args.call.input,
        started_by: None,
    };
    let (mut on_p50, mut off_p50) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (which, runtime) in [(&mut on_p50, &**rt), (&mut off_p50, &off)] {
            let mut samples = Vec::with_capacity(args.iterations);
            for i in 0..args.iterations + 100 {
                let t = Instant::now();
                runtime.call(request).await?;
                if i >= 100 {
                    samples.push(t.elapsed());
                }
            }
            which.push(stats(samples).p50);
        }
    }
    on_p50.sort_unstable();
    off_p50.sort_unstable();
    println!(
        "auto-tier governed call: approval queue on p50 {:.1} µs, off {:.1} µs: adds {:.2} µs (median of 3 alternating rounds)",
        on_p50[1].as_secs_f64() * 1e6,
        off_p50[1].as_secs_f64() * 1e6,
        (on_p50[1].as_secs_f64() - off_p50[1].as_secs_f64()) * 1e6
    );
    drop(off);

    let mut held_config = Config::load(config)?;
    held_config.audit.enabled = true;
    held_config.audit.dir = held_config.data_dir.join("bench-audit-held");
    held_config.runs_db = held_config.data_dir.join("bench-held.db");
    let _ = std::fs::remove_dir_all(&held_config.audit.dir);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", held_config.runs_db.display()));
    }
    hold_every_call(&mut held_config);
    let held = Arc::new(Runtime::load(held_config).await?);
    let call = Arc::new((args.call.tool.clone(), args.call.input.clone()));
    let calls = (args.iterations / 5).max(500);
    for concurrency in [1usize, 16, 64] {
        let per_task = calls / concurrency;
        let (rt, call) = (held.clone(), call.clone());
        let elapsed = in_flight(concurrency, per_task, move || {
            let (rt, call) = (rt.clone(), call.clone());
            async move {
                let report = rt
                    .call(CallRequest {
                        principal: "bench",
                        tool: &call.0,
                        input: &call.1,
                        started_by: None,
                    })
                    .await?;
                let held = report.approval.context("the benchmark call was not held")?;
                let id = held.id.clone();
                approve(&rt, &held).await?;
                match rt.resume(&id).await? {
                    Resume::Ran(report) if matches!(report.outcome, Outcome::Ok { .. }) => Ok(()),
                    other => bail!("approved call did not run: {other:?}"),
                }
            }
        })
        .await?;
        let n = per_task * concurrency;
        println!(
            "{:<48} {:>10.0} calls/s ({n} in {:.2} s)",
            format!("held calls (enqueue+decide+execute), {concurrency} in flight"),
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}
