//! Limits counted across hosts (`[store] url`): what a host admits under a rate or a
//! quota of calls or cost is also taken from the count in the shared PostgreSQL, so a
//! limit of N per minute admits N in the cluster, not N per host. Each take is one
//! round trip: a function in the database that serializes the takes of one limit and
//! key (an advisory lock for the transaction), reads the count, and records the take
//! or refuses it.
//!
//! The host's own counts still run first (they are free and refuse most calls over a
//! limit without a round trip); the shared count decides. What is counted when a call
//! ends (wall time, fuel, egress) is checked against the cluster's count at admission
//! (a call is refused once the cluster has used the quota up) and added to it when the
//! call ends, off the call's path; egress is held to the host's own count while the
//! call runs. Concurrency bounds stay per host (a call in flight is a host's). Takes
//! are committed without waiting for the server's disk (a PostgreSQL crash may forget
//! the last fraction of a second of them; nothing else can). It must never admit a
//! call it could not count: an unreachable store refuses.

use super::{Budgets, Refusal, window};
use crate::config::{LimitKind, Measure};
use crate::store::conn::Conn;
use crate::store::postgres::Target;
use crate::store::sql::{SqlError, vals};

/// The shared counts.
pub struct Cluster {
    conn: Conn,
    shown: String,
}

/// One take that may have to be given back (a later limit refused, or the call never
/// ran).
#[derive(Debug, Clone)]
pub(super) enum Taken {
    /// A quota's use, in its bucket.
    Use {
        limit: String,
        key: String,
        bucket: i64,
        amount: f64,
    },
    /// A token of a rate's bucket.
    Token {
        limit: String,
        key: String,
        burst: f64,
    },
}

impl Cluster {
    pub fn open(target: &Target) -> Result<Cluster, String> {
        Ok(Cluster {
            conn: Conn::shared(target, "warden-limits-db", true)?,
            shown: target.shown.clone(),
        })
    }

    /// Take what limit `i` of `budgets` counts for `key` at admission: `Ok(None)` when
    /// it counts nothing here, `Err` when the cluster's count refuses it (or cannot be
    /// reached).
    pub(super) fn take(
        &self,
        budgets: &Budgets,
        i: usize,
        key: &str,
        cost: f64,
        force: bool,
        now_ms: i64,
    ) -> Result<Option<Taken>, Refusal> {
        let name = budgets.configs[i].name.clone();
        let unreachable = |e: SqlError| {
            let mut r = budgets.refusal(i, 0.0, 0.0, "", None);
            r.note = Some(format!(
                "the shared store {} cannot count it: {e}",
                self.shown
            ));
            r
        };
        match budgets.limits[i].kind {
            LimitKind::Rate { rate, per, burst } => {
                let per_ms = rate / per.ms() as f64;
                let (limit, k) = (name.clone(), key.to_string());
                let row = self
                    .conn
                    .read(move |sql| {
                        sql.query_one(
                            "SELECT admitted, tokens_left FROM warden_rate_take(?1, ?2, ?3, ?4, ?5, ?6)",
                            vals![limit, k, now_ms, per_ms, burst, force],
                        )
                    })
                    .map_err(unreachable)?;
                if row.bool(0).unwrap_or(false) {
                    return Ok(Some(Taken::Token {
                        limit: name,
                        key: key.to_string(),
                        burst,
                    }));
                }
                let next = now_ms + ((1.0 - row.number(1)) / per_ms).ceil() as i64;
                Err(budgets.refusal(i, 0.0, burst, "calls left of the burst", Some(next)))
            }
            LimitKind::Quota {
                measure,
                max,
                per,
                rolling,
                zone,
            } => {
                // What a call uses of the other measures is known when it ends: now, the
                // quota must only not be used up.
                let amount = match measure {
                    Measure::Calls => 1.0,
                    Measure::Cost => cost,
                    _ => 0.0,
                };
                let Buckets {
                    start,
                    resets,
                    len,
                    bucket,
                } = Buckets::at(per, rolling, zone, now_ms);
                let (limit, k) = (name.clone(), key.to_string());
                let row = self
                    .conn
                    .read(move |sql| {
                        sql.query_one(
                            "SELECT taken, used_before FROM warden_quota_take(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                            vals![limit, k, start, bucket, len, amount, max, force],
                        )
                    })
                    .map_err(unreachable)?;
                if !row.bool(0).unwrap_or(false) {
                    return Err(budgets.refusal(
                        i,
                        row.number(1),
                        max,
                        measure.as_str(),
                        Some(resets),
                    ));
                }
                Ok((amount > 0.0).then(|| Taken::Use {
                    limit: name,
                    key: key.to_string(),
                    bucket,
                    amount,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Add what a call used of quota `i`'s measure (known when it ended) to the
    /// cluster's count, on the connection's thread: the call does not wait for it.
    pub(super) fn record(&self, budgets: &Budgets, i: usize, key: &str, amount: f64, now_ms: i64) {
        let LimitKind::Quota {
            max,
            per,
            rolling,
            zone,
            ..
        } = budgets.limits[i].kind
        else {
            return;
        };
        let b = Buckets::at(per, rolling, zone, now_ms);
        let (limit, key) = (budgets.configs[i].name.clone(), key.to_string());
        self.conn.detach(move |sql| {
            sql.query_one(
                "SELECT taken, used_before FROM warden_quota_take(?1, ?2, ?3, ?4, ?5, ?6, ?7, true)",
                vals![limit, key, b.start, b.bucket, b.len, amount, max],
            )
            .map(drop)
        });
    }

    /// Give back what a call took and never used.
    pub(super) fn give_back(&self, taken: Vec<Taken>) {
        if taken.is_empty() {
            return;
        }
        let given = self.conn.write(true, move |tx| {
            for t in taken {
                match t {
                    Taken::Use {
                        limit,
                        key,
                        bucket,
                        amount,
                    } => {
                        tx.execute(
                            "UPDATE limit_uses SET amount = amount - ?4
                             WHERE limit_name = ?1 AND key = ?2 AND bucket_ms = ?3",
                            vals![limit, key, bucket, amount],
                        )?;
                    }
                    Taken::Token { limit, key, burst } => {
                        tx.execute(
                            "UPDATE limit_buckets SET tokens = least(?3, tokens + 1)
                             WHERE limit_name = ?1 AND key = ?2",
                            vals![limit, key, burst],
                        )?;
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = given {
            tracing::warn!("limits: giving back to the shared count: {e}");
        }
    }
}

/// Where a quota's window is at `now_ms` in the shared count: a calendar window is one
/// bucket, a rolling one sixty (a straddling bucket counts whole: it refuses a little
/// early, never over-admits).
struct Buckets {
    start: i64,
    resets: i64,
    len: i64,
    bucket: i64,
}

impl Buckets {
    fn at(per: crate::config::Per, rolling: bool, zone: chrono_tz::Tz, now_ms: i64) -> Buckets {
        let (start, resets) = if rolling {
            (now_ms - per.ms(), now_ms + per.ms())
        } else {
            window::calendar(per, zone, now_ms)
        };
        let len = if rolling {
            (per.ms() / 60).max(1)
        } else {
            resets - start
        };
        let bucket = if rolling {
            now_ms - now_ms % len
        } else {
            start
        };
        Buckets {
            start,
            resets,
            len,
            bucket,
        }
    }
}
