//! Signed checkpoints: what someone who can rewrite the whole data dir cannot forge.
//!
//! Every so many records (and seconds, and at shutdown) the writer signs the sequence
//! number and chain hash of the last record with an Ed25519 key that lives outside the
//! data dir, and writes the signature into the log as a `checkpoint` record; a durable
//! checkpoint is also handed to the witness (a directory and/or an HTTP endpoint
//! elsewhere), which keeps it where the host cannot take it back. `verify` checks every
//! checkpoint against a key it trusts: a rewritten chain no longer matches the hashes
//! that were signed, and a truncated one ends before what the witness holds.
//!
//! Owns the key file (created `0600`, never inside the data dir: `config` refuses that),
//! the signed message formats, and the witness's delivery. It must never block a call
//! on the witness, nor sign anything but a chain position.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::entry::Entry;

/// The audit signing key.
pub struct Signer {
    key: SigningKey,
    public: String,
    pub path: PathBuf,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} from {})", self.public, self.path.display())
    }
}

impl Signer {
    /// The key at `path`, created (with its `.pub` beside it) when there is none. A key
    /// file others can read is refused.
    pub fn open(path: &Path) -> Result<Signer, String> {
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    ));
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                );
                let mut seed = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(text.trim(), seed.as_mut_slice()).map_err(|_| {
                    format!(
                        "{} is not an audit signing key (64 hex digits)",
                        path.display()
                    )
                })?;
                Ok(Signer::from_seed(&seed, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Signer::create(path),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The public key of the key file at `path`, without creating one: `None` when
    /// there is no such file.
    pub fn public_of(path: &Path) -> Result<Option<String>, String> {
        match std::fs::metadata(path) {
            Ok(_) => Signer::open(path).map(|s| Some(s.public)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// A new key at `path`, which must not exist yet.
    pub fn create_new(path: &Path) -> Result<Signer, String> {
        if path.exists() {
            return Err(format!("{} already exists", path.display()));
        }
        Signer::create(path)
    }

    fn from_seed(seed: &[u8; 32], path: &Path) -> Signer {
        let key = SigningKey::from_bytes(seed);
        Signer {
            public: hex::encode(key.verifying_key().as_bytes()),
            key,
            path: path.to_path_buf(),
        }
    }

    fn create(path: &Path) -> Result<Signer, String> {
        let shown = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(shown)?;
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| e.to_string())?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(seed.as_slice())));
        // Two processes starting at once race here: the loser uses the winner's key.
        if !crate::util::create_key_file(path, text.as_bytes()).map_err(shown)? {
            return Signer::open(path);
        }
        let signer = Signer::from_seed(&seed, path);
        let _ = std::fs::write(public_path(path), format!("{}\n", signer.public));
        Ok(signer)
    }

    /// The public key, hex: what `warden audit verify --key` takes.
    pub fn public(&self) -> &str {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// The checkpoint record covering record `covers` (whose hash is `covers_hash`),
    /// and its signature.
    pub fn checkpoint(
        &self,
        covers: u64,
        covers_hash: &str,
        ts_ms: u64,
        every: u64,
    ) -> (Entry, String) {
        let sig = self.sign(&checkpoint_message(covers, covers_hash, ts_ms));
        let mut entry = Entry::new("checkpoint");
        entry
            .num("ts_ms", ts_ms)
            .num("covers", covers)
            .str("covers_hash", covers_hash)
            .num("every", every)
            .str("key", &self.public)
            .str("sig", &sig);
        (entry, sig)
    }

    /// A record saying this key now signs the log, endorsed by `previous` when the
    /// rotation was made with it at hand.
    pub fn rotation(
        &self,
        previous_key: Option<&str>,
        endorsed_by: Option<&Signer>,
        reason: &str,
        ts_ms: u64,
    ) -> Entry {
        let endorsement = endorsed_by.map(|old| old.sign(&rotation_message(&self.public)));
        let mut entry = Entry::new("key-rotation");
        entry
            .num("ts_ms", ts_ms)
            .opt_str("previous_key", previous_key)
            .str("key", &self.public)
            .opt_str("endorsement", endorsement.as_deref())
            .str("reason", reason);
        entry
    }
}

/// Where the public half of the key at `path` is written.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".pub");
    path.with_file_name(name)
}

fn checkpoint_message(covers: u64, covers_hash: &str, ts_ms: u64) -> Vec<u8> {
    format!("warden-audit-checkpoint-1\n{covers}\n{covers_hash}\n{ts_ms}").into_bytes()
}

fn rotation_message(new_key: &str) -> Vec<u8> {
    format!("warden-audit-key-rotation-1\n{new_key}").into_bytes()
}

/// A public key from hex (64 digits), or from a file holding it.
pub fn parse_public_key(text: &str) -> Result<String, String> {
    let candidate = text.trim();
    let from_hex = |hex_text: &str| {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes).ok()?;
        VerifyingKey::from_bytes(&bytes).ok()?;
        Some(hex::encode(bytes))
    };
    if let Some(key) = from_hex(candidate) {
        return Ok(key);
    }
    let file = std::fs::read_to_string(candidate).map_err(|e| {
        format!("{candidate:?} is neither a public key (64 hex digits) nor a readable file: {e}")
    })?;
    from_hex(file.trim())
        .ok_or_else(|| format!("{candidate} does not hold a public key (64 hex digits)"))
}

