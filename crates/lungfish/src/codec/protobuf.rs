//! The ingest Protobuf field extractor: reads the few top-level fields the pipeline
//! needs (key, event time, optional id, aggregated numbers) straight from a message's
//! wire format, with the roles and the output of [`crate::codec::json`].
//!
//! The schema is the user's `.proto` file, compiled once at startup by `protox` (no
//! `protoc` needed) into a `prost-reflect` descriptor pool. [`ProtobufExtractor::load`]
//! finds the message and checks, for every configured field name, that the message has
//! a top-level field of that name with a type its role can use:
//!
//! | role | field types accepted |
//! |---|---|
//! | key, id | `string`, or any integer type (the key is then the integer's decimal text, as JSON's `42` gives `"42"`) |
//! | time | any integer type: epoch milliseconds, fitting `i64` |
//! | numbers | `double`, `float`, any integer type (converted to `f64`, rounded to nearest) |
//!
//! `bool`, `bytes`, enums, messages, maps and `repeated` fields are refused at load, as
//! are more than 64 distinct field names. The id is optional in every event, as in
//! JSON: a message type without a field of that name gives events without an id. A `float` number is widened exactly, so a
//! value that is not a binary fraction (`0.1`) differs from the same decimal in JSON:
//! use `double` for parity.
//!
//! # Presence
//!
//! Protobuf does not write a field holding its default value when the field has no
//! explicit presence (a plain proto3 field). Such a field reads as its default (`0`,
//! `""`) when absent, exactly as every Protobuf library reads it. A field with explicit
//! presence (proto2 `optional`/`required`, proto3 `optional`, a `oneof` member) that is
//! absent is a [`Reject::MissingField`] for the key, the time and the numbers, and no id.
//! Declare the key and time `optional` in proto3 to have messages without them refused.
//!
//! # The scan (no `DynamicMessage`)
//!
//! The hot path never builds a message: it walks the top-level tags once, keeps the
//! wanted fields (looked up by field number in a table) and skips the others by their
//! wire type, without allocating. Following the Protobuf specification, the *last*
//! occurrence of a singular field wins. What it checks, in message order:
//!
//! * every tag is a valid varint of at most 5 bytes, with a field number in
//!   `1..=536870911` and a wire type in `{0, 1, 2, 5}` (groups, wire types 3 and 4,
//!   are deprecated and refused);
//! * every varint ends within 10 bytes and within the message; fixed fields and
//!   length-delimited fields end within the message;
//! * a wanted field has the wire type of its declared type (a packed or
//!   length-delimited encoding of a singular number is refused);
//! * a wanted string (key, id) is valid UTF-8.
//!
//! Then, after the scan: the time fits `i64` (a `uint64`/`fixed64` above it is refused),
//! and required roles are present. Fields the pipeline does not use are skipped
//! without being parsed: nested messages and unused strings are not validated.
//!
//! # Batches: length-delimited messages
//!
//! Files and HTTP bodies hold several messages, each preceded by its length as a varint
//! (Java's `writeDelimitedTo`, C++'s `SerializeDelimitedToOstream`, Go's
//! `protodelim`). [`Delimited`] cuts them; a message longer than the limit is skipped
//! (its length says where the next one starts), and a length prefix that is not a valid
//! varint, or one that points past the end of the data, makes the rest unsplittable: it
//! is reported once, as [`Frame::Broken`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost_reflect::{Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

use super::json::{Extracted, FieldNames};

/// Most distinct field names an extractor can look for.
pub const MAX_FIELDS: usize = 64;

/// Longest length prefix: a varint of at most 10 bytes.
const MAX_VARINT_LEN: usize = 10;

/// Why a schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The `.proto` file could not be read or compiled.
    #[error("{file}: {message}")]
    Compile {
        /// The `.proto` file.
        file: PathBuf,
        /// What the compiler said.
        message: String,
    },
    /// The file (or its imports) has no message of that name.
    #[error("{file}: no message `{message}`{hint}")]
    NoMessage {
        /// The `.proto` file.
        file: PathBuf,
        /// The fully qualified name asked for.
        message: String,
        /// ", did you mean ..." or the list of messages.
        hint: String,
    },
    /// A configured field is absent from the message, or its type does not suit its role.
    #[error("{file}: message `{message}`: {problem}")]
    Field {
        /// The `.proto` file.
        file: PathBuf,
        /// The message's fully qualified name.
        message: String,
        /// The configured field name.
        field: String,
        /// What is wrong, naming the field and its role.
        problem: String,
    },
}

