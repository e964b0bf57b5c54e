//! The table a busy node reaches when agents let their tasks lapse instead of closing them:
//! every slot of `[broker] max_open_tasks` taken by a task that has expired but that the
//! sweep keeps for its retention hour. An OpenTask must then decide, under the lock every
//! TaskBroker call takes, that none of them is open. The row "OpenTask, table full of expired
//! tasks" runs after the bench fills the table this way.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;

use super::calls::connect;
use super::daemon::{TASK_AUDIENCE, TASK_SCOPE};
use svid_broker::client::with_header;
use svid_broker::proto::svidbroker::v1 as broker;
use svid_broker::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;

/// Lifetime of the tasks that fill the table: the shortest a task can ask for, since a task
/// must outlive the shortest token (`[broker] min_token_ttl`, left at its default here).
pub const FILL_TASK_TTL_SECS: u32 = svid_broker::broker::settings::MIN_TOKEN_TTL.as_secs() as u32;
/// Connections the fill spreads its OpenTask calls over.
pub const FILL_CLIENTS: usize = 16;
/// Tasks a `--quick` run fills with: enough to exercise the row, not a full table.
pub const QUICK_FILL_TASKS: usize = 1_000;

/// What the fill did.
#[derive(Clone, Debug)]
pub struct Filled {
    /// Tasks opened (and lapsed) before the row.
    pub tasks: usize,
    pub took: Duration,
}

impl Filled {
    pub fn note(&self) -> String {
        format!(
            "OpenTask, table full of expired tasks: before its first round the bench opened {} tasks of {} s ({} connections, {:.1} s) against the bench daemon's max_open_tasks = {} and waited for them to expire; the sweep would keep them for an hour, and each call of the row forgets two of them (the first to expire) while more than the daemon's max_finished_tasks remain",
            crate::report::thousands(self.tasks),
            FILL_TASK_TTL_SECS,
            FILL_CLIENTS,
            self.took.as_secs_f64(),
            crate::report::thousands(crate::daemon::MAX_OPEN_TASKS)
        )
    }
}

/// Opens up to `tasks` tasks of [`FILL_TASK_TTL_SECS`] (fewer if the daemon reports its table
/// full first) and returns once all of them have expired.
///
/// # Errors
/// A connection or an OpenTask fails other than with the table full.
pub async fn fill(socket: &Path, tasks: usize) -> Result<Filled, String> {
    let started = Instant::now();
    let request = broker::OpenTaskRequest {
        purpose: "benchmark: lapses unclosed".into(),
        audiences: vec![TASK_AUDIENCE.into()],
        scopes: vec![TASK_SCOPE.into()],
        ttl_seconds: FILL_TASK_TTL_SECS,
        ..Default::default()
    };
    let (opened, _) = open_until_refused(socket, &request, tasks).await?;
    let took = started.elapsed();
    // The last task opened lapses FILL_TASK_TTL_SECS after it was opened, at a whole second.
    tokio::time::sleep(Duration::from_secs(u64::from(FILL_TASK_TTL_SECS) + 1)).await;
    Ok(Filled {
        tasks: opened,
        took,
    })
}

/// Opens up to `tasks` tasks like `request` over [`FILL_CLIENTS`] connections, each connection
/// stopping at its first `RESOURCE_EXHAUSTED`. Returns how many opened and the message of a
/// refusal that stopped one, if any did.
///
/// # Errors
/// A connection or an OpenTask fails other than with `RESOURCE_EXHAUSTED`.
pub async fn open_until_refused(
    socket: &Path,
    request: &broker::OpenTaskRequest,
    tasks: usize,
) -> Result<(usize, Option<String>), String> {
    let mut openers = Vec::with_capacity(FILL_CLIENTS);
    for i in 0..FILL_CLIENTS {
        let share = tasks / FILL_CLIENTS + usize::from(i < tasks % FILL_CLIENTS);
        let channel = connect(socket).await.map_err(|e| format!("connect: {e}"))?;
        let mut client = TaskBrokerClient::new(with_header(channel));
        let request = request.clone();
        openers.push(tokio::spawn(async move {
            let mut opened = 0;
            for _ in 0..share {
                match client.open_task(request.clone()).await {
                    Ok(_) => opened += 1,
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        return Ok((opened, Some(s.message().to_string())))
                    }
                    Err(s) => return Err(format!("OpenTask: {s}")),
                }
            }
            Ok((opened, None))
        }));
    }
    let (mut opened, mut refused) = (0, None);
    for o in openers {
        let (n, why) = o.await.map_err(|e| format!("opener: {e}"))??;
        opened += n;
        refused = refused.or(why);
    }
    Ok((opened, refused))
}
