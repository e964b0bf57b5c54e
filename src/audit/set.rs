//! A log rotated by size is a set of files: `<path>.<seq>` for each rotated file, where `<seq>`
//! is the seq of its first record zero-padded to [`ROTATED_SEQ_DIGITS`] digits (so the names
//! sort in chain order), then the active file at `<path>`. The chain runs through them: a
//! file's first record carries the hash of the previous file's last line, exactly as if the
//! files were one.
//!
//! The daemon never deletes a file of the set; archiving old rotated files is the operator's
//! job (oldest first). The oldest file left in place then starts above seq 1, and its first
//! `prev` is taken on trust: compare it with the archive's last hash.

use std::io;
use std::path::{Path, PathBuf};

use super::chain::{self, check_lines, BreakReason, Start, VerifyError, VerifyReport};

/// Digits of the seq in a rotated file's name: `u64::MAX` has 20.
pub const ROTATED_SEQ_DIGITS: usize = 20;

/// The name a file whose first record is `first_seq` gets when it is rotated out.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:0width$}", width = ROTATED_SEQ_DIGITS));
    PathBuf::from(name)
}

/// The rotated files beside the active log at `path`, oldest first, with the seq their name
/// gives.
///
/// # Errors
/// The directory cannot be listed.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(digits) = name
            .to_str()
            .and_then(|n| n.strip_prefix(base))
            .and_then(|n| n.strip_prefix('.'))
        else {
            continue;
        };
        if digits.len() != ROTATED_SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = digits.parse::<u64>() {
            found.push((seq, dir.join(&name)));
        }
    }
    found.sort();
    Ok(found)
}

/// The seq a rotated file's name gives, if `path` is named like one.
pub fn rotated_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (_, digits) = name.rsplit_once('.')?;
    if digits.len() != ROTATED_SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Verifies one rotated file on its own: it must start at the seq its name gives and chain
/// within itself. Its first `prev` is taken on trust unless it starts at seq 1 (compare it
/// with the previous file's last hash).
///
/// # Errors
/// As [`verify_set`]; [`VerifyError::Io`] too if `path` is not named like a rotated file.
pub fn verify_rotated(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io_err = |reason: String| VerifyError::Io {
        path: path.display().to_string(),
        reason,
    };
    let seq = rotated_seq(path).ok_or_else(|| io_err("not named like a rotated file".into()))?;
    let bytes = std::fs::read(path).map_err(|e| io_err(e.to_string()))?;
    let files = [SetFile {
        path: path.to_path_buf(),
        named_seq: Some(seq),
        bytes,
    }];
    scan_set(&files).map(|s| s.report)
}

/// One file of a set, read into memory.
pub(super) struct SetFile {
    pub path: PathBuf,
    /// The seq its name gives; `None` for the active file.
    pub named_seq: Option<u64>,
    pub bytes: Vec<u8>,
}

/// A line of the set and where it is.
pub(super) struct Located<'a> {
    pub line: &'a [u8],
    pub file: usize,
    /// 0-based within its file.
    pub index: usize,
}

/// A verified set.
pub(super) struct SetScan<'a> {
    pub lines: Vec<Located<'a>>,
    pub report: VerifyReport,
    /// Length of the active file's intact prefix (its torn tail is `report.torn_tail_bytes`).
    pub active_complete_len: usize,
    /// Seq of the active file's first record, or of the next record when it is empty.
    pub active_first_seq: u64,
}

/// Verifies `files` (rotated ones oldest first, the active one last) as one chain.
pub(super) fn scan_set(files: &[SetFile]) -> Result<SetScan<'_>, VerifyError> {
    let at =
        |file: usize, index: usize, seq: Option<u64>, reason: BreakReason| VerifyError::Broken {
            file: Some(files[file].path.display().to_string()),
            line: index + 1,
            seq,
            reason,
        };
    let mut lines = Vec::new();
    let mut starts = Vec::with_capacity(files.len());
    let mut active = chain::split(&[]);
    // Structural breaks (a misnamed or torn rotated file), by position in the set; the chain
    // check below may find an earlier one.
    let mut structural: Option<(usize, VerifyError)> = None;
    for (f, file) in files.iter().enumerate() {
        let split = chain::split(&file.bytes);
        starts.push(lines.len());
        if let Some(named) = file.named_seq {
            let first = split.lines.first().and_then(|l| chain::header_seq(l));
            if structural.is_none() && first != Some(named) {
                let why = BreakReason::MisnamedFile { named };
                structural = Some((lines.len(), at(f, 0, first, why)));
            }
            if structural.is_none() && split.torn_tail_bytes > 0 {
                let why = BreakReason::TornRotatedFile {
                    bytes: split.torn_tail_bytes,
                };
                let pos = lines.len() + split.lines.len();
                structural = Some((pos, at(f, split.lines.len(), None, why)));
            }
        }
        lines.extend(split.lines.iter().enumerate().map(|(index, line)| Located {
            line,
            file: f,
            index,
        }));
        if f + 1 == files.len() {
            active = split;
        }
    }
    let start = match files.first().and_then(|f| f.named_seq) {
        Some(seq) if seq > 1 => Start { seq, prev: None },
        _ => Start::GENESIS,
    };
    let plain: Vec<&[u8]> = lines.iter().map(|l| l.line).collect();
    let chained = check_lines(&plain, &start);
    let last_hash = match (chained, structural) {
        (Err((i, _, _)), Some((pos, e))) if pos <= i => return Err(e),
        (Ok(_), Some((_, e))) => return Err(e),
        (Err((i, seq, reason)), _) => return Err(at(lines[i].file, lines[i].index, seq, reason)),
        (Ok(h), None) => h,
    };
    let records = lines.len() as u64;
    let active_first_seq = start.seq + starts.last().map_or(0, |&s| s as u64);
    Ok(SetScan {
        report: VerifyReport {
            records,
            last_hash,
            torn_tail_bytes: active.torn_tail_bytes,
            files: files.len(),
            first_seq: start.seq,
        },
        active_complete_len: active.complete_len,
        active_first_seq,
        lines,
    })
}

/// Reads and verifies the whole set around the active log at `path`: its rotated files in
/// order, then `path` itself (missing is fine when rotated files exist: a crash between a
/// rotation's rename and the new file's creation). Changes nothing.
///
/// # Errors
/// [`VerifyError::Io`] if a file cannot be read; [`VerifyError::Broken`] naming the file,
/// line and seq of the first record that cannot be trusted.
pub fn verify_set(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io_err = |p: &Path, e: io::Error| VerifyError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for (seq, rotated) in rotated_files(path).map_err(|e| io_err(path, e))? {
        let bytes = std::fs::read(&rotated).map_err(|e| io_err(&rotated, e))?;
        files.push(SetFile {
            path: rotated,
            named_seq: Some(seq),
            bytes,
        });
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !files.is_empty() => Vec::new(),
        Err(e) => return Err(io_err(path, e)),
    };
    files.push(SetFile {
        path: path.to_path_buf(),
        named_seq: None,
        bytes,
    });
    scan_set(&files).map(|s| s.report)
}
