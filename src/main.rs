//! `svid-broker`: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Behave like other Unix tools when output is piped into `head`: end quietly on a closed
    // pipe instead of panicking inside println!. The daemon never writes to a pipe it reads
    // back, so this changes nothing for `run`.
    // SAFETY: setting a signal disposition to the default before any thread writes output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = svid_broker::cli::Cli::parse();
    match svid_broker::cli::dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svid-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