fn verify(key_hex: &str, message: &[u8], sig_hex: &str) -> bool {
    let mut key = [0u8; 32];
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(key_hex, &mut key).is_err()
        || hex::decode_to_slice(sig_hex, &mut sig).is_err()
    {
        return false;
    }
    VerifyingKey::from_bytes(&key)
        .is_ok_and(|k| k.verify(message, &Signature::from_bytes(&sig)).is_ok())
}

/// A checkpoint as the log and the witness hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The hash of the log's first record: which log this is.
    pub log: String,
    /// The checkpoint record's own sequence number.
    pub seq: u64,
    pub covers: u64,
    pub covers_hash: String,
    pub ts_ms: u64,
    pub key: String,
    pub sig: String,
}

impl Checkpoint {
    /// Is the signature the key's own over this chain position?
    pub fn signature_ok(&self) -> bool {
        verify(
            &self.key,
            &checkpoint_message(self.covers, &self.covers_hash, self.ts_ms),
            &self.sig,
        )
    }
}

/// Is `endorsement` `old_key`'s signature over `new_key`?
pub fn endorsement_ok(old_key: &str, new_key: &str, endorsement: &str) -> bool {
    verify(old_key, &rotation_message(new_key), endorsement)
}

/// Where durable checkpoints are sent, besides the log itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WitnessConfig {
    /// A directory on another volume (or mount): one JSON line per checkpoint, in
    /// `log-<first 16 digits of the log's first hash>.jsonl`, fsynced.
    pub dir: Option<PathBuf>,
    /// An HTTP(S) endpoint that receives each checkpoint as a JSON POST.
    pub url: Option<String>,
}

impl WitnessConfig {
    pub fn is_set(&self) -> bool {
        self.dir.is_some() || self.url.is_some()
    }
}

/// The file of `dir` that witnesses the log whose first record hashes to `log`.
pub fn witness_file(dir: &Path, log: &str) -> PathBuf {
    dir.join(format!("log-{}.jsonl", &log[..log.len().min(16)]))
}

/// Most checkpoints waiting for the witness; past it the oldest are dropped (a later
/// checkpoint commits to everything before it).
const MAX_PENDING: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The witness's delivery thread.
pub struct Witness {
    tx: Option<mpsc::Sender<Checkpoint>>,
    done: mpsc::Receiver<()>,
}

/// How long closing the log waits for the last checkpoints to reach the witness.
const DRAIN: Duration = Duration::from_secs(2);

impl Witness {
    pub fn start(config: WitnessConfig) -> std::io::Result<Witness> {
        let (tx, rx) = mpsc::channel::<Checkpoint>();
        let (finished, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("warden-witness".into())
            .spawn(move || {
                deliver_all(&config, &rx);
                let _ = finished.send(());
            })?;
        Ok(Witness { tx: Some(tx), done })
    }

    /// Hand a durable checkpoint over; never waits.
    pub fn send(&self, checkpoint: Checkpoint) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(checkpoint);
        }
    }

    /// Stop taking checkpoints and give the thread a moment to deliver what it holds
    /// (one last attempt each).
    pub fn close(&mut self) {
        if self.tx.take().is_some() {
            let _ = self.done.recv_timeout(DRAIN);
        }
    }
}

