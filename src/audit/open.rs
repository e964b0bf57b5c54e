//! Opening the log: the active file and its rotated files are read, verified as one chain,
//! and parsed back into records; the end of the chain is where the writer continues.

use std::fs::{DirBuilder, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::chain::BreakReason;
use super::set::{rotated_files, scan_set, SetFile};
use super::writer::ChainState;
use super::{file, AuditError, AuditRecord, VerifyError};

/// Mode of a log directory the daemon creates.
const DIR_MODE: u32 = 0o700;

pub(super) struct Opened {
    pub file: File,
    pub records: Vec<AuditRecord>,
    pub state: ChainState,
}

pub(super) fn open_blocking(path: &Path) -> Result<Opened, AuditError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AuditError::Io { path: p, source }
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.exists()) {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    let existed = path.symlink_metadata().is_ok();
    let mut active = file::open_active(path)?;
    file::lock(&active, path)?;

    let mut files = Vec::new();
    for (seq, rotated) in rotated_files(path).map_err(io_err(path))? {
        let mut bytes = Vec::new();
        file::open_rotated(&rotated)?
            .read_to_end(&mut bytes)
            .map_err(io_err(&rotated))?;
        files.push(SetFile {
            path: rotated,
            named_seq: Some(seq),
            bytes,
        });
    }
    let mut bytes = Vec::new();
    active.read_to_end(&mut bytes).map_err(io_err(path))?;
    files.push(SetFile {
        path: path.to_path_buf(),
        named_seq: None,
        bytes,
    });

    let scan = scan_set(&files)?;
    let mut records = Vec::with_capacity(scan.lines.len());
    for (i, located) in scan.lines.iter().enumerate() {
        let record: AuditRecord =
            serde_json::from_slice(located.line).map_err(|e| VerifyError::Broken {
                file: Some(files[located.file].path.display().to_string()),
                line: located.index + 1,
                seq: Some(scan.report.first_seq + i as u64),
                reason: BreakReason::BadEvent(e.to_string()),
            })?;
        records.push(record);
    }
    if scan.report.torn_tail_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            bytes = scan.report.torn_tail_bytes,
            "audit log ends in a torn record (crash during write); truncating it"
        );
        active
            .set_len(scan.active_complete_len as u64)
            .map_err(io_err(path))?;
        active.sync_all().map_err(io_err(path))?;
    }
    if !existed {
        // Make the new file's directory entry durable too, not just its contents.
        file::sync_parent(path).map_err(io_err(path))?;
    }
    if scan.report.first_seq > 1 {
        tracing::info!(
            first_seq = scan.report.first_seq,
            "audit log set starts after archived files; its first prev is taken on trust"
        );
    }
    let state = ChainState {
        next_seq: scan.report.first_seq + scan.report.records,
        prev: scan.report.last_hash.clone(),
        file_first_seq: scan.active_first_seq,
        file_len: scan.active_complete_len as u64,
    };
    Ok(Opened {
        file: active,
        records,
        state,
    })
}
