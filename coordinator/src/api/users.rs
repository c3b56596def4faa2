use std::sync::Arc;

use corral_client::proto as pb;
use pb::user_service_server::UserService;

use crate::convert::user_to_pb;
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct UserApi(pub Arc<Coordinator>);

rpcs! { UserApi: UserService, |c, who, r|;
    create_user(pb::CreateUserRequest) -> pb::User = "CreateUser"
        => user_to_pb(&c.create_user(&who, &r.name, &r.role, &r.attributes).await?);
    create_token(pb::CreateTokenRequest) -> pb::Token = "CreateToken"
        => pb::Token { token: c.create_token(&who, &r.user).await?, user: r.user };
    list_users(pb::ListUsersRequest) -> pb::ListUsersResponse = "ListUsers"
        => pb::ListUsersResponse { users: c.users(&who).await?.iter().map(user_to_pb).collect() };
    who_am_i(pb::WhoAmIRequest) -> pb::User = "WhoAmI" => user_to_pb(&who.0);
}
