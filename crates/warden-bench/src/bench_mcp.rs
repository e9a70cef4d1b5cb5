//! `warden-bench mcp`: measure `warden serve` from outside, the way agents reach it.
//!
//! Starts the server as a child process (stdio or streamable HTTP on loopback), speaks
//! MCP to it with a minimal client (JSON-RPC lines over pipes; HTTP/1.1 keep-alive with
//! one session per connection), and reads the server's own CPU time and memory from
//! /proc. The client does as little as possible so that it is lighter than the server.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PROTOCOL: &str = "2025-11-25";

#[derive(clap::Args)]
pub struct BenchMcpArgs {
    /// Calls measured per scenario (after a warm-up).
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Concurrent HTTP sessions for the throughput scenario.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// The `warden` binary to start (default: the one beside warden-bench).
    #[arg(long)]
    warden: Option<PathBuf>,
    /// Measure another MCP server over stdio instead of warden, with the same client:
    /// its command line, words split on spaces (start-up and the stdio scenarios only).
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    call: crate::bench::BenchCall,
}

/// CPU time all the process's threads have used (ns), from /proc/PID/task/*/schedstat.
/// (Threads that already exited are not counted: the server's threads live as long
/// as it does.)
pub(crate) fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Resident set size (KiB), from /proc/PID/status, once the server has been idle a
/// moment: the allocator gives freed pages back after a short delay, and a reading
/// taken mid-load swings by megabytes either way.
fn rss_kib(pid: u32) -> Result<u64> {
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("parsing VmRSS")
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Print what `calls` calls cost the server `pid`, given its CPU and RSS before.
fn report(label: &str, pid: u32, (cpu0, rss0): (u64, u64), rtts: Vec<Duration>) -> Result<()> {
    let calls = rtts.len().max(1);
    let (cpu1, rss1) = (cpu_ns(pid)?, rss_kib(pid)?);
    println!(
        "{label} round trip p50 {:.0} µs; server CPU {:.1} µs per tools/call; RSS {rss0} -> {rss1} KiB ({:+} KiB over {calls} calls)",
        p50(rtts).as_secs_f64() * 1e6,
        cpu1.saturating_sub(cpu0) as f64 / calls as f64 / 1e3,
        rss1 as i64 - rss0 as i64,
    );
    Ok(())
}

/// The `warden` binary the benchmark starts: `--warden`, or the one built beside this
/// benchmark (`cargo build --release` builds it; `cargo run -p warden-bench` alone does not).
pub(crate) fn warden_exe(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let me = std::env::current_exe().context("locating warden-bench")?;
    let beside = me.with_file_name("warden");
    if beside.is_file() {
        Ok(beside)
    } else {
        bail!(
            "no warden binary at {} (build it first: cargo build --release; or pass --warden)",
            beside.display()
        )
    }
}

/// An MCP client over a child's stdin/stdout.
struct Stdio_ {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl Stdio_ {
    async fn start(warden: &Path, config: &Path) -> Result<Stdio_> {
        let mut command = tokio::process::Command::new(warden);
        command
            .args(["-c"])
            .arg(config)
            .args(["serve", "--stdio", "--as", "bench"]);
        Stdio_::spawn(command)
    }

    /// Any stdio MCP server (`--server`).
    fn spawn(mut command: tokio::process::Command) -> Result<Stdio_> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Stdio_ {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            next_id: 1,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.child.id().context("server exited")
    }

    async fn send(&mut self, message: &Value) -> Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(())
    }

    async fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        while let Some(line) = self.lines.next_line().await? {
            let v: Value = serde_json::from_str(&line)?;
            if v["id"] == id {
                return Ok(v);
            }
        }
        bail!("the server closed stdout")
    }

    /// Close stdin (the server's end of session) and wait for it to exit.
    async fn stop(mut self) -> Result<()> {
        drop(self.stdin);
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }

    async fn initialize(&mut self) -> Result<()> {
        self.request("initialize", init_params()).await?;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
    }
}

