use std::sync::Arc;

use corral_client::proto as pb;
use pb::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::convert::user_to_pb;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct UserApi(pub Arc<Coordinator>);

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateUser"))]
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let u = self
            .0
            .create_user(&who, &r.name, &r.role, &r.attributes)
            .await?;
        Ok(Response::new(user_to_pb(&u)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateToken"))]
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let who = caller(&req)?;
        let user = req.into_inner().user;
        let token = self.0.create_token(&who, &user).await?;
        Ok(Response::new(pb::Token { user, token }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListUsers"))]
    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let users = self.0.users(&caller(&req)?).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Ok(Response::new(user_to_pb(&caller(&req)?.0)))
    }
}
