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
//!
//! # How it stays fast
//!
//! One pass, no recursion, no allocation on success. Documents up to a kilobyte are
//! copied into a zero-padded stack buffer so the scanners need no bounds checks: the
//! zeros after the document stop every scan. Strings and digit runs are scanned 8
//! bytes at a time (SWAR). Wanted names of up to 7 bytes are recognised with one
//! masked 8-byte compare each; other names, which repeat from one event to the next,
//! are scanned with predictable branches rather than a data-dependent computation.
//! Single-role fields take fast paths (a string key borrowed as is, an integer time
//! accumulated while scanned, a short decimal converted with one exact IEEE
//! operation); everything else goes through general code with the same results.

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

impl Default for FieldNames {
    /// The conventional event shape of the examples and tests:
    /// `{"id": "...", "user": "...", "ts": <epoch ms>, "value": <number>}`.
    fn default() -> Self {
        FieldNames {
            key: "user".into(),
            time: "ts".into(),
            id: Some("id".into()),
            numbers: vec!["value".into()],
        }
    }
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

/// No number slot.
const NO_NUMBER: usize = usize::MAX;

/// One distinct wanted name and the roles it plays.
#[derive(Debug)]
struct Entry {
    /// The name's bytes (as configured, i.e. unescaped).
    name: Box<[u8]>,
    /// Bitset of `ROLE_*`.
    roles: u8,
    /// The first number slot this field feeds, or `NO_NUMBER`.
    number: usize,
    /// Further number slots (a name listed more than once in `numbers`).
    more_numbers: Box<[usize]>,
    /// The entry's single role, when it has exactly one (for the fast paths).
    fast: Fast,
}

/// The single role of an entry with exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast {
    Key,
    Time,
    Id,
    Number(usize),
    /// Several roles.
    General,
}

/// Fast match for a wanted name of at most 7 bytes that can appear unescaped: the
/// 8 bytes after the opening quote, masked, equal the name and its closing quote.
#[derive(Debug)]
struct Short {
    mask: u64,
    pat: u64,
    len: usize,
    entry: usize,
}

#[derive(Debug)]
struct Compiled {
    fields: FieldNames,
    entries: Box<[Entry]>,
    /// Names of at most 7 bytes, matched by pattern.
    short: Box<[Short]>,
    /// Entries with names of 8 bytes or more (the only ones an unescaped name that
    /// long can match).
    long: Box<[usize]>,
    /// Entry of each configured number field.
    number_entry: Box<[usize]>,
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
                    entries.push(Entry {
                        name: name.into(),
                        roles: 0,
                        number: NO_NUMBER,
                        more_numbers: Box::new([]),
                        fast: Fast::General,
                    });
                    entries.len() - 1
                }
            };
            let e = &mut entries[idx];
            e.roles |= role;
            match number {
                Some(n) if e.number == NO_NUMBER => e.number = n,
                Some(n) => {
                    let mut v = e.more_numbers.to_vec();
                    v.push(n);
                    e.more_numbers = v.into();
                }
                None => {}
            }
            idx
        };
        add(&fields.key, ROLE_KEY, None);
        add(&fields.time, ROLE_TIME, None);
        if let Some(id) = &fields.id {
            add(id, ROLE_ID, None);
        }
        let number_entry: Vec<usize> = fields
            .numbers
            .iter()
            .enumerate()
            .map(|(i, n)| add(n, 0, Some(i)))
            .collect();
        for e in entries.iter_mut() {
            e.fast = match (e.roles, e.number, e.more_numbers.is_empty()) {
                (ROLE_KEY, NO_NUMBER, _) => Fast::Key,
                (ROLE_TIME, NO_NUMBER, _) => Fast::Time,
                (ROLE_ID, NO_NUMBER, _) => Fast::Id,
                (0, n, true) => Fast::Number(n),
                _ => Fast::General,
            };
        }
        let mut short = Vec::new();
        let mut long = Vec::new();
        for (k, e) in entries.iter().enumerate() {
            let len = e.name.len();
            if len >= 8 {
                long.push(k);
            } else if !e.name.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20) {
                let mut pat = [0u8; 8];
                pat[..len].copy_from_slice(&e.name);
                pat[len] = b'"';
                short.push(Short {
                    mask: u64::MAX >> (8 * (7 - len)),
                    pat: u64::from_le_bytes(pat),
                    len,
                    entry: k,
                });
            }
        }
        JsonExtractor {
            inner: Arc::new(Compiled {
                fields,
                entries: entries.into(),
                short: short.into(),
                long: long.into(),
                number_entry: number_entry.into(),
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
    /// more than 64 distinct field names are configured.
    ///
    /// # Errors
    /// A [`Reject`] naming the first problem: not JSON, not an object, a wanted field
    /// missing, repeated or of the wrong type, a number that does not fit.
    ///
    /// # Panics
    /// If `numbers.len() != self.fields().numbers.len()`.
    pub fn extract<'a>(&self, doc: &'a [u8], numbers: &mut [f64]) -> Result<Extracted<'a>, Reject> {
        self.extract_with(doc, numbers, true, false)
    }

    /// [`Self::extract`] for a document whose key comes from elsewhere (a Kafka
    /// message's key): a missing key field is not an error, and the key is then empty.
    ///
    /// # Errors
    /// As [`Self::extract`], but for a missing key.
    ///
    /// # Panics
    /// As [`Self::extract`].
    pub fn extract_key_optional<'a>(
        &self,
        doc: &'a [u8],
        numbers: &mut [f64],
    ) -> Result<Extracted<'a>, Reject> {
        self.extract_with(doc, numbers, true, true)
    }

    /// [`Self::extract`], scanning a padded copy of the document if `padded` and the
    /// document is small enough, else (and in tests, for comparison) in place.
    #[inline(always)]
    fn extract_with<'a>(
        &self,
        doc: &'a [u8],
        numbers: &mut [f64],
        padded: bool,
        key_optional: bool,
    ) -> Result<Extracted<'a>, Reject> {
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
        if c.entries.len() <= 64 {
            run(c, text, numbers, 0u64, padded, key_optional)
        } else {
            run(
                c,
                text,
                numbers,
                vec![false; c.entries.len()],
                padded,
                key_optional,
            )
        }
    }
}

