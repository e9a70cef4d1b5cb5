//! The SQL of one request inside a change's transaction: loading it with its votes,
//! adding a vote, moving its state, settling one whose time ran out.

use super::*;

/// A pending request whose time ran out: soft runs (nobody rejected it), hard expires.
pub(super) fn settle_expired(
    tx: &Connection,
    a: &mut Approval,
    now_ms: i64,
) -> rusqlite::Result<()> {
    match a.tier {
        Tier::Soft => {
            let sha = a.input_sha256.clone();
            add_vote(
                tx,
                a,
                Cast {
                    principal: "warden",
                    vote: "window",
                    reason: Some("soft window passed with no rejection"),
                    via: "queue",
                    input_sha256: &sha,
                },
                now_ms,
            )?;
            set_state(tx, a, ApprovalState::Approved, None, now_ms)
        }
        Tier::Hard => {
            let why = format!(
                "hard approval timed out after {} s ({} of {} approvals)",
                (a.expires_ms - a.created_ms) / 1000,
                a.approvals(),
                a.required
            );
            let sha = a.input_sha256.clone();
            add_vote(
                tx,
                a,
                Cast {
                    principal: "warden",
                    vote: "expire",
                    reason: Some(&why),
                    via: "queue",
                    input_sha256: &sha,
                },
                now_ms,
            )?;
            set_state(tx, a, ApprovalState::Expired, Some(why), now_ms)
        }
    }
}

/// One vote to add.
pub(super) struct Cast<'a> {
    pub(super) principal: &'a str,
    pub(super) vote: &'a str,
    pub(super) reason: Option<&'a str>,
    pub(super) via: &'a str,
    /// The input hash the voter was shown.
    pub(super) input_sha256: &'a str,
}

pub(super) fn add_vote(
    tx: &Connection,
    a: &mut Approval,
    cast: Cast<'_>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let seq = a.votes.len() as i64 + 1;
    tx.execute(
        "INSERT INTO approval_votes (approval_id, seq, principal, vote, reason, input_sha256, at_ms, via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![a.id, seq, cast.principal, cast.vote, cast.reason, cast.input_sha256, now_ms, cast.via],
    )?;
    a.votes.push(Vote {
        seq,
        principal: cast.principal.to_string(),
        vote: cast.vote.to_string(),
        reason: cast.reason.map(str::to_string),
        input_sha256: cast.input_sha256.to_string(),
        at_ms: now_ms,
        via: cast.via.to_string(),
        audited: false,
    });
    Ok(())
}

pub(super) fn set_state(
    tx: &Connection,
    a: &mut Approval,
    state: ApprovalState,
    result: Option<String>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE approvals SET state = ?2, state_ms = ?3, result = coalesce(?4, result) WHERE id = ?1",
        params![a.id, state.as_str(), now_ms, result],
    )?;
    if state.is_final() {
        // It will never run: its input (which may hold a secret) has no reason to stay.
        tx.execute(
            "UPDATE approvals SET input = ?2, sealed = 0 WHERE id = ?1",
            params![a.id, REMOVED],
        )?;
    }
    a.state = state;
    a.state_ms = now_ms;
    if result.is_some() {
        a.result = result;
    }
    Ok(())
}

pub(super) fn load(
    conn: &Connection,
    id: &str,
    sealer: Option<&Sealer>,
) -> rusqlite::Result<Option<Approval>> {
    let json_list =
        |text: String| -> Vec<String> { serde_json::from_str(&text).unwrap_or_default() };
    let a = conn
        .prepare_cached(
            "SELECT id, run_id, principal, tool, plugin, plugin_digest, input, input_sha256,
                    decisions, tier, reasons, approvers, required, created_ms, expires_ms,
                    state, state_ms, result, holds, sealed, started_by
             FROM approvals WHERE id = ?1",
        )?
        .query_row([id], |r| {
            let stored_tier: String = r.get(9)?;
            let state: String = r.get(15)?;
            let id: String = r.get(0)?;
            let stored: String = r.get(6)?;
            let sealed: bool = r.get(19)?;
            let input = if sealed {
                sealer
                    .and_then(|s| s.open(&id, &stored))
                    .unwrap_or_else(|| SEALED.to_string())
            } else {
                stored
            };
            let approvers = json_list(r.get(11)?);
            let required: u32 = r.get(12)?;
            // An unknown tier or state (a hand-edited row) fails closed: never run.
            let (tier, known_tier) = match stored_tier.as_str() {
                "soft" => (Tier::Soft, true),
                "hard" => (Tier::Hard, true),
                _ => (Tier::Hard, false),
            };
            let mut state = ApprovalState::parse(&state).unwrap_or(ApprovalState::Failed);
            let mut result: Option<String> = r.get(17)?;
            if !known_tier && !state.is_final() {
                state = ApprovalState::Failed;
                result = Some(format!(
                    "the stored tier {stored_tier:?} is not one warden knows: not run (fail closed)"
                ));
            }
            // Requests from before per-policy holds: one hold with every approver.
            let holds = r
                .get::<_, Option<String>>(18)?
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_else(|| {
                    vec![HoldSet {
                        policy: "*".into(),
                        tier,
                        approvers: approvers.clone(),
                        required,
                    }]
                });
            Ok(Approval {
                id,
                run_id: r.get(1)?,
                principal: r.get(2)?,
                tool: r.get(3)?,
                plugin: r.get(4)?,
                plugin_digest: r.get(5)?,
                input,
                input_sha256: r.get(7)?,
                decisions: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
                tier,
                reasons: json_list(r.get(10)?),
                approvers,
                required,
                holds,
                created_ms: r.get(13)?,
                expires_ms: r.get(14)?,
                state,
                state_ms: r.get(16)?,
                result,
                votes: Vec::new(),
                started_by: r.get(20)?,
            })
        })
        .optional()?;
    let Some(mut a) = a else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, principal, vote, reason, input_sha256, at_ms, via, audited FROM approval_votes
         WHERE approval_id = ?1 ORDER BY seq",
    )?;
    a.votes = stmt
        .query_map([id], |r| {
            Ok(Vote {
                seq: r.get(0)?,
                principal: r.get(1)?,
                vote: r.get(2)?,
                reason: r.get(3)?,
                input_sha256: r.get(4)?,
                at_ms: r.get(5)?,
                via: r.get(6)?,
                audited: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(a))
}
