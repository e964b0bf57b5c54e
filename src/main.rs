//! `svid-broker`: parse the command line and hand over to the library.

use clap::Parser;

/// See Cargo.toml: the allocator is part of the request path's cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = svid_broker::cli::Cli::parse();
    if !matches!(cli.command, svid_broker::cli::Command::Run(_)) {
        // Client commands behave like other Unix tools when piped into `head`: end quietly
        // on a closed pipe instead of panicking inside println!. Never for the daemon, whose
        // sockets must survive peers that hang up mid-write.
        // SAFETY: setting a signal disposition before any output is written.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match svid_broker::cli::dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svid-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
