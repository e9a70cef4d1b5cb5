//! The `warden` command line.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use warden::call::{CallRequest, Outcome};
use warden::component::{self, World};
use warden::config::Config;
use warden::driver::Resume;
use warden::engine::EngineOptions;
use warden::runtime::{Runtime, Shared};
use warden::secrets::SecretUse;

mod approvals_cli;
mod audit_cli;
mod bench;
mod bench_mcp;
mod client;
mod policy_cli;
mod runs_cli;
mod secrets_cli;

/// Exit codes, stable for scripts.
mod exit {
    /// The command succeeded (for `call`: the tool ran and returned output).
    pub const OK: u8 = 0;
    /// The tool ran and failed: a tool error, a trap, or a limit (time, memory, fuel, output).
    pub const TOOL_ERROR: u8 = 1;
    /// Bad usage, config, component or input; nothing ran.
    pub const USAGE: u8 = 2;
    /// A policy denied the call; the tool did not run.
    pub const DENIED: u8 = 3;
    /// The call needs approval; the tool did not run.
    pub const HELD: u8 = 4;
    /// The call could not be recorded (audit log or run history); its result is withheld.
    pub const NOT_RECORDED: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success (call: the tool ran and returned output)
  1  the tool failed: a tool error, a trap, or a limit (time, memory, fuel, output size)
  2  bad usage, config, component or input; nothing ran
  3  denied by a policy; the tool did not run
  4  held for approval; the tool did not run (yet)
  5  the call could not be recorded (audit log or run history); result withheld";

/// warden runs AI agents' tools as sandboxed WebAssembly components, behind approval
/// policies that are components too.
#[derive(Parser)]
#[command(name = "warden", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// The operator config.
    #[arg(
        long,
        short,
        global = true,
        env = "WARDEN_CONFIG",
        default_value = "warden.toml"
    )]
    config: PathBuf,

    /// Print plugin and policy log lines (and host diagnostics) to stderr.
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, load every component, and print tools, policies and each
    /// plugin's effective grants and limits.
    Check,
    /// List every tool with its description, annotations and input schema.
    Tools {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a component file is: its world, imports, exports and declared tools.
    Inspect {
        /// A `.wasm` component.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make one governed call: validate, evaluate policies, run the tool if allowed.
    /// The tool's output JSON goes to stdout.
    Call {
        /// The tool to call.
        tool: String,
        /// Input JSON; `-` reads stdin, `@FILE` reads a file.
        #[arg(long, short, default_value = "{}")]
        input: String,
        /// The principal the call is made as.
        #[arg(long = "as", default_value = "local-operator")]
        principal: String,
        /// If the call is held, wait this many seconds for a decision (and run it here
        /// when approved) before returning it as pending. Default: `[approvals] wait_ms`.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        /// Print the whole call report (decisions, log, timings) as JSON instead of the output.
        #[arg(long)]
        report: bool,
    },
    /// List, show, approve and reject held calls.
    #[command(subcommand)]
    Approvals(approvals_cli::ApprovalsCommand),
    /// Test approval policies against cases of expected decisions.
    #[command(subcommand)]
    Policy(policy_cli::PolicyCommand),
    /// Verify, tail and search the audit log.
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// List and inspect past runs.
    #[command(subcommand)]
    Runs(runs_cli::RunsCommand),
    /// Manage the credential vault (values never on the command line or in output).
    #[command(subcommand)]
    Secrets(secrets_cli::SecretsCommand),
    /// Run warden as a server: drive the approval queue and serve the one-click
    /// approval pages, until SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on (default `[server] listen`, 127.0.0.1:8700; port 0 picks
        /// a free port; the address is printed on stderr).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Allow a non-loopback listen address.
        #[arg(long)]
        public: bool,
        /// Serve MCP on stdin/stdout instead of HTTP (for clients that start warden).
        #[arg(long, conflicts_with_all = ["listen", "public"])]
        stdio: bool,
        /// With --stdio: the principal calls run as (default `[server] stdio_principal`).
        #[arg(long = "as", requires = "stdio")]
        principal: Option<String>,
    },
    /// Ask the running `warden serve` (of this config's data dir) to reload its config.
    Reload,
    /// Make bearer tokens for `warden serve`.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Measure governed calls and policy decisions in process.
    Bench(bench::BenchArgs),
    /// Measure `warden serve` from outside over MCP (stdio and HTTP): server CPU per
    /// call, round trips, throughput, memory, start-up.
    BenchMcp(bench_mcp::BenchMcpArgs),
}

