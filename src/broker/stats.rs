//! The task table's fill, for the metrics endpoint.

use super::Broker;
use crate::telemetry::{TableFill, TaskTableStats};

impl TaskTableStats for Broker {
    fn table_fill(&self) -> TableFill {
        let bounds = self.config.table_bounds();
        let now = self.clock.unix_seconds();
        let mut table = self.lock();
        let open_tasks = table.open_count(now);
        let largest = table.largest_owner(now);
        TableFill {
            open_tasks,
            max_open_tasks: bounds.open_tasks,
            ended_tasks: table.task_count().saturating_sub(open_tasks),
            max_ended_tasks: bounds.finished_tasks,
            live_tokens: table.tokens.count(),
            max_live_tokens: bounds.live_tokens,
            task_bytes: table.bytes(),
            max_task_bytes: bounds.task_bytes,
            owners: table.owner_count(),
            largest_owner_open_tasks: largest.tasks,
            max_owner_open_tasks: bounds.owner_open_tasks,
            largest_owner_bytes: largest.bytes,
            max_owner_bytes: bounds.owner_task_bytes,
            largest_owner_live_tokens: table.tokens.largest_owner(),
            max_owner_live_tokens: bounds.owner_live_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{caller, kit, mint_request, open_task, AGENT, TOOL};
    use super::super::who::Who;
    use super::*;

    #[tokio::test]
    async fn the_fill_follows_opens_mints_and_closes() {
        let k = kit();
        let empty = k.broker.table_fill();
        assert_eq!(
            (
                empty.open_tasks,
                empty.ended_tasks,
                empty.live_tokens,
                empty.task_bytes
            ),
            (0, 0, 0, 0)
        );
        let task = open_task(&k).await;
        k.broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &["read"]))
            .await
            .unwrap();
        let busy = k.broker.table_fill();
        assert_eq!(
            (busy.open_tasks, busy.ended_tasks, busy.live_tokens),
            (1, 0, 1)
        );
        assert_eq!(
            (
                busy.owners,
                busy.largest_owner_open_tasks,
                busy.largest_owner_live_tokens
            ),
            (1, 1, 1)
        );
        assert_eq!(busy.largest_owner_bytes, busy.task_bytes, "one owner");
        assert!(busy.task_bytes > 2048, "{busy:?}");
        assert_eq!(busy.max_task_bytes, k.broker.config.max_task_bytes);

        k.broker
            .close(&Who::Admin, &task.task_id, "done")
            .await
            .unwrap();
        let done = k.broker.table_fill();
        assert_eq!(
            (done.open_tasks, done.ended_tasks, done.live_tokens),
            (0, 1, 0)
        );
        assert_eq!(
            (
                done.owners,
                done.largest_owner_open_tasks,
                done.largest_owner_bytes,
                done.largest_owner_live_tokens
            ),
            (0, 0, 0, 0)
        );
    }
}
