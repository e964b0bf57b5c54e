//! The command line: one module per subcommand family.

pub mod api;
pub mod audit;
pub mod debug;
pub mod policy;
pub mod run;
pub mod task;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "svid-broker",
    version,
    about = "SPIFFE Workload API agent and per-task token broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start the daemon.
    Run(run::RunArgs),
    /// Talk to a running daemon over the Workload API.
    #[command(subcommand)]
    Api(api::ApiCommand),
    /// Diagnose attestation.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// Open tasks, mint task tokens, close, introspect.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Operator calls on the admin socket.
    #[command(subcommand)]
    Admin(task::AdminCommand),
    /// Check Cedar policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Verify the audit log's hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

/// Runs the parsed command line; the error is printed by `main`.
///
/// # Errors
/// Whatever the subcommand reports.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Api(cmd) => api::run(cmd).await,
        Command::Debug(cmd) => debug::run(cmd).await,
        Command::Task(cmd) => task::run(cmd).await,
        Command::Admin(cmd) => task::run_admin(cmd).await,
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
    }
}
