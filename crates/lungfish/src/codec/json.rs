//! The ingest JSON field extractor: validates one JSON document and pulls out the
//! few top-level fields the pipeline needs (key, event time, optional id, aggregated
//! numbers) in a single pass, without allocating in the common case.
//!
//! This is the only parse an event ever gets (see `docs/ARCHITECTURE.md`, step 2), so
//! the extractor validates the *whole* document against RFC 8259, not just the parts
//! it extracts:
//!
//! * the input is exactly one JSON value, optionally surrounded by whitespace
//!   (space, `\t`, `\n`, `\r`);
//! * the whole input is valid UTF-8 (checked once, up front);
//! * strings have no raw control characters and only valid escapes (`\uXXXX`
//!   surrogates must come in high/low pairs);
//! * numbers follow the JSON grammar exactly, and their magnitude must be
//!   representable as an `f64` (like `serde_json`, `1e400` is rejected: RFC 8259
//!   allows implementations to limit the range of numbers);
//! * containers nest at most [`MAX_DEPTH`] levels (checked without recursion, so no
//!   input can overflow the stack).
//!
//! Errors are reported in a fixed order of precedence so that a document always gets
//! the same [`Reject::kind`]: invalid UTF-8 anywhere first, then the first syntax
//! error (or excessive nesting) in document order, then a top-level value that is
//! not an object, then the first field problem in document order (wrong type or
//! duplicate), then missing fields (key, time, then numbers in configured order).

use std::borrow::Cow;
use std::sync::Arc;

/// Maximum nesting depth of arrays and objects; the top-level object is level 1.
/// Deeper documents are rejected with [`Reject::TooDeep`].
pub const MAX_DEPTH: usize = 128;

/// Names of the top-level fields an event must (or may) carry.
///
/// Names are compared with the document's field names after unescaping, byte for
/// byte (no Unicode normalisation). The same name may be given to several roles (for
/// example as both `key` and `id`); one field then feeds all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    /// The partition/aggregation key: required, a JSON string or integer.
    pub key: String,
    /// The event time in epoch milliseconds: required, a JSON integer fitting `i64`.
    pub time: String,
    /// The event id, if the pipeline uses one: optional in the document, and when
    /// present a JSON string or integer.
    pub id: Option<String>,
    /// The aggregated numeric fields: each required, any JSON number.
    pub numbers: Vec<String>,
}

/// Compiled, reusable extractor for one [`FieldNames`] configuration.
///
/// Cheap to clone (the compiled form is shared behind an `Arc`), `Send + Sync`, and
/// stateless between calls, so one instance can serve every ingest worker.
#[derive(Debug, Clone)]
pub struct JsonExtractor {
    inner: Arc<Compiled>,
}

/// The extracted fields of one accepted document.
///
/// Strings borrow from the input (`Cow::Borrowed`) unless the field's value contains
/// escapes, in which case they are unescaped into `Cow::Owned`. Integer keys and ids
/// are given as their literal text (`42`, `-7`).
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted<'a> {
    /// The key field's value.
    pub key: Cow<'a, str>,
    /// The event time, epoch milliseconds.
    pub ts: i64,
    /// The id field's value; `None` if no id field is configured or it is absent.
    pub id: Option<Cow<'a, str>>,
}

/// Why a document was rejected. `Display` gives a specific, human-readable reason
/// (with a byte offset into the document where one applies); [`Reject::kind`] gives a
/// short stable label for metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// The input is not one syntactically valid JSON value (or a number in it is too
    /// large for an `f64`). `offset` is the byte where the problem was found.
    #[error("invalid JSON at byte {offset}: {reason}")]
    InvalidJson {
        /// Byte offset of the problem in the document.
        offset: usize,
        /// What was wrong, e.g. "expected ',' or '}'".
        reason: &'static str,
    },
    /// The input is not valid UTF-8; `offset` is the first byte of the first invalid
    /// sequence.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The input is valid JSON but its top-level value is not an object.
    #[error("top-level value is {found}, expected an object")]
    NotObject {
        /// What the top-level value is, e.g. "an array".
        found: &'static str,
    },
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The configured field name.
        field: String,
    },
    /// A wanted field has a value of the wrong type (or an integer outside `i64`
    /// where the event time is expected).
    #[error("field `{field}` is {found}, expected {expected}")]
    WrongType {
        /// The configured field name.
        field: String,
        /// What the value is, e.g. "a string".
        found: &'static str,
        /// What the field's role requires, e.g. "an integer (epoch milliseconds)".
        expected: &'static str,
    },
    /// A wanted field appears more than once in the top-level object.
    #[error("duplicate field `{field}`")]
    DuplicateField {
        /// The configured field name.
        field: String,
    },
    /// Arrays and objects nest deeper than [`MAX_DEPTH`] levels; `offset` is the byte
    /// of the bracket that went too deep.
    #[error("nesting deeper than {max} levels at byte {offset}", max = MAX_DEPTH)]
    TooDeep {
        /// Byte offset of the opening bracket beyond the limit.
        offset: usize,
    },
}

