//! `svid-broker audit …`: check an audit log offline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::audit;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit log; report the first broken record.
    Verify { file: PathBuf },
}

/// # Errors
/// The file cannot be read, or its chain is broken (the message names the record and line).
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    run_to(cmd, &mut std::io::stdout().lock())
}

fn run_to(cmd: AuditCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { file } => {
            // VerifyError's Display is the operator message: "broken at record S (line L): …".
            let report = audit::verify_file(&file).map_err(|e| anyhow!("{e}"))?;
            writeln!(out, "ok: {} records, chain intact", report.records)?;
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
}
