//! The approval queue on a PostgreSQL several hosts share (`[store] url`), against a
//! real server the suite starts: the queue's behaviours run against both backends,
//! hosts race for one request, a dead host's claim is recovered after its lease, and
//! the schema and the URL's password are handled as an operator expects.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warden_core::call::{ApprovalState, PolicyHold, Tier};
use warden_core::config::ApprovalsConfig;
use warden_core::governance::approvals::{
    Approval, ApprovalError, ApprovalQueue, Ballot, Choice, NewRequest, Ran, Sealer, prepare,
};
use warden_core::store::postgres::Target;

use super::{NOT_RECORDED, OK, USAGE};
use crate::support::Env;
use crate::support::postgres::postgres;

fn approvers(n: usize) -> ApprovalsConfig {
    ApprovalsConfig {
        approvers: (0..n).map(|i| format!("approver-{i}")).collect(),
        ..ApprovalsConfig::default()
    }
}

fn request(config: &ApprovalsConfig, run: &str, tier: Tier, timeout_secs: u32) -> Approval {
    let holds = [PolicyHold {
        policy: "p".into(),
        tier,
        approvers: vec![],
        approvals_required: None,
    }];
    prepare(
        config,
        &NewRequest {
            run_id: run,
            principal: "agent",
            tool: "t",
            plugin: "p",
            plugin_digest: "sha256:0",
            input: "{\"to\":\"ops@example.com\"}",
            decisions: Value::Null,
            tier,
            reasons: &[],
            holds: &holds,
            timeout_secs: Some(timeout_secs),
            now_ms: 1_000,
            started_by: None,
        },
    )
}

fn ballot<'a>(who: &'a str, choice: Choice, sha: &'a str, now_ms: i64) -> Ballot<'a> {
    Ballot {
        principal: who,
        choice,
        reason: Some("checked"),
        via: "api",
        input_sha256: sha,
        on_behalf_of: None,
        now_ms,
    }
}

fn shared(url: &str, lease: Duration) -> ApprovalQueue {
    let target = Target::parse(url, None).expect("a valid url");
    ApprovalQueue::open_shared(&target, lease, "test-host", Some(Sealer::new(&[7; 32])))
        .expect("open the shared queue")
}