impl Reject {
    /// Short stable label for metrics, from a bounded set: `invalid_json`,
    /// `invalid_utf8`, `not_object`, `missing_field`, `wrong_type`,
    /// `duplicate_field`, `too_deep`.
    pub fn kind(&self) -> &'static str {
        match self {
            Reject::InvalidJson { .. } => "invalid_json",
            Reject::InvalidUtf8 { .. } => "invalid_utf8",
            Reject::NotObject { .. } => "not_object",
            Reject::MissingField { .. } => "missing_field",
            Reject::WrongType { .. } => "wrong_type",
            Reject::DuplicateField { .. } => "duplicate_field",
            Reject::TooDeep { .. } => "too_deep",
        }
    }
}

// ---------------------------------------------------------------------------------
// Compiled configuration

const ROLE_KEY: u8 = 1;
const ROLE_TIME: u8 = 2;
const ROLE_ID: u8 = 4;

const EXPECT_KEY: &str = "a string or an integer";
const EXPECT_TIME: &str = "an integer (epoch milliseconds)";
const EXPECT_NUMBER: &str = "a number";

const FOUND_STRING: &str = "a string";
const FOUND_FLOAT: &str = "a number with a fraction or exponent";
const FOUND_INT_RANGE: &str = "an integer outside the i64 range";

/// Distinct names beyond this many are tracked in a heap-allocated table per call.
const SMALL_ENTRIES: usize = 128;

/// One distinct wanted name and the roles it plays.
#[derive(Debug)]
struct Entry {
    /// The name's length in bytes.
    len: usize,
    /// The name's first (up to) 8 bytes, little-endian, zero-padded.
    prefix: u64,
    /// The name's bytes.
    name: Box<[u8]>,
    /// Bitset of `ROLE_*`.
    roles: u8,
    /// Indices into `numbers` this field feeds.
    numbers: Box<[usize]>,
}

#[derive(Debug)]
struct Compiled {
    fields: FieldNames,
    entries: Box<[Entry]>,
    /// Bits of the entries that must be present (key, time, numbers); only used when
    /// there are at most `SMALL_ENTRIES` entries.
    required: u128,
}

