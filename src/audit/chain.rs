//! The on-disk format and its verification.
//!
//! Each record is one line: `{"seq":N,"ts":"…","prev":"<hex>","kind":"…",…}` where `prev` is
//! the SHA-256 of the previous line's exact bytes (without its newline) and [`GENESIS_PREV`]
//! for the first. Seqs start at 1 and go up by one. Hashing the bytes as written, not a
//! re-serialization, means any edit to a line — even whitespace — breaks the chain.
//!
//! What the chain cannot show: removing records from the end. [`VerifyReport::last_hash`]
//! is there to be anchored elsewhere (a metrics label, another system's log) for that.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::MAX_RECORD_BYTES;

/// `prev` of the first record.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hex SHA-256 of a line's bytes (without the newline).
pub(super) fn hash_line(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The longest header the writer puts before an event's fields:
/// `{"seq":<u64>,"ts":"<RFC 3339, microseconds>","prev":"<64 hex>",` — the event's own `{` is
/// dropped when it is spliced in.
pub(super) const MAX_HEADER_BYTES: usize = r#"{"seq":,"ts":"","prev":"","#.len()
    + 20 // u64::MAX digits
    + "2026-01-01T00:00:00.000000Z".len()
    + 64;

/// One record line (no newline) from a header and an event's JSON object.
pub(super) fn encode_line(seq: u64, ts: &str, prev: &str, event_json: &[u8]) -> Vec<u8> {
    let header = format!(r#"{{"seq":{seq},"ts":"{ts}","prev":"{prev}","#);
    let fields = event_json.strip_prefix(b"{").unwrap_or(event_json);
    let mut line = Vec::with_capacity(header.len() + fields.len());
    line.extend_from_slice(header.as_bytes());
    line.extend_from_slice(fields);
    line
}

/// Why verification stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakReason {
    /// Not a JSON object with numeric `seq` and string `prev`, not UTF-8, or over the size limit.
    Malformed(String),
    /// The seq is not one more than the previous record's: records were removed, inserted or
    /// reordered just before this one (or this record's seq was edited).
    SeqOutOfOrder { expected: u64, found: u64 },
    /// This record's bytes no longer hash to the `prev` the next record holds: it was edited.
    Altered { next_seq: u64 },
    /// This record's `prev` does not match the record before it, and its successor shows that
    /// this record itself changed (or it is the first record and its prev is not genesis).
    PrevMismatch,
    /// A record could not be read back as an event (unknown kind, wrong field types).
    BadEvent(String),
    /// A rotated file's name says its first record is `named`, but it starts elsewhere (or is
    /// empty): files were renamed, emptied or swapped.
    MisnamedFile { named: u64 },
    /// A rotated file ends in a partial record. The writer rotates only after whole records
    /// are synced, so this is damage, not a crash.
    TornRotatedFile { bytes: usize },
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakReason::Malformed(why) => write!(f, "malformed record: {why}"),
            BreakReason::SeqOutOfOrder { expected, found } => write!(
                f,
                "seq {found} where {expected} was expected: records were removed, inserted or \
                 reordered before it"
            ),
            BreakReason::Altered { next_seq } => write!(
                f,
                "record was altered: its hash does not match the prev of record {next_seq}"
            ),
            BreakReason::PrevMismatch => f.write_str(
                "record was altered: its prev does not match the hash of the record before it",
            ),
            BreakReason::BadEvent(why) => write!(f, "unreadable event: {why}"),
            BreakReason::MisnamedFile { named } => write!(
                f,
                "the file's name says it starts at record {named}, but it does not"
            ),
            BreakReason::TornRotatedFile { bytes } => write!(
                f,
                "a rotated file ends in {bytes} bytes of a partial record"
            ),
        }
    }
}

/// Where and why the chain is broken. `line` is 1-based within `file`; `seq` is the broken
/// record's seq when it could be read. `file` names the file when a set of files (rotated
/// files and the active one) was verified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{}broken at record {} (line {line}): {reason}",
        file.as_ref().map_or(String::new(), |f| format!("{f}: ")),
        seq.map_or("?".to_string(), |s| s.to_string()))]
    Broken {
        file: Option<String>,
        line: usize,
        seq: Option<u64>,
        reason: BreakReason,
    },
}

/// An intact chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// Hash of the last record's line ([`GENESIS_PREV`] for an empty log): anchor it elsewhere
    /// to detect truncation.
    pub last_hash: String,
    /// Bytes after the last newline: a record torn by a crash mid-write. Never acknowledged
    /// (acks follow fsync of whole lines), so opening the log drops it.
    pub torn_tail_bytes: usize,
    /// Files verified: rotated files, oldest first, then the active one.
    pub files: usize,
    /// Seq of the first record seen. Above 1 when older rotated files were archived away: the
    /// first record's `prev` is then taken on trust (compare it with the archive's last hash).
    pub first_seq: u64,
}

