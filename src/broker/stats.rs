//! The task table's fill, and its refusals, for the metrics endpoint.

use tonic::Status;

use super::table::TableError;
use super::Broker;
use crate::telemetry::{TableFill, TaskTableStats};

impl Broker {
    /// The status for a call refused at one of the table's bounds, counted by the key.
    pub(super) fn refused_at(&self, e: &TableError) -> Status {
        self.metrics.task_table_refused(e.bound());
        Status::resource_exhausted(e.to_string())
    }
}

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
            largest_owner_ended_tasks: table.largest_owner_ended(now),
            max_owner_ended_tasks: bounds.owner_finished_tasks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{
        caller, kit, kit_with, mint_request, open_request, open_task, AGENT, TOOL,
    };
    use super::super::who::Who;
    use super::super::BrokerConfig;
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
        assert_eq!(busy.largest_owner_ended_tasks, 0);
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
        assert_eq!(
            (done.largest_owner_ended_tasks, done.max_owner_ended_tasks),
            (1, k.broker.config.table_bounds().owner_finished_tasks),
            "the closed task is its owner's ended task"
        );
    }

    /// Each refusal at a bound of the table is counted under its `[broker]` key: an
    /// operator sees a workload at its share, and which share, at the metrics endpoint.
    #[tokio::test]
    async fn refusals_are_counted_by_the_key_that_refused() {
        let k = kit_with(BrokerConfig {
            max_open_tasks_per_owner: Some(1),
            max_live_tokens_per_owner: Some(1),
            ..BrokerConfig::default()
        });
        let agent = caller(AGENT);
        let task = open_task(&k).await;
        for _ in 0..2 {
            let err = k
                .broker
                .open_task(&agent, open_request(&[TOOL], &[], 600))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        }
        k.broker
            .mint(&agent, mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap();
        k.broker
            .mint(&agent, mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        let text = k.broker.metrics.render();
        for line in [
            "svid_broker_task_table_refused_total{bound=\"max_open_tasks_per_owner\"} 2\n",
            "svid_broker_task_table_refused_total{bound=\"max_live_tokens_per_owner\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("bound=\"max_open_tasks\""),
            "no other bound refused: {text}"
        );
    }

    /// Every refusal names the key its counter is labelled with.
    #[test]
    fn each_bound_is_the_key_its_message_names() {
        let owner = || "spiffe://example.org/a".to_string();
        for e in [
            TableError::Full(1),
            TableError::TooManyTokens(1),
            TableError::TooManyBytes { held: 1, limit: 1 },
            TableError::OwnerFull {
                owner: owner(),
                open: 1,
                limit: 1,
            },
            TableError::OwnerTooManyBytes {
                owner: owner(),
                held: 1,
                limit: 1,
            },
            TableError::OwnerTooManyTokens {
                owner: owner(),
                held: 1,
                limit: 1,
            },
        ] {
            let key = format!("broker.{}", e.bound());
            let message = e.to_string();
            // The key itself, not a longer key it begins (max_open_tasks in
            // max_open_tasks_per_owner).
            let named = message.match_indices(&key).any(|(at, _)| {
                !message[at + key.len()..]
                    .starts_with(|c: char| c == '_' || c.is_ascii_alphanumeric())
            });
            assert!(named, "{message:?} does not name {key}");
        }
    }
}
