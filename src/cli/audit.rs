//! `svid-broker audit …`: check an audit log offline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::audit;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log; report the first broken record.
    ///
    /// Given the active log (the `[audit] path`), verifies the whole set when the daemon has
    /// rotated it: every `FILE.<seq>` beside it, oldest first, then FILE, as one chain across
    /// the file boundaries. Without rotated files, FILE alone from its first record. Given a
    /// rotated file (`FILE.<20 digits>`), verifies that file alone; its first record's link
    /// to the file before is then taken on trust. A break names the file, line and record.
    Verify { file: PathBuf },
}

/// # Errors
/// A file cannot be read, or the chain is broken (the message names the file, record and
/// line).
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    run_to(cmd, &mut std::io::stdout().lock())
}

fn run_to(cmd: AuditCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { file } => {
            let rotated = audit::rotated_files(&file)
                .map_err(|e| anyhow!("listing the files beside {}: {e}", file.display()))?;
            // VerifyError's Display is the operator message: "[FILE: ]broken at record S
            // (line L): …".
            let report = if audit::rotated_seq(&file).is_some() {
                audit::verify_rotated(&file)
            } else if rotated.is_empty() {
                audit::verify_file(&file)
            } else {
                audit::verify_set(&file)
            }
            .map_err(|e| anyhow!("{e}"))?;
            writeln!(out, "ok: {} records, chain intact", report.records)?;
            if report.files > 1 {
                writeln!(
                    out,
                    "files: {} (rotated files oldest first, then {})",
                    report.files,
                    file.display()
                )?;
            }
            if report.first_seq > 1 {
                writeln!(
                    out,
                    "first record: seq {}; its link to the records before (archived) is taken \
                     on trust",
                    report.first_seq
                )?;
            }
            writeln!(out, "last hash: {}", report.last_hash)?;
            if report.torn_tail_bytes > 0 {
                writeln!(
                    out,
                    "note: {} bytes after the last record are a write torn by a crash; \
                     the daemon drops them when it opens the log",
                    report.torn_tail_bytes
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = concat!(
        r#"{"seq":1,"ts":"2026-11-28T13:00:00.000000Z","prev":"0000000000000000000000000000000000000000000000000000000000000000","kind":"task_close","task_id":"t1","by":"admin","reason":"done"}"#,
        "\n"
    );

    fn verify(text: &str) -> (anyhow::Result<()>, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.log");
        std::fs::write(&file, text).unwrap();
        let mut out = Vec::new();
        let r = run_to(AuditCommand::Verify { file }, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn intact_log() {
        let (r, out) = verify(GOOD);
        r.unwrap();
        assert!(
            out.starts_with("ok: 1 records, chain intact\nlast hash: "),
            "{out}"
        );
    }

    #[test]
    fn broken_log_names_record_and_line() {
        // Record 2 is a copy of record 1 (same prev), so record 1 is what no longer matches.
        let second = GOOD.replace(r#""seq":1"#, r#""seq":2"#);
        let (r, out) = verify(&format!("{GOOD}{second}"));
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with("broken at record 1 (line 1): record was altered"),
            "{msg}"
        );
        let (r, _) = verify(&format!("{GOOD}{GOOD}"));
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with("broken at record 1 (line 2): seq 1 where 2"),
            "{msg}"
        );
        assert!(out.is_empty());
    }

    /// A log rotated into three files by the daemon's own writer.
    async fn rotated_log(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("audit.log");
        let opts = audit::AuditOptions {
            max_file_bytes: Some(audit::MIN_MAX_FILE_BYTES),
            ..audit::AuditOptions::default()
        };
        let (log, _) = audit::AuditLog::open(&path, opts).await.unwrap();
        let event = |n: usize| audit::AuditEvent::TaskClose {
            task_id: format!("t{n}"),
            by: "admin".into(),
            reason: "r".repeat(audit::MAX_FIELD_BYTES),
        };
        let per_file = audit::MIN_MAX_FILE_BYTES as usize / audit::MAX_FIELD_BYTES;
        log.append_all((0..per_file * 5 / 2).map(event).collect())
            .await
            .unwrap();
        drop(log);
        assert_eq!(audit::rotated_files(&path).unwrap().len(), 2);
        path
    }

    fn run_verify(file: PathBuf) -> (anyhow::Result<()>, String) {
        let mut out = Vec::new();
        let r = run_to(AuditCommand::Verify { file }, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn rotated_set_verifies_as_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = rotated_log(dir.path()).await;
        let (r, out) = run_verify(path.clone());
        r.unwrap();
        assert!(
            out.contains("chain intact\nfiles: 3 (rotated files"),
            "{out}"
        );
        // A rotated file alone: from the seq its name gives.
        let (second_seq, second) = audit::rotated_files(&path).unwrap()[1].clone();
        let (r, out) = run_verify(second);
        r.unwrap();
        assert!(
            out.contains(&format!("first record: seq {second_seq}")),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_break_across_the_file_boundary_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = rotated_log(dir.path()).await;
        let rotated = audit::rotated_files(&path).unwrap();
        let (first, second) = (&rotated[0].1, &rotated[1].1);

        // The last record of the first file edited: only the second file's first record
        // vouches for it.
        let original = std::fs::read_to_string(first).unwrap();
        let last_line = original.lines().count();
        let edited = original.replacen(
            &format!("\"t{}\"", last_line - 1),
            &format!("\"x{}\"", last_line - 1),
            1,
        );
        assert_ne!(edited, original);
        std::fs::write(first, &edited).unwrap();
        let msg = run_verify(path.clone()).0.unwrap_err().to_string();
        let expected = format!(
            "{}: broken at record {last_line} (line {last_line}): record was altered: its hash \
             does not match the prev of record {}",
            first.display(),
            last_line + 1
        );
        assert!(msg.starts_with(&expected), "{msg}\nexpected: {expected}");
        std::fs::write(first, &original).unwrap();

        // The second file's first record no longer links to the first file.
        let text = std::fs::read_to_string(second).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let prev = v["prev"].as_str().unwrap();
        std::fs::write(second, text.replacen(prev, &"1".repeat(64), 1)).unwrap();
        let msg = run_verify(path.clone()).0.unwrap_err().to_string();
        let expected = format!(
            "{}: broken at record {} (line 1): record was altered: its prev does not match",
            second.display(),
            rotated[1].0
        );
        assert!(msg.starts_with(&expected), "{msg}\nexpected: {expected}");

        // The daemon refuses to open it, naming the same place.
        let err = audit::AuditLog::open(&path, audit::AuditOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&expected), "{err}");
    }
}
