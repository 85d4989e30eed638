//! Types the API shares: times (`date-time` in the spec) and the status words
//! as enums, so generated clients get typed fields.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use sagaflow_engine::saga::Timestamp;
use serde_json::Value;

use crate::problem::ApiError;

/// A point in time, written as RFC 3339 in UTC with milliseconds
/// (`2027-01-15T08:00:00.000Z`); `date-time` in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub Timestamp);

impl From<Timestamp> for Time {
    fn from(t: Timestamp) -> Self {
        Self(t)
    }
}

impl Type for Time {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl serde::Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl ToJSON for Time {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.to_string()))
    }
}

impl ParseFromJSON for Time {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Self::parse_from_parameter(&s),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ParseFromParameter for Time {
    fn parse_from_parameter(s: &str) -> ParseResult<Self> {
        let bad = || {
            ParseError::custom(format!(
                "`{s}` is not an RFC 3339 time (e.g. 2027-01-15T08:00:00Z)"
            ))
        };
        let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad())?;
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad())?
            .as_millis();
        Ok(Time(Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))))
    }
}

/// Where a saga instance stands.
#[derive(poem_openapi::Enum, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    /// Started; its first step has not begun (a moment, or while paused from the start).
    Pending,
    /// Performing a step.
    Running,
    /// Waiting for a signal or a time.
    Waiting,
    /// Undoing the steps done so far.
    Compensating,
    Completed,
    Compensated,
    /// A compensation could not be done, or the pivot's aftermath failed: an operator may retry it.
    Failed,
    Cancelled,
}

/// Where an order stands.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Created; stock not yet reserved.
    Pending,
    Reserved,
    Paid,
    Shipped,
    /// Did not go through; what was done is undone.
    Compensated,
    /// Needs an operator: an undo could not be done.
    Failed,
    Cancelled,
}

/// A status word the engine or a read model reports, as one of the API's
/// enums; a word the enum lacks is a bug (500), never passed on.
pub fn status<T: ParseFromJSON>(word: &str) -> Result<T, ApiError> {
    T::parse_from_json(Some(Value::String(word.to_string())))
        .map_err(|_| ApiError::internal(&format!("unknown status `{word}`")))
}

/// The word of a status enum, as the engine and read models spell it.
pub fn word<T: ToJSON>(status: &T) -> String {
    match status.to_json() {
        Some(Value::String(w)) => w,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_the_engine_writes_them_and_read_back() {
        let t = Time(Timestamp(1_800_000_000_123));
        let json = t.to_json().unwrap();
        assert_eq!(json, Value::String("2027-01-15T08:00:00.123Z".into()));
        assert_eq!(Time::parse_from_json(Some(json)).unwrap(), t);
        assert!(Time::parse_from_json(Some(Value::String("yesterday".into()))).is_err());
    }

    #[test]
    fn every_status_word_parses_and_others_are_refused() {
        let instance = [
            "pending",
            "running",
            "waiting",
            "compensating",
            "completed",
            "compensated",
            "failed",
            "cancelled",
        ];
        for w in instance {
            assert_eq!(word(&status::<InstanceStatus>(w).unwrap()), w);
        }
        assert!(status::<InstanceStatus>("sleeping").is_err());
        let order = [
            "pending",
            "reserved",
            "paid",
            "shipped",
            "compensated",
            "failed",
            "cancelled",
        ];
        for w in order {
            assert_eq!(word(&status::<OrderStatus>(w).unwrap()), w);
        }
        assert!(status::<OrderStatus>("lost").is_err());
    }
}
