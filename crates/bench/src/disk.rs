//! How long the disk under the audit log takes to make one small record durable.
//!
//! The audit contract is that no SVID or task token leaves the daemon before its record is
//! written and `fdatasync`ed, so every MintTaskToken waits for at least one. This probe does the
//! same thing as the audit writer (a file opened with `O_APPEND`, one short line written, then
//! `fdatasync`), in the same directory, many times, and reports the spread: on a slow disk the
//! single-client MintTaskToken p99 target is physically out of reach, and this number says so.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Records appended by the probe: enough that its p99 is not the second-largest sample.
pub const RECORDS: usize = 1000;
/// Bytes per record, about one audit line of a MintTaskToken.
pub const RECORD_BYTES: usize = 300;

#[derive(Debug, Clone, Default)]
pub struct FsyncProbe {
    pub dir: PathBuf,
    pub records: usize,
    pub record_bytes: usize,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub error: Option<String>,
}

/// Appends `records` lines of `record_bytes` bytes to a scratch file in `dir`, each followed by
/// `fdatasync`, timing write + sync; the file is removed afterwards. Blocking.
pub fn probe(dir: &Path, records: usize, record_bytes: usize) -> FsyncProbe {
    let mut out = FsyncProbe {
        dir: dir.to_path_buf(),
        records,
        record_bytes,
        ..Default::default()
    };
    let path = dir.join(".bench-fsync-probe");
    match timed_appends(&path, records, record_bytes) {
        Ok(h) if !h.is_empty() => {
            out.p50_us = Some(h.value_at_quantile(0.5) as f64 / 1e3);
            out.p99_us = Some(h.value_at_quantile(0.99) as f64 / 1e3);
            out.max_us = Some(h.max() as f64 / 1e3);
        }
        Ok(_) => out.error = Some("no samples".into()),
        Err(e) => out.error = Some(format!("{}: {e}", path.display())),
    }
    let _ = std::fs::remove_file(&path);
    out
}

fn timed_appends(
    path: &Path,
    records: usize,
    record_bytes: usize,
) -> std::io::Result<Histogram<u64>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = vec![b'x'; record_bytes.max(1)];
    if let Some(last) = line.last_mut() {
        *last = b'\n';
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for _ in 0..records {
        let t = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_a_directory_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("svb-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = probe(&dir, 5, 300);
        let left = std::fs::read_dir(&dir).unwrap().count();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(p.error, None);
        assert!(p.p50_us.unwrap() > 0.0);
        assert!(p.p99_us.unwrap() >= p.p50_us.unwrap());
        assert_eq!(left, 0, "the scratch file is removed");
    }

    #[test]
    fn reports_an_unwritable_directory() {
        let p = probe(Path::new("/nonexistent/bench"), 5, 300);
        assert!(p.error.is_some());
        assert_eq!(p.p99_us, None);
    }
}
