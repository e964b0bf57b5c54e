//! How full the TaskBroker's task table is, against each of its bounds, read at each scrape:
//! an operator sees a bound coming before OpenTask or MintTaskToken is refused at it.

use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::metrics::encode_count_gauges;

/// What the table holds now, and what it may hold (`[broker] max_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFill {
    pub open_tasks: usize,
    pub max_open_tasks: usize,
    /// Tasks closed or expired that the table still keeps.
    pub ended_tasks: usize,
    pub max_ended_tasks: usize,
    pub live_tokens: usize,
    pub max_live_tokens: usize,
    /// What its tasks weigh, as `max_task_bytes` counts it.
    pub task_bytes: usize,
    pub max_task_bytes: usize,
    /// Owners (SPIFFE IDs) with a task not closed.
    pub owners: usize,
    /// The most open tasks one owner has, and its share (`max_open_tasks_per_owner`).
    pub largest_owner_open_tasks: usize,
    pub max_owner_open_tasks: usize,
    /// The most one owner's open tasks weigh, and its share (`max_task_bytes_per_owner`).
    pub largest_owner_bytes: usize,
    pub max_owner_bytes: usize,
    /// The most live tokens one owner's tasks hold, and its share (`max_live_tokens_per_owner`).
    pub largest_owner_live_tokens: usize,
    pub max_owner_live_tokens: usize,
    /// The most ended tasks one owner has kept, and its share of the room for them
    /// (`max_finished_tasks_per_owner`).
    pub largest_owner_ended_tasks: usize,
    pub max_owner_ended_tasks: usize,
}

/// Defined here, implemented by the broker, so metrics sit below it instead of importing it.
pub trait TaskTableStats: Send + Sync {
    fn table_fill(&self) -> TableFill;
}

/// Where the collector finds the table: set once a broker exists. Weak, because the broker
/// holds the metrics.
pub(super) type Slot = Arc<OnceLock<Weak<dyn TaskTableStats>>>;

/// Nothing until a table is exported (a daemon's Workload API alone has none), or once its
/// broker is gone.
pub(super) struct TaskTableCollector(pub(super) Slot);

impl std::fmt::Debug for TaskTableCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTableCollector").finish_non_exhaustive()
    }
}

impl Collector for TaskTableCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(table) = self.0.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let f = table.table_fill();
        let gauges = [
            ("svid_broker_task_table_open_tasks", "Tasks open now", f.open_tasks),
            (
                "svid_broker_task_table_open_tasks_max",
                "broker.max_open_tasks: OpenTask is refused at it",
                f.max_open_tasks,
            ),
            (
                "svid_broker_task_table_ended_tasks",
                "Tasks closed or expired that the table still keeps for introspection and listing",
                f.ended_tasks,
            ),
            (
                "svid_broker_task_table_ended_tasks_max",
                "broker.max_finished_tasks: the task that ended first is forgotten at it",
                f.max_ended_tasks,
            ),
            (
                "svid_broker_task_table_live_tokens",
                "Task tokens remembered: each until it expires (the sweep forgets it within 30 s) or its task closes",
                f.live_tokens,
            ),
            (
                "svid_broker_task_table_live_tokens_max",
                "broker.max_live_tokens: MintTaskToken is refused at it",
                f.max_live_tokens,
            ),
            (
                "svid_broker_task_table_bytes",
                "What the table's tasks weigh, as broker.max_task_bytes counts it",
                f.task_bytes,
            ),
            (
                "svid_broker_task_table_bytes_max",
                "broker.max_task_bytes: ended tasks are forgotten, then OpenTask refused, at it",
                f.max_task_bytes,
            ),
            (
                "svid_broker_task_table_owners",
                "Workloads (SPIFFE IDs) with a task not closed",
                f.owners,
            ),
            (
                "svid_broker_task_table_largest_owner_open_tasks",
                "The most tasks one workload has open",
                f.largest_owner_open_tasks,
            ),
            (
                "svid_broker_task_table_owner_open_tasks_max",
                "broker.max_open_tasks_per_owner: a workload's OpenTask is refused at it",
                f.max_owner_open_tasks,
            ),
            (
                "svid_broker_task_table_largest_owner_bytes",
                "The most one workload's open tasks weigh, as broker.max_task_bytes_per_owner counts it",
                f.largest_owner_bytes,
            ),
            (
                "svid_broker_task_table_owner_bytes_max",
                "broker.max_task_bytes_per_owner: a workload's OpenTask is refused at it",
                f.max_owner_bytes,
            ),
            (
                "svid_broker_task_table_largest_owner_live_tokens",
                "The most live task tokens one workload's tasks hold",
                f.largest_owner_live_tokens,
            ),
            (
                "svid_broker_task_table_owner_live_tokens_max",
                "broker.max_live_tokens_per_owner: a workload's MintTaskToken is refused at it",
                f.max_owner_live_tokens,
            ),
            (
                "svid_broker_task_table_largest_owner_ended_tasks",
                "The most ended tasks one workload has kept in the table",
                f.largest_owner_ended_tasks,
            ),
            (
                "svid_broker_task_table_owner_ended_tasks_max",
                "broker.max_finished_tasks_per_owner: past it, room for a workload's new tasks is made from its own ended tasks",
                f.max_owner_ended_tasks,
            ),
        ];
        encode_count_gauges(&mut encoder, &gauges)
    }
}