fn init_params() -> Value {
    json!({"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "warden-bench", "version": "0"}})
}

/// An MCP client session over one HTTP/1.1 keep-alive connection.
struct HttpSession {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl HttpSession {
    async fn connect(addr: &str, token: &str) -> Result<HttpSession> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut s = HttpSession {
            sender,
            addr: addr.to_string(),
            token: token.to_string(),
            session: None,
            next_id: 1,
        };
        s.post(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init_params()}))
            .await?;
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    /// POST one message; the JSON-RPC response (from JSON or an SSE stream), if any.
    async fn post(&mut self, message: Value) -> Result<Option<Value>> {
        let mut request = http::Request::post(format!("http://{}/mcp", self.addr))
            .header("host", &self.addr)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL);
        if let Some(s) = &self.session {
            request = request.header("mcp-session-id", s);
        }
        let request = request.body(Full::new(Bytes::from(message.to_string())))?;
        let send = async {
            self.sender.ready().await?;
            self.sender.send_request(request).await
        };
        let response = tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .context("no answer from the server within 30 s")??;
        if let Some(s) = response.headers().get("mcp-session-id") {
            self.session = Some(s.to_str()?.to_string());
        }
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
            .await
            .context("the response did not end within 30 s")??
            .to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let text = String::from_utf8_lossy(&body);
        let found = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .chain(std::iter::once(text.as_ref()))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some());
        Ok(found)
    }

    async fn call(&mut self, tool: &str, args: &Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}))
            .await?
            .context("no response to tools/call")
    }
}

fn check_ok(response: &Value) -> Result<()> {
    if response["result"]["isError"] == true || response.get("error").is_some() {
        bail!("the benchmark call failed: {response}");
    }
    Ok(())
}

/// A config like `config` with an operator+agent token whose value we know.
fn bench_config(config: &Path) -> Result<(PathBuf, String)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let token = warden_core::tokens::generate().map_err(anyhow::Error::msg)?;
    let dir = config.parent().unwrap_or(Path::new("."));
    let path = dir.join(".bench-mcp.toml");
    let text = format!(
        "{text}\n[[token]]\nname = \"bench-mcp\"\nprincipal = \"bench\"\nroles = [\"agent\", \"operator\"]\nsha256 = \"{}\"\n",
        warden_core::tokens::hash(&token)
    );
    std::fs::write(&path, text)?;
    Ok((path, token))
}

/// Starts measured for the start-up figure (of 20, the p99 is the slowest).
const STARTS: usize = 20;