impl JsonExtractor {
    /// Compiles an extractor for `fields`. Never fails: any names are accepted, and a
    /// name given to several roles is looked up once and feeds all of them.
    pub fn new(fields: FieldNames) -> Self {
        let mut entries: Vec<Entry> = Vec::new();
        let mut add = |name: &str, role: u8, number: Option<usize>| -> usize {
            let name = name.as_bytes();
            let idx = match entries.iter().position(|e| *e.name == *name) {
                Some(idx) => idx,
                None => {
                    let mut head = [0u8; 8];
                    let n = name.len().min(8);
                    head[..n].copy_from_slice(&name[..n]);
                    entries.push(Entry {
                        len: name.len(),
                        prefix: u64::from_le_bytes(head),
                        name: name.into(),
                        roles: 0,
                        numbers: Box::new([]),
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
            idx
        };
        let mut required = Vec::new();
        required.push(add(&fields.key, ROLE_KEY, None));
        required.push(add(&fields.time, ROLE_TIME, None));
        if let Some(id) = &fields.id {
            add(id, ROLE_ID, None);
        }
        for (i, n) in fields.numbers.iter().enumerate() {
            required.push(add(n, 0, Some(i)));
        }
        let required = required
            .iter()
            .filter(|&&e| e < SMALL_ENTRIES)
            .fold(0u128, |m, &e| m | 1u128 << e);
        JsonExtractor {
            inner: Arc::new(Compiled {
                fields,
                entries: entries.into(),
                required,
            }),
        }
    }

    /// The field names this extractor was compiled for.
    pub fn fields(&self) -> &FieldNames {
        &self.inner.fields
    }

    /// Validates `doc` as one complete JSON document and extracts the fields.
    ///
    /// `numbers` must have `len == fields.numbers.len()`; on success `numbers[i]`
    /// holds the value of `fields.numbers[i]`, correctly rounded to `f64`. On error
    /// the contents of `numbers` are unspecified.
    ///
    /// Accepts exactly the documents that are one valid JSON object (see the module
    /// documentation for the rules and the order in which problems are reported)
    /// whose wanted fields are present once each with the right types. Does not
    /// allocate unless the key or id needs unescaping, the document is rejected, or
    /// more than 128 distinct field names are configured.
    ///
    /// # Panics
    /// If `numbers.len() != self.fields().numbers.len()`.
    pub fn extract<'a>(&self, doc: &'a [u8], numbers: &mut [f64]) -> Result<Extracted<'a>, Reject> {
        let c = &*self.inner;
        assert_eq!(
            numbers.len(),
            c.fields.numbers.len(),
            "JsonExtractor::extract: `numbers` needs one slot per configured number field"
        );
        let text = match std::str::from_utf8(doc) {
            Ok(t) => t,
            Err(e) => {
                return Err(Reject::InvalidUtf8 {
                    offset: e.valid_up_to(),
                });
            }
        };
        let mut out = Out {
            key: None,
            ts: None,
            id: None,
            seen: 0,
            seen_large: Vec::new(),
            pending: None,
        };
        if c.entries.len() > SMALL_ENTRIES {
            out.seen_large = vec![false; c.entries.len()];
        }
        if let Err(fail) = parse_document(c, text, numbers, &mut out) {
            return Err(fail.into_reject());
        }
        if let Some(p) = out.pending {
            return Err(p.into_reject());
        }
        match (out.key, out.ts) {
            (Some(key), Some(ts))
                if out.seen_large.is_empty() && out.seen & c.required == c.required =>
            {
                Ok(Extracted {
                    key,
                    ts,
                    id: out.id,
                })
            }
            (key, ts) => missing(c, key, ts, out.id, &out.seen_large, out.seen),
        }
    }
}

/// Reports the first missing field (key, time, then numbers in configured order), or
/// finishes the extraction when nothing is missing.
#[cold]
#[inline(never)]
fn missing<'a>(
    c: &Compiled,
    key: Option<Cow<'a, str>>,
    ts: Option<i64>,
    id: Option<Cow<'a, str>>,
    seen_large: &[bool],
    seen: u128,
) -> Result<Extracted<'a>, Reject> {
    let field = |f: &String| Reject::MissingField { field: f.clone() };
    let key = key.ok_or_else(|| field(&c.fields.key))?;
    let ts = ts.ok_or_else(|| field(&c.fields.time))?;
    for (i, name) in c.fields.numbers.iter().enumerate() {
        let e = c
            .entries
            .iter()
            .position(|e| e.numbers.contains(&i))
            .unwrap_or(usize::MAX);
        let present = if seen_large.is_empty() {
            e < SMALL_ENTRIES && seen & (1u128 << e) != 0
        } else {
            seen_large.get(e).copied().unwrap_or(false)
        };
        if !present {
            return Err(field(name));
        }
    }
    // Only reached with more than `SMALL_ENTRIES` names: nothing is missing.
    Ok(Extracted { key, ts, id })
}

// ---------------------------------------------------------------------------------
// Parsing

/// Why the syntax is invalid (the reason texts of [`Reject::InvalidJson`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Why {
    Eof,
    Value,
    End,
    NameOrClose,
    Name,
    Colon,
    CommaOrBrace,
    CommaOrBracket,
    True,
    False,
    Null,
    EofInString,
    Control,
    Surrogate,
    Escape,
    Hex,
    LeadingZero,
    Digit,
    FracDigit,
    ExpDigit,
    Range,
}

impl Why {
    const ALL: [Why; 21] = [
        Why::Eof,
        Why::Value,
        Why::End,
        Why::NameOrClose,
        Why::Name,
        Why::Colon,
        Why::CommaOrBrace,
        Why::CommaOrBracket,
        Why::True,
        Why::False,
        Why::Null,
        Why::EofInString,
        Why::Control,
        Why::Surrogate,
        Why::Escape,
        Why::Hex,
        Why::LeadingZero,
        Why::Digit,
        Why::FracDigit,
        Why::ExpDigit,
        Why::Range,
    ];

    fn text(self) -> &'static str {
        match self {
            Why::Eof => "unexpected end of input",
            Why::Value => "expected a value",
            Why::End => "expected end of input after the value",
            Why::NameOrClose => "expected '\"' or '}'",
            Why::Name => "expected '\"'",
            Why::Colon => "expected ':'",
            Why::CommaOrBrace => "expected ',' or '}'",
            Why::CommaOrBracket => "expected ',' or ']'",
            Why::True => "invalid literal, expected `true`",
            Why::False => "invalid literal, expected `false`",
            Why::Null => "invalid literal, expected `null`",
            Why::EofInString => "unexpected end of input in a string",
            Why::Control => "control character in a string (must be escaped)",
            Why::Surrogate => "unpaired surrogate in \\u escape",
            Why::Escape => "invalid escape",
            Why::Hex => "expected 4 hex digits in \\u escape",
            Why::LeadingZero => "leading zeros are not allowed",
            Why::Digit => "expected a digit",
            Why::FracDigit => "expected a digit after '.'",
            Why::ExpDigit => "expected a digit in the exponent",
            Why::Range => "number out of range (beyond f64)",
        }
    }
}

