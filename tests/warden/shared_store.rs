//! The shared store itself (`[store] url`), against a real PostgreSQL the suite starts:
//! the queue's behaviours run against both backends, hosts race for one request and
//! for fire times and deliveries, a dead host's claim is recovered after its lease,
//! and the schema, the URL's password and TLS are handled as an operator expects.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warden_core::call::{ApprovalState, PolicyHold, Tier};
use warden_core::config::ApprovalsConfig;
use warden_core::governance::approvals::{
    Approval, ApprovalError, ApprovalQueue, Ballot, Choice, NewRequest, Ran, Sealer, prepare,
};
use warden_core::store::postgres::Target;
use warden_core::store::runs::{RunFilter, RunRow, RunStore};

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
    assert_eq!(
        (&report["standby"], &report["replicas"]),
        (&Value::from(false), &Value::from(0))
    );
    assert!(report["hosts"].is_array(), "{report}");
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

/// The URL (with its password) kept in the vault: read when the config loads, never
/// shown; a secret the vault lacks is named with the config key.
#[test]
fn the_store_url_comes_from_the_vault_and_is_never_shown() {
    let url = postgres()
        .database()
        .replace("warden@", "warden:pg-pass-5120@");
    let env = Env::new("");
    env.write_config("[store]\nurl_secret = \"store_url\"\n");
    let missing = env.warden(&["store", "check"]);
    assert_eq!(missing.code, USAGE, "{missing:?}");
    assert!(
        missing.stderr.contains("warden.toml:") && missing.stderr.contains("store.url_secret"),
        "{missing:?}"
    );
    assert_eq!(env.warden(&["secrets", "init"]).code, OK);
    let set = env.warden_stdin(&["secrets", "set", "store_url"], &format!("{url}\n"));
    assert_eq!(set.code, OK, "{set:?}");
    let migrate = env.warden(&["store", "migrate"]);
    assert_eq!(migrate.code, OK, "{migrate:?}");
    let check = env.warden(&["store", "check"]);
    assert_eq!(check.code, OK, "{check:?}");
    for run in [&missing, &set, &migrate, &check] {
        assert!(!format!("{run:?}").contains("pg-pass-5120"), "{run:?}");
    }
    env.write_config("[store]\nurl_secret = \"store_url\"\nurl_env = \"X\"\n");
    let both = env.warden(&["store", "check"]);
    assert_eq!(both.code, USAGE, "{both:?}");
    assert!(both.stderr.contains("set one of url"), "{both:?}");
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

/// Every command that opens the shared queue is a host with a heartbeat: hosts not
/// seen for a day are forgotten, unless a claim still names them.
#[test]
fn hosts_gone_for_a_day_are_forgotten_unless_a_claim_names_them() {
    let pg = postgres();
    let url = pg.database();
    drop(shared(&url, Duration::from_secs(15)));
    let db = url.rsplit('/').next().unwrap().to_string();
    pg.sql(
        &db,
        "INSERT INTO hosts VALUES ('old-idle', 'a', 0, 0), ('old-busy', 'b', 0, 0);
         INSERT INTO approvals (id, run_id, principal, tool, plugin, plugin_digest, input,
             input_sha256, decisions, tier, reasons, approvers, required, created_ms,
             expires_ms, state, state_ms, owner)
         VALUES ('apr-x', 'run-x', 'p', 't', 'p', 'd', '{}', 's', 'null', 'hard', '[]', '[]',
             1, 0, 0, 'executing', 0, 'old-busy');",
    );
    drop(shared(&url, Duration::from_secs(15)));
    let target = Target::parse(&url, None).unwrap();
    let left: Vec<String> = std::thread::spawn(move || {
        let mut client = target.connect().unwrap();
        client
            .query(
                "SELECT token FROM hosts WHERE token LIKE 'old-%' ORDER BY token",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    })
    .join()
    .unwrap();
    assert_eq!(left, ["old-busy"]);
}

/// An upstream tool's definition accepted on one host is the accepted one on every
/// host (and the store keeps one per tool).
#[test]
fn an_accepted_upstream_definition_is_the_same_on_every_host() {
    use warden_core::store::upstream_pins::{Pin, PinStore};
    let url = postgres().database();
    let config = |host: &str| {
        let env = Env::new("");
        env.write_config(&format!("[store]\nurl = \"{url}\"\nhost = \"{host}\"\n"));
        warden_core::Config::load(&env.config()).unwrap()
    };
    let (a, b) = (config("a"), config("b"));
    let (on_a, on_b) = (
        PinStore::for_config(&a).unwrap(),
        PinStore::for_config(&b).unwrap(),
    );
    let pin = |digest: &str| Pin {
        upstream: "files".into(),
        tool: "read".into(),
        digest: digest.into(),
        definition: "{}".into(),
        accepted_by: "ops".into(),
        accepted_ms: 1,
    };
    on_a.put(&pin("sha256:1")).unwrap();
    assert_eq!(
        on_b.get("files", "read").unwrap().unwrap().digest,
        "sha256:1"
    );
    on_b.put(&pin("sha256:2")).unwrap();
    let all = on_a.all("files").unwrap();
    assert_eq!((all.len(), all[0].digest.as_str()), (1, "sha256:2"));
}

fn run(id: &str, status: &str, started_ms: i64, tool: &str) -> RunRow {
    RunRow {
        id: id.into(),
        started_ms,
        principal: "agent".into(),
        tool: tool.into(),
        plugin: "mail".into(),
        plugin_digest: "sha256:0".into(),
        status: status.into(),
        input: "{\"to\":\"ops@example.com\"}".into(),
        output: (status == "ok").then(|| "{\"sent\":true}".to_string()),
        error: None,
        backtrace: None,
        decisions: serde_json::json!([{ "policy": "p", "decision": "allow" }]),
        log: serde_json::json!([]),
        denied_requests: serde_json::json!([]),
        secret_reveals: serde_json::json!([]),
        policy_us: 1,
        instantiate_us: 2,
        execute_us: 3,
        total_us: 2_000,
        fuel_used: Some(10),
        peak_memory: 4096,
        host_calls: 1,
        approval: None,
        started_by: None,
        cost: 0.25,
        egress_requests: 1,
        egress_bytes: 10,
        host: String::new(),
    }
}

/// Run history's behaviours, the same on either backend, written by two hosts (`a`
/// and `b`, naming themselves `names` in their rows): a held row never replaces its
/// outcome written elsewhere, a run is summed once, filters and cursors page.
async fn run_history_behaviours(a: &RunStore, b: &RunStore, names: [&str; 2]) {
    // A whole minute (1_800_000_000_000 is one).
    let minute: i64 = 1_800_000_000_000;
    a.commit(run("r1", "held", minute + 1, "send"))
        .await
        .unwrap();
    b.commit(run("r1", "ok", minute + 1, "send")).await.unwrap();
    // Host a's held row again (late): the outcome stands.
    a.commit(run("r1", "held", minute + 1, "send"))
        .await
        .unwrap();
    b.commit(run("r1", "ok", minute + 1, "send")).await.unwrap();
    a.commit(run("r2", "tool-error", minute + 2, "send"))
        .await
        .unwrap();
    a.commit(run("r3", "limited", minute + 3, "send"))
        .await
        .unwrap();
    a.commit(run("r4", "ok", minute + 4, "read")).await.unwrap();

    let r1 = a.get("r1").unwrap().expect("r1 is stored");
    assert_eq!((r1.status.as_str(), r1.host.as_str()), ("ok", names[1]));
    assert_eq!(r1.output.as_deref(), Some("{\"sent\":true}"));
    assert_eq!(r1.decisions[0]["decision"], "allow");
    assert_eq!((r1.fuel_used, r1.cost), (Some(10), 0.25));
    assert!(b.get("nothing").unwrap().is_none());

    let ids = |rows: Vec<RunRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = RunFilter {
        limit: 10,
        ..RunFilter::default()
    };
    assert_eq!(ids(b.list(&all).unwrap()), ["r4", "r3", "r2", "r1"]);
    let sends = RunFilter {
        tool: Some("send".into()),
        status: Some("ok".into()),
        ..all.clone()
    };
    assert_eq!(ids(b.list(&sends).unwrap()), ["r1"]);
    let page = RunFilter {
        limit: 2,
        ..all.clone()
    };
    let first = b.list(&page).unwrap();
    let last = first.last().unwrap();
    let next = RunFilter {
        before: Some((last.started_ms, last.id.clone())),
        ..page.clone()
    };
    assert_eq!(ids(b.list(&next).unwrap()), ["r2", "r1"]);

    let totals = a.totals(minute, Some("agent"), None, Some("send")).unwrap();
    assert_eq!(totals.len(), 1, "{totals:?}");
    let t = &totals[0];
    assert_eq!((t.calls, t.limited, t.cost), (2, 1, 0.75));
    assert_eq!((t.wall_ms, t.egress_requests, t.egress_bytes), (6.0, 3, 30));

    // Summed once per run, per host: r1 (host b), r2 and r4 (host a).
    let mut usage = a.usage_since(minute).unwrap();
    usage.sort_by(|x, y| (&x.host, &x.tool).cmp(&(&y.host, &y.tool)));
    let seen: Vec<(&str, &str, i64)> = usage
        .iter()
        .map(|u| (u.host.as_str(), u.tool.as_str(), u.calls))
        .collect();
    let mut want = vec![
        (names[0], "read", 1),
        (names[0], "send", 1),
        (names[1], "send", 1),
    ];
    if names[0] == names[1] {
        want = vec![("", "read", 1), ("", "send", 2)];
    }
    want.sort();
    assert_eq!(seen, want);

    let mut counted = Vec::new();
    b.each_since(minute + 2, |ms, tool, status, us| {
        counted.push((ms, tool.to_string(), status.to_string(), us));
    })
    .unwrap();
    assert_eq!(
        counted,
        [
            (minute + 2, "send".into(), "tool-error".into(), 2_000),
            (minute + 3, "send".into(), "limited".into(), 2_000),
            (minute + 4, "read".into(), "ok".into(), 2_000),
        ]
    );

    // Rows queued together (one batch): a run's held row and its outcome twice, and an
    // output with a NUL character (which PostgreSQL's text cannot hold).
    let later = minute + 120_000;
    let mut odd = run("r6", "ok", later + 1, "send");
    odd.output = Some("a\0b".into());
    for r in [
        run("r5", "held", later, "send"),
        run("r5", "ok", later, "send"),
        run("r5", "ok", later, "send"),
        odd,
    ] {
        b.insert(r, None).unwrap();
    }
    b.commit(run("r7", "denied", later + 2, "send"))
        .await
        .unwrap();
    assert_eq!(a.get("r5").unwrap().unwrap().status, "ok");
    let nul = a.get("r6").unwrap().unwrap().output.unwrap();
    assert!(nul == "a\0b" || nul == "a\u{fffd}b", "{nul:?}");
    let usage = a.usage_since(later).unwrap();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!((usage[0].calls, usage[0].host.as_str()), (2, names[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_history_behaves_the_same_on_postgresql_and_sqlite_with_two_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let (a, b) = (
        RunStore::open(&path).unwrap(),
        RunStore::open(&path).unwrap(),
    );
    run_history_behaviours(&a, &b, ["", ""]).await;
    let target = Target::parse(&postgres().database(), None).unwrap();
    let (a, b) = (
        RunStore::open_shared(&target, "host-a").unwrap(),
        RunStore::open_shared(&target, "host-b").unwrap(),
    );
    run_history_behaviours(&a, &b, ["host-a", "host-b"]).await;
}