/// Why a message was rejected. `Display` gives a specific reason (with a byte offset
/// into the message where one applies); [`Reject::kind`] a short stable label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// The bytes are not a well-formed Protobuf message (see the module documentation).
    #[error("invalid Protobuf at byte {offset}: {reason}")]
    InvalidProtobuf {
        /// Byte offset of the problem in the message.
        offset: usize,
        /// What was wrong, e.g. "truncated varint".
        reason: &'static str,
    },
    /// A wanted string field (key or id) is not valid UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// The configured field name.
        field: String,
    },
    /// A required field with explicit presence is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The configured field name.
        field: String,
    },
    /// A wanted field is encoded with another wire type than its declared type's, or
    /// its value does not fit its role.
    #[error("field `{field}` is {found}, expected {expected}")]
    WrongType {
        /// The configured field name.
        field: String,
        /// What was found, e.g. "length-delimited (wire type 2)".
        found: &'static str,
        /// What the schema and role require.
        expected: &'static str,
    },
}

impl Reject {
    /// Short stable label for metrics: `invalid_protobuf`, `invalid_utf8`,
    /// `missing_field`, `wrong_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Reject::InvalidProtobuf { .. } => "invalid_protobuf",
            Reject::InvalidUtf8 { .. } => "invalid_utf8",
            Reject::MissingField { .. } => "missing_field",
            Reject::WrongType { .. } => "wrong_type",
        }
    }
}

/// A key or id as found in a message: a string borrowed from it, or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A `string` field's value.
    Str(&'a str),
    /// A signed integer field's value.
    Int(i64),
    /// An unsigned integer field's value.
    Uint(u64),
}

impl<'a> Scalar<'a> {
    /// The value as text: the string itself, or the integer in decimal (formatted in
    /// `buf`, without allocating).
    pub fn text<'b>(&'b self, buf: &'b mut itoa::Buffer) -> &'b str
    where
        'a: 'b,
    {
        match *self {
            Scalar::Str(s) => s,
            Scalar::Int(i) => buf.format(i),
            Scalar::Uint(u) => buf.format(u),
        }
    }

    /// The value as text, borrowed when it is a string.
    pub fn to_cow(self) -> Cow<'a, str> {
        match self {
            Scalar::Str(s) => Cow::Borrowed(s),
            Scalar::Int(i) => Cow::Owned(i.to_string()),
            Scalar::Uint(u) => Cow::Owned(u.to_string()),
        }
    }
}

/// The extracted fields of one accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoExtracted<'a> {
    /// The key field's value.
    pub key: Scalar<'a>,
    /// The event time, epoch milliseconds.
    pub ts: i64,
    /// The id field's value; `None` if no id field is configured, or it has explicit
    /// presence and is absent.
    pub id: Option<Scalar<'a>>,
}

impl<'a> ProtoExtracted<'a> {
    /// The same fields as the JSON extractor gives them (integers as their text: this
    /// allocates for an integer key or id).
    pub fn to_extracted(self) -> Extracted<'a> {
        Extracted {
            key: self.key.to_cow(),
            ts: self.ts,
            id: self.id.map(Scalar::to_cow),
        }
    }
}

/// A scalar type a wanted field can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    String,
}

impl Ty {
    fn of(kind: &Kind) -> Option<Ty> {
        Some(match kind {
            Kind::Double => Ty::Double,
            Kind::Float => Ty::Float,
            Kind::Int32 => Ty::Int32,
            Kind::Int64 => Ty::Int64,
            Kind::Uint32 => Ty::Uint32,
            Kind::Uint64 => Ty::Uint64,
            Kind::Sint32 => Ty::Sint32,
            Kind::Sint64 => Ty::Sint64,
            Kind::Fixed32 => Ty::Fixed32,
            Kind::Fixed64 => Ty::Fixed64,
            Kind::Sfixed32 => Ty::Sfixed32,
            Kind::Sfixed64 => Ty::Sfixed64,
            Kind::String => Ty::String,
            _ => return None,
        })
    }

