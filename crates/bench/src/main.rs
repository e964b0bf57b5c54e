//! `svid-broker-bench`: benchmark svid-broker over its Unix socket. See the `svid_broker_bench` library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = svid_broker_bench::BenchArgs::parse();
    match svid_broker_bench::run(args).await {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("svid-broker-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
