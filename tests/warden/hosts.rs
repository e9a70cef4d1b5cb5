//! Several `warden` hosts on one PostgreSQL, end to end: real servers and runtimes
//! with data dirs of their own sharing a database the suite starts, reached by real
//! MCP clients. A call held on one host runs once in the cluster; limits and the kill
//! switch hold in the whole cluster; a host killed mid-call and a database restarted
//! under load lose nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::OK;
use crate::support::Env;
use crate::support::postgres::postgres;

/// `n` hosts, each a data dir of its own with `body` (after the test tokens) and a
/// `[store]` on the database at `url` naming it `host-I` (plus `store`'s keys).
fn cluster(n: usize, url: &str, body: &str, store: &str) -> Vec<Env> {
    (0..n)
        .map(|i| {
            let env = Env::new("");
            env.write_config(&format!(
                "{}\n{body}\n[store]\nurl = \"{url}\"\nhost = \"host-{i}\"\n{store}",
                super::approvals::test_tokens()
            ));
            env
        })
        .collect()
}

/// A runtime (in this process) for each host.
async fn runtimes(hosts: &[Env]) -> Vec<Arc<warden_core::Runtime>> {
    let mut out = Vec::new();
    for env in hosts {
        let config = warden_core::Config::load(&env.config()).unwrap();
        out.push(Arc::new(warden_core::Runtime::load(config).await.unwrap()));
    }
    out
}

