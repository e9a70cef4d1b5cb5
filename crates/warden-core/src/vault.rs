//! The credential vault: secrets encrypted at rest under `<data_dir>/vault.json`.
//!
//! Envelope encryption with XChaCha20-Poly1305: a random data key encrypts each
//! secret version, with `name` and `version` bound as associated data (so ciphertexts
//! cannot be swapped between names or versions); the master key (a 0600 key file, or
//! `WARDEN_MASTER_KEY`) encrypts the data key. Writes are atomic (temp file, fsync,
//! rename). It must never write a plaintext value anywhere, nor return a value whose
//! authentication failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

/// The environment variable that may carry the master key (64 hex digits) instead of
/// a key file.
pub const MASTER_KEY_ENV: &str = "WARDEN_MASTER_KEY";
const FORMAT: &str = "warden-vault-1";

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("no master key: set {MASTER_KEY_ENV} or create {path} with `warden secrets init`")]
    NoKey { path: PathBuf },
    #[error(
        "no place for the master key: set key_dir (a directory outside the data dir) or [vault] key_file in the config, or {MASTER_KEY_ENV} (neither XDG_CONFIG_HOME nor HOME is set)"
    )]
    NoKeyPlace,
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyPermissions { path: String, mode: u32 },
    #[error("master key from {source_name} is invalid: {why}")]
    BadKey { source_name: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a warden vault: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "cannot decrypt the vault's data key: wrong master key, or the vault was tampered with"
    )]
    WrongKey,
    #[error("secret {name:?} version {version} failed authentication: the vault was tampered with")]
    Tampered { name: String, version: u32 },
    #[error("no secret named {0:?}")]
    NotFound(String),
    #[error("secret {0:?} already exists; use `warden secrets rotate` to add a version")]
    Exists(String),
    #[error("invalid secret name {0:?}: use 1-128 of A-Z, a-z, 0-9, '_', '-' and '.'")]
    InvalidName(String),
    #[error("invalid secret value: {0}")]
    InvalidValue(String),
    #[error("{0} already exists; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
}

/// The 32-byte master key, wiped from memory when dropped.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// The key from `WARDEN_MASTER_KEY` if set, else from `key_file`, whose mode must
    /// not let group or others read it.
    pub fn resolve(key_file: Option<&Path>) -> Result<MasterKey, VaultError> {
        if let Ok(hex) = std::env::var(MASTER_KEY_ENV) {
            return MasterKey::from_hex(hex.trim(), MASTER_KEY_ENV);
        }
        let key_file = key_file.ok_or(VaultError::NoKeyPlace)?;
        let meta = match std::fs::metadata(key_file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VaultError::NoKey {
                    path: key_file.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(VaultError::Io {
                    path: key_file.to_path_buf(),
                    source,
                });
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::KeyPermissions {
                    path: key_file.display().to_string(),
                    mode,
                });
            }
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(key_file).map_err(|source| VaultError::Io {
                    path: key_file.to_path_buf(),
                    source,
                })?,
            );
        MasterKey::from_hex(text.trim(), &key_file.display().to_string())
    }

    /// The key's bytes, for keys derived from it.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_hex(hex: &str, source_name: &str) -> Result<MasterKey, VaultError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex, key.as_mut_slice()).map_err(|e| VaultError::BadKey {
            source_name: source_name.to_string(),
            why: format!("expected 64 hex digits ({e})"),
        })?;
        Ok(MasterKey(key))
    }

    fn generate() -> Result<MasterKey, VaultError> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut_slice())?;
        Ok(MasterKey(key))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    format: String,
    data_key: Sealed,
    secrets: BTreeMap<String, Vec<Version>>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Version {
    version: u32,
    created_ms: u64,
    #[serde(flatten)]
    sealed: Sealed,
}

/// What `warden secrets list` shows: never a value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// (version, created ms since the epoch), oldest first.
    pub versions: Vec<(u32, u64)>,
}

pub struct Vault {
    path: PathBuf,
    file: VaultFile,
    data_key: Zeroizing<[u8; 32]>,
}