/// Just the chain fields; the rest of the line is hashed, not interpreted.
#[derive(Deserialize)]
struct Header {
    seq: u64,
    prev: String,
}

/// A file's bytes cut into complete lines.
pub(super) struct Split<'a> {
    /// Complete lines, without their newline.
    pub lines: Vec<&'a [u8]>,
    /// Length of the intact prefix: everything up to and including the last newline.
    pub complete_len: usize,
    /// Bytes after it: a torn write.
    pub torn_tail_bytes: usize,
}

pub(super) fn split(bytes: &[u8]) -> Split<'_> {
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // Every complete line ends in a newline; strip the final one so `split` yields no empty tail.
    let lines: Vec<&[u8]> = match complete_len.checked_sub(1) {
        Some(end) => bytes[..end].split(|&b| b == b'\n').collect(),
        None => Vec::new(),
    };
    Split {
        lines,
        complete_len,
        torn_tail_bytes: bytes.len() - complete_len,
    }
}

/// Where a chain starts: the seq its first record must have, and the `prev` it must carry
/// (`None`: whatever it carries, because the records before it were archived elsewhere).
pub(super) struct Start<'a> {
    pub seq: u64,
    pub prev: Option<&'a str>,
}

impl Start<'static> {
    pub const GENESIS: Start<'static> = Start {
        seq: 1,
        prev: Some(GENESIS_PREV),
    };
}

/// A break found by [`check_lines`]: the 0-based index of the line, its seq if readable, why.
pub(super) type Break = (usize, Option<u64>, BreakReason);

/// Checks that `lines` form one chain from `start`; returns the hash of the last line (the
/// start's `prev`, or [`GENESIS_PREV`], when there are none).
pub(super) fn check_lines(lines: &[&[u8]], start: &Start<'_>) -> Result<String, Break> {
    let mut headers = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        headers.push(header(line).map_err(|why| (i, None, BreakReason::Malformed(why)))?);
    }
    let mut prev = match (start.prev, headers.first()) {
        (Some(p), _) => p.to_string(),
        (None, Some(first)) => first.prev.clone(),
        (None, None) => GENESIS_PREV.to_string(),
    };
    for (i, (line, h)) in lines.iter().zip(&headers).enumerate() {
        let expected = start.seq + i as u64;
        if h.seq != expected {
            return Err((
                i,
                Some(h.seq),
                BreakReason::SeqOutOfOrder {
                    expected,
                    found: h.seq,
                },
            ));
        }
        if h.prev != prev {
            return Err(locate_mismatch(i, lines, &headers));
        }
        prev = hash_line(line);
    }
    Ok(prev)
}

/// Verifies the chain in `bytes`, a whole log in one file starting at the genesis record.
fn scan(bytes: &[u8]) -> Result<VerifyReport, VerifyError> {
    let s = split(bytes);
    let last_hash = check_lines(&s.lines, &Start::GENESIS)
        .map_err(|(i, seq, reason)| broken(i, seq, reason))?;
    Ok(VerifyReport {
        records: s.lines.len() as u64,
        last_hash,
        torn_tail_bytes: s.torn_tail_bytes,
        files: 1,
        first_seq: 1,
    })
}

/// Record `i`'s prev does not match record `i - 1`. Either record `i - 1` was edited, or
/// record `i`'s own `prev` was. A successor tells them apart: if record `i + 1` no longer
/// chains to record `i`, record `i` changed. Without a successor the likelier single edit —
/// content of `i - 1` — is reported; the message states the hash fact either way.
fn locate_mismatch(i: usize, lines: &[&[u8]], headers: &[Header]) -> Break {
    let this_changed = headers
        .get(i + 1)
        .is_some_and(|next| next.prev != hash_line(lines[i]));
    if i == 0 || this_changed {
        (i, Some(headers[i].seq), BreakReason::PrevMismatch)
    } else {
        (
            i - 1,
            Some(headers[i - 1].seq),
            BreakReason::Altered {
                next_seq: headers[i].seq,
            },
        )
    }
}

/// The seq of a record line, if it has one.
pub(super) fn header_seq(line: &[u8]) -> Option<u64> {
    header(line).ok().map(|h| h.seq)
}

fn header(line: &[u8]) -> Result<Header, String> {
    if line.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes; records are at most {MAX_RECORD_BYTES}",
            line.len()
        ));
    }
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

fn broken(index: usize, seq: Option<u64>, reason: BreakReason) -> VerifyError {
    VerifyError::Broken {
        file: None,
        line: index + 1,
        seq,
        reason,
    }
}

/// Reads and verifies one log file on its own (its first record must be the genesis record)
/// without changing it. For a rotated set see [`verify_set`](super::verify_set).
///
/// # Errors
/// [`VerifyError::Io`] if the file cannot be read; [`VerifyError::Broken`] naming the first
/// record that cannot be trusted.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let bytes = std::fs::read(path).map_err(|e| VerifyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    scan(&bytes)
}
