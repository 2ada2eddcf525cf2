//! The event record: how one validated event is stored in the log, and how a key
//! chooses its partition and shard.
//!
//! An event is parsed once, at ingest. What the rest of the pipeline needs (event time,
//! key, id, the numbers it aggregates) is stored in a small binary header in front of
//! the original JSON, so consumers never parse JSON again:
//!
//! ```text
//! u8   format        1: the payload is JSON; 2: the payload is a Protobuf message
//! u32  fields id     fingerprint of the field names the header was extracted with
//! i64  event time    epoch milliseconds
//! u16  key length,  key bytes (UTF-8)
//! u16  id length,   id bytes (UTF-8, may be empty)
//! u8   n,           n x f64   the aggregated numbers, in the pipeline's field order
//! ...  the original payload (JSON document or Protobuf message), to the end of the record
//! ```
//! All integers little-endian. If a pipeline's field names change, the fields id no
//! longer matches and the consumer extracts the header again from the stored payload,
//! with the extractor the format byte names. Format 1 is what every earlier version
//! wrote, and JSON records are still written as format 1.

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::InputFormat;

/// The format byte of records whose payload is JSON.
pub const EVENT_FORMAT: u8 = 1;
/// The format byte of records whose payload is a Protobuf message.
pub const EVENT_FORMAT_PROTOBUF: u8 = 2;
const FIXED_LEN: usize = 1 + 4 + 8;

/// Why a record could not be decoded as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is shorter than its header says.
    #[error("event record truncated")]
    Truncated,
    /// The format byte is not one this version reads.
    #[error("unknown event record format {0}")]
    UnknownFormat(u8),
}

/// Why an event cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The key is longer than 65,535 bytes.
    #[error("key is {0} bytes long; the limit is 65535")]
    KeyTooLong(usize),
    /// The id is longer than 65,535 bytes.
    #[error("id is {0} bytes long; the limit is 65535")]
    IdTooLong(usize),
    /// More than 255 aggregated numbers.
    #[error("{0} aggregated fields; the limit is 255")]
    TooManyNumbers(usize),
}

/// Appends the record of one event whose payload is JSON to `out`.
///
/// # Errors
/// A key or id longer than 65,535 bytes, or more than 255 numbers; `out` is unchanged.
pub fn encode(
    out: &mut Vec<u8>,
    fields_id: u32,
    ts: i64,
    key: &[u8],
    id: &[u8],
    numbers: &[f64],
    raw: &[u8],
) -> Result<(), EncodeError> {
    encode_as(out, InputFormat::Json, fields_id, ts, key, id, numbers, raw)
}

/// Appends the record of one event whose payload `raw` is in `format` to `out`.
///
/// # Errors
/// As [`encode`].
#[allow(clippy::too_many_arguments)]
pub fn encode_as(
    out: &mut Vec<u8>,
    format: InputFormat,
    fields_id: u32,
    ts: i64,
    key: &[u8],
    id: &[u8],
    numbers: &[f64],
    raw: &[u8],
) -> Result<(), EncodeError> {
    if key.len() > u16::MAX as usize {
        return Err(EncodeError::KeyTooLong(key.len()));
    }
    if id.len() > u16::MAX as usize {
        return Err(EncodeError::IdTooLong(id.len()));
    }
    if numbers.len() > u8::MAX as usize {
        return Err(EncodeError::TooManyNumbers(numbers.len()));
    }
    out.reserve(FIXED_LEN + 5 + key.len() + id.len() + numbers.len() * 8 + raw.len());
    out.push(match format {
        InputFormat::Json => EVENT_FORMAT,
        InputFormat::Protobuf => EVENT_FORMAT_PROTOBUF,
    });
    out.extend_from_slice(&fields_id.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.push(numbers.len() as u8);
    for n in numbers {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(raw);
    Ok(())
}

/// A decoded event, borrowing the record's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    /// Fingerprint of the field names the header was extracted with.
    pub fields_id: u32,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    /// The key (UTF-8).
    pub key: &'a [u8],
    /// The id (UTF-8, empty if the event had none).
    pub id: &'a [u8],
    numbers: &'a [u8],
    /// The original payload: a JSON document or a Protobuf message, as `format` says.
    pub raw: &'a [u8],
    /// What `raw` is (from the record's format byte).
    pub format: InputFormat,
}

impl<'a> EventRef<'a> {
    /// Decodes a record written by [`encode`].
    ///
    /// # Errors
    /// The record is truncated or of an unknown format.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < FIXED_LEN + 2 {
            return Err(DecodeError::Truncated);
        }
        let format = match bytes[0] {
            EVENT_FORMAT => InputFormat::Json,
            EVENT_FORMAT_PROTOBUF => InputFormat::Protobuf,
            other => return Err(DecodeError::UnknownFormat(other)),
        };
        let fields_id = u32::from_le_bytes(bytes[1..5].try_into().unwrap());
        let ts = i64::from_le_bytes(bytes[5..13].try_into().unwrap());
        let mut at = FIXED_LEN;
        let take_u16 = |at: &mut usize| -> Result<&'a [u8], DecodeError> {
            let len_bytes = bytes.get(*at..*at + 2).ok_or(DecodeError::Truncated)?;
            let len = u16::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let s = bytes
                .get(*at + 2..*at + 2 + len)
                .ok_or(DecodeError::Truncated)?;
            *at += 2 + len;
            Ok(s)
        };
        let key = take_u16(&mut at)?;
        let id = take_u16(&mut at)?;
        let n = *bytes.get(at).ok_or(DecodeError::Truncated)? as usize;
        at += 1;
        let numbers = bytes.get(at..at + n * 8).ok_or(DecodeError::Truncated)?;
        at += n * 8;
        Ok(EventRef {
            fields_id,
            ts,
            key,
            id,
            numbers,
            raw: &bytes[at..],
            format,
        })
    }

    /// How many numbers the record carries.
    pub fn number_count(&self) -> usize {
        self.numbers.len() / 8
    }

    /// The `i`-th aggregated number. Panics if `i >= number_count()`.
    pub fn number(&self, i: usize) -> f64 {
        f64::from_le_bytes(self.numbers[i * 8..i * 8 + 8].try_into().unwrap())
    }
}

