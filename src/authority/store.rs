//! The embedded authority's keys on disk: one JSON file, mode 0600, in a 0700 directory,
//! replaced atomically (write to a temporary file, fsync, rename).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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
    #[error("key store {path} is readable by others (mode {mode:o}); fix with chmod 600")]
    Permissions { path: PathBuf, mode: u32 },
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
    /// Creates `dir` (0700) if needed.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
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
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Permissions { path, mode });
        }
        if meta.len() > MAX_KEYS_FILE_BYTES {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("larger than {MAX_KEYS_FILE_BYTES} bytes"),
            });
        }
        let text = Zeroizing::new(fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?);
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
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
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
        assert!(matches!(store.load(), Err(StoreError::Permissions { .. })));
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
    }
}