/// Internal, allocation-free failure packed in one word (so results stay in
/// registers): the top byte is a `Why`, `TOO_DEEP` or `NOT_OBJECT`; the rest is the
/// byte offset (for `NOT_OBJECT`: the top-level value's first byte).
#[derive(Debug, Clone, Copy)]
struct Fail(u64);

const TOO_DEEP: u64 = 0xFE;
const NOT_OBJECT: u64 = 0xFD;

impl Fail {
    #[inline]
    fn new(code: u64, at: usize) -> Fail {
        Fail(code << 56 | (at as u64 & ((1 << 56) - 1)))
    }

    #[cold]
    fn into_reject(self) -> Reject {
        let at = (self.0 & ((1 << 56) - 1)) as usize;
        match self.0 >> 56 {
            TOO_DEEP => Reject::TooDeep { offset: at },
            NOT_OBJECT => Reject::NotObject {
                found: describe(at as u8),
            },
            code => Reject::InvalidJson {
                offset: at,
                reason: Why::ALL[code as usize].text(),
            },
        }
    }
}

/// A syntax error at `at`; at the end of input the reason says so instead.
#[cold]
#[inline(never)]
fn syntax(b: &[u8], at: usize, why: Why) -> Fail {
    let why = if at >= b.len() && why != Why::EofInString {
        Why::Eof
    } else {
        why
    };
    Fail::new(why as u64, at)
}

/// A field problem, kept until the whole document has been validated.
struct Pending<'c> {
    field: &'c [u8],
    what: PendingWhat,
}

enum PendingWhat {
    WrongType {
        found: &'static str,
        expected: &'static str,
    },
    Duplicate,
}

impl Pending<'_> {
    #[cold]
    fn into_reject(self) -> Reject {
        let field = String::from_utf8_lossy(self.field).into_owned();
        match self.what {
            PendingWhat::WrongType { found, expected } => Reject::WrongType {
                field,
                found,
                expected,
            },
            PendingWhat::Duplicate => Reject::DuplicateField { field },
        }
    }
}

/// What has been extracted so far.
struct Out<'a, 'c> {
    key: Option<Cow<'a, str>>,
    ts: Option<i64>,
    id: Option<Cow<'a, str>>,
    /// Entries seen (bit per entry), when there are at most `SMALL_ENTRIES`.
    seen: u128,
    /// Entries seen, when there are more.
    seen_large: Vec<bool>,
    /// The first field problem.
    pending: Option<Pending<'c>>,
}

/// A scanned number literal.
#[derive(Debug, Clone, Copy)]
struct Num {
    /// One past its last byte.
    end: usize,
    /// No fraction and no exponent.
    integer: bool,
    neg: bool,
    /// The decimal significand (all digits, ignoring the point); meaningful only if
    /// `digits <= 19`.
    mant: u64,
    /// How many digits `mant` took (a lone leading `0` of the integer part is not
    /// counted).
    digits: u32,
    /// The power of ten to scale `mant` by (exponent minus fraction digits).
    exp10: i64,
}

