//! Tests of the Protobuf scanner. Messages are encoded by `prost-reflect`'s
//! `DynamicMessage` (independent of the scanner), or by hand for malformed bytes.

use super::*;
use prost_reflect::{DynamicMessage, Value};

const PROTO: &str = r#"
syntax = "proto3";
package t;

message Nested { string s = 1; int64 n = 2; }

message Event {
  string user = 1;
  int64 ts = 2;
  string id = 3;
  double value = 4;
  float f = 5;
  int32 i32 = 6;
  uint32 u32 = 7;
  uint64 u64 = 8;
  sint32 s32 = 9;
  sint64 s64 = 10;
  fixed32 fx32 = 11;
  fixed64 fx64 = 12;
  sfixed32 sfx32 = 13;
  sfixed64 sfx64 = 14;
  bool flag = 15;
  bytes blob = 16;
  Nested nested = 17;
  repeated double many = 18;
  map<string, int64> tags = 19;
  optional string okey = 20;
  optional int64 ots = 21;
  optional double oval = 22;
  optional string oid = 23;
  int64 big_number = 300;
  string note = 200;
}
"#;

fn pool(dir: &Path) -> (PathBuf, DescriptorPool) {
    let path = dir.join("t.proto");
    std::fs::write(&path, PROTO).unwrap();
    let pool = compile(&path).unwrap();
    (path, pool)
}