fn deliver_all(config: &WitnessConfig, rx: &mpsc::Receiver<Checkpoint>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
    let mut pending = std::collections::VecDeque::new();
    let mut backoff = Duration::from_secs(1);
    let mut open = true;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match rx.recv() {
                Ok(c) => pending.push_back(c),
                Err(_) => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            pending.push_back(c);
        }
        while pending.len() > MAX_PENDING {
            pending.pop_front();
        }
        let mut failed = false;
        while let Some(c) = pending.front() {
            match deliver(config, runtime.as_ref(), c) {
                Ok(()) => {
                    pending.pop_front();
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(seq = c.seq, "audit witness: {e}; retrying in {backoff:?}");
                    failed = true;
                    break;
                }
            }
        }
        if !open {
            // The log is closed: that was the last attempt.
            return;
        }
        if failed {
            match rx.recv_timeout(backoff) {
                Ok(c) => pending.push_back(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn deliver(
    config: &WitnessConfig,
    runtime: Option<&tokio::runtime::Runtime>,
    c: &Checkpoint,
) -> Result<(), String> {
    let mut line = serde_json::to_vec(c).map_err(|e| e.to_string())?;
    if let Some(dir) = &config.dir {
        let path = witness_file(dir, &c.log);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            let mut before = file.metadata()?.len();
            if before > 0 && !ends_with_newline(&mut file, before)? {
                // A crash cut the last write short: cut the torn line off, as the log
                // itself is cut back to its last whole record.
                before = last_line_end(&path)?;
                file.set_len(before)?;
            }
            let mut text = line.clone();
            text.push(b'\n');
            let written = file.write_all(&text).and_then(|()| file.sync_data());
            if written.is_err() {
                // A full disk wrote part of the line: cut it back, so the retry appends
                // a whole one after whole ones.
                let _ = file.set_len(before);
            }
            written
        };
        write().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(url) = &config.url {
        let runtime = runtime.ok_or("no runtime for the HTTP witness")?;
        let body = std::mem::take(&mut line);
        runtime.block_on(post(url, body))?;
    }
    Ok(())
}

async fn post(url: &str, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::BodyExt;
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            http_body_util::Full::new(bytes::Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .map_err(|e| format!("bad witness request: {e}"))?;
    let send = async {
        let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
            .await
            .map_err(|e| format!("{url}: {e:?}"))?;
        let conn = tokio::spawn(io);
        let status = response.status();
        let _ = response.into_body().collect().await;
        conn.abort();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered {status}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
}

/// The length of `path` up to and with its last newline.
fn last_line_end(path: &Path) -> std::io::Result<u64> {
    let bytes = std::fs::read(path)?;
    Ok(bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i as u64 + 1))
}

fn ends_with_newline(file: &mut std::fs::File, len: u64) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// The checkpoints a witness file holds, oldest first. Lines that are not checkpoints
/// are an error (the witness is supposed to be out of an attacker's reach), except the
/// last one when it has no newline: a write a crash cut short.
pub fn read_witness(path: &Path) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let whole = match text.rfind('\n') {
        Some(i) if i + 1 < text.len() => &text[..=i],
        Some(_) => text.as_str(),
        None => "",
    };
    whole
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: not a checkpoint: {e}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_and_verify_checkpoints_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/audit.key");
        let signer = Signer::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            parse_public_key(public_path(&path).to_str().unwrap()).unwrap(),
            signer.public()
        );
        let again = Signer::open(&path).unwrap();
        assert_eq!(again.public(), signer.public());

        let (entry, _) = signer.checkpoint(9, &"ab".repeat(32), 77, 1000);
        let text = format!("{{\"seq\":10{}}}", String::from_utf8_lossy(&entry.0));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut c = Checkpoint {
            log: String::new(),
            seq: 10,
            covers: 9,
            covers_hash: "ab".repeat(32),
            ts_ms: 77,
            key: v["key"].as_str().unwrap().into(),
            sig: v["sig"].as_str().unwrap().into(),
        };
        assert!(c.signature_ok());
        c.covers_hash = "cd".repeat(32);
        assert!(!c.signature_ok());

        let next = Signer::open(&dir.path().join("keys/next.key")).unwrap();
        let rotation = next.rotation(Some(signer.public()), Some(&signer), "test", 1);
        let text = format!("{{\"seq\":1{}}}", String::from_utf8_lossy(&rotation.0));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let endorsement = v["endorsement"].as_str().unwrap();
        assert!(endorsement_ok(signer.public(), next.public(), endorsement));
        assert!(!endorsement_ok(next.public(), signer.public(), endorsement));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Signer::open(&path)
                .unwrap_err()
                .contains("readable by others")
        );
    }

    #[test]
    fn a_witness_file_torn_at_its_end_reads_and_takes_whole_lines_after() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoint {
            log: "g".repeat(64),
            seq: 10,
            covers: 9,
            covers_hash: "ab".repeat(32),
            ts_ms: 77,
            key: "00".repeat(32),
            sig: "11".repeat(64),
        };
        let path = witness_file(dir.path(), &c.log);
        let line = serde_json::to_string(&c).unwrap();
        // A crash cut the second write short.
        std::fs::write(&path, format!("{line}\n{{\"seq\":")).unwrap();
        assert_eq!(
            read_witness(&path).unwrap().len(),
            1,
            "the torn tail is not a line"
        );
        let config = WitnessConfig {
            dir: Some(dir.path().to_path_buf()),
            url: None,
        };
        deliver(&config, None, &c).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{line}\n{line}\n"),
            "the torn line was cut off"
        );
        assert_eq!(read_witness(&path).unwrap().len(), 2);
    }
}
