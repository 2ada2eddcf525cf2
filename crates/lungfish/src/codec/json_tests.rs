//! Tests of the ingest JSON field extractor: one unit test per rule and reject kind,
//! exact reason wording, and a differential property test against `serde_json`.

use std::borrow::Cow;

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------
// Helpers

fn fields() -> FieldNames {
    FieldNames {
        key: "user".into(),
        time: "ts".into(),
        id: Some("id".into()),
        numbers: vec!["value".into()],
    }
}

fn ex() -> JsonExtractor {
    JsonExtractor::new(fields())
}

/// Extracts `doc` both ways the extractor can scan it (a padded copy when it is
/// small, in place otherwise), checks that they agree, and returns the result.
fn extract_both<'a>(
    ex: &JsonExtractor,
    doc: &'a [u8],
    numbers: &mut [f64],
) -> Result<Extracted<'a>, Reject> {
    let mut other = vec![f64::NAN; numbers.len()];
    let in_place = ex.extract_with(doc, &mut other, false, false);
    let result = ex.extract(doc, numbers);
    assert_eq!(
        result,
        in_place,
        "padded and in-place scans differ on {:?}",
        String::from_utf8_lossy(doc)
    );
    if result.is_ok() {
        let bits = |n: &[f64]| n.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(numbers), bits(&other));
    }
    result
}

/// Extracts with the standard fields; returns the result and the number.
fn run(doc: &str) -> Result<(Extracted<'_>, f64), Reject> {
    let mut n = [f64::NAN];
    extract_both(&ex(), doc.as_bytes(), &mut n).map(|x| (x, n[0]))
}

fn reject(doc: &str) -> Reject {
    match run(doc) {
        Ok(x) => panic!("accepted {doc:?}: {x:?}"),
        Err(r) => r,
    }
}

fn reject_bytes(doc: &[u8]) -> Reject {
    let mut n = [0.0];
    match extract_both(&ex(), doc, &mut n) {
        Ok(x) => panic!("accepted {:?}: {x:?}", String::from_utf8_lossy(doc)),
        Err(r) => r,
    }
}

fn kind(doc: &str) -> &'static str {
    reject(doc).kind()
}

fn msg(doc: &str) -> String {
    reject(doc).to_string()
}

/// A valid event with `value` as the `value` field's literal.
fn with_value(value: &str) -> String {
    format!(r#"{{"user":"u","ts":1,"value":{value}}}"#)
}

/// The number extracted from `value`'s literal.
fn number(value: &str) -> f64 {
    let doc = with_value(value);
    match run(&doc) {
        Ok((_, n)) => n,
        Err(e) => panic!("rejected {doc:?}: {e}"),
    }
}

fn json_error(doc: &str) -> (usize, &'static str) {
    match reject(doc) {
        Reject::InvalidJson { offset, reason } => (offset, reason),
        other => panic!("expected invalid JSON for {doc:?}, got {other:?}"),
    }
}

const SAMPLE: &str = r#"{"id":"e-000012345","user":"u-4821","ts":1767225600123,"value":42.125}"#;

// ---------------------------------------------------------------------------------
// Accepting and extracting

#[test]
fn extracts_the_sample_event_without_copying() {
    let (x, v) = run(SAMPLE).unwrap();
    assert_eq!(x.key, "u-4821");
    assert!(matches!(x.key, Cow::Borrowed(_)));
    assert_eq!(x.ts, 1_767_225_600_123);
    assert_eq!(x.id.as_deref(), Some("e-000012345"));
    assert!(matches!(x.id, Some(Cow::Borrowed(_))));
    assert_eq!(v, 42.125);
}

#[test]
fn field_order_and_unwanted_fields_do_not_matter() {
    let doc = r#"{"value":-3.5,"meta":{"a":[1,{"b":null}],"c":"x\"y"},"ts":-5,"tags":[],"user":"k","n":true}"#;
    let (x, v) = run(doc).unwrap();
    assert_eq!((x.key.as_ref(), x.ts, x.id, v), ("k", -5, None, -3.5));
}

#[test]
fn whitespace_is_allowed_around_every_token() {
    let doc = " \r\n\t{ \"user\" :\r\n \"k\" , \"x\" : [ 1 , { } ] , \"ts\"\t:\t7 ,\n\"value\" : 2 } \r\n\t ";
    let (x, v) = run(doc).unwrap();
    assert_eq!((x.key.as_ref(), x.ts, v), ("k", 7, 2.0));
}

#[test]
fn extractor_is_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<JsonExtractor>();
    let a = ex();
    let b = a.clone();
    assert_eq!(a.fields(), b.fields());
    assert_eq!(a.fields(), &fields());
    let t = std::thread::spawn(move || b.extract(SAMPLE.as_bytes(), &mut [0.0]).map(|x| x.ts));
    assert_eq!(t.join().unwrap(), Ok(1_767_225_600_123));
}

#[test]
#[should_panic(expected = "one slot per configured number field")]
fn numbers_slice_must_match_the_configured_fields() {
    let _ = ex().extract(SAMPLE.as_bytes(), &mut []);
}

// ---------------------------------------------------------------------------------
// Whole-document syntax

