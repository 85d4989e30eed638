//! Bearer tokens with roles. Tokens are kept only as sha256 hashes; a request
//! without a valid token gets 401, one whose role may not do the operation 403.
//!
//! | role | may |
//! | --- | --- |
//! | admin | everything, and publish workflows and manage tokens |
//! | operator | read, start, signal, cancel, retry, pause, move timers, metrics |
//! | client | read and start |
//! | worker | take and answer tasks (of the queues its token names, if it names any) |

use std::sync::{Arc, RwLock};

use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;
use sagaflow_engine::saga::Timestamp;
use sagaflow_engine::store::{EventStore, Expected, NewEvent, RecordedEvent, StoreError};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::token_events::{TokenEvent, TokenIssued, TokenRevoked, TOKEN_SCHEMA_VERSION};

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
    /// Issue and revoke tokens.
    ManageTokens,
    /// Read metrics.
    Observe,
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
                | (
                    Role::Operator,
                    Need::Read | Need::Start | Need::Operate | Need::Observe
                )
                | (Role::Client, Need::Read | Need::Start)
                | (Role::Worker, Need::Work)
        )
    }
}

/// The sha256 of a token, hex: what is stored and compared.
pub fn hash(token: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(token.as_bytes()) {
        hex.push(DIGITS[usize::from(b >> 4)].into());
        hex.push(DIGITS[usize::from(b & 0xf)].into());
    }
    hex
}

/// A new random token: `sf_` and 64 hex digits (256 bits of randomness from v4 UUIDs).
pub fn generate() -> String {
    format!(
        "sf_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Who is calling: the token's role and, for workers, the queues it may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (never the token itself): what per-caller limits count by.
    pub token: String,
    pub role: Role,
    /// `None`: every queue.
    pub queues: Option<Vec<String>>,
}

/// One accepted token, as its hash.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub queues: Option<Vec<String>>,
    pub hash: String,
    /// Issued through the API (and revocable there), not configured at start.
    pub managed: bool,
    pub created_at: Option<Timestamp>,
}

/// The stream that records tokens issued and revoked through the API.
const TOKEN_STREAM: &str = "tokens";

/// The accepted tokens, by hash: the configured ones and those issued through
/// the API (kept as `TokenIssued` / `TokenRevoked` events in the `tokens` stream).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Arc<RwLock<Vec<TokenEntry>>>,
}