    fn wire(self) -> u8 {
        match self {
            Ty::Int32 | Ty::Int64 | Ty::Uint32 | Ty::Uint64 | Ty::Sint32 | Ty::Sint64 => 0,
            Ty::Double | Ty::Fixed64 | Ty::Sfixed64 => 1,
            Ty::String => 2,
            Ty::Float | Ty::Fixed32 | Ty::Sfixed32 => 5,
        }
    }

    fn is_integer(self) -> bool {
        !matches!(self, Ty::Double | Ty::Float | Ty::String)
    }

    /// What a wrong wire type was expected to be, for the reason.
    fn expected(self) -> &'static str {
        match self {
            Ty::Double => "a double (wire type 1, fixed 64-bit)",
            Ty::Float => "a float (wire type 5, fixed 32-bit)",
            Ty::Int32 => "an int32 (wire type 0, varint)",
            Ty::Int64 => "an int64 (wire type 0, varint)",
            Ty::Uint32 => "a uint32 (wire type 0, varint)",
            Ty::Uint64 => "a uint64 (wire type 0, varint)",
            Ty::Sint32 => "a sint32 (wire type 0, varint)",
            Ty::Sint64 => "a sint64 (wire type 0, varint)",
            Ty::Fixed32 => "a fixed32 (wire type 5, fixed 32-bit)",
            Ty::Fixed64 => "a fixed64 (wire type 1, fixed 64-bit)",
            Ty::Sfixed32 => "a sfixed32 (wire type 5, fixed 32-bit)",
            Ty::Sfixed64 => "a sfixed64 (wire type 1, fixed 64-bit)",
            Ty::String => "a string (wire type 2, length-delimited)",
        }
    }

    /// An integer field's raw wire value as a signed or unsigned integer.
    #[inline]
    fn integer(self, v: u64) -> Scalar<'static> {
        match self {
            Ty::Int32 | Ty::Sfixed32 => Scalar::Int(v as u32 as i32 as i64),
            Ty::Int64 | Ty::Sfixed64 => Scalar::Int(v as i64),
            Ty::Uint32 | Ty::Fixed32 => Scalar::Uint(v as u32 as u64),
            Ty::Uint64 | Ty::Fixed64 => Scalar::Uint(v),
            Ty::Sint32 => {
                let u = v as u32;
                Scalar::Int(((u >> 1) as i32 ^ -((u & 1) as i32)) as i64)
            }
            Ty::Sint64 => Scalar::Int((v >> 1) as i64 ^ -((v & 1) as i64)),
            Ty::Double | Ty::Float | Ty::String => unreachable!("not an integer type"),
        }
    }

    /// A numeric field's raw wire value as an `f64`.
    #[inline]
    fn number(self, v: u64) -> f64 {
        match self {
            Ty::Double => f64::from_bits(v),
            Ty::Float => f32::from_bits(v as u32) as f64,
            _ => match self.integer(v) {
                Scalar::Int(i) => i as f64,
                Scalar::Uint(u) => u as f64,
                Scalar::Str(_) => unreachable!("integers only"),
            },
        }
    }
}

const ROLE_KEY: u8 = 1;
const ROLE_TIME: u8 = 2;
const ROLE_ID: u8 = 4;

/// One wanted field of the message.
#[derive(Debug)]
struct Entry {
    name: String,
    ty: Ty,
    wire: u8,
    roles: u8,
    /// Number slots it feeds.
    numbers: Box<[usize]>,
    /// Whether absence is distinguishable from the default value.
    presence: bool,
}

/// Field numbers below this are found with one table lookup; others by a scan.
const DIRECT: usize = 128;
const NONE: u8 = u8::MAX;

