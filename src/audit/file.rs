//! The log's files on disk. The active file is opened without following a symlink and only
//! if it is a regular file that this process owns and nobody else can write: a log someone
//! else can rewrite, or that points somewhere we did not choose, proves nothing. Trust in the
//! directory is checked elsewhere.
//!
//! Rotation renames the active file to its rotated name (never replacing a file), syncs the
//! directory, and creates the next active file exclusively.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::set::rotated_name;
use super::writer::Sink;
use super::AuditError;

/// Mode of every file the log creates.
pub const FILE_MODE: u32 = 0o600;

/// Permission bits that let someone other than the owner change the file.
const FOREIGN_WRITE_BITS: u32 = 0o022;

/// Bits beyond owner read/write: warned about, not refused (a reader cannot forge records).
const FOREIGN_BITS: u32 = 0o077;

/// Flags on every open: no symlink at the last component, not inherited by children, and
/// never blocking on a FIFO someone put there (refused right after by the type check).
const OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

/// Opens (creating if missing) the active log for reading and appending, and checks it.
///
/// # Errors
/// [`AuditError::Symlink`], [`AuditError::NotRegular`], [`AuditError::WrongOwner`],
/// [`AuditError::Writable`], or [`AuditError::Io`].
pub(super) fn open_active(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(OPEN_FLAGS)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    check_trusted(&file, path)?;
    Ok(file)
}

/// Opens a rotated file of the set for reading, with the same checks as the active one.
///
/// # Errors
/// As [`open_active`].
pub(super) fn open_rotated(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    check_trusted(&file, path)?;
    Ok(file)
}

fn open_error(path: &Path, e: io::Error) -> AuditError {
    let path = path.to_path_buf();
    match e.raw_os_error() {
        Some(libc::ELOOP) => AuditError::Symlink { path },
        Some(libc::EISDIR) => AuditError::NotRegular {
            path,
            kind: "a directory",
        },
        _ => AuditError::Io { path, source: e },
    }
}

fn check_trusted(file: &File, path: &Path) -> Result<(), AuditError> {
    let meta = file.metadata().map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(AuditError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mode = meta.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(AuditError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode,
            euid,
        });
    }
    if mode & FOREIGN_WRITE_BITS != 0 {
        return Err(AuditError::Writable {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode,
        });
    }
    if mode & FOREIGN_BITS != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "audit log is readable by others; expected 0600 (chmod 600)");
    }
    Ok(())
}

/// Takes an exclusive advisory lock for the life of the file handle (released on close, and by
/// the kernel if the process dies), so a second daemon on the same data_dir fails at start.
pub(super) fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    // SAFETY: flock on a descriptor we own for the duration of the call; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(AuditError::Locked {
            path: path.to_path_buf(),
        })
    } else {
        Err(AuditError::Io {
            path: path.to_path_buf(),
            source: err,
        })
    }
}

/// Makes the directory entries of `path`'s directory durable (a new or renamed file).
pub(super) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// The active file as the writer's sink.
pub(super) struct FileSink {
    file: File,
    path: PathBuf,
    /// A rotation renamed the active file but did not finish: the retry must not rename
    /// again (the path is gone or is the new file).
    renamed: bool,
}

impl FileSink {
    pub fn new(file: File, path: PathBuf) -> Self {
        Self {
            file,
            path,
            renamed: false,
        }
    }
}

impl Sink for FileSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        // Data plus the size change that makes it readable; other metadata is not needed.
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        // Opened with O_APPEND, so the next write lands at the new end.
        self.file.set_len(len)
    }

    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if !self.renamed {
            rename_noreplace(&self.path, &rotated_name(&self.path, first_seq))?;
            self.renamed = true;
        }
        sync_parent(&self.path)?;
        let next = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)?;
        lock(&next, &self.path).map_err(|e| io::Error::other(e.to_string()))?;
        sync_parent(&self.path)?;
        // The old descriptor (and its lock) closes here; the new file is already locked.
        self.file = next;
        self.renamed = false;
        Ok(())
    }
}

/// Renames `from` to `to`, failing if `to` exists: a rotated file is never replaced.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // A filesystem without RENAME_NOREPLACE: check, then rename. The window is ours
        // alone unless someone else writes into the log's directory.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            std::fs::rename(from, to)
        }
        _ => Err(err),
    }
}
