//! CloseTask and Admin.RevokeTask: a task and its subtree close together, revoking their
//! tokens.

use tonic::Status;

use super::limits;
use super::who::Who;
use super::Broker;
use crate::audit::AuditEvent;
use crate::proto::svidbroker::v1 as pb;

impl Broker {
    /// CloseTask / Admin.RevokeTask: closes the task and its descendants, revoking their
    /// tokens.
    ///
    /// # Errors
    /// Not the owner (workloads), or no such task.
    pub async fn close(
        &self,
        who: &Who,
        task_id: &str,
        reason: &str,
    ) -> Result<pb::CloseTaskResponse, Status> {
        limits::task_id(task_id)?;
        if reason.len() > limits::MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason longer than {} bytes",
                limits::MAX_REASON_BYTES
            )));
        }
        {
            let table = self.lock();
            let task = table.get(task_id);
            let allowed = match (who, task) {
                (Who::Admin, Some(_)) => true,
                (Who::Workload(_), Some(t)) => who.holds(&t.owner),
                _ => false,
            };
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "task {task_id} not found or not yours"
                )));
            }
        }
        let by = who.label();
        self.audit(AuditEvent::TaskClose {
            task_id: task_id.to_string(),
            by: by.clone(),
            reason: if reason.is_empty() {
                "closed".into()
            } else {
                reason.to_string()
            },
        })
        .await?;
        let (closed, revoked) = self.lock().close(task_id, self.clock.unix_seconds());
        // Every descendant's revocation in one batch: closing a tree waits for the disk twice
        // (the close before it takes effect, the revocations after), not once per task, however
        // wide the tree (the writer never splits one call's records between syncs).
        let revocations: Vec<AuditEvent> = closed
            .iter()
            .filter(|c| c.as_str() != task_id)
            .map(|child| AuditEvent::Revocation {
                task_id: child.clone(),
                reason: "an ancestor task was closed".into(),
                cause_task_id: Some(task_id.to_string()),
            })
            .collect();
        self.audit_all(revocations).await?;
        Ok(pb::CloseTaskResponse {
            closed_task_ids: closed,
            revoked_tokens: revoked,
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::super::testkit::{
        caller, kinds, kit, kit_with, mint_request, open_request, open_task, AGENT, OTHER, TOOL,
    };
    use super::super::BrokerConfig;
    use super::Who;

    #[tokio::test]
    async fn only_the_owner_or_an_admin_closes_a_task() {
        let k = kit();
        let task = open_task(&k).await;
        let err = k
            .broker
            .close(&Who::Workload(caller(OTHER)), &task.task_id, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let resp = k
            .broker
            .close(&Who::Workload(caller(AGENT)), &task.task_id, "")
            .await
            .unwrap();
        assert_eq!(resp.closed_task_ids, vec![task.task_id.clone()]);
        assert_eq!(kinds(&k.sink.records()).last().unwrap(), "task_close");
    }

    #[tokio::test]
    async fn closing_a_tree_writes_its_revocations_together() {
        let k = kit();
        let root = k
            .broker
            .open_task(
                &caller(AGENT),
                super::super::testkit::open_request(&[OTHER], &[], 300),
            )
            .await
            .unwrap();
        let token = k
            .broker
            .mint(&caller(AGENT), mint_request(&root.task_id, OTHER, &[]))
            .await
            .unwrap();
        for _ in 0..3 {
            let mut req = super::super::testkit::open_request(&[OTHER], &[], 60);
            req.parent_token = token.token.clone();
            k.broker.open_task(&caller(OTHER), req).await.unwrap();
        }
        let (appends, records) = (k.sink.appends(), k.sink.records().len());
        let resp = k
            .broker
            .close(&Who::Workload(caller(AGENT)), &root.task_id, "")
            .await
            .unwrap();
        assert_eq!(resp.closed_task_ids.len(), 4);
        assert_eq!(
            kinds(&k.sink.records()[records..]),
            ["task_close", "revocation", "revocation", "revocation"]
        );
        assert_eq!(
            k.sink.appends(),
            appends + 2,
            "the close, then the revocations"
        );
    }

    #[tokio::test]
    async fn a_closed_task_mints_nothing_more() {
        let k = kit();
        let task = open_task(&k).await;
        let a = caller(AGENT);
        k.broker
            .mint(&a, mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap();
        let resp = k
            .broker
            .close(&Who::Workload(a.clone()), &task.task_id, "done")
            .await
            .unwrap();
        assert_eq!(resp.revoked_tokens, 1);
        let err = k
            .broker
            .mint(&a, mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("closed"), "{err:?}");
    }

    #[tokio::test]
    async fn an_over_long_reason_is_refused_before_anything_is_recorded() {
        let k = kit();
        let task = open_task(&k).await;
        let before = k.sink.records().len();
        let reason = "x".repeat(super::limits::MAX_REASON_BYTES + 1);
        let err = k
            .broker
            .close(&Who::Admin, &task.task_id, &reason)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(k.sink.records().len(), before);
    }

    /// `max_finished_tasks` through OpenTask and CloseTask: a workload that opens and
    /// closes in a loop leaves at most `max_finished_tasks` closed tasks in the table, the
    /// ones closed last.
    #[tokio::test]
    async fn an_open_close_loop_keeps_the_table_at_its_bound() {
        let k = kit_with(BrokerConfig {
            max_open_tasks: 2,
            max_finished_tasks: 3,
            ..BrokerConfig::default()
        });
        let agent = caller(AGENT);
        let mut ids = Vec::new();
        for _ in 0..20 {
            let t = k
                .broker
                .open_task(&agent, open_request(&[TOOL], &[], 600))
                .await
                .unwrap();
            k.broker
                .close(&Who::Workload(agent.clone()), &t.task_id, "")
                .await
                .unwrap();
            ids.push(t.task_id);
            k.clock.advance(std::time::Duration::from_secs(1));
            let held = k.broker.lock().task_count();
            assert!(held <= 3, "{held} tasks held");
        }
        let mut listed: Vec<String> = k.broker.list(true).into_iter().map(|t| t.task_id).collect();
        listed.sort();
        let mut last: Vec<String> = ids[ids.len() - 3..].to_vec();
        last.sort();
        assert_eq!(listed, last, "the three closed last are kept");
    }

    /// `max_finished_tasks_per_owner` through OpenTask and CloseTask: a workload opening and
    /// closing tasks in a loop forgets its own history past its share, and the tasks another
    /// workload closed before the loop are still listed after it.
    #[tokio::test]
    async fn one_workloads_loop_keeps_the_others_history() {
        let k = kit_with(BrokerConfig {
            max_open_tasks: 4,
            max_finished_tasks: 4,
            max_finished_tasks_per_owner: Some(2),
            ..BrokerConfig::default()
        });
        let cycle = |who: &'static str| {
            let k = &k;
            async move {
                let c = caller(who);
                let t = k
                    .broker
                    .open_task(&c, open_request(&[TOOL], &[], 600))
                    .await
                    .unwrap();
                k.broker
                    .close(&Who::Workload(c), &t.task_id, "")
                    .await
                    .unwrap();
                k.clock.advance(std::time::Duration::from_secs(1));
                t.task_id
            }
        };
        let mut others = vec![cycle(OTHER).await, cycle(OTHER).await];
        let mut agents = Vec::new();
        for _ in 0..20 {
            agents.push(cycle(AGENT).await);
        }
        let mut listed: Vec<String> = k.broker.list(true).into_iter().map(|t| t.task_id).collect();
        listed.sort();
        others.extend_from_slice(&agents[agents.len() - 2..]);
        others.sort();
        assert_eq!(listed, others, "the other's two and the loop's last two");
    }
}
