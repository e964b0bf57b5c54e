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
        }
    }
}

/// Where and why the chain is broken. `line` is 1-based; `seq` is the broken record's seq when
/// it could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("broken at record {} (line {line}): {reason}", seq.map_or("?".to_string(), |s| s.to_string()))]
    Broken {
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
}

/// Just the chain fields; the rest of the line is hashed, not interpreted.
#[derive(Deserialize)]
struct Header {
    seq: u64,
    prev: String,
}

/// The result of scanning a log's bytes.
pub(super) struct Scan<'a> {
    /// Complete lines (without newline), in order, all chained.
    pub lines: Vec<&'a [u8]>,
    pub report: VerifyReport,
    /// Length of the intact prefix: everything up to and including the last newline.
    pub complete_len: usize,
}

/// Verifies the chain in `bytes`.
pub(super) fn scan(bytes: &[u8]) -> Result<Scan<'_>, VerifyError> {
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // Every complete line ends in a newline; strip the final one so `split` yields no empty tail.
    let lines: Vec<&[u8]> = match complete_len.checked_sub(1) {
        Some(end) => bytes[..end].split(|&b| b == b'\n').collect(),
        None => Vec::new(),
    };
    let mut headers = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        headers.push(header(line).map_err(|why| broken(i, None, BreakReason::Malformed(why)))?);
    }
    let mut prev = GENESIS_PREV.to_string();
    for (i, (line, h)) in lines.iter().zip(&headers).enumerate() {
        let expected = i as u64 + 1;
        if h.seq != expected {
            return Err(broken(
                i,
                Some(h.seq),
                BreakReason::SeqOutOfOrder {
                    expected,
                    found: h.seq,
                },
            ));
        }
        if h.prev != prev {
            return Err(locate_mismatch(i, &lines, &headers));
        }
        prev = hash_line(line);
    }
    Ok(Scan {
        report: VerifyReport {
            records: lines.len() as u64,
            last_hash: prev,
            torn_tail_bytes: bytes.len() - complete_len,
        },
        lines,
        complete_len,
    })
}

/// Record `i`'s prev does not match record `i - 1`. Either record `i - 1` was edited, or
/// record `i`'s own `prev` was. A successor tells them apart: if record `i + 1` no longer
/// chains to record `i`, record `i` changed. Without a successor the likelier single edit —
/// content of `i - 1` — is reported; the message states the hash fact either way.
fn locate_mismatch(i: usize, lines: &[&[u8]], headers: &[Header]) -> VerifyError {
    let this_changed = headers
        .get(i + 1)
        .is_some_and(|next| next.prev != hash_line(lines[i]));
    if i == 0 || this_changed {
        broken(i, Some(headers[i].seq), BreakReason::PrevMismatch)
    } else {
        broken(
            i - 1,
            Some(headers[i - 1].seq),
            BreakReason::Altered {
                next_seq: headers[i].seq,
            },
        )
    }
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

pub(super) fn broken(index: usize, seq: Option<u64>, reason: BreakReason) -> VerifyError {
    VerifyError::Broken {
        line: index + 1,
        seq,
        reason,
    }
}

/// Reads and verifies a log file without changing it.
///
/// # Errors
/// [`VerifyError::Io`] if the file cannot be read; [`VerifyError::Broken`] naming the first
/// record that cannot be trusted.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    let bytes = std::fs::read(path).map_err(|e| VerifyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    scan(&bytes).map(|s| s.report)
}
