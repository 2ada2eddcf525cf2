//! Request bodies: reading them within limits, decoding them, cutting them into events.
//!
//! * [`read`] takes the body's frames until the end, failing as soon as more than the
//!   limit arrived or the deadline passed (a trickling client is cut off).
//! * [`decode`] inflates gzip or zstd *while counting*: it stops at the first byte
//!   over the limit, so a decompression bomb costs at most the limit in memory.
//! * [`split`] turns a JSON object, a JSON array or NDJSON into one event per line, the
//!   shape the ingest step reads ([`crate::ingest`]): line `i` is event `i` of the
//!   request. Array elements that span lines are joined onto one.

use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::{BodyFormat, ContentEncoding};

/// Why a body could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// More than `limit` bytes (sent or decoded): 413.
    TooLarge { limit: u64, decoded: bool },
    /// The body did not arrive before the deadline: 408.
    Timeout,
    /// The connection failed while reading: no answer can be sent.
    Read(String),
    /// The compressed data is corrupt or truncated: 400.
    Corrupt(String),
    /// The body is not a JSON object, array or NDJSON as declared: 400.
    Malformed(String),
}

/// Reads the whole body; at most `limit` bytes, before `deadline`.
pub(crate) async fn read(
    mut body: Incoming,
    limit: u64,
    declared: Option<u64>,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(declared.unwrap_or(64 * 1024).min(limit) as usize);
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(BodyError::TooLarge {
                    limit,
                    decoded: false,
                });
            }
            out.extend_from_slice(&data);
        }
    }
}

/// Inflates `data` under `encoding`, failing at the first byte past `limit`.
pub(crate) fn decode(
    data: Vec<u8>,
    encoding: Option<ContentEncoding>,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    let Some(encoding) = encoding else {
        return Ok(data);
    };
    let reader: Box<dyn Read + '_> = match encoding {
        ContentEncoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&data[..])),
        ContentEncoding::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(&data[..])
                .map_err(|e| BodyError::Corrupt(format!("zstd: {e}")))?,
        ),
    };
    let name = match encoding {
        ContentEncoding::Gzip => "gzip",
        ContentEncoding::Zstd => "zstd",
    };
    let mut out = Vec::with_capacity((data.len() * 4).min(limit as usize));
    // One byte past the limit tells "exactly at the limit" from "over it".
    match reader.take(limit + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > limit => Err(BodyError::TooLarge {
            limit,
            decoded: true,
        }),
        Ok(_) => Ok(out),
        Err(e) => Err(BodyError::Corrupt(format!(
            "the {name} body cannot be decoded: {e}"
        ))),
    }
}

/// The events of a body, one per line; and events already known to be bad (by index).
#[derive(Debug, Default)]
pub(crate) struct Split {
    /// One line per event (a bad one may be an empty line), `\n`-separated.
    pub lines: Vec<u8>,
    /// Events that cannot be read: index, why, and their bytes (cut to
    /// [`MAX_KEPT_PAYLOAD`](crate::ingest::MAX_KEPT_PAYLOAD)).
    pub bad: Vec<(u64, String, Vec<u8>)>,
    /// Number of events (lines, counting the empty ones of bad events).
    pub events: u64,
}

