//! `warden-bench shared-store --url URL`: warden on a PostgreSQL several hosts share,
//! against the embedded SQLite: an auto-tier governed call (with and without a limit
//! counted in the cluster), held calls through one and three hosts (runtimes in this
//! process, each with its own data dir and audit log), the database round trips each
//! costs, and how long a dead host's claim takes to be recovered.
//!
//! The database is the caller's (BENCHMARKS.md says how to start a throw-away one);
//! each run uses a fresh schema of its own in it and drops it at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use warden_core::call::{CallRequest, Outcome};
use warden_core::config::{Config, StoreConfig};
use warden_core::governance::approvals::ApprovalQueue;
use warden_core::runtime::Runtime;
use warden_core::runtime::driver::Resume;
use warden_core::store::postgres::{STATS, Target};

use crate::bench::{BenchCall, approve, hold_every_call, in_flight, stats};

#[derive(clap::Args)]
pub struct BenchClusterArgs {
    #[command(flatten)]
    call: BenchCall,
    /// The PostgreSQL to measure against (a database the benchmark may create
    /// schemas in).
    #[arg(long, env = "WARDEN_BENCH_STORE_URL")]
    url: String,
    /// Auto-tier calls per round (three rounds, alternating backends).
    #[arg(long, default_value_t = 3000)]
    iterations: usize,
    /// Held calls (enqueue, decide, execute) per host count.
    #[arg(long, default_value_t = 600)]
    held: usize,
}

fn round_trips() -> u64 {
    STATS.round_trips.load(Ordering::Relaxed)
}

/// `url` with its own schema: every table the benchmark makes lives there.
fn in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

fn admin(url: &str, sql: &str) -> Result<()> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || -> Result<()> {
        let target = Target::parse(&url, None).map_err(anyhow::Error::msg)?;
        let mut client = target.connect()?;
        client.batch_execute(&sql)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the admin connection panicked"))?
}

/// `base` as host `n` of a cluster on `url` (or on the embedded store when `url` is
/// `None`), with its own data dir.
fn host(base: &Config, url: Option<&str>, n: usize, tag: &str) -> Result<Config> {
    let mut c = base.clone();
    c.data_dir = base.data_dir.join(format!("bench-cluster-{tag}-{n}"));
    let _ = std::fs::remove_dir_all(&c.data_dir);
    std::fs::create_dir_all(&c.data_dir)?;
    c.runs_db = c.data_dir.join("runs.db");
    c.audit.dir = c.data_dir.join("audit");
    c.store = StoreConfig {
        shared: url
            .map(|u| Target::parse(u, None).map_err(anyhow::Error::msg))
            .transpose()?,
        lease: Duration::from_secs(3),
        host: format!("bench-{n}"),
    };
    Ok(c)
}

