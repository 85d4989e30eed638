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
        crate::instances::parse_time("time", s)
            .map(Time)
            .map_err(|_| {
                ParseError::custom(format!(
                    "`{s}` is not an RFC 3339 time (e.g. 2027-01-15T08:00:00Z)"
                ))
            })
    }
}

/// Where a saga instance stands.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
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

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 8] = [
        InstanceStatus::Pending,
        InstanceStatus::Running,
        InstanceStatus::Waiting,
        InstanceStatus::Compensating,
        InstanceStatus::Completed,
        InstanceStatus::Compensated,
        InstanceStatus::Failed,
        InstanceStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Pending => "pending",
            InstanceStatus::Running => "running",
            InstanceStatus::Waiting => "waiting",
            InstanceStatus::Compensating => "compensating",
            InstanceStatus::Completed => "completed",
            InstanceStatus::Compensated => "compensated",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Cancelled => "cancelled",
        }
    }

    /// The status the engine or a read model reports; another word is a bug (500).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ApiError::internal(&format!("unknown instance status `{s}`")))
    }
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

impl OrderStatus {
    const ALL: [OrderStatus; 7] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Compensated,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
    ];

    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Compensated => "compensated",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The status the orders read model holds; another word is a bug (500).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ApiError::internal(&format!("unknown order status `{s}`")))
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
        for s in InstanceStatus::ALL {
            assert_eq!(InstanceStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(InstanceStatus::parse("sleeping").is_err());
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(OrderStatus::parse("lost").is_err());
    }
}
