//! Managing tokens (admin only): issue one for a role (and, for workers, its
//! queues), list them, revoke one. Only hashes are kept; a new token's secret
//! is in the answer to its creation and nowhere else.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sagaflow_engine::runtime::Runtime;

use crate::auth::{Auth, Need, Role, TokenEntry, Tokens};
use crate::problem::ApiError;
use crate::Tag;

/// A token to issue for a `role`: `admin`, `operator`, `client` or `worker`.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct NewToken {
    /// Who or what it is for, e.g. `billing-worker`.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    pub role: RoleName,
    /// For a worker: the only queues it may poll and answer (all if absent).
    #[oai(validator(max_items = 100))]
    pub queues: Option<Vec<String>>,
}

/// What a token may do: `admin`, `operator`, `client` or `worker`.
#[derive(poem_openapi::Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
pub enum RoleName {
    Admin,
    Operator,
    Client,
    Worker,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Admin => Role::Admin,
            RoleName::Operator => Role::Operator,
            RoleName::Client => Role::Client,
            RoleName::Worker => Role::Worker,
        }
    }
}

/// A token, without its secret.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: String,
    pub queues: Option<Vec<String>>,
    /// `api` for tokens issued here (revocable here), `config` for those set at start.
    pub source: String,
    pub created_at: Option<crate::types::Time>,
}

/// A token just issued: the only time its secret is shown.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct IssuedToken {
    #[oai(flatten)]
    pub info: TokenInfo,
    /// Send as `Authorization: Bearer ...`. Not stored; keep it safe.
    pub token: String,
}

impl From<TokenEntry> for TokenInfo {
    fn from(e: TokenEntry) -> Self {
        Self {
            id: e.id,
            name: e.name,
            role: e.role.name().into(),
            queues: e.queues,
            source: if e.managed { "api" } else { "config" }.into(),
            created_at: e.created_at.map(crate::types::Time),
        }
    }
}

#[derive(ApiResponse)]
pub enum IssueResponse {
    #[oai(status = 201)]
    Created(Json<IssuedToken>),
}

#[derive(ApiResponse)]
pub enum RevokeResponse {
    /// Revoked: the token is refused from now on.
    #[oai(status = 204)]
    Revoked,
}

pub struct TokensApi {
    pub rt: Runtime,
    pub tokens: Tokens,
}

#[OpenApi(prefix_path = "/tokens", tag = "Tag::Tokens")]
impl TokensApi {
    /// Issue a token.
    #[oai(path = "/", method = "post", operation_id = "issue_token")]
    async fn issue(&self, auth: Auth, body: Json<NewToken>) -> Result<IssueResponse, ApiError> {
        auth.require(Need::ManageTokens)?;
        let role: Role = body.0.role.into();
        if body.0.queues.is_some() && role != Role::Worker {
            return Err(ApiError::bad_request(
                "bad-token",
                "only a worker token names queues",
            ));
        }
        if body
            .0
            .queues
            .iter()
            .flatten()
            .any(|q| q.is_empty() || q.len() > 200)
        {
            return Err(ApiError::bad_request(
                "bad-token",
                "a queue name has 1 to 200 characters",
            ));
        }
        let (entry, token) = self
            .tokens
            .issue(
                self.rt.store().as_ref(),
                &body.0.name,
                role,
                body.0.queues,
                self.rt.now(),
            )
            .await
            .map_err(sagaflow_engine::runtime::RuntimeError::from)?;
        tracing::info!(token_id = %entry.id, role = role.name(), "token issued");
        Ok(IssueResponse::Created(Json(IssuedToken {
            info: entry.into(),
            token,
        })))
    }

    /// List the tokens (never their secrets).
    #[oai(path = "/", method = "get", operation_id = "list_tokens")]
    async fn list(&self, auth: Auth) -> Result<Json<Vec<TokenInfo>>, ApiError> {
        auth.require(Need::ManageTokens)?;
        Ok(Json(
            self.tokens
                .list()
                .into_iter()
                .map(TokenInfo::from)
                .collect(),
        ))
    }

    /// Revoke a token issued through the API.
    #[oai(path = "/:id", method = "delete", operation_id = "revoke_token")]
    async fn revoke(&self, auth: Auth, id: Path<String>) -> Result<RevokeResponse, ApiError> {
        auth.require(Need::ManageTokens)?;
        if id.0.starts_with("config-") {
            return Err(ApiError::configured_token());
        }
        let revoked = self
            .tokens
            .revoke(self.rt.store().as_ref(), &id, self.rt.now())
            .await
            .map_err(sagaflow_engine::runtime::RuntimeError::from)?;
        if !revoked {
            return Err(ApiError::unknown_token(&id));
        }
        tracing::info!(token_id = %id.0, "token revoked");
        Ok(RevokeResponse::Revoked)
    }
}
