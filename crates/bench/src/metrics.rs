//! Reads the daemon's Prometheus endpoint: how long attestation and the per-call re-check take
//! as the daemon itself times them, and how many audit records shared each fsync.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sample name (with labels) → value.
pub type Scrape = HashMap<String, f64>;

/// One GET of `/metrics`; `None` when there is no endpoint or it does not answer.
pub async fn scrape(addr: Option<SocketAddr>) -> Option<Scrape> {
    let addr = addr?;
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(parse(&body))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// How much `num` grew over how much `den` grew between two scrapes; `None` when `den` did not
/// grow or either sample is missing after.
fn ratio_of_growth(
    before: &Option<Scrape>,
    after: &Option<Scrape>,
    num: &str,
    den: &str,
) -> Option<f64> {
    let (b, a) = (before.as_ref()?, after.as_ref()?);
    let growth = |name: &str| Some(a.get(name)? - b.get(name).copied().unwrap_or(0.0));
    let (n, d) = (growth(num)?, growth(den)?);
    (d > 0.0).then(|| n / d)
}

/// Mean of a `<name>_sum` / `<name>_count` pair between two scrapes, in µs.
fn mean_us(before: &Option<Scrape>, after: &Option<Scrape>, name: &str) -> Option<f64> {
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    ratio_of_growth(before, after, &sum, &count).map(|seconds| seconds * 1e6)
}

/// Mean per-call re-check of a known caller (`svid_broker_caller_recheck_seconds`), µs.
pub fn recheck_mean(before: &Option<Scrape>, after: &Option<Scrape>) -> Option<f64> {
    mean_us(before, after, "svid_broker_caller_recheck_seconds")
}

/// Audit records written per fsync between two scrapes (`svid_broker_audit_records_total` over
/// `svid_broker_audit_syncs_total`): how many records group commit put in each batch.
pub fn records_per_sync(before: &Option<Scrape>, after: &Option<Scrape>) -> Option<f64> {
    ratio_of_growth(
        before,
        after,
        "svid_broker_audit_records_total",
        "svid_broker_audit_syncs_total",
    )
}

/// Mean full attestation (`svid_broker_attestation_seconds`), µs.
pub fn attestation_mean(before: &Option<Scrape>, after: &Option<Scrape>) -> Option<f64> {
    mean_us(before, after, "svid_broker_attestation_seconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_between_scrapes() {
        let b = Some(parse(
            "# TYPE x summary\nsvid_broker_caller_recheck_seconds_sum 0.5\nsvid_broker_caller_recheck_seconds_count 10\n",
        ));
        let a = Some(parse(
            "svid_broker_caller_recheck_seconds_sum 0.5001\nsvid_broker_caller_recheck_seconds_count 20\n",
        ));
        let m = recheck_mean(&b, &a).unwrap();
        assert!((m - 10.0).abs() < 1e-6, "{m}");
        assert_eq!(attestation_mean(&b, &a), None);
        assert_eq!(recheck_mean(&None, &a), None);
    }

    #[test]
    fn records_per_sync_is_the_ratio_of_the_two_counters_over_the_interval() {
        let b = Some(parse(
            "svid_broker_audit_syncs_total 10\nsvid_broker_audit_records_total 30\n",
        ));
        let a = Some(parse(
            "svid_broker_audit_syncs_total 14\nsvid_broker_audit_records_total 54\n",
        ));
        assert_eq!(records_per_sync(&b, &a), Some(6.0));
        // No sync in the interval, or a daemon without the counters: no number.
        assert_eq!(records_per_sync(&a, &a), None);
        assert_eq!(
            records_per_sync(&Some(parse("x 1\n")), &Some(parse("x 2\n"))),
            None
        );
    }
}
