//! Request bodies and the answers to them: a [`RequestBuilder`] turns a range of event
//! indexes into a body (JSON lines or a JSON array, optionally compressed), and
//! [`Answer::parse`] reads the server's JSON answer and tells which events it
//! acknowledged.

use std::io::Write;
use std::ops::Range;

use bytes::Bytes;
use lungfish::sources::generator::EventWriter;

/// How the events of a request are laid out in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyFormat {
    /// One JSON document a line (`application/x-ndjson`).
    Ndjson,
    /// One JSON array of the events (`application/json`).
    Json,
}

impl BodyFormat {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Ndjson => "application/x-ndjson",
            BodyFormat::Json => "application/json",
        }
    }
}

/// How a request body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// Not compressed (no `Content-Encoding` header).
    Identity,
    /// gzip at its fastest level.
    Gzip,
    /// zstd at level 1.
    Zstd,
}

impl Encoding {
    /// The `Content-Encoding` header value, if any.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
            Encoding::Zstd => Some("zstd"),
        }
    }
}

/// Builds request bodies from ranges of event indexes, reusing its buffers: one
/// allocation per request (the body handed to the client), none per event.
pub struct RequestBuilder {
    writer: EventWriter,
    format: BodyFormat,
    encoding: Encoding,
    /// The uncompressed body, reused when compressing.
    raw: Vec<u8>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for RequestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("format", &self.format)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl RequestBuilder {
    /// A builder writing `writer`'s events in `format`, compressed by `encoding`.
    ///
    /// # Errors
    /// If the zstd compressor cannot be created.
    pub fn new(
        writer: EventWriter,
        format: BodyFormat,
        encoding: Encoding,
    ) -> std::io::Result<Self> {
        let zstd = match encoding {
            Encoding::Zstd => Some(zstd::bulk::Compressor::new(1)?),
            _ => None,
        };
        Ok(RequestBuilder {
            writer,
            format,
            encoding,
            raw: Vec::new(),
            zstd,
        })
    }

    /// The body holding events `events` (indexes of the generator).
    ///
    /// # Errors
    /// If compressing fails (it does not, in memory, short of a library bug).
    pub fn build(&mut self, events: Range<u64>) -> std::io::Result<Bytes> {
        self.raw.clear();
        match self.format {
            BodyFormat::Ndjson => {
                for i in events {
                    self.writer.write(i, &mut self.raw);
                }
            }
            BodyFormat::Json => {
                self.raw.push(b'[');
                for i in events {
                    self.writer.write(i, &mut self.raw);
                    // Every line ends in `\n`: make it the separator.
                    if let Some(last) = self.raw.last_mut() {
                        *last = b',';
                    }
                }
                match self.raw.last_mut() {
                    Some(last) if *last == b',' => *last = b']',
                    _ => self.raw.push(b']'),
                }
            }
        }
        let capacity = self.raw.capacity();
        match self.encoding {
            Encoding::Identity => Ok(Bytes::from(std::mem::replace(
                &mut self.raw,
                Vec::with_capacity(capacity),
            ))),
            Encoding::Gzip => {
                let out = Vec::with_capacity(self.raw.len() / 4 + 64);
                let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                gz.write_all(&self.raw)?;
                Ok(Bytes::from(gz.finish()?))
            }
            Encoding::Zstd => {
                let compressor = self.zstd.as_mut().expect("zstd compressor made in new");
                let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(self.raw.len()));
                compressor.compress_to_buffer(&self.raw[..], &mut out)?;
                Ok(Bytes::from(out))
            }
        }
    }
}

/// Appends to `out` the ids (`NAME-i`, one a line) of the events of a request for
/// `events` that a 200 answer acknowledged: all but those at the `rejected` indexes
/// (0-based within the request, sorted; indexes outside the request are ignored).
pub fn write_acked_ids(name: &str, events: Range<u64>, rejected: &[u64], out: &mut Vec<u8>) {
    let mut skip = rejected.iter().copied().peekable();
    for (index, event) in (0u64..).zip(events) {
        while skip.next_if(|&r| r < index).is_some() {}
        if skip.next_if_eq(&index).is_some() {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'-');
        push_decimal(out, event);
        out.push(b'\n');
    }
}

/// Appends the decimal digits of `n` to `out`, without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// What the server said in the JSON body of its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The `accepted` count, if present.
    pub accepted: Option<u64>,
    /// The indexes in `rejected[].index`, sorted and without duplicates.
    pub rejected: Vec<u64>,
    /// The `error` kind (`all_rejected`, `overloaded`, ...), if present.
    pub error: Option<String>,
    /// Whether the body was a JSON object at all.
    pub readable: bool,
}

