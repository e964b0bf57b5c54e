//! The benchmark runs end to end in its short mode against the daemon built with the tests,
//! and its report names every row and measurement. No timing is asserted: benchmarks are
//! benchmarks, not timed tests.

use std::process::Command;

#[test]
fn quick_bench_writes_a_complete_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_svid-broker-bench"));
    cmd.arg("--quick")
        .arg("--daemon")
        .arg(env!("CARGO_BIN_EXE_svid-broker"))
        .arg("--out")
        .arg(out.path());
    // The SPIRE comparison runs when the Go peers are installed; SVID_BROKER_SKIP_GO=1 skips
    // it like the other SPIRE tests. Its row is reported either way.
    if std::env::var("SVID_BROKER_SKIP_GO").is_ok_and(|v| v == "1") {
        cmd.arg("--no-spire");
    }
    let run = cmd.output().expect("run svid-broker-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "svid-broker-bench --quick failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );

    let report = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert_eq!(
        report.trim(),
        stdout.trim(),
        "the printed table is the report"
    );
    let chart = std::fs::read(out.path().join("chart.png")).expect("chart.png");
    assert!(
        chart.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chart.png is a PNG"
    );

    let spire_ran = report.contains(svid_broker::bench::SPIRE_ROW);
    for name in svid_broker::bench::ROW_NAMES {
        if *name == svid_broker::bench::SPIRE_ROW && !spire_ran {
            assert!(
                report.contains("SPIRE"),
                "the report says why SPIRE did not run:\n{report}"
            );
            continue;
        }
        assert!(
            report.contains(&format!("| {name} | 1 |"))
                && report.contains(&format!("| {name} | 64 |")),
            "row {name:?} at 1 and 64 clients missing from the report:\n{report}"
        );
    }
    for name in svid_broker::bench::FACT_NAMES {
        assert!(
            report.contains(&format!("| {name} |")),
            "measurement {name:?} missing from the report:\n{report}"
        );
    }
    for verdict_line in report
        .lines()
        .filter(|l| l.contains(" ≤ ") || l.contains(" ≥ "))
    {
        assert!(
            ["| PASS |", "| MISS |", "| n/a |"]
                .iter()
                .any(|v| verdict_line.ends_with(v)),
            "target line without a verdict: {verdict_line}"
        );
    }
}
