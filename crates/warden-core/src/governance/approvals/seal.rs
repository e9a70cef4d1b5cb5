//! Held inputs at rest: sealed under a key derived from the vault's master key while
//! a request waits (the store holds ciphertext bound to the request id), and what a
//! sealed or removed input reads as.
//!
//! It must never write a held input in the clear when a key is available.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Seals held inputs under a key derived from the vault's master key.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
}

impl Sealer {
    /// A sealer whose key is derived from the vault's master key.
    pub fn new(master: &[u8; 32]) -> Sealer {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(
            &Sha256::new()
                .chain_update(b"warden-approvals-input-1\n")
                .chain_update(master)
                .finalize(),
        );
        Sealer { key }
    }

    pub(super) fn seal(&self, id: &str, input: &str) -> Result<String, String> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()));
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: input.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| "cannot seal the input".to_string())?;
        Ok(format!("{}:{}", B64.encode(nonce), B64.encode(ct)))
    }

    pub(super) fn open(&self, id: &str, sealed: &str) -> Option<String> {
        let (nonce, ct) = sealed.split_once(':')?;
        let nonce = B64.decode(nonce).ok().filter(|n| n.len() == 24)?;
        let ct = B64.decode(ct).ok()?;
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()));
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: id.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// What a sealed input reads as without the key (or after tampering).
pub const SEALED: &str = "[sealed: the vault's master key is needed to read this input]";
/// What an ended request's input reads as: it ran (or never will) and its run keeps
/// the redacted input.
pub const REMOVED: &str = "[removed when the request ended: `warden runs show` has it, redacted]";
