//! The gRPC faces of the broker: `TaskBroker` on the Workload API socket (and on the admin
//! socket, where the caller is an operator), `Admin` on the admin socket only.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Broker, Who};
use crate::proto::svidbroker::v1 as pb;
use crate::proto::svidbroker::v1::admin_server::Admin;
use crate::proto::svidbroker::v1::task_broker_server::TaskBroker;
use crate::server::caller::CallerResolver;
use crate::telemetry::Metrics;

pub struct TaskBrokerService {
    broker: Arc<Broker>,
    resolver: Arc<CallerResolver>,
    metrics: Arc<Metrics>,
    /// Served on the admin socket: the caller is an operator.
    admin: bool,
}

impl TaskBrokerService {
    pub fn new(
        broker: Arc<Broker>,
        resolver: Arc<CallerResolver>,
        metrics: Arc<Metrics>,
        admin: bool,
    ) -> Self {
        Self {
            broker,
            resolver,
            metrics,
            admin,
        }
    }

    async fn who<T>(&self, req: &Request<T>) -> Result<Who, Status> {
        if self.admin {
            return Ok(Who::Admin);
        }
        Ok(Who::Workload(self.resolver.resolve(req).await?))
    }

    async fn workload<T>(
        &self,
        req: &Request<T>,
    ) -> Result<Arc<crate::server::caller::Caller>, Status> {
        match self.who(req).await? {
            Who::Workload(c) => Ok(c),
            Who::Admin => Err(Status::failed_precondition(
                "operators cannot open tasks or mint tokens: only attested workloads can",
            )),
        }
    }

    fn record<T>(&self, rpc: &'static str, r: Result<T, Status>) -> Result<Response<T>, Status> {
        self.metrics.observe_request(
            rpc,
            r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        r.map(Response::new)
    }
}

#[tonic::async_trait]
impl TaskBroker for TaskBrokerService {
    async fn open_task(
        &self,
        request: Request<pb::OpenTaskRequest>,
    ) -> Result<Response<pb::OpenTaskResponse>, Status> {
        let r = async {
            let caller = self.workload(&request).await?;
            self.broker.open_task(&caller, request.into_inner()).await
        }
        .await;
        self.record("OpenTask", r)
    }

    async fn mint_task_token(
        &self,
        request: Request<pb::MintTaskTokenRequest>,
    ) -> Result<Response<pb::MintTaskTokenResponse>, Status> {
        let r = async {
            let caller = self.workload(&request).await?;
            self.broker.mint(&caller, request.into_inner()).await
        }
        .await;
        self.record("MintTaskToken", r)
    }

    async fn close_task(
        &self,
        request: Request<pb::CloseTaskRequest>,
    ) -> Result<Response<pb::CloseTaskResponse>, Status> {
        let r = async {
            let who = self.who(&request).await?;
            let reason = match who {
                Who::Admin => "closed by an operator",
                Who::Workload(_) => "closed by its owner",
            };
            self.broker
                .close(&who, &request.get_ref().task_id, reason)
                .await
        }
        .await;
        self.record("CloseTask", r)
    }

    async fn introspect_token(
        &self,
        request: Request<pb::IntrospectTokenRequest>,
    ) -> Result<Response<pb::IntrospectTokenResponse>, Status> {
        let r = async {
            let who = self.who(&request).await?;
            self.broker.introspect(&who, &request.get_ref().token).await
        }
        .await;
        self.record("IntrospectToken", r)
    }
}

pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.broker.list_page(request.get_ref()).map(Response::new)
    }

    async fn revoke_task(
        &self,
        request: Request<pb::RevokeTaskRequest>,
    ) -> Result<Response<pb::RevokeTaskResponse>, Status> {
        let req = request.into_inner();
        let reason = if req.reason.is_empty() {
            "revoked by an operator"
        } else {
            &req.reason
        };
        let out = self.broker.close(&Who::Admin, &req.task_id, reason).await?;
        Ok(Response::new(pb::RevokeTaskResponse {
            closed_task_ids: out.closed_task_ids,
            revoked_tokens: out.revoked_tokens,
        }))
    }

    async fn reload_policy(
        &self,
        _request: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let policy_ids = self.broker.reload_policy().await?;
        Ok(Response::new(pb::ReloadPolicyResponse { policy_ids }))
    }
}
