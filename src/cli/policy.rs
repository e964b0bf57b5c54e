//! `svid-broker policy …`: check a policy file before deploying it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::policy;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Parse a Cedar policy file and validate it against the schema (strict mode); print the
    /// policy ids, or the first errors with line and column.
    Check { file: PathBuf },
    /// Print the Cedar schema policies are validated against.
    Schema,
}

/// # Errors
/// The file does not load, parse or validate; the message says where.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    run_to(
        cmd,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

fn run_to(cmd: PolicyCommand, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => {
            let check =
                policy::check_file(&file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            for w in &check.warnings {
                writeln!(err, "warning: {}: {w}", file.display())?;
            }
            writeln!(
                out,
                "ok: {} policies in {}",
                check.ids.len(),
                file.display()
            )?;
            for id in &check.ids {
                writeln!(out, "  {id}")?;
            }
        }
        PolicyCommand::Schema => out.write_all(policy::SCHEMA.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_capture(cmd: PolicyCommand) -> (anyhow::Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = run_to(cmd, &mut out, &mut err);
        (
            r,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn check_prints_ids() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/policy/delegation.cedar");
        let (r, out, err) = run_capture(PolicyCommand::Check { file });
        r.unwrap();
        assert!(out.starts_with("ok: 4 policies in "), "{out}");
        assert!(out.contains("\n  delegation-depth-max-2\n"), "{out}");
        assert!(err.is_empty(), "{err}");
    }

    #[test]
    fn check_reports_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.cedar");
        std::fs::write(
            &file,
            "@id(\"ok\") permit (principal, action, resource);\n@id(\"bad\") permit (principal, action, resource) when { principal.colour == \"red\" };\n",
        )
        .unwrap();
        let (r, out, _) = run_capture(PolicyCommand::Check { file });
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("bad.cedar: policy does not validate"), "{msg}");
        assert!(msg.contains("line 2, column "), "{msg}");
        assert!(out.is_empty());
    }

    #[test]
    fn schema_prints_the_builtin_schema() {
        let (r, out, _) = run_capture(PolicyCommand::Schema);
        r.unwrap();
        assert!(out.contains("namespace SvidBroker"));
    }
}
