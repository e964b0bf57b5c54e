//! `svid-broker-bench`: benchmark svid-broker over its Unix socket. See `svid_broker::bench`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = svid_broker::bench::BenchArgs::parse();
    match svid_broker::bench::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svid-broker-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
