//! Console sessions in the shared store (`[store] url`), so an operator behind a load
//! balancer stays signed in whichever host answers, and signing out ends the session
//! on every host. (Without a shared store, sessions stay in the server's memory.)
//!
//! Owns the `console_sessions` rows: keyed by the hash of the session cookie, with the
//! token's name (not the token), the principal and the form token. It must never store
//! a cookie value or a token, nor answer for a session past its idle or total lifetime.

use super::conn::Conn;
use super::postgres::Target;
use super::sql::{SqlError, vals};

/// One session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    /// The `[[token]]` entry's name.
    pub token: String,
    pub principal: String,
    pub csrf: String,
}

pub struct SharedSessions {
    conn: Conn,
}

impl SharedSessions {
    pub fn open(target: &Target) -> Result<SharedSessions, String> {
        Ok(SharedSessions {
            conn: Conn::shared(target, "warden-sessions-db", false)?,
        })
    }

    /// Keep session `key` (a cookie's hash), opened at `now_ms`; sessions past their
    /// lifetimes (`idle_ms` without a request, `max_ms` in all) go.
    pub fn insert(
        &self,
        key: &str,
        s: &StoredSession,
        now_ms: i64,
        idle_ms: i64,
        max_ms: i64,
    ) -> Result<(), SqlError> {
        let (key, s) = (key.to_string(), s.clone());
        self.conn.write(true, move |tx| {
            tx.execute(
                "DELETE FROM console_sessions WHERE seen_ms <= ?1 OR created_ms <= ?2",
                vals![now_ms - idle_ms, now_ms - max_ms],
            )?;
            tx.execute(
                "INSERT INTO console_sessions (key, token, principal, csrf, created_ms, seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                vals![key, s.token, s.principal, s.csrf, now_ms],
            )?;
            Ok(())
        })
    }

    /// Session `key`, its idle time restarted, if it is still open (one round trip).
    pub fn touch(
        &self,
        key: &str,
        now_ms: i64,
        idle_ms: i64,
        max_ms: i64,
    ) -> Result<Option<StoredSession>, SqlError> {
        let key = key.to_string();
        self.conn.read(move |sql| {
            sql.query_opt(
                "UPDATE console_sessions SET seen_ms = ?2
                 WHERE key = ?1 AND seen_ms > ?3 AND created_ms > ?4
                 RETURNING token, principal, csrf",
                vals![key, now_ms, now_ms - idle_ms, now_ms - max_ms],
            )?
            .map(|r| {
                Ok(StoredSession {
                    token: r.text(0)?,
                    principal: r.text(1)?,
                    csrf: r.text(2)?,
                })
            })
            .transpose()
        })
    }

    /// End session `key` on every host.
    pub fn remove(&self, key: &str) -> Result<(), SqlError> {
        let key = key.to_string();
        self.conn.write(true, move |tx| {
            tx.execute("DELETE FROM console_sessions WHERE key = ?1", vals![key])?;
            Ok(())
        })
    }
}
