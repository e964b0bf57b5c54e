//! The benchmark runs end to end in its short mode against the daemon built with the tests,
//! and its report names every row and measurement. No timing is asserted: benchmarks are
//! benchmarks, not timed tests.
//!
//! The bench is its own crate (`crates/bench`); it runs here in this process through its
//! library, with the command line `svid-broker-bench` parses, so that cargo builds both the
//! daemon (`CARGO_BIN_EXE_svid-broker`) and the bench code of this very tree before the test.

use clap::Parser;
use svid_broker_bench::BenchArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_writes_a_complete_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let out_dir = out.path().display().to_string();
    let spire_bin = svid_broker_test_support::spire::peers_bin_dir()
        .display()
        .to_string();
    let mut argv = vec![
        "svid-broker-bench",
        "--quick",
        "--daemon",
        env!("CARGO_BIN_EXE_svid-broker"),
        "--out",
        &out_dir,
        "--spire-bin",
        &spire_bin,
    ];
    // The SPIRE comparison runs when the Go peers are installed; SVID_BROKER_SKIP_GO=1 skips
    // it like the other SPIRE tests. Its row is reported either way.
    if svid_broker_test_support::spire::skip_go() {
        argv.push("--no-spire");
    }
    let args = BenchArgs::try_parse_from(&argv).expect("the bench's command line");
    let printed = svid_broker_bench::run(args)
        .await
        .unwrap_or_else(|e| panic!("svid-broker-bench --quick failed: {e:#}"));

    let report = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert_eq!(
        report.trim(),
        printed.trim(),
        "the printed table is the report"
    );
    let chart = std::fs::read(out.path().join("chart.png")).expect("chart.png");
    assert!(
        chart.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chart.png is a PNG"
    );

    let spire_ran = report.contains(&format!("| {} | 1 |", svid_broker_bench::SPIRE_ROW));
    for name in svid_broker_bench::ROW_NAMES {
        if *name == svid_broker_bench::SPIRE_ROW && !spire_ran {
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
    for name in svid_broker_bench::FACT_NAMES {
        assert!(
            report.contains(&format!("| {name} |")),
            "measurement {name:?} missing from the report:\n{report}"
        );
    }
    // The table of the largest tasks was filled on a daemon of its own and its RSS read.
    assert!(
        report.contains("table of the largest tasks: on a daemon of its own")
            && report.contains("KiB a task (svid_broker_task_table_bytes "),
        "the largest-tasks measurement is missing or failed:\n{report}"
    );
    // The daemon's own counters reached the report: group commit's batch size is a number.
    let per_sync = report
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "| {} |",
                svid_broker_bench::report::FACT_RECORDS_PER_SYNC
            ))
        })
        .expect("records per fsync line");
    assert!(
        per_sync.contains(" mean (svid_broker_audit_records_total"),
        "records per fsync not measured: {per_sync}"
    );
    let targets = report
        .split("## Targets")
        .nth(1)
        .unwrap_or_else(|| panic!("no Targets section:\n{report}"));
    assert!(
        targets.contains("Load average"),
        "the run's load average sits above the targets:\n{targets}"
    );
    for t in svid_broker_bench::targets::TARGETS {
        let (what, goal) = t.describe();
        let line = targets
            .lines()
            .find(|l| l.starts_with(&format!("| {what} |")) && l.contains(&format!("| {goal} |")))
            .unwrap_or_else(|| panic!("target {what:?} {goal:?} missing:\n{targets}"));
        assert!(
            line.ends_with("| PASS |")
                || line.ends_with("| MISS |")
                || line.contains("| not measured: "),
            "target line without a verdict (or a reason it was not measured): {line}"
        );
    }
}