#[test]
fn rejects_anything_after_the_value() {
    assert_eq!(
        json_error(r#"{"user":"u","ts":1,"value":1} x"#),
        (30, "expected end of input after the value")
    );
    assert_eq!(
        json_error(r#"{"user":"u","ts":1,"value":1}{}"#),
        (29, "expected end of input after the value")
    );
    assert_eq!(
        json_error("{}\u{c}"),
        (2, "expected end of input after the value")
    );
    assert_eq!(
        json_error("[1] 2"),
        (4, "expected end of input after the value")
    );
}

#[test]
fn rejects_empty_and_truncated_input() {
    assert_eq!(json_error(""), (0, "unexpected end of input"));
    assert_eq!(json_error(" \r\n"), (3, "unexpected end of input"));
    for end in 0..SAMPLE.len() {
        let r = reject(&SAMPLE[..end]);
        assert_eq!(r.kind(), "invalid_json", "truncated at {end}: {r}");
    }
    assert_eq!(
        json_error(r#"{"user":"u"#),
        (10, "unexpected end of input in a string")
    );
    assert_eq!(
        json_error(r#"{"user":"u","#),
        (12, "unexpected end of input")
    );
}

#[test]
fn reports_the_first_syntax_error_with_its_offset() {
    assert_eq!(json_error(r#"{"user" "u"}"#), (8, "expected ':'"));
    assert_eq!(
        json_error(r#"{"user":"u" "ts":1}"#),
        (12, "expected ',' or '}'")
    );
    assert_eq!(json_error(r#"{"user":"u",}"#), (12, "expected '\"'"));
    assert_eq!(json_error(r#"{user:1}"#), (1, "expected '\"' or '}'"));
    assert_eq!(json_error(r#"{"a":[1 2]}"#), (8, "expected ',' or ']'"));
    assert_eq!(json_error(r#"{"a":[1,]}"#), (8, "expected a value"));
    assert_eq!(json_error(r#"{"a":{"b":1,}}"#), (12, "expected '\"'"));
    assert_eq!(json_error(r#"{"a":{"b" 1}}"#), (10, "expected ':'"));
    assert_eq!(json_error(r#"{"a":{"b":1]}"#), (11, "expected ',' or '}'"));
    assert_eq!(json_error(r#"{"a":[1}"#), (7, "expected ',' or ']'"));
    assert_eq!(json_error(r#"{"a":}"#), (5, "expected a value"));
    assert_eq!(
        json_error(r#"{"a":tru}"#),
        (8, "invalid literal, expected `true`")
    );
    assert_eq!(
        json_error(r#"{"a":fals}"#),
        (9, "invalid literal, expected `false`")
    );
    assert_eq!(
        json_error(r#"{"a":nul}"#),
        (8, "invalid literal, expected `null`")
    );
    assert_eq!(json_error(r#"{"a":True}"#), (5, "expected a value"));
    assert_eq!(json_error(r#"{"a":'x'}"#), (5, "expected a value"));
}

#[test]
fn rejects_invalid_utf8_anywhere_with_its_offset() {
    let cases: [(&[u8], usize); 6] = [
        (b"{\"user\":\"\xff\",\"ts\":1,\"value\":1}", 9),
        (b"{\"user\":\"u\",\"ts\":1,\"value\":1,\"x\":\"\xc3\"}", 34),
        (b"{\"user\":\"u\",\"ts\":1,\"value\":1}\xe2\x82", 29),
        (b"\xef\xbb\xbf{}", 3), // a byte order mark is valid UTF-8 but not JSON
        (b"{\"\xed\xa0\x80\":1}", 2), // an encoded surrogate is not UTF-8
        (b"{\"a\":1} \xc0\xaf", 8), // overlong encoding
    ];
    for (doc, offset) in cases {
        let r = reject_bytes(doc);
        if doc.starts_with(b"\xef\xbb\xbf") {
            assert_eq!(
                r,
                Reject::InvalidJson {
                    offset: 0,
                    reason: "expected a value"
                }
            );
        } else {
            assert_eq!(
                r,
                Reject::InvalidUtf8 { offset },
                "{:?}",
                String::from_utf8_lossy(doc)
            );
            assert_eq!(r.kind(), "invalid_utf8");
            assert_eq!(r.to_string(), format!("invalid UTF-8 at byte {offset}"));
        }
    }
    // Invalid UTF-8 wins over an earlier syntax error: it is checked first.
    assert_eq!(reject_bytes(b"{x \xff"), Reject::InvalidUtf8 { offset: 3 });
    // Valid multi-byte UTF-8 is fine in strings, names and keys.
    let (x, _) = run(r#"{"user":"ü中😀","naïve":"é","ts":1,"value":1}"#).unwrap();
    assert_eq!(x.key, "ü中😀");
}

#[test]
fn rejects_raw_control_characters_in_strings() {
    for c in (0u8..0x20).map(char::from) {
        let doc = format!(r#"{{"user":"a{c}b","ts":1,"value":1}}"#);
        let (offset, reason) = json_error(&doc);
        if c == '\t' || c == '\n' || c == '\r' {
            assert_eq!(reason, "control character in a string (must be escaped)");
        }
        assert_eq!(offset, 10, "{c:?}");
        // ... also in names and unwanted values
        let doc = format!(r#"{{"x{c}":1}}"#);
        assert_eq!(json_error(&doc).0, 3);
    }
    // DEL and everything above it are fine.
    assert_eq!(
        run("{\"user\":\"\u{7f}\",\"ts\":1,\"value\":1}")
            .unwrap()
            .0
            .key,
        "\u{7f}"
    );
}

#[test]
fn validates_and_decodes_escapes() {
    let (x, _) = run(
        r#"{"user":"a\"b\\c\/d\be\ff\ng\rh\ti\u0041\u00e9\u4E2D\ud83d\uDE00","ts":1,"value":1}"#,
    )
    .unwrap();
    assert_eq!(x.key, "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti\u{41}é中😀");
    assert!(matches!(x.key, Cow::Owned(_)));
    let bad = [
        (r#"{"a":"\x"}"#, 7, "invalid escape"),
        (r#"{"a":"\'"}"#, 7, "invalid escape"),
        (r#"{"a":"\u12"}"#, 10, "expected 4 hex digits in \\u escape"),
        (
            r#"{"a":"\u00G0"}"#,
            10,
            "expected 4 hex digits in \\u escape",
        ),
        (r#"{"a":"\ud800"}"#, 6, "unpaired surrogate in \\u escape"),
        (r#"{"a":"\ud800x"}"#, 6, "unpaired surrogate in \\u escape"),
        (r#"{"a":"\ud800\n"}"#, 6, "unpaired surrogate in \\u escape"),
        (
            r#"{"a":"\ud800\u0041"}"#,
            6,
            "unpaired surrogate in \\u escape",
        ),
        (
            r#"{"a":"\ud800\ud800"}"#,
            6,
            "unpaired surrogate in \\u escape",
        ),
        (r#"{"a":"\udc00"}"#, 6, "unpaired surrogate in \\u escape"),
        (
            r#"{"a":"\uDFFF\uD800"}"#,
            6,
            "unpaired surrogate in \\u escape",
        ),
        (
            r#"{"a":"\uD800\uE000"}"#,
            6,
            "unpaired surrogate in \\u escape",
        ),
        (
            r#"{"a":"\uDBFF\uDBFF"}"#,
            6,
            "unpaired surrogate in \\u escape",
        ),
        ("{\"a\":\"\\", 7, "unexpected end of input"),
    ];
    for (doc, offset, reason) in bad {
        assert_eq!(json_error(doc), (offset, reason), "{doc}");
    }
    // Escapes in unwanted strings and names are validated too, and `\u0000` is fine.
    assert_eq!(
        run(r#"{"\u0000\"":"\u0000","user":"u","ts":1,"value":1}"#)
            .unwrap()
            .0
            .key,
        "u"
    );
}

#[test]
fn numbers_follow_the_json_grammar_exactly() {
    for bad in [
        "01",
        "-01",
        "00",
        "+1",
        ".5",
        "-.5",
        "1.",
        "1.e5",
        "-",
        "--1",
        "1e",
        "1e+",
        "1E-",
        "NaN",
        "Infinity",
        "-Infinity",
        "0x10",
        "1_000",
        "1e5.5",
        "01.5",
        "-0-",
        "1.5e",
    ] {
        let doc = with_value(bad);
        assert_eq!(kind(&doc), "invalid_json", "{bad}");
        // ... also where nothing extracts them
        let doc = format!(r#"{{"x":[{bad}]}}"#);
        assert_eq!(kind(&doc), "invalid_json", "{bad} (unwanted)");
    }
    assert_eq!(
        json_error(&with_value("012")),
        (28, "leading zeros are not allowed")
    );
    assert_eq!(json_error(&with_value("-")), (28, "expected a digit"));
    assert_eq!(
        json_error(&with_value("1.}")),
        (29, "expected a digit after '.'")
    );
    assert_eq!(
        json_error(&with_value("1e}")),
        (29, "expected a digit in the exponent")
    );
    for good in [
        "0",
        "-0",
        "0.0",
        "-0.0e-0",
        "1e5",
        "1E+5",
        "1e-5",
        "-1.5e-300",
        "123456789.123456789e-3",
    ] {
        assert_eq!(
            number(good).to_bits(),
            good.parse::<f64>().unwrap().to_bits(),
            "{good}"
        );
    }
}

#[test]
fn rejects_numbers_beyond_the_f64_range_anywhere() {
    for big in [
        "1e400",
        "-1e309",
        "2e308",
        "1.7976931348623159e308",
        &"9".repeat(310),
    ] {
        let (offset, reason) = json_error(&with_value(big));
        assert_eq!(
            (offset, reason),
            (27, "number out of range (beyond f64)"),
            "{big}"
        );
        assert_eq!(kind(&format!(r#"{{"x":{{"y":[{big}]}}}}"#)), "invalid_json");
    }
    // The largest finite values and underflow to zero are fine.
    assert_eq!(number("1.7976931348623157e308"), f64::MAX);
    assert_eq!(number("-1.7976931348623158e308"), f64::MIN);
    assert_eq!(number("0.1e309"), 1e308);
    assert_eq!(number(&format!("{}e-100", "9".repeat(400))), 1e300);
    assert_eq!(number("1e-400").to_bits(), 0.0f64.to_bits());
    assert_eq!(number("-1e-400").to_bits(), (-0.0f64).to_bits());
    assert_eq!(number("4.9e-324"), f64::from_bits(1));
}

#[test]
fn numbers_are_correctly_rounded() {
    let cases = [
        "42.125",
        "0.1",
        "0.3",
        "-7",
        "9007199254740993",
        "9007199254740992.5",
        "18446744073709551615",
        "18446744073709551616",
        "123456789012345678901234567890",
        "2.2250738585072011e-308",
        "2.2250738585072014e-308",
        "1.00000000000000011102230246251565404236316680908203125",
        "0.000000000000000000000000000000000000001",
        "1e23",
        "8.589973e9",
        "3.14159265358979323846264338327950288",
        "1234567.0e-2",
        "0.1e1",
        "5e-324",
        "12345678901234567e-5",
    ];
    for c in cases {
        assert_eq!(
            number(c).to_bits(),
            c.parse::<f64>().unwrap().to_bits(),
            "{c}"
        );
        if c.starts_with('-') {
            continue;
        }
        let neg = format!("-{c}");
        assert_eq!(
            number(&neg).to_bits(),
            neg.parse::<f64>().unwrap().to_bits(),
            "{neg}"
        );
    }
    // Integers of every digit count go through the 8-digits-at-a-time path.
    let mut n: u64 = 0;
    for d in 1..=20u64 {
        n = n.wrapping_mul(10).wrapping_add(d % 10);
        let lit = n.to_string();
        assert_eq!(number(&lit), lit.parse::<f64>().unwrap(), "{lit}");
        let frac = format!("1.{lit}");
        assert_eq!(number(&frac), frac.parse::<f64>().unwrap(), "{frac}");
    }
}

#[test]
fn nesting_is_limited_to_128_levels_without_recursion() {
    // The top-level object is level 1.
    const PREFIX: &str = r#"{"user":"u","ts":1,"value":1,"x":"#;
    let nested = |levels: usize| {
        format!(
            "{PREFIX}{}{}}}",
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    };
    assert!(run(&nested(MAX_DEPTH)).is_ok());
    let r = reject(&nested(MAX_DEPTH + 1));
    // The bracket opening level 129.
    let offset = PREFIX.len() + MAX_DEPTH - 1;
    assert_eq!(r, Reject::TooDeep { offset });
    assert_eq!(r.kind(), "too_deep");
    assert_eq!(
        r.to_string(),
        format!("nesting deeper than 128 levels at byte {offset}")
    );
    let objects = format!(
        r#"{{"x":{}1{}}}"#,
        r#"{"a":"#.repeat(MAX_DEPTH),
        "}".repeat(MAX_DEPTH)
    );
    assert_eq!(kind(&objects), "too_deep");
    let objects = format!(
        r#"{{"x":{}1{}}}"#,
        r#"{"a":"#.repeat(MAX_DEPTH - 1),
        "}".repeat(MAX_DEPTH - 1)
    );
    assert_eq!(kind(&objects), "missing_field");
    // Far deeper than any stack would allow for a recursive parser.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert_eq!(kind(&deep), "too_deep");
    let deep = format!(r#"{{"x":{}"#, r#"{"a":["#.repeat(500_000));
    assert_eq!(kind(&deep), "too_deep");
    // A syntax error before the limit is reported first.
    assert_eq!(kind(&format!("[1 {}", "[".repeat(200))), "invalid_json");
}

#[test]
fn the_top_level_value_must_be_an_object() {
    for (doc, found) in [
        ("[]", "an array"),
        (" [1, {\"a\": 2}] ", "an array"),
        ("1", "a number"),
        ("-0.5e3", "a number"),
        (r#""s""#, "a string"),
        ("true", "a boolean"),
        ("false", "a boolean"),
        ("null", "null"),
    ] {
        let r = reject(doc);
        assert_eq!(r, Reject::NotObject { found }, "{doc}");
        assert_eq!(r.kind(), "not_object");
        assert_eq!(
            r.to_string(),
            format!("top-level value is {found}, expected an object")
        );
    }
    // Only valid JSON is "not an object".
    for doc in ["[1,", "[1] x", "01", "\"abc", "nul", "]", "}"] {
        assert_eq!(kind(doc), "invalid_json", "{doc}");
    }
}

// ---------------------------------------------------------------------------------
// Field rules

#[test]
fn key_is_a_string_or_an_integer_literal() {
    let key = |lit: &str| {
        let doc = format!(r#"{{"user":{lit},"ts":1,"value":1}}"#);
        run(&doc).map(|(x, _)| x.key.into_owned())
    };
    assert_eq!(key(r#""u-1""#).unwrap(), "u-1");
    assert_eq!(key(r#""""#).unwrap(), "");
    assert_eq!(key("42").unwrap(), "42");
    assert_eq!(key("-7").unwrap(), "-7");
    assert_eq!(key("0").unwrap(), "0");
    assert_eq!(key("-0").unwrap(), "-0");
    assert_eq!(
        key("123456789012345678901234567890").unwrap(),
        "123456789012345678901234567890"
    );
    assert_eq!(key(r#""a\u0062c""#).unwrap(), "abc");
    for (lit, found) in [
        ("1.5", "a number with a fraction or exponent"),
        ("1e3", "a number with a fraction or exponent"),
        ("1.0", "a number with a fraction or exponent"),
        ("true", "a boolean"),
        ("null", "null"),
        ("{}", "an object"),
        (r#"["a"]"#, "an array"),
    ] {
        let r = key(lit).unwrap_err();
        assert_eq!(
            r,
            Reject::WrongType {
                field: "user".into(),
                found,
                expected: "a string or an integer"
            },
            "{lit}"
        );
        assert_eq!(r.kind(), "wrong_type");
        assert_eq!(
            r.to_string(),
            format!("field `user` is {found}, expected a string or an integer")
        );
    }
}

#[test]
fn key_borrows_unless_it_has_escapes() {
    let (x, _) = run(r#"{"user":"plain é","ts":1,"value":1}"#).unwrap();
    assert!(matches!(x.key, Cow::Borrowed("plain é")));
    let (x, _) = run(r#"{"user":"a\nb","ts":1,"value":1}"#).unwrap();
    assert!(matches!(&x.key, Cow::Owned(s) if s == "a\nb"));
    let (x, _) = run(r#"{"user":17,"ts":1,"value":1}"#).unwrap();
    assert!(matches!(x.key, Cow::Borrowed("17")));
}

#[test]
fn time_is_an_integer_fitting_i64() {
    let ts = |lit: &str| {
        let doc = format!(r#"{{"user":"u","ts":{lit},"value":1}}"#);
        run(&doc).map(|(x, _)| x.ts)
    };
    assert_eq!(ts("0"), Ok(0));
    assert_eq!(ts("-0"), Ok(0));
    assert_eq!(ts("-5"), Ok(-5));
    assert_eq!(ts("1767225600123"), Ok(1_767_225_600_123));
    assert_eq!(ts("9223372036854775807"), Ok(i64::MAX));
    assert_eq!(ts("-9223372036854775808"), Ok(i64::MIN));
    assert_eq!(ts("999999999999999999"), Ok(999_999_999_999_999_999));
    assert_eq!(ts("1000000000000000000"), Ok(1_000_000_000_000_000_000));
    let wrong = |lit: &str, found: &'static str| {
        let r = ts(lit).unwrap_err();
        assert_eq!(
            r,
            Reject::WrongType {
                field: "ts".into(),
                found,
                expected: "an integer (epoch milliseconds)"
            },
            "{lit}"
        );
        r.to_string()
    };
    for lit in [
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999",
        "100000000000000000000000",
    ] {
        assert_eq!(
            wrong(lit, "an integer outside the i64 range"),
            "field `ts` is an integer outside the i64 range, expected an integer (epoch milliseconds)"
        );
    }
    for lit in ["1.5", "1e3", "1.0", "-0.0", "1E+2"] {
        wrong(lit, "a number with a fraction or exponent");
    }
    assert_eq!(
        wrong(r#""1767225600123""#, "a string"),
        "field `ts` is a string, expected an integer (epoch milliseconds)"
    );
    wrong("true", "a boolean");
    wrong("null", "null");
    wrong("[1]", "an array");
    wrong(r#"{"ms":1}"#, "an object");
}

#[test]
fn id_is_optional_and_a_string_or_an_integer() {
    let id = |doc: &str| run(doc).map(|(x, _)| x.id.map(Cow::into_owned));
    assert_eq!(id(r#"{"user":"u","ts":1,"value":1}"#), Ok(None));
    assert_eq!(
        id(r#"{"id":"e-1","user":"u","ts":1,"value":1}"#),
        Ok(Some("e-1".into()))
    );
    assert_eq!(
        id(r#"{"id":-12,"user":"u","ts":1,"value":1}"#),
        Ok(Some("-12".into()))
    );
    assert_eq!(
        id(r#"{"id":"\u00e9","user":"u","ts":1,"value":1}"#),
        Ok(Some("é".into()))
    );
    let r = id(r#"{"id":1.5,"user":"u","ts":1,"value":1}"#).unwrap_err();
    assert_eq!(
        r.to_string(),
        "field `id` is a number with a fraction or exponent, expected a string or an integer"
    );
    let r = id(r#"{"id":null,"user":"u","ts":1,"value":1}"#).unwrap_err();
    assert_eq!(
        r.to_string(),
        "field `id` is null, expected a string or an integer"
    );
    // Without an id field configured, an `id` member is just another field.
    let no_id = JsonExtractor::new(FieldNames {
        id: None,
        ..fields()
    });
    let x = extract_both(
        &no_id,
        br#"{"id":null,"user":"u","ts":1,"value":1}"#,
        &mut [0.0],
    )
    .unwrap();
    assert_eq!(x.id, None);
}

#[test]
fn numbers_are_required_numbers() {
    let two = JsonExtractor::new(FieldNames {
        numbers: vec!["a".into(), "b".into()],
        ..fields()
    });
    let mut n = [0.0; 2];
    extract_both(&two, br#"{"b":2.5,"user":"u","a":-1,"ts":1}"#, &mut n).unwrap();
    assert_eq!(n, [-1.0, 2.5]);
    let r = extract_both(&two, br#"{"user":"u","a":1,"ts":1}"#, &mut n).unwrap_err();
    assert_eq!(r, Reject::MissingField { field: "b".into() });
    assert_eq!(r.kind(), "missing_field");
    assert_eq!(r.to_string(), "missing field `b`");
    for (lit, found) in [
        (r#""1""#, "a string"),
        ("true", "a boolean"),
        ("null", "null"),
        ("[1]", "an array"),
        ("{}", "an object"),
    ] {
        let doc = format!(r#"{{"user":"u","ts":1,"a":{lit},"b":1}}"#);
        let r = extract_both(&two, doc.as_bytes(), &mut n).unwrap_err();
        assert_eq!(
            r.to_string(),
            format!("field `a` is {found}, expected a number")
        );
    }
    // No numbers configured at all.
    let none = JsonExtractor::new(FieldNames {
        numbers: vec![],
        ..fields()
    });
    assert!(extract_both(&none, br#"{"user":"u","ts":1}"#, &mut []).is_ok());
}

#[test]
fn key_and_time_are_required() {
    assert_eq!(
        reject(r#"{"ts":1,"value":1}"#),
        Reject::MissingField {
            field: "user".into()
        }
    );
    assert_eq!(msg(r#"{"user":"u","value":1}"#), "missing field `ts`");
    assert_eq!(msg(r#"{"user":"u","ts":1}"#), "missing field `value`");
    // Reported in order: key, time, then numbers.
    assert_eq!(msg("{}"), "missing field `user`");
    assert_eq!(msg(r#"{"value":1}"#), "missing field `user`");
    assert_eq!(msg(r#"{"user":"u"}"#), "missing field `ts`");
    // Names are matched exactly (case and all).
    assert_eq!(
        msg(r#"{"User":"u","ts":1,"value":1}"#),
        "missing field `user`"
    );
    assert_eq!(
        msg(r#"{"user ":"u","ts":1,"value":1}"#),
        "missing field `user`"
    );
    assert_eq!(
        msg(r#"{"use":"u","ts":1,"value":1}"#),
        "missing field `user`"
    );
    assert_eq!(
        msg(r#"{"users":"u","ts":1,"value":1}"#),
        "missing field `user`"
    );
}

#[test]
fn wanted_fields_must_not_repeat() {
    for doc in [
        r#"{"user":"u","ts":1,"value":1,"user":"v"}"#,
        r#"{"user":"u","ts":1,"value":1,"us\u0065r":"v"}"#,
        r#"{"user":"u","user":1.5,"ts":1,"value":1}"#,
    ] {
        let r = reject(doc);
        assert_eq!(
            r,
            Reject::DuplicateField {
                field: "user".into()
            },
            "{doc}"
        );
        assert_eq!(r.kind(), "duplicate_field");
        assert_eq!(r.to_string(), "duplicate field `user`");
    }
    assert_eq!(
        msg(r#"{"user":"u","ts":1,"ts":1,"value":1}"#),
        "duplicate field `ts`"
    );
    assert_eq!(
        msg(r#"{"user":"u","ts":1,"value":1,"value":1}"#),
        "duplicate field `value`"
    );
    assert_eq!(
        msg(r#"{"id":1,"user":"u","ts":1,"value":1,"id":1}"#),
        "duplicate field `id`"
    );
    // Unwanted fields may repeat; nested repeats are not top-level fields.
    assert!(run(r#"{"x":1,"x":2,"user":"u","ts":1,"value":1,"o":{"user":1,"user":2}}"#).is_ok());
}

#[test]
fn names_are_compared_after_unescaping() {
    let (x, v) =
        run(r#"{"\u0075ser":"u","\u0074\u0073":5,"val\u0075e":1.5,"\u0069d":"i"}"#).unwrap();
    assert_eq!(
        (x.key.as_ref(), x.ts, x.id.as_deref(), v),
        ("u", 5, Some("i"), 1.5)
    );
    // Names that must be escaped in JSON, long names and non-ASCII names.
    let odd = JsonExtractor::new(FieldNames {
        key: "k\"ey\\".into(),
        time: "event_time_millis".into(),
        id: Some("ïd\n".into()),
        numbers: vec!["v".into(), "a long number field name".into()],
    });
    let mut n = [0.0; 2];
    let doc = r#"{"k\"ey\\":"x","event_time_millis":3,"\u00efd\n":"y","v":1,"a long number field name":2}"#;
    let x = extract_both(&odd, doc.as_bytes(), &mut n).unwrap();
    assert_eq!(
        (x.key.as_ref(), x.ts, x.id.as_deref(), n),
        ("x", 3, Some("y"), [1.0, 2.0])
    );
    let doc = r#"{"k\u0022ey\u005c":"x","event_time_millis":3,"ïd\u000a":"y","v":1,"a long number field nam\u0065":2}"#;
    let x = extract_both(&odd, doc.as_bytes(), &mut n).unwrap();
    assert_eq!(
        (x.key.as_ref(), x.ts, x.id.as_deref(), n),
        ("x", 3, Some("y"), [1.0, 2.0])
    );
    let doc = r#"{"k\"ey\\":"x","event_time_milli":3,"v":1,"a long number field name":2}"#;
    assert_eq!(
        extract_both(&odd, doc.as_bytes(), &mut n)
            .unwrap_err()
            .to_string(),
        "missing field `event_time_millis`"
    );
    let doc = r#"{"k\"ey\\":"x","event_time_millisX":3,"v":1,"a long number field name":2}"#;
    assert_eq!(
        extract_both(&odd, doc.as_bytes(), &mut n)
            .unwrap_err()
            .to_string(),
        "missing field `event_time_millis`"
    );
}

#[test]
fn one_name_may_serve_several_roles() {
    let shared = JsonExtractor::new(FieldNames {
        key: "k".into(),
        time: "t".into(),
        id: Some("k".into()),
        numbers: vec!["t".into(), "x".into(), "t".into()],
    });
    let mut n = [0.0; 3];
    let x = extract_both(&shared, br#"{"k":"a","t":9,"x":0.5}"#, &mut n).unwrap();
    assert_eq!(
        (x.key.as_ref(), x.ts, x.id.as_deref(), n),
        ("a", 9, Some("a"), [9.0, 0.5, 9.0])
    );
    let r = extract_both(&shared, br#"{"k":"a","t":9.5,"x":0.5}"#, &mut n).unwrap_err();
    assert_eq!(
        r.to_string(),
        "field `t` is a number with a fraction or exponent, expected an integer (epoch milliseconds)"
    );
    assert_eq!(
        extract_both(&shared, br#"{"k":"a","x":0.5}"#, &mut n)
            .unwrap_err()
            .to_string(),
        "missing field `t`"
    );
}

#[test]
fn many_configured_fields_work() {
    let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    let many = JsonExtractor::new(FieldNames {
        numbers: names.clone(),
        ..fields()
    });
    let mut doc = String::from(r#"{"user":"u","ts":1"#);
    for (i, name) in names.iter().enumerate().rev() {
        doc += &format!(r#","{name}":{i}"#);
    }
    doc += "}";
    let mut n = vec![0.0; 100];
    extract_both(&many, doc.as_bytes(), &mut n).unwrap();
    assert!(n.iter().enumerate().all(|(i, &v)| v == i as f64));
    let dup = doc.replace("}", r#","n42":1}"#);
    assert_eq!(
        extract_both(&many, dup.as_bytes(), &mut n)
            .unwrap_err()
            .to_string(),
        "duplicate field `n42`"
    );
    let missing = doc.replace(r#","n99":99"#, "");
    assert_eq!(
        extract_both(&many, missing.as_bytes(), &mut n)
            .unwrap_err()
            .to_string(),
        "missing field `n99`"
    );
}

#[test]
fn reject_precedence_is_fixed() {
    // A syntax error anywhere beats field problems before it.
    assert_eq!(
        kind(r#"{"user":true,"ts":"x","value":1,"y":[1,]}"#),
        "invalid_json"
    );
    assert_eq!(
        kind(r#"{"user":"u","user":"v","ts":1,"value":1,"y":01}"#),
        "invalid_json"
    );
    assert_eq!(kind(r#"{"user":1.5,"x":[[[[1]]]]}"#), "wrong_type");
    // The first field problem in document order wins.
    assert_eq!(
        msg(r#"{"ts":"x","user":1.5,"value":1}"#),
        "field `ts` is a string, expected an integer (epoch milliseconds)"
    );
    assert_eq!(
        msg(r#"{"user":"u","ts":1,"ts":"x","value":true}"#),
        "duplicate field `ts`"
    );
    assert_eq!(
        msg(r#"{"value":true,"user":"u","ts":1,"ts":1}"#),
        "field `value` is a boolean, expected a number"
    );
    // Field problems beat missing fields.
    assert_eq!(kind(r#"{"value":"1"}"#), "wrong_type");
}

#[test]
fn long_strings_and_tails_are_scanned_exactly() {
    // Strings of every length up to past two 8-byte words, with a quote, escape or
    // control character at every position, at the very end of the document too.
    for len in 0..40 {
        let s: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let doc = format!(r#"{{"ts":1,"value":1,"user":"{s}"}}"#);
        assert_eq!(run(&doc).unwrap().0.key, s);
        let doc = format!(r#"{{"ts":1,"value":1,"user":"{s}"#);
        assert_eq!(kind(&doc), "invalid_json");
        for at in 0..len {
            let mut esc = s.clone();
            esc.insert_str(at, "\\\"");
            let doc = format!(r#"{{"ts":1,"value":1,"user":"{esc}"}}"#);
            let mut want = s.clone();
            want.insert(at, '"');
            assert_eq!(run(&doc).unwrap().0.key, want);
            let mut ctl = s.clone();
            ctl.insert(at, '\u{1}');
            let doc = format!(r#"{{"ts":1,"value":1,"user":"{ctl}"}}"#);
            assert_eq!(json_error(&doc).0, 26 + at);
        }
        let doc = format!(r#"{{"{s}":1,"ts":1,"value":1,"user":"u"}}"#);
        assert!(run(&doc).is_ok());
    }
    // Numbers at the very end of a (non-object) document.
    for doc in ["[1]", "[12345678901]", "[1.5e10]", "[-0]"] {
        assert_eq!(kind(doc), "not_object");
    }
}

#[test]
fn large_documents_are_scanned_in_place_the_same_way() {
    // Past the padded buffers (a kilobyte), documents are read in place.
    let filler: String = (0..3000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let doc = format!(
        r#"{{"pad":"{filler}","user":"k\u00e9y","arr":[{}0],"ts":-42,"value":1e-3}}"#,
        "1.5,".repeat(500)
    );
    assert!(doc.len() > 4000);
    let (x, v) = run(&doc).unwrap();
    assert_eq!((x.key.as_ref(), x.ts, v), ("kéy", -42, 1e-3));
    for end in (0..doc.len()).step_by(97) {
        assert_eq!(kind(&doc[..end]), "invalid_json");
    }
    assert_eq!(kind(&doc.replace("1.5,1.5", "1.5,,1.5")), "invalid_json");
    assert_eq!(
        kind(&doc.replace("\"ts\":-42", "\"ts\":\"x\"")),
        "wrong_type"
    );
    let deep = format!(
        r#"{{"pad":"{filler}","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(kind(&deep), "too_deep");
}

#[test]
fn reject_kinds_are_a_bounded_set() {
    let all = [
        Reject::InvalidJson {
            offset: 0,
            reason: "x",
        },
        Reject::InvalidUtf8 { offset: 0 },
        Reject::NotObject { found: "an array" },
        Reject::MissingField { field: "f".into() },
        Reject::WrongType {
            field: "f".into(),
            found: "a",
            expected: "b",
        },
        Reject::DuplicateField { field: "f".into() },
        Reject::TooDeep { offset: 0 },
    ];
    let kinds: Vec<&str> = all.iter().map(Reject::kind).collect();
    assert_eq!(
        kinds,
        [
            "invalid_json",
            "invalid_utf8",
            "not_object",
            "missing_field",
            "wrong_type",
            "duplicate_field",
            "too_deep"
        ]
    );
    assert_eq!(all[0].to_string(), "invalid JSON at byte 0: x");
    assert_eq!(
        json_error(r#"{"user":"u","ts":1,"value":1,}"#).1,
        "expected '\"'"
    );
    assert_eq!(
        msg(r#"{"user":"u","ts":1 "value":1}"#),
        "invalid JSON at byte 19: expected ',' or '}'"
    );
}

// ---------------------------------------------------------------------------------
// Differential property test against serde_json

/// What the extractor must do with a document, computed with `serde_json`.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok {
        key: String,
        key_borrowed: bool,
        ts: i64,
        id: Option<(String, bool)>,
        numbers: Vec<u64>,
    },
    /// The reject kind and, for field problems, the field.
    Reject(&'static str, Option<String>),
}

/// The top-level members of a document that `serde_json` accepted as an object, in
/// document order with duplicates, each as its unescaped name and its value's exact
/// text. Only splits text already known to be valid JSON: a much simpler job than
/// the extractor's (no validation), done differently (by bracket depth).
fn members(doc: &str) -> Vec<(String, &str)> {
    /// The end of the string whose opening quote is at `i`.
    fn string_end(b: &[u8], mut i: usize) -> usize {
        i += 1;
        while b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    }
    let b = doc.as_bytes();
    let skip_ws = |mut i: usize| {
        while b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = skip_ws(0) + 1; // past `{`
    loop {
        i = skip_ws(i);
        if b[i] == b'}' {
            return out;
        }
        let name_end = string_end(b, i);
        let name = serde_json::from_str::<String>(&doc[i..name_end]).unwrap();
        let start = skip_ws(skip_ws(name_end) + 1); // past `:`
        let mut j = start;
        let mut depth = 0;
        loop {
            match b[j] {
                b'"' => {
                    j = string_end(b, j);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b'}' | b']' if depth == 0 => break,
                _ => {}
            }
            j += 1;
            if depth == 0 && (b[start] == b'{' || b[start] == b'[') {
                break;
            }
        }
        out.push((name, doc[start..j].trim_end()));
        i = skip_ws(j);
        if b[i] == b',' {
            i += 1;
        }
    }
}

fn oracle(fields: &FieldNames, doc: &[u8]) -> Expect {
    if std::str::from_utf8(doc).is_err() {
        return Expect::Reject("invalid_utf8", None);
    }
    let value = match serde_json::from_slice::<serde_json::Value>(doc) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("recursion limit") => {
            return Expect::Reject("too_deep", None);
        }
        Err(_) => return Expect::Reject("invalid_json", None),
    };
    if !value.is_object() {
        return Expect::Reject("not_object", None);
    }
    let members = members(std::str::from_utf8(doc).unwrap());
    let mut seen: Vec<&str> = Vec::new();
    let mut problem: Option<(&'static str, String)> = None;
    let (mut key, mut ts, mut id) = (None, None, None);
    let mut numbers = vec![None; fields.numbers.len()];
    for (name, raw) in &members {
        let is_key = *name == fields.key;
        let is_time = *name == fields.time;
        let is_id = fields.id.as_deref() == Some(name.as_str());
        let slots: Vec<usize> = (0..fields.numbers.len())
            .filter(|&i| fields.numbers[i] == *name)
            .collect();
        if !(is_key || is_time || is_id || !slots.is_empty()) {
            continue;
        }
        let mut flag = |kind: &'static str| {
            if problem.is_none() {
                problem = Some((kind, name.clone()));
            }
        };
        if seen.contains(&name.as_str()) {
            flag("duplicate_field");
            continue;
        }
        seen.push(name);
        let text = *raw;
        let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        let is_integer = is_number && !text.contains(['.', 'e', 'E']);
        if is_key || is_id {
            let v = if text.starts_with('"') {
                Some((
                    serde_json::from_str::<String>(text).unwrap(),
                    !text.contains('\\'),
                ))
            } else if is_integer {
                Some((text.to_owned(), true))
            } else {
                flag("wrong_type");
                None
            };
            if is_key {
                key = v.clone();
            }
            if is_id {
                id = v;
            }
        }
        if is_time {
            match text.parse::<i64>() {
                Ok(v) if is_integer => ts = Some(v),
                _ => flag("wrong_type"),
            }
        }
        if !slots.is_empty() {
            if is_number {
                let v = text.parse::<f64>().unwrap();
                for &i in &slots {
                    numbers[i] = Some(v.to_bits());
                }
            } else {
                flag("wrong_type");
            }
        }
    }
    if let Some((kind, field)) = problem {
        return Expect::Reject(kind, Some(field));
    }
    let missing = |f: &String| Expect::Reject("missing_field", Some(f.clone()));
    let Some((key, key_borrowed)) = key else {
        return missing(&fields.key);
    };
    let Some(ts) = ts else {
        return missing(&fields.time);
    };
    let mut nums = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        match n {
            Some(n) => nums.push(*n),
            None => return missing(&fields.numbers[i]),
        }
    }
    Expect::Ok {
        key,
        key_borrowed,
        ts,
        id,
        numbers: nums,
    }
}

/// What the extractor did, in the oracle's terms.
fn actual(ex: &JsonExtractor, doc: &[u8]) -> Expect {
    let mut numbers = vec![f64::NAN; ex.fields().numbers.len()];
    match extract_both(ex, doc, &mut numbers) {
        Ok(x) => Expect::Ok {
            key_borrowed: matches!(x.key, Cow::Borrowed(_)),
            key: x.key.into_owned(),
            ts: x.ts,
            id: x.id.map(|id| {
                let borrowed = matches!(id, Cow::Borrowed(_));
                (id.into_owned(), borrowed)
            }),
            numbers: numbers.iter().map(|n| n.to_bits()).collect(),
        },
        Err(r) => {
            let field = match &r {
                Reject::MissingField { field }
                | Reject::WrongType { field, .. }
                | Reject::DuplicateField { field } => Some(field.clone()),
                _ => None,
            };
            if let Reject::InvalidUtf8 { offset } = r {
                assert_eq!(offset, std::str::from_utf8(doc).unwrap_err().valid_up_to());
            }
            Expect::Reject(r.kind(), field)
        }
    }
}

/// The configurations the property tests run with: plain names; names that need
/// escaping, are long or non-ASCII, and no id; one name in several roles.
fn configs() -> Vec<FieldNames> {
    vec![
        FieldNames {
            key: "user".into(),
            time: "ts".into(),
            id: Some("id".into()),
            numbers: vec!["value".into(), "n2".into()],
        },
        FieldNames {
            key: "k\"é".into(),
            time: "time_stamp_ms".into(),
            id: None,
            numbers: vec!["v".into(), "a_rather_long_number".into()],
        },
        FieldNames {
            key: "id".into(),
            time: "t".into(),
            id: Some("id".into()),
            numbers: vec!["x".into(), "t".into()],
        },
    ]
}

fn ws() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(String::new()), 1 => "[ \t\r\n]{1,3}"]
}

/// One piece of string content, as JSON source text.
fn string_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        160 => "[a-zA-Z0-9 _.:/-]{1,12}",
        40 => "[é中😀ü\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}]{1,3}",
        40 => prop::sample::select(vec!["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]).prop_map(String::from),
        20 => (0u32..0xD800).prop_map(|c| format!("\\u{c:04x}")),
        20 => (0xE000u32..0x10000).prop_map(|c| format!("\\u{c:04X}")),
        20 => (0xD800u32..0xDC00, 0xDC00u32..0xE000).prop_map(|(h, l)| format!("\\u{h:04x}\\u{l:04X}")),
        // Rarely, something invalid: a raw control character, a lone or reversed
        // surrogate, an unknown escape, short hex.
        1 => prop::sample::select(vec![
            "\u{1}", "\t", "\u{1f}", "\\ud800", "\\udc00x", "\\uDC00\\uD800", "\\x", "\\u12", "\\U0041",
        ])
        .prop_map(String::from),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop::collection::vec(string_piece(), 0..4).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => any::<i64>().prop_map(|n| n.to_string()),
        20 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        10 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        30 => "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?",
        10 => "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?[eE][+-]?[1-4][0-9]{2}",
        5 => Just("-0".to_string()),
        // Rarely, not a JSON number.
        1 => "[+-]?(0[0-9]{1,3}|\\.[0-9]|[0-9]\\.|[0-9]\\.?[eE][+-]?|-|NaN|Infinity|0x1F|1_0)",
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (prop::collection::vec((ws(), inner.clone(), ws()), 0..4)).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            (prop::collection::vec((json_string(), ws(), inner), 0..4)).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", items.join(","))
            }),
        ]
    })
}

/// `name` as JSON source, with each character written plainly or escaped.
fn encode_name(name: &str, style: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in name.chars().enumerate() {
        let s = style.get(i).copied().unwrap_or(0) % 4;
        match c {
            '"' if s < 2 => out.push_str("\\\""),
            '\\' if s < 2 => out.push_str("\\\\"),
            '\n' if s < 2 => out.push_str("\\n"),
            '"' | '\\' | '\u{0}'..='\u{1f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            _ if s == 3 && (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
            _ if s == 3 => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value of the kind a role wants, or of some other kind.
fn role_value(role: u8) -> BoxedStrategy<String> {
    let good = match role {
        // key and id: strings and integers (occasionally huge)
        0 => prop_oneof![3 => json_string(), 1 => any::<i64>().prop_map(|n| n.to_string()), 1 => "-?[1-9][0-9]{18,25}"].boxed(),
        // time: integers around and beyond the i64 range
        1 => prop_oneof![
            8 => any::<i64>().prop_map(|n| n.to_string()),
            1 => "-?[1-9][0-9]{17,21}",
            1 => Just("-0".to_string()),
        ]
        .boxed(),
        // numbers
        _ => json_number().boxed(),
    };
    prop_oneof![14 => good, 1 => json_value()].boxed()
}

#[derive(Debug, Clone)]
struct Doc {
    config: usize,
    text: String,
}

/// An object with the config's wanted fields (present, absent, repeated, wrong
/// types, in any order), unwanted fields and whitespace.
fn object(config: usize) -> impl Strategy<Value = Doc> {
    let f = &configs()[config];
    let mut wanted: Vec<(String, u8)> = vec![(f.key.clone(), 0), (f.time.clone(), 1)];
    if let Some(id) = &f.id {
        wanted.push((id.clone(), 0));
    }
    wanted.extend(f.numbers.iter().map(|n| (n.clone(), 2)));
    // One member per distinct name (a name may serve several roles).
    let mut distinct: Vec<(String, u8)> = Vec::new();
    for (name, role) in wanted {
        if !distinct.iter().any(|(n, _)| *n == name) {
            distinct.push((name, role));
        }
    }
    let wanted = distinct;
    let member = |(name, role): (String, u8)| {
        (
            prop::collection::vec(any::<u8>(), 0..24),
            ws(),
            role_value(role),
            ws(),
        )
            .prop_map(move |(style, w1, v, w2)| {
                format!("{w1}{}{w1}:{w2}{v}{w2}", encode_name(&name, &style))
            })
    };
    let wanted_members: Vec<_> = wanted
        .into_iter()
        .map(|w| prop::option::weighted(0.96, member(w)).boxed())
        .collect();
    let unwanted = prop::collection::vec(
        (
            prop_oneof![
                json_string(),
                Just("\"u\"".to_string()),
                Just("\"ids\"".to_string())
            ],
            ws(),
            json_value(),
        )
            .prop_map(|(k, w, v)| format!("{k}{w}:{w}{v}")),
        0..4,
    );
    let repeats = prop::option::weighted(0.15, 0usize..8);
    (wanted_members, unwanted, repeats, ws(), ws())
        .prop_flat_map(|(wanted, unwanted, repeats, w1, w2)| {
            let mut members: Vec<String> = wanted.into_iter().flatten().collect();
            if let Some(i) = repeats
                && let Some(m) = members.get(i % members.len().max(1)).cloned()
            {
                members.push(m);
            }
            members.extend(unwanted);
            (Just(members).prop_shuffle(), Just(w1), Just(w2))
        })
        .prop_map(move |(members, w1, w2)| Doc {
            config,
            text: format!("{w1}{{{}}}{w2}", members.join(",")),
        })
}

fn any_doc() -> impl Strategy<Value = Doc> {
    prop_oneof![4 => object(0), 2 => object(1), 2 => object(2), 1 => json_value().prop_map(|text| Doc { config: 0, text })]
}

/// Byte-level damage to a document.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        8 => prop::sample::select(b"{}[],:\"\\ 0123456789-+.eEtfnu\t\r\n\x00\x1f\x7f".to_vec()),
        1 => any::<u8>(),
        1 => prop::sample::select(vec![0x80u8, 0xbf, 0xc0, 0xc3, 0xe2, 0xed, 0xf0, 0xf4, 0xf5, 0xff]),
    ];
    prop_oneof![
        2 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        2 => (any::<usize>(), byte.clone()).prop_map(|(p, b)| Mutation::Set(p, b)),
        2 => (any::<usize>(), byte).prop_map(|(p, b)| Mutation::Insert(p, b)),
        2 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut doc: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = doc.len();
        match *m {
            Mutation::Flip(p, bit) if len > 0 => doc[p % len] ^= 1 << bit,
            Mutation::Set(p, b) if len > 0 => doc[p % len] = b,
            Mutation::Insert(p, b) => doc.insert(p % (len + 1), b),
            Mutation::Delete(p) if len > 0 => {
                doc.remove(p % len);
            }
            Mutation::Truncate(p) => doc.truncate(p % (len + 1)),
            _ => {}
        }
    }
    doc
}

/// Cases per property: moderate by default (debug CI), more with `PROPTEST_CASES`.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn check(doc: &Doc, bytes: &[u8]) -> Result<(), TestCaseError> {
    let fields = &configs()[doc.config];
    let ex = JsonExtractor::new(fields.clone());
    let want = oracle(fields, bytes);
    let got = actual(&ex, bytes);
    prop_assert_eq!(got, want, "document: {:?}", String::from_utf8_lossy(bytes));
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn agrees_with_serde_json_on_generated_documents(doc in any_doc()) {
        check(&doc, doc.text.as_bytes())?;
    }

    #[test]
    fn agrees_with_serde_json_on_damaged_documents(
        doc in any_doc(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = mutate(doc.text.clone().into_bytes(), &mutations);
        check(&doc, &bytes)?;
    }
}

#[test]
fn oracle_sees_what_it_must() {
    // The oracle itself: duplicates, exact number text, integer keys.
    let f = &configs()[0];
    assert_eq!(
        oracle(f, br#"{"user":"u","ts":1,"value":1,"n2":2,"user":"u"}"#),
        Expect::Reject("duplicate_field", Some("user".into()))
    );
    assert_eq!(
        oracle(f, br#"{"user":-0,"ts":-0,"value":-0,"n2":1e2}"#),
        Expect::Ok {
            key: "-0".into(),
            key_borrowed: true,
            ts: 0,
            id: None,
            numbers: vec![(-0.0f64).to_bits(), 100f64.to_bits()],
        }
    );
    assert_eq!(oracle(f, b"[1e400]"), Expect::Reject("invalid_json", None));
}

#[test]
fn generated_documents_cover_every_outcome() {
    // The property tests are only as good as their inputs: every outcome must be
    // common among them, for generated and damaged documents alike.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any_doc(), prop::collection::vec(mutation(), 1..4));
    let mut generated = std::collections::BTreeMap::new();
    let mut damaged = std::collections::BTreeMap::new();
    // Documents scanned in each of the padded buffers (every document is also
    // scanned in place, by `extract_both`).
    let mut sizes = [0; 3];
    let kind = |e: Expect| match e {
        Expect::Ok { .. } => "ok",
        Expect::Reject(kind, _) => kind,
    };
    for _ in 0..2000 {
        let (doc, mutations) = strategy.new_tree(&mut runner).unwrap().current();
        let fields = &configs()[doc.config];
        *generated
            .entry(kind(oracle(fields, doc.text.as_bytes())))
            .or_insert(0) += 1;
        sizes[match doc.text.len() {
            n if n <= Padded::<SMALL>::MAX_DOC => 0,
            n if n <= Padded::<LARGE>::MAX_DOC => 1,
            _ => 2,
        }] += 1;
        let bytes = mutate(doc.text.clone().into_bytes(), &mutations);
        *damaged.entry(kind(oracle(fields, &bytes))).or_insert(0) += 1;
    }
    for kind in [
        "ok",
        "invalid_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "duplicate_field",
    ] {
        assert!(
            generated.get(kind).copied().unwrap_or(0) >= 40,
            "generated: {generated:?}"
        );
    }
    assert!(sizes[0] >= 200 && sizes[1] >= 200, "sizes: {sizes:?}");
    for kind in [
        "ok",
        "invalid_json",
        "invalid_utf8",
        "missing_field",
        "wrong_type",
        "duplicate_field",
    ] {
        assert!(
            damaged.get(kind).copied().unwrap_or(0) >= 20,
            "damaged: {damaged:?}"
        );
    }
}