/// A wanted field's value, classified.
#[derive(Clone, Copy)]
enum Scalar {
    /// String content between the quotes.
    Str {
        start: usize,
        end: usize,
        escaped: bool,
    },
    /// A number literal starting at `start`.
    Num { start: usize, num: Num },
    /// Any other type; the string describes it for error messages.
    Other(&'static str),
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// Loads 8 bytes at `i` little-endian; past the end of `b` the bytes read as spaces
/// (which are neither digits nor special inside strings).
#[inline(always)]
fn load8(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(chunk) => u64::from_le_bytes(chunk.try_into().unwrap_or([b' '; 8])),
        None => load8_tail(b, i),
    }
}

#[inline(always)]
fn load8_tail(b: &[u8], i: usize) -> u64 {
    const SPACES: u64 = LO * b' ' as u64;
    let n = b.len().saturating_sub(i); // 0..=7 bytes left
    if n == 0 {
        return SPACES;
    }
    match b.last_chunk::<8>() {
        // Overlapping load of the last 8 bytes, shifted down to start at `i`.
        Some(last) => (u64::from_le_bytes(*last) >> (8 * (8 - n))) | (SPACES << (8 * n)),
        None => {
            let mut buf = [b' '; 8];
            buf[..n].copy_from_slice(&b[i..]);
            u64::from_le_bytes(buf)
        }
    }
}

fn parse_document<'a, 'c>(
    c: &'c Compiled,
    text: &'a str,
    numbers: &mut [f64],
    out: &mut Out<'a, 'c>,
) -> Result<(), Fail> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    match b.get(i) {
        Some(b'{') => {}
        Some(&first) => {
            // Validate the whole value first: only valid JSON is "not an object".
            let end = skip_ws(b, skip_value(b, text, i, 0)?);
            if end != b.len() {
                return Err(syntax(b, end, Why::End));
            }
            return Err(Fail::new(NOT_OBJECT, first as usize));
        }
        None => return Err(syntax(b, i, Why::Value)),
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        let mut expect_msg = Why::NameOrClose;
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(syntax(b, i, expect_msg));
            }
            expect_msg = Why::Name;
            let ns = i + 1;
            // Fast path: a short name without escapes, found with one 8-byte load
            // that also serves as the name's prefix for the lookup.
            let w = load8(b, ns);
            let m = special_bytes(w);
            let at = ns + (m.trailing_zeros() / 8) as usize;
            let (ne, escaped) = if m != 0 && b[at] == b'"' {
                (at, false)
            } else {
                scan_string(b, ns)?
            };
            let len = ne - ns;
            let entry = if escaped {
                c.entries
                    .iter()
                    .position(|e| escaped_eq(&b[ns..ne], &e.name))
            } else {
                let prefix = if len >= 8 {
                    w
                } else {
                    w & ((1u64 << (len * 8)) - 1)
                };
                c.entries.iter().position(|e| {
                    e.len == len && e.prefix == prefix && (len <= 8 || e.name[8..] == b[ns + 8..ne])
                })
            };
            i = skip_ws(b, ne + 1);
            if b.get(i) != Some(&b':') {
                return Err(syntax(b, i, Why::Colon));
            }
            i = skip_ws(b, i + 1);
            i = match entry {
                None => skip_value(b, text, i, 1)?,
                Some(e) => take_field(c, e, b, text, i, numbers, out)?,
            };
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(syntax(b, i, Why::CommaOrBrace)),
            }
        }
    }
    let end = skip_ws(b, i);
    if end != b.len() {
        return Err(syntax(b, end, Why::End));
    }
    Ok(())
}

/// What a value starting with byte `c` is, for error messages.
fn describe(c: u8) -> &'static str {
    match c {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => FOUND_STRING,
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

/// Records a field problem unless an earlier one is already recorded.
#[inline]
fn problem<'c>(out: &mut Out<'_, 'c>, field: &'c [u8], what: PendingWhat) {
    if out.pending.is_none() {
        out.pending = Some(Pending { field, what });
    }
}

/// Parses the value of wanted entry `e` at `i`, applies its roles, and returns the
/// position after the value.
#[inline]
fn take_field<'a, 'c>(
    c: &'c Compiled,
    e: usize,
    b: &[u8],
    text: &'a str,
    i: usize,
    numbers: &mut [f64],
    out: &mut Out<'a, 'c>,
) -> Result<usize, Fail> {
    let (scalar, next) = match b.get(i) {
        Some(b'"') => {
            let (end, escaped) = scan_string(b, i + 1)?;
            let s = Scalar::Str {
                start: i + 1,
                end,
                escaped,
            };
            (s, end + 1)
        }
        Some(b'-' | b'0'..=b'9') => {
            let num = scan_number(b, text, i)?;
            (Scalar::Num { start: i, num }, num.end)
        }
        Some(&other) => (Scalar::Other(describe(other)), skip_value(b, text, i, 1)?),
        None => return Err(syntax(b, i, Why::Value)),
    };
    let entry = &c.entries[e];
    let dup = if out.seen_large.is_empty() {
        let bit = 1u128 << e;
        let dup = out.seen & bit != 0;
        out.seen |= bit;
        dup
    } else {
        std::mem::replace(&mut out.seen_large[e], true)
    };
    if dup {
        problem(out, &entry.name, PendingWhat::Duplicate);
        return Ok(next);
    }
    let wrong = |found, expected| PendingWhat::WrongType { found, expected };
    let roles = entry.roles;
    if roles & (ROLE_KEY | ROLE_ID) != 0 {
        let v = match scalar {
            Scalar::Str {
                start,
                end,
                escaped,
            } => {
                let raw = &text[start..end];
                Some(if escaped {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                })
            }
            Scalar::Num { start, num } if num.integer => Some(Cow::Borrowed(&text[start..num.end])),
            Scalar::Num { .. } => {
                problem(out, &entry.name, wrong(FOUND_FLOAT, EXPECT_KEY));
                None
            }
            Scalar::Other(found) => {
                problem(out, &entry.name, wrong(found, EXPECT_KEY));
                None
            }
        };
        if let Some(v) = v {
            if roles & ROLE_ID != 0 {
                if roles & ROLE_KEY != 0 {
                    out.key = Some(v.clone());
                }
                out.id = Some(v);
            } else {
                out.key = Some(v);
            }
        }
    }
    if roles & ROLE_TIME != 0 {
        match scalar {
            Scalar::Num { num, .. } if num.integer => match num_to_i64(&num) {
                Some(v) => out.ts = Some(v),
                None => problem(out, &entry.name, wrong(FOUND_INT_RANGE, EXPECT_TIME)),
            },
            Scalar::Num { .. } => problem(out, &entry.name, wrong(FOUND_FLOAT, EXPECT_TIME)),
            Scalar::Str { .. } => problem(out, &entry.name, wrong(FOUND_STRING, EXPECT_TIME)),
            Scalar::Other(found) => problem(out, &entry.name, wrong(found, EXPECT_TIME)),
        }
    }
    if !entry.numbers.is_empty() {
        match scalar {
            Scalar::Num { start, num } => {
                let v = num_to_f64(&num, &text[start..num.end]);
                for &n in entry.numbers.iter() {
                    numbers[n] = v;
                }
            }
            Scalar::Str { .. } => problem(out, &entry.name, wrong(FOUND_STRING, EXPECT_NUMBER)),
            Scalar::Other(found) => problem(out, &entry.name, wrong(found, EXPECT_NUMBER)),
        }
    }
    Ok(next)
}

