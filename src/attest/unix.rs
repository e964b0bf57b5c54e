//! The unix attestor: uid, gid, user, group, supplementary groups, executable path and
//! (only when some entry needs it) the executable's SHA-256.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{AttestError, BoxFuture, Selector, WorkloadAttestor};

/// Executables larger than this are not hashed (`unix:sha256` is then absent, and an entry
/// that needs it does not match).
pub const DEFAULT_SHA256_SIZE_LIMIT: u64 = 128 * 1024 * 1024;
/// Distinct executables whose hash is remembered.
pub const SHA256_CACHE_ENTRIES: usize = 1024;

const NAME: &str = "unix";

/// The selector types that name a supplementary group. `setgroups` changes them and no part
/// of the caller's fingerprint, so the connection layer reads a caller's groups again on each
/// call while a registry entry or the policy could read these.
pub const GROUP_SELECTOR_TYPES: [&str; 2] = ["supplementary_gid", "supplementary_group"];

/// Whether `kind:type` names a supplementary group ([`GROUP_SELECTOR_TYPES`]).
pub fn names_a_group(kind: &str, ty: &str) -> bool {
    kind == NAME && GROUP_SELECTOR_TYPES.contains(&ty)
}

/// Settings from `[attestor.unix]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixAttestorConfig {
    /// Largest executable hashed for `unix:sha256`, in bytes.
    #[serde(default = "default_size_limit")]
    pub sha256_size_limit: u64,
    /// Where `/proc` is (tests point this at a fake tree).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
}

fn default_size_limit() -> u64 {
    DEFAULT_SHA256_SIZE_LIMIT
}

fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

impl Default for UnixAttestorConfig {
    fn default() -> Self {
        Self {
            sha256_size_limit: DEFAULT_SHA256_SIZE_LIMIT,
            proc_root: default_proc_root(),
        }
    }
}

/// Identifies one version of one file: a rebuilt binary gets a new key. The change time is
/// part of it because the owner of a file can set its mtime back after rewriting it in place
/// (same inode, same size), but not its ctime: any write, and setting the times, moves the
/// ctime to now.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

pub struct UnixAttestor {
    config: UnixAttestorConfig,
    want_sha256: bool,
    sha256_cache: Mutex<HashMap<FileKey, String>>,
}

impl UnixAttestor {
    /// `want_sha256`: some registration entry uses `unix:sha256`; otherwise nothing is hashed.
    pub fn new(config: UnixAttestorConfig, want_sha256: bool) -> Self {
        Self {
            config,
            want_sha256,
            sha256_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the selectors synchronously (it is all `/proc` and file reads).
    ///
    /// # Errors
    /// `/proc/<pid>` cannot be read: the process is gone or hidden from us.
    pub fn selectors_blocking(&self, pid: i32) -> Result<Vec<Selector>, AttestError> {
        let dir = self.config.proc_root.join(pid.to_string());
        let status = fs::read_to_string(dir.join("status")).map_err(|e| gone_or_failed(pid, e))?;
        let ids = parse_status(&status).ok_or_else(|| AttestError::Failed {
            attestor: NAME,
            reason: format!("cannot parse /proc/{pid}/status"),
        })?;
        let mut out = vec![
            sel(format!("uid:{}", ids.uid)),
            sel(format!("gid:{}", ids.gid)),
        ];
        if let Some(user) = user_name(ids.uid) {
            out.push(sel(format!("user:{user}")));
        }
        let primary_group = group_name(ids.gid);
        if let Some(group) = &primary_group {
            out.push(sel(format!("group:{group}")));
        }
        for &gid in &ids.groups {
            out.push(sel(format!("{}:{gid}", GROUP_SELECTOR_TYPES[0])));
            // The primary group is usually among the supplementary ones: one lookup will do.
            let group = if gid == ids.gid {
                primary_group.clone()
            } else {
                group_name(gid)
            };
            if let Some(group) = group {
                out.push(sel(format!("{}:{group}", GROUP_SELECTOR_TYPES[1])));
            }
        }
        // A kernel thread or a process we may not inspect has no readable exe: path and
        // sha256 are then simply absent.
        if let Ok(path) = fs::read_link(dir.join("exe")) {
            out.push(sel(format!("path:{}", path.display())));
        }
        if self.want_sha256 {
            if let Some(hash) = self.sha256(&dir.join("exe"))? {
                out.push(sel(format!("sha256:{hash}")));
            }
        }
        Ok(out)
    }

    /// Hashes through `/proc/<pid>/exe`, which opens the file the process is running even if
    /// its path was replaced since.
    fn sha256(&self, exe: &Path) -> Result<Option<String>, AttestError> {
        let Ok(mut file) = File::open(exe) else {
            return Ok(None);
        };
        let meta = file
            .metadata()
            .map_err(|e| failed(format!("stat exe: {e}")))?;
        if meta.len() > self.config.sha256_size_limit {
            tracing::warn!(
                size = meta.len(),
                limit = self.config.sha256_size_limit,
                "executable too large to hash; unix:sha256 omitted"
            );
            return Ok(None);
        }
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        };
        if let Some(hit) = self.cache().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        // Bounded by the size checked above plus one buffer, even if the file grows meanwhile.
        let mut remaining = self.config.sha256_size_limit.saturating_add(1);
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| failed(format!("read exe: {e}")))?;
            if n == 0 {
                break;
            }
            if n as u64 > remaining {
                return Ok(None);
            }
            remaining -= n as u64;
            hasher.update(&buf[..n]);
        }
        let hash = hex::encode(hasher.finalize());
        let mut cache = self.cache();
        if cache.len() >= SHA256_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, hash.clone());
        Ok(Some(hash))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, String>> {
        self.sha256_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestError>> {
        // Reading /proc never blocks for long; it is cheaper inline than a thread hop.
        Box::pin(async move { self.selectors_blocking(pid) })
    }
}