/// The set of entries seen so far in a document.
trait SeenSet {
    /// Marks `e` seen; `false` if it already was.
    fn insert(&mut self, e: usize) -> bool;
    /// Whether `e` was seen.
    fn contains(&self, e: usize) -> bool;
    /// Unmarks `e`.
    fn remove(&mut self, e: usize);
}

impl SeenSet for u64 {
    #[inline(always)]
    fn insert(&mut self, e: usize) -> bool {
        let bit = 1u64 << e;
        let fresh = *self & bit == 0;
        *self |= bit;
        fresh
    }
    #[inline(always)]
    fn contains(&self, e: usize) -> bool {
        *self & (1u64 << e) != 0
    }
    #[inline(always)]
    fn remove(&mut self, e: usize) {
        *self &= !(1u64 << e);
    }
}

impl SeenSet for Vec<bool> {
    fn insert(&mut self, e: usize) -> bool {
        !std::mem::replace(&mut self[e], true)
    }
    fn contains(&self, e: usize) -> bool {
        self[e]
    }
    fn remove(&mut self, e: usize) {
        self[e] = false;
    }
}

/// Where a string or integer for the key or id was found.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: u8,
}

const SPAN_NONE: u8 = 0;
const SPAN_RAW: u8 = 1;
const SPAN_ESCAPED: u8 = 2;

impl Span {
    const NONE: Span = Span {
        start: 0,
        end: 0,
        kind: SPAN_NONE,
    };

    #[inline]
    fn get(self, text: &str) -> Option<Cow<'_, str>> {
        match self.kind {
            SPAN_NONE => None,
            SPAN_RAW => Some(Cow::Borrowed(&text[self.start..self.end])),
            _ => Some(Cow::Owned(unescape(&text[self.start..self.end]))),
        }
    }
}

/// Extraction state of one document.
struct St<S> {
    seen: S,
    key: Span,
    id: Span,
    ts: i64,
    has_ts: bool,
    /// The first field problem: 0 if none, else
    /// `1 << 63 | expected << 40 | what << 32 | entry`.
    pending: u64,
}

// Field problems (`what` of `St::pending`): a found type, or a duplicate.
const FOUND_STRING: u64 = 0;
const FOUND_FLOAT: u64 = 1;
const FOUND_INT_RANGE: u64 = 2;
const FOUND_OBJECT: u64 = 3;
const FOUND_ARRAY: u64 = 4;
const FOUND_BOOL: u64 = 5;
const FOUND_NULL: u64 = 6;
const DUPLICATE: u64 = 7;

const FOUND_TEXT: [&str; 7] = [
    "a string",
    "a number with a fraction or exponent",
    "an integer outside the i64 range",
    "an object",
    "an array",
    "a boolean",
    "null",
];

// What a role expects (`expected` of `St::pending`).
const EXPECT_KEY: u64 = 0;
const EXPECT_TIME: u64 = 1;
const EXPECT_NUMBER: u64 = 2;

const EXPECT_TEXT: [&str; 3] = [
    "a string or an integer",
    "an integer (epoch milliseconds)",
    "a number",
];

