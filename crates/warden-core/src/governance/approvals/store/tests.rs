use super::*;
use crate::call::PolicyHold;
use crate::governance::approvals::{NewRequest, prepare};
use rusqlite::Connection;

fn config() -> ApprovalsConfig {
    ApprovalsConfig {
        approvers: vec!["alice".into(), "bob".into()],
        ..ApprovalsConfig::default()
    }
}

fn held(run: &str, tier: Tier) -> Approval {
    let holds = [PolicyHold {
        policy: "p".into(),
        tier,
        approvers: vec![],
        approvals_required: None,
    }];
    prepare(
        &config(),
        &NewRequest {
            run_id: run,
            principal: "agent",
            tool: "t",
            plugin: "p",
            plugin_digest: "sha256:0",
            input: "{\"secret\":\"hunter2\"}",
            decisions: Value::Null,
            tier,
            reasons: &[],
            holds: &holds,
            timeout_secs: Some(60),
            now_ms: 1_000,
            started_by: None,
        },
    )
}

fn ballot<'a>(who: &'a str, choice: Choice, sha: &'a str) -> Ballot<'a> {
    Ballot {
        principal: who,
        choice,
        reason: Some("ok"),
        via: "cli",
        input_sha256: sha,
        on_behalf_of: None,
        now_ms: 2_000,
    }
}

#[tokio::test]
async fn a_request_is_approved_claimed_once_and_its_input_sealed_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let queue = ApprovalQueue::open(&db, Some(Sealer::new(&[7; 32]))).unwrap();
    let a = held("run-a", Tier::Hard);
    queue.insert(&a, None).await.unwrap();
    let raw: String = Connection::open(&db)
        .unwrap()
        .query_row("SELECT input FROM approvals WHERE id = ?1", [&a.id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(!raw.contains("hunter2"), "sealed at rest: {raw}");
    assert_eq!(queue.get(&a.id).unwrap().unwrap().input, a.input);

    let wrong = queue
        .decide(&config(), &a.id, &ballot("alice", Choice::Approve, "0000"))
        .await;
    assert!(
        matches!(wrong, Err(ApprovalError::InputChanged { .. })),
        "{wrong:?}"
    );
    let sha = a.input_sha256.clone();
    let approved = queue
        .decide(&config(), &a.id, &ballot("alice", Choice::Approve, &sha))
        .await
        .unwrap();
    assert_eq!(approved.state, ApprovalState::Approved);
    let again = queue
        .decide(&config(), &a.id, &ballot("bob", Choice::Reject, &sha))
        .await;
    assert!(matches!(again, Err(ApprovalError::AlreadyDecided { .. })));

    assert!(queue.claim(&a.id, vec![1], 3_000).await.unwrap().is_some());
    assert!(
        queue.claim(&a.id, vec![], 3_001).await.unwrap().is_none(),
        "twice"
    );
    queue
        .finish(&a.id, ApprovalState::Executed, "ok", None, 4_000)
        .await
        .unwrap();
    let done = queue.get(&a.id).unwrap().unwrap();
    assert_eq!(done.state, ApprovalState::Executed);
    assert_eq!(done.input, REMOVED);
}

#[tokio::test]
async fn without_the_key_a_sealed_input_reads_as_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let a = held("run-b", Tier::Soft);
    {
        let queue = ApprovalQueue::open(&db, Some(Sealer::new(&[7; 32]))).unwrap();
        queue.insert(&a, None).await.unwrap();
    }
    let queue = ApprovalQueue::open(&db, None).unwrap();
    assert_eq!(queue.get(&a.id).unwrap().unwrap().input, SEALED);
    let other = ApprovalQueue::open(&db, Some(Sealer::new(&[8; 32]))).unwrap();
    assert_eq!(other.get(&a.id).unwrap().unwrap().input, SEALED);
}

#[tokio::test]
async fn a_soft_request_runs_when_its_window_passes_and_a_hard_one_expires() {
    let dir = tempfile::tempdir().unwrap();
    let queue = ApprovalQueue::open(&dir.path().join("runs.db"), None).unwrap();
    let (soft, hard) = (held("run-s", Tier::Soft), held("run-h", Tier::Hard));
    queue.insert(&soft, None).await.unwrap();
    queue.insert(&hard, None).await.unwrap();
    assert_eq!(queue.pending().unwrap(), 2);
    assert!(
        queue.expire_due(30_000).await.unwrap().is_empty(),
        "not yet"
    );
    let settled = queue.expire_due(61_000).await.unwrap();
    let state = |id: &str| settled.iter().find(|a| a.id == id).map(|a| a.state);
    assert_eq!(state(&soft.id), Some(ApprovalState::Approved));
    assert_eq!(state(&hard.id), Some(ApprovalState::Expired));
    assert_eq!(queue.pending().unwrap(), 0);
}

#[tokio::test]
async fn requests_are_paged_newest_first_by_cursor_even_when_made_in_the_same_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let queue = ApprovalQueue::open(&dir.path().join("runs.db"), None).unwrap();
    for i in 0..7 {
        // Every request is made at 1000 ms: only the id breaks the tie.
        queue
            .insert(&held(&format!("run-{i}"), Tier::Hard), None)
            .await
            .unwrap();
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<(i64, String)> = None;
    loop {
        let page = queue
            .list(
                Some(ApprovalState::Pending),
                cursor.as_ref().map(|(ms, id)| (*ms, id.as_str())),
                3,
            )
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        let last = page.last().unwrap();
        cursor = Some((last.created_ms, last.id.clone()));
        seen.extend(page.into_iter().map(|a| a.id));
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("apr-{i}")).collect();
    assert_eq!(seen, expected, "each once, newest (then highest id) first");
}
