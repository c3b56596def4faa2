use std::sync::Arc;
use std::time::Duration;

use corral_client::proto as pb;
use pb::user_service_server::UserService;

use crate::convert::{op_to_pb, token_to_pb, user_to_pb};
use crate::vms::Coordinator;

#[derive(Debug, Clone)]
pub struct UserApi(pub Arc<Coordinator>);

/// A token's lifetime from the API (0: it never expires).
fn lifetime(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

rpcs! { UserApi: UserService, |c, who, r|;
    create_user(pb::CreateUserRequest) -> pb::User = "CreateUser"
        => user_to_pb(&c.create_user(&who, &r.name, &r.role, &r.attributes).await?);
    create_token(pb::CreateTokenRequest) -> pb::Token = "CreateToken" => {
        let (token, t) = c.create_token(&who, &r.user, lifetime(r.expires_in_seconds)).await?;
        pb::Token { token, id: t.id().into(), expires_unix_ms: t.expires_ms.unwrap_or(0), user: t.user }
    };
    list_users(pb::ListUsersRequest) -> pb::ListUsersResponse = "ListUsers"
        => pb::ListUsersResponse { users: c.users(&who).await?.iter().map(user_to_pb).collect() };
    who_am_i(pb::WhoAmIRequest) -> pb::User = "WhoAmI" => user_to_pb(&who.0);
    update_user(pb::UpdateUserRequest) -> pb::User = "UpdateUser" => {
        let role = Some(r.role.as_str()).filter(|r| !r.is_empty());
        user_to_pb(&c.update_user(&who, &r.name, role, &r.attributes, r.replace_attributes).await?)
    };
    remove_user(pb::RemoveUserRequest) -> pb::RemoveUserResponse = "RemoveUser" => {
        let ops = c.remove_user(&who, &r.name, r.remove_vms).await?;
        pb::RemoveUserResponse { name: r.name, vm_removals: ops.iter().map(op_to_pb).collect() }
    };
    list_tokens(pb::ListTokensRequest) -> pb::ListTokensResponse = "ListTokens"
        => pb::ListTokensResponse { tokens: c.tokens_of(&who, &r.user).await?.iter().map(token_to_pb).collect() };
    revoke_token(pb::RevokeTokenRequest) -> pb::TokenInfo = "RevokeToken" => token_to_pb(&c.revoke_token(&who, &r.id).await?);
}