/// Skips one complete value starting at `i` (whitespace already skipped) whose
/// enclosing container is at nesting level `parent_depth` (0 for the top level).
/// Iterative: the open containers are kept in a bit stack, so the depth limit, not
/// the call stack, bounds the nesting.
fn skip_value(b: &[u8], text: &str, mut i: usize, parent_depth: usize) -> Result<usize, Fail> {
    // Bit `d` set: the container opened at relative level `d` is an object.
    let mut stack: u128 = 0;
    let mut depth: usize = 0;
    loop {
        // One value at `i`.
        match b.get(i) {
            Some(b'"') => i = scan_string(b, i + 1)?.0 + 1,
            Some(b'-' | b'0'..=b'9') => i = scan_number(b, text, i)?.end,
            Some(b't') => i = literal(b, i, b"true")?,
            Some(b'f') => i = literal(b, i, b"false")?,
            Some(b'n') => i = literal(b, i, b"null")?,
            Some(&open @ (b'{' | b'[')) => {
                if parent_depth + depth + 1 > MAX_DEPTH {
                    return Err(Fail::new(TOO_DEEP, i));
                }
                let is_obj = open == b'{';
                i = skip_ws(b, i + 1);
                let close = if is_obj { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    if is_obj {
                        stack |= 1u128 << depth;
                    } else {
                        stack &= !(1u128 << depth);
                    }
                    depth += 1;
                    if is_obj {
                        i = member_name(b, i, Why::NameOrClose)?;
                    }
                    continue;
                }
            }
            _ => return Err(syntax(b, i, Why::Value)),
        }
        // A value is complete: close containers or move to the next element.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            i = skip_ws(b, i);
            let is_obj = (stack >> (depth - 1)) & 1 == 1;
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if is_obj {
                        i = member_name(b, i, Why::Name)?;
                    }
                    break;
                }
                Some(b'}') if is_obj => {
                    i += 1;
                    depth -= 1;
                }
                Some(b']') if !is_obj => {
                    i += 1;
                    depth -= 1;
                }
                _ => {
                    let msg = if is_obj {
                        Why::CommaOrBrace
                    } else {
                        Why::CommaOrBracket
                    };
                    return Err(syntax(b, i, msg));
                }
            }
        }
    }
}

/// Parses `"name" :` at `i` and returns the position of the member's value.
#[inline]
fn member_name(b: &[u8], i: usize, msg: Why) -> Result<usize, Fail> {
    if b.get(i) != Some(&b'"') {
        return Err(syntax(b, i, msg));
    }
    let (end, _) = scan_string(b, i + 1)?;
    let i = skip_ws(b, end + 1);
    if b.get(i) != Some(&b':') {
        return Err(syntax(b, i, Why::Colon));
    }
    Ok(skip_ws(b, i + 1))
}

