//! The daemon only writes a log file it can trust: no symlink, a regular file, its own, and
//! not writable by anyone else. Errors name the path, owner, mode and the fix.

use std::os::unix::fs::PermissionsExt;

use super::*;

async fn open_err(path: &Path) -> AuditError {
    AuditLog::open(path, AuditOptions::default())
        .await
        .map(|_| ())
        .unwrap_err()
}

#[tokio::test]
async fn a_symlink_at_the_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.log");
    std::fs::write(&real, "").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("audit.log");
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let err = open_err(&path).await;
    assert!(matches!(err, AuditError::Symlink { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("symbolic link"),
        "{msg}"
    );

    // Dangling: not created through the link either.
    let dangling = dir.path().join("dangling.log");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        open_err(&dangling).await,
        AuditError::Symlink { .. }
    ));
    assert!(!dir.path().join("nowhere").exists());
}

#[tokio::test]
async fn a_fifo_or_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = open_err(&fifo).await;
    assert!(
        matches!(err, AuditError::NotRegular { kind: "a FIFO", .. }),
        "{err}"
    );

    let sub = dir.path().join("sub.log");
    std::fs::create_dir(&sub).unwrap();
    let err = open_err(&sub).await;
    assert!(matches!(err, AuditError::NotRegular { .. }), "{err}");
}

#[tokio::test]
async fn a_file_others_can_write_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
    let msg = open_err(&path).await.to_string();
    let p = path.display();
    assert!(
        msg.contains("mode 0620") && msg.contains(&format!("chmod 600 {p}")),
        "{msg}"
    );
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(msg.contains(&format!("owner uid {euid}")), "{msg}");

    // Readable by others is only warned about.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_file_owned_by_another_uid_is_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("NOT RUN: giving a file to another uid needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let err = open_err(&path).await;
    assert!(
        matches!(err, AuditError::WrongOwner { owner: 65534, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("uid 65534") && msg.contains("mode 0600") && msg.contains("fix: chown 0 "),
        "{msg}"
    );
}

#[tokio::test]
async fn a_rotated_file_someone_replaced_with_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, _) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    log.append(token_issued(1)).await.unwrap();
    drop(log);
    let target = dir.path().join("elsewhere");
    std::fs::rename(&path, &target).unwrap();
    std::os::unix::fs::symlink(&target, rotated_name(&path, 1)).unwrap();
    let err = open_err(&path).await;
    assert!(matches!(err, AuditError::Symlink { .. }), "{err}");
}