/// Cuts `body` into events under `format`. NDJSON and Protobuf are returned as they are.
///
/// # Errors
/// A JSON body that is neither an object nor a well-formed array of values.
pub(crate) fn split(body: Vec<u8>, format: BodyFormat) -> Result<Split, BodyError> {
    match format {
        BodyFormat::Ndjson => {
            let events = if body.is_empty() {
                0
            } else {
                memchr::memchr_iter(b'\n', &body).count() as u64
                    + u64::from(body.last() != Some(&b'\n'))
            };
            Ok(Split {
                lines: body,
                bad: Vec::new(),
                events,
            })
        }
        BodyFormat::Json => split_json(&body),
        // Length-delimited messages: the ingestor splits them (and counts them).
        BodyFormat::Protobuf => Ok(Split {
            lines: body,
            bad: Vec::new(),
            events: 0,
        }),
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end of the JSON value starting at `i`: the index of the `,` or `]` that follows
/// it at depth 0, or `None` if the body ends first. Also says whether a raw line break
/// sits inside a string (invalid JSON).
fn value_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut raw_break = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                b'\n' | b'\r' => raw_break = true,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => return Some((i, raw_break)),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Copies one value onto one line: line breaks outside strings are whitespace.
fn push_line(out: &mut Vec<u8>, value: &[u8]) {
    let start = out.len();
    out.extend_from_slice(value);
    for b in &mut out[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    out.push(b'\n');
}

fn split_json(body: &[u8]) -> Result<Split, BodyError> {
    let mut split = Split::default();
    let start = skip_ws(body, 0);
    match body.get(start) {
        None => Ok(split),
        Some(b'[') => {
            let mut i = skip_ws(body, start + 1);
            if body.get(i) == Some(&b']') {
                return trailing(body, i + 1, split);
            }
            loop {
                let Some((end, raw_break)) = value_end(body, i) else {
                    return Err(BodyError::Malformed(format!(
                        "the JSON array is not closed: element {} starting at byte {i} runs to the end of the body",
                        split.events
                    )));
                };
                let value = body[i..end].trim_ascii();
                if value.is_empty() {
                    return Err(BodyError::Malformed(format!(
                        "the JSON array has an empty element at byte {i}"
                    )));
                }
                if raw_break {
                    split.bad.push(raw_break_event(split.events, value));
                    split.lines.push(b'\n');
                } else {
                    push_line(&mut split.lines, value);
                }
                split.events += 1;
                if body[end] == b']' {
                    return trailing(body, end + 1, split);
                }
                i = skip_ws(body, end + 1);
            }
        }
        Some(_) => {
            let value = body[start..].trim_ascii();
            if raw_break_in_string(value) {
                split.bad.push(raw_break_event(0, value));
                split.lines.push(b'\n');
            } else {
                push_line(&mut split.lines, value);
            }
            split.events = 1;
            Ok(split)
        }
    }
}

/// Event `index`, `value`, refused for a raw line break inside a string.
fn raw_break_event(index: u64, value: &[u8]) -> (u64, String, Vec<u8>) {
    (
        index,
        "invalid JSON: a raw line break inside a string (write it as \\n)".to_owned(),
        value[..value.len().min(crate::ingest::MAX_KEPT_PAYLOAD)].to_vec(),
    )
}

/// True if a raw line break sits inside a string of `value`.
fn raw_break_in_string(value: &[u8]) -> bool {
    let mut in_string = false;
    let mut i = 0;
    while i < value.len() {
        match (in_string, value[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (true, b'\n' | b'\r') => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn trailing(body: &[u8], after: usize, split: Split) -> Result<Split, BodyError> {
    let rest = skip_ws(body, after);
    if rest < body.len() {
        return Err(BodyError::Malformed(format!(
            "unexpected data after the JSON array at byte {rest}"
        )));
    }
    Ok(split)
}

/// Bytes of a response body, for the handler's convenience.
pub(crate) fn json_body(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(s: &Split) -> Vec<String> {
        String::from_utf8(s.lines.clone())
            .unwrap()
            .split('\n')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn an_array_becomes_one_line_per_element() {
        let body =
            b" [ {\"a\": [1, 2],\n \"s\": \"x,]\\\"\"} ,\n{\"b\":{\"c\":\"}\"}}, 3 ] \n".to_vec();
        let s = split(body, BodyFormat::Json).unwrap();
        assert_eq!(s.events, 3);
        assert!(s.bad.is_empty());
        let l = lines(&s);
        assert_eq!(l[0], "{\"a\": [1, 2],  \"s\": \"x,]\\\"\"}");
        assert_eq!(l[1], "{\"b\":{\"c\":\"}\"}}");
        assert_eq!(l[2], "3");
        for line in &l[..3] {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn an_object_is_one_event_and_ndjson_stays_as_it_is() {
        let s = split(b"{\"a\":\n1}".to_vec(), BodyFormat::Json).unwrap();
        assert_eq!((s.events, lines(&s)[0].as_str()), (1, "{\"a\": 1}"));
        let s = split(b"{\"a\":1}\n\n{\"a\":2}".to_vec(), BodyFormat::Ndjson).unwrap();
        assert_eq!(s.events, 3);
        let s = split(b"{\"a\":1}\n".to_vec(), BodyFormat::Ndjson).unwrap();
        assert_eq!(s.events, 1);
    }

    #[test]
    fn broken_arrays_are_malformed_and_raw_breaks_in_strings_are_bad_events() {
        for body in [
            &b"[{\"a\":1}, {\"a\":2"[..],
            b"[{\"a\":1},,{\"a\":2}]",
            b"[{\"a\":1}] x",
        ] {
            assert!(
                matches!(
                    split(body.to_vec(), BodyFormat::Json),
                    Err(BodyError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let s = split(b"[{\"a\":\"x\ny\"}, {\"a\":2}]".to_vec(), BodyFormat::Json).unwrap();
        assert_eq!(s.events, 2);
        assert_eq!(s.bad.len(), 1);
        assert_eq!(s.bad[0].0, 0);
        assert_eq!(
            s.bad[0].2, b"{\"a\":\"x\ny\"}",
            "the dead letter keeps the event"
        );
        assert_eq!(lines(&s)[1], "{\"a\":2}");
        let s = split(b"[]".to_vec(), BodyFormat::Json).unwrap();
        assert_eq!(s.events, 0);
    }

    #[test]
    fn decoding_stops_at_the_limit() {
        let plain = vec![b'a'; 1 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 10_000);
        assert_eq!(
            decode(gz.clone(), Some(ContentEncoding::Gzip), 1000),
            Err(BodyError::TooLarge {
                limit: 1000,
                decoded: true
            })
        );
        assert_eq!(
            decode(gz.clone(), Some(ContentEncoding::Gzip), 1 << 20).unwrap(),
            plain
        );
        let truncated = gz[..gz.len() / 2].to_vec();
        assert!(matches!(
            decode(truncated, Some(ContentEncoding::Gzip), 1 << 21),
            Err(BodyError::Corrupt(_))
        ));
        let zst = zstd::stream::encode_all(&plain[..], 3).unwrap();
        assert_eq!(
            decode(zst.clone(), Some(ContentEncoding::Zstd), 1 << 20).unwrap(),
            plain
        );
        assert!(matches!(
            decode(zst, Some(ContentEncoding::Zstd), 4096),
            Err(BodyError::TooLarge { .. })
        ));
    }
}
