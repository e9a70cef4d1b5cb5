//! One-click approval links: a token that lets one principal decide one request until
//! a time, signed with HMAC-SHA256 under a key kept in the data dir.
//!
//! Owns the token format (`<principal>.<expires_ms>.<signature>`, base64url parts) and
//! the key file (`<data_dir>/links.key`, 32 random bytes, created 0600). It must never
//! accept a token whose signature, request or expiry does not check out, and a link
//! alone never decides anything: the page it opens must be submitted (POST).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Signs and checks link tokens.
pub struct LinkSigner {
    key: Zeroizing<Vec<u8>>,
}

/// Who a valid token lets decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkGrant {
    pub principal: String,
    pub expires_ms: i64,
}

impl LinkSigner {
    /// The signer for the key at `path`, creating the key if there is none.
    pub fn open(path: &Path) -> std::io::Result<LinkSigner> {
        match std::fs::read(path) {
            Ok(key) if key.len() == 32 => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} is readable by others (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
                Ok(LinkSigner {
                    key: Zeroizing::new(key),
                })
            }
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is not a 32-byte link key",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new(vec![0u8; 32]);
                getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Another process may create it first: then use theirs.
                if crate::util::create_key_file(path, &key)? {
                    Ok(LinkSigner { key })
                } else {
                    LinkSigner::open(path)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, approval: &str, principal: &str, expires_ms: i64) -> Hmac<Sha256> {
        // new_from_slice accepts any key length for HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"warden-approval-link-1\n");
        mac.update(approval.as_bytes());
        mac.update(b"\n");
        mac.update(principal.as_bytes());
        mac.update(b"\n");
        mac.update(expires_ms.to_string().as_bytes());
        mac
    }

    /// A token letting `principal` decide `approval` until `expires_ms`.
    pub fn sign(&self, approval: &str, principal: &str, expires_ms: i64) -> String {
        let sig = self
            .mac(approval, principal, expires_ms)
            .finalize()
            .into_bytes();
        format!("{}.{expires_ms}.{}", B64.encode(principal), B64.encode(sig))
    }

    /// Check `token` for `approval` at `now_ms`.
    pub fn verify(&self, approval: &str, token: &str, now_ms: i64) -> Result<LinkGrant, String> {
        let mut parts = token.splitn(3, '.');
        let (Some(who), Some(expires), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed link token".into());
        };
        let principal = B64
            .decode(who)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("malformed link token")?;
        let expires_ms: i64 = expires.parse().map_err(|_| "malformed link token")?;
        let sig = B64.decode(sig).map_err(|_| "malformed link token")?;
        self.mac(approval, &principal, expires_ms)
            .verify_slice(&sig)
            .map_err(|_| "this link is not valid for this request")?;
        if now_ms >= expires_ms {
            return Err("this link has expired".into());
        }
        Ok(LinkGrant {
            principal,
            expires_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_request_principal_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LinkSigner::open(&dir.path().join("links.key")).unwrap();
        let token = signer.sign("apr-1", "bob", 2_000);
        assert_eq!(
            signer.verify("apr-1", &token, 1_000).unwrap().principal,
            "bob"
        );
        assert!(signer.verify("apr-2", &token, 1_000).is_err());
        assert!(signer.verify("apr-1", &token, 2_000).is_err());
        let forged = token.replacen(&B64.encode("bob"), &B64.encode("eve"), 1);
        assert!(signer.verify("apr-1", &forged, 1_000).is_err());
        // The same key file gives the same signer.
        let again = LinkSigner::open(&dir.path().join("links.key")).unwrap();
        assert!(again.verify("apr-1", &token, 1_000).is_ok());
    }
}