/// The hash of a key that routes it: stable across runs, versions and machines
/// (XXH3-64 of the key bytes), because the log's partitions are chosen by it.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The log partition of a key hash: the high 32 bits, mapped onto `0..partitions`.
#[inline]
pub fn partition_for(hash: u64, partitions: u32) -> u32 {
    (((hash >> 32) * partitions as u64) >> 32) as u32
}

/// The worker shard of a key hash: the low 32 bits, mapped onto `0..shards`. Independent
/// of the partition, so every partition spreads over every shard.
#[inline]
pub fn shard_for(hash: u64, shards: usize) -> usize {
    (((hash & 0xffff_ffff) * shards as u64) >> 32) as usize
}

/// The fingerprint of a set of field names, stored in every record so a consumer can
/// tell whether the header was extracted with the names it expects.
pub fn fields_id(key: &str, time: &str, id: &str, numbers: &[String]) -> u32 {
    let mut text = String::new();
    for part in [key, time, id]
        .into_iter()
        .chain(numbers.iter().map(String::as_str))
    {
        text.push_str(part);
        text.push('\u{0}');
    }
    (xxh3_64(text.as_bytes()) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let raw = br#"{"id":"e1","user":"u","ts":5,"value":1.5}"#;
        encode(&mut buf, 77, 5, b"u", b"e1", &[1.5, -2.0], raw).unwrap();
        let e = EventRef::decode(&buf).unwrap();
        assert_eq!(
            (e.fields_id, e.ts, e.key, e.id, e.raw),
            (77, 5, &b"u"[..], &b"e1"[..], &raw[..])
        );
        assert_eq!(e.number_count(), 2);
        assert_eq!((e.number(0), e.number(1)), (1.5, -2.0));
        assert_eq!((buf[0], e.format), (1, InputFormat::Json));
    }

    #[test]
    fn protobuf_payloads_are_marked_and_format_one_records_still_read() {
        let mut buf = Vec::new();
        let msg = [0x0a, 1, b'u', 0x10, 5];
        encode_as(
            &mut buf,
            InputFormat::Protobuf,
            3,
            5,
            b"u",
            b"",
            &[2.0],
            &msg,
        )
        .unwrap();
        assert_eq!(buf[0], EVENT_FORMAT_PROTOBUF);
        let e = EventRef::decode(&buf).unwrap();
        assert_eq!(
            (e.format, e.raw, e.ts),
            (InputFormat::Protobuf, &msg[..], 5)
        );
        // A record as every earlier version wrote it (format 1, pinned bytes).
        let old: Vec<u8> = [1u8]
            .into_iter()
            .chain(7u32.to_le_bytes())
            .chain(9i64.to_le_bytes())
            .chain([1, 0, b'k', 0, 0, 0])
            .chain(*b"{}")
            .collect();
        let e = EventRef::decode(&old).unwrap();
        assert_eq!(
            (e.format, e.fields_id, e.ts, e.key, e.raw),
            (InputFormat::Json, 7, 9, &b"k"[..], &b"{}"[..])
        );
        buf[0] = 3;
        assert_eq!(EventRef::decode(&buf), Err(DecodeError::UnknownFormat(3)));
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 2, b"key", b"id", &[3.0], b"").unwrap();
        for cut in 0..buf.len() {
            assert!(EventRef::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn long_keys_are_refused() {
        let mut buf = Vec::new();
        let key = vec![b'k'; 70_000];
        assert_eq!(
            encode(&mut buf, 1, 2, &key, b"", &[], b""),
            Err(EncodeError::KeyTooLong(70_000))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn routing_is_stable_and_spread() {
        // Pinned values: changing the hash would move keys between partitions of
        // existing logs.
        assert_eq!(key_hash(b"u-42"), xxh3_64(b"u-42"));
        let mut per_partition = [0u32; 4];
        let mut per_shard = [[0u32; 2]; 4];
        for i in 0..40_000 {
            let h = key_hash(format!("u-{i}").as_bytes());
            let p = partition_for(h, 4) as usize;
            per_partition[p] += 1;
            per_shard[p][shard_for(h, 2)] += 1;
        }
        for (p, n) in per_partition.iter().enumerate() {
            assert!((9_000..11_000).contains(n), "partition {p}: {n}");
            // Every partition feeds every shard.
            assert!(
                per_shard[p].iter().all(|&s| s > 4_000),
                "{:?}",
                per_shard[p]
            );
        }
    }
}