/// Matches the literal `lit` (`true`, `false`, `null`) at `i`.
#[inline]
fn literal(b: &[u8], i: usize, lit: &'static [u8]) -> Result<usize, Fail> {
    let end = i + lit.len();
    if b.get(i..end) == Some(lit) {
        return Ok(end);
    }
    // Point at the first byte that differs.
    let mut j = i;
    while j < end && b.get(j) == Some(&lit[j - i]) {
        j += 1;
    }
    Err(syntax(
        b,
        j,
        match lit[0] {
            b't' => Why::True,
            b'f' => Why::False,
            _ => Why::Null,
        },
    ))
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is `"`, `\` or a control character
/// (< 0x20). Bits above the lowest set one may be spurious (borrows propagate
/// upwards), so only the lowest set bit is meaningful.
#[inline(always)]
fn special_bytes(w: u64) -> u64 {
    let q = w ^ (LO * b'"' as u64);
    let s = w ^ (LO * b'\\' as u64);
    let zq = q.wrapping_sub(LO) & !q;
    let zs = s.wrapping_sub(LO) & !s;
    let ctl = w.wrapping_sub(LO * 0x20) & !w;
    (zq | zs | ctl) & HI
}

/// Scans string content starting at `i` (just after the opening quote). Returns the
/// position of the closing quote and whether the content has escapes.
#[inline]
fn scan_string(b: &[u8], mut i: usize) -> Result<(usize, bool), Fail> {
    let mut escaped = false;
    loop {
        let m = special_bytes(load8(b, i));
        if m == 0 {
            i += 8;
            if i >= b.len() {
                return Err(syntax(b, b.len(), Why::EofInString));
            }
            continue;
        }
        i += (m.trailing_zeros() / 8) as usize;
        match b[i] {
            b'"' => return Ok((i, escaped)),
            b'\\' => {
                escaped = true;
                i = scan_escape(b, i)?;
            }
            _ => {
                return Err(syntax(b, i, Why::Control));
            }
        }
    }
}

/// Validates the escape at `i` (a backslash); returns the position after it.
#[inline]
fn scan_escape(b: &[u8], i: usize) -> Result<usize, Fail> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let cp = hex4(b, i + 2)?;
            match cp {
                0xD800..=0xDBFF => {
                    if b.get(i + 6) != Some(&b'\\') || b.get(i + 7) != Some(&b'u') {
                        return Err(syntax(b, i, Why::Surrogate));
                    }
                    let lo = hex4(b, i + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(syntax(b, i, Why::Surrogate));
                    }
                    Ok(i + 12)
                }
                0xDC00..=0xDFFF => Err(syntax(b, i, Why::Surrogate)),
                _ => Ok(i + 6),
            }
        }
        _ => Err(syntax(b, i + 1, Why::Escape)),
    }
}

/// Parses the 4 hex digits of a `\u` escape at `i`.
#[inline]
fn hex4(b: &[u8], i: usize) -> Result<u32, Fail> {
    let mut v = 0u32;
    for j in i..i + 4 {
        let d = match b.get(j) {
            Some(&c @ b'0'..=b'9') => c - b'0',
            Some(&c @ b'a'..=b'f') => c - b'a' + 10,
            Some(&c @ b'A'..=b'F') => c - b'A' + 10,
            _ => return Err(syntax(b, j, Why::Hex)),
        };
        v = v << 4 | d as u32;
    }
    Ok(v)
}

/// Decodes the (already validated) escape at `raw[i]`; returns the character and the
/// escape's length in bytes.
fn decode_escape(raw: &[u8], i: usize) -> (char, usize) {
    let hex = |j: usize| -> u32 {
        raw[j..j + 4]
            .iter()
            .fold(0u32, |v, &c| v << 4 | (c as char).to_digit(16).unwrap_or(0))
    };
    match raw[i + 1] {
        b'b' => ('\u{8}', 2),
        b'f' => ('\u{c}', 2),
        b'n' => ('\n', 2),
        b'r' => ('\r', 2),
        b't' => ('\t', 2),
        b'u' => {
            let hi = hex(i + 2);
            if (0xD800..0xDC00).contains(&hi) {
                let lo = hex(i + 8);
                let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                (
                    char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
                    12,
                )
            } else {
                (char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER), 6)
            }
        }
        other => (other as char, 2),
    }
}

/// Unescapes validated string content.
#[cold]
fn unescape(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut run = 0;
    while let Some(off) = memchr::memchr(b'\\', &b[run..]) {
        let i = run + off;
        out.push_str(&raw[run..i]);
        let (ch, len) = decode_escape(b, i);
        out.push(ch);
        run = i + len;
    }
    out.push_str(&raw[run..]);
    out
}

/// Whether validated string content `raw` (with escapes) unescapes to exactly `name`.
fn escaped_eq(raw: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    let mut n = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            let (ch, len) = decode_escape(raw, i);
            let mut buf = [0u8; 4];
            let enc = ch.encode_utf8(&mut buf).as_bytes();
            if name.get(n..n + enc.len()) != Some(enc) {
                return false;
            }
            n += enc.len();
            i += len;
        } else {
            if name.get(n) != Some(&raw[i]) {
                return false;
            }
            n += 1;
            i += 1;
        }
    }
    n == name.len()
}

/// Parses 8 digit values (one per byte, first digit in the lowest byte) into their
/// decimal value.
#[inline(always)]
fn parse8(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v1 = (v & MASK).wrapping_mul(MUL1);
    let v2 = ((v >> 16) & MASK).wrapping_mul(MUL2);
    (v1.wrapping_add(v2) >> 32) as u32 as u64
}

const POW10_U64: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// Consumes the run of ASCII digits at `i`, 8 at a time, appending them to `mant`
/// (wrapping: only meaningful up to 19 digits) and counting them in `digits`.
#[inline(always)]
fn digit_run(b: &[u8], mut i: usize, mut mant: u64, mut digits: u32) -> (usize, u64, u32) {
    loop {
        // Digits become 0..=9; everything else becomes >= 10.
        let t = load8(b, i) ^ (LO * b'0' as u64);
        let non_digit = (((t & !HI).wrapping_add(LO * 0x76)) | t) & HI;
        if non_digit == 0 {
            mant = mant.wrapping_mul(100_000_000).wrapping_add(parse8(t));
            digits += 8;
            i += 8;
            continue;
        }
        let n = non_digit.trailing_zeros() / 8;
        if n != 0 {
            let v = parse8(t << (64 - 8 * n));
            mant = mant.wrapping_mul(POW10_U64[n as usize]).wrapping_add(v);
            digits += n;
            i += n as usize;
        }
        return (i, mant, digits);
    }
}

/// Scans the number at `start` (a `-` or a digit) per the JSON grammar. Rejects
/// numbers whose magnitude is beyond the `f64` range.
#[inline]
fn scan_number(b: &[u8], text: &str, start: usize) -> Result<Num, Fail> {
    let neg = b[start] == b'-';
    let mut i = start + neg as usize;
    let (mut mant, mut digits) = (0, 0);
    match b.get(i) {
        Some(b'0') => {
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return Err(syntax(b, i, Why::LeadingZero));
            }
        }
        Some(b'1'..=b'9') => (i, mant, digits) = digit_run(b, i, 0, 0),
        _ => return Err(syntax(b, i, Why::Digit)),
    }
    let int_digits = digits;
    let mut integer = true;
    let mut exp10: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let (j, m, d) = digit_run(b, i + 1, mant, digits);
        if j == i + 1 {
            return Err(syntax(b, j, Why::FracDigit));
        }
        exp10 = -((d - digits) as i64);
        (i, mant, digits) = (j, m, d);
        integer = false;
    }
    let mut exp: i64 = 0;
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        integer = false;
        let eneg = b.get(i) == Some(&b'-');
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(syntax(b, i, Why::ExpDigit));
        }
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            exp = (exp * 10 + (d - b'0') as i64).min(1 << 40);
            i += 1;
        }
        if eneg {
            exp = -exp;
        }
        exp10 += exp;
    }
    // |value| < 10^(int_digits + exp): only then can it round to infinity.
    if int_digits as i64 + exp > 308 && slow_f64(&text[start..i]).is_infinite() {
        return Err(syntax(b, start, Why::Range));
    }
    Ok(Num {
        end: i,
        integer,
        neg,
        mant,
        digits,
        exp10,
    })
}

/// The value of an integer literal, if it fits `i64`.
#[inline]
fn num_to_i64(n: &Num) -> Option<i64> {
    // No leading zeros: more than 19 digits is >= 1e19; up to 19, `mant` is exact.
    if n.digits > 19 {
        return None;
    }
    if n.neg {
        (n.mant <= 1u64 << 63).then(|| (n.mant as i64).wrapping_neg())
    } else {
        i64::try_from(n.mant).ok()
    }
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The correctly rounded `f64` of the number literal `lit` scanned as `n`.
///
/// Fast path (Clinger): when the significand is exact in 53 bits and the power of ten
/// is at most 22 in magnitude, both are exact doubles and one IEEE multiplication or
/// division rounds correctly. Everything else goes to std's correctly rounding
/// parser.
#[inline]
fn num_to_f64(n: &Num, lit: &str) -> f64 {
    if n.digits <= 19 && n.mant <= 1u64 << 53 && (-22..=22).contains(&n.exp10) {
        let f = n.mant as f64;
        let f = if n.exp10 >= 0 {
            f * POW10[n.exp10 as usize]
        } else {
            f / POW10[(-n.exp10) as usize]
        };
        return if n.neg { -f } else { f };
    }
    slow_f64(lit)
}

#[cold]
#[inline(never)]
fn slow_f64(lit: &str) -> f64 {
    // Cannot fail: the JSON number grammar is a subset of what std accepts.
    lit.parse::<f64>().unwrap_or(f64::NAN)
}