#[derive(Debug)]
struct Compiled {
    fields: FieldNames,
    file: PathBuf,
    message: String,
    entries: Box<[Entry]>,
    /// Entry index by field number (`NONE`: not wanted), for numbers below `DIRECT`.
    direct: Box<[u8; DIRECT]>,
    /// (field number, entry) for numbers at or above `DIRECT`.
    far: Box<[(u32, u8)]>,
    key: usize,
    time: usize,
    id: Option<usize>,
    /// Entries that must be present (explicit presence, required role), as a bit set.
    required: u64,
    /// Number slots of fields without presence (read as 0 when absent).
    defaults_zero: bool,
}

/// Compiled, reusable extractor for one message type and one [`FieldNames`].
///
/// Cheap to clone (shared behind an `Arc`), `Send + Sync`, stateless between calls.
#[derive(Debug, Clone)]
pub struct ProtobufExtractor {
    inner: Arc<Compiled>,
}

/// Compiles `proto` with `protox` (its directory is the include path; the well-known
/// `google/protobuf/*.proto` are built in).
///
/// # Errors
/// The file cannot be read, or does not compile.
pub fn compile(proto: &Path) -> Result<DescriptorPool, SchemaError> {
    let dir = match proto.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = proto.file_name().map(PathBuf::from).unwrap_or_default();
    let err = |e: protox::Error| SchemaError::Compile {
        file: proto.to_path_buf(),
        message: e.to_string(),
    };
    if !proto.is_file() {
        return Err(SchemaError::Compile {
            file: proto.to_path_buf(),
            message: "no such file".to_owned(),
        });
    }
    let mut compiler = protox::Compiler::new([dir]).map_err(err)?;
    compiler.include_imports(true);
    compiler.open_file(&name).map_err(err)?;
    Ok(compiler.descriptor_pool())
}

impl ProtobufExtractor {
    /// Compiles `proto` ([`compile`]) and builds an extractor for the message named
    /// `message` (fully qualified, e.g. `acme.Event`) and `fields`.
    ///
    /// # Errors
    /// As [`compile`]; or no such message; or a configured field is not a top-level
    /// field of the message, or has a type its role cannot use (see the module
    /// documentation), naming the file, the message and the field, with a close name
    /// when there is one.
    pub fn load(proto: &Path, message: &str, fields: FieldNames) -> Result<Self, SchemaError> {
        let pool = compile(proto)?;
        Self::from_pool(&pool, proto, message, fields)
    }

    /// [`load`](Self::load) from a compiled pool; `proto` names the file in errors.
    ///
    /// # Errors
    /// As [`load`](Self::load), less the compilation.
    pub fn from_pool(
        pool: &DescriptorPool,
        proto: &Path,
        message: &str,
        fields: FieldNames,
    ) -> Result<Self, SchemaError> {
        let Some(desc) = pool.get_message_by_name(message) else {
            let names: Vec<String> = pool
                .all_messages()
                .filter(|m| !m.full_name().starts_with("google.protobuf."))
                .map(|m| m.full_name().to_owned())
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hint = match crate::config::suggest::closest(message, &refs) {
                Some(s) => format!(", did you mean `{s}`?"),
                None if refs.is_empty() => " (the file defines no message)".to_owned(),
                None => format!(" (messages: {})", refs.join(", ")),
            };
            return Err(SchemaError::NoMessage {
                file: proto.to_path_buf(),
                message: message.to_owned(),
                hint,
            });
        };
        Self::from_descriptor(&desc, proto, fields)
    }

