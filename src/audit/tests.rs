//! Audit log tests: chain verification and tamper detection, crash repair, concurrency,
//! failure propagation, bounds. Recovery, rotation and file checks have their own files.

mod files;
mod recovery;
mod rotation;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::writer::{ChainState, Sink};
use super::*;

fn token_issued(n: u64) -> AuditEvent {
    AuditEvent::TokenIssued {
        task_id: format!("task-{n}"),
        jti: format!("jti-{n}"),
        spiffe_id: "spiffe://example.org/agent/research".into(),
        audience: "spiffe://example.org/tool/search".into(),
        scopes: vec!["search:read".into()],
        expires_at: 1_800_000_000 + n,
        max_uses: None,
    }
}

fn sample_events() -> Vec<AuditEvent> {
    vec![
        AuditEvent::Attestation {
            pid: 4242,
            selectors: vec!["unix:uid:1000".into(), "unix:gid:1000".into()],
            spiffe_ids: vec!["spiffe://example.org/agent/research".into()],
        },
        AuditEvent::Decision {
            spiffe_id: "spiffe://example.org/agent/research".into(),
            action: "OpenTask".into(),
            audience: "spiffe://example.org/tool/search".into(),
            scopes: vec!["search:read".into()],
            ttl_seconds: 300,
            delegation_depth: 0,
            allowed: true,
            policy_ids: vec!["research-search-read".into()],
            errors: vec![],
            task_id: None,
        },
        AuditEvent::TaskOpen {
            task_id: "task-1".into(),
            spiffe_id: "spiffe://example.org/agent/research".into(),
            purpose: "find flights\nwith \"quotes\"".into(),
            audiences: vec!["spiffe://example.org/tool/search".into()],
            scopes: vec!["search:read".into()],
            expires_at: 1_800_000_300,
            delegation_depth: 0,
            parent_task_id: None,
            on_behalf_of: Some("alice@example.com".into()),
            grants: Default::default(),
        },
        token_issued(1),
        AuditEvent::TokenUsed {
            task_id: "task-1".into(),
            jti: "jti-1".into(),
            by: "spiffe://example.org/tool/search".into(),
            uses: 1,
        },
        AuditEvent::Introspection {
            by: "spiffe://example.org/tool/search".into(),
            jti: Some("jti-1".into()),
            active: true,
        },
        AuditEvent::TaskClose {
            task_id: "task-1".into(),
            by: "spiffe://example.org/agent/research".into(),
            reason: "owner".into(),
        },
        AuditEvent::Revocation {
            task_id: "task-2".into(),
            reason: "parent closed".into(),
            cause_task_id: Some("task-1".into()),
        },
        AuditEvent::SvidIssued {
            spiffe_id: "spiffe://example.org/agent/research".into(),
            svid: SvidKind::X509,
            serial: Some("0a1b".into()),
            jti: None,
            audiences: vec![],
            expires_at: 1_800_003_600,
            pid: Some(4242),
        },
        AuditEvent::PolicyReload {
            ok: false,
            policy_ids: vec!["a".into()],
            error: Some("line 1, column 3: unexpected token".into()),
        },
    ]
}