fn sel(value: String) -> Selector {
    Selector::new(NAME, value)
}

fn failed(reason: String) -> AttestError {
    AttestError::Failed {
        attestor: NAME,
        reason,
    }
}

fn gone_or_failed(pid: i32, e: io::Error) -> AttestError {
    if e.kind() == io::ErrorKind::NotFound {
        AttestError::ProcessGone { pid }
    } else {
        failed(format!("read /proc/{pid}: {e}"))
    }
}

pub(crate) struct StatusIds {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

/// Effective uid and gid (second column, as SPIRE uses) and supplementary groups.
pub(crate) fn parse_status(status: &str) -> Option<StatusIds> {
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            uid = rest.split_whitespace().nth(1)?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            gid = rest.split_whitespace().nth(1)?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    Some(StatusIds {
        uid: uid?,
        gid: gid?,
        groups,
    })
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd filled in by getpwuid_r with strings pointing into `buf`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned())
    }
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `user_name`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || grp.gr_name.is_null() {
            return None;
        }
        Some(CStr::from_ptr(grp.gr_name).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_uses_effective_ids() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\nGroups:\t4 24 27\n";
        let ids = parse_status(status).unwrap();
        assert_eq!((ids.uid, ids.gid), (1001, 2001));
        assert_eq!(ids.groups, vec![4, 24, 27]);
        assert!(parse_status("Name: x\n").is_none());
    }

    #[test]
    fn attests_this_process() {
        // Debug test binaries can exceed the default hashing limit.
        let cfg = UnixAttestorConfig {
            sha256_size_limit: u64::MAX,
            ..Default::default()
        };
        let a = UnixAttestor::new(cfg, true);
        let sels = a.selectors_blocking(std::process::id() as i32).unwrap();
        let text: Vec<String> = sels.iter().map(ToString::to_string).collect();
        let uid = unsafe { libc::geteuid() };
        assert!(text.contains(&format!("unix:uid:{uid}")), "{text:?}");
        let exe = std::env::current_exe().unwrap();
        assert!(text.contains(&format!("unix:path:{}", exe.display())));
        let bytes = std::fs::read(&exe).unwrap();
        let hash = hex::encode(Sha256::digest(&bytes));
        assert!(text.contains(&format!("unix:sha256:{hash}")));
    }

    #[test]
    fn size_limit_omits_sha256_at_the_edge() {
        let exe = std::env::current_exe().unwrap();
        let size = std::fs::metadata(&exe).unwrap().len();
        let pid = std::process::id() as i32;
        let has_hash = |limit| {
            let cfg = UnixAttestorConfig {
                sha256_size_limit: limit,
                ..Default::default()
            };
            UnixAttestor::new(cfg, true)
                .selectors_blocking(pid)
                .unwrap()
                .iter()
                .any(|s| s.type_name() == "sha256")
        };
        assert!(has_hash(size));
        assert!(!has_hash(size - 1));
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_mtime_set_back_is_hashed_again() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, b"first version").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let a = UnixAttestor::new(UnixAttestorConfig::default(), true);
        let first = a.sha256(&path).unwrap().unwrap();
        assert_eq!(first, hex::encode(Sha256::digest(b"first version")));

        // Same inode, same size, same mtime: only the ctime tells the versions apart. (Past
        // one clock tick: file times on kernels without fine-grained ones move in ticks.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all(b"other version").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.modified().unwrap()), (13, mtime));
        let second = a.sha256(&path).unwrap().unwrap();
        assert_eq!(second, hex::encode(Sha256::digest(b"other version")));
    }

    #[test]
    fn no_hash_unless_wanted() {
        let a = UnixAttestor::new(UnixAttestorConfig::default(), false);
        let sels = a.selectors_blocking(std::process::id() as i32).unwrap();
        assert!(!sels.iter().any(|s| s.type_name() == "sha256"));
    }

    #[test]
    fn missing_process_is_gone() {
        let cfg = UnixAttestorConfig {
            proc_root: PathBuf::from("/nonexistent-proc"),
            ..Default::default()
        };
        let err = UnixAttestor::new(cfg, false)
            .selectors_blocking(1)
            .unwrap_err();
        assert!(matches!(err, AttestError::ProcessGone { pid: 1 }));
    }
}
