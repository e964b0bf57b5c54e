//! What [`FsTrust`](super::FsTrust) refuses, and how each refusal reads: the path, its owner
//! and mode, and the fix.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::MAX_LINKS;

/// Why a path was refused. Each variant carries what the operator needs: which path, its
/// owner and mode, and (through [`fmt::Display`]) the fix.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Owned by a uid that is neither root nor us (or, for our own directory or key, not us).
    NotOwned {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        mode: u32,
        allowed: Owners,
    },
    /// Group or other may write it (or, for our own directory, it is sticky world-writable).
    Writable {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A private key with group or other permission bits.
    Exposed {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A symbolic link where none is allowed, or one owned by another user.
    Symlink {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        mode: u32,
        allowed: Option<Owners>,
    },
    /// Not the kind of file expected (a directory, a regular file, a socket).
    WrongType {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        mode: u32,
        expected: &'static str,
    },
    TooManyLinks {
        what: &'static str,
        path: PathBuf,
    },
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who may own a path: always us, and root too where root's files are fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    pub euid: u32,
    pub root: bool,
}

impl fmt::Display for Owners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.euid, self.root) {
            (0, _) => write!(f, "root (uid 0, the daemon's user)"),
            (uid, true) => write!(f, "root or uid {uid} (the daemon's user)"),
            (uid, false) => write!(f, "uid {uid} (the daemon's user)"),
        }
    }
}

impl TrustError {
    /// The refused path.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotOwned { path, .. }
            | Self::Writable { path, .. }
            | Self::Exposed { path, .. }
            | Self::Symlink { path, .. }
            | Self::WrongType { path, .. }
            | Self::TooManyLinks { path, .. }
            | Self::Io { path, .. } => path,
        }
    }

    /// True when the path (or a directory on it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOwned {
                what,
                path,
                owner,
                mode,
                allowed,
            } => {
                let p = path.display();
                write!(
                    f,
                    "{what}: {p} is owned by uid {owner} (mode {mode:04o}), not by {allowed}; \
                     another user could replace what the daemon reads or keeps there. Fix: \
                     find out who created it, then remove it (the daemon creates what it \
                     needs) or chown {} {p}",
                    allowed.euid
                )
            }
            Self::Writable {
                what,
                path,
                owner,
                mode,
            } => {
                let p = path.display();
                let sticky = if mode & 0o1000 != 0 {
                    " (the sticky bit protects entries in a directory above ours, never in ours)"
                } else {
                    ""
                };
                write!(
                    f,
                    "{what}: {p} (owner uid {owner}) has mode {mode:04o}: writable by other \
                     users{sticky}. Fix: chmod go-w {p}"
                )
            }
            Self::Exposed {
                what,
                path,
                owner,
                mode,
            } => {
                let p = path.display();
                write!(
                    f,
                    "{what}: {p} (owner uid {owner}) has mode {mode:04o}; a private key must \
                     have no group or other permissions. Fix: chmod 600 {p}"
                )
            }
            Self::Symlink {
                what,
                path,
                owner,
                mode,
                allowed,
            } => {
                let p = path.display();
                match allowed {
                    Some(allowed) => write!(
                        f,
                        "{what}: {p} is a symbolic link owned by uid {owner} (mode {mode:04o}); \
                         only links owned by {allowed} are followed. Fix: name the real path \
                         in the config, or chown -h {} {p}",
                        allowed.euid
                    ),
                    None => write!(
                        f,
                        "{what}: {p} is a symbolic link (owner uid {owner}, mode {mode:04o}); \
                         the daemon does not follow one here. Fix: name the real path in the \
                         config, or remove the link and let the daemon create {p}"
                    ),
                }
            }
            Self::WrongType {
                what,
                path,
                owner,
                mode,
                expected,
            } => write!(
                f,
                "{what}: {} (owner uid {owner}, mode {mode:04o}) is not {expected}. Fix: \
                 remove it or choose another path",
                path.display()
            ),
            Self::TooManyLinks { what, path } => write!(
                f,
                "{what}: more than {MAX_LINKS} symbolic links on the way to {}. Fix: name \
                 the real path in the config",
                path.display()
            ),
            Self::Io { what, path, source } => {
                write!(f, "{what}: {}: {source}", path.display())
            }
        }
    }
}

impl Owners {
    pub(super) fn allows(&self, uid: u32) -> bool {
        uid == self.euid || (self.root && uid == 0)
    }
}

pub(super) fn wrong_type(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    expected: &'static str,
) -> TrustError {
    TrustError::WrongType {
        what,
        path: path.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
        expected,
    }
}

pub(super) fn not_owned(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    allowed: Owners,
) -> TrustError {
    TrustError::NotOwned {
        what,
        path: path.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
        allowed,
    }
}

pub(super) fn writable(what: &'static str, path: &Path, meta: &Metadata) -> TrustError {
    TrustError::Writable {
        what,
        path: path.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
    }
}

pub(super) fn symlink(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    allowed: Option<Owners>,
) -> TrustError {
    TrustError::Symlink {
        what,
        path: path.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
        allowed,
    }
}

pub(super) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> TrustError + 'a {
    move |source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
