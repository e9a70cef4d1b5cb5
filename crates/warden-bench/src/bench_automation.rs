//! `warden-bench automation`: schedules and triggers, for BENCHMARKS.md.
//!
//! - `lag`: N schedules firing every second, in process, through the governed path
//!   with the audit log on; the time from each fire time to its run's start.
//! - `idle`: the CPU an idle `warden serve` uses with N schedules that are not due,
//!   beside the same server with none.
//! - `triggers`: signed webhook deliveries per second through `warden serve` (signature
//!   check, delivery-id claim, governed call, audit), over keep-alive connections.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use warden_core::automation::scheduler::{Events, Scheduler};
use warden_core::automation::signature::sign;
use warden_core::config::{CatchUp, Config, Criteria, Overlap, ScheduleConfig};
use warden_core::cron::Timing;
use warden_core::runtime::Runtime;
use warden_core::store::automation::AutomationStore;

use crate::bench_mcp::{cpu_ns, warden_exe};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Lag,
    Idle,
    Triggers,
}

#[derive(clap::Args)]
pub struct BenchAutomationArgs {
    /// Schedules (every second for `lag`; not due for `idle`).
    #[arg(long, default_value_t = 1000)]
    schedules: usize,
    /// Seconds `lag` runs and `idle` is measured over.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Webhook deliveries for `triggers`.
    #[arg(long, default_value_t = 10_000)]
    deliveries: usize,
    /// Keep-alive connections sending them.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The `warden` binary to start (default: the one beside warden-bench).
    #[arg(long)]
    warden: Option<PathBuf>,
    /// Run only these parts.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

pub async fn run(config: &Path, args: &BenchAutomationArgs) -> Result<ExitCode> {
    let scratch =
        std::env::temp_dir().join(format!("warden-bench-automation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let part = |p| args.only.is_empty() || args.only.contains(&p);
    let result = async {
        if part(Part::Lag) {
            lag(config, args, &scratch.join("lag")).await?;
        }
        if part(Part::Idle) {
            idle(config, args, &scratch.join("idle")).await?;
        }
        if part(Part::Triggers) {
            triggers(config, args, &scratch.join("triggers")).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The text-stats plugin and the policy of `base`, as absolute paths.
fn components(base: &Path) -> Result<(PathBuf, PathBuf)> {
    let config = Config::load(base)?;
    let abs = |p: &Path| {
        p.canonicalize()
            .with_context(|| format!("{} (run `cargo guests` first)", p.display()))
    };
    let plugin = config
        .plugins
        .first()
        .context("the base config has no plugin")?;
    let policy = config
        .policies
        .first()
        .context("the base config has no policy")?;
    Ok((abs(&plugin.component)?, abs(&policy.component)?))
}

pub(crate) fn config_text(base: &Path, dir: &Path, extra: &str) -> Result<String> {
    let (plugin, policy) = components(base)?;
    let cache = Config::load(base)?.cache_dir;
    Ok(format!(
        r#"data_dir = {data:?}
key_dir = {keys:?}
cache_dir = {cache:?}

[[plugin]]
id = "text-stats"
component = {plugin:?}

[[policy]]
id = "tiers"
component = {policy:?}
[policy.config]
default = "auto"

{extra}
"#,
        data = dir.join("data").display().to_string(),
        keys = dir.join("keys").display().to_string(),
        cache = cache.display().to_string(),
        plugin = plugin.display().to_string(),
        policy = policy.display().to_string(),
    ))
}

#[derive(Default)]
struct Recorded {
    lags: Mutex<Vec<u64>>,
    skipped: AtomicU64,
    ok: AtomicU64,
    other: AtomicU64,
}

impl Events for Recorded {
    fn fired(&self, _: &str, _: &str, lag_ms: u64) {
        if let Ok(mut l) = self.lags.lock() {
            l.push(lag_ms);
        }
    }
    fn skipped(&self, _: &str, _: &str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }
    fn finished(&self, _: &str, status: &str) {
        if status == "ok" {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn lag(base: &Path, args: &BenchAutomationArgs, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("warden.toml");
    std::fs::write(&path, config_text(base, dir, "")?)?;
    let mut config = Config::load(&path)?;
    for i in 0..args.schedules {
        let name = format!("s{i}");
        config.schedules.push(ScheduleConfig {
            principal: format!("schedule:{name}"),
            name,
            timing: Timing::parse("* * * * * *", "UTC").map_err(anyhow::Error::msg)?,
            tool: "text_stats".into(),
            input: json!({ "text": "the quick brown fox" }),
            jitter_ms: 0,
            overlap: Overlap::Skip,
            catch_up: CatchUp::Skip,
            enabled: true,
            criteria: Criteria::default(),
            span: 0,
            input_span: 0,
        });
    }
    let rt = Arc::new(Runtime::load(config).await?);
    let store = Arc::new(AutomationStore::for_config(&rt.config)?);
    let events = Arc::new(Recorded::default());
    let scheduler = Scheduler::new(store, events.clone());
    let cpu0 = cpu_ns(std::process::id())?;
    let started = Instant::now();
    let current = rt.clone();
    let seconds = args.seconds;
    // On a worker thread, as `warden serve` runs it.
    tokio::spawn(async move {
        scheduler
            .run(
                move || current.clone(),
                tokio::time::sleep(Duration::from_secs(seconds)),
            )
            .await
    })
    .await?;
    // The last second's runs finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed = started.elapsed();
    let cpu = cpu_ns(std::process::id())?.saturating_sub(cpu0);
    rt.close();
    let mut lags = events.lags.lock().map(|l| l.clone()).unwrap_or_default();
    lags.sort_unstable();
    let (ok, other) = (
        events.ok.load(Ordering::Relaxed),
        events.other.load(Ordering::Relaxed),
    );
    println!(
        "scheduler: {} schedules every second for {} s: {} runs started ({} ok, {other} not), {} fire times skipped",
        args.schedules,
        args.seconds,
        lags.len(),
        ok,
        events.skipped.load(Ordering::Relaxed),
    );
    println!(
        "scheduler lag (fire time to run start): p50 {} ms, p99 {} ms, max {} ms; {:.0} runs/s; CPU {:.0} µs per run (audit on)",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        lags.len() as f64 / elapsed.as_secs_f64(),
        cpu as f64 / lags.len().max(1) as f64 / 1e3,
    );
    Ok(())
}

/// Start `warden serve` on `config`; its pid and address.
async fn serve(warden: &Path, config: &Path) -> Result<(tokio::process::Child, String)> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?.to_string();
    drop(probe);
    let child = tokio::process::Command::new(warden)
        .arg("-c")
        .arg(config)
        .args(["serve", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("warden serve did not start on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, addr))
}

async fn idle(base: &Path, args: &BenchAutomationArgs, dir: &Path) -> Result<()> {
    let warden = warden_exe(args.warden.as_deref())?;
    for n in [0, args.schedules] {
        let dir = dir.join(n.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut extra = String::new();
        for i in 0..n {
            extra += &format!(
                "[[schedule]]\nname = \"daily-{i}\"\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Berlin\"\ntool = \"text_stats\"\ninput = {{ text = \"x\" }}\n\n"
            );
        }
        let path = dir.join("warden.toml");
        std::fs::write(&path, config_text(base, &dir, &extra)?)?;
        let (mut child, _) = serve(&warden, &path).await?;
        let pid = child.id().context("server exited")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (cpu0, t0) = (cpu_ns(pid)?, Instant::now());
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let cpu = cpu_ns(pid)?.saturating_sub(cpu0);
        let wall = t0.elapsed();
        child.kill().await?;
        println!(
            "idle warden serve with {n} schedules (none due): {:.2}% of one core over {} s",
            cpu as f64 / wall.as_nanos() as f64 * 100.0,
            args.seconds
        );
    }
    Ok(())
}

async fn triggers(base: &Path, args: &BenchAutomationArgs, dir: &Path) -> Result<()> {
    const SECRET: &str = "bench-trigger-secret";
    let warden = warden_exe(args.warden.as_deref())?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("warden.toml");
    let extra = r#"[[trigger]]
name = "bench"
tool = "text_stats"
signature = "hmac"
secret = "bench_hook"
delivery_header = "x-delivery"
[trigger.map]
text = "/text"
"#;
    std::fs::write(&path, config_text(base, dir, extra)?)?;
    for (args, stdin) in [
        (vec!["secrets", "init"], None),
        (
            vec!["secrets", "set", "bench_hook"],
            Some(format!("{SECRET}\n")),
        ),
    ] {
        let mut child = std::process::Command::new(&warden)
            .arg("-c")
            .arg(&path)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("warden {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let (mut child, addr) = serve(&warden, &path).await?;
    let pid = child.id().context("server exited")?;
    let per_connection = (args.deliveries / args.connections.max(1)).max(1);
    let send = |c: usize, warm: bool| {
        let addr = addr.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let n = if warm { 50 } else { per_connection };
            for i in 0..n {
                let body = format!(r#"{{"text":"delivery {c} {i} of the benchmark"}}"#);
                let signature = sign(SECRET.as_bytes(), &[body.as_bytes()]);
                let delivery = format!("{}-{c}-{i}", if warm { "w" } else { "d" });
                let request = http::Request::post(format!("http://{addr}/hooks/bench"))
                    .header("host", &addr)
                    .header("content-type", "application/json")
                    .header("x-signature-256", signature)
                    .header("x-delivery", delivery)
                    .body(Full::new(Bytes::from(body)))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if status != 200 {
                    bail!(
                        "delivery answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    for c in 0..args.connections {
        send(c, true).await?;
    }
    let cpu0 = cpu_ns(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| tokio::spawn(send(c, false)))
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_ns(pid)?.saturating_sub(cpu0);
    child.kill().await?;
    let n = per_connection * args.connections;
    println!(
        "webhook triggers (HMAC signature, delivery id claimed, governed call, audit): {:.0} deliveries/s over {} connections ({n} in {:.2} s); server CPU {:.0} µs per delivery",
        n as f64 / elapsed.as_secs_f64(),
        args.connections,
        elapsed.as_secs_f64(),
        cpu as f64 / n as f64 / 1e3,
    );
    Ok(())
}