/// The found-type code of a value starting with byte `c` (not a string or number).
#[inline]
fn found_code(c: u8) -> u64 {
    match c {
        b'{' => FOUND_OBJECT,
        b'[' => FOUND_ARRAY,
        b't' | b'f' => FOUND_BOOL,
        _ => FOUND_NULL,
    }
}

/// What a valid value starting with byte `c` is, for [`Reject::NotObject`].
fn describe(c: u8) -> &'static str {
    match c {
        b'"' => FOUND_TEXT[FOUND_STRING as usize],
        b'-' | b'0'..=b'9' => "a number",
        _ => FOUND_TEXT[found_code(c) as usize],
    }
}

impl<S: SeenSet> St<S> {
    /// Records a field problem unless an earlier one is already recorded.
    #[inline(always)]
    fn problem(&mut self, entry: usize, what: u64, expected: u64) {
        if self.pending == 0 {
            self.pending = 1 << 63 | expected << 40 | what << 32 | entry as u64;
        }
    }
}

/// Builds the reject for a recorded field problem.
#[cold]
#[inline(never)]
fn problem_reject(c: &Compiled, pending: u64) -> Reject {
    let entry = (pending & 0xFFFF_FFFF) as usize;
    let what = (pending >> 32) & 0xFF;
    let expected = (pending >> 40) & 0xFF;
    let field = String::from_utf8_lossy(&c.entries[entry].name).into_owned();
    if what == DUPLICATE {
        Reject::DuplicateField { field }
    } else {
        Reject::WrongType {
            field,
            found: FOUND_TEXT[what as usize],
            expected: EXPECT_TEXT[expected as usize],
        }
    }
}

#[cold]
#[inline(never)]
fn missing_field(name: &str) -> Reject {
    Reject::MissingField {
        field: name.to_owned(),
    }
}

/// Parses `text`, then checks presence and builds the result.
#[inline(always)]
fn run<'a, S: SeenSet>(
    c: &Compiled,
    text: &'a str,
    numbers: &mut [f64],
    seen: S,
    padded: bool,
    key_optional: bool,
) -> Result<Extracted<'a>, Reject> {
    let mut st = St {
        seen,
        key: Span::NONE,
        id: Span::NONE,
        ts: 0,
        has_ts: false,
        pending: 0,
    };
    let doc = text.as_bytes();
    // Documents up to a kilobyte (the common case) are scanned in a zero-padded
    // copy on the stack, which needs no bounds checks or end-of-input special cases.
    let parsed = match doc.len() {
        n if padded && n <= Padded::<SMALL>::MAX_DOC => {
            let mut buf = [0u8; SMALL];
            buf[..n].copy_from_slice(doc);
            parse_document(c, Padded { buf: &buf, len: n }, text, numbers, &mut st)
        }
        n if padded && n <= Padded::<LARGE>::MAX_DOC => {
            let mut buf = [0u8; LARGE];
            buf[..n].copy_from_slice(doc);
            parse_document(c, Padded { buf: &buf, len: n }, text, numbers, &mut st)
        }
        _ => parse_document(c, Unpadded(doc), text, numbers, &mut st),
    };
    if let Err(fail) = parsed {
        return Err(fail.into_reject());
    }
    if st.pending != 0 {
        return Err(problem_reject(c, st.pending));
    }
    let key = match st.key.get(text) {
        Some(key) => key,
        None if key_optional => Cow::Borrowed(""),
        None => return Err(missing_field(&c.fields.key)),
    };
    if !st.has_ts {
        return Err(missing_field(&c.fields.time));
    }
    for (i, &e) in c.number_entry.iter().enumerate() {
        if !st.seen.contains(e) {
            return Err(missing_field(&c.fields.numbers[i]));
        }
    }
    Ok(Extracted {
        key,
        ts: st.ts,
        id: st.id.get(text),
    })
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
fn syntax(len: usize, at: usize, why: Why) -> Fail {
    let why = if at >= len && why != Why::EofInString {
        Why::Eof
    } else {
        why
    };
    Fail::new(why as u64, at)
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

// ---------------------------------------------------------------------------------
// Input access

/// Sizes of the stack buffers documents are copied into: a power of two plus 8
/// bytes of slack for 8-byte loads at the last index.
const SMALL: usize = 256 + 8;
const LARGE: usize = 1024 + 8;

/// Byte access to the document for the scanners. Past the end of the document
/// every byte reads as 0, which is invalid wherever a token is expected and a
/// control character inside strings, so the scanners stop there by themselves and
/// the error paths report the end of input.
trait Input: Copy {
    /// The document's length.
    fn len(self) -> usize;
    /// The byte at `i`.
    fn at(self, i: usize) -> u8;
    /// The 8 bytes at `i`, little-endian.
    fn load8(self, i: usize) -> u64;
}

/// A document of at most `MAX_DOC` bytes in a zeroed buffer of `N` bytes: reads
/// need no bounds checks (indices are masked to `N - 8`, a power of two, which no
/// index reaches: the scanners stop at the zeros after the document).
#[derive(Clone, Copy)]
struct Padded<'a, const N: usize> {
    buf: &'a [u8; N],
    len: usize,
}