/// Three hosts (data dirs, audit logs, run histories of their own) on one PostgreSQL:
/// a call held on the first, whose caller waits there, is approved through the
/// second's API; it runs on exactly one host, and the waiting caller gets its result
/// whichever host ran it.
#[test]
fn a_call_held_on_one_host_and_approved_through_another_runs_once_in_the_cluster() {
    use super::approvals::{note_exists, queue_env, wait_until};
    let url = postgres().database();
    let hosts: Vec<Env> = (0..3)
        .map(|i| {
            let env = queue_env(
                "tools = { notes_write = \"hard\" }",
                super::approvals::ONCALL,
            );
            env.append_config(&format!(
                "\n[store]\nurl = \"{url}\"\nlease_secs = 5\nhost = \"host-{i}\"\n"
            ));
            env
        })
        .collect();
    let mut servers = [hosts[1].serve(), hosts[2].serve()];
    let input = r#"{"name":"cluster","text":"written once"}"#;
    let waiter = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("-c")
        .arg(hosts[0].config())
        .args([
            "call",
            "notes_write",
            "--input",
            input,
            "--as",
            "agent",
            "--wait",
            "60",
        ])
        .current_dir(hosts[0].path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    wait_until("the held request to reach every host", || {
        let listed = hosts[2].warden(&["approvals", "list", "--json"]);
        // One JSON object per line.
        let first = listed.stdout.lines().next().unwrap_or_default();
        match serde_json::from_str::<Value>(first).ok() {
            Some(a) => {
                id = a["id"].as_str().unwrap_or_default().to_string();
                true
            }
            None => false,
        }
    });
    let approve = hosts[1].warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(approve.code, OK, "{approve:?}");
    assert!(approve.stderr.contains("through the server"), "{approve:?}");
    let waited = crate::support::Run::from(waiter.wait_with_output().unwrap());
    assert_eq!(
        waited.code, OK,
        "the waiting caller gets the result: {waited:?}"
    );
    let report: Value = serde_json::from_str(&waited.stdout).unwrap();
    assert_eq!(report["name"], "cluster", "the tool's output: {waited:?}");
    // Give every host its chance to run it a second time.
    std::thread::sleep(Duration::from_millis(1500));
    let ran: Vec<usize> = (0..3)
        .filter(|&i| note_exists(&hosts[i], "cluster"))
        .collect();
    assert_eq!(ran.len(), 1, "ran on hosts {ran:?}");
    assert_eq!(
        super::approvals::approval(&hosts[2], &id)["state"],
        "executed"
    );
    // One run history for the cluster: the run's row, as any host reads it, is its
    // outcome (the held row written on host 0 never replaces it) and names the host
    // that ran it.
    let runs = hosts[2].warden(&["runs", "list", "--tool", "notes_write", "--json"]);
    let rows: Vec<Value> = runs
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(rows.len(), 1, "{runs:?}");
    assert_eq!(rows[0]["status"], "ok", "{runs:?}");
    assert_eq!(rows[0]["host"], format!("host-{}", ran[0]), "{runs:?}");
    let check = hosts[0].warden(&["store", "check"]);
    assert_eq!(check.code, OK, "{check:?}");
    assert!(
        check.stdout.contains("host host-1: heartbeat")
            && check.stdout.contains("host host-2: heartbeat")
            && check.stdout.contains("replicas: none"),
        "{check:?}"
    );
    for s in &mut servers {
        assert!(s.stop().success());
    }

    // Each host's chain, and the request's records across them.
    let dirs: Vec<String> = hosts
        .iter()
        .map(|h| h.path().join("data/audit").display().to_string())
        .collect();
    let mut args = vec!["audit", "verify", "--cluster"];
    args.extend(dirs.iter().map(String::as_str));
    let verified = hosts[0].warden(&args);
    assert_eq!(verified.code, OK, "{verified:?}");
    assert!(
        verified.stdout.contains("host host-1:")
            && verified
                .stdout
                .contains("1 approval requests, every record where it belongs"),
        "{verified:?}"
    );
    let without_first = hosts[0].warden(&["audit", "verify", "--cluster", &dirs[1], &dirs[2]]);
    let decided_on = if ran == [0] { "" } else { "recorded on" };
    assert_eq!(without_first.code, 1, "{without_first:?}");
    assert!(
        without_first.stdout.contains(decided_on)
            && without_first.stdout.contains("its request is in no log"),
        "{without_first:?}"
    );
}

/// The status of a `text_stats` call made by `who` on `rt`.
async fn text_stats_as(rt: &warden_core::Runtime, who: &str, input: &str) -> String {
    let request = warden_core::call::CallRequest {
        principal: who,
        tool: "text_stats",
        input,
        started_by: None,
    };
    let report = rt.call(request).await.expect("the call is made");
    report.outcome.status().to_string()
}

/// Three hosts' runtimes on one PostgreSQL, callers racing on all of them: a quota of
/// 10 calls and a rate with a burst of 4 admit exactly 10 and 4 in the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_n_admits_exactly_n_across_hosts() {
    let url = postgres().database();
    let envs = cluster(
        3,
        &url,
        r#"
[[plugin]]
id = "text-stats"
component = "{text-stats}"
[plugin.limits]
fuel = 100000000

[[limit]]
name = "fuel"
scope = { principal = "carol" }
kind = "quota"
measure = "fuel"
max = 1
per = "hour"

[[limit]]
name = "ten"
scope = { principal = "alice" }
kind = "quota"
measure = "calls"
max = 10
per = "hour"

[[limit]]
name = "burst"
scope = { principal = "bob" }
kind = "rate"
rate = 1
per = "hour"
burst = 4
"#,
        "",
    );
    let hosts = runtimes(&envs).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let rt = hosts[i % 3].clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let who = if i < 36 { "alice" } else { "bob" };
            let input = format!(r#"{{"text":"caller {i}"}}"#);
            barrier.wait().await;
            (who, text_stats_as(&rt, who, &input).await)
        }));
    }
    let mut ok = std::collections::HashMap::new();
    for t in tasks {
        let (who, status) = t.await.unwrap();
        assert!(status == "ok" || status == "limited", "{who}: {status}");
        *ok.entry(who).or_insert(0) += usize::from(status == "ok");
    }
    assert_eq!((ok["alice"], ok["bob"]), (10, 4), "admitted in the cluster");

    // Fuel is known when a call ends: one call on host 0 uses the quota up, and the
    // other hosts refuse once its count has reached the store (it is not waited for).
    let call = |rt: Arc<warden_core::Runtime>| async move {
        text_stats_as(&rt, "carol", r#"{"text":"fuel"}"#).await
    };
    assert_eq!(call(hosts[0].clone()).await, "ok");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for rt in &hosts[1..] {
        loop {
            let status = call(rt.clone()).await;
            if status == "limited" {
                break;
            }
            assert_eq!(status, "ok");
            assert!(
                std::time::Instant::now() < deadline,
                "another host still admits carol after host 0 used the fuel quota up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for rt in &hosts {
        rt.close();
    }
}

/// The shared PostgreSQL stops for a while under a stream of held calls: meanwhile
/// calls fail with a clear error and the server says it is not ready; every call that
/// was told "held" is in the queue afterwards; when the database is back, so is warden.
#[test]
fn the_database_restarted_under_load_loses_no_held_call_and_says_so_meanwhile() {
    use super::approvals::{ONCALL, queue_env};
    use crate::support::postgres::private;
    use warden_core::call::{CallRequest, Outcome};
    use warden_core::{Config, Runtime};
    let pg = private("restart");
    let url = pg.database();
    let with_password = url.replace("warden@", "warden:pg-pass-3317@");
    let env_for = |host: &str| {
        let env = queue_env("tools = { notes_write = \"hard\" }", ONCALL);
        env.append_config(&format!(
            "\n[store]\nurl = \"{with_password}\"\nlease_secs = 3\nhost = \"{host}\"\n"
        ));
        env
    };
    let (served_env, caller_env) = (env_for("served"), env_for("caller"));
    let mut served = served_env.serve();
    let ready =
        |s: &crate::support::Served| crate::support::http("GET", &s.url("/readyz"), &[], None).0;
    assert_eq!(ready(&served), 200);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = Arc::new(
        runtime
            .block_on(Runtime::load(Config::load(&caller_env.config()).unwrap()))
            .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..3 {
        let (rt, stop) = (rt.clone(), stop.clone());
        callers.push(runtime.spawn(async move {
            let mut held = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let input = format!(r#"{{"name":"n-{c}-{i}","text":"x"}}"#);
                let call = rt
                    .call(CallRequest {
                        principal: "agent",
                        tool: "notes_write",
                        input: &input,
                        started_by: None,
                    })
                    .await;
                match call {
                    Ok(report) => match (&report.outcome, &report.approval) {
                        (Outcome::Held { .. }, Some(a)) => held.push(a.id.clone()),
                        _ => errors.push(format!("{:?}", report.outcome)),
                    },
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (held, errors)
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    pg.stop();
    super::approvals::wait_until("readyz to say not ready", || ready(&served) == 503);
    std::thread::sleep(Duration::from_millis(1000));
    pg.start();
    super::approvals::wait_until("readyz to say ready again", || ready(&served) == 200);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut held, mut errors) = (Vec::new(), Vec::new());
    for c in callers {
        let (h, e) = runtime.block_on(c).unwrap();
        held.extend(h);
        errors.extend(e);
    }
    assert!(
        held.len() > 10,
        "calls were held before and after: {held:?}"
    );
    assert!(
        !errors.is_empty(),
        "calls failed while the database was down"
    );
    for e in &errors {
        assert!(
            e.contains("the database is unreachable"),
            "a clear error: {e}"
        );
        assert!(!e.contains("pg-pass-3317"), "the password never shows: {e}");
    }
    let queued = caller_env.warden(&["approvals", "list", "--limit", "10000", "--json"]);
    assert_eq!(queued.code, OK, "{queued:?}");
    for id in &held {
        assert!(
            queued.stdout.contains(id.as_str()),
            "held call {id} is in the queue"
        );
    }
    assert!(!served.log().contains("pg-pass-3317"));
    assert!(served.stop().success());
    rt.close();
}

/// A host is killed (`kill -9`) while it runs an approved call it claimed: another
/// host ends the request `failed` once the dead host's lease has run out, and never
/// runs it again; the hosts' audit logs, read together, show it ran once.
#[test]
fn a_host_killed_while_it_runs_a_claimed_call_is_recovered_by_another_never_run_twice() {
    use super::approvals::{ONCALL, approval, wait_until};
    let url = postgres().database();
    let hosts = cluster(
        2,
        &url,
        &format!(
            r#"
[approvals]
{ONCALL}

[[plugin]]
id = "hostile"
component = "{{hostile}}"
[plugin.limits]
timeout_ms = 20000

[[policy]]
id = "tiers"
component = "{{tiered-approval}}"
[policy.config]
tools = {{ spin = "hard" }}
"#
        ),
        "lease_secs = 3\n",
    );
    let held = hosts[1].warden(&["call", "spin", "--input", "{}", "--as", "agent"]);
    assert_eq!(held.code, super::HELD, "{held:?}");
    let id = serde_json::from_str::<Value>(&held.stdout).unwrap()["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut doomed = hosts[0].serve();
    let approve = hosts[0].warden(&["approvals", "approve", &id, "--token", "token-alice"]);
    assert_eq!(approve.code, OK, "{approve:?}");
    wait_until("host-0 to run it", || {
        approval(&hosts[1], &id)["state"] == "executing"
    });
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();

    let mut survivor = hosts[1].serve();
    wait_until("host-1 to end it after the lease", || {
        approval(&hosts[1], &id)["state"] == "failed"
    });
    let ended = approval(&hosts[1], &id);
    assert!(
        ended["result"]
            .as_str()
            .unwrap_or_default()
            .contains("not run again"),
        "{ended}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(survivor.stop().success());

    let dirs: Vec<String> = hosts
        .iter()
        .map(|h| h.path().join("data/audit").display().to_string())
        .collect();
    let verified = hosts[1].warden(&["audit", "verify", "--cluster", &dirs[0], &dirs[1], "--json"]);
    assert_eq!(verified.code, OK, "{verified:?}");
    let resumed = |dir: &str| {
        warden_core::store::audit::read_all(std::path::Path::new(dir))
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "run-resume" && r["approval"] == id.as_str())
            .count()
    };
    assert_eq!(
        (resumed(&dirs[0]), resumed(&dirs[1])),
        (1, 0),
        "ran once, on host-0"
    );
}

/// The kill switch holds in the whole cluster: what one host suspends, another refuses
/// after its next look at the store, and a resume on either lifts it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_made_on_one_host_holds_on_every_host() {
    use warden_core::Runtime;
    use warden_core::call::CallRequest;
    use warden_core::governance::budgets::Target as Suspended;
    let url = postgres().database();
    let envs = cluster(
        2,
        &url,
        "[[plugin]]\nid = \"text-stats\"\ncomponent = \"{text-stats}\"\n",
        "",
    );
    let hosts = runtimes(&envs).await;
    let request = CallRequest {
        principal: "alice",
        tool: "text_stats",
        input: r#"{"text":"x"}"#,
        started_by: None,
    };
    fn call<'a>(
        rt: &'a Runtime,
        request: CallRequest<'a>,
    ) -> impl std::future::Future<Output = Result<warden_core::CallReport, warden_core::CallError>> + 'a
    {
        rt.call(request)
    }
    assert_eq!(
        call(&hosts[1], request).await.unwrap().outcome.status(),
        "ok"
    );
    hosts[0]
        .suspend(Suspended::Principal, "alice", "incident 42", "ops")
        .await
        .unwrap();
    hosts[1].drive().await.unwrap();
    let refused = call(&hosts[1], request).await.unwrap();
    assert_ne!(refused.outcome.status(), "ok");
    assert!(
        format!("{:?}", refused.outcome).contains("incident 42"),
        "{:?}",
        refused.outcome
    );
    assert!(
        hosts[1]
            .unsuspend(Suspended::Principal, "alice", "ops")
            .await
            .unwrap()
    );
    hosts[0].drive().await.unwrap();
    assert_eq!(
        call(&hosts[0], request).await.unwrap().outcome.status(),
        "ok"
    );
    for rt in &hosts {
        rt.close();
    }
}

/// Agents reach three servers over MCP (the official Python SDK, streamable HTTP),
/// all at once: a quota of 5 calls in the whole cluster admits 5 of their 12 calls.
#[test]
fn agents_over_mcp_on_three_hosts_share_one_quota() {
    let url = postgres().database();
    let hosts = cluster(
        3,
        &url,
        r#"
[[plugin]]
id = "text-stats"
component = "{text-stats}"

[[limit]]
name = "five"
scope = { principal = "agent" }
kind = "quota"
measure = "calls"
max = 5
per = "hour"
"#,
        "",
    );
    let mut servers: Vec<_> = hosts.iter().map(Env::serve).collect();
    let clients: Vec<_> = servers
        .iter()
        .map(|s| {
            crate::support::mcp_client_spawn(&[
                "--http",
                &s.url("/mcp"),
                "--token",
                "token-agent",
                "load",
                "4",
                "text_stats",
                r#"{"text":"one of twelve"}"#,
            ])
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let run = crate::support::Run::from(c.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
        let out: Value = serde_json::from_str(run.stdout.trim()).unwrap();
        ok += out["ok"].as_u64().unwrap();
        refused += out["errors"].as_u64().unwrap();
    }
    assert_eq!((ok, refused), (5, 7), "one quota for the cluster");
    for s in &mut servers {
        assert!(s.stop().success());
    }
}

/// Three servers with the same schedule every second: each fire time runs on exactly
/// one host of the cluster.
#[test]
fn a_schedule_fires_once_per_time_across_three_hosts() {
    let url = postgres().database();
    let hosts = cluster(
        3,
        &url,
        r#"
[[plugin]]
id = "text-stats"
component = "{text-stats}"

[[schedule]]
name = "tick"
cron = "* * * * * *"
tool = "text_stats"
input = { text = "scheduled work" }
"#,
        "",
    );
    let mut servers: Vec<_> = hosts.iter().map(Env::serve).collect();
    std::thread::sleep(Duration::from_millis(4500));
    for s in &mut servers {
        assert!(s.stop().success());
    }
    // The cluster's one run history, read through any host.
    let run = hosts[1].warden(&[
        "runs",
        "list",
        "--started-by",
        "schedule:tick",
        "--limit",
        "1000",
        "--json",
    ]);
    assert_eq!(run.code, OK, "{run:?}");
    let mut times = Vec::new();
    for line in run.stdout.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        assert!(
            r["host"].as_str().is_some_and(|h| h.starts_with("host-")),
            "{r}"
        );
        times.push(r["started_ms"].as_i64().unwrap());
    }
    times.sort_unstable();
    assert!(times.len() >= 3, "the schedule fired: {times:?}");
    // Fire times are a second apart; one fire run on two hosts would start within
    // milliseconds of itself.
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] > 200,
            "a fire time ran twice in the cluster: {times:?}"
        );
    }
}

/// Signed in through one host is signed in on every host (a load balancer may send the
/// next request anywhere); signed out through another, the cookie signs no one in on
/// any host.
#[test]
fn a_console_session_holds_on_every_host_until_signed_out_on_any() {
    use super::approvals::{ONCALL, queue_env};
    use super::console::{field, get, session_cookie};
    let url = postgres().database();
    let hosts: Vec<Env> = (0..2)
        .map(|i| {
            let env = queue_env("tools = { notes_write = \"hard\" }", ONCALL);
            env.append_config(&format!(
                "\n[store]\nurl = \"{url}\"\nhost = \"host-{i}\"\n"
            ));
            env
        })
        .collect();
    let served: Vec<_> = hosts.iter().map(Env::serve).collect();
    let cookie = session_cookie(&served[0], "token-alice").expect("alice signs in");
    let (status, _, page) = get(&served[1], "/console/approvals", &cookie);
    assert_eq!(status, 200, "the other host knows the session: {page}");
    let csrf = field(&page, "csrf");
    let (status, head, _) = crate::support::exchange(
        "POST",
        &served[1].url("/console/logout"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &cookie),
        ],
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(status, 303, "{head}");
    for s in &served {
        let (status, head, _) = get(s, "/console/approvals", &cookie);
        assert_eq!(status, 303, "signed out everywhere: {head}");
        assert!(head.contains("/console/login"), "{head}");
    }
}
