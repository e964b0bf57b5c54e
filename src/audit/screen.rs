//! Screens an event before it is encoded: every string within [`MAX_FIELD_BYTES`], every list
//! within [`MAX_LIST_LEN`], and nothing shaped like a token or a private key.
//!
//! The screen is a serde serializer that writes nothing: it visits the event as `serde_json`
//! will encode it, field by field, without building a copy of it (a `serde_json::Value` tree
//! costs an allocation per field, on every audited call). Map keys are screened like values,
//! and a map's entries are reported under the map's own field, so an error never names a
//! key that is itself the refused string.

use std::fmt;

use serde::ser::{self, Serialize};

use super::{AuditError, AuditEvent, MAX_FIELD_BYTES, MAX_LIST_LEN};

/// Checks every string and list in `event` against the field bounds and the no-secrets rule.
pub(super) fn check(event: &AuditEvent) -> Result<(), AuditError> {
    event.serialize(Screen { field: "" }).map_err(|r| r.0)
}

/// True if `s` contains something shaped like a JWS compact token (`eyJ…​.…​.`) or a PEM
/// private key. Deliberately loose: a false positive refuses one record; a false negative
/// leaks a credential into a file kept for years.
pub fn looks_like_secret(s: &str) -> bool {
    if s.contains("PRIVATE KEY-----") {
        return true;
    }
    s.match_indices("eyJ").any(|(at, _)| {
        let token = &s[at..];
        let end = token
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(token.len());
        let mut parts = token[..end].split('.');
        matches!((parts.next(), parts.next(), parts.next()),
            (Some(h), Some(p), Some(_)) if h.len() > 3 && !p.is_empty())
    })
}

/// Why the screen stopped; serde's error type must be its own.
#[derive(Debug)]
struct Refused(AuditError);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(AuditError::Encode(msg.to_string()))
    }
}

/// Visits one value; `field` is the struct field it belongs to (for errors).
#[derive(Clone, Copy)]
struct Screen {
    field: &'static str,
}

impl Screen {
    fn string(self, s: &str) -> Result<(), Refused> {
        if s.len() > MAX_FIELD_BYTES {
            return Err(Refused(AuditError::FieldTooLong {
                field: self.field.to_string(),
                len: s.len(),
            }));
        }
        if looks_like_secret(s) {
            return Err(Refused(AuditError::SecretLike {
                field: self.field.to_string(),
            }));
        }
        Ok(())
    }

    fn list(self, len: usize) -> Result<Self, Refused> {
        if len > MAX_LIST_LEN {
            return Err(Refused(AuditError::ListTooLong {
                field: self.field.to_string(),
                len,
            }));
        }
        Ok(self)
    }
}

/// `fn name(self, _: T) -> Ok(())` for each `name(T)`.
macro_rules! nothing_to_screen {
    ($($name:ident($ty:ty)),* $(,)?) => {
        $(fn $name(self, _: $ty) -> Result<(), Refused> {
            Ok(())
        })*
    };
}

/// The list traits, whose one method hands each item to [`Items::item`].
macro_rules! items_of {
    ($($trait:ident::$method:ident),* $(,)?) => {
        $(impl ser::$trait for Items {
            type Ok = ();
            type Error = Refused;
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
                self.item(value)
            }
            fn end(self) -> Result<(), Refused> {
                Ok(())
            }
        })*
    };
}

/// The struct traits, whose fields are screened under their names.
macro_rules! fields_of {
    ($($trait:ident),* $(,)?) => {
        $(impl ser::$trait for Screen {
            type Ok = ();
            type Error = Refused;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Refused> {
                value.serialize(Screen { field: key })
            }
            fn end(self) -> Result<(), Refused> {
                Ok(())
            }
        })*
    };
}