/// The queue's life cycle, the same on either backend: approve, claim once, finish;
/// reject; a hard request times out; a vote on another input is refused; notices.
async fn queue_behaviours(queue: &ApprovalQueue) {
    let config = approvers(2);
    let a = request(&config, "run-a", Tier::Hard, 60);
    queue.insert(&a, Some("{\"n\":1}")).await.unwrap();
    assert_eq!(queue.pending().unwrap(), 1);
    let got = queue.get(&a.id).unwrap().unwrap();
    assert_eq!(got.input, a.input, "the sealed input opens again");
    assert_eq!(queue.next_expiry_ms().unwrap(), Some(a.expires_ms));

    let wrong = queue
        .decide(
            &config,
            &a.id,
            &ballot("approver-0", Choice::Approve, "sha256:other", 2_000),
        )
        .await;
    assert!(
        matches!(wrong, Err(ApprovalError::InputChanged { .. })),
        "{wrong:?}"
    );
    let stranger = queue
        .decide(
            &config,
            &a.id,
            &ballot("mallory", Choice::Approve, &a.input_sha256, 2_000),
        )
        .await;
    assert!(
        matches!(stranger, Err(ApprovalError::NotAllowed { .. })),
        "{stranger:?}"
    );
    let decided = queue
        .decide(
            &config,
            &a.id,
            &ballot("approver-0", Choice::Approve, &a.input_sha256, 2_000),
        )
        .await
        .unwrap();
    assert_eq!(decided.state, ApprovalState::Approved);
    assert_eq!(queue.approved().unwrap(), vec![a.id.clone()]);
    assert_eq!(queue.with_unaudited_votes().unwrap(), vec![a.id.clone()]);
    let claimed = queue.claim(&a.id, vec![1], 3_000).await.unwrap().unwrap();
    assert_eq!(claimed.state, ApprovalState::Executing);
    assert!(claimed.votes.iter().all(|v| v.audited));
    assert!(queue.claim(&a.id, vec![], 3_000).await.unwrap().is_none());
    let ran = Ran {
        status: "ok".into(),
        output: Some("{\"sent\":true}".into()),
        error: None,
        backtrace: None,
    };
    queue
        .finish(&a.id, ApprovalState::Executed, "ran: ok", Some(&ran), 4_000)
        .await
        .unwrap();
    assert_eq!(
        queue.ran(&a.id).unwrap(),
        Some(ran),
        "the result travels with the request"
    );
    let done = queue.get(&a.id).unwrap().unwrap();
    assert_eq!(done.state, ApprovalState::Executed);
    assert_eq!(done.input, warden_core::governance::approvals::REMOVED);

    let b = request(&config, "run-b", Tier::Hard, 60);
    queue.insert(&b, None).await.unwrap();
    let rejected = queue
        .decide(
            &config,
            &b.id,
            &ballot("approver-1", Choice::Reject, &b.input_sha256, 2_000),
        )
        .await
        .unwrap();
    assert_eq!(rejected.state, ApprovalState::Rejected);
    let late = queue
        .decide(
            &config,
            &b.id,
            &ballot("approver-0", Choice::Approve, &b.input_sha256, 2_500),
        )
        .await;
    assert!(
        matches!(late, Err(ApprovalError::AlreadyDecided { .. })),
        "{late:?}"
    );

    let c = request(&config, "run-c", Tier::Hard, 1);
    queue.insert(&c, None).await.unwrap();
    let settled = queue.expire_due(c.expires_ms).await.unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].state, ApprovalState::Expired);

    let listed = queue.list(None, None, 10).unwrap();
    let ids: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let page = queue
        .list(None, Some((listed[0].created_ms, &listed[0].id)), 10)
        .unwrap();
    assert_eq!(page.len(), 2, "the page after the newest");
    assert_eq!(
        queue
            .list(Some(ApprovalState::Rejected), None, 10)
            .unwrap()
            .len(),
        1
    );

    assert_eq!(queue.due_notices(5_000).unwrap().len(), 1);
    queue
        .notice_attempted(&a.id, Err("503".into()), None, 5_000)
        .await
        .unwrap();
    let notice = queue.notice(&a.id).unwrap().unwrap();
    assert_eq!(
        (notice.attempts, notice.delivered, notice.gave_up),
        (1, false, true)
    );
    assert!(queue.due_notices(9_000).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_queue_behaves_the_same_on_postgresql_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let lite = ApprovalQueue::open(&dir.path().join("runs.db"), Some(Sealer::new(&[7; 32])))
        .expect("open the embedded queue");
    queue_behaviours(&lite).await;
    let pg = shared(&postgres().database(), Duration::from_secs(15));
    queue_behaviours(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_approvals_through_two_hosts_decide_once_and_one_host_runs_it() {
    let url = postgres().database();
    let hosts = [
        Arc::new(shared(&url, Duration::from_secs(15))),
        Arc::new(shared(&url, Duration::from_secs(15))),
    ];
    let config = Arc::new(approvers(64));
    let a = request(&config, "run-race", Tier::Hard, 600);
    hosts[0].insert(&a, None).await.unwrap();
    let mut votes = Vec::new();
    for i in 0..64 {
        let (host, config, a) = (hosts[i % 2].clone(), config.clone(), a.clone());
        votes.push(tokio::spawn(async move {
            let who = format!("approver-{i}");
            host.decide(
                &config,
                &a.id,
                &ballot(&who, Choice::Approve, &a.input_sha256, 2_000),
            )
            .await
        }));
    }
    let mut won = 0;
    for v in votes {
        match v.await.unwrap() {
            Ok(decided) => {
                assert_eq!(decided.state, ApprovalState::Approved);
                won += 1;
            }
            Err(ApprovalError::AlreadyDecided { .. }) => {}
            Err(e) => panic!("a vote failed otherwise: {e}"),
        }
    }
    assert_eq!(won, 1, "the first decision stands, across hosts");
    let stored = hosts[1].get(&a.id).unwrap().unwrap();
    assert_eq!(stored.votes.len(), 1, "{:?}", stored.votes);

    let mut claims = Vec::new();
    for i in 0..64 {
        let (host, id) = (hosts[i % 2].clone(), a.id.clone());
        claims.push(tokio::spawn(async move {
            host.claim(&id, vec![], 3_000).await.unwrap()
        }));
    }
    let mut runs = 0;
    for c in claims {
        runs += usize::from(c.await.unwrap().is_some());
    }
    assert_eq!(runs, 1, "exactly one claim across both hosts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_claim_ends_failed_on_another_host_after_its_lease_never_run_again() {
    let url = postgres().database();
    let lease = Duration::from_secs(3);
    let config = approvers(1);
    let a = request(&config, "run-dead", Tier::Hard, 600);
    let survivor = shared(&url, lease);
    {
        let doomed = shared(&url, lease);
        doomed.insert(&a, None).await.unwrap();
        doomed
            .decide(
                &config,
                &a.id,
                &ballot("approver-0", Choice::Approve, &a.input_sha256, 2_000),
            )
            .await
            .unwrap();
        assert!(doomed.claim(&a.id, vec![], 3_000).await.unwrap().is_some());
        // The host stops here: no finish, no more heartbeats.
    }
    assert!(
        survivor.recover(4_000).await.unwrap().is_empty(),
        "a claim within its lease is left alone"
    );
    assert!(
        survivor
            .claim(&a.id, vec![], 4_000)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let recovered = survivor.recover(9_000).await.unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].state, ApprovalState::Failed);
    assert!(
        recovered[0]
            .result
            .as_deref()
            .is_some_and(|r| r.contains("not run again")),
        "{:?}",
        recovered[0].result
    );
    assert!(
        survivor
            .claim(&a.id, vec![], 9_500)
            .await
            .unwrap()
            .is_none()
    );
    assert!(survivor.recover(10_000).await.unwrap().is_empty());
}

#[test]
fn store_check_and_migrate_name_the_server_never_its_password_and_refuse_a_newer_schema() {
    let pg = postgres();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let with_password = url.replace("warden@", "warden:pg-pass-8841@");
    let env = Env::new("");
    env.write_config("[store]\nurl_env = \"WARDEN_TEST_STORE\"\nlease_secs = 5\n");
    let envs = [("WARDEN_TEST_STORE", with_password.as_str())];
    let check = env.warden_with_env(&["store", "check"], &envs);
    assert_eq!(check.code, NOT_RECORDED, "not migrated yet: {check:?}");
    assert!(
        check.stdout.contains("schema version: 0") && check.stdout.contains("warden store migrate"),
        "{check:?}"
    );
    let migrate = env.warden_with_env(&["store", "migrate"], &envs);
    assert_eq!(migrate.code, OK, "{migrate:?}");
    let check = env.warden_with_env(&["store", "check", "--json"], &envs);
    assert_eq!(check.code, OK, "{check:?}");
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(report["schema_version"], report["known_version"]);
    for run in [&check, &migrate] {
        assert!(!run.stdout.contains("pg-pass-8841") && !run.stderr.contains("pg-pass-8841"));
    }

    pg.sql(&db, "UPDATE warden_schema SET version = 99");
    let newer = env.warden_with_env(&["store", "check"], &envs);
    assert_eq!(newer.code, NOT_RECORDED, "{newer:?}");
    assert!(newer.stdout.contains("newer warden"), "{newer:?}");
    let refused = env.warden_with_env(&["approvals", "list"], &envs);
    assert_ne!(refused.code, OK, "{refused:?}");
    assert!(
        refused.stderr.contains("newer warden") && !refused.stderr.contains("pg-pass-8841"),
        "{refused:?}"
    );

    let gone = with_password.replace(&format!(":{}/", pg.port), ":1/");
    let unreachable = env.warden_with_env(&["store", "check"], &[("WARDEN_TEST_STORE", &gone)]);
    assert_eq!(unreachable.code, NOT_RECORDED, "{unreachable:?}");
    assert!(
        unreachable.stdout.contains("reachable: no")
            && !unreachable.stdout.contains("pg-pass-8841"),
        "{unreachable:?}"
    );

    env.write_config("[store]\nurl = \"mysql://x\"\n");
    let bad = env.warden(&["store", "check"]);
    assert_eq!(bad.code, USAGE, "{bad:?}");
    assert!(
        bad.stderr.contains("store.url") && bad.stderr.contains(":5:"),
        "{bad:?}"
    );
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

/// Hosts racing for the same fire times and the same trigger deliveries: each is
/// claimed exactly once in the cluster.
#[test]
fn each_fire_time_and_each_trigger_delivery_is_claimed_once_across_hosts() {
    use warden_core::store::automation::{AutomationStore, Fire};
    let target = Target::parse(&postgres().database(), None).unwrap();
    let hosts: Vec<Arc<AutomationStore>> = (0..3)
        .map(|_| Arc::new(AutomationStore::open_shared(&target).unwrap()))
        .collect();
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let host = hosts[i % 3].clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for t in 0..40i64 {
                    let fire = Fire {
                        name: "nightly",
                        fire_ms: t * 60_000,
                        kind: "scheduled",
                    };
                    if host.claim(&[fire], &format!("host-{i}"), t).unwrap()[0] {
                        won.push(format!("fire-{t}"));
                    }
                    if host.claim_delivery("github", &format!("d-{t}"), t).unwrap() {
                        won.push(format!("delivery-{t}"));
                    }
                }
                won
            })
        })
        .collect();
    let mut all: Vec<String> = racers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    let claims = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (claims, all.len()),
        (80, 80),
        "each claimed once, none lost"
    );
    let state = hosts[2].state("nightly").unwrap();
    assert!(state.is_none(), "claims do not register a schedule");
    assert!(
        hosts[0]
            .set_paused("nightly", true, "ops", Some("freeze"), 1)
            .unwrap()
    );
    assert!(
        hosts[1].paused().unwrap().contains("nightly"),
        "a pause is seen by every host"
    );
    assert_eq!(
        hosts[2].state("nightly").unwrap().unwrap().last_fire_ms,
        Some(39 * 60_000)
    );
}

