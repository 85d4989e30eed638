//! An event's data as an append carries it and a read gives it back.
//!
//! A saga event stays typed from the decision that made it to the store and,
//! through the SQLite store's tail, to the read models: the store writes its
//! JSON text straight from the event, and the read models fold the event
//! itself. Neither builds a JSON tree of it, encodes that tree, nor decodes
//! it again (docs/performance.md). What is read from a file is JSON.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::saga::Event;

/// An event's data: a JSON value, or a saga event as the engine decided it.
/// Either way it reads as the JSON value that is stored (`Deref`); a saga
/// event's value is made the first time something asks for it.
///
/// Cloning shares the data.
#[derive(Clone)]
pub struct Payload(Arc<Inner>);

enum Inner {
    Json(Value),
    Saga { event: Event, json: OnceLock<Value> },
}

impl Payload {
    /// The data of a saga event, kept typed.
    pub fn saga(event: Event) -> Self {
        Payload(Arc::new(Inner::Saga {
            event,
            json: OnceLock::new(),
        }))
    }

    /// The saga event this data was made from, if it was made from one.
    pub fn as_saga(&self) -> Option<&Event> {
        match &*self.0 {
            Inner::Saga { event, .. } => Some(event),
            Inner::Json(_) => None,
        }
    }

    /// The saga event kept, if it is one of `event_type`; `None`: decode
    /// the JSON.
    pub(crate) fn kept_event(&self, event_type: &str) -> Option<Cow<'_, Event>> {
        self.as_saga()
            .filter(|e| e.type_name() == event_type)
            .map(Cow::Borrowed)
    }

    /// The data as the JSON text a store writes.
    pub fn json_text(&self) -> String {
        match &*self.0 {
            Inner::Saga { event, .. } => saga_text(event),
            // a `Value` always serializes (its map keys are strings); the
            // fallback is the same text. `to_string` writes straight into its
            // buffer, where `Value`'s `Display` goes through a formatter.
            Inner::Json(v) => serde_json::to_string(v).unwrap_or_else(|_| v.to_string()),
        }
    }

    /// The JSON value, taken out if this is its only holder.
    pub fn into_value(self) -> Value {
        match Arc::try_unwrap(self.0) {
            Ok(Inner::Json(v)) => v,
            Ok(Inner::Saga { event, json }) => json.into_inner().unwrap_or_else(|| event.data()),
            Err(shared) => Payload(shared).deref().clone(),
        }
    }
}

/// A saga event's data as text, written from the event in one pass, with its
/// keys sorted: byte for byte the text of its JSON value (whose keys a
/// `BTreeMap` sorts), which is what sagaflow always stored. The order
/// matters to the size: the stores' compression does worse on the fields'
/// own order (docs/performance.md).
fn saga_text(event: &Event) -> String {
    let mut out = Vec::with_capacity(256);
    // a timer's purpose is a struct within the data, whose keys serde
    // writes in its fields' order (a rare event: attempts and starts arm
    // their timers themselves)
    let nested = matches!(event, Event::TimerArmed { .. });
    if !nested && serde::Serialize::serialize(event, sorted::Writer::event(&mut out)).is_ok() {
        // serde_json wrote every piece, keys are field names
        if let Ok(text) = String::from_utf8(out) {
            return text;
        }
    }
    // every event serializes so (a test checks each kind); should one not,
    // its value's text is the same data
    let data = event.data();
    serde_json::to_string(&data).unwrap_or_else(|_| data.to_string())
}

/// A serializer for what serde derives of [`Event`]: a struct of `type` and
/// `data`, whose `data` is a struct of the variant's fields. It writes the
/// data only, each field's value by serde_json, the fields by name.
/// Anything else is refused, and the caller writes the data another way.
mod sorted {
    use serde::ser::{self, Impossible, Serialize, SerializeStruct, Serializer};