impl<const N: usize> Padded<'_, N> {
    /// Index mask.
    const MASK: usize = {
        assert!((N - 8).is_power_of_two());
        N - 8 - 1
    };
    /// The largest document: the scanners read at most a few dozen bytes past the
    /// end of the document, which must stay below the mask.
    const MAX_DOC: usize = N - 8 - 64;
}

impl<const N: usize> Input for Padded<'_, N> {
    #[inline(always)]
    fn len(self) -> usize {
        self.len
    }
    #[inline(always)]
    fn at(self, i: usize) -> u8 {
        self.buf[i & Self::MASK]
    }
    #[inline(always)]
    fn load8(self, i: usize) -> u64 {
        let j = i & Self::MASK;
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.buf[j..j + 8]);
        u64::from_le_bytes(w)
    }
}

/// A larger document, read in place with bounds checks.
#[derive(Clone, Copy)]
struct Unpadded<'a>(&'a [u8]);

impl Input for Unpadded<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn at(self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    #[inline(always)]
    fn load8(self, i: usize) -> u64 {
        match self.0.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
            Some(chunk) => u64::from_le_bytes(*chunk),
            None => {
                let rest = self.0.get(i..).unwrap_or(&[]);
                let mut w = [0u8; 8];
                w[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(w)
            }
        }
    }
}

/// Skips whitespace at `i`: one compare in the common case of none.
#[inline(always)]
fn ws<B: Input>(b: B, i: usize) -> usize {
    if b.at(i) > b' ' { i } else { skip_ws(b, i) }
}