    /// Builds the extractor for message `desc`; `proto` names the file in errors.
    ///
    /// # Errors
    /// As [`from_pool`](Self::from_pool), less the message lookup.
    pub fn from_descriptor(
        desc: &MessageDescriptor,
        proto: &Path,
        fields: FieldNames,
    ) -> Result<Self, SchemaError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut numbers_of: Vec<u32> = Vec::new();
        let field_err = |field: &str, problem: String| SchemaError::Field {
            file: proto.to_path_buf(),
            message: desc.full_name().to_owned(),
            field: field.to_owned(),
            problem,
        };
        let mut add = |name: &str,
                       role: u8,
                       number: Option<usize>,
                       what: &str|
         -> Result<usize, SchemaError> {
            let Some(fd) = desc.get_field_by_name(name) else {
                let names: Vec<String> = desc.fields().map(|f| f.name().to_owned()).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let hint = match crate::config::suggest::closest(name, &refs) {
                    Some(s) => format!(", did you mean `{s}`?"),
                    None => format!(" (its fields: {})", refs.join(", ")),
                };
                return Err(field_err(
                    name,
                    format!("no top-level field `{name}` (the {what}){hint}"),
                ));
            };
            let ty = usable(&fd, role, number.is_some())
                .map_err(|why| field_err(name, format!("field `{name}` (the {what}) {why}")))?;
            let idx = match numbers_of.iter().position(|n| *n == fd.number()) {
                Some(i) => i,
                None => {
                    if entries.len() == MAX_FIELDS {
                        return Err(field_err(
                            name,
                            format!("more than {MAX_FIELDS} distinct fields are configured"),
                        ));
                    }
                    numbers_of.push(fd.number());
                    entries.push(Entry {
                        name: name.to_owned(),
                        ty,
                        wire: ty.wire(),
                        roles: 0,
                        numbers: Box::new([]),
                        presence: fd.supports_presence(),
                    });
                    entries.len() - 1
                }
            };
            let e = &mut entries[idx];
            e.roles |= role;
            if let Some(n) = number {
                let mut v = e.numbers.to_vec();
                v.push(n);
                e.numbers = v.into();
            }
            Ok(idx)
        };
        let key = add(&fields.key, ROLE_KEY, None, "key")?;
        let time = add(&fields.time, ROLE_TIME, None, "event time")?;
        // The id is optional in every event, as in JSON: a message type without a
        // field of that name gives events without an id.
        let id = match &fields.id {
            Some(id) if desc.get_field_by_name(id).is_some() => Some(add(id, ROLE_ID, None, "id")?),
            _ => None,
        };
        for (i, n) in fields.numbers.iter().enumerate() {
            add(n, 0, Some(i), "aggregated number")?;
        }
        let mut direct = Box::new([NONE; DIRECT]);
        let mut far = Vec::new();
        for (i, n) in numbers_of.iter().enumerate() {
            if (*n as usize) < DIRECT {
                direct[*n as usize] = i as u8;
            } else {
                far.push((*n, i as u8));
            }
        }
        let mut required = 0u64;
        let mut defaults_zero = false;
        for (i, e) in entries.iter().enumerate() {
            let needs = e.roles & (ROLE_KEY | ROLE_TIME) != 0 || !e.numbers.is_empty();
            if needs && e.presence {
                required |= 1 << i;
            }
            if !e.presence && !e.numbers.is_empty() {
                defaults_zero = true;
            }
        }
        Ok(ProtobufExtractor {
            inner: Arc::new(Compiled {
                fields,
                file: proto.to_path_buf(),
                message: desc.full_name().to_owned(),
                entries: entries.into(),
                direct,
                far: far.into(),
                key,
                time,
                id,
                required,
                defaults_zero,
            }),
        })
    }

    /// The field names this extractor was built for.
    pub fn fields(&self) -> &FieldNames {
        &self.inner.fields
    }

    /// The `.proto` file and the message's fully qualified name.
    pub fn schema(&self) -> (&Path, &str) {
        (&self.inner.file, &self.inner.message)
    }

    /// Scans one message (without its length prefix) and extracts the fields.
    ///
    /// `numbers` must have one slot per configured number field; on success
    /// `numbers[i]` holds the value of `fields.numbers[i]`. On error its contents are
    /// unspecified. Does not allocate unless the message is rejected.
    ///
    /// # Errors
    /// The message is malformed, a wanted field has the wrong wire type or an invalid
    /// string, the time does not fit `i64`, or a required field with explicit presence
    /// is absent (see the module documentation for the order).
    ///
    /// # Panics
    /// If `numbers.len() != self.fields().numbers.len()`.
    pub fn extract<'a>(
        &self,
        msg: &'a [u8],
        numbers: &mut [f64],
    ) -> Result<ProtoExtracted<'a>, Reject> {
        let c = &*self.inner;
        assert_eq!(
            numbers.len(),
            c.fields.numbers.len(),
            "ProtobufExtractor::extract: `numbers` needs one slot per configured number field"
        );
        if c.defaults_zero {
            numbers.fill(0.0);
        }
        let mut seen = 0u64;
        // The last raw value of the key, time and id fields.
        let (mut key_raw, mut time_raw, mut id_raw) = (Raw::None, Raw::None, Raw::None);
        let mut i = 0usize;
        while i < msg.len() {
            let tag_at = i;
            let tag = match msg[i] {
                b if b < 0x80 => {
                    i += 1;
                    b as u64
                }
                _ => {
                    let (v, n) = varint(msg, i).map_err(|reason| invalid(tag_at, reason))?;
                    if n > 5 || v > u32::MAX as u64 {
                        return Err(invalid(tag_at, "tag is not a 32-bit varint"));
                    }
                    i += n;
                    v
                }
            };
            let number = (tag >> 3) as u32;
            let wire = (tag & 7) as u8;
            if number == 0 {
                return Err(invalid(tag_at, "field number 0"));
            }
            let entry = if (number as usize) < DIRECT {
                c.direct[number as usize]
            } else {
                c.far
                    .iter()
                    .find(|(n, _)| *n == number)
                    .map_or(NONE, |(_, e)| *e)
            };
            // The value: its raw bits (varint and fixed) or its bytes (length-delimited).
            let value_at = i;
            let (bits, bytes): (u64, &'a [u8]) = match wire {
                0 => {
                    let (v, n) = varint(msg, i).map_err(|reason| invalid(value_at, reason))?;
                    i += n;
                    (v, &[])
                }
                1 => {
                    let Some(b) = msg.get(i..i + 8) else {
                        return Err(invalid(value_at, "truncated fixed64 value"));
                    };
                    i += 8;
                    (u64::from_le_bytes(b.try_into().expect("8 bytes")), &[])
                }
                2 => {
                    let (len, n) = varint(msg, i).map_err(|reason| invalid(value_at, reason))?;
                    let start = i + n;
                    if len > (msg.len() - start) as u64 {
                        return Err(invalid(
                            value_at,
                            "length-delimited field runs past the end of the message",
                        ));
                    }
                    i = start + len as usize;
                    (0, &msg[start..i])
                }
                5 => {
                    let Some(b) = msg.get(i..i + 4) else {
                        return Err(invalid(value_at, "truncated fixed32 value"));
                    };
                    i += 4;
                    (
                        u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64,
                        &[],
                    )
                }
                3 | 4 => {
                    return Err(invalid(
                        tag_at,
                        "groups (wire types 3 and 4) are not supported",
                    ));
                }
                _ => return Err(invalid(tag_at, "invalid wire type (6 or 7)")),
            };
            if entry == NONE {
                continue;
            }
            let e = &c.entries[entry as usize];
            if wire != e.wire {
                return Err(Reject::WrongType {
                    field: e.name.clone(),
                    found: WIRE_NAMES[wire as usize],
                    expected: e.ty.expected(),
                });
            }
            seen |= 1 << entry;
            let raw = if wire == 2 {
                match std::str::from_utf8(bytes) {
                    Ok(s) => Raw::Str(s),
                    Err(_) => {
                        return Err(Reject::InvalidUtf8 {
                            field: e.name.clone(),
                        });
                    }
                }
            } else {
                Raw::Bits(bits)
            };
            for &slot in &e.numbers {
                numbers[slot] = e.ty.number(bits);
            }
            if entry as usize == c.key {
                key_raw = raw;
            }
            if entry as usize == c.time {
                time_raw = raw;
            }
            if Some(entry as usize) == c.id {
                id_raw = raw;
            }
        }
        let missing = c.required & !seen;
        if missing != 0 {
            return Err(self.missing(missing));
        }
        let key = c.entries[c.key].ty.scalar(key_raw);
        let time_entry = &c.entries[c.time];
        let ts = match time_entry.ty.scalar(time_raw) {
            Scalar::Int(t) => t,
            Scalar::Uint(u) if u <= i64::MAX as u64 => u as i64,
            _ => {
                return Err(Reject::WrongType {
                    field: time_entry.name.clone(),
                    found: "an unsigned integer above 9223372036854775807",
                    expected: "an integer (epoch milliseconds) fitting i64",
                });
            }
        };
        let id = c.id.and_then(|i| {
            let e = &c.entries[i];
            match id_raw {
                Raw::None if e.presence => None,
                raw => Some(e.ty.scalar(raw)),
            }
        });
        Ok(ProtoExtracted { key, ts, id })
    }

    /// The first missing field, in the JSON extractor's order: key, time, numbers.
    #[cold]
    fn missing(&self, missing: u64) -> Reject {
        let c = &*self.inner;
        let mut order = vec![c.key, c.time];
        for n in 0..c.fields.numbers.len() {
            if let Some(i) = c.entries.iter().position(|e| e.numbers.contains(&n)) {
                order.push(i);
            }
        }
        let first = order
            .into_iter()
            .find(|i| missing & (1 << i) != 0)
            .expect("a required entry is missing");
        Reject::MissingField {
            field: c.entries[first].name.clone(),
        }
    }
}

