//! Bearer tokens with roles. Tokens are kept only as sha256 hashes; a request
//! without a valid token gets 401, one whose role may not do the operation 403.
//!
//! | role | may |
//! | --- | --- |
//! | admin | everything, and publish workflows |
//! | operator | read, start, signal, cancel, move timers |
//! | client | read and start |
//! | worker | take and answer tasks |

use std::sync::Arc;

use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::Json;
use poem_openapi::SecurityScheme;
use sha2::{Digest, Sha256};

use crate::problem::{problem, ApiError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Client,
    Worker,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "client" => Ok(Role::Client),
            "worker" => Ok(Role::Worker),
            other => Err(format!(
                "`{other}` is not a role (admin, operator, client, worker)"
            )),
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Client => "client",
            Role::Worker => "worker",
        }
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Publish,
    Read,
    Start,
    Operate,
    Work,
}

impl Role {
    pub fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, _)
                | (Role::Operator, Need::Read | Need::Start | Need::Operate)
                | (Role::Client, Need::Read | Need::Start)
                | (Role::Worker, Need::Work)
        )
    }
}

/// The sha256 of a token, hex: what is stored and compared.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The accepted tokens, by hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, Role)>,
}

impl Tokens {
    /// From `(sha256 hex, role)` pairs.
    pub fn from_hashes(entries: impl IntoIterator<Item = (String, Role)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(h, r)| (h.to_lowercase(), r))
                .collect(),
        }
    }

    pub fn role_of(&self, token: &str) -> Option<Role> {
        let h = hash(token);
        // compare every entry in full, so timing does not tell how close a guess was
        self.entries.iter().fold(None, |found, (stored, role)| {
            let same = stored.len() == h.len()
                && stored
                    .bytes()
                    .zip(h.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                Some(*role)
            } else {
                found
            }
        })
    }
}

/// A caller authenticated by `Authorization: Bearer TOKEN`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check")]
pub struct Auth(pub Role);

async fn check(req: &Request, bearer: Bearer) -> poem::Result<Role> {
    let tokens = req.data::<Arc<Tokens>>().ok_or_else(|| {
        poem::Error::from(ApiError::from_problem(problem(
            500,
            "internal",
            "Internal error",
            "no token store",
            false,
        )))
    })?;
    tokens.role_of(&bearer.token).ok_or_else(|| {
        ApiError::from_problem(problem(
            401,
            "unauthorized",
            "Unauthorized",
            "the bearer token is not valid",
            false,
        ))
        .into()
    })
}

impl Auth {
    /// Refuses (403) a caller whose role may not do `need`.
    pub fn require(&self, need: Need) -> Result<(), ApiError> {
        if self.0.allows(need) {
            return Ok(());
        }
        let detail = format!("the {} role may not do this ({need:?})", self.0.name());
        Err(ApiError::Forbidden(Json(problem(
            403,
            "forbidden",
            "Forbidden",
            detail,
            false,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_the_table_says() {
        assert!(Role::Admin.allows(Need::Publish));
        assert!(!Role::Operator.allows(Need::Publish) && Role::Operator.allows(Need::Operate));
        assert!(Role::Client.allows(Need::Start) && !Role::Client.allows(Need::Operate));
        assert!(Role::Worker.allows(Need::Work) && !Role::Worker.allows(Need::Read));
    }

    #[test]
    fn only_hashes_are_kept_and_matched() {
        let t = Tokens::from_hashes([(hash("s3cret"), Role::Client)]);
        assert_eq!(t.role_of("s3cret"), Some(Role::Client));
        assert_eq!(t.role_of("s3cre"), None);
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