// A governed call allocates and frees many small objects across threads (records,
// JSON values, the sandbox's tables); glibc's malloc spent a fifth of the CPU of a
// concurrent load in its arena locks and consolidation (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::from(exit::OK);
            }
            eprintln!("warden: {error:#}");
            ExitCode::from(if is_not_recorded(&error) {
                exit::NOT_RECORDED
            } else {
                exit::USAGE
            })
        }
    }
}

/// Does `error` come from a store that cannot record (the audit log, its key, the run
/// history, the approval queue)? Such a failure is exit 5, not a usage error.
fn is_not_recorded(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.is::<warden::audit::AuditError>()
            || e.is::<warden::runs::RunsError>()
            || e.is::<warden::approvals::ApprovalError>()
            || matches!(
                e.downcast_ref::<warden::runtime::LoadError>(),
                Some(warden::runtime::LoadError::Store(_))
            )
    })
}

fn run() -> Result<ExitCode> {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // wasmtime captures a stack trace in every host error when RUST_BACKTRACE is set
        // (one per refused host call): costly, and nothing the audit log may carry.
        // Panics still print theirs. SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return Ok(ExitCode::from(code));
        }
    };
    let filter = if cli.verbose {
        "warden=debug"
    } else {
        "warden=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // One client over stdio sends one request at a time: a single-threaded runtime
    // spares every call the cross-thread wake-ups of a multi-threaded one.
    let runtime = if matches!(cli.command, Command::Serve { stdio: true, .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
    .context("starting tokio")?;
    runtime.block_on(async {
        match cli.command {
            Command::Check => check(&cli.config).await.context("check"),
            Command::Tools { json } => tools(&cli.config, json).await.context("tools"),
            Command::Inspect { ref file, json } => inspect(file, json).await.context("inspect"),
            Command::Call {
                ref tool,
                ref input,
                ref principal,
                wait,
                report,
            } => call(
                &cli.config,
                tool,
                input,
                principal,
                wait.map(|s| (s * 1000.0) as u64),
                report,
                cli.verbose,
            )
            .await
            .context("call"),
            Command::Serve {
                listen,
                public,
                stdio,
                ref principal,
            } => serve(&cli.config, listen, public, stdio, principal.clone())
                .await
                .context("serve"),
            Command::Reload => reload(&cli.config).context("reload"),
            Command::Tokens(ref command) => tokens(&cli.config, command).context("tokens"),
            Command::Bench(ref args) => bench::run(&cli.config, args).await.context("bench"),
            Command::BenchMcp(ref args) => {
                bench_mcp::run(&cli.config, args).await.context("bench-mcp")
            }
            Command::Secrets(ref command) => {
                secrets_cli::run(&cli.config, command).context("secrets")
            }
            Command::Audit(ref command) => {
                audit_cli::run(&cli.config, command).await.context("audit")
            }
            Command::Runs(ref command) => runs_cli::run(&cli.config, command).context("runs"),
            Command::Approvals(ref command) => approvals_cli::run(&cli.config, command)
                .await
                .context("approvals"),
            Command::Policy(ref command) => policy_cli::run(command).await.context("policy"),
        }
    })
}

async fn load(config: &Path) -> Result<Runtime> {
    let config = Config::load(config)?;
    Ok(Runtime::load(config).await?)
}

/// The components only: for commands that change nothing (and so never wait for the
/// audit log's lock, held by a running server).
async fn look(config: &Path) -> Result<Runtime> {
    let config = Config::load(config)?;
    Ok(Runtime::load_read_only(config).await?)
}

async fn check(config: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let rt = look(config).await?;
    let mut out = String::new();
    let c = &rt.config;
    out += &format!(
        "config {} is valid (loaded in {} ms)\n",
        c.file.display(),
        started.elapsed().as_millis()
    );
    out += &format!(
        "data dir: {}\n\nplugins ({}):\n",
        c.data_dir.display(),
        rt.plugins.len()
    );
    for p in &rt.plugins {
        let g = &p.sandbox.grants;
        let l = &p.sandbox.limits;
        out += &format!("  {}  {}  {}\n", p.id, p.digest, p.path.display());
        let tools = p.tools.iter().map(|t| t.name.clone()).collect();
        let http = g.http.iter().map(ToString::to_string).collect();
        let files = g
            .files
            .iter()
            .map(|f| {
                let mode = if f.writable { "rw" } else { "ro" };
                format!("{} -> {} ({mode})", f.guest, f.host.display())
            })
            .collect();
        let env = g.env.keys().cloned().collect();
        let secrets = g
            .secrets
            .iter()
            .map(|s| {
                let hosts: Vec<String> = s.hosts.iter().map(ToString::to_string).collect();
                match &s.usage {
                    SecretUse::Header { name, .. } => {
                        format!("{} (header {name} to {})", s.secret, hosts.join(" "))
                    }
                    SecretUse::Placeholder { query, body } => {
                        let mut places = vec!["headers"];
                        places.extend(query.then_some("query"));
                        places.extend(body.then_some("body"));
                        format!(
                            "{} (placeholder in {} to {})",
                            s.secret,
                            places.join("+"),
                            hosts.join(" ")
                        )
                    }
                    SecretUse::Reveal => format!("{} (revealed to the plugin)", s.secret),
                }
            })
            .collect();
        out += &format!("    tools:  {}\n", list_or_none(tools));
        out += &format!("    http:   {}\n", list_or_none(http));
        out += &format!("    files:  {}\n", list_or_none(files));
        out += &format!("    env:    {}\n", list_or_none(env));
        out += &format!("    secrets: {}\n", list_or_none(secrets));
        out += "    sockets, DNS, host env/args/cwd/stdio: denied\n";
        out += &format!("    limits: {}\n", limits_text(l));
    }
    if c.audit.enabled {
        out += &format!(
            "audit log: {} (segments of {} KiB), checkpoints every {} records or {} s signed by {}{}\n",
            c.audit.dir.display(),
            c.audit.max_segment_bytes >> 10,
            c.audit.checkpoint_every,
            c.audit.checkpoint_secs,
            c.audit
                .signing_key
                .as_ref()
                .map_or("(no key dir: set key_dir)".to_string(), |k| k
                    .display()
                    .to_string()),
            match (&c.audit.witness.dir, &c.audit.witness.url) {
                (None, None) => ", no witness".to_string(),
                (dir, url) => format!(
                    ", witnessed by {}",
                    dir.iter()
                        .map(|d| d.display().to_string())
                        .chain(url.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            }
        );
    } else {
        out += "audit log: DISABLED ([audit] enabled = false): calls and host calls are NOT recorded\n";
    }
    out += &format!("run history: {}\n", c.runs_db.display());
    out += &format!("\npolicies ({}):\n", rt.policies.len());
    for p in &rt.policies {
        out += &format!("  {}  {}  {}\n", p.id, p.digest, p.path.display());
        out += &format!(
            "    applies to: {}\n    limits: {}\n",
            p.tools.join(", "),
            limits_text(&p.limits)
        );
    }
    print(&out)?;
    Ok(ExitCode::from(exit::OK))
}

fn list_or_none(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn limits_text(l: &warden::config::Limits) -> String {
    let fuel = l.fuel.map_or("unlimited".to_string(), |f| f.to_string());
    format!(
        "memory {} MiB, timeout {} ms, output {} KiB, log {} KiB, fuel {fuel}",
        l.memory_mb, l.timeout_ms, l.max_output_kb, l.max_log_kb
    )
}

async fn tools(config: &Path, json: bool) -> Result<ExitCode> {
    let rt = look(config).await?;
    let mut list = Vec::new();
    for name in rt.tool_names() {
        let Some(plugin) = rt.plugin_for(name) else {
            continue;
        };
        let Some(tool) = plugin.tool(name) else {
            continue;
        };
        let a = tool.annotations;
        list.push(json!({
            "name": tool.name,
            "title": tool.title,
            "plugin": plugin.id,
            "description": tool.description,
            "annotations": {
                "readOnlyHint": a.read_only,
                "destructiveHint": a.destructive,
                "idempotentHint": a.idempotent,
                "openWorldHint": a.open_world,
            },
            "inputSchema": tool.schema,
            "outputSchema": tool.output_schema,
        }));
    }
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
    } else {
        let mut out = String::new();
        for t in &list {
            let hints: Vec<&str> = [
                ("readOnlyHint", "read-only"),
                ("destructiveHint", "destructive"),
                ("idempotentHint", "idempotent"),
                ("openWorldHint", "open-world"),
            ]
            .into_iter()
            .filter(|(k, _)| t["annotations"][k].as_bool() == Some(true))
            .map(|(_, v)| v)
            .collect();
            out += &format!(
                "{} ({})  [{}]\n  {}\n  input: {}\n",
                t["name"].as_str().unwrap_or_default(),
                t["plugin"].as_str().unwrap_or_default(),
                hints.join(", "),
                t["description"].as_str().unwrap_or_default(),
                t["inputSchema"]
            );
        }
        print(&out)?;
    }
    Ok(ExitCode::from(exit::OK))
}

async fn inspect(file: &Path, json: bool) -> Result<ExitCode> {
    let shared = Shared::new(EngineOptions::default(), None)?;
    let loaded = component::load(&shared.engine, &shared.cache, file, None)?;
    let world = loaded.world();
    let problems = match world {
        Some(w) => loaded.expect_world(file, w).err().map(|e| e.to_string()),
        None => Some(format!(
            "{}: exports neither a warden tool nor a policy",
            file.display()
        )),
    };
    let mut tools = Vec::new();
    if world == Some(World::Tool) && problems.is_none() {
        let plugin = warden::plugin::Plugin::load(
            &shared,
            &warden::config::PluginConfig {
                id: "inspect".into(),
                component: file.to_path_buf(),
                sha256: None,
                grants: Default::default(),
                limits: warden::config::DEFAULT_PLUGIN_LIMITS,
                span: 0,
            },
            Default::default(),
            Default::default(),
        )
        .await?;
        for t in &plugin.tools {
            tools.push(
                json!({ "name": t.name, "description": t.description, "inputSchema": t.schema }),
            );
        }
    }
    let report = json!({
        "file": file.display().to_string(),
        "digest": loaded.digest,
        "world": world.map(|w| format!("{}/{}@{}", component::PACKAGE, w.name(), component::PACKAGE_VERSION)),
        "problems": problems,
        "imports": loaded.imports,
        "exports": loaded.exports,
        "tools": tools,
    });
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut out = format!("{}\n  digest:  {}\n", file.display(), loaded.digest);
        out += &format!(
            "  world:   {}\n",
            report["world"]
                .as_str()
                .unwrap_or("none (not a warden component)")
        );
        if let Some(p) = &problems {
            out += &format!("  problem: {p}\n");
        }
        out += &format!("  imports: {}\n", loaded.imports.join("\n           "));
        out += &format!("  exports: {}\n", loaded.exports.join(", "));
        for t in &tools {
            out += &format!(
                "  tool:    {}: {}\n",
                t["name"].as_str().unwrap_or_default(),
                t["description"].as_str().unwrap_or_default()
            );
        }
        print(&out)?;
    }
    Ok(ExitCode::from(if problems.is_some() {
        exit::USAGE
    } else {
        exit::OK
    }))
}

async fn call(
    config: &Path,
    tool: &str,
    input: &str,
    principal: &str,
    wait_ms: Option<u64>,
    full_report: bool,
    verbose: bool,
) -> Result<ExitCode> {
    let input = read_input(input)?;
    let rt = load(config).await?;
    let report = match rt
        .call(CallRequest {
            principal,
            tool,
            input: &input,
        })
        .await
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("warden call: {e}");
            let code = match e {
                warden::CallError::NotRecorded(_) => exit::NOT_RECORDED,
                _ => exit::USAGE,
            };
            return Ok(ExitCode::from(code));
        }
    };
    let report = match (&report.outcome, &report.approval) {
        (Outcome::Held { .. }, Some(approval)) => {
            let wait = wait_ms.unwrap_or(rt.config.approvals.wait_ms);
            let id = approval.id.clone();
            // Tell the approvers now; a notice not sent within a moment is retried by
            // the next process that drives the queue.
            let notify =
                tokio::time::timeout(std::time::Duration::from_secs(2), rt.deliver_notices());
            let (notified, resumed) = tokio::join!(
                notify,
                rt.wait_for(&id, std::time::Duration::from_millis(wait))
            );
            if let Ok(Err(e)) = notified {
                eprintln!("warden call: {e}");
            }
            match resumed {
                Ok(Resume::Ran(done)) => *done,
                Ok(Resume::Ended(a)) => {
                    let mut ended = report;
                    ended.outcome = Outcome::Denied {
                        reasons: vec![
                            a.result
                                .clone()
                                .unwrap_or_else(|| format!("approval {}", a.state.as_str())),
                        ],
                    };
                    ended
                }
                Ok(Resume::Pending(_)) => report,
                Err(e) => {
                    eprintln!("warden call: {e}");
                    return Ok(ExitCode::from(exit::NOT_RECORDED));
                }
            }
        }
        _ => report,
    };
    let code = print_outcome(&report, full_report, verbose);
    // This process holds the audit log: approved calls that were waiting for whoever
    // holds it run now, before it lets go.
    if let Err(e) = rt.drive().await {
        eprintln!("warden call: approval queue: {e}");
    }
    code
}

/// Print a call's outcome (output JSON, or a status object) and pick the exit code.
fn print_outcome(
    report: &warden::CallReport,
    full_report: bool,
    verbose: bool,
) -> Result<ExitCode> {
    let tool = &report.tool;
    if verbose {
        for d in &report.decisions {
            for line in &d.log {
                eprintln!("[policy {}] {} {}", d.policy, line.level, line.message);
            }
        }
        for line in &report.log {
            eprintln!(
                "[{} {}] {} {}",
                report.plugin, line.source, line.level, line.message
            );
        }
    }
    let (code, stdout) = match &report.outcome {
        Outcome::Ok { output } => (exit::OK, output.clone()),
        Outcome::Denied { reasons } => {
            eprintln!("warden call: {tool} denied: {}", reasons.join("; "));
            (
                exit::DENIED,
                json!({ "status": "denied", "run_id": report.run_id, "reasons": reasons }),
            )
        }
        Outcome::Held {
            tier,
            reasons,
            approvers,
            timeout_secs,
        } => {
            let tier = serde_json::to_value(tier)?;
            eprintln!(
                "warden call: {tool} held for {} approval (not executed yet): {}{}",
                tier.as_str().unwrap_or_default(),
                reasons.join("; "),
                report
                    .approval
                    .as_ref()
                    .map(|a| format!(
                        "; approval {}, outcome later with `warden runs show {}`",
                        a.id, report.run_id
                    ))
                    .unwrap_or_default()
            );
            let approval = report.approval.as_ref();
            let v = json!({ "status": "held", "run_id": report.run_id, "approval_id": approval.map(|a| &a.id), "expires_ms": approval.map(|a| a.expires_ms), "approvals_required": approval.map(|a| a.approvals_required), "tier": tier, "reasons": reasons, "approvers": approvers, "timeout_secs": timeout_secs });
            (exit::HELD, v)
        }
        Outcome::Interrupted { reason } => {
            eprintln!("warden call: {tool} interrupted: {reason}");
            (
                exit::TOOL_ERROR,
                json!({ "status": "interrupted", "error": reason, "run_id": report.run_id }),
            )
        }
        Outcome::Failed { kind, error } => {
            eprintln!("warden call: {tool} failed: {error}");
            if let warden::plugin::Failure::Trap { backtrace, .. } = kind
                && verbose
                && !backtrace.is_empty()
            {
                eprintln!("{backtrace}");
            }
            let v: Value = serde_json::to_value(&report.outcome)?;
            (
                exit::TOOL_ERROR,
                json!({ "status": v["status"], "kind": v["kind"], "error": error, "run_id": report.run_id }),
            )
        }
    };
    let text = if full_report {
        serde_json::to_string_pretty(&report)?
    } else {
        serde_json::to_string_pretty(&stdout)?
    };
    print(&format!("{text}\n"))?;
    Ok(ExitCode::from(code))
}

async fn serve(
    config: &Path,
    listen: Option<std::net::SocketAddr>,
    public: bool,
    stdio: bool,
    principal: Option<String>,
) -> Result<ExitCode> {
    let rt = load(config).await?;
    let data_dir = rt.config.data_dir.clone();
    let (default_listen, stdio_principal) = (
        rt.config.server.listen,
        rt.config.server.stdio_principal.clone(),
    );
    if !rt.config.audit.enabled {
        eprintln!(
            "warden serve: WARNING: the audit log is OFF ([audit] enabled = false): calls and host calls are NOT recorded; /readyz and /metrics say so"
        );
    }
    let server = warden::serve::Server::new(rt, config)?;
    if stdio {
        let _pid = warden::serve::PidFile::take(&data_dir, None)?;
        let principal = principal.unwrap_or(stdio_principal);
        eprintln!("warden serve: MCP on stdio as {principal}");
        warden::serve::serve_stdio(server, principal).await?;
    } else {
        let addr = warden::serve::check_listen(listen.unwrap_or(default_listen), public)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let _pid = warden::serve::PidFile::take(&data_dir, Some(&url))?;
        eprintln!("warden serve: listening on {url} (MCP at /mcp)");
        warden::serve::serve_http(server, listener).await?;
    }
    Ok(ExitCode::from(exit::OK))
}

fn reload(config: &Path) -> Result<ExitCode> {
    let config = Config::load(config)?;
    // Only a live server holds the pid file's lock: a file left by `kill -9` (whose pid
    // may now be any other process) is never signalled.
    let server = warden::serve::running(&config.data_dir).with_context(|| {
        format!(
            "no running server for {} (no locked {})",
            config.data_dir.display(),
            config.data_dir.join("serve.pid").display()
        )
    })?;
    let pid = server.pid;
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    eprintln!(
        "warden reload: asked process {pid} to reload (it logs the result; a bad config is refused and the old one keeps serving)"
    );
    Ok(ExitCode::from(exit::OK))
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Make a new token for PRINCIPAL and print it once; the config keeps only its hash.
    Create {
        /// A name for the token (to tell tokens apart in the config and the audit log).
        name: String,
        /// The principal calls made with the token run as (default: the name).
        #[arg(long)]
        principal: Option<String>,
        /// agent (call tools over MCP), approver (decide approvals), operator (everything).
        #[arg(long = "role", default_value = "agent")]
        roles: Vec<String>,
        /// Append the `[[token]]` entry to the config file instead of printing it.
        #[arg(long)]
        write: bool,
    },
}

fn tokens(config: &Path, command: &TokensCommand) -> Result<ExitCode> {
    let TokensCommand::Create {
        name,
        principal,
        roles,
        write,
    } = command;
    let principal = principal.clone().unwrap_or_else(|| name.clone());
    if !warden::config::valid_principal(&principal) || !warden::config::valid_principal(name) {
        anyhow::bail!("names and principals are non-empty, without spaces or control characters");
    }
    for r in roles {
        if warden::tokens::Role::parse(r).is_none() {
            anyhow::bail!("unknown role {r:?} (agent, approver, operator)");
        }
    }
    let token = warden::tokens::generate().map_err(anyhow::Error::msg)?;
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    let entry = format!(
        "\n[[token]]\nname = {name:?}\nprincipal = {principal:?}\nroles = [{}]\nsha256 = \"{}\"\n",
        roles.join(", "),
        warden::tokens::hash(&token)
    );
    if *write {
        // Checked before writing: the config must still load with the entry added.
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        Config::parse(config, &(text.clone() + &entry))?;
        std::fs::write(config, text + &entry)
            .with_context(|| format!("writing {}", config.display()))?;
        eprintln!(
            "warden tokens: added token {name:?} for {principal} to {} (run `warden reload` if a server is running)",
            config.display()
        );
    } else {
        eprintln!("warden tokens: add this to {}:{entry}", config.display());
    }
    eprintln!(
        "warden tokens: the token, shown only now (send it as `Authorization: Bearer <token>`):"
    );
    print(&format!("{token}\n"))?;
    Ok(ExitCode::from(exit::OK))
}

fn read_input(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading input from stdin")?;
        Ok(s)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading input from {path}"))
    } else {
        Ok(arg.to_string())
    }
}

fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
