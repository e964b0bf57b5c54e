//! Binding the Unix sockets: only in a directory nobody else can write (checked, or created,
//! by [`crate::fs_trust`]); a stale socket file is replaced, a live one is never stolen.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::fs_trust::{FsTrust, TrustError};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another server is already listening on {0}; stop it or choose another socket_path")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{0} names no socket file")]
    NoFileName(PathBuf),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
}

/// How one socket is published.
#[derive(Debug, Clone, Copy)]
pub struct SocketKind {
    /// What the socket's directory is called in errors.
    pub what: &'static str,
    /// The socket file's mode.
    pub mode: u32,
    /// The directory's mode when the daemon creates it.
    pub dir_mode: u32,
}

/// The Workload API socket: mode 0777 (attestation, not file permissions, decides), in a
/// 0755 directory.
pub const PUBLIC: SocketKind = SocketKind {
    what: "socket directory (socket_path)",
    mode: 0o777,
    dir_mode: 0o755,
};

/// The admin socket: mode 0600, in a 0700 directory when the daemon creates it.
pub const ADMIN: SocketKind = SocketKind {
    what: "admin socket directory (admin_socket_path)",
    mode: 0o600,
    dir_mode: 0o700,
};

/// Binds `path`. Its directory must be trusted (or is created); the socket is bound under a
/// temporary name, given its mode, and renamed into place, so the final path never holds a
/// socket with the wrong mode and no path is ever followed through a symbolic link.
///
/// # Errors
/// The directory is not trusted, the path is held by a live server, is not a socket, or
/// cannot be bound.
pub fn bind(path: &Path, kind: &SocketKind) -> Result<UnixListener, SocketError> {
    let trust = FsTrust::current();
    let name = path
        .file_name()
        .ok_or_else(|| SocketError::NoFileName(path.to_path_buf()))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = trust.ensure_dir(kind.what, parent, kind.dir_mode)?;
    // From here on every name is inside `dir`, which only we (or root) can write.
    let target = dir.join(name);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            if std::os::unix::net::UnixStream::connect(&target).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            tracing::info!(path = %path.display(), "replacing stale socket");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let tmp = dir.join(format!(".{}.sock-tmp", std::process::id()));
    let listener = bind_then_rename(&tmp, &target, kind.mode).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    crate::fs_trust::expect_own_socket(trust.euid(), "socket", &target)?;
    Ok(listener)
}

fn bind_then_rename(tmp: &Path, target: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SocketError::Io { path, source }
    };
    // A leftover from a crashed start of ours: nobody else can write this directory.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(tmp)(e)),
        _ => {}
    }
    let listener = UnixListener::bind(tmp).map_err(io(tmp))?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode)).map_err(io(tmp))?;
    std::fs::rename(tmp, target).map_err(io(target))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_is_replaced_live_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let live = bind(&path, &PUBLIC).unwrap();
        assert!(matches!(bind(&path, &PUBLIC), Err(SocketError::InUse(_))));
        drop(live);
        // The file stays behind with nobody listening: stale.
        assert!(path.exists());
        let again = bind(&path, &ADMIN).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(again);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind(&file, &PUBLIC),
            Err(SocketError::NotASocket(_))
        ));
    }
}