/// Names of the wire types, for reasons.
const WIRE_NAMES: [&str; 8] = [
    "a varint (wire type 0)",
    "a fixed 64-bit value (wire type 1)",
    "length-delimited (wire type 2)",
    "a group start (wire type 3)",
    "a group end (wire type 4)",
    "a fixed 32-bit value (wire type 5)",
    "wire type 6",
    "wire type 7",
];

/// The last raw value of a key, time or id field.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    None,
    Bits(u64),
    Str(&'a str),
}

impl Ty {
    /// A key, time or id value (the default when absent).
    #[inline]
    fn scalar(self, raw: Raw<'_>) -> Scalar<'_> {
        match (self, raw) {
            (Ty::String, Raw::Str(s)) => Scalar::Str(s),
            (Ty::String, _) => Scalar::Str(""),
            (ty, Raw::Bits(b)) => ty.integer(b),
            (ty, _) => ty.integer(0),
        }
    }
}

#[cold]
fn invalid(offset: usize, reason: &'static str) -> Reject {
    Reject::InvalidProtobuf { offset, reason }
}

/// Whether a field's type suits its role; the type if so.
fn usable(fd: &FieldDescriptor, role: u8, number: bool) -> Result<Ty, String> {
    if fd.is_map() {
        return Err("is a map; only singular scalar fields can be used".to_owned());
    }
    if fd.is_list() || fd.cardinality() == Cardinality::Repeated {
        return Err("is repeated; only singular scalar fields can be used".to_owned());
    }
    let kind = fd.kind();
    let described = match &kind {
        Kind::Message(m) => format!("a message ({})", m.full_name()),
        Kind::Enum(e) => format!("an enum ({})", e.full_name()),
        Kind::Bool => "a bool".to_owned(),
        Kind::Bytes => "bytes".to_owned(),
        _ => String::new(),
    };
    let ty = Ty::of(&kind);
    let ok = match ty {
        None => false,
        Some(ty) => {
            (role & (ROLE_KEY | ROLE_ID) == 0 || ty == Ty::String || ty.is_integer())
                && (role & ROLE_TIME == 0 || ty.is_integer())
                && (!number || ty != Ty::String)
        }
    };
    if ok {
        return Ok(ty.expect("checked"));
    }
    let is = if described.is_empty() {
        format!("{kind:?}").to_lowercase()
    } else {
        described
    };
    let wanted = if role & ROLE_TIME != 0 {
        "an integer type (epoch milliseconds)"
    } else if role & (ROLE_KEY | ROLE_ID) != 0 {
        "a string or an integer type"
    } else {
        "a numeric type (double, float or an integer)"
    };
    Err(format!("is {is}; its role needs {wanted}"))
}

/// Decodes the varint at `i`: its value and length.
///
/// # Errors
/// Truncated, or longer than 10 bytes / over 64 bits.
#[inline]
fn varint(b: &[u8], i: usize) -> Result<(u64, usize), &'static str> {
    let mut v = 0u64;
    for k in 0..MAX_VARINT_LEN {
        let Some(&byte) = b.get(i + k) else {
            return Err("truncated varint");
        };
        if k == 9 && byte > 1 {
            return Err("varint overflows 64 bits");
        }
        v |= ((byte & 0x7f) as u64) << (7 * k);
        if byte < 0x80 {
            return Ok((v, k + 1));
        }
    }
    Err("varint longer than 10 bytes")
}

