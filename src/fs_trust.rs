//! Whether a path can be trusted, in the manner of OpenSSH's StrictModes: a file is only as safe
//! as every directory above it, because whoever can write a directory can rename, replace or
//! plant entries in it.
//!
//! - Every directory from `/` down must be owned by root or by us and not writable by group or
//!   other. A world-writable directory with the sticky bit (`/tmp`) is accepted *above* ours:
//!   others cannot rename or delete our entries there. A directory on a read-only mount is
//!   accepted whatever its mode: nobody can write it.
//! - A symbolic link on the way is followed only when root or we own it (its directory has just
//!   been checked, so nobody else can swap it).
//! - The directory that holds our files is owned by us, never group/other-writable (sticky or
//!   not) and never itself a symbolic link. It is created with `mkdir` when missing.
//! - A private key is a regular file (opened with `O_NOFOLLOW`) owned by us with no group or
//!   other bits; an input such as a policy file is a regular file owned by root or us and not
//!   group/other-writable.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

mod error;

use error::{io, not_owned, symlink, writable, wrong_type};
pub use error::{Owners, TrustError};

/// Most symbolic links followed while walking one path (Linux's own limit).
pub const MAX_LINKS: usize = 40;

/// The checks, for one effective uid (ours, in the daemon; any in tests).
#[derive(Debug, Clone, Copy)]
pub struct FsTrust {
    euid: u32,
}

/// Where a walk ended: the last component, not followed if it is a symbolic link.
struct Walked {
    /// The path of the last component, through real directories only.
    path: PathBuf,
    /// `lstat` of it.
    meta: Metadata,
    /// The directory holding it, and its metadata.
    parent: (PathBuf, Metadata),
}

