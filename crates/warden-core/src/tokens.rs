//! Bearer tokens for `warden serve`: making them, and checking a presented one
//! against the `[[token]]` entries of the config, which hold only SHA-256 hashes.
//!
//! Owns the token format (`wdn_` + 32 random bytes, base64url) and the roles a token
//! grants. It must never store, log or print a token after `warden tokens create`
//! shows it once, and compares hashes in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The principal `warden call` runs as unless told otherwise (`--as`).
pub const LOCAL_OPERATOR: &str = "local-operator";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Call tools over MCP.
    Agent,
    /// Decide approvals through the API.
    Approver,
    /// Everything in the operator API: runs, approvals, audit, metrics, reload.
    Operator,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "approver" => Some(Role::Approver),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Operator => "operator",
        }
    }
}

/// One `[[token]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub principal: String,
    pub roles: Vec<Role>,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub token: String,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Operator)
    }
}

/// A new random token.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    Ok(format!("wdn_{}", B64.encode(bytes)))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The entry `presented` matches, if any.
pub fn verify(entries: &[TokenEntry], presented: &str) -> Option<Principal> {
    let h = hash(presented);
    // Every entry is compared, each in constant time: timing tells nothing.
    let mut found = None;
    for e in entries {
        let same = e.sha256.len() == h.len()
            && e.sha256
                .bytes()
                .zip(h.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same && found.is_none() {
            found = Some(Principal {
                name: e.principal.clone(),
                token: e.name.clone(),
                roles: e.roles.clone(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_against_its_own_hash() {
        let token = generate().unwrap();
        let entry = TokenEntry {
            name: "t".into(),
            principal: "alice".into(),
            roles: vec![Role::Agent],
            sha256: hash(&token),
        };
        let p = verify(std::slice::from_ref(&entry), &token).unwrap();
        assert_eq!(p.name, "alice");
        assert!(p.has(Role::Agent) && !p.has(Role::Operator));
        assert!(verify(&[entry], "wdn_wrong").is_none());
        assert_ne!(generate().unwrap(), token);
    }
}