pub async fn run(config: &Path, args: &BenchMcpArgs) -> Result<ExitCode> {
    let warden = warden_exe(args.warden.as_deref())?;
    let (config, token) = bench_config(config)?;
    let input: Value = serde_json::from_str(&args.call.input).context("--input")?;
    let warmup = (args.calls / 10).max(200);
    let other: Option<Vec<&str>> = args
        .server
        .as_deref()
        .map(|line| line.split_whitespace().collect())
        .filter(|argv: &Vec<&str>| !argv.is_empty());
    let start = || async {
        match &other {
            Some(argv) => {
                let mut command = tokio::process::Command::new(argv[0]);
                command.args(&argv[1..]);
                Stdio_::spawn(command)
            }
            None => Stdio_::start(&warden, &config).await,
        }
    };

    // Start-up: spawn to the answer of tools/list, warm compile cache; then each fresh
    // process's first tools/call, so that the first-call figure is a median of
    // STARTS processes rather than one sample.
    let params = json!({"name": args.call.tool, "arguments": input});
    let mut startups = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..STARTS {
        let started = Instant::now();
        let mut s = start().await?;
        s.initialize().await?;
        let tools = s.request("tools/list", json!({})).await?;
        startups.push(started.elapsed());
        if tools["result"]["tools"]
            .as_array()
            .is_none_or(|t| t.is_empty())
        {
            bail!("tools/list returned no tools: {tools}");
        }
        let t = Instant::now();
        check_ok(&s.request("tools/call", params.clone()).await?)?;
        firsts.push(t.elapsed());
        s.stop().await?;
    }
    startups.sort();
    firsts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "start to tools/list answered (stdio, warm cache): p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms over {STARTS} starts",
        ms(startups[STARTS / 2]),
        ms(startups[(STARTS * 99).div_ceil(100) - 1]),
        ms(startups[0]),
    );

    // stdio: round trip and server CPU per call, one call at a time.
    let mut s = start().await?;
    s.initialize().await?;
    for _ in 0..warmup {
        check_ok(&s.request("tools/call", params.clone()).await?)?;
    }
    let pid = s.pid()?;
    let rss = rss_kib(pid)?;
    let before = (cpu_ns(pid)?, rss);
    let mut rtts = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let t = Instant::now();
        check_ok(&s.request("tools/call", params.clone()).await?)?;
        rtts.push(t.elapsed());
    }
    let warm = p50(rtts.clone());
    report("stdio:", pid, before, rtts)?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let warm_us = us(warm).max(1e-3);
    println!(
        "stdio: first call after start (one per start, {STARTS} starts) p50 {:.0} µs = {:.2}x a warm one, p99 {:.0} µs = {:.2}x",
        us(firsts[STARTS / 2]),
        us(firsts[STARTS / 2]) / warm_us,
        us(firsts[(STARTS * 99).div_ceil(100) - 1]),
        us(firsts[(STARTS * 99).div_ceil(100) - 1]) / warm_us,
    );

    // stdio with requests pipelined: what a call costs the server when it has company
    // (an agent running tools in parallel), `--sessions` requests in flight at a time.
    let window = args.sessions.max(1) as u64;
    let cpu0 = cpu_ns(pid)?;
    let started = Instant::now();
    let first = s.next_id;
    let last = first + args.calls as u64;
    let mut answered = 0;
    while answered < args.calls {
        while s.next_id < last && s.next_id < first + answered as u64 + window {
            let id = s.next_id;
            s.next_id += 1;
            s.send(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}))
                .await?;
        }
        let line = s
            .lines
            .next_line()
            .await?
            .context("the server closed stdout")?;
        let response: Value = serde_json::from_str(&line)?;
        if response.get("id").is_some() {
            check_ok(&response)?;
            answered += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "stdio: {window} requests in flight: {:.0} calls/s; server CPU {:.1} µs per tools/call",
        args.calls as f64 / elapsed.as_secs_f64(),
        cpu_ns(pid)?.saturating_sub(cpu0) as f64 / args.calls.max(1) as f64 / 1e3,
    );
    s.stop().await?;
    if other.is_some() {
        return Ok(ExitCode::SUCCESS);
    }

    // HTTP: start a server on a free port.
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = probe.local_addr()?.to_string();
    drop(probe);
    let mut server = tokio::process::Command::new(&warden)
        .arg("-c")
        .arg(&config)
        .args(["serve", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().context("server exited")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("warden serve did not listen on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut one = HttpSession::connect(&addr, &token).await?;
    for _ in 0..warmup {
        check_ok(&one.call(&args.call.tool, &input).await?)?;
    }
    let rss = rss_kib(pid)?;
    let before = (cpu_ns(pid)?, rss);
    let mut rtts = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let t = Instant::now();
        check_ok(&one.call(&args.call.tool, &input).await?)?;
        rtts.push(t.elapsed());
    }
    report("http: ", pid, before, rtts)?;

    // Throughput: sessions at once, each on its own connection.
    let per = args.calls / args.sessions.max(1);
    let mut sessions = Vec::new();
    for _ in 0..args.sessions {
        sessions.push(HttpSession::connect(&addr, &token).await?);
    }
    let cpu0 = cpu_ns(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            let (tool, input) = (args.call.tool.clone(), input.clone());
            tokio::spawn(async move {
                for _ in 0..per {
                    check_ok(&s.call(&tool, &input).await?)?;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let done = per * args.sessions;
    println!(
        "http:  {} sessions at once: {:.0} calls/s ({done} calls in {:.2} s); server CPU {:.1} µs per tools/call",
        args.sessions,
        done as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu_ns(pid)?.saturating_sub(cpu0) as f64 / done.max(1) as f64 / 1e3,
    );
    let _ = server.start_kill();
    let _ = server.wait().await;
    let _ = std::fs::remove_file(&config);
    Ok(ExitCode::SUCCESS)
}