impl Vault {
    /// Create an empty vault, and the key file (mode 0600, in a 0700 directory) when
    /// there is none yet (several data dirs may share one key dir). Refuses to
    /// overwrite a vault.
    pub fn init(path: &Path, key_file: Option<&Path>) -> Result<(), VaultError> {
        if path.exists() {
            return Err(VaultError::AlreadyInitialized(path.to_path_buf()));
        }
        let master = match std::env::var(MASTER_KEY_ENV) {
            Ok(hex) => MasterKey::from_hex(hex.trim(), MASTER_KEY_ENV)?,
            Err(_) => {
                let key_file = key_file.ok_or(VaultError::NoKeyPlace)?;
                if key_file.exists() {
                    MasterKey::resolve(Some(key_file))?
                } else {
                    let key = MasterKey::generate()?;
                    write_key_file(key_file, &key)?;
                    key
                }
            }
        };
        let mut data_key = Zeroizing::new([0u8; 32]);
        fill_random(data_key.as_mut_slice())?;
        let sealed = seal(&master.0, data_key.as_slice(), FORMAT.as_bytes())?;
        let vault = Vault {
            path: path.to_path_buf(),
            file: VaultFile {
                format: FORMAT.into(),
                data_key: sealed,
                secrets: BTreeMap::new(),
            },
            data_key,
        };
        vault.save()
    }