impl Tokens {
    /// From configured `(sha256 hex, role, queues)`.
    pub fn from_hashes(
        entries: impl IntoIterator<Item = (String, Role, Option<Vec<String>>)>,
    ) -> Self {
        let entries = entries
            .into_iter()
            .map(|(h, role, queues)| {
                let hash = h.to_lowercase();
                TokenEntry {
                    id: format!("config-{}", &hash[..hash.len().min(12)]),
                    name: format!("configured {}", role.name()),
                    role,
                    queues,
                    hash,
                    managed: false,
                    created_at: None,
                }
            })
            .collect();
        Self {
            entries: Arc::new(RwLock::new(entries)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<TokenEntry>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<TokenEntry>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn role_of(&self, token: &str) -> Option<Role> {
        self.caller(token).map(|c| c.role)
    }

    pub fn caller(&self, token: &str) -> Option<Caller> {
        let h = hash(token);
        // compare every entry in full, so timing does not tell how close a guess was
        self.read().iter().fold(None, |found, e| {
            let same = e.hash.len() == h.len()
                && e.hash
                    .bytes()
                    .zip(h.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                Some(Caller {
                    token: e.id.clone(),
                    role: e.role,
                    queues: e.queues.clone(),
                })
            } else {
                found
            }
        })
    }

    pub fn list(&self) -> Vec<TokenEntry> {
        self.read().clone()
    }

    /// Adds the tokens issued (and drops those revoked) through the API, from the store.
    pub async fn load(&self, store: &dyn EventStore) -> Result<usize, StoreError> {
        let events = store.read_stream(TOKEN_STREAM, 0).await?;
        let mut loaded = 0;
        for e in &events {
            if self.apply_stored(e) {
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Takes in a token event another replica wrote (read from the log).
    pub fn learn(&self, e: &RecordedEvent) {
        if e.stream == TOKEN_STREAM {
            self.apply_stored(e);
        }
    }

    fn apply_stored(&self, e: &RecordedEvent) -> bool {
        match TokenEvent::from_stored(
            &e.event_type,
            e.schema_version,
            serde_json::Value::clone(&e.data),
        ) {
            Ok(event) => self.apply(&event),
            Err(err) => {
                tracing::error!(error = %err, revision = e.revision, "skipping an unreadable token event");
                false
            }
        }
    }

    /// True when a token was added.
    fn apply(&self, event: &TokenEvent) -> bool {
        match event {
            TokenEvent::Issued(issued) => {
                let Ok(role) = issued.role.parse::<Role>() else {
                    tracing::error!(id = %issued.id, role = %issued.role, "skipping a TokenIssued event with an unknown role");
                    return false;
                };
                if self.read().iter().any(|e| e.managed && e.id == issued.id) {
                    return false; // issued here, then read back from the log
                }
                self.write().push(TokenEntry {
                    id: issued.id.clone(),
                    name: issued.name.clone(),
                    role,
                    queues: issued.queues.clone(),
                    hash: issued.hash.clone(),
                    managed: true,
                    created_at: Some(issued.at),
                });
                true
            }
            TokenEvent::Revoked(revoked) => {
                self.write().retain(|e| !(e.managed && e.id == revoked.id));
                false
            }
        }
    }

    async fn record(&self, store: &dyn EventStore, event: &TokenEvent) -> Result<(), StoreError> {
        store
            .append(
                TOKEN_STREAM,
                Expected::Any,
                vec![NewEvent {
                    event_type: event.type_name().into(),
                    schema_version: TOKEN_SCHEMA_VERSION,
                    data: event.data().into(),
                }],
            )
            .await?;
        self.apply(event);
        Ok(())
    }

    /// Issues a token; the secret is returned once and only its hash is kept.
    pub async fn issue(
        &self,
        store: &dyn EventStore,
        name: &str,
        role: Role,
        queues: Option<Vec<String>>,
        at: Timestamp,
    ) -> Result<(TokenEntry, String), StoreError> {
        let secret = generate();
        let id = uuid::Uuid::now_v7().to_string();
        let event = TokenEvent::Issued(TokenIssued {
            id: id.clone(),
            name: name.to_string(),
            role: role.name().to_string(),
            queues,
            hash: hash(&secret),
            at,
        });
        self.record(store, &event).await?;
        let entry = self
            .list()
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| StoreError::Corrupt("token vanished".into()))?;
        Ok((entry, secret))
    }

    /// Revokes an issued token; false if there is no such issued token.
    pub async fn revoke(
        &self,
        store: &dyn EventStore,
        id: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        if !self.read().iter().any(|e| e.managed && e.id == id) {
            return Ok(false);
        }
        let event = TokenEvent::Revoked(TokenRevoked {
            id: id.to_string(),
            at,
        });
        self.record(store, &event).await?;
        Ok(true)
    }
}

/// A caller authenticated by `Authorization: Bearer TOKEN`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check")]
pub struct Auth(pub Caller);

async fn check(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let tokens = req
        .data::<Arc<Tokens>>()
        .ok_or_else(|| poem::Error::from(ApiError::internal("no token store")))?;
    tokens
        .caller(&bearer.token)
        .ok_or_else(|| ApiError::unauthorized().into())
}

impl Auth {
    /// Refuses (403) a caller whose role may not do `need`.
    pub fn require(&self, need: Need) -> Result<(), ApiError> {
        if self.0.role.allows(need) {
            return Ok(());
        }
        let detail = format!("the {} role may not do this ({need:?})", self.0.role.name());
        Err(ApiError::forbidden(detail))
    }

    /// Refuses (403) a worker whose token does not serve `queue`.
    pub fn require_queue(&self, queue: &str) -> Result<(), ApiError> {
        match &self.0.queues {
            Some(qs) if !qs.iter().any(|q| q == queue) => Err(ApiError::forbidden(format!(
                "this token serves the queues {qs:?}, not `{queue}`"
            ))),
            _ => Ok(()),
        }
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
    fn a_hash_is_the_lowercase_hex_sha256_kept_in_data_directories() {
        // FIPS 180-2's example: hashes stored by earlier versions must still match
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_hashes_are_kept_and_matched() {
        let t = Tokens::from_hashes([(hash("s3cret"), Role::Client, None)]);
        assert_eq!(t.role_of("s3cret"), Some(Role::Client));
        assert_eq!(t.role_of("s3cre"), None);
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
