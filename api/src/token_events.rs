//! The events of the `tokens` stream: tokens issued and revoked through
//! `/tokens`. Like the saga events, they are a versioned public contract
//! (docs/events.md) pinned by golden fixtures (`api/tests/events/tokens/v{N}`).
//!
//! Version 2 writes times as RFC 3339, as every other event does. Version 1
//! wrote milliseconds since the epoch; it is read through [`TokenEvent::from_stored`].

use sagaflow_engine::saga::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version written today.
pub const TOKEN_SCHEMA_VERSION: u16 = 2;

/// A token was issued: its sha256, never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub id: String,
    pub name: String,
    /// `admin`, `operator`, `client` or `worker`.
    pub role: String,
    /// For workers: the queues the token may serve (`null`: every queue).
    pub queues: Option<Vec<String>>,
    pub hash: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub id: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Issued(TokenIssued),
    Revoked(TokenRevoked),
}

/// Why a stored token event cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenEventError {
    #[error("token event `{0}` is unknown")]
    UnknownType(String),
    #[error("token event `{kind}` has version {version}; this sagaflow reads versions 1 to {TOKEN_SCHEMA_VERSION}")]
    TooNew { kind: String, version: u16 },
    #[error("token event `{kind}` v{version} does not decode: {source}")]
    Decode {
        kind: String,
        version: u16,
        #[source]
        source: serde_json::Error,
    },
}

impl TokenEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            TokenEvent::Issued(_) => "TokenIssued",
            TokenEvent::Revoked(_) => "TokenRevoked",
        }
    }

    /// The stored body, at [`TOKEN_SCHEMA_VERSION`].
    pub fn data(&self) -> Value {
        let data = match self {
            TokenEvent::Issued(e) => serde_json::to_value(e),
            TokenEvent::Revoked(e) => serde_json::to_value(e),
        };
        // (plain structs of strings: serializing them cannot fail)
        data.unwrap_or_default()
    }

    /// Reads a stored event of any version up to today's.
    pub fn from_stored(kind: &str, version: u16, data: Value) -> Result<Self, TokenEventError> {
        if version > TOKEN_SCHEMA_VERSION {
            return Err(TokenEventError::TooNew {
                kind: kind.to_string(),
                version,
            });
        }
        let data = if version <= 1 { upcast_v1(data) } else { data };
        let decode = |source| TokenEventError::Decode {
            kind: kind.to_string(),
            version,
            source,
        };
        match kind {
            "TokenIssued" => serde_json::from_value(data)
                .map(TokenEvent::Issued)
                .map_err(decode),
            "TokenRevoked" => serde_json::from_value(data)
                .map(TokenEvent::Revoked)
                .map_err(decode),
            other => Err(TokenEventError::UnknownType(other.to_string())),
        }
    }
}

/// Version 1 kept `at` as milliseconds since the epoch.
fn upcast_v1(mut data: Value) -> Value {
    if let Some(ms) = data.get("at").and_then(Value::as_u64) {
        data["at"] = Value::String(Timestamp(ms).to_string());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn samples() -> Vec<TokenEvent> {
        let at = Timestamp(1_800_000_000_000);
        vec![
            TokenEvent::Issued(TokenIssued {
                id: "0190d7a4-0000-7000-8000-00000000000a".into(),
                name: "label printer".into(),
                role: "worker".into(),
                queues: Some(vec!["labels".into()]),
                hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                at,
            }),
            TokenEvent::Revoked(TokenRevoked {
                id: "0190d7a4-0000-7000-8000-00000000000a".into(),
                at,
            }),
        ]
    }

    fn dir(version: u16) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/events/tokens/v{version}"))
    }

    #[test]
    fn todays_events_serialize_as_their_fixtures() {
        for event in samples() {
            let path = dir(TOKEN_SCHEMA_VERSION).join(format!("{}.json", event.type_name()));
            let golden: Value = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .unwrap_or_else(|_| panic!("missing {}", path.display())),
            )
            .unwrap();
            assert_eq!(event.data(), golden, "{}", event.type_name());
        }
    }

    #[test]
    fn every_version_of_every_fixture_reads_as_todays_event() {
        for version in 1..=TOKEN_SCHEMA_VERSION {
            for event in samples() {
                let path = dir(version).join(format!("{}.json", event.type_name()));
                let data: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                assert_eq!(
                    TokenEvent::from_stored(event.type_name(), version, data).unwrap(),
                    event,
                    "{}",
                    path.display()
                );
            }
        }
        assert!(matches!(
            TokenEvent::from_stored("TokenIssued", 3, Value::Null),
            Err(TokenEventError::TooNew { .. })
        ));
    }

    #[test]
    fn the_public_catalogue_lists_them() {
        let doc = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md"),
        )
        .unwrap();
        for event in samples() {
            assert!(doc.contains(&format!("### {}\n", event.type_name())));
        }
    }
}