#[inline(never)]
fn skip_ws<B: Input>(b: B, mut i: usize) -> usize {
    while matches!(b.at(i), b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------
// The document and its fields

/// Parses the whole document into `st` and `numbers`. Returns syntax errors only;
/// field problems are recorded in `st.pending`.
#[inline(never)]
fn parse_document<B: Input, S: SeenSet>(
    c: &Compiled,
    b: B,
    text: &str,
    numbers: &mut [f64],
    st: &mut St<S>,
) -> Result<(), Fail> {
    let len = b.len();
    let mut i = ws(b, 0);
    match b.at(i) {
        b'{' => {}
        first => {
            // Validate the whole value first: only valid JSON is "not an object".
            let end = ws(b, skip_value(b, text, i, 0)?);
            if end != len {
                return Err(syntax(len, end, Why::End));
            }
            return Err(Fail::new(NOT_OBJECT, first as usize));
        }
    }
    i = ws(b, i + 1);
    if b.at(i) == b'}' {
        i += 1;
    } else {
        let mut expect = Why::NameOrClose;
        loop {
            if b.at(i) != b'"' {
                return Err(syntax(len, i, expect));
            }
            expect = Why::Name;
            let ns = i + 1;
            let w = b.load8(ns);
            // Wanted short names: one masked compare each finds name and length.
            let mut found = None;
            for s in c.short.iter() {
                if w & s.mask == s.pat {
                    found = Some((s.entry, ns + s.len));
                    break;
                }
            }
            let (entry, ne) = match found {
                Some((e, ne)) => (Some(e), ne),
                None => {
                    // A name shorter than 8 bytes without escapes names nothing
                    // wanted; anything else is looked up in full.
                    let (q, escaped) = scan_name(b, ns)?;
                    if !escaped && q - ns < 8 {
                        (None, q)
                    } else {
                        other_name(c, b, text, ns)?
                    }
                }
            };
            i = ne + 1;
            if b.at(i) != b':' {
                i = ws(b, i);
                if b.at(i) != b':' {
                    return Err(syntax(len, i, Why::Colon));
                }
            }
            i = ws(b, i + 1);
            i = match entry {
                Some(e) => take_field(c, e, b, text, i, numbers, st)?,
                None => match b.at(i) {
                    b'"' => scan_string(b, i + 1)?.0 + 1,
                    b'-' | b'0'..=b'9' => scan_number::<B, false>(b, text, i)?.end,
                    _ => skip_value(b, text, i, 1)?,
                },
            };
            let mut sep = b.at(i);
            if sep <= b' ' {
                i = ws(b, i);
                sep = b.at(i);
            }
            match sep {
                b',' => i = ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return Err(syntax(len, i, Why::CommaOrBrace)),
            }
        }
    }
    let end = ws(b, i);
    if end != len {
        return Err(syntax(len, end, Why::End));
    }
    Ok(())
}

/// Scans a member name at `ns` (after its opening quote) that is not a wanted
/// short name; returns the wanted entry it names, if any, and its closing quote.
#[inline(never)]
fn other_name<B: Input>(
    c: &Compiled,
    b: B,
    text: &str,
    ns: usize,
) -> Result<(Option<usize>, usize), Fail> {
    let (ne, escaped) = scan_string(b, ns)?;
    let name = &text.as_bytes()[ns..ne];
    let entry = if escaped {
        c.entries.iter().position(|e| escaped_eq(name, &e.name))
    } else if name.len() >= 8 {
        c.long
            .iter()
            .copied()
            .find(|&e| *c.entries[e].name == *name)
    } else {
        None
    };
    Ok((entry, ne))
}

/// Parses the value of wanted entry `e` at `i`, applies its roles, and returns the
/// position after the value. Fast paths for the common single-role shapes; anything
/// else goes to [`take_general`].
#[inline(always)]
fn take_field<B: Input, S: SeenSet>(
    c: &Compiled,
    e: usize,
    b: B,
    text: &str,
    i: usize,
    numbers: &mut [f64],
    st: &mut St<S>,
) -> Result<usize, Fail> {
    let entry = &c.entries[e];
    let first = b.at(i);
    // Each fast path marks the entry seen only when it takes the field; a repeat
    // (or anything unusual) goes to the general path, which reports it.
    match entry.fast {
        Fast::Key | Fast::Id if first == b'"' && st.seen.insert(e) => {
            let (end, escaped) = scan_string(b, i + 1)?;
            let span = Span {
                start: i + 1,
                end,
                kind: if escaped { SPAN_ESCAPED } else { SPAN_RAW },
            };
            if entry.fast == Fast::Key {
                st.key = span;
            } else {
                st.id = span;
            }
            return Ok(end + 1);
        }
        Fast::Time if matches!(first, b'1'..=b'9') && st.seen.insert(e) => {
            let (end, v, digits) = digit_run::<B, true>(b, i, 0, 0);
            let next = b.at(end);
            if digits <= 18 && next != b'.' && next | 0x20 != b'e' {
                st.ts = v as i64;
                st.has_ts = true;
                return Ok(end);
            }
            // A fraction, an exponent or many digits: the general path.
            st.seen.remove(e);
        }
        Fast::Number(n) if first.is_ascii_digit() => {
            if let Some((end, v)) = fast_f64(b, i)
                && st.seen.insert(e)
            {
                numbers[n] = v;
                return Ok(end);
            }
        }
        _ => {}
    }
    take_general(c, e, b, text, i, numbers, st)
}

/// A non-negative number without exponent and with at most 19 digits whose value
/// is exact after one IEEE operation; `None` for anything else (including invalid
/// numbers, which the general path reports).
#[inline(always)]
fn fast_f64<B: Input>(b: B, i: usize) -> Option<(usize, f64)> {
    if b.at(i) == b'0' && b.at(i + 1).is_ascii_digit() {
        return None;
    }
    let (mut j, mut m, mut d) = digit_run::<B, true>(b, i, 0, 0);
    let mut frac = 0;
    if b.at(j) == b'.' {
        let (k, m2, d2) = digit_run::<B, true>(b, j + 1, m, d);
        if k == j + 1 {
            return None;
        }
        frac = (d2 - d) as usize;
        (j, m, d) = (k, m2, d2);
    }
    if d > 19 || m > 1 << 53 || frac > 22 || b.at(j) | 0x20 == b'e' {
        return None;
    }
    Some((j, m as f64 / POW10[frac]))
}

/// The general case of [`take_field`]: any roles, any value.
#[inline(never)]
fn take_general<B: Input, S: SeenSet>(
    c: &Compiled,
    e: usize,
    b: B,
    text: &str,
    i: usize,
    numbers: &mut [f64],
    st: &mut St<S>,
) -> Result<usize, Fail> {
    let entry = &c.entries[e];
    if !st.seen.insert(e) {
        st.problem(e, DUPLICATE, 0);
        return skip_value(b, text, i, 1);
    }
    let roles = entry.roles;
    let set = |st: &mut St<S>, span: Span| {
        if roles & ROLE_KEY != 0 {
            st.key = span;
        }
        if roles & ROLE_ID != 0 {
            st.id = span;
        }
    };
    match b.at(i) {
        b'"' => {
            let (end, escaped) = scan_string(b, i + 1)?;
            if roles & (ROLE_KEY | ROLE_ID) != 0 {
                let kind = if escaped { SPAN_ESCAPED } else { SPAN_RAW };
                set(
                    st,
                    Span {
                        start: i + 1,
                        end,
                        kind,
                    },
                );
            }
            if roles & ROLE_TIME != 0 {
                st.problem(e, FOUND_STRING, EXPECT_TIME);
            }
            if entry.number != NO_NUMBER {
                st.problem(e, FOUND_STRING, EXPECT_NUMBER);
            }
            Ok(end + 1)
        }
        b'-' | b'0'..=b'9' => {
            let num = scan_number::<B, true>(b, text, i)?;
            if roles & (ROLE_KEY | ROLE_ID) != 0 {
                if num.integer {
                    let span = Span {
                        start: i,
                        end: num.end,
                        kind: SPAN_RAW,
                    };
                    set(st, span);
                } else {
                    st.problem(e, FOUND_FLOAT, EXPECT_KEY);
                }
            }
            if roles & ROLE_TIME != 0 {
                if !num.integer {
                    st.problem(e, FOUND_FLOAT, EXPECT_TIME);
                } else if let Some(ts) = num_to_i64(&num) {
                    st.ts = ts;
                    st.has_ts = true;
                } else {
                    st.problem(e, FOUND_INT_RANGE, EXPECT_TIME);
                }
            }
            if entry.number != NO_NUMBER {
                let v = num_to_f64(&num, text, i);
                numbers[entry.number] = v;
                for &n in entry.more_numbers.iter() {
                    numbers[n] = v;
                }
            }
            Ok(num.end)
        }
        first => {
            let end = skip_value(b, text, i, 1)?;
            let found = found_code(first);
            if roles & (ROLE_KEY | ROLE_ID) != 0 {
                st.problem(e, found, EXPECT_KEY);
            }
            if roles & ROLE_TIME != 0 {
                st.problem(e, found, EXPECT_TIME);
            }
            if entry.number != NO_NUMBER {
                st.problem(e, found, EXPECT_NUMBER);
            }
            Ok(end)
        }
    }
}

// ---------------------------------------------------------------------------------
// Values

/// Skips one complete value starting at `i` (whitespace already skipped) whose
/// enclosing container is at nesting level `parent_depth` (0 for the top level).
/// Iterative: the open containers are kept in a bit stack, so the depth limit, not
/// the call stack, bounds the nesting.
#[inline(never)]
fn skip_value<B: Input>(
    b: B,
    text: &str,
    mut i: usize,
    parent_depth: usize,
) -> Result<usize, Fail> {
    let len = b.len();
    // Kinds (1 = object) of the enclosing open containers, innermost in bit 0, and
    // the kind of the innermost open container.
    let mut stack: u128 = 0;
    let mut in_obj = false;
    let mut depth = parent_depth;
    loop {
        // One value at `i`.
        let c = b.at(i);
        match c {
            b'"' => i = scan_string(b, i + 1)?.0 + 1,
            b'-' | b'0'..=b'9' => i = scan_number::<B, false>(b, text, i)?.end,
            b't' | b'f' | b'n' => i = literal(b, i, c)?,
            b'{' | b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Fail::new(TOO_DEEP, i));
                }
                i = ws(b, i + 1);
                // `}` is `{` + 2 and `]` is `[` + 2.
                if b.at(i) == c + 2 {
                    i += 1;
                } else {
                    stack = stack << 1 | in_obj as u128;
                    in_obj = c == b'{';
                    depth += 1;
                    if in_obj {
                        i = member_name(b, i, Why::NameOrClose)?;
                    }
                    continue;
                }
            }
            _ => return Err(syntax(len, i, Why::Value)),
        }
        // A value is complete: close containers or move to the next element.
        loop {
            if depth == parent_depth {
                return Ok(i);
            }
            i = ws(b, i);
            let c = b.at(i);
            if c == b',' {
                i = ws(b, i + 1);
                if in_obj {
                    i = member_name(b, i, Why::Name)?;
                }
                break;
            }
            if c != if in_obj { b'}' } else { b']' } {
                let why = if in_obj {
                    Why::CommaOrBrace
                } else {
                    Why::CommaOrBracket
                };
                return Err(syntax(len, i, why));
            }
            i += 1;
            depth -= 1;
            in_obj = stack & 1 != 0;
            stack >>= 1;
        }
    }
}