/// One piece of a length-delimited batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message (without its prefix); `offset` is where its prefix starts.
    Message {
        /// Offset of the length prefix in the batch.
        offset: usize,
        /// The message's bytes.
        bytes: &'a [u8],
    },
    /// A message longer than the limit, skipped; `head` is its first bytes (up to
    /// the limit + 1) that the data holds.
    TooLarge {
        /// Offset of the length prefix in the batch.
        offset: usize,
        /// The length its prefix declares.
        len: u64,
        /// Its first bytes.
        head: &'a [u8],
    },
    /// The rest of the batch cannot be split: a broken length prefix, or one pointing
    /// past the end. Always the last frame.
    Broken {
        /// Offset of the bad prefix in the batch.
        offset: usize,
        /// Why, for people.
        reason: &'static str,
        /// The rest of the batch, from the bad prefix.
        rest: &'a [u8],
    },
}

/// Splits a batch of length-delimited messages (each preceded by its length as a
/// varint), bounded by a largest message size. An iterator of [`Frame`]s.
#[derive(Debug, Clone)]
pub struct Delimited<'a> {
    data: &'a [u8],
    at: usize,
    max: usize,
}

impl<'a> Delimited<'a> {
    /// Splits `data`, refusing messages over `max_message` bytes.
    pub fn new(data: &'a [u8], max_message: usize) -> Self {
        Delimited {
            data,
            at: 0,
            max: max_message,
        }
    }

