//! The SQL of one request inside a change's transaction: loading it with its votes,
//! adding a vote, moving its state, settling one whose time ran out.

use super::*;

/// A request and its votes in one round trip (a row per vote, or one with no vote).
macro_rules! load_sql {
    () => {
        "SELECT a.id, a.run_id, a.principal, a.tool, a.plugin, a.plugin_digest, a.input,
                a.input_sha256, a.decisions, a.tier, a.reasons, a.approvers, a.required,
                a.created_ms, a.expires_ms, a.state, a.state_ms, a.result, a.holds, a.sealed,
                a.started_by,
                v.seq, v.principal, v.vote, v.reason, v.input_sha256, v.at_ms, v.via, v.audited
         FROM approvals a LEFT JOIN approval_votes v ON v.approval_id = a.id
         WHERE a.id = ?1 ORDER BY v.seq"
    };
}

/// A pending request whose time ran out: soft runs (nobody rejected it), hard expires.
pub(super) fn settle_expired(
    tx: &mut dyn Sql,
    a: &mut Approval,
    by: &str,
    now_ms: i64,
) -> Result<(), SqlError> {
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
                    by,
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
                    by,
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
    /// The process (or host) recording it: the one to write it to its audit log.
    pub(super) by: &'a str,
}

pub(super) fn add_vote(
    tx: &mut dyn Sql,
    a: &mut Approval,
    cast: Cast<'_>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let seq = a.votes.len() as i64 + 1;
    tx.execute(
        "INSERT INTO approval_votes (approval_id, seq, principal, vote, reason, input_sha256, at_ms, via, cast_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        vals![&a.id, seq, cast.principal, cast.vote, cast.reason, cast.input_sha256, now_ms, cast.via, cast.by],
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
    tx: &mut dyn Sql,
    a: &mut Approval,
    state: ApprovalState,
    result: Option<String>,
    now_ms: i64,
) -> Result<(), SqlError> {
    tx.execute(
        "UPDATE approvals SET state = ?2, state_ms = ?3, result = coalesce(?4, result) WHERE id = ?1",
        vals![&a.id, state.as_str(), now_ms, result.clone()],
    )?;
    if state.is_final() {
        // It will never run: its input (which may hold a secret) has no reason to stay.
        tx.execute(
            "UPDATE approvals SET input = ?2, sealed = 0 WHERE id = ?1",
            vals![&a.id, REMOVED],
        )?;
    }
    a.state = state;
    a.state_ms = now_ms;
    if result.is_some() {
        a.result = result;
    }
    Ok(())
}

/// Request `id` with its votes. `lock`: on the shared store, hold the request's row
/// until the transaction ends, so deciders on other hosts wait and then see this one's
/// decision (SQLite's writes are serialized already).
pub(super) fn load(
    sql: &mut dyn Sql,
    id: &str,
    sealer: Option<&Sealer>,
    lock: bool,
) -> Result<Option<Approval>, SqlError> {
    let json_list =
        |text: String| -> Vec<String> { serde_json::from_str(&text).unwrap_or_default() };
    let query = if lock && sql.postgres() {
        concat!(load_sql!(), " FOR UPDATE OF a")
    } else {
        load_sql!()
    };
    let rows = sql.query(query, vals![id])?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let stored_tier = r.text(9)?;
    let state = r.text(15)?;
    let id = r.text(0)?;
    let stored = r.text(6)?;
    let input = if r.bool(19)? {
        sealer
            .and_then(|s| s.open(&id, &stored))
            .unwrap_or_else(|| SEALED.to_string())
    } else {
        stored
    };
    let approvers = json_list(r.text(11)?);
    let required = r.u32(12)?;
    // An unknown tier or state (a hand-edited row) fails closed: never run.
    let (tier, known_tier) = match stored_tier.as_str() {
        "soft" => (Tier::Soft, true),
        "hard" => (Tier::Hard, true),
        _ => (Tier::Hard, false),
    };
    let mut state = ApprovalState::parse(&state).unwrap_or(ApprovalState::Failed);
    let mut result = r.opt_text(17)?;
    if !known_tier && !state.is_final() {
        state = ApprovalState::Failed;
        result = Some(format!(
            "the stored tier {stored_tier:?} is not one warden knows: not run (fail closed)"
        ));
    }
    // Requests from before per-policy holds: one hold with every approver.
    let holds = r
        .opt_text(18)?
        .and_then(|h| serde_json::from_str(&h).ok())
        .unwrap_or_else(|| {
            vec![HoldSet {
                policy: "*".into(),
                tier,
                approvers: approvers.clone(),
                required,
            }]
        });
    let mut a = Approval {
        id,
        run_id: r.text(1)?,
        principal: r.text(2)?,
        tool: r.text(3)?,
        plugin: r.text(4)?,
        plugin_digest: r.text(5)?,
        input,
        input_sha256: r.text(7)?,
        decisions: serde_json::from_str(&r.text(8)?).unwrap_or(Value::Null),
        tier,
        reasons: json_list(r.text(10)?),
        approvers,
        required,
        holds,
        created_ms: r.int(13)?,
        expires_ms: r.int(14)?,
        state,
        state_ms: r.int(16)?,
        result,
        votes: Vec::new(),
        started_by: r.opt_text(20)?,
    };
    for r in rows
        .iter()
        .filter(|r| r.opt_int(21).ok().flatten().is_some())
    {
        a.votes.push(Vote {
            seq: r.int(21)?,
            principal: r.text(22)?,
            vote: r.text(23)?,
            reason: r.opt_text(24)?,
            input_sha256: r.text(25)?,
            at_ms: r.int(26)?,
            via: r.text(27)?,
            audited: r.bool(28)?,
        });
    }
    Ok(Some(a))
}
