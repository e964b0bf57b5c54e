//! The embedded authority's keys on disk: one JSON file, mode 0600, in a 0700 directory,
//! replaced atomically (write to a temporary file, fsync, rename). The directory must be ours
//! and the file ours and private ([`crate::fs_trust`]): whoever can replace the file chooses
//! the CA we sign with.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fs_trust::{FsTrust, TrustError};

pub const KEYS_FILE: &str = "authority_keys.json";
/// Largest key file read (it holds a handful of keys).
pub const MAX_KEYS_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Untrusted(#[from] TrustError),
}

/// One persisted signing key. `key_pkcs8` is base64; the struct is zeroized by the caller.
#[derive(Serialize, Deserialize, Clone)]
pub struct StoredKey {
    /// JWT key id; empty for CAs.
    #[serde(default)]
    pub kid: String,
    /// CA certificate DER, base64; empty for JWT keys.
    #[serde(default)]
    pub cert_der: String,
    pub key_pkcs8: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub ttl_secs: u64,
    /// "prepared", "active" or "retired".
    pub state: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("state", &self.state)
            .field("key_pkcs8", &"...")
            .finish()
    }
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key_pkcs8.zeroize();
    }
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct StoredKeys {
    pub sequence: u64,
    pub cas: Vec<StoredKey>,
    pub jwt_keys: Vec<StoredKey>,
}

pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Creates `dir` (0700) if needed; an existing one must be ours and not writable by
    /// others, like every directory above it.
    ///
    /// # Errors
    /// The directory is not trusted or cannot be created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = FsTrust::current().ensure_dir("data_dir", dir, 0o700)?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    /// The stored keys, or `None` when there is no file yet.
    ///
    /// # Errors
    /// Unreadable, oversize, group/world-accessible or corrupt file.
    pub fn load(&self) -> Result<Option<StoredKeys>, StoreError> {
        let path = self.path();
        let file = match FsTrust::current().open_private("key file", &path) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut text = Zeroizing::new(Vec::new());
        file.take(MAX_KEYS_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        if text.len() as u64 > MAX_KEYS_FILE_BYTES {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("larger than {MAX_KEYS_FILE_BYTES} bytes"),
            });
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Replaces the file atomically.
    ///
    /// # Errors
    /// Any write, fsync or rename failure.
    pub fn save(&self, keys: &StoredKeys) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{KEYS_FILE}.tmp"));
        let io = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        let bytes = Zeroizing::new(serde_json::to_vec(keys).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?);
        // Only we can write the directory: a leftover temporary file is ours.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        // The umask cannot widen 0600, but make the mode exact on the descriptor anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_0600_and_refuses_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = KeyStore::open(&data).unwrap();
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(store.load().unwrap().is_none());
        let keys = StoredKeys {
            sequence: 3,
            ..Default::default()
        };
        store.save(&keys).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load().unwrap().unwrap().sequence, 3);
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::Untrusted(TrustError::Exposed { .. }))
        ));
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn refuses_an_open_directory_and_a_symlinked_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            KeyStore::open(&open),
            Err(StoreError::Untrusted(TrustError::Writable { .. }))
        ));
        let data = dir.path().join("data");
        let store = KeyStore::open(&data).unwrap();
        let elsewhere = dir.path().join("keys.json");
        fs::write(&elsewhere, b"{}").unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.path()).unwrap();
        assert!(matches!(
            store.load(),
            Err(StoreError::Untrusted(TrustError::Symlink { .. }))
        ));
    }
}
