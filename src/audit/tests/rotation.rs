//! Size-based rotation: the chain continues across files, open reads the whole set, and a
//! crash in the middle of a rotation loses nothing.

use super::*;

fn rotating() -> AuditOptions {
    AuditOptions {
        max_file_bytes: Some(MIN_MAX_FILE_BYTES),
        ..AuditOptions::default()
    }
}

/// An event of about `MAX_FIELD_BYTES`, so a file holds about 250 of them.
fn big(n: u64) -> AuditEvent {
    AuditEvent::TaskClose {
        task_id: format!("t{n}"),
        by: "admin".into(),
        reason: "r".repeat(MAX_FIELD_BYTES),
    }
}

async fn fill(path: &Path, from: u64, to: u64) {
    let (log, _) = AuditLog::open(path, rotating()).await.unwrap();
    log.append_all((from..to).map(big).collect()).await.unwrap();
}

#[tokio::test]
async fn the_chain_continues_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fill(&path, 0, 700).await;

    let rotated = rotated_files(&path).unwrap();
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    assert_eq!(rotated[0].0, 1);
    assert_eq!(
        rotated[0].1,
        dir.path().join("audit.log.00000000000000000001")
    );
    for (seq, file) in &rotated {
        let meta = std::fs::metadata(file).unwrap();
        assert!(
            meta.len() <= MIN_MAX_FILE_BYTES,
            "{} is {}",
            file.display(),
            meta.len()
        );
        assert!(meta.len() > MIN_MAX_FILE_BYTES - 2 * MAX_FIELD_BYTES as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(rotated_name(&path, *seq), *file);
        // Each file's first record links to the previous file's last line.
        let first: serde_json::Value = serde_json::from_str(lines(file).first().unwrap()).unwrap();
        assert_eq!(first["seq"], *seq);
    }
    let second_first: serde_json::Value = serde_json::from_str(&lines(&rotated[1].1)[0]).unwrap();
    let first_last = lines(&rotated[0].1).pop().unwrap();
    assert_eq!(
        second_first["prev"],
        chain::hash_line(first_last.as_bytes())
    );

    let report = verify_set(&path).unwrap();
    assert_eq!(
        (report.records, report.files, report.first_seq),
        (700, 3, 1)
    );

    // Reopening reads every file, in chain order, and continues the chain.
    let (log, records) = AuditLog::open(&path, rotating()).await.unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=700).collect::<Vec<_>>());
    assert_eq!(log.append(big(700)).await.unwrap(), 701);
    drop(log);
    assert_eq!(verify_set(&path).unwrap().records, 701);
}

#[tokio::test]
async fn a_crash_between_rename_and_create_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fill(&path, 0, 300).await;
    let rotated = rotated_files(&path).unwrap();
    assert_eq!(rotated.len(), 1);
    // The active file renamed away, no new active file yet.
    let active_first = rotated_files(&path).unwrap()[0].0 + lines(&rotated[0].1).len() as u64;
    std::fs::rename(&path, rotated_name(&path, active_first)).unwrap();

    let (log, records) = AuditLog::open(&path, rotating()).await.unwrap();
    assert_eq!(records.len(), 300);
    assert_eq!(log.append(big(300)).await.unwrap(), 301);
    drop(log);
    let report = verify_set(&path).unwrap();
    assert_eq!((report.records, report.files), (301, 3));
}

#[tokio::test]
async fn archived_rotated_files_leave_a_set_that_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fill(&path, 0, 700).await;
    let rotated = rotated_files(&path).unwrap();
    // The operator archives the oldest file.
    std::fs::remove_file(&rotated[0].1).unwrap();
    let report = verify_set(&path).unwrap();
    assert_eq!(report.first_seq, rotated[1].0);
    let (log, records) = AuditLog::open(&path, rotating()).await.unwrap();
    assert_eq!(records.first().unwrap().seq, rotated[1].0);
    assert_eq!(log.append(big(700)).await.unwrap(), 701);
}

#[tokio::test]
async fn a_renamed_rotated_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    fill(&path, 0, 700).await;
    let rotated = rotated_files(&path).unwrap();
    std::fs::rename(&rotated[1].1, rotated_name(&path, rotated[1].0 + 1)).unwrap();
    match verify_set(&path) {
        Err(VerifyError::Broken {
            file: Some(file),
            line: 1,
            reason: BreakReason::MisnamedFile { .. },
            ..
        }) => assert!(
            file.ends_with(&format!(".{:020}", rotated[1].0 + 1)),
            "{file}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn zero_means_never_rotate_and_small_sizes_are_raised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let never = AuditOptions {
        max_file_bytes: None,
        ..AuditOptions::default()
    };
    let (log, _) = AuditLog::open(&path, never).await.unwrap();
    log.append_all((0..300).map(big).collect()).await.unwrap();
    drop(log);
    assert!(rotated_files(&path).unwrap().is_empty());

    let path = dir.path().join("small.log");
    let tiny = AuditOptions {
        max_file_bytes: Some(10),
        ..AuditOptions::default()
    };
    let (log, _) = AuditLog::open(&path, tiny).await.unwrap();
    log.append_all((0..100).map(big).collect()).await.unwrap();
    drop(log);
    assert!(
        rotated_files(&path).unwrap().is_empty(),
        "raised to the minimum"
    );
}