impl FsTrust {
    /// For this process's effective uid.
    pub fn current() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Self::new(unsafe { libc::geteuid() })
    }

    pub fn new(euid: u32) -> Self {
        Self { euid }
    }

    /// The uid everything must belong to.
    pub fn euid(&self) -> u32 {
        self.euid
    }

    fn us(&self) -> Owners {
        Owners {
            euid: self.euid,
            root: false,
        }
    }

    fn root_or_us(&self) -> Owners {
        Owners {
            euid: self.euid,
            root: true,
        }
    }

    /// A directory the daemon keeps files in (socket directory, `data_dir`, audit directory).
    /// Missing directories on the way are created with `mkdir` and `mode` (exactly: the umask
    /// does not apply); an existing one is checked, never followed if it is a symbolic link.
    /// Returns the directory's real path.
    ///
    /// # Errors
    /// A directory on the way or the directory itself is not trusted, or cannot be created.
    pub fn ensure_dir(
        &self,
        what: &'static str,
        path: &Path,
        mode: u32,
    ) -> Result<PathBuf, TrustError> {
        let walked = self.walk(what, path, false, Some(mode))?;
        self.check_own_dir(what, &walked.path, &walked.meta)?;
        Ok(walked.path)
    }

    /// Like [`ensure_dir`](Self::ensure_dir) for a directory that must already exist.
    ///
    /// # Errors
    /// As [`ensure_dir`](Self::ensure_dir); a missing directory is [`TrustError::Io`].
    pub fn check_dir(&self, what: &'static str, path: &Path) -> Result<PathBuf, TrustError> {
        let walked = self.walk(what, path, false, None)?;
        self.check_own_dir(what, &walked.path, &walked.meta)?;
        Ok(walked.path)
    }

    /// Opens a private key for reading: a regular file, not a symbolic link (`O_NOFOLLOW`),
    /// owned by us, with no group or other permission bits, in a trusted directory.
    ///
    /// # Errors
    /// Any of those fails; a missing file is [`TrustError::Io`] (see
    /// [`TrustError::is_not_found`]).
    pub fn open_private(&self, what: &'static str, path: &Path) -> Result<File, TrustError> {
        let walked = self.walk(what, path, false, None)?;
        self.check_holder(what, &walked.parent.0, &walked.parent.1)?;
        if walked.meta.file_type().is_symlink() {
            return Err(symlink(what, &walked.path, &walked.meta, None));
        }
        let file = open_nofollow(what, &walked.path)?;
        let meta = file.metadata().map_err(io(what, &walked.path))?;
        expect_regular(what, &walked.path, &meta)?;
        if meta.uid() != self.euid {
            return Err(not_owned(what, &walked.path, &meta, self.us()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(TrustError::Exposed {
                what,
                path: walked.path,
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
        Ok(file)
    }

    /// Opens an input the daemon trusts (policy, CA certificates): a regular file owned by
    /// root or us, not writable by group or other, in a trusted directory. A final symbolic
    /// link is followed only if root or we own it (configuration managers and Kubernetes
    /// ConfigMaps publish files that way).
    ///
    /// # Errors
    /// Any of those fails; a missing file is [`TrustError::Io`].
    pub fn open_input(&self, what: &'static str, path: &Path) -> Result<File, TrustError> {
        let walked = self.walk(what, path, true, None)?;
        self.check_holder(what, &walked.parent.0, &walked.parent.1)?;
        let file = open_nofollow(what, &walked.path)?;
        let meta = file.metadata().map_err(io(what, &walked.path))?;
        expect_regular(what, &walked.path, &meta)?;
        if !self.root_or_us().allows(meta.uid()) {
            return Err(not_owned(what, &walked.path, &meta, self.root_or_us()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(writable(what, &walked.path, &meta));
        }
        Ok(file)
    }

    /// Walks `path` from `/`, checking each directory on the way and following symbolic links
    /// only where [`check_link`](Self::check_link) allows. The last component is returned
    /// unchecked (and unfollowed unless `follow_last`). With `create`, missing directories
    /// (the last included) are made with that mode.
    fn walk(
        &self,
        what: &'static str,
        path: &Path,
        follow_last: bool,
        create: Option<u32>,
    ) -> Result<Walked, TrustError> {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(io(what, path))?.join(path)
        };
        let mut pending: VecDeque<OsString> = components(&absolute);
        let mut current = PathBuf::from("/");
        let mut current_meta = lstat(what, &current)?;
        self.check_ancestor(what, &current, &current_meta)?;
        let mut links = 0;
        loop {
            let Some(name) = pending.pop_front() else {
                // `path` was `/` (or resolved to it).
                let parent = (current.clone(), current_meta.clone());
                return Ok(Walked {
                    path: current,
                    meta: current_meta,
                    parent,
                });
            };
            if name == ".." {
                if current.pop() {
                    current_meta = lstat(what, &current)?;
                }
                continue;
            }
            let next = current.join(&name);
            let last = pending.is_empty();
            let meta = match std::fs::symlink_metadata(&next) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create {
                    Some(mode) => make_dir(what, &next, mode)?,
                    None => return Err(io(what, &next)(e)),
                },
                Err(e) => return Err(io(what, &next)(e)),
            };
            if meta.file_type().is_symlink() && (!last || follow_last) {
                self.check_link(what, &next, &meta)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(TrustError::TooManyLinks {
                        what,
                        path: path.to_path_buf(),
                    });
                }
                let target = std::fs::read_link(&next).map_err(io(what, &next))?;
                if target.is_absolute() {
                    current = PathBuf::from("/");
                    current_meta = lstat(what, &current)?;
                }
                for c in components(&target).into_iter().rev() {
                    pending.push_front(c);
                }
                continue;
            }
            if last {
                return Ok(Walked {
                    path: next,
                    meta,
                    parent: (current, current_meta),
                });
            }
            expect_dir(what, &next, &meta)?;
            self.check_ancestor(what, &next, &meta)?;
            current = next;
            current_meta = meta;
        }
    }

    /// A directory above ours: root's or ours, and nobody else may write it, unless it is
    /// sticky world-writable like `/tmp` or on a read-only mount.
    fn check_ancestor(
        &self,
        what: &'static str,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), TrustError> {
        if !self.root_or_us().allows(meta.uid()) {
            return Err(not_owned(what, path, meta, self.root_or_us()));
        }
        let mode = meta.mode();
        let sticky_public = mode & 0o1000 != 0 && mode & 0o002 != 0;
        if mode & 0o022 != 0 && !sticky_public && !read_only_mount(path) {
            return Err(writable(what, path, meta));
        }
        Ok(())
    }

    /// The directory directly holding a file we read: root's or ours, and nobody else may
    /// write it (a sticky bit is no excuse), unless it is on a read-only mount.
    fn check_holder(
        &self,
        what: &'static str,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), TrustError> {
        if !self.root_or_us().allows(meta.uid()) {
            return Err(not_owned(what, path, meta, self.root_or_us()));
        }
        if meta.mode() & 0o022 != 0 && !read_only_mount(path) {
            return Err(writable(what, path, meta));
        }
        Ok(())
    }

    /// The directory we keep files in: a real directory, ours, nobody else may write it.
    fn check_own_dir(
        &self,
        what: &'static str,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), TrustError> {
        if meta.file_type().is_symlink() {
            return Err(symlink(what, path, meta, None));
        }
        expect_dir(what, path, meta)?;
        if meta.uid() != self.euid {
            return Err(not_owned(what, path, meta, self.us()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(writable(what, path, meta));
        }
        Ok(())
    }

    /// A symbolic link on the way: followed only if root or we own it. Its directory was
    /// checked before, so nobody else can replace it.
    fn check_link(
        &self,
        what: &'static str,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), TrustError> {
        if self.root_or_us().allows(meta.uid()) {
            Ok(())
        } else {
            Err(symlink(what, path, meta, Some(self.root_or_us())))
        }
    }
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `mkdir` (which never follows a symbolic link at `path`), then the exact mode through the
/// descriptor. Losing a race to another `mkdir` is fine: the caller checks what is there.
fn make_dir(what: &'static str, path: &Path, mode: u32) -> Result<Metadata, TrustError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(path)
                .map_err(io(what, path))?;
            dir.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(what, path))?;
            tracing::info!(path = %path.display(), mode = format!("{mode:04o}"), "created {what}");
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(what, path)(e)),
    }
    lstat(what, path)
}

fn open_nofollow(what: &'static str, path: &Path) -> Result<File, TrustError> {
    OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted in place of the file must not hang the start.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                match std::fs::symlink_metadata(path) {
                    Ok(meta) => return symlink(what, path, &meta, None),
                    Err(e) => return io(what, path)(e),
                }
            }
            io(what, path)(e)
        })
}

