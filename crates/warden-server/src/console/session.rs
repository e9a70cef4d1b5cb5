//! Console sessions: sign-in with a token, the session cookie, the CSRF token of every
//! form, and who each console request speaks for (`Viewer`).
//!
//! A session is kept in memory, keyed by the hash of its cookie (a server restart
//! signs everyone out), or, when hosts share a store, in it (`SharedSessions`: signed
//! in on one host is signed in on all of them, and signing out ends it everywhere). It ends after `[server] session_idle_secs` without a request,
//! `session_max_secs` after sign-in, on sign-out, or when its token leaves the config;
//! roles are read from the current config on every request, so a reload that takes a
//! role away takes it from open sessions too. Failed sign-ins go through the same
//! per-source throttle and audit as failed bearer tokens.
//!
//! It must never let an agent-only token sign in, never keep or log a token or a
//! cookie value, and never accept a state-changing form without its session's CSRF token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{Nav, refusal, render};
use crate::state::Server;
use warden_core::store::sessions::{SharedSessions, StoredSession};
use warden_core::tokens::{self, Principal, Role};

const COOKIE: &str = "warden_session";
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    /// The `[[token]]` entry signed in with (by name: its roles are re-read).
    token: String,
    principal: String,
    csrf: String,
    created_ms: u64,
    seen_ms: u64,
}

/// The open sessions.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    /// Where they are kept instead, when hosts share a store.
    shared: Option<SharedSessions>,
}

/// Where a session stands.
enum Found {
    Open(String, String, String),
    /// The cookie names a session that ended (or never was).
    Ended,
}

impl Sessions {
    /// The sessions of a server with `config`: in the shared store when it sets one.
    pub(crate) fn for_config(config: &warden_core::Config) -> Result<Sessions, String> {
        let shared = match &config.store.shared {
            Some(target) => Some(SharedSessions::open(target)?),
            None => None,
        };
        Ok(Sessions {
            open: Mutex::default(),
            shared,
        })
    }

    fn open(
        &self,
        token: &str,
        principal: &str,
        now_ms: u64,
        idle_ms: u64,
        max_ms: u64,
    ) -> Result<(String, String), String> {
        let id = tokens::generate()?;
        let csrf = tokens::generate()?;
        if let Some(shared) = &self.shared {
            let session = StoredSession {
                token: token.to_string(),
                principal: principal.to_string(),
                csrf: csrf.clone(),
            };
            let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            shared
                .insert(&key(&id), &session, ms(now_ms), ms(idle_ms), ms(max_ms))
                .map_err(|e| e.to_string())?;
            return Ok((id, csrf));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| live(s, now_ms, idle_ms, max_ms));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.seen_ms)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            key(&id),
            Session {
                token: token.to_string(),
                principal: principal.to_string(),
                csrf: csrf.clone(),
                created_ms: now_ms,
                seen_ms: now_ms,
            },
        );
        Ok((id, csrf))
    }

    /// The session of cookie `id`, its idle time restarted, if it is still open.
    fn touch(&self, id: &str, now_ms: u64, idle_ms: u64, max_ms: u64) -> Found {
        let k = key(id);
        if let Some(shared) = &self.shared {
            let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            // An unreachable store signs no one in (the sign-in page then says why).
            return match shared.touch(&k, ms(now_ms), ms(idle_ms), ms(max_ms)) {
                Ok(Some(s)) => Found::Open(s.token, s.principal, s.csrf),
                Ok(None) => Found::Ended,
                Err(e) => {
                    tracing::warn!("console sessions: {e}");
                    Found::Ended
                }
            };
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get_mut(&k) {
            Some(s) if live(s, now_ms, idle_ms, max_ms) => {
                s.seen_ms = now_ms;
                Found::Open(s.token.clone(), s.principal.clone(), s.csrf.clone())
            }
            Some(_) => {
                open.remove(&k);
                Found::Ended
            }
            None => Found::Ended,
        }
    }

    fn close(&self, key: &str) {
        if let Some(shared) = &self.shared
            && let Err(e) = shared.remove(key)
        {
            tracing::warn!("console sessions: {e}");
        }
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn live(s: &Session, now_ms: u64, idle_ms: u64, max_ms: u64) -> bool {
    now_ms.saturating_sub(s.seen_ms) < idle_ms && now_ms.saturating_sub(s.created_ms) < max_ms
}

/// What sessions are kept under: the hash of the cookie, never the cookie.
fn key(id: &str) -> String {
    tokens::hash(id)
}

/// Who a console request speaks for: a signed-in approver or operator.
pub(crate) struct Viewer {
    pub principal: Principal,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    key: String,
}

impl Viewer {
    pub(crate) fn is_operator(&self) -> bool {
        self.principal.has(Role::Operator)
    }

    /// Does the form's `presented` token match the session's (compared in constant time)?
    pub(crate) fn csrf_ok(&self, presented: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }

    /// The 403 page for a viewer who is not an operator; `None` for an operator.
    pub(crate) fn unless_operator(&self) -> Option<Response> {
        if self.is_operator() {
            None
        } else {
            Some(refusal(
                StatusCode::FORBIDDEN,
                Some(self),
                &format!(
                    "{} may decide approvals but not see this page (operator role)",
                    self.principal.name
                ),
            ))
        }
    }

    /// The 403 page for a form without this session's CSRF token; `None` with it.
    pub(crate) fn unless_csrf(&self, presented: &str) -> Option<Response> {
        if self.csrf_ok(presented) {
            None
        } else {
            Some(refusal(
                StatusCode::FORBIDDEN,
                Some(self),
                "this form did not come from your console session (CSRF token missing or wrong); reload the page and try again",
            ))
        }
    }
}

fn cookie_value(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Where to send someone with no session: the sign-in page, back here after.
fn to_sign_in(parts: &Parts, ended: bool) -> Response {
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/console");
    let back = if parts.method == axum::http::Method::GET {
        here
    } else {
        "/console"
    };
    let mut to = format!("/console/login?next={}", encode(back));
    if ended {
        to += "&ended=1";
    }
    Redirect::to(&to).into_response()
}

/// Percent-encode a query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

impl FromRequestParts<Arc<Server>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Viewer, Response> {
        let Some(id) = cookie_value(parts) else {
            return Err(to_sign_in(parts, false));
        };
        let rt = server.runtime();
        let (idle, max) = lifetimes(&rt);
        let Found::Open(token, principal, csrf) =
            server.console.touch(id, warden_core::now_ms(), idle, max)
        else {
            return Err(to_sign_in(parts, true));
        };
        // The token's entry as the config says now: gone, or no longer for this
        // principal, ends the session.
        let entry = rt
            .config
            .tokens
            .iter()
            .find(|t| t.name == token && t.principal == principal);
        let Some(entry) = entry.filter(|t| {
            t.roles
                .iter()
                .any(|r| matches!(r, Role::Approver | Role::Operator))
        }) else {
            server.console.close(&key(id));
            return Err(to_sign_in(parts, true));
        };
        Ok(Viewer {
            principal: Principal {
                name: entry.principal.clone(),
                token: entry.name.clone(),
                roles: entry.roles.clone(),
            },
            csrf,
            key: key(id),
        })
    }
}

fn lifetimes(rt: &warden_core::runtime::Runtime) -> (u64, u64) {
    let s = &rt.config.server;
    (s.session_idle_secs * 1000, s.session_max_secs * 1000)
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    ended: Option<String>,
    out: Option<String>,
}

/// Only a console path is a place to go back to (never another site).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/console" || n.starts_with("/console/") || n.starts_with("/console?"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n
        }
        _ => "/console/approvals",
    }
}