impl Answer {
    /// Reads an answer body; an unreadable body gives `readable: false` and nothing else.
    pub fn parse(body: &[u8]) -> Answer {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
            return Answer::default();
        };
        let mut rejected: Vec<u64> = map
            .get("rejected")
            .and_then(|r| r.as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.get("index")?.as_u64())
                    .collect()
            })
            .unwrap_or_default();
        rejected.sort_unstable();
        rejected.dedup();
        let error = map.get("error").and_then(|e| e.as_str()).map(|kind| {
            // Bounded: the kind is a row label in the report.
            kind.chars().take(40).collect()
        });
        Answer {
            accepted: map.get("accepted").and_then(|a| a.as_u64()),
            rejected,
            error,
            readable: true,
        }
    }

    /// How many of a request's `events` events this answer rejected (indexes in range).
    pub fn rejected_of(&self, events: u64) -> u64 {
        self.rejected.iter().filter(|&&i| i < events).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lungfish::codec::json::FieldNames;
    use lungfish::config::GeneratorConfig;
    use std::io::Read;

    fn writer(malformed: f64) -> EventWriter {
        let config = GeneratorConfig {
            keys: 100,
            malformed,
            seed: 7,
            ..GeneratorConfig::default()
        };
        EventWriter::new("load", config, &FieldNames::default())
    }

    fn ids(values: &[serde_json::Value]) -> Vec<String> {
        values
            .iter()
            .map(|v| v["id"].as_str().expect("id").to_owned())
            .collect()
    }

    #[test]
    fn ndjson_body_is_one_event_a_line() {
        let mut b =
            RequestBuilder::new(writer(0.0), BodyFormat::Ndjson, Encoding::Identity).unwrap();
        let body = b.build(10..15).unwrap();
        let events: Vec<serde_json::Value> = body
            .split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a JSON line"))
            .collect();
        assert_eq!(
            ids(&events),
            ["load-10", "load-11", "load-12", "load-13", "load-14"]
        );
        assert!(
            events
                .iter()
                .all(|e| e["user"].is_string() && e["ts"].is_i64())
        );
        // The buffer is reused: the next body holds only the next range.
        let next = b.build(15..16).unwrap();
        assert_eq!(next.iter().filter(|&&c| c == b'\n').count(), 1);
    }

    #[test]
    fn json_body_is_an_array_of_the_events() {
        let mut b = RequestBuilder::new(writer(0.0), BodyFormat::Json, Encoding::Identity).unwrap();
        let body = b.build(0..4).unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("a JSON array");
        assert_eq!(ids(&events), ["load-0", "load-1", "load-2", "load-3"]);
        let empty: Vec<serde_json::Value> =
            serde_json::from_slice(&b.build(0..0).unwrap()).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn compressed_bodies_round_trip() {
        let mut plain =
            RequestBuilder::new(writer(0.1), BodyFormat::Ndjson, Encoding::Identity).unwrap();
        let expected = plain.build(0..500).unwrap();
        let mut gz = RequestBuilder::new(writer(0.1), BodyFormat::Ndjson, Encoding::Gzip).unwrap();
        let gz_body = gz.build(0..500).unwrap();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gz_body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, expected);
        assert!(gz_body.len() < expected.len());

        let mut zs = RequestBuilder::new(writer(0.1), BodyFormat::Ndjson, Encoding::Zstd).unwrap();
        for _ in 0..2 {
            let zs_body = zs.build(0..500).unwrap();
            assert_eq!(zstd::decode_all(&zs_body[..]).unwrap(), expected);
            assert!(zs_body.len() < expected.len());
        }
    }

    #[test]
    fn acked_ids_leave_out_the_rejected_indexes() {
        let answer = Answer::parse(
            br#"{"accepted": 3, "rejected": [{"index": 3, "reason": "bad"}, {"index": 1, "reason": "x"}, {"index": 99, "reason": "out of range"}]}"#,
        );
        assert!(answer.readable);
        assert_eq!(answer.accepted, Some(3));
        assert_eq!(answer.rejected, [1, 3, 99]);
        assert_eq!(answer.rejected_of(6), 2);
        let mut out = Vec::new();
        write_acked_ids("load", 100..106, &answer.rejected, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "load-100\nload-102\nload-104\nload-105\n"
        );
    }

    #[test]
    fn acked_ids_of_a_clean_answer_are_the_whole_range() {
        let answer = Answer::parse(br#"{"accepted": 3, "rejected": []}"#);
        let mut out = Vec::new();
        write_acked_ids("x", 0..3, &answer.rejected, &mut out);
        assert_eq!(out, b"x-0\nx-1\nx-2\n");
    }

    #[test]
    fn error_answers_carry_their_kind() {
        let a = Answer::parse(
            br#"{"error":"all_rejected","message":"m","accepted":0,"rejected":[{"index":0,"reason":"r"}]}"#,
        );
        assert_eq!(a.error.as_deref(), Some("all_rejected"));
        assert_eq!(a.accepted, Some(0));
        assert_eq!(a.rejected, [0]);
        let b = Answer::parse(br#"{"error":"overloaded","message":"busy"}"#);
        assert_eq!(b.error.as_deref(), Some("overloaded"));
        assert!(b.rejected.is_empty());
        assert!(!Answer::parse(b"<html>").readable);
    }
}