fn lstat(what: &'static str, path: &Path) -> Result<Metadata, TrustError> {
    std::fs::symlink_metadata(path).map_err(io(what, path))
}

/// True when `path` is on a read-only mount: nobody can write it, whatever its mode.
fn read_only_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs reads the NUL-terminated path and writes only into `buf`, which is a
    // properly sized, zero-initialised statvfs that outlives the call.
    let mut buf: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut buf) };
    rc == 0 && buf.f_flag & libc::ST_RDONLY != 0
}

fn expect_dir(what: &'static str, path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    if meta.is_dir() {
        Ok(())
    } else {
        Err(wrong_type(what, path, meta, "a directory"))
    }
}

fn expect_regular(what: &'static str, path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(wrong_type(what, path, meta, "a regular file"))
    }
}

/// `lstat` of `path` shows a socket owned by us: the check after binding and renaming one.
///
/// # Errors
/// Anything else is at `path`.
pub fn expect_own_socket(euid: u32, what: &'static str, path: &Path) -> Result<(), TrustError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = lstat(what, path)?;
    if !meta.file_type().is_socket() {
        return Err(wrong_type(what, path, &meta, "a socket"));
    }
    if meta.uid() != euid {
        return Err(not_owned(what, path, &meta, Owners { euid, root: false }));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
