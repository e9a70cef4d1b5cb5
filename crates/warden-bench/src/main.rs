//! warden's benchmarks, for BENCHMARKS.md: `in-process` measures the governed path,
//! the audit log and the approval queue inside one process; `mcp` starts `warden serve`
//! and measures it from outside, the way agents reach it; `automation` measures
//! schedules and triggers; `console` the operator console's pages; `shared-store` warden
//! on a PostgreSQL shared by several hosts. Figures are medians and
//! percentiles over many iterations, never single timings.
//!
//! A separate binary so that `warden` ships without benchmark code; it uses warden-core
//! the way the server does.
//! `mcp-echo`, the crate's second binary, is the smallest native MCP server: the floor
//! `mcp --server` measures warden's start-up and first call against.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod bench_automation;
mod bench_budgets;
mod bench_cluster;
mod bench_console;
mod bench_languages;
mod bench_mcp;

#[derive(Parser)]
#[command(name = "warden-bench", about)]
struct Cli {
    /// The config whose tools and policies are measured.
    #[arg(
        long,
        short,
        global = true,
        env = "WARDEN_CONFIG",
        default_value = "examples/bench.toml"
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Governed calls and policy decisions in process; the audit log; approvals.
    InProcess(bench::BenchArgs),
    /// Schedules and triggers: scheduler lag, an idle server's CPU with many schedules,
    /// webhook deliveries per second.
    Automation(bench_automation::BenchAutomationArgs),
    /// `warden serve` from outside over MCP (stdio and HTTP): server CPU per call,
    /// round trips, throughput, memory, start-up.
    Mcp(bench_mcp::BenchMcpArgs),
    /// The operator console's server time: the inbox with many pending requests, the
    /// runs list over a large history; the size of its embedded assets.
    Console(bench_console::BenchConsoleArgs),
    /// warden on a PostgreSQL several hosts share, against the embedded SQLite: an
    /// auto-tier call, held calls through one and three hosts, round trips per call,
    /// lease recovery.
    SharedStore(bench_cluster::BenchClusterArgs),
    /// Tools in Rust, Python and JavaScript side by side: size, compile and load time,
    /// a fresh-instance call, memory; a Rust and a Python policy's decision.
    Languages(bench_languages::BenchLanguagesArgs),
}

// The same allocator as `warden`, so that figures are the shipped binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("warden-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // As in `warden`: no stack trace captured per refused host call.
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                .unwrap_or_else(|_| "warden=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        match cli.command {
            Command::InProcess(ref args) => {
                bench::run(&cli.config, args).await.context("in-process")
            }
            Command::Mcp(ref args) => bench_mcp::run(&cli.config, args).await.context("mcp"),
            Command::Console(ref args) => bench_console::run(&cli.config, args)
                .await
                .context("console"),
            Command::Languages(ref args) => bench_languages::run(&cli.config, args)
                .await
                .context("languages"),
            Command::Automation(ref args) => bench_automation::run(&cli.config, args)
                .await
                .context("automation"),
            Command::SharedStore(ref args) => bench_cluster::run(&cli.config, args)
                .await
                .context("shared-store"),
        }
    })
}