    #[derive(Debug)]
    pub(super) struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("not an event's shape")
        }
    }

    impl std::error::Error for Refused {}

    impl ser::Error for Refused {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Refused
        }
    }

    pub(super) struct Writer<'a> {
        out: &'a mut Vec<u8>,
        /// The event itself (its `type` and `data`), or its data.
        event: bool,
    }

    impl<'a> Writer<'a> {
        pub(super) fn event(out: &'a mut Vec<u8>) -> Self {
            Writer { out, event: true }
        }
    }

    pub(super) struct Fields<'a> {
        out: &'a mut Vec<u8>,
        event: bool,
        /// Each field's name and where its value's text lies in `values`.
        fields: Vec<(&'static str, usize, usize)>,
        values: Vec<u8>,
    }

    impl SerializeStruct for Fields<'_> {
        type Ok = ();
        type Error = Refused;

        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Refused> {
            if self.event {
                // the type is the row's; the data is written
                return match key {
                    "data" => value.serialize(Writer {
                        out: self.out,
                        event: false,
                    }),
                    _ => Ok(()),
                };
            }
            let start = self.values.len();
            serde_json::to_writer(&mut self.values, value).map_err(|_| Refused)?;
            self.fields.push((key, start, self.values.len()));
            Ok(())
        }

        fn end(mut self) -> Result<(), Refused> {
            if self.event {
                return Ok(());
            }
            self.fields.sort_unstable_by_key(|f| f.0);
            self.out.push(b'{');
            for (i, (key, start, end)) in self.fields.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.push(b'"');
                self.out.extend_from_slice(key.as_bytes());
                self.out.extend_from_slice(b"\":");
                self.out.extend_from_slice(&self.values[*start..*end]);
            }
            self.out.push(b'}');
            Ok(())
        }
    }

    /// Refuses what an event's shape does not have.
    macro_rules! refuse {
        ($($name:ident($($arg:ty),*) -> $ok:ty;)*) => {
            $(fn $name(self, $(_: $arg),*) -> Result<$ok, Refused> {
                Err(Refused)
            })*
        };
    }

    impl<'a> Serializer for Writer<'a> {
        type Ok = ();
        type Error = Refused;
        type SerializeSeq = Impossible<(), Refused>;
        type SerializeTuple = Impossible<(), Refused>;
        type SerializeTupleStruct = Impossible<(), Refused>;
        type SerializeTupleVariant = Impossible<(), Refused>;
        type SerializeMap = Impossible<(), Refused>;
        type SerializeStruct = Fields<'a>;
        type SerializeStructVariant = Impossible<(), Refused>;

        fn serialize_struct(self, _: &'static str, len: usize) -> Result<Fields<'a>, Refused> {
            Ok(Fields {
                out: self.out,
                event: self.event,
                fields: Vec::with_capacity(if self.event { 0 } else { len }),
                values: Vec::with_capacity(if self.event { 0 } else { 192 }),
            })
        }

        refuse! {
            serialize_bool(bool) -> ();
            serialize_i8(i8) -> ();
            serialize_i16(i16) -> ();
            serialize_i32(i32) -> ();
            serialize_i64(i64) -> ();
            serialize_u8(u8) -> ();
            serialize_u16(u16) -> ();
            serialize_u32(u32) -> ();
            serialize_u64(u64) -> ();
            serialize_f32(f32) -> ();
            serialize_f64(f64) -> ();
            serialize_char(char) -> ();
            serialize_str(&str) -> ();
            serialize_bytes(&[u8]) -> ();
            serialize_none() -> ();
            serialize_unit() -> ();
            serialize_unit_struct(&'static str) -> ();
            serialize_unit_variant(&'static str, u32, &'static str) -> ();
            serialize_seq(Option<usize>) -> Self::SerializeSeq;
            serialize_tuple(usize) -> Self::SerializeTuple;
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
            serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
            serialize_map(Option<usize>) -> Self::SerializeMap;
            serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
        }

        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Refused> {
            Err(Refused)
        }

        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<(), Refused> {
            Err(Refused)
        }

        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), Refused> {
            Err(Refused)
        }
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        match &*self.0 {
            Inner::Json(v) => v,
            Inner::Saga { event, json } => json.get_or_init(|| event.data()),
        }
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload(Arc::new(Inner::Json(v)))
    }
}

impl From<Event> for Payload {
    fn from(e: Event) -> Self {
        Payload::saga(e)
    }
}

/// Data are equal when their JSON values are: a saga event equals the value
/// read back from its text.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || **self == **other
    }
}

/// As its JSON value.
impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::Timestamp;
    use serde_json::json;

    fn events() -> Vec<Event> {
        let at = Timestamp(1_700_000_000_123);
        vec![
            Event::SagaStarted {
                workflow: "order".into(),
                version: 3,
                definition_hash: "abc".into(),
                input: json!({"amount": 12.5, "items": ["a", "é\"\n"], "n": null}),
                idempotency_key: Some("k-1".into()),
                deadline: Some(Timestamp(1_700_000_100_000)),
                started_at: at,
            },
            Event::StepSucceeded {
                step: 2,
                index: Some(4),
                name: "pay".into(),
                attempt: 1,
                output: json!({"id": u64::MAX, "ok": true, "x": -0.1}),
                signal: None,
                at,
            },
            Event::SagaCompleted {
                output: json!(null),
                at,
            },
        ]
    }

    /// What the store writes of a kept event reads back as the value of the
    /// event's data (every kind: `engine/tests/events.rs`).
    #[test]
    fn a_kept_event_writes_the_text_of_its_data() {
        for e in events() {
            let p = Payload::saga(e.clone());
            let text = p.json_text();
            assert_eq!(text, serde_json::to_string(&e.data()).unwrap());
            let read: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(read, e.data(), "{text}");
            assert_eq!(*p, e.data());
            assert_eq!(p, Payload::from(read.clone()));
            assert_eq!(p.clone().into_value(), read);
            assert_eq!(p.kept_event(e.type_name()).as_deref(), Some(&e));
            assert_eq!(p.kept_event("SomethingElse"), None);
        }
    }

    #[test]
    fn json_data_is_written_and_taken_back_as_it_is() {
        let v = json!({"b": [1, 2.5, "x"], "a": {"c": null}});
        let p = Payload::from(v.clone());
        assert_eq!(serde_json::from_str::<Value>(&p.json_text()).unwrap(), v);
        assert_eq!(p.as_saga(), None);
        assert_eq!(p.kept_event("SagaStarted"), None);
        let shared = p.clone();
        assert_eq!(p.into_value(), v);
        assert_eq!(shared.into_value(), v);
    }
}