    pub fn open(path: &Path, master: &MasterKey) -> Result<Vault, VaultError> {
        let text = std::fs::read(path).map_err(|source| VaultError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: VaultFile = serde_json::from_slice(&text).map_err(|e| VaultError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if file.format != FORMAT {
            return Err(VaultError::Corrupt {
                path: path.to_path_buf(),
                why: format!("unknown format {:?}", file.format),
            });
        }
        let key = open_sealed(&master.0, &file.data_key, FORMAT.as_bytes())
            .ok_or(VaultError::WrongKey)?;
        let mut data_key = Zeroizing::new([0u8; 32]);
        if key.len() != 32 {
            return Err(VaultError::WrongKey);
        }
        data_key.copy_from_slice(&key);
        Ok(Vault {
            path: path.to_path_buf(),
            file,
            data_key,
        })
    }

    pub fn list(&self) -> Vec<SecretInfo> {
        self.file
            .secrets
            .iter()
            .map(|(name, versions)| SecretInfo {
                name: name.clone(),
                versions: versions.iter().map(|v| (v.version, v.created_ms)).collect(),
            })
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.secrets.get(name).is_some_and(|v| !v.is_empty())
    }

    /// The latest version's value.
    pub fn get(&self, name: &str) -> Result<Zeroizing<String>, VaultError> {
        let version = self
            .file
            .secrets
            .get(name)
            .and_then(|versions| versions.last())
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        self.decrypt(name, version)
    }

    /// Decrypt every version of every secret (checks the whole vault is intact).
    pub fn verify(&self) -> Result<usize, VaultError> {
        let mut n = 0;
        for (name, versions) in &self.file.secrets {
            for version in versions {
                self.decrypt(name, version)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn decrypt(&self, name: &str, version: &Version) -> Result<Zeroizing<String>, VaultError> {
        let tampered = || VaultError::Tampered {
            name: name.to_string(),
            version: version.version,
        };
        let plain = open_sealed(
            &self.data_key,
            &version.sealed,
            aad(name, version.version).as_bytes(),
        )
        .ok_or_else(tampered)?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| tampered())
    }

    /// Add a new secret (version 1).
    pub fn set(&mut self, name: &str, value: &str) -> Result<u32, VaultError> {
        check_name(name)?;
        if self.contains(name) {
            return Err(VaultError::Exists(name.to_string()));
        }
        self.add_version(name, value)
    }

    /// Add a new version of an existing secret; older versions stay decryptable until removed.
    pub fn rotate(&mut self, name: &str, value: &str) -> Result<u32, VaultError> {
        if !self.contains(name) {
            return Err(VaultError::NotFound(name.to_string()));
        }
        self.add_version(name, value)
    }

    fn add_version(&mut self, name: &str, value: &str) -> Result<u32, VaultError> {
        check_value(value)?;
        let versions = self.file.secrets.entry(name.to_string()).or_default();
        let version = versions.last().map_or(1, |v| v.version + 1);
        let sealed = seal(
            &self.data_key,
            value.as_bytes(),
            aad(name, version).as_bytes(),
        )?;
        versions.push(Version {
            version,
            created_ms: crate::now_ms(),
            sealed,
        });
        self.save()?;
        Ok(version)
    }

    /// Remove one version, or the whole secret when `version` is `None`.
    pub fn remove(&mut self, name: &str, version: Option<u32>) -> Result<(), VaultError> {
        let versions = self
            .file
            .secrets
            .get_mut(name)
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        match version {
            None => {
                self.file.secrets.remove(name);
            }
            Some(v) => {
                let before = versions.len();
                versions.retain(|x| x.version != v);
                if versions.len() == before {
                    return Err(VaultError::NotFound(format!("{name} version {v}")));
                }
                if versions.is_empty() {
                    self.file.secrets.remove(name);
                }
            }
        }
        self.save()
    }

    /// Atomic replace: a crash leaves the old vault or the new one, never a mix.
    fn save(&self) -> Result<(), VaultError> {
        let io = |source| VaultError::Io {
            path: self.path.clone(),
            source,
        };
        let text =
            serde_json::to_vec_pretty(&self.file).map_err(|e| io(std::io::Error::other(e)))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn aad(name: &str, version: u32) -> String {
    format!("{FORMAT}/secret/{name}/{version}")
}

/// The naming rule for secrets, shared with config validation of grants.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidName(name.to_string()))
    }
}

fn check_value(value: &str) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::InvalidValue("empty".into()));
    }
    if value.len() > 64 * 1024 {
        return Err(VaultError::InvalidValue("longer than 64 KiB".into()));
    }
    Ok(())
}

fn seal(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Result<Sealed, VaultError> {
    let mut nonce = [0u8; 24];
    fill_random(&mut nonce)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| VaultError::InvalidValue("encryption failed".into()))?;
    Ok(Sealed {
        nonce: B64.encode(nonce),
        ciphertext: B64.encode(ciphertext),
    })
}

fn open_sealed(key: &[u8; 32], sealed: &Sealed, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let nonce = B64.decode(&sealed.nonce).ok().filter(|n| n.len() == 24)?;
    let ciphertext = B64.decode(&sealed.ciphertext).ok()?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

fn fill_random(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::fill(buf).map_err(|e| VaultError::Io {
        path: PathBuf::from("<system random>"),
        source: std::io::Error::other(e.to_string()),
    })
}

fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !dir.exists()
    {
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(io)?;
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.0.as_slice())));
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(dir: &Path) -> (Vault, MasterKey) {
        let (path, key_file) = (dir.join("vault.json"), dir.join("master.key"));
        Vault::init(&path, Some(&key_file)).unwrap();
        let key = MasterKey::resolve(Some(&key_file)).unwrap();
        (Vault::open(&path, &key).unwrap(), key)
    }

    #[test]
    fn values_round_trip_and_never_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, key) = vault(dir.path());
        v.set("token", "s3cr3t-value-123").unwrap();
        v.rotate("token", "s3cr3t-value-456").unwrap();
        let v = Vault::open(&dir.path().join("vault.json"), &key).unwrap();
        assert_eq!(v.get("token").unwrap().as_str(), "s3cr3t-value-456");
        assert_eq!(v.list()[0].versions.len(), 2);
        assert_eq!(v.verify().unwrap(), 2);
        let text = std::fs::read_to_string(dir.path().join("vault.json")).unwrap();
        assert!(!text.contains("s3cr3t") && !text.contains(&B64.encode("s3cr3t-value-123")));
    }

    #[test]
    fn swapped_ciphertexts_fail_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let (mut v, key) = vault(dir.path());
        v.set("a", "value-a").unwrap();
        v.set("b", "value-b").unwrap();
        let a = v.file.secrets["a"][0].sealed.clone();
        let b = v.file.secrets["b"][0].sealed.clone();
        v.file.secrets.get_mut("a").unwrap()[0].sealed = b;
        v.file.secrets.get_mut("b").unwrap()[0].sealed = a;
        v.save().unwrap();
        let v = Vault::open(&dir.path().join("vault.json"), &key).unwrap();
        assert!(matches!(v.get("a"), Err(VaultError::Tampered { .. })));
        assert!(matches!(v.get("b"), Err(VaultError::Tampered { .. })));
    }
}
