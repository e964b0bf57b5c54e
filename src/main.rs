//! `svid-broker`: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = svid_broker::cli::Cli::parse();
    match svid_broker::cli::dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svid-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