impl ser::Serializer for Screen {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Items;
    type SerializeTuple = Items;
    type SerializeTupleStruct = Items;
    type SerializeTupleVariant = Items;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        self.string(v)
    }

    fn serialize_char(self, v: char) -> Result<(), Refused> {
        self.string(v.encode_utf8(&mut [0; 4]))
    }

    // serde_json writes bytes as a list of numbers.
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Refused> {
        self.list(v.len()).map(drop)
    }

    // Numbers, booleans and absent values hold nothing to screen.
    nothing_to_screen! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64),
        serialize_unit_struct(&'static str),
    }

    fn serialize_none(self) -> Result<(), Refused> {
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), Refused> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.string(variant)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Items, Refused> {
        Items::new(self, len)
    }

    fn serialize_tuple(self, len: usize) -> Result<Items, Refused> {
        Items::new(self, Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Items, Refused> {
        Items::new(self, Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        len: usize,
    ) -> Result<Items, Refused> {
        Items::new(self, Some(len))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Refused> {
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Refused> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Refused> {
        Ok(self)
    }
}

/// The items of a list: counted as they come when the length is not known up front.
struct Items {
    screen: Screen,
    seen: usize,
}

impl Items {
    fn new(screen: Screen, len: Option<usize>) -> Result<Self, Refused> {
        Ok(Self {
            screen: screen.list(len.unwrap_or(0))?,
            seen: 0,
        })
    }

    fn item<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        self.seen += 1;
        self.screen.list(self.seen)?;
        value.serialize(self.screen)
    }
}

// Every kind of list screens its items the same way.
items_of! {
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
}

impl ser::SerializeMap for Screen {
    type Ok = ();
    type Error = Refused;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Refused> {
        key.serialize(*self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Refused> {
        value.serialize(*self)
    }
    fn end(self) -> Result<(), Refused> {
        Ok(())
    }
}

// A struct's fields, and an enum variant's, are screened under their own names.
fields_of! { SerializeStruct, SerializeStructVariant }

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn secret_shapes() {
        for s in [
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "please use eyJhbGciOiJub25lIn0.eyJ9. as the token",
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----",
            "eyJ_eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        ] {
            assert!(looks_like_secret(s), "{s}");
        }
        for s in [
            "summarise eyJ-style headers",
            "eyJhbGciOiJFUzI1NiJ9 only a header",
            "spiffe://example.org/agent",
            "a.b.c",
            "eyJ.x.y",
            "eyJabc.",
            "",
        ] {
            assert!(!looks_like_secret(s), "{s}");
        }
    }

    fn close(reason: String) -> AuditEvent {
        AuditEvent::TaskClose {
            task_id: "task_1".into(),
            by: "owner".into(),
            reason,
        }
    }

    fn reload(ids: usize) -> AuditEvent {
        AuditEvent::PolicyReload {
            ok: true,
            policy_ids: (0..ids).map(|i| format!("p{i}")).collect(),
            error: None,
        }
    }

    #[test]
    fn strings_are_screened_at_the_bound_and_named_by_their_field() {
        assert!(check(&close("x".repeat(MAX_FIELD_BYTES))).is_ok());
        assert!(matches!(
            check(&close("x".repeat(MAX_FIELD_BYTES + 1))),
            Err(AuditError::FieldTooLong { field, len }) if field == "reason" && len == MAX_FIELD_BYTES + 1
        ));
        assert!(matches!(
            check(&close("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".into())),
            Err(AuditError::SecretLike { field }) if field == "reason"
        ));
    }

    #[test]
    fn lists_are_screened_at_the_bound() {
        assert!(check(&reload(MAX_LIST_LEN)).is_ok());
        assert!(matches!(
            check(&reload(MAX_LIST_LEN + 1)),
            Err(AuditError::ListTooLong { field, len }) if field == "policy_ids" && len == MAX_LIST_LEN + 1
        ));
    }

    #[test]
    fn a_list_of_unknown_length_is_counted() {
        struct Unsized(usize);
        impl Serialize for Unsized {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0..self.0).filter(|_| true).map(|i| i.to_string()))
            }
        }
        let screen = Screen { field: "items" };
        assert!(Unsized(MAX_LIST_LEN).serialize(screen).is_ok());
        assert!(matches!(
            Unsized(MAX_LIST_LEN + 1).serialize(screen).map_err(|r| r.0),
            Err(AuditError::ListTooLong { field, len }) if field == "items" && len == MAX_LIST_LEN + 1
        ));
    }

    #[test]
    fn map_keys_are_screened_and_reported_under_the_map() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".to_string();
        let open = |grants: BTreeMap<String, Vec<String>>| AuditEvent::TaskOpen {
            task_id: "task_1".into(),
            spiffe_id: "spiffe://example.org/agent".into(),
            parent_task_id: None,
            purpose: "p".into(),
            audiences: vec!["aud".into()],
            scopes: vec!["s".into()],
            expires_at: 1,
            delegation_depth: 0,
            on_behalf_of: None,
            grants,
        };
        let refused = check(&open(BTreeMap::from([(token.clone(), vec!["s".into()])])));
        assert!(
            matches!(&refused, Err(AuditError::SecretLike { field }) if field == "grants"),
            "{refused:?}"
        );
        let refused = check(&open(BTreeMap::from([("aud".into(), vec![token])])));
        assert!(
            matches!(&refused, Err(AuditError::SecretLike { field }) if field == "grants"),
            "{refused:?}"
        );
        assert!(check(&open(BTreeMap::from([("aud".into(), vec!["s".into()])]))).is_ok());
    }

    /// The screen sees what the encoder writes: every string of a real event, in any field.
    #[test]
    fn every_string_field_of_an_event_is_screened() {
        let event = close("done".into());
        let json = serde_json::to_value(&event).unwrap();
        for (field, value) in json.as_object().unwrap() {
            if !value.is_string() {
                continue;
            }
            let mut poisoned = json.clone();
            poisoned[field] = "-----BEGIN PRIVATE KEY-----".into();
            let Ok(e) = serde_json::from_value::<AuditEvent>(poisoned) else {
                continue; // the tag itself
            };
            assert!(
                matches!(check(&e), Err(AuditError::SecretLike { field: f }) if &f == field),
                "{field}"
            );
        }
    }
}