/// Three hosts' runtimes on one PostgreSQL, callers racing on all of them: a quota of
/// 10 calls and a rate with a burst of 4 admit exactly 10 and 4 in the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_n_admits_exactly_n_across_hosts() {
    use warden_core::call::CallRequest;
    use warden_core::{Config, Runtime};
    let url = postgres().database();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let env = Env::new("");
        env.write_config(&format!(
            r#"
{tokens}
[[plugin]]
id = "text-stats"
component = "{{text-stats}}"

[[limit]]
name = "ten"
scope = {{ principal = "alice" }}
kind = "quota"
measure = "calls"
max = 10
per = "hour"

[[limit]]
name = "burst"
scope = {{ principal = "bob" }}
kind = "rate"
rate = 1
per = "hour"
burst = 4

[store]
url = "{url}"
"#,
            tokens = super::approvals::test_tokens()
        ));
        let rt = Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap();
        hosts.push((env, Arc::new(rt)));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let rt = hosts[i % 3].1.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let who = if i < 36 { "alice" } else { "bob" };
            let input = format!(r#"{{"text":"caller {i}"}}"#);
            barrier.wait().await;
            let report = rt
                .call(CallRequest {
                    principal: who,
                    tool: "text_stats",
                    input: &input,
                    started_by: None,
                })
                .await
                .unwrap();
            (who, report.outcome.status().to_string())
        }));
    }
    let mut ok = std::collections::HashMap::new();
    for t in tasks {
        let (who, status) = t.await.unwrap();
        assert!(status == "ok" || status == "limited", "{who}: {status}");
        *ok.entry(who).or_insert(0) += usize::from(status == "ok");
    }
    assert_eq!((ok["alice"], ok["bob"]), (10, 4), "admitted in the cluster");
    for (_, rt) in &hosts {
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
    use super::approvals::{ONCALL, approval, test_tokens, wait_until};
    let url = postgres().database();
    let hosts: Vec<Env> = (0..2)
        .map(|i| {
            let env = Env::new("");
            env.write_config(&format!(
                r#"
{tokens}
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

[store]
url = "{url}"
lease_secs = 3
host = "host-{i}"
"#,
                tokens = test_tokens(),
            ));
            env
        })
        .collect();
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
    use warden_core::call::CallRequest;
    use warden_core::governance::budgets::Target as Suspended;
    use warden_core::{Config, Runtime};
    let url = postgres().database();
    let mut hosts = Vec::new();
    for i in 0..2 {
        let env = Env::new("");
        env.write_config(&format!(
            "{tokens}\n[[plugin]]\nid = \"text-stats\"\ncomponent = \"{{text-stats}}\"\n\n[store]\nurl = \"{url}\"\nhost = \"host-{i}\"\n",
            tokens = super::approvals::test_tokens()
        ));
        let rt = Runtime::load(Config::load(&env.config()).unwrap())
            .await
            .unwrap();
        hosts.push((env, rt));
    }
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
        call(&hosts[1].1, request).await.unwrap().outcome.status(),
        "ok"
    );
    hosts[0]
        .1
        .suspend(Suspended::Principal, "alice", "incident 42", "ops")
        .await
        .unwrap();
    hosts[1].1.drive().await.unwrap();
    let refused = call(&hosts[1].1, request).await.unwrap();
    assert_ne!(refused.outcome.status(), "ok");
    assert!(
        format!("{:?}", refused.outcome).contains("incident 42"),
        "{:?}",
        refused.outcome
    );
    assert!(
        hosts[1]
            .1
            .unsuspend(Suspended::Principal, "alice", "ops")
            .await
            .unwrap()
    );
    hosts[0].1.drive().await.unwrap();
    assert_eq!(
        call(&hosts[0].1, request).await.unwrap().outcome.status(),
        "ok"
    );
    for (_, rt) in &hosts {
        rt.close();
    }
}

