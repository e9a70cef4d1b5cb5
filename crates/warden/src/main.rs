//! The `warden` command line: parse arguments, set up logging and tokio, run one
//! command (`commands`), map its result to an exit code (`exit`).
//!
//! `main` calls `run() -> Result<ExitCode>`; errors are printed once, prefixed with the
//! command and its context, and a closed stdout is not an error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod client;
mod commands;
mod exit;
mod output;
// glibc passes argc and argv to `.init_array` entries; other C libraries do not.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod thp;

use commands::{
    approvals, audit, budgets, call, check, inspect, new, policy, runs, schedules, secrets, serve,
    store, tokens, tools, upstreams,
};

/// warden runs AI agents' tools as sandboxed WebAssembly components, behind approval
/// policies that are components too.
#[derive(Parser)]
#[command(name = "warden", version, about, after_help = exit::EXIT_CODES)]
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
    /// Start a tool or policy project (Rust, Python or JavaScript) that builds with one
    /// command and passes `warden check` as written.
    New {
        kind: new::Kind,
        /// The project's name: lowercase letters, digits and '-'.
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: new::Lang,
        /// Where to write it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// warden's `guest/` crate, for a Rust project (default: the source tree this
        /// binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
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
        #[arg(long = "as", default_value = warden_core::tokens::LOCAL_OPERATOR)]
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
    Approvals(approvals::ApprovalsCommand),
    /// Test approval policies against cases of expected decisions.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Verify, tail and search the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List and inspect past runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Schedules: next fire times, last runs and success rates; run, pause, resume.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Upstream MCP servers: their state and tools; accept a changed tool definition.
    #[command(subcommand)]
    Upstreams(upstreams::UpstreamsCommand),
    /// The store: migrate the shared PostgreSQL's schema, check it answers.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Webhook triggers (`/hooks/NAME` on `warden serve`).
    #[command(subcommand)]
    Triggers(schedules::TriggersCommand),
    /// Manage the credential vault (values never on the command line or in output).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
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
    /// Usage against each limit (used, maximum, left, when it resets), what runs used
    /// since a time, open circuit breakers, what is suspended.
    Usage(budgets::UsageArgs),
    /// Stop a principal, plugin, tool or schedule at once (it survives restarts; calls
    /// in flight finish): the kill switch.
    Suspend(budgets::SuspendArgs),
    /// Lift a suspension.
    Resume(budgets::ResumeArgs),
    /// Make bearer tokens for `warden serve`.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
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
            if exit::is_broken_pipe(&error) {
                return ExitCode::from(exit::OK);
            }
            eprintln!("warden: {error:#}");
            ExitCode::from(if exit::is_not_recorded(&error) {
                exit::NOT_RECORDED
            } else {
                exit::USAGE
            })
        }
    }
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
        let config = &cli.config;
        match cli.command {
            Command::Check => check::run(config).await.context("check"),
            Command::Tools { json } => tools::run(config, json).await.context("tools"),
            Command::New {
                kind,
                ref name,
                lang,
                ref dir,
                ref sdk,
            } => new::run(kind, name, lang, dir.as_deref(), sdk.as_deref()).context("new"),
            Command::Inspect { ref file, json } => {
                inspect::run(file, json).await.context("inspect")
            }
            Command::Call {
                ref tool,
                ref input,
                ref principal,
                wait,
                report,
            } => call::run(
                config,
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
            } => serve::run(config, listen, public, stdio, principal.clone())
                .await
                .context("serve"),
            Command::Reload => serve::reload(config).context("reload"),
            Command::Usage(ref args) => budgets::usage(config, args).await.context("usage"),
            Command::Suspend(ref args) => budgets::suspend(config, args).await.context("suspend"),
            Command::Resume(ref args) => budgets::resume(config, args).await.context("resume"),
            Command::Tokens(ref command) => tokens::run(config, command).context("tokens"),
            Command::Secrets(ref command) => secrets::run(config, command).context("secrets"),
            Command::Audit(ref command) => audit::run(config, command).await.context("audit"),
            Command::Runs(ref command) => runs::run(config, command).context("runs"),
            Command::Schedules(ref command) => {
                schedules::run(config, command).await.context("schedules")
            }
            Command::Upstreams(ref command) => {
                upstreams::run(config, command).await.context("upstreams")
            }
            Command::Store(ref command) => store::run(config, command.clone()).context("store"),
            Command::Triggers(ref command) => {
                schedules::triggers(config, command).context("triggers")
            }
            Command::Approvals(ref command) => {
                approvals::run(config, command).await.context("approvals")
            }
            Command::Policy(ref command) => policy::run(command).await.context("policy"),
        }
    })
}