/// Parses `"name" :` at `i` and returns the position of the member's value.
#[inline(always)]
fn member_name<B: Input>(b: B, i: usize, why: Why) -> Result<usize, Fail> {
    if b.at(i) != b'"' {
        return Err(syntax(b.len(), i, why));
    }
    let (end, _) = scan_name(b, i + 1)?;
    let i = ws(b, end + 1);
    if b.at(i) != b':' {
        return Err(syntax(b.len(), i, Why::Colon));
    }
    Ok(ws(b, i + 1))
}

/// Matches the literal starting with `first` (`true`, `false` or `null`) at `i`.
#[inline(always)]
fn literal<B: Input>(b: B, i: usize, first: u8) -> Result<usize, Fail> {
    let w = b.load8(i);
    let (ok, len) = match first {
        b't' => (w as u32 == u32::from_le_bytes(*b"true"), 4),
        b'n' => (w as u32 == u32::from_le_bytes(*b"null"), 4),
        _ => (w & 0xFF_FFFF_FFFF == u64::from_le_bytes(*b"false\0\0\0"), 5),
    };
    if ok {
        Ok(i + len)
    } else {
        Err(literal_error(b, i, first))
    }
}

#[cold]
#[inline(never)]
fn literal_error<B: Input>(b: B, i: usize, first: u8) -> Fail {
    let (lit, why): (&[u8], Why) = match first {
        b't' => (b"true", Why::True),
        b'f' => (b"false", Why::False),
        _ => (b"null", Why::Null),
    };
    // Point at the first byte that differs.
    let j = (0..lit.len())
        .find(|&k| b.at(i + k) != lit[k])
        .unwrap_or(lit.len());
    syntax(b.len(), i + j, why)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is `"`, `\` or a control character
/// (< 0x20). Bits above the lowest set one may be spurious (borrows propagate
/// upwards), so only the lowest set bit is meaningful.
#[inline(always)]
fn special_bytes(w: u64) -> u64 {
    // Flipping bit 1 maps `"` (0x22) to 0x20 and keeps control characters below
    // 0x20, so one "less than 0x21" test finds both.
    let x = w ^ (LO * 0x02);
    let lt = x.wrapping_sub(LO * 0x21) & !x;
    let s = w ^ (LO * b'\\' as u64);
    let zs = s.wrapping_sub(LO) & !s;
    (lt | zs) & HI
}