async fn log_with(dir: &Path, events: &[AuditEvent]) -> (AuditLog, PathBuf) {
    let path = dir.join("audit.log");
    let (log, records) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    assert!(records.is_empty());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(log.append(e.clone()).await.unwrap(), i as u64 + 1);
    }
    (log, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn broken_at(path: &Path) -> (usize, Option<u64>, BreakReason) {
    match verify_file(path) {
        Err(VerifyError::Broken {
            line, seq, reason, ..
        }) => (line, seq, reason),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[tokio::test]
async fn chain_verifies_and_records_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let events = sample_events();
    let (log, path) = log_with(dir.path(), &events).await;
    drop(log);

    let report = verify_file(&path).unwrap();
    assert_eq!(report.records, events.len() as u64);
    assert_eq!(report.torn_tail_bytes, 0);
    let text = lines(&path);
    assert_eq!(
        report.last_hash,
        chain::hash_line(text.last().unwrap().as_bytes())
    );

    let (_log, records) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    let read: Vec<AuditEvent> = records.iter().map(|r| r.event.clone()).collect();
    assert_eq!(read, events);
    assert_eq!(records[0].prev, GENESIS_PREV);
    assert_eq!(records[1].prev, chain::hash_line(text[0].as_bytes()));
}

#[tokio::test]
async fn record_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, path) = log_with(dir.path(), &[token_issued(7)]).await;
    let line = &lines(&path)[0];
    let prefix = r#"{"seq":1,"ts":""#;
    assert!(line.starts_with(prefix), "{line}");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let ts = v["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && humantime::parse_rfc3339(ts).is_ok(),
        "{ts}"
    );
    let tail = format!(
        r#"","prev":"{GENESIS_PREV}","kind":"token_issued","task_id":"task-7","jti":"jti-7","#
    );
    assert!(line.contains(&tail), "{line}");
}

#[tokio::test]
async fn new_file_is_0600_in_a_0700_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/sub/audit.log");
    let (_log, _) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("new/sub")), 0o700);
    assert_eq!(mode(&dir.path().join("new")), 0o700);
}

#[tokio::test]
async fn editing_a_record_is_detected_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (1..=5).map(token_issued).collect();
    let (_log, path) = log_with(dir.path(), &events).await;
    let original = lines(&path);

    // (record edited, how) → (line reported, reason)
    let edit = |n: usize, from: &str, to: &str| {
        let mut l = original.clone();
        assert!(l[n - 1].contains(from));
        l[n - 1] = l[n - 1].replacen(from, to, 1);
        write_lines(&path, &l);
    };

    edit(3, "jti-3", "jti-9");
    assert_eq!(
        broken_at(&path),
        (3, Some(3), BreakReason::Altered { next_seq: 4 })
    );

    edit(1, "task-1", "task-X");
    assert_eq!(
        broken_at(&path),
        (1, Some(1), BreakReason::Altered { next_seq: 2 })
    );

    edit(3, r#""seq":3"#, r#""seq":33"#);
    assert_eq!(
        broken_at(&path),
        (
            3,
            Some(33),
            BreakReason::SeqOutOfOrder {
                expected: 3,
                found: 33
            }
        )
    );

    let prev3 = serde_json::from_str::<serde_json::Value>(&original[2]).unwrap()["prev"]
        .as_str()
        .unwrap()
        .to_string();
    edit(3, &prev3, GENESIS_PREV);
    assert_eq!(broken_at(&path), (3, Some(3), BreakReason::PrevMismatch));

    edit(2, "1800000002", "1800009999");
    assert_eq!(
        broken_at(&path),
        (2, Some(2), BreakReason::Altered { next_seq: 3 })
    );

    // The second-to-last record: only the last one vouches for it.
    edit(4, "jti-4", "jti-8");
    assert_eq!(
        broken_at(&path),
        (4, Some(4), BreakReason::Altered { next_seq: 5 })
    );

    edit(1, GENESIS_PREV, &"1".repeat(64));
    assert_eq!(broken_at(&path), (1, Some(1), BreakReason::PrevMismatch));

    edit(4, "{", "[");
    assert!(matches!(
        broken_at(&path),
        (4, None, BreakReason::Malformed(_))
    ));

    // The last record has no successor to vouch for it: the chain still verifies, and only an
    // anchored last hash shows the change. Documented in chain.rs.
    let anchored = {
        write_lines(&path, &original);
        verify_file(&path).unwrap().last_hash
    };
    edit(5, "jti-5", "jti-6");
    assert_ne!(verify_file(&path).unwrap().last_hash, anchored);
}