pub async fn run(
    config: &std::path::Path,
    args: &BenchClusterArgs,
) -> Result<std::process::ExitCode> {
    let schema = format!("bench_{}", std::process::id());
    admin(&args.url, &format!("CREATE SCHEMA {schema}"))?;
    let url = in_schema(&args.url, &schema);
    let result = measure(config, args, &url).await;
    admin(&args.url, &format!("DROP SCHEMA {schema} CASCADE"))?;
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The floor every figure stands on: one round trip, and one durable commit.
fn floor(url: &str) -> Result<()> {
    let url = url.to_string();
    let (trip, commit) = std::thread::spawn(move || -> Result<(Duration, Duration)> {
        let target = Target::parse(&url, None).map_err(anyhow::Error::msg)?;
        let mut client = target.connect()?;
        client.batch_execute("CREATE TABLE bench_floor (n BIGINT)")?;
        let select = client.prepare("SELECT 1")?;
        let insert = client.prepare("INSERT INTO bench_floor VALUES (1)")?;
        let (mut trips, mut commits) = (Vec::new(), Vec::new());
        for _ in 0..500 {
            let t = Instant::now();
            client.query(&select, &[])?;
            trips.push(t.elapsed());
            let t = Instant::now();
            client.execute(&insert, &[])?;
            commits.push(t.elapsed());
        }
        Ok((stats(trips).p50, stats(commits).p50))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the floor's connection panicked"))??;
    println!(
        "{:<40} one round trip p50 {:.1} µs, one durable commit p50 {:.1} µs",
        "floor (loopback PostgreSQL)",
        trip.as_secs_f64() * 1e6,
        commit.as_secs_f64() * 1e6
    );
    Ok(())
}

async fn measure(config: &std::path::Path, args: &BenchClusterArgs, url: &str) -> Result<()> {
    floor(url)?;
    let base = Config::load(config)?;
    let request = CallRequest {
        principal: "bench",
        tool: &args.call.tool,
        input: &args.call.input,
        started_by: None,
    };

    // Auto tier: the call never waits on the shared store unless a limit counts it.
    let mut with_limit = base.clone();
    with_limit.limits = Config::parse(
        &base.file,
        "[[limit]]\nname = \"bench-quota\"\nkind = \"quota\"\nmeasure = \"calls\"\nmax = 1000000000\nper = \"day\"\n",
    )?
    .limits;
    for (label, base) in [
        ("auto-tier call", &base),
        ("auto-tier call, one quota", &with_limit),
    ] {
        let lite = Runtime::load(host(base, None, 0, "lite")?).await?;
        let shared = Runtime::load(host(base, Some(url), 0, "pg")?).await?;
        let (mut lite_p50, mut pg_p50, mut trips) = (Vec::new(), Vec::new(), 0u64);
        for _ in 0..3 {
            for (which, rt, count) in [(&mut lite_p50, &lite, false), (&mut pg_p50, &shared, true)]
            {
                let mut samples = Vec::with_capacity(args.iterations);
                let before = round_trips();
                for i in 0..args.iterations + 100 {
                    let t = Instant::now();
                    let report = rt.call(request).await?;
                    if !matches!(report.outcome, Outcome::Ok { .. }) {
                        bail!("the benchmark call did not run: {:?}", report.outcome);
                    }
                    if i >= 100 {
                        samples.push(t.elapsed());
                    }
                }
                if count {
                    trips += round_trips() - before;
                }
                which.push(stats(samples).p50);
            }
        }
        lite_p50.sort_unstable();
        pg_p50.sort_unstable();
        println!(
            "{label:<40} SQLite p50 {:>7.1} µs   PostgreSQL p50 {:>7.1} µs   {:.2}x   {:.2} round trips/call",
            lite_p50[1].as_secs_f64() * 1e6,
            pg_p50[1].as_secs_f64() * 1e6,
            pg_p50[1].as_secs_f64() / lite_p50[1].as_secs_f64(),
            trips as f64 / (3 * (args.iterations + 100)) as f64
        );
        lite.close();
        shared.close();
    }

    // Held calls: enqueued on one host, decided on the next, run where the caller waits.
    let mut held_base = base.clone();
    held_base.audit.enabled = true;
    hold_every_call(&mut held_base);
    for hosts in [1usize, 3] {
        for (label, store) in [("SQLite", None), ("PostgreSQL", Some(url))] {
            if store.is_none() && hosts > 1 {
                continue;
            }
            let mut rts = Vec::new();
            for n in 0..hosts {
                let tag = if store.is_some() {
                    "held-pg"
                } else {
                    "held-lite"
                };
                rts.push(Arc::new(
                    Runtime::load(host(&held_base, store, n, tag)?).await?,
                ));
            }
            let rts = Arc::new(rts);
            let call = Arc::new((args.call.tool.clone(), args.call.input.clone()));
            // Round trips, one call at a time (other calls in flight would count too).
            let (mut hold_trips, mut all_trips) = (0, 0);
            const ALONE: usize = 50;
            for i in 0..ALONE {
                let (hold, all) = lifecycle(&rts, i, &call).await?;
                hold_trips += hold;
                all_trips += all;
            }
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let concurrency = 16;
            let per_task = (args.held / concurrency).max(1);
            let (r, nx, c) = (rts.clone(), next.clone(), call.clone());
            let elapsed = in_flight(concurrency, per_task, move || {
                let (rts, next, call) = (r.clone(), nx.clone(), c.clone());
                async move {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    lifecycle(&rts, i, &call).await.map(|_| ())
                }
            })
            .await?;
            let n = per_task * concurrency;
            print!(
                "{:<40} {:>8.0} calls/s ({n} in {:.2} s, {concurrency} in flight)",
                format!("held calls, {hosts} host(s), {label}"),
                n as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64()
            );
            if store.is_some() {
                print!(
                    "   round trips: {:.1} to hold, {:.1} for the whole life",
                    hold_trips as f64 / ALONE as f64,
                    all_trips as f64 / ALONE as f64
                );
            }
            println!();
            for rt in rts.iter() {
                rt.close();
            }
        }
    }

    lease_recovery(&held_base, url).await
}

/// Held call `i`: enqueued on one host, decided on the next, run where its caller
/// waits. The round trips to hold it, and in all.
async fn lifecycle(rts: &[Arc<Runtime>], i: usize, call: &(String, String)) -> Result<(u64, u64)> {
    let (here, there) = (&rts[i % rts.len()], &rts[(i + 1) % rts.len()]);
    let t0 = round_trips();
    let report = here
        .call(CallRequest {
            principal: "bench",
            tool: &call.0,
            input: &call.1,
            started_by: None,
        })
        .await?;
    let held_at = round_trips();
    let held = report.approval.context("the benchmark call was not held")?;
    approve(there, &held).await?;
    match here.resume(&held.id).await? {
        Resume::Ran(r) if matches!(r.outcome, Outcome::Ok { .. }) => {
            Ok((held_at - t0, round_trips() - t0))
        }
        other => bail!("approved call did not run: {other:?}"),
    }
}

/// A host claims an approved call and dies; another notices within its lease.
async fn lease_recovery(base: &Config, url: &str) -> Result<()> {
    let target = Target::parse(url, None).map_err(anyhow::Error::msg)?;
    let lease = Duration::from_secs(3);
    let mut times = Vec::new();
    let survivor = ApprovalQueue::open_shared(&target, lease, "bench-survivor", None)?;
    for round in 0..3 {
        let config = host(base, Some(url), round, "lease")?;
        let id = {
            let doomed = Runtime::load(config).await?;
            let report = doomed
                .call(CallRequest {
                    principal: "bench",
                    tool: "text_stats",
                    input: r#"{"text":"x"}"#,
                    started_by: None,
                })
                .await?;
            let held = report.approval.context("not held")?;
            approve(&doomed, &held).await?;
            let queue = doomed.approvals.as_ref().context("queue disabled")?;
            if queue.claim(&held.id, vec![], 0).await?.is_none() {
                bail!("the doomed host did not win its claim");
            }
            doomed.close();
            held.id
        };
        let died = Instant::now();
        loop {
            let now = warden_core::now_ms() as i64;
            if survivor.recover(now).await?.iter().any(|a| a.id == id) {
                break;
            }
            if died.elapsed() > lease * 4 {
                bail!("a dead host's claim was not recovered");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(died.elapsed());
    }
    times.sort_unstable();
    println!(
        "{:<40} median {:.2} s (lease {} s, heartbeat every {} s; min {:.2}, max {:.2})",
        "dead host's claim recovered after",
        times[1].as_secs_f64(),
        lease.as_secs(),
        lease.as_secs() / 3,
        times[0].as_secs_f64(),
        times[2].as_secs_f64()
    );
    Ok(())
}
