//! The input codecs on the same 10,000,000 events: JSON through the `serde_json`
//! reference (`common/serde_reference.rs`, as in `json_extract`), JSON through the
//! lungfish fast path (`codec::json`), and Protobuf through the lungfish wire scanner
//! (`codec::protobuf`).
//!
//! Run: `cargo bench -p lungfish --bench codecs`. Single thread. Events are generated
//! deterministically in blocks of 100,000 (event `i` is a function of `i`), each block
//! once as JSON lines and once as Protobuf messages; every block is extracted by the
//! three codecs in turn, 3 times (the runs interleave block by block, so all three see
//! the same machine conditions), and each run's thread CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//! is summed over the blocks. The table gives the median run: CPU seconds per million
//! events, bytes on the wire per event (JSON: the line and its `\n`; Protobuf: the
//! message and its length prefix) and ratios to `serde_json`. Before timing, the three
//! must agree on every event of the first block, and their checksums over all events
//! must be equal.

#[path = "common/serde_reference.rs"]
mod serde_reference;

use std::hint::black_box;
use std::io::Write;

use lungfish::codec::json::{FieldNames, JsonExtractor};
use lungfish::codec::protobuf::{ProtobufExtractor, write_delimited};
use serde_reference::serde_extract;

const EVENTS: u64 = 10_000_000;
const BLOCK: u64 = 100_000;
const RUNS: usize = 3;

const PROTO: &str = r#"
syntax = "proto3";
package bench;
message Device { string model = 1; string os = 2; }
message Event {
  string id = 1;
  string user = 2;
  int64 ts = 3;
  double value = 4;
  int64 bytes = 5;
  double latency_ms = 6;
  string country = 7;
  Device device = 8;
  repeated string tags = 9;
}
"#;

