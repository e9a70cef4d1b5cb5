//! The webhook notices' outbox: when the next one is due, which are due, and each
//! delivery attempt. A notice is committed with its request; delivering it never
//! changes the request.

use super::*;

impl ApprovalQueue {
    /// When the next notice is due to be sent or retried.
    pub fn next_notice_ms(&self) -> Result<Option<i64>, ApprovalError> {
        self.scalar(
            "SELECT min(next_ms) FROM approval_notices WHERE delivered_ms IS NULL AND gave_up = 0",
        )
    }

    /// Webhook notices due for a delivery attempt: (approval id, payload, attempts so far).
    pub fn due_notices(&self, now_ms: i64) -> Result<Vec<(String, String, u32)>, ApprovalError> {
        self.read(move |sql| {
            sql.query(
                "SELECT approval_id, payload, attempts FROM approval_notices
                 WHERE delivered_ms IS NULL AND gave_up = 0 AND next_ms <= ?1 ORDER BY next_ms",
                vals![now_ms],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.u32(2)?)))
            .collect()
        })
    }

    /// Record one delivery attempt: delivered, or failed with the next attempt at
    /// `retry_at` (`None`: give up).
    pub async fn notice_attempted(
        &self,
        id: &str,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        let id = id.to_string();
        self.write_with(false, move |tx| {
            let r = match &outcome {
                Ok(()) => tx.execute(
                    "UPDATE approval_notices SET attempts = attempts + 1, delivered_ms = ?2, last_error = NULL
                     WHERE approval_id = ?1",
                    vals![&id, now_ms],
                ),
                Err(e) => tx.execute(
                    "UPDATE approval_notices SET attempts = attempts + 1, last_error = ?2,
                     next_ms = coalesce(?3, next_ms),
                     gave_up = CASE WHEN CAST(?3 AS BIGINT) IS NULL THEN 1 ELSE 0 END WHERE approval_id = ?1",
                    vals![&id, e, retry_at],
                ),
            };
            r?;
            Ok(())
        })
        .await
    }

    pub fn notice(&self, id: &str) -> Result<Option<Notice>, ApprovalError> {
        let id = id.to_string();
        self.read(move |sql| {
            let Some(r) = sql.query_opt(
                "SELECT attempts, CASE WHEN delivered_ms IS NULL THEN 0 ELSE 1 END, gave_up, last_error
                 FROM approval_notices WHERE approval_id = ?1",
                vals![id],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(Notice {
                attempts: r.u32(0)?,
                delivered: r.bool(1)?,
                gave_up: r.bool(2)?,
                last_error: r.opt_text(3)?,
            }))
        })
    }
}
