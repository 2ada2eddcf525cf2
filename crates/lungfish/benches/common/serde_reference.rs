//! The `serde_json` reference the benchmarks compare with: one borrowing
//! deserialization per document that matches runtime field names, extracts key / time /
//! id / numbers with type checks and duplicate detection, and skips everything else with
//! `IgnoredAny` (shared by `json_extract` and `codecs`).

use std::borrow::Cow;
use std::fmt;

use lungfish::codec::json::FieldNames;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// A string that borrows from the input when it has no escapes.
struct BorrowedStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrOrIntVisitor { allow_int: false })
            .map(BorrowedStr)
    }
}

/// A key or id: a string (borrowed if possible) or an integer (as text).
struct StrOrInt<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for StrOrInt<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrIntVisitor { allow_int: true })
            .map(StrOrInt)
    }
}

struct StrOrIntVisitor {
    allow_int: bool,
}

impl<'de> Visitor<'de> for StrOrIntVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an integer")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        if self.allow_int {
            Ok(Cow::Owned(v.to_string()))
        } else {
            Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        if self.allow_int {
            Ok(Cow::Owned(v.to_string()))
        } else {
            Err(E::invalid_type(de::Unexpected::Signed(v), &self))
        }
    }
}

/// What the reference extracts.
pub struct SerdeOut<'de> {
    /// The key.
    pub key: Cow<'de, str>,
    /// The event time.
    pub ts: i64,
    /// The id.
    pub id: Option<Cow<'de, str>>,
}

struct SerdeSeed<'f> {
    fields: &'f FieldNames,
    numbers: &'f mut [f64],
}

impl<'de> DeserializeSeed<'de> for SerdeSeed<'_> {
    type Value = SerdeOut<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SerdeSeed<'_> {
    type Value = SerdeOut<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let f = self.fields;
        let mut key = None;
        let mut ts = None;
        let mut id = None;
        let mut seen_numbers = 0u64;
        while let Some(BorrowedStr(name)) = map.next_key()? {
            let name = &*name;
            if name == f.key {
                if key.is_some() {
                    return Err(de::Error::duplicate_field("key"));
                }
                key = Some(map.next_value::<StrOrInt>()?.0);
            } else if name == f.time {
                if ts.is_some() {
                    return Err(de::Error::duplicate_field("time"));
                }
                ts = Some(map.next_value::<i64>()?);
            } else if f.id.as_deref() == Some(name) {
                if id.is_some() {
                    return Err(de::Error::duplicate_field("id"));
                }
                id = Some(map.next_value::<StrOrInt>()?.0);
            } else if let Some(i) = f.numbers.iter().position(|n| n == name) {
                if seen_numbers & (1 << i) != 0 {
                    return Err(de::Error::duplicate_field("number"));
                }
                seen_numbers |= 1 << i;
                self.numbers[i] = map.next_value::<f64>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if seen_numbers.count_ones() as usize != f.numbers.len() {
            return Err(de::Error::missing_field("number"));
        }
        Ok(SerdeOut {
            key: key.ok_or_else(|| de::Error::missing_field("key"))?,
            ts: ts.ok_or_else(|| de::Error::missing_field("time"))?,
            id,
        })
    }
}

/// Extracts the fields of `doc` with `serde_json`.
pub fn serde_extract<'de>(
    fields: &FieldNames,
    doc: &'de [u8],
    numbers: &mut [f64],
) -> Result<SerdeOut<'de>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(doc);
    let out = SerdeSeed { fields, numbers }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}
