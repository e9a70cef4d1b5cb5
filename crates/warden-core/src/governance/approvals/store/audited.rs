//! Which votes this process writes to its audit log, and marking them written: every
//! unaudited vote in the embedded store (one audit log per data dir); on the shared
//! store, the votes its host recorded and those of hosts gone past their lease, so each
//! vote reaches one host's log and a dead host's still do.

use super::*;

impl ApprovalQueue {
    /// Requests with votes this process should write to its audit log, oldest vote
    /// first: every unaudited vote in the embedded store (one audit log per data dir);
    /// on the shared store, the votes this host cast, and those of hosts gone past
    /// their lease (so each vote reaches one host's log, and a dead host's still do).
    pub fn with_unaudited_votes(&self) -> Result<Vec<String>, ApprovalError> {
        let (filter, params) = self.audited_here(vec![]);
        self.read(move |sql| {
            sql.query(
                &format!(
                    "SELECT approval_id FROM approval_votes WHERE audited = 0{filter}
                     GROUP BY approval_id ORDER BY min(at_ms)"
                ),
                &params,
            )?
            .iter()
            .map(|r| r.text(0))
            .collect()
        })
    }

    /// The votes of request `id` this process should write to its audit log (see
    /// `with_unaudited_votes`), by number.
    pub fn votes_due(&self, id: &str) -> Result<Vec<i64>, ApprovalError> {
        let (filter, params) = self.audited_here(vals![id].to_vec());
        self.read(move |sql| {
            sql.query(
                &format!(
                    "SELECT seq FROM approval_votes WHERE approval_id = ?1 AND audited = 0{filter}"
                ),
                &params,
            )?
            .iter()
            .map(|r| r.int(0))
            .collect()
        })
    }

    /// The condition (and its parameters, after `params`) that picks the votes this
    /// process audits: none in the embedded store; on the shared store, its own and
    /// those of hosts not seen for their lease.
    fn audited_here(&self, mut params: Vec<Val>) -> (String, Vec<Val>) {
        let Holder::Host { token, lease } = &self.holder else {
            return (String::new(), params);
        };
        let (me, window) = (params.len() + 1, params.len() + 2);
        params.push(Val::from(token.as_str()));
        params.push(Val::Int(lease.as_millis() as i64));
        (
            format!(
                " AND (coalesce(cast_by, '') = ?{me} OR coalesce(cast_by, '') NOT IN
                   (SELECT token FROM hosts WHERE seen_ms >=
                       (extract(epoch from clock_timestamp()) * 1000)::bigint - ?{window}))"
            ),
            params,
        )
    }

    pub async fn mark_audited(&self, votes: Vec<(String, i64)>) -> Result<(), ApprovalError> {
        if votes.is_empty() {
            return Ok(());
        }
        self.write_with(false, move |tx| {
            for (id, seq) in &votes {
                tx.execute(
                    "UPDATE approval_votes SET audited = 1 WHERE approval_id = ?1 AND seq = ?2",
                    vals![id, *seq],
                )?;
            }
            Ok(())
        })
        .await
    }
}