    /// Where the next frame starts.
    pub fn offset(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for Delimited<'a> {
    type Item = Frame<'a>;

    #[inline]
    fn next(&mut self) -> Option<Frame<'a>> {
        let offset = self.at;
        if offset >= self.data.len() {
            return None;
        }
        let broken = |at: &mut usize, data: &'a [u8], reason| {
            *at = data.len();
            Some(Frame::Broken {
                offset,
                reason,
                rest: &data[offset..],
            })
        };
        let (len, n) = match varint(self.data, offset) {
            Ok(x) => x,
            Err("truncated varint") => {
                return broken(
                    &mut self.at,
                    self.data,
                    "the length prefix is cut off by the end of the data",
                );
            }
            Err(_) => {
                return broken(
                    &mut self.at,
                    self.data,
                    "the length prefix is not a valid varint",
                );
            }
        };
        let start = offset + n;
        let remaining = (self.data.len() - start) as u64;
        if len > self.max as u64 {
            let end = start + len.min(remaining) as usize;
            self.at = end;
            let head_end = start + (self.max as u64 + 1).min(len).min(remaining) as usize;
            return Some(Frame::TooLarge {
                offset,
                len,
                head: &self.data[start..head_end],
            });
        }
        if len > remaining {
            return broken(
                &mut self.at,
                self.data,
                "the length prefix points past the end of the data",
            );
        }
        self.at = start + len as usize;
        Some(Frame::Message {
            offset,
            bytes: &self.data[start..self.at],
        })
    }
}

/// Appends `msg` to `out` with its length prefix, as [`Delimited`] reads it.
pub fn write_delimited(out: &mut Vec<u8>, msg: &[u8]) {
    let mut len = msg.len() as u64;
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(msg);
}

/// The end of the last whole message of a length-delimited batch that starts at a
/// message boundary (how much of `data` can be cut off as whole messages): a source
/// reading in chunks cuts there. `None` if `data` does not hold a whole first message
/// (the first prefix is cut off or points past the end); `Some(0)` for empty data.
/// Also gives the first message's declared length, when its prefix is whole.
pub fn whole_messages(data: &[u8]) -> (Option<usize>, Option<u64>) {
    let mut at = 0usize;
    let mut first = None;
    let mut whole = Some(0);
    while at < data.len() {
        let Ok((len, n)) = varint(data, at) else {
            break;
        };
        if first.is_none() {
            first = Some(len);
        }
        if len > (data.len() - at - n) as u64 {
            break;
        }
        at += n + len as usize;
        whole = Some(at);
    }
    if whole == Some(0) && !data.is_empty() {
        whole = None;
    }
    (whole, first)
}

#[cfg(test)]
#[path = "protobuf_tests.rs"]
mod tests;
