//! The console's server time, for BENCHMARKS.md: the approvals inbox with many pending
//! requests and the runs list (first page, a deep page by cursor, a filtered page)
//! over a large run history, fetched from a real `warden serve` over loopback; and the
//! size of the embedded assets.
//!
//! The pending requests are real held calls made in process; the run history is
//! written straight into the store (as many rows as a busy deployment keeps).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use warden_core::call::CallRequest;
use warden_core::config::Config;
use warden_core::runtime::Runtime;

use crate::bench_mcp::warden_exe;

#[derive(clap::Args)]
pub struct BenchConsoleArgs {
    /// Pending approval requests in the inbox.
    #[arg(long, default_value_t = 1000)]
    pending: usize,
    /// Rows of run history.
    #[arg(long, default_value_t = 100_000)]
    runs: usize,
    /// Requests timed per page (after a warm-up of 10).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// The `warden` binary to serve with (default: the one beside this binary).
    #[arg(long)]
    warden: Option<std::path::PathBuf>,
}

/// One HTTP/1.1 exchange on a fresh connection: (status, headers, body).
fn exchange(addr: &str, request: &str) -> Result<(u16, String, Vec<u8>)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head, raw[split + 4..].to_vec()))
}

fn get(addr: &str, path: &str, cookie: &str) -> Result<(u16, Vec<u8>)> {
    let (status, _, body) = exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
        ),
    )?;
    Ok((status, body))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub async fn run(base: &Path, args: &BenchConsoleArgs) -> Result<ExitCode> {
    let warden = warden_exe(args.warden.as_deref())?;
    let dir = std::env::temp_dir().join(format!("warden-bench-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("warden.toml");
    let hash = warden_core::tokens::hash("bench-operator-token");
    let extra = format!(
        "[approvals]\napprovers = [\"bench-approver\"]\n\n\
         [[token]]\nname = \"ops\"\nprincipal = \"ops\"\nroles = [\"operator\"]\nsha256 = \"{hash}\"\n"
    );
    let text = crate::bench_automation::config_text(base, &dir, &extra)?
        .replace("default = \"auto\"", "default = \"hard\"");
    std::fs::write(&config_path, text)?;

    let started = Instant::now();
    let config = Config::load(&config_path)?;
    let runs_db = config.runs_db.clone();
    let rt = Runtime::load(config).await?;
    let tool = rt
        .tool_names()
        .first()
        .map(|t| t.to_string())
        .context("no tool")?;
    for i in 0..args.pending {
        let input = format!(r#"{{"text":"pending request {i}"}}"#);
        let report = rt
            .call(CallRequest {
                principal: "bench-agent",
                tool: &tool,
                input: &input,
                started_by: None,
            })
            .await?;
        if report.approval.is_none() {
            bail!("the benchmark call was not held");
        }
    }
    rt.close();
    drop(rt);
    // Spread over the last day (three to a millisecond, newest first by index), so the
    // activity page has every one of them to count.
    let newest = warden_core::now_ms() as i64 - 1000;
    let spacing = 3 * 86_000_000 / args.runs.max(1) as i64;
    let db = rusqlite::Connection::open(&runs_db)?;
    db.execute(
        "INSERT INTO runs (id, started_ms, principal, tool, plugin, plugin_digest, status, input,
             decisions, log, denied_requests, secret_reveals, policy_us, instantiate_us,
             execute_us, total_us, peak_memory, host_calls)
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1)
         SELECT printf('run-bulk-%07d', i), ?2 - (i / 3) * ?3,
                CASE i % 2 WHEN 0 THEN 'alice' ELSE 'bob' END,
                CASE i % 5 WHEN 0 THEN 'notes_write' ELSE 'notes_read' END, 'notes', 'sha256:0',
                CASE i % 7 WHEN 0 THEN 'denied' ELSE 'ok' END,
                '{\"name\":\"a note\",\"text\":\"some text of a run\"}',
                '[{\"policy\":\"tiers\",\"decision\":\"allow\"}]', '[]', '[]', '[]',
                10, 20, 30, 60 + i % 1000, 65536, 3
         FROM n",
        [args.runs as i64, newest, spacing],
    )?;
    drop(db);
    println!(
        "setup: {} pending requests (real held calls) and {} runs in {:.1} s",
        args.pending,
        args.runs,
        started.elapsed().as_secs_f64()
    );

    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?.to_string();
    drop(probe);
    let mut server = std::process::Command::new(&warden)
        .arg("-c")
        .arg(&config_path)
        .args(["serve", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("warden serve did not start on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let oldest = args.runs.saturating_sub(3);
    let cursor = format!(
        "{}:run-bulk-{oldest:07}",
        newest - (oldest as i64 / 3) * spacing
    );
    let result = measure(&addr, args, &cursor);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Time each page; `cursor` is that of the runs list's last page.
fn measure(addr: &str, args: &BenchConsoleArgs, cursor: &str) -> Result<()> {
    let body = "token=bench-operator-token";
    let (status, head, _) = exchange(
        addr,
        &format!(
            "POST /console/login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )?;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .with_context(|| format!("sign-in answered {status} with no cookie"))?
        .to_string();
    let mut assets = 0;
    for path in ["/console/assets/console.css", "/console/assets/console.js"] {
        assets += get(addr, path, "")?.1.len();
    }
    println!("embedded assets (stylesheet + script): {assets} bytes");
    let deep = format!("/console/runs?before={cursor}");
    // The inbox's second page, by the cursor its first page links to.
    let (_, inbox) = get(addr, "/console/approvals", &cookie)?;
    let inbox = String::from_utf8_lossy(&inbox).into_owned();
    let older = inbox
        .split("href=\"/console/approvals?before=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|c| format!("/console/approvals?before={c}"))
        .context("the inbox links to no older page")?;
    for (name, path) in [
        (
            format!("inbox, first page of {} pending", args.pending),
            "/console/approvals".to_string(),
        ),
        (
            format!("inbox, second page of {} pending", args.pending),
            older,
        ),
        (
            format!("runs, first page of {}", args.runs),
            "/console/runs".to_string(),
        ),
        (format!("runs, last page of {} (cursor)", args.runs), deep),
        (
            "runs, filtered (tool, principal, status)".to_string(),
            "/console/runs?tool=notes_write&principal=alice&status=denied".to_string(),
        ),
        (
            format!("activity, {} runs in the last 24 h", args.runs),
            "/console/activity".to_string(),
        ),
    ] {
        let mut samples = Vec::with_capacity(args.iterations);
        let mut size = 0;
        for i in 0..args.iterations + 10 {
            let t = Instant::now();
            let (status, page) = get(addr, &path, &cookie)?;
            let took = t.elapsed();
            if status != 200 {
                bail!("{path} answered {status}");
            }
            size = page.len();
            if i >= 10 {
                samples.push(took);
            }
        }
        samples.sort_unstable();
        println!(
            "{name:<48} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} KiB page)",
            percentile(&samples, 0.5).as_secs_f64() * 1e3,
            percentile(&samples, 0.99).as_secs_f64() * 1e3,
            size / 1024
        );
    }
    Ok(())
}