/// Event `i`, deterministic.
struct Ev {
    id: String,
    user: String,
    ts: i64,
    value: f64,
    bytes: i64,
    latency_ms: f64,
    country: &'static str,
    model: &'static str,
    os: &'static str,
    tags: [&'static str; 2],
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

fn event(i: u64) -> Ev {
    const COUNTRIES: [&str; 5] = ["nz", "de", "us", "br", "jp"];
    const MODELS: [&str; 4] = ["pixel-8", "iphone-15", "galaxy-s24", "desktop"];
    const OS: [&str; 3] = ["android", "ios", "linux"];
    const TAGS: [&str; 5] = ["a", "beta", "c", "new-user", "eu"];
    let r = mix(i);
    Ev {
        id: format!("e-{i:09}"),
        user: format!("u-{}", r % 100_000),
        ts: 1_767_225_600_000 + (i as i64) / 10 + ((r >> 20) % 2000) as i64,
        value: ((r >> 8) % 100_000) as f64 / 8.0,
        bytes: ((r >> 24) % 1_000_000) as i64,
        latency_ms: ((r >> 40) % 50_000) as f64 / 100.0,
        country: COUNTRIES[(r >> 3) as usize % 5],
        model: MODELS[(r >> 5) as usize % 4],
        os: OS[(r >> 7) as usize % 3],
        tags: [TAGS[(r >> 9) as usize % 5], TAGS[(r >> 11) as usize % 5]],
    }
}

fn json(e: &Ev, out: &mut Vec<u8>) {
    writeln!(
        out,
        r#"{{"id":"{}","user":"{}","ts":{},"value":{},"bytes":{},"latency_ms":{},"country":"{}","device":{{"model":"{}","os":"{}"}},"tags":["{}","{}"]}}"#,
        e.id, e.user, e.ts, e.value, e.bytes, e.latency_ms, e.country, e.model, e.os, e.tags[0], e.tags[1]
    )
    .unwrap();
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(field: u8, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        out.push(field << 3 | 2);
        varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

/// The message as proto3 encodes it (defaults left out); checked against
/// `prost-reflect`'s encoder on the first block.
fn protobuf(e: &Ev, out: &mut Vec<u8>) {
    out.clear();
    string(1, &e.id, out);
    string(2, &e.user, out);
    if e.ts != 0 {
        out.push(3 << 3);
        varint(e.ts as u64, out);
    }
    if e.value != 0.0 {
        out.push(4 << 3 | 1);
        out.extend_from_slice(&e.value.to_bits().to_le_bytes());
    }
    if e.bytes != 0 {
        out.push(5 << 3);
        varint(e.bytes as u64, out);
    }
    if e.latency_ms != 0.0 {
        out.push(6 << 3 | 1);
        out.extend_from_slice(&e.latency_ms.to_bits().to_le_bytes());
    }
    string(7, e.country, out);
    let mut device = Vec::new();
    string(1, e.model, &mut device);
    string(2, e.os, &mut device);
    out.push(8 << 3 | 2);
    varint(device.len() as u64, out);
    out.extend_from_slice(&device);
    for t in e.tags {
        string(9, t, out);
    }
}

fn reference_encoding(pool: &prost_reflect::DescriptorPool, e: &Ev) -> Vec<u8> {
    use prost_reflect::prost::Message;
    use prost_reflect::{DynamicMessage, Value};
    let mut device = DynamicMessage::new(pool.get_message_by_name("bench.Device").unwrap());
    device.set_field_by_name("model", Value::String(e.model.into()));
    device.set_field_by_name("os", Value::String(e.os.into()));
    let mut m = DynamicMessage::new(pool.get_message_by_name("bench.Event").unwrap());
    m.set_field_by_name("id", Value::String(e.id.clone()));
    m.set_field_by_name("user", Value::String(e.user.clone()));
    m.set_field_by_name("ts", Value::I64(e.ts));
    m.set_field_by_name("value", Value::F64(e.value));
    m.set_field_by_name("bytes", Value::I64(e.bytes));
    m.set_field_by_name("latency_ms", Value::F64(e.latency_ms));
    m.set_field_by_name("country", Value::String(e.country.into()));
    m.set_field_by_name("device", Value::Message(device));
    m.set_field_by_name(
        "tags",
        Value::List(e.tags.iter().map(|t| Value::String((*t).into())).collect()),
    );
    m.encode_to_vec()
}

/// Thread CPU time, seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One event's contribution to a checksum: what the pipeline takes from it.
#[inline]
fn digest(key: &str, ts: i64, id: Option<&str>, numbers: &[f64]) -> u64 {
    let mut h = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) ^ (ts as u64).rotate_left(17);
    h ^= id.map_or(0, |i| {
        xxhash_rust::xxh3::xxh3_64(i.as_bytes()).rotate_left(7)
    });
    for (k, n) in numbers.iter().enumerate() {
        h ^= n.to_bits().rotate_left(11 * k as u32 + 3);
    }
    h
}

/// A block: JSON lines and length-delimited Protobuf, and the events' offsets in each.
struct Block {
    json: Vec<u8>,
    json_spans: Vec<(usize, usize)>,
    pb: Vec<u8>,
    pb_spans: Vec<(usize, usize)>,
}

fn block(first: u64, n: u64, msg: &mut Vec<u8>) -> Block {
    let mut b = Block {
        json: Vec::with_capacity(n as usize * 240),
        json_spans: Vec::with_capacity(n as usize),
        pb: Vec::with_capacity(n as usize * 150),
        pb_spans: Vec::with_capacity(n as usize),
    };
    for i in first..first + n {
        let e = event(i);
        let start = b.json.len();
        json(&e, &mut b.json);
        b.json_spans.push((start, b.json.len() - 1));
        protobuf(&e, msg);
        write_delimited(&mut b.pb, msg);
        b.pb_spans.push((b.pb.len() - msg.len(), b.pb.len()));
    }
    b
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lungfish-bench-codecs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proto = dir.join("bench.proto");
    std::fs::write(&proto, PROTO).unwrap();
    let fields = FieldNames {
        key: "user".into(),
        time: "ts".into(),
        id: Some("id".into()),
        numbers: vec!["value".into(), "bytes".into(), "latency_ms".into()],
    };
    let fast = JsonExtractor::new(fields.clone());
    let pb = ProtobufExtractor::load(&proto, "bench.Event", fields.clone()).unwrap();
    let pool = lungfish::codec::protobuf::compile(&proto).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut msg = Vec::new();
    // Agreement on every event of the first block, and the hand encoding is proto3's.
    let first = block(0, BLOCK, &mut msg);
    let (mut a, mut b, mut c) = ([0.0; 3], [0.0; 3], [0.0; 3]);
    let mut ints = itoa::Buffer::new();
    for (i, (&(js, je), &(ps, pe))) in first.json_spans.iter().zip(&first.pb_spans).enumerate() {
        if i < 2000 {
            assert_eq!(
                reference_encoding(&pool, &event(i as u64)),
                &first.pb[ps..pe],
                "event {i}"
            );
        }
        let line = &first.json[js..je];
        let x = serde_extract(&fields, line, &mut a).unwrap();
        let y = fast.extract(line, &mut b).unwrap();
        let z = pb.extract(&first.pb[ps..pe], &mut c).unwrap();
        assert_eq!((&x.key, x.ts, &x.id), (&y.key, y.ts, &y.id), "event {i}");
        assert_eq!(z.key.text(&mut ints), x.key, "event {i}");
        assert_eq!(z.ts, x.ts);
        assert_eq!(z.id.map(|s| s.to_cow()), x.id);
        assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits));
        assert_eq!(a.map(f64::to_bits), c.map(f64::to_bits));
    }
    drop(first);

    // [codec][run]: CPU seconds; [codec]: checksum.
    let mut cpu = [[0.0f64; RUNS]; 3];
    let mut sums = [0u64; 3];
    let (mut json_bytes, mut pb_bytes) = (0u64, 0u64);
    let mut numbers = [0.0; 3];
    let mut blocks = 0;
    let mut at = 0;
    while at < EVENTS {
        let b = block(at, BLOCK.min(EVENTS - at), &mut msg);
        at += BLOCK;
        blocks += 1;
        json_bytes += b.json.len() as u64;
        pb_bytes += b.pb.len() as u64;
        #[allow(clippy::needless_range_loop)] // runs interleave: `run` indexes each codec's row
        for run in 0..RUNS {
            // serde_json
            let t = cpu_seconds();
            let mut s = 0u64;
            for &(start, end) in &b.json_spans {
                let x = serde_extract(&fields, black_box(&b.json[start..end]), &mut numbers)
                    .expect("valid");
                s = s.wrapping_add(digest(&x.key, x.ts, x.id.as_deref(), &numbers));
            }
            cpu[0][run] += cpu_seconds() - t;
            // lungfish JSON
            let t = cpu_seconds();
            let mut f = 0u64;
            for &(start, end) in &b.json_spans {
                let x = fast
                    .extract(black_box(&b.json[start..end]), &mut numbers)
                    .expect("valid");
                f = f.wrapping_add(digest(&x.key, x.ts, x.id.as_deref(), &numbers));
            }
            cpu[1][run] += cpu_seconds() - t;
            // lungfish Protobuf, splitting the length-delimited block as ingest does.
            let t = cpu_seconds();
            let mut p = 0u64;
            let (mut key_buf, mut id_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
            for frame in lungfish::codec::protobuf::Delimited::new(black_box(&b.pb), 1 << 20) {
                let lungfish::codec::protobuf::Frame::Message { bytes, .. } = frame else {
                    panic!("valid framing")
                };
                let x = pb.extract(bytes, &mut numbers).expect("valid");
                let id = x.id.as_ref().map(|i| i.text(&mut id_buf));
                p = p.wrapping_add(digest(x.key.text(&mut key_buf), x.ts, id, &numbers));
            }
            cpu[2][run] += cpu_seconds() - t;
            if run == 0 {
                sums[0] = sums[0].wrapping_add(s);
                sums[1] = sums[1].wrapping_add(f);
                sums[2] = sums[2].wrapping_add(p);
            }
            black_box((s, f, p));
        }
    }
    assert_eq!(sums[0], sums[1], "serde_json and the fast path disagree");
    assert_eq!(sums[0], sums[2], "serde_json and Protobuf disagree");

    let median = |runs: [f64; RUNS]| {
        let mut r = runs;
        r.sort_by(f64::total_cmp);
        r[RUNS / 2]
    };
    let millions = EVENTS as f64 / 1e6;
    let per_m: Vec<f64> = cpu.iter().map(|r| median(*r) / millions).collect();
    let wire = [
        json_bytes as f64 / EVENTS as f64,
        json_bytes as f64 / EVENTS as f64,
        pb_bytes as f64 / EVENTS as f64,
    ];
    println!(
        "codecs: {EVENTS} events ({blocks} blocks of {BLOCK}), single thread, thread CPU time, median of {RUNS} interleaved runs; checksums agree ({:#018x})\n",
        sums[0]
    );
    println!(
        "| codec | CPU s / M events | events/s (CPU) | bytes / event on the wire | CPU vs serde_json | bytes vs JSON |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, name) in [
        "JSON, serde_json reference",
        "JSON, lungfish fast path",
        "Protobuf, lungfish scanner",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.3} | {:.0} | {:.1} | {:.2}x | {:.2}x |",
            per_m[i],
            1e6 / per_m[i],
            wire[i],
            per_m[i] / per_m[0],
            wire[i] / wire[0],
        );
    }
}
