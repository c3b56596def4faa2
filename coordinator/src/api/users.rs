use std::collections::HashMap;
use std::sync::Arc;

use corral_client::proto as pb;
use pb::user_service_server::UserService;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::error::CoordError;
use crate::store::UserRecord;
use crate::vms::{check_name, Coordinator};

#[derive(Debug, Clone)]
pub struct UserApi(pub Arc<Coordinator>);

fn to_pb(u: &UserRecord) -> pb::User {
    let attributes: HashMap<String, String> = u
        .attributes
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    pb::User {
        name: u.name.clone(),
        role: u.role.clone(),
        attributes,
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateUser"))]
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        caller(&req)?.require_admin()?;
        let r = req.into_inner();
        check_name("user", &r.name)?;
        corral_proto::rules::labels(&r.attributes).map_err(CoordError::from)?;
        if r.role != "admin" && r.role != "user" {
            return Err(
                CoordError::Invalid(format!("role {:?} is not admin or user", r.role)).into(),
            );
        }
        let user = UserRecord {
            name: r.name,
            role: r.role,
            attributes: serde_json::json!(r.attributes),
        };
        let u = user.clone();
        self.0.blocking(move |s| s.insert_user(&u)).await?;
        self.0.auth.update_user(&user);
        Ok(Response::new(to_pb(&user)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateToken"))]
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        caller(&req)?.require_admin()?;
        let name = req.into_inner().user;
        check_name("user", &name)?;
        let n = name.clone();
        let user = self
            .0
            .blocking(move |s| s.users())
            .await?
            .into_iter()
            .find(|u| u.name == n)
            .ok_or_else(|| CoordError::NotFound(format!("user {name} not found")))?;
        let token = crate::auth::new_token();
        let h = crate::auth::hash(&token);
        let (who, h2) = (user.name.clone(), h.clone());
        self.0
            .db
            .call(move |s| s.add_token(&who, &h2))
            .await
            .map_err(CoordError::from)?;
        self.0.auth.remember(h, user)?;
        Ok(Response::new(pb::Token { user: name, token }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListUsers"))]
    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        caller(&req)?.require_admin()?;
        let users = self.0.blocking(|s| s.users()).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(to_pb).collect(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Ok(Response::new(to_pb(&caller(&req)?.0)))
    }
}