fn login_form(status: StatusCode, next: &str, message: Option<&str>) -> Response {
    render(
        status,
        None,
        "Sign in",
        Nav::None,
        html! {
            @if let Some(m) = message {
                p.notice role="status" { (m) }
            }
            form.signin method="post" action="/console/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Your warden token (approver or operator)" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "Agents' tokens cannot sign in. Ask an operator for a token with the approver role." }
        },
    )
}

pub(crate) async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let message = if q.ended.is_some() {
        Some("Your session ended. Sign in again.")
    } else if q.out.is_some() {
        Some("You are signed out.")
    } else {
        None
    };
    login_form(StatusCode::OK, safe_next(q.next.as_deref()), message)
}

#[derive(Deserialize)]
pub(crate) struct SignIn {
    token: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn sign_in(
    State(server): State<Arc<Server>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Form(form): Form<SignIn>,
) -> Response {
    let rt = server.runtime();
    let next = safe_next(Some(&form.next)).to_string();
    let now = warden_core::now_ms();
    if server.auth_failures.throttled(remote.ip(), now) {
        server.metrics.auth_throttled();
        return crate::auth::too_many();
    }
    let refuse = |status: StatusCode, why: &'static str, shown: &'static str| {
        let server = server.clone();
        let rt = rt.clone();
        let next = next.clone();
        async move {
            server.metrics.auth_failure();
            if crate::auth::refused(&server, &rt, Some(remote), "/console/login", why).await {
                return crate::auth::too_many();
            }
            login_form(status, &next, Some(shown))
        }
    };
    let Some(principal) = tokens::verify(&rt.config.tokens, form.token.trim()) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unknown token (console sign-in)",
            "That token is not valid.",
        )
        .await;
    };
    if !principal.has(Role::Approver) {
        return refuse(
            StatusCode::FORBIDDEN,
            "an agent token may not sign in to the console",
            "This token is an agent's: it may call tools but not sign in here.",
        )
        .await;
    }
    let (idle, max) = lifetimes(&rt);
    let (id, _) = match server
        .console
        .open(&principal.token, &principal.name, now, idle, max)
    {
        Ok(opened) => opened,
        Err(e) => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                &format!("no session could be made: {e}"),
            );
        }
    };
    if let Some(audit) = &rt.audit {
        let record = warden_core::runtime::record::console_session(
            "sign-in",
            &principal.name,
            &remote.to_string(),
        );
        let _ = audit.commit(vec![rt.entry(record)], false).await;
    }
    let secure = rt
        .config
        .approvals
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        rt.config.server.session_max_secs,
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub(crate) struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// End the session here and now (the cookie alone no longer signs anyone in).
pub(crate) async fn sign_out(
    State(server): State<Arc<Server>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    viewer: Viewer,
    Form(form): Form<SignOut>,
) -> Response {
    if let Some(refused) = viewer.unless_csrf(&form.csrf) {
        return refused;
    }
    server.console.close(&viewer.key);
    let rt = server.runtime();
    if let Some(audit) = &rt.audit {
        let record = warden_core::runtime::record::console_session(
            "sign-out",
            &viewer.principal.name,
            &remote.to_string(),
        );
        let _ = audit.commit(vec![rt.entry(record)], false).await;
    }
    let mut response = Redirect::to("/console/login?out=1").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "warden_session=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}