#[tokio::test]
async fn deleting_a_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (1..=5).map(token_issued).collect();
    let (_log, path) = log_with(dir.path(), &events).await;
    let original = lines(&path);

    for (deleted, expected) in [(3, 3), (1, 1), (4, 4)] {
        let mut l = original.clone();
        l.remove(deleted - 1);
        write_lines(&path, &l);
        assert_eq!(
            broken_at(&path),
            (
                expected,
                Some(expected as u64 + 1),
                BreakReason::SeqOutOfOrder {
                    expected: expected as u64,
                    found: expected as u64 + 1
                }
            ),
            "deleted line {deleted}"
        );
    }

    // Swapping two records is caught the same way.
    let mut l = original.clone();
    l.swap(1, 2);
    write_lines(&path, &l);
    assert_eq!(broken_at(&path).0, 2);
}

#[tokio::test]
async fn broken_chain_refuses_open() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (1..=3).map(token_issued).collect();
    let (log, path) = log_with(dir.path(), &events).await;
    drop(log);
    let mut l = lines(&path);
    l[1] = l[1].replace("jti-2", "jti-7");
    write_lines(&path, &l);
    let err = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AuditError::Broken(VerifyError::Broken {
                line: 2,
                seq: Some(2),
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("broken at record 2 (line 2)"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_kind_refuses_open_but_verifies() {
    // A record this version cannot read back is an operator matter, not silently skipped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let line = format!(
        r#"{{"seq":1,"ts":"2026-01-01T00:00:00Z","prev":"{GENESIS_PREV}","kind":"teleport"}}"#
    );
    std::fs::write(&path, format!("{line}\n")).unwrap();
    assert_eq!(verify_file(&path).unwrap().records, 1);
    let err = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AuditError::Broken(VerifyError::Broken {
                line: 1,
                reason: BreakReason::BadEvent(_),
                ..
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn torn_tail_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<_> = (1..=3).map(token_issued).collect();
    let (log, path) = log_with(dir.path(), &events).await;
    drop(log);
    let intact = std::fs::read(&path).unwrap();
    let torn = br#"{"seq":4,"ts":"2026-11-28T13:00:00Z","prev":"ab"#;
    std::fs::write(&path, [intact.as_slice(), torn].concat()).unwrap();

    let report = verify_file(&path).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes), (3, torn.len()));

    let (log, records) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(std::fs::read(&path).unwrap(), intact);
    assert_eq!(log.append(token_issued(4)).await.unwrap(), 4);
    let report = verify_file(&path).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes), (4, 0));
}

#[tokio::test]
async fn reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_with(dir.path(), &[token_issued(1), token_issued(2)]).await;
    drop(log);
    let (log, records) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(log.append(token_issued(3)).await.unwrap(), 3);
    assert_eq!(verify_file(&path).unwrap().records, 3);
}

#[tokio::test]
async fn one_writer_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_with(dir.path(), &[token_issued(1)]).await;
    let clone = log.clone();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()).await,
        Err(AuditError::Locked { .. })
    ));
    drop(log);
    // A clone keeps the writer (and the lock).
    assert_eq!(clone.append(token_issued(2)).await.unwrap(), 2);
    assert!(AuditLog::open(&path, AuditOptions::default())
        .await
        .is_err());
    // The last handle's drop joins the writer, so the file is free right after.
    drop(clone);
    let (_log, records) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (log, _) = AuditLog::open(&path, AuditOptions::default())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append(token_issued(n)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
    assert_eq!(verify_file(&path).unwrap().records, 1000);
}

/// Signals "entered write", then waits for "release".
type Gate = Arc<Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>>;