fn fields(key: &str, time: &str, id: Option<&str>, numbers: &[&str]) -> FieldNames {
    FieldNames {
        key: key.into(),
        time: time.into(),
        id: id.map(Into::into),
        numbers: numbers.iter().map(|s| (*s).to_owned()).collect(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pool: DescriptorPool,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (path, pool) = pool(dir.path());
    Fixture {
        _dir: dir,
        path,
        pool,
    }
}

impl Fixture {
    fn extractor(&self, f: FieldNames) -> ProtobufExtractor {
        ProtobufExtractor::from_pool(&self.pool, &self.path, "t.Event", f).unwrap()
    }

    fn error(&self, f: FieldNames) -> String {
        ProtobufExtractor::from_pool(&self.pool, &self.path, "t.Event", f)
            .unwrap_err()
            .to_string()
    }

    fn encode(&self, set: &[(&str, Value)]) -> Vec<u8> {
        use prost_reflect::prost::Message;
        let desc = self.pool.get_message_by_name("t.Event").unwrap();
        let mut m = DynamicMessage::new(desc);
        for (name, v) in set {
            m.set_field_by_name(name, v.clone());
        }
        m.encode_to_vec()
    }
}

fn std_fields() -> FieldNames {
    fields("user", "ts", Some("id"), &["value"])
}

#[test]
fn every_numeric_type_reads_as_its_value() {
    let fx = fixture();
    let names = [
        "value", "f", "i32", "u32", "u64", "s32", "s64", "fx32", "fx64", "sfx32", "sfx64", "ts",
    ];
    let ex = fx.extractor(fields("user", "ts", None, &names));
    let msg = fx.encode(&[
        ("user", Value::String("u".into())),
        ("ts", Value::I64(-5)),
        ("value", Value::F64(3.25)),
        ("f", Value::F32(1.5)),
        ("i32", Value::I32(-7)),
        ("u32", Value::U32(u32::MAX)),
        ("u64", Value::U64(1 << 60)),
        ("s32", Value::I32(-123)),
        ("s64", Value::I64(-1 << 40)),
        ("fx32", Value::U32(77)),
        ("fx64", Value::U64(88)),
        ("sfx32", Value::I32(-99)),
        ("sfx64", Value::I64(-100)),
    ]);
    let mut numbers = vec![f64::NAN; names.len()];
    let x = ex.extract(&msg, &mut numbers).unwrap();
    assert_eq!(x.ts, -5);
    assert_eq!(x.key, Scalar::Str("u"));
    assert_eq!(x.id, None);
    assert_eq!(
        numbers,
        vec![
            3.25,
            1.5,
            -7.0,
            u32::MAX as f64,
            (1u64 << 60) as f64,
            -123.0,
            (-1i64 << 40) as f64,
            77.0,
            88.0,
            -99.0,
            -100.0,
            -5.0
        ]
    );
}

#[test]
fn integer_keys_times_and_ids_of_every_integer_type() {
    let fx = fixture();
    for (name, value, text) in [
        ("i32", Value::I32(-42), "-42"),
        ("u32", Value::U32(42), "42"),
        ("u64", Value::U64(u64::MAX), "18446744073709551615"),
        ("s32", Value::I32(-3), "-3"),
        ("s64", Value::I64(i64::MIN), "-9223372036854775808"),
        ("fx32", Value::U32(9), "9"),
        ("fx64", Value::U64(10), "10"),
        ("sfx32", Value::I32(-11), "-11"),
        ("sfx64", Value::I64(-12), "-12"),
        ("big_number", Value::I64(1767225600123), "1767225600123"),
    ] {
        let ex = fx.extractor(fields(name, "ts", Some(name), &[]));
        let msg = fx.encode(&[(name, value), ("ts", Value::I64(1))]);
        let x = ex.extract(&msg, &mut []).unwrap();
        let mut buf = itoa::Buffer::new();
        assert_eq!(x.key.text(&mut buf), text, "{name}");
        assert_eq!(x.id, Some(x.key));
        assert_eq!(x.to_extracted().key, text);
    }
    // Any integer type as the time.
    for (name, value, ts) in [
        ("i32", Value::I32(-1), -1),
        ("u64", Value::U64(1 << 62), 1 << 62),
        ("fx64", Value::U64(5), 5),
        ("sfx32", Value::I32(-6), -6),
        ("s64", Value::I64(-7), -7),
    ] {
        let ex = fx.extractor(fields("user", name, None, &[]));
        let msg = fx.encode(&[("user", Value::String("k".into())), (name, value)]);
        assert_eq!(ex.extract(&msg, &mut []).unwrap().ts, ts, "{name}");
    }
}

#[test]
fn unknown_and_nested_fields_are_skipped() {
    let fx = fixture();
    let ex = fx.extractor(std_fields());
    let desc = fx.pool.get_message_by_name("t.Nested").unwrap();
    let mut nested = DynamicMessage::new(desc);
    nested.set_field_by_name("s", Value::String("not the key".into()));
    nested.set_field_by_name("n", Value::I64(99));
    let mut tags = std::collections::HashMap::new();
    tags.insert(prost_reflect::MapKey::String("user".into()), Value::I64(1));
    let msg = fx.encode(&[
        ("note", Value::String("x".repeat(300))),
        ("nested", Value::Message(nested)),
        ("many", Value::List(vec![Value::F64(1.0), Value::F64(2.0)])),
        ("tags", Value::Map(tags)),
        ("blob", Value::Bytes(vec![0xff, 0xfe].into())),
        ("flag", Value::Bool(true)),
        ("f", Value::F32(2.0)),
        ("fx64", Value::U64(3)),
        ("user", Value::String("u1".into())),
        ("ts", Value::I64(17)),
        ("id", Value::String("e1".into())),
        ("value", Value::F64(-0.5)),
    ]);
    // Fields the schema does not know at all: append an unknown varint, fixed32 and
    // length-delimited field.
    let mut msg = msg;
    msg.extend_from_slice(&[0xf8, 0x3e, 0x05]); // field 999, varint
    msg.extend_from_slice(&[0xfd, 0x3e, 1, 2, 3, 4]); // field 999, fixed32
    msg.extend_from_slice(&[0xfa, 0x3e, 2, 0xff, 0xff]); // field 999, bytes (not UTF-8)
    let mut n = [0.0];
    let x = ex.extract(&msg, &mut n).unwrap();
    assert_eq!(
        (x.key, x.ts, x.id, n[0]),
        (Scalar::Str("u1"), 17, Some(Scalar::Str("e1")), -0.5)
    );
}

#[test]
fn the_last_occurrence_wins() {
    let fx = fixture();
    let ex = fx.extractor(std_fields());
    let a = fx.encode(&[
        ("user", Value::String("first".into())),
        ("ts", Value::I64(1)),
        ("value", Value::F64(1.0)),
        ("id", Value::String("a".into())),
    ]);
    let b = fx.encode(&[
        ("user", Value::String("second".into())),
        ("ts", Value::I64(2)),
        ("value", Value::F64(2.0)),
    ]);
    // Concatenated messages merge: singular fields take the last value.
    let msg = [a, b].concat();
    let mut n = [0.0];
    let x = ex.extract(&msg, &mut n).unwrap();
    assert_eq!(
        (x.key, x.ts, x.id, n[0]),
        (Scalar::Str("second"), 2, Some(Scalar::Str("a")), 2.0)
    );
    // prost-reflect agrees.
    let desc = fx.pool.get_message_by_name("t.Event").unwrap();
    let m = DynamicMessage::decode(desc, &msg[..]).unwrap();
    assert_eq!(
        m.get_field_by_name("user").unwrap().as_str(),
        Some("second")
    );
}

#[test]
fn implicit_presence_fields_default_and_explicit_ones_are_required() {
    let fx = fixture();
    let ex = fx.extractor(std_fields());
    // proto3 plain fields: absent means the default, as every Protobuf library reads it.
    let msg = fx.encode(&[("ts", Value::I64(0)), ("value", Value::F64(0.0))]);
    assert!(msg.is_empty(), "defaults are not written");
    let mut n = [9.0];
    let x = ex.extract(&msg, &mut n).unwrap();
    assert_eq!(
        (x.key, x.ts, x.id, n[0]),
        (Scalar::Str(""), 0, Some(Scalar::Str("")), 0.0)
    );
    // `optional` fields: absence is an error (key, time, numbers) or no id.
    let ex = fx.extractor(fields("okey", "ots", Some("oid"), &["oval"]));
    let full = [
        ("okey", Value::String("k".into())),
        ("ots", Value::I64(0)),
        ("oval", Value::F64(0.0)),
    ];
    let msg = fx.encode(&full);
    let x = ex.extract(&msg, &mut n).unwrap();
    assert_eq!((x.key, x.ts, x.id, n[0]), (Scalar::Str("k"), 0, None, 0.0));
    for (i, missing) in ["okey", "ots", "oval"].iter().enumerate() {
        let mut some = full.to_vec();
        some.remove(i);
        let err = ex.extract(&fx.encode(&some), &mut n).unwrap_err();
        assert_eq!(
            err,
            Reject::MissingField {
                field: (*missing).into()
            }
        );
        assert_eq!(err.kind(), "missing_field");
    }
    // The key is reported before the time when both are missing.
    let err = ex
        .extract(&fx.encode(&[full[2].clone()]), &mut n)
        .unwrap_err();
    assert_eq!(err.to_string(), "missing field `okey`");
}

#[test]
fn every_framing_problem_is_rejected_with_its_reason() {
    let fx = fixture();
    let ex = fx.extractor(std_fields());
    let good = fx.encode(&[
        ("user", Value::String("u".into())),
        ("ts", Value::I64(300)),
        ("value", Value::F64(1.0)),
    ]);
    let mut n = [0.0];
    assert!(ex.extract(&good, &mut n).is_ok());
    let reason = |bytes: &[u8]| match ex.extract(bytes, &mut [0.0]) {
        Err(Reject::InvalidProtobuf { offset, reason }) => (offset, reason),
        other => panic!("{bytes:?}: {other:?}"),
    };
    // Every cut inside a field is a framing error, never a panic; a cut between
    // fields (user: 3 bytes, ts: 3 bytes, value: 9 bytes) is a shorter valid message.
    for cut in 1..good.len() {
        let r = ex.extract(&good[..cut], &mut n);
        if cut == 3 || cut == 6 {
            assert!(r.is_ok(), "cut at {cut}: {r:?}");
        } else {
            assert!(
                matches!(r, Err(Reject::InvalidProtobuf { .. })),
                "cut at {cut}: {r:?}"
            );
        }
    }
    assert_eq!(reason(&[0x10]), (1, "truncated varint"));
    assert_eq!(reason(&[0x10, 0x80]), (1, "truncated varint"));
    assert_eq!(reason(&[0x80]), (0, "truncated varint"));
    assert_eq!(
        reason(&[
            0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02
        ]),
        (1, "varint overflows 64 bits")
    );
    assert_eq!(
        reason(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        (0, "tag is not a 32-bit varint")
    );
    assert_eq!(reason(&[0x00, 0x01]), (0, "field number 0"));
    assert_eq!(reason(&[0x0e]), (0, "invalid wire type (6 or 7)"));
    assert_eq!(
        reason(&[0x0b, 0x0c]),
        (0, "groups (wire types 3 and 4) are not supported")
    );
    assert_eq!(reason(&[0x21, 1, 2, 3]), (1, "truncated fixed64 value"));
    assert_eq!(reason(&[0x2d, 1, 2]), (1, "truncated fixed32 value"));
    assert_eq!(
        reason(&[0x0a, 5, b'a']),
        (1, "length-delimited field runs past the end of the message")
    );
    assert_eq!(
        reason(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        (1, "length-delimited field runs past the end of the message")
    );
    let all = [
        Reject::InvalidProtobuf {
            offset: 0,
            reason: "x",
        }
        .kind(),
        "invalid_protobuf",
    ];
    assert_eq!(all[0], all[1]);
}

#[test]
fn wrong_wire_types_bad_strings_and_out_of_range_times_are_rejected() {
    let fx = fixture();
    let ex = fx.extractor(std_fields());
    let mut n = [0.0];
    // `ts` (field 2, int64) sent length-delimited, e.g. packed.
    let err = ex.extract(&[0x12, 1, 5], &mut n).unwrap_err();
    assert_eq!(err.kind(), "wrong_type");
    assert_eq!(
        err.to_string(),
        "field `ts` is length-delimited (wire type 2), expected an int64 (wire type 0, varint)"
    );
    // `value` (field 4, double) as a fixed32.
    let err = ex.extract(&[0x25, 0, 0, 0, 0], &mut n).unwrap_err();
    assert!(err.to_string().contains("expected a double"), "{err}");
    // `user` (field 1, string) as a varint.
    let err = ex.extract(&[0x08, 1], &mut n).unwrap_err();
    assert!(
        err.to_string().contains("field `user` is a varint"),
        "{err}"
    );
    // Invalid UTF-8 in the key and the id; in an unused string it is not looked at.
    let err = ex.extract(&[0x0a, 2, 0xc3, 0x28], &mut n).unwrap_err();
    assert_eq!(
        (err.kind(), err.to_string()),
        ("invalid_utf8", "field `user` is not valid UTF-8".to_owned())
    );
    let err = ex.extract(&[0x1a, 1, 0xff], &mut n).unwrap_err();
    assert_eq!(err, Reject::InvalidUtf8 { field: "id".into() });
    assert!(ex.extract(&[0xc2, 0x0c, 1, 0xff], &mut n).is_ok()); // note = 200
    // A uint64 time above i64::MAX.
    let ex = fx.extractor(fields("user", "u64", None, &[]));
    let msg = fx.encode(&[("u64", Value::U64(u64::MAX))]);
    let err = ex.extract(&msg, &mut []).unwrap_err();
    assert_eq!(err.kind(), "wrong_type");
    assert!(err.to_string().contains("`u64`"), "{err}");
}

#[test]
fn schema_problems_name_the_file_message_and_field() {
    let fx = fixture();
    let e = fx.error(fields("usr", "ts", None, &[]));
    assert!(e.contains("t.proto") && e.contains("t.Event"), "{e}");
    assert!(
        e.contains("no top-level field `usr` (the key), did you mean `user`?"),
        "{e}"
    );
    for (f, needle) in [
        (
            fields("user", "value", None, &[]),
            "`value` (the event time) is double",
        ),
        (
            fields("flag", "ts", None, &[]),
            "`flag` (the key) is a bool",
        ),
        (
            fields("user", "ts", Some("blob"), &[]),
            "`blob` (the id) is bytes",
        ),
        (
            fields("user", "ts", None, &["nested"]),
            "is a message (t.Nested)",
        ),
        (fields("user", "ts", None, &["many"]), "is repeated"),
        (fields("user", "ts", None, &["tags"]), "is a map"),
        (
            fields("user", "ts", None, &["note"]),
            "`note` (the aggregated number) is string",
        ),
        (
            fields("user", "user", None, &[]),
            "(the event time) is string",
        ),
    ] {
        let e = fx.error(f);
        assert!(e.contains(needle), "{e} lacks {needle}");
    }
    let e = ProtobufExtractor::from_pool(&fx.pool, &fx.path, "t.Evnt", std_fields())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no message `t.Evnt`, did you mean `t.Event`?"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.proto");
    std::fs::write(&bad, "syntax = \"proto3\"; message { }").unwrap();
    let e = ProtobufExtractor::load(&bad, "x.Y", std_fields()).unwrap_err();
    assert!(matches!(e, SchemaError::Compile { .. }), "{e}");
    assert!(e.to_string().starts_with(&bad.display().to_string()), "{e}");
    let e =
        ProtobufExtractor::load(&dir.path().join("none.proto"), "x.Y", std_fields()).unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");
}

#[test]
fn one_field_may_feed_several_roles() {
    let fx = fixture();
    let ex = fx.extractor(fields("u64", "ts", Some("u64"), &["u64", "value", "u64"]));
    let msg = fx.encode(&[
        ("u64", Value::U64(7)),
        ("ts", Value::I64(1)),
        ("value", Value::F64(0.25)),
    ]);
    let mut n = [0.0; 3];
    let x = ex.extract(&msg, &mut n).unwrap();
    assert_eq!((x.key, x.id), (Scalar::Uint(7), Some(Scalar::Uint(7))));
    assert_eq!(n, [7.0, 0.25, 7.0]);
}

#[test]
fn delimited_batches_split_skip_oversized_messages_and_stop_at_a_broken_prefix() {
    let mut batch = Vec::new();
    write_delimited(&mut batch, b"abc");
    write_delimited(&mut batch, &[]);
    write_delimited(&mut batch, &[7u8; 300]);
    write_delimited(&mut batch, b"z");
    let frames: Vec<Frame<'_>> = Delimited::new(&batch, 100).collect();
    assert_eq!(
        frames,
        vec![
            Frame::Message {
                offset: 0,
                bytes: b"abc"
            },
            Frame::Message {
                offset: 4,
                bytes: b""
            },
            Frame::TooLarge {
                offset: 5,
                len: 300,
                head: &[7u8; 101]
            },
            Frame::Message {
                offset: 307,
                bytes: b"z"
            },
        ]
    );
    // A prefix pointing past the end, and one cut off, and one not a varint.
    let mut bad = batch.clone();
    bad.extend_from_slice(&[10, 1, 2]);
    let last = Delimited::new(&bad, 1000).last().unwrap();
    assert_eq!(
        last,
        Frame::Broken {
            offset: batch.len(),
            reason: "the length prefix points past the end of the data",
            rest: &[10, 1, 2]
        }
    );
    let frames: Vec<_> = Delimited::new(&[1, b'a', 0x80], 10).collect();
    assert!(matches!(
        frames[1],
        Frame::Broken {
            offset: 2,
            reason: "the length prefix is cut off by the end of the data",
            ..
        }
    ));
    let junk = [0xffu8; 12];
    let frames: Vec<_> = Delimited::new(&junk, 10).collect();
    assert_eq!(frames.len(), 1);
    assert!(matches!(
        frames[0],
        Frame::Broken {
            reason: "the length prefix is not a valid varint",
            ..
        }
    ));
    // An oversized message cut off by the end of the data is skipped to the end.
    let mut cut = Vec::new();
    write_delimited(&mut cut, &[1u8; 50]);
    let frames: Vec<_> = Delimited::new(&cut[..20], 10).collect();
    assert_eq!(frames.len(), 1);
    assert!(matches!(frames[0], Frame::TooLarge { len: 50, .. }));
    // Whole messages for chunked readers.
    assert_eq!(whole_messages(&batch), (Some(batch.len()), Some(3)));
    assert_eq!(whole_messages(&batch[..6]), (Some(5), Some(3)));
    assert_eq!(whole_messages(&batch[..2]), (None, Some(3)));
    assert_eq!(whole_messages(&[]), (Some(0), None));
}