/// TLS to the shared store: with the CA that signed the server's certificate, warden
/// connects over TLS; without it, `sslmode=require` fails closed naming why; a server
/// that refuses connections in the clear is never spoken to in the clear.
#[test]
fn the_shared_store_is_reached_over_tls_checked_against_the_given_ca() {
    let pg = crate::support::postgres::private_tls("tls");
    let url = pg.database();
    let ca = pg.ca().unwrap();
    let env = Env::new("");
    let config = |extra: &str| format!("[store]\nurl_env = \"WARDEN_TEST_STORE\"\n{extra}");
    env.write_config(&config(&format!(
        "ca_file = {:?}\n",
        ca.display().to_string()
    )));
    let envs = [("WARDEN_TEST_STORE", url.as_str())];
    let migrate = env.warden_with_env(&["store", "migrate"], &envs);
    assert_eq!(migrate.code, OK, "{migrate:?}");
    let check = env.warden_with_env(&["store", "check", "--json"], &envs);
    assert_eq!(check.code, OK, "{check:?}");
    let report: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(report["tls"], true, "{report}");

    env.write_config(&config(""));
    let untrusted = env.warden_with_env(&["store", "check"], &envs);
    assert_eq!(untrusted.code, NOT_RECORDED, "{untrusted:?}");
    assert!(
        untrusted.stdout.contains("reachable: no") && untrusted.stdout.contains("certificate"),
        "{untrusted:?}"
    );
    let clear = url.replace("sslmode=require", "sslmode=disable");
    let refused = env.warden_with_env(&["store", "check"], &[("WARDEN_TEST_STORE", &clear)]);
    assert_eq!(refused.code, NOT_RECORDED, "{refused:?}");
    assert!(refused.stdout.contains("reachable: no"), "{refused:?}");

    env.write_config(&config("ca_file = \"missing.pem\"\n"));
    let missing = env.warden_with_env(&["store", "check"], &envs);
    assert_eq!(missing.code, USAGE, "{missing:?}");
    assert!(missing.stderr.contains("store.ca_file"), "{missing:?}");
}