/// A sink that records what happened and can be told to fail or to block.
#[derive(Clone, Default)]
struct FakeSink {
    written: Arc<Mutex<Vec<u8>>>,
    /// Records per write call.
    batches: Arc<Mutex<Vec<usize>>>,
    syncs: Arc<AtomicUsize>,
    fail_write: bool,
    fail_sync: bool,
    /// Slow fsync, so that appenders queue up behind it.
    sync_delay: Option<std::time::Duration>,
    /// First write signals `entered` and waits for `release`.
    gate: Option<Gate>,
    /// Writes that fail (ENOSPC) before writes work again, each after writing half its buffer.
    failures_left: Arc<AtomicUsize>,
    /// Every write call, failed or not.
    write_calls: Arc<AtomicUsize>,
    /// Fsyncs that fail (EIO) before fsyncs work again.
    sync_failures_left: Arc<AtomicUsize>,
}

impl Sink for FakeSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(gate) = &self.gate {
            if let Some((entered, release)) = gate.lock().unwrap().take() {
                entered.send(()).unwrap();
                release.recv().unwrap();
            }
        }
        self.write_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_write {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            // A torn write: part of the batch reached the file before the disk filled up.
            let half = &buf[..buf.len() / 2];
            self.written.lock().unwrap().extend_from_slice(half);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.written.lock().unwrap().extend_from_slice(buf);
        let records = buf.iter().filter(|&&b| b == b'\n').count();
        self.batches.lock().unwrap().push(records);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(d) = self.sync_delay {
            std::thread::sleep(d);
        }
        if self.fail_sync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let left = self.sync_failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.sync_failures_left.store(left - 1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.written.lock().unwrap().truncate(len as usize);
        Ok(())
    }
}

fn start(sink: FakeSink) -> AuditLog {
    start_with(sink, AuditOptions::default())
}