/// Scans string content starting at `i` (just after the opening quote). Returns the
/// position of the closing quote and whether the content has escapes.
#[inline(always)]
fn scan_string<B: Input>(b: B, mut i: usize) -> Result<(usize, bool), Fail> {
    loop {
        let m = special_bytes(b.load8(i));
        if m != 0 {
            i += (m.trailing_zeros() / 8) as usize;
            if b.at(i) == b'"' {
                return Ok((i, false));
            }
            return scan_string_slow(b, i);
        }
        i += 8;
    }
}

/// [`scan_string`] for member names, which repeat from one document to the next:
/// names of up to 8 bytes end by (well predicted) branches on independent loads
/// rather than by a computation on the loaded bytes, so the position of the next
/// token does not wait for it.
#[inline(always)]
fn scan_name<B: Input>(b: B, mut i: usize) -> Result<(usize, bool), Fail> {
    for _ in 0..8 {
        let c = b.at(i);
        if c == b'"' {
            return Ok((i, false));
        }
        if c < 0x20 || c == b'\\' {
            return scan_string_slow(b, i);
        }
        i += 1;
    }
    scan_string(b, i)
}

/// The rest of [`scan_string`] from a special byte that is not the closing quote:
/// an escape (validated here), a control character (an error) or the end of input.
#[inline(never)]
fn scan_string_slow<B: Input>(b: B, mut i: usize) -> Result<(usize, bool), Fail> {
    let len = b.len();
    loop {
        if i >= len {
            return Err(syntax(len, len, Why::EofInString));
        }
        match b.at(i) {
            b'"' => return Ok((i, true)),
            b'\\' => i = scan_escape(b, i)?,
            _ => return Err(syntax(len, i, Why::Control)),
        }
        loop {
            let m = special_bytes(b.load8(i));
            if m != 0 {
                i += (m.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
    }
}

/// Validates the escape at `i` (a backslash); returns the position after it.
#[inline]
fn scan_escape<B: Input>(b: B, i: usize) -> Result<usize, Fail> {
    let len = b.len();
    match b.at(i + 1) {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 2),
        b'u' => {
            let cp = hex4(b, i + 2)?;
            match cp {
                0xD800..=0xDBFF => {
                    if b.at(i + 6) != b'\\' || b.at(i + 7) != b'u' {
                        return Err(syntax(len, i, Why::Surrogate));
                    }
                    let lo = hex4(b, i + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(syntax(len, i, Why::Surrogate));
                    }
                    Ok(i + 12)
                }
                0xDC00..=0xDFFF => Err(syntax(len, i, Why::Surrogate)),
                _ => Ok(i + 6),
            }
        }
        _ => Err(syntax(len, i + 1, Why::Escape)),
    }
}

/// Parses the 4 hex digits of a `\u` escape at `i`.
#[inline]
fn hex4<B: Input>(b: B, i: usize) -> Result<u32, Fail> {
    let mut v = 0u32;
    for j in i..i + 4 {
        let d = match b.at(j) {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(syntax(b.len(), j, Why::Hex)),
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

/// Consumes the run of ASCII digits at `i`, 8 at a time. With `ACC`, appends them to
/// `mant` (wrapping: only meaningful up to 19 digits); counts them in `digits`.
#[inline(always)]
fn digit_run<B: Input, const ACC: bool>(
    b: B,
    mut i: usize,
    mut mant: u64,
    mut digits: u32,
) -> (usize, u64, u32) {
    loop {
        // Digits become 0..=9; everything else becomes >= 10.
        let t = b.load8(i) ^ (LO * b'0' as u64);
        let non_digit = (((t & !HI).wrapping_add(LO * 0x76)) | t) & HI;
        if non_digit == 0 {
            if ACC {
                mant = mant.wrapping_mul(100_000_000).wrapping_add(parse8(t));
            }
            digits += 8;
            i += 8;
            continue;
        }
        let n = non_digit.trailing_zeros() / 8;
        if ACC && n != 0 {
            let v = parse8(t << (64 - 8 * n));
            mant = mant.wrapping_mul(POW10_U64[n as usize]).wrapping_add(v);
        }
        digits += n;
        i += n as usize;
        return (i, mant, digits);
    }
}

/// Scans the number at `start` (a `-` or a digit) per the JSON grammar. Rejects
/// numbers whose magnitude is beyond the `f64` range. With `ACC`, also computes the
/// significand and power of ten.
#[inline(always)]
fn scan_number<B: Input, const ACC: bool>(b: B, text: &str, start: usize) -> Result<Num, Fail> {
    let len = b.len();
    let neg = b.at(start) == b'-';
    let mut i = start + neg as usize;
    let (mut mant, mut digits) = (0, 0);
    match b.at(i) {
        b'0' => {
            i += 1;
            if b.at(i).is_ascii_digit() {
                return Err(syntax(len, i, Why::LeadingZero));
            }
        }
        b'1'..=b'9' => (i, mant, digits) = digit_run::<B, ACC>(b, i, 0, 0),
        _ => return Err(syntax(len, i, Why::Digit)),
    }
    let int_digits = digits;
    let mut integer = true;
    let mut exp10: i64 = 0;
    if b.at(i) == b'.' {
        let (j, m, d) = digit_run::<B, ACC>(b, i + 1, mant, digits);
        if j == i + 1 {
            return Err(syntax(len, j, Why::FracDigit));
        }
        exp10 = -((d - digits) as i64);
        (i, mant, digits) = (j, m, d);
        integer = false;
    }
    let mut exp: i64 = 0;
    if b.at(i) | 0x20 == b'e' {
        (i, exp) = scan_exponent(b, i + 1)?;
        integer = false;
        exp10 += exp;
    }
    // |value| < 10^(int_digits + exp): only then can it round to infinity.
    if int_digits as i64 + exp > 308 && slow_f64(&text[start..i]).is_infinite() {
        return Err(syntax(len, start, Why::Range));
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

/// Scans an exponent's sign and digits at `i` (after the `e`); returns the end and
/// the exponent's value (saturated far beyond any meaningful range).
#[inline(never)]
fn scan_exponent<B: Input>(b: B, mut i: usize) -> Result<(usize, i64), Fail> {
    let neg = b.at(i) == b'-';
    if matches!(b.at(i), b'-' | b'+') {
        i += 1;
    }
    if !b.at(i).is_ascii_digit() {
        return Err(syntax(b.len(), i, Why::ExpDigit));
    }
    let mut exp: i64 = 0;
    while b.at(i).is_ascii_digit() {
        exp = (exp * 10 + (b.at(i) - b'0') as i64).min(1 << 40);
        i += 1;
    }
    Ok((i, if neg { -exp } else { exp }))
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

/// The correctly rounded `f64` of the number literal at `text[start..]`, scanned as
/// `n`.
///
/// Fast path (Clinger): when the significand is exact in 53 bits and the power of ten
/// is at most 22 in magnitude, both are exact doubles and one IEEE multiplication or
/// division rounds correctly. Everything else goes to std's correctly rounding
/// parser.
#[inline]
fn num_to_f64(n: &Num, text: &str, start: usize) -> f64 {
    if n.digits <= 19 && n.mant <= 1u64 << 53 && (-22..=22).contains(&n.exp10) {
        let f = n.mant as f64;
        let f = if n.exp10 >= 0 {
            f * POW10[n.exp10 as usize]
        } else {
            f / POW10[(-n.exp10) as usize]
        };
        return if n.neg { -f } else { f };
    }
    slow_f64(&text[start..n.end])
}

#[cold]
#[inline(never)]
fn slow_f64(lit: &str) -> f64 {
    // Cannot fail: the JSON number grammar is a subset of what std accepts.
    lit.parse::<f64>().unwrap_or(f64::NAN)
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
