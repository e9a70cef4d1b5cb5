//! Webhook signatures: GitHub's `X-Hub-Signature-256`, Slack's `X-Slack-Signature` with
//! its timestamp, and a generic HMAC-SHA256 header, all checked in constant time.
//!
//! It must never accept a delivery whose signature it did not verify, nor a Slack
//! delivery older than five minutes (a replay).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::SignatureKind;

/// Slack's replay window.
pub const SLACK_MAX_AGE_SECS: i64 = 300;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no `{0}` header: the delivery is not signed")]
    Unsigned(String),
    #[error("the signature in `{0}` is malformed")]
    Malformed(String),
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the delivery is {0} s old (Slack deliveries older than 300 s are replays)")]
    Stale(i64),
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Result<&'a str, Refused> {
    let value = headers
        .get(name)
        .ok_or_else(|| Refused::Unsigned(name.to_string()))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| Refused::Malformed(name.to_string()))
}

fn decode(hex_text: &str, name: &str) -> Result<Vec<u8>, Refused> {
    let bytes = hex::decode(hex_text).map_err(|_| Refused::Malformed(name.to_string()))?;
    if bytes.len() == 32 {
        Ok(bytes)
    } else {
        Err(Refused::Malformed(name.to_string()))
    }
}

fn check(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> Result<(), Refused> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| Refused::Mismatch)?;
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(signature).map_err(|_| Refused::Mismatch)
}

/// Verify `body` as delivered with `headers`, signed with `key`. `header` is the
/// signature header (the configured one for `hmac`).
pub fn verify(
    kind: SignatureKind,
    header_name: &str,
    key: &[u8],
    headers: &http::HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), Refused> {
    match kind {
        SignatureKind::Github | SignatureKind::Hmac => {
            let value = header(headers, header_name)?;
            let hex_text = match kind {
                SignatureKind::Github => value
                    .strip_prefix("sha256=")
                    .ok_or_else(|| Refused::Malformed(header_name.to_string()))?,
                _ => value.strip_prefix("sha256=").unwrap_or(value),
            };
            check(key, &[body], &decode(hex_text, header_name)?)
        }
        SignatureKind::Slack => {
            let value = header(headers, header_name)?;
            let hex_text = value
                .strip_prefix("v0=")
                .ok_or_else(|| Refused::Malformed(header_name.to_string()))?;
            let signature = decode(hex_text, header_name)?;
            let stamp_name = "x-slack-request-timestamp";
            let stamp = header(headers, stamp_name)?;
            let secs: i64 = stamp
                .parse()
                .map_err(|_| Refused::Malformed(stamp_name.to_string()))?;
            // The signature first: an age is only worth reporting for a genuine delivery.
            check(key, &[b"v0:", stamp.as_bytes(), b":", body], &signature)?;
            let age = now_ms / 1000 - secs;
            if age.abs() > SLACK_MAX_AGE_SECS {
                return Err(Refused::Stale(age));
            }
            Ok(())
        }
    }
}

/// The hex HMAC-SHA256 of `parts` under `key` (for tests and for senders).
pub fn sign(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_signatures_are_checked_against_the_body() {
        let (key, body) = (b"s3cret".as_slice(), br#"{"ref":"main"}"#.as_slice());
        let good = format!("sha256={}", sign(key, &[body]));
        let name = "x-hub-signature-256";
        let h = headers(&[(name, good.clone())]);
        assert_eq!(
            verify(SignatureKind::Github, name, key, &h, body, 0),
            Ok(())
        );
        assert_eq!(
            verify(SignatureKind::Github, name, key, &h, b"{}", 0),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify(SignatureKind::Github, name, b"other", &h, body, 0),
            Err(Refused::Mismatch)
        );
        assert!(matches!(
            verify(
                SignatureKind::Github,
                name,
                key,
                &http::HeaderMap::new(),
                body,
                0
            ),
            Err(Refused::Unsigned(_))
        ));
        let bare = headers(&[(name, sign(key, &[body]))]);
        assert!(matches!(
            verify(SignatureKind::Github, name, key, &bare, body, 0),
            Err(Refused::Malformed(_))
        ));
        // The generic form takes the hex with or without its prefix.
        assert_eq!(
            verify(SignatureKind::Hmac, name, key, &bare, body, 0),
            Ok(())
        );
        assert_eq!(verify(SignatureKind::Hmac, name, key, &h, body, 0), Ok(()));
    }

    #[test]
    fn slack_signatures_cover_the_timestamp_and_refuse_replays() {
        let (key, body) = (
            b"slack-key".as_slice(),
            b"{\"type\":\"event_callback\"}".as_slice(),
        );
        let now_ms = 1_800_000_000_000i64;
        let stamp = (now_ms / 1000).to_string();
        let sig = format!("v0={}", sign(key, &[b"v0:", stamp.as_bytes(), b":", body]));
        let name = "x-slack-signature";
        let h = headers(&[(name, sig.clone()), ("x-slack-request-timestamp", stamp)]);
        assert_eq!(
            verify(SignatureKind::Slack, name, key, &h, body, now_ms),
            Ok(())
        );
        assert_eq!(
            verify(SignatureKind::Slack, name, key, &h, body, now_ms + 301_000),
            Err(Refused::Stale(301))
        );
        // Moving the timestamp breaks the signature.
        let moved = headers(&[
            (name, sig),
            ("x-slack-request-timestamp", (now_ms / 1000 + 1).to_string()),
        ]);
        assert_eq!(
            verify(SignatureKind::Slack, name, key, &moved, body, now_ms),
            Err(Refused::Mismatch)
        );
    }
}