fn start_with(sink: FakeSink, opts: AuditOptions) -> AuditLog {
    let state = ChainState {
        next_seq: 1,
        prev: GENESIS_PREV.to_string(),
        file_first_seq: 1,
        file_len: 0,
    };
    AuditLog::start(Box::new(sink), state, &opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_is_clamped() {
    // 0 would never write; one per record is the floor.
    let sink = FakeSink::default();
    let log = start_with(
        sink.clone(),
        AuditOptions {
            max_batch: 0,
            ..AuditOptions::default()
        },
    );
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append(token_issued(n)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sink.syncs.load(Ordering::SeqCst), 20);
    assert!(sink.batches.lock().unwrap().iter().all(|&b| b == 1));
}

#[tokio::test]
async fn append_returns_after_sync() {
    let sink = FakeSink::default();
    let log = start(sink.clone());
    assert_eq!(log.append(token_issued(1)).await.unwrap(), 1);
    assert_eq!(sink.syncs.load(Ordering::SeqCst), 1);
    assert!(sink.written.lock().unwrap().ends_with(b"}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_fsync() {
    let sink = FakeSink {
        sync_delay: Some(std::time::Duration::from_millis(20)),
        ..FakeSink::default()
    };
    let log = start(sink.clone());
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append(token_issued(n)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let syncs = sink.syncs.load(Ordering::SeqCst);
    assert!(syncs < 100, "{syncs} fsyncs for 100 records: no grouping");
}

#[tokio::test]
async fn one_calls_records_share_one_fsync_however_many() {
    let sink = FakeSink::default();
    let log = start(sink.clone());
    // More than a batch holds: a CloseTask of a wide tree writes this many revocations.
    let n = MAX_BATCH_RECORDS * 4 + 1;
    log.append_all((0..n as u64).map(token_issued).collect())
        .await
        .unwrap();
    assert_eq!(
        sink.syncs.load(Ordering::SeqCst),
        1,
        "one disk wait for the whole call"
    );
    assert_eq!(*sink.batches.lock().unwrap(), [n]);
    assert_eq!(log.append(token_issued(0)).await.unwrap(), n as u64 + 1);
    // Nothing to write: no disk wait at all.
    log.append_all(Vec::new()).await.unwrap();
    assert_eq!(sink.syncs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_calls_keep_their_records_next_to_each_other() {
    let sink = FakeSink {
        sync_delay: Some(std::time::Duration::from_millis(5)),
        ..FakeSink::default()
    };
    // A batch bound below one call's three records: calls still go whole.
    let log = start_with(
        sink.clone(),
        AuditOptions {
            max_batch: 2,
            ..AuditOptions::default()
        },
    );
    let calls = 40u64;
    let tasks: Vec<_> = (0..calls)
        .map(|c| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append_all((0..3).map(|i| token_issued(c * 10 + i)).collect())
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
    let jtis: Vec<u64> = written
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["jti"].as_str().unwrap()["jti-".len()..].parse().unwrap()
        })
        .collect();
    assert_eq!(jtis.len(), 3 * calls as usize);
    for call in jtis.chunks(3) {
        let c = call[0] / 10;
        assert_eq!(call, [c * 10, c * 10 + 1, c * 10 + 2], "{jtis:?}");
    }
    // Each call reached the bound alone, so each went in a write of its own, uncut.
    let batches = sink.batches.lock().unwrap().clone();
    assert_eq!(batches, vec![3; calls as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sync_or_write_fails_every_appender() {
    for sink in [
        FakeSink {
            fail_sync: true,
            ..FakeSink::default()
        },
        FakeSink {
            fail_write: true,
            ..FakeSink::default()
        },
    ] {
        let log = start(sink.clone());
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let log = log.clone();
                tokio::spawn(async move { log.append(token_issued(n)).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(matches!(r, Err(AuditError::Failed { .. })), "{r:?}");
        }
        // And the log stays refused while the disk fails: a later record must not chain onto
        // an unknown tail.
        assert!(matches!(
            log.append(token_issued(99)).await,
            Err(AuditError::Failed { .. })
        ));
        assert_eq!(sink.syncs.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_holds_exactly_its_capacity() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let sink = FakeSink {
        gate: Some(Arc::new(Mutex::new(Some((entered_tx, release_rx))))),
        ..FakeSink::default()
    };
    let log = start(sink.clone());
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.append(token_issued(0)).await }
    });
    // The writer now holds record 0 and is stuck in write; nothing drains the queue.
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();

    let queued: Vec<_> = (1..=QUEUE_CAPACITY as u64)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append(token_issued(n)).await })
        })
        .collect();
    while log.tx.capacity() > 0 {
        tokio::task::yield_now().await;
    }
    // Full: one more append waits in `send` instead of growing memory.
    let mut extra = Box::pin(log.append(token_issued(9999)));
    assert!(futures::poll!(&mut extra).is_pending());
    assert_eq!(log.tx.capacity(), 0);

    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let mut seqs: Vec<u64> = Vec::new();
    for q in queued {
        seqs.push(q.await.unwrap().unwrap());
    }
    seqs.push(extra.await.unwrap());
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=QUEUE_CAPACITY as u64 + 2).collect::<Vec<_>>());
    // The backlog went out in batches of at most MAX_BATCH_RECORDS, and it filled them.
    let batches = sink.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().max(),
        Some(&MAX_BATCH_RECORDS),
        "{batches:?}"
    );
    assert_eq!(batches.iter().sum::<usize>(), QUEUE_CAPACITY + 2);
    // The counters the metrics export tell the same story.
    let monitor = log.monitor();
    assert_eq!(monitor.synced_batches(), batches.len() as u64);
    assert_eq!(monitor.synced_records(), (QUEUE_CAPACITY + 2) as u64);
}

#[tokio::test]
async fn field_and_list_bounds_at_the_edge() {
    let log = start(FakeSink::default());
    let purpose = |n: usize| AuditEvent::TaskClose {
        task_id: "t".into(),
        by: "admin".into(),
        reason: "x".repeat(n),
    };
    assert!(log.append(purpose(MAX_FIELD_BYTES)).await.is_ok());
    assert!(matches!(
        log.append(purpose(MAX_FIELD_BYTES + 1)).await,
        Err(AuditError::FieldTooLong { field, .. }) if field == "reason"
    ));
    let ids = |n: usize| AuditEvent::PolicyReload {
        ok: true,
        policy_ids: (0..n).map(|i| i.to_string()).collect(),
        error: None,
    };
    assert!(log.append(ids(MAX_LIST_LEN)).await.is_ok());
    assert!(matches!(
        log.append(ids(MAX_LIST_LEN + 1)).await,
        Err(AuditError::ListTooLong { field, .. }) if field == "policy_ids"
    ));
    // Refused events consumed no seq.
    assert_eq!(log.append(token_issued(1)).await.unwrap(), 3);
}

/// An attestation event whose JSON is exactly `target` bytes.
fn event_of_size(target: usize) -> AuditEvent {
    let make = |selectors: Vec<String>| AuditEvent::Attestation {
        pid: 1,
        selectors,
        spiffe_ids: vec![],
    };
    let len = |e: &AuditEvent| serde_json::to_vec(e).unwrap().len();
    let mut selectors = Vec::new();
    // Each further string of k bytes adds k + 2 quotes + 1 comma.
    while len(&make(selectors.clone())) + 4000 + 3 + 100 < target {
        selectors.push("a".repeat(4000));
    }
    let last = target - len(&make(selectors.clone())) - 3;
    selectors.push("b".repeat(last));
    let e = make(selectors);
    assert_eq!(len(&e), target);
    e
}

#[tokio::test]
async fn record_size_bound_at_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_with(dir.path(), &[]).await;
    assert_eq!(log.append(event_of_size(MAX_EVENT_BYTES)).await.unwrap(), 1);
    assert!(matches!(
        log.append(event_of_size(MAX_EVENT_BYTES + 1)).await,
        Err(AuditError::RecordTooLarge { .. })
    ));
    let line_len = lines(&path)[0].len();
    assert!(line_len <= MAX_RECORD_BYTES, "{line_len}");
    assert_eq!(verify_file(&path).unwrap().records, 1);

    // A line over the limit on disk is reported, not parsed.
    std::fs::write(&path, format!("{}\n", "x".repeat(MAX_RECORD_BYTES + 1))).unwrap();
    assert!(matches!(
        broken_at(&path),
        (1, None, BreakReason::Malformed(_))
    ));
}

#[tokio::test]
async fn tokens_and_keys_are_refused() {
    let log = start(FakeSink::default());
    let jwt = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.sig";
    let e = AuditEvent::TaskOpen {
        task_id: "t".into(),
        spiffe_id: "spiffe://example.org/a".into(),
        purpose: format!("call the API with {jwt}"),
        audiences: vec![],
        scopes: vec![],
        expires_at: 0,
        delegation_depth: 0,
        parent_task_id: None,
        on_behalf_of: None,
        grants: Default::default(),
    };
    assert!(matches!(
        log.append(e).await,
        Err(AuditError::SecretLike { field }) if field == "purpose"
    ));
}

/// Prints appends/second with group commit and with one fsync per record, on the real disk.
/// `cargo test --release --lib audit::tests::append_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    const RECORDS: u64 = 2000;
    const APPENDERS: u64 = 64;
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    for (name, max_batch) in [("group commit", MAX_BATCH_RECORDS), ("fsync per record", 1)] {
        let path = dir.path().join(format!("{max_batch}.log"));
        let (log, _) = AuditLog::open(
            &path,
            AuditOptions {
                max_batch,
                ..AuditOptions::default()
            },
        )
        .await
        .unwrap();
        let start = std::time::Instant::now();
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|a| {
                let log = log.clone();
                tokio::spawn(async move {
                    for n in (a..RECORDS).step_by(APPENDERS as usize) {
                        log.append(token_issued(n)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:>17}: {RECORDS} records, {APPENDERS} appenders: {:>8.0} appends/s",
            RECORDS as f64 / secs
        );
        assert_eq!(verify_file(&path).unwrap().records, RECORDS);
    }
}
