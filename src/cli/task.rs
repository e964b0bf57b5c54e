//! `svid-broker task …` and `svid-broker admin …`: the TaskBroker and Admin services from a
//! shell.

use std::path::PathBuf;

use crate::cli::api::{struct_to_json, SocketArgs};
use crate::client::{connect, with_header};
use crate::proto::svidbroker::v1 as pb;
use crate::proto::svidbroker::v1::admin_client::AdminClient;
use crate::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;

#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Open a task: state the purpose and what you need.
    Open {
        #[arg(long)]
        purpose: String,
        /// An audience the task needs tokens for (repeat for several).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// A scope (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Task lifetime, e.g. "10m" (default: broker.default_task_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// A delegation token from another agent, addressed to this caller.
        #[arg(long)]
        parent_token: Option<String>,
        /// A user's token from a configured OIDC issuer.
        #[arg(long)]
        subject_token: Option<String>,
        /// Which of the caller's identities opens the task.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Print only the task id.
        #[arg(long)]
        id_only: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Mint a token for one audience of a task.
    Token {
        #[arg(long)]
        task: String,
        #[arg(long)]
        audience: String,
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Active for this many introspections, then used up (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// Print only the token.
        #[arg(long)]
        token_only: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Close a task and every task delegated from it.
    Close {
        #[arg(long)]
        task: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Ask whether a token is still active (as its audience).
    Introspect {
        #[arg(long)]
        token: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdminSocket {
    /// The admin socket (mode 0600).
    #[arg(long, default_value = "/tmp/svid-broker/admin.sock")]
    pub admin_socket: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// List tasks.
    Tasks {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        socket: AdminSocket,
    },
    /// Revoke a task and its descendants.
    Revoke {
        #[arg(long)]
        task: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        socket: AdminSocket,
    },
    /// Reload the policy file.
    ReloadPolicy {
        #[command(flatten)]
        socket: AdminSocket,
    },
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn broker(
    socket: &SocketArgs,
) -> anyhow::Result<TaskBrokerClient<crate::client::HeaderChannel>> {
    let path = crate::client::socket_path(socket.socket.as_deref(), socket.env_socket.as_deref())?;
    Ok(TaskBrokerClient::new(with_header(connect(path).await?)))
}

fn secs(d: Option<std::time::Duration>) -> anyhow::Result<u32> {
    d.map_or(Ok(0), |d| {
        u32::try_from(d.as_secs()).map_err(|_| anyhow::anyhow!("ttl too large"))
    })
}

/// # Errors
/// Connection failures and error statuses.
pub async fn run(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::Open {
            purpose,
            audiences,
            scopes,
            ttl,
            parent_token,
            subject_token,
            spiffe_id,
            id_only,
            socket,
        } => {
            let r = broker(&socket)
                .await?
                .open_task(pb::OpenTaskRequest {
                    purpose,
                    audiences,
                    scopes,
                    ttl_seconds: secs(ttl)?,
                    parent_token: parent_token.unwrap_or_default(),
                    subject_token: subject_token.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if id_only {
                println!("{}", r.task_id);
                return Ok(());
            }
            let grants: serde_json::Map<String, serde_json::Value> = r
                .grants
                .iter()
                .map(|g| (g.audience.clone(), serde_json::json!(g.scopes)))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "task_id": r.task_id,
                    "spiffe_id": r.spiffe_id,
                    "grants": grants,
                    "expires_at": r.expires_at,
                    "narrowed": r.narrowed,
                    "delegation_depth": r.delegation_depth,
                    "parent_task_id": r.parent_task_id,
                }))?
            );
        }
        TaskCommand::Token {
            task,
            audience,
            scopes,
            ttl,
            max_uses,
            token_only,
            socket,
        } => {
            let r = broker(&socket)
                .await?
                .mint_task_token(pb::MintTaskTokenRequest {
                    task_id: task,
                    audience,
                    scopes,
                    ttl_seconds: secs(ttl)?,
                    max_uses,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if token_only {
                println!("{}", r.token);
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "token": r.token, "jti": r.jti, "expires_at": r.expires_at,
                        "audience": r.audience, "scopes": r.scopes,
                    }))?
                );
            }
        }
        TaskCommand::Close { task, socket } => {
            let r = broker(&socket)
                .await?
                .close_task(pb::CloseTaskRequest { task_id: task })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "closed {} task(s): {}; {} token(s) revoked",
                r.closed_task_ids.len(),
                r.closed_task_ids.join(", "),
                r.revoked_tokens
            );
        }
        TaskCommand::Introspect { token, socket } => {
            let r = broker(&socket)
                .await?
                .introspect_token(pb::IntrospectTokenRequest { token })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out = r
                .claims
                .as_ref()
                .map(struct_to_json)
                .unwrap_or_else(|| serde_json::json!({}));
            out["active"] = serde_json::json!(r.active);
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

/// # Errors
/// Connection failures and error statuses.
pub async fn run_admin(cmd: AdminCommand) -> anyhow::Result<()> {
    let path = match &cmd {
        AdminCommand::Tasks { socket, .. }
        | AdminCommand::Revoke { socket, .. }
        | AdminCommand::ReloadPolicy { socket } => socket.admin_socket.clone(),
    };
    let mut client = AdminClient::new(connect(path).await?);
    match cmd {
        AdminCommand::Tasks { all, .. } => {
            let mut req = pb::ListTasksRequest {
                include_closed: all,
                ..Default::default()
            };
            // Page after page, each printed as it arrives.
            loop {
                let r = client
                    .list_tasks(req.clone())
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for t in r.tasks {
                    println!(
                        "{}  {:8}  {}  depth={} tokens={} audiences={} expires_at={}",
                        t.task_id,
                        t.state,
                        t.spiffe_id,
                        t.delegation_depth,
                        t.tokens_issued,
                        t.audiences.join(","),
                        t.expires_at
                    );
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                req.page_token = r.next_page_token;
            }
        }
        AdminCommand::Revoke { task, reason, .. } => {
            let r = client
                .revoke_task(pb::RevokeTaskRequest {
                    task_id: task,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "revoked {} task(s): {}; {} token(s)",
                r.closed_task_ids.len(),
                r.closed_task_ids.join(", "),
                r.revoked_tokens
            );
        }
        AdminCommand::ReloadPolicy { .. } => {
            let r = client
                .reload_policy(pb::ReloadPolicyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("policy reloaded: {}", r.policy_ids.join(", "));
        }
    }
    Ok(())
}
