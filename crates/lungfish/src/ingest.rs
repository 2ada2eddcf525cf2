//! Ingest: the one place raw input becomes events.
//!
//! A source cuts its input into [`RawChunk`]s of whole lines (JSON) or whole
//! length-delimited messages (Protobuf). An [`Ingestor`] parses each event once
//! ([`crate::codec::json`], or `crate::codec::protobuf` for Protobuf chunks), checks it, encodes it as an event record
//! ([`crate::event`]) into the batch of the key's partition, and keeps every line it
//! rejects with its position and reason. [`IngestPool`] runs ingestors on worker
//! threads (one per core), so parsing, the heaviest step of the pipeline, uses every
//! core; results come back in the order chunks went in.
//!
//! Every line has a *position* that grows through the input. A source restarting after
//! a crash passes, per partition, the position up to which that partition already holds
//! the source's events; lines before it are not sent there again (see
//! [`crate::sources`]).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use lungfish_log::{BATCH_HEADER_LEN, BatchBuilder};

use crate::codec::InputFormat;
use crate::codec::json::{FieldNames, JsonExtractor};
#[cfg(feature = "protobuf")]
use crate::codec::protobuf::{Delimited, Frame, ProtobufExtractor};
use crate::consumer::MAX_EVENT_TIME;
use crate::event::{self, key_hash, partition_for};

/// How the lines of a chunk are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Position = `start` + byte offset of the line in the chunk (files).
    Bytes {
        /// Position of the chunk's first byte.
        start: u64,
    },
    /// Position = `first` + index of the line in the chunk (the generator: sequence
    /// numbers).
    Lines {
        /// Position of the chunk's first line.
        first: u64,
    },
}

/// A piece of input: whole lines separated by `\n` (JSON), or whole length-delimited
/// messages (Protobuf).
#[derive(Debug, Clone)]
pub struct RawChunk {
    /// The bytes. Always ends at a line end (a final line may lack its `\n`), or at a
    /// message's end.
    pub data: Vec<u8>,
    /// How the bytes are cut into events and read.
    pub format: InputFormat,
    /// How lines are numbered.
    pub positions: Positions,
    /// Position just after the chunk; where the next chunk starts.
    pub end: u64,
    /// Where the chunk came from, for error reports (a file path, a generator name).
    pub origin: Arc<str>,
    /// Line number (1-based) of the chunk's first line in its origin. For Protobuf
    /// with [`Positions::Lines`], the number of the first message (locations are
    /// `ORIGIN:N`); with [`Positions::Bytes`] locations are `ORIGIN@BYTE`, the offset of
    /// the message's length prefix.
    pub first_line: u64,
}

/// A line that was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The line's position.
    pub position: u64,
    /// Where it came from: origin and line number, e.g. `events.jsonl:17` (a Protobuf
    /// file: origin and byte offset, `events.pb@4096`).
    pub location: String,
    /// A short, stable label of the kind of problem (for metrics), e.g. `wrong_type`.
    pub kind: &'static str,
    /// What is wrong, for people.
    pub reason: String,
    /// The line itself (cut to [`MAX_KEPT_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
}

/// At most this much of a rejected line is kept.
pub const MAX_KEPT_PAYLOAD: usize = 64 * 1024;

/// The events of one chunk bound for one partition, cut into batches no larger than
/// the log's maximum batch size.
#[derive(Debug, Default)]
pub struct PartitionBatches {
    /// Full batches, in order, each with the position just after its last event: the
    /// producer position to append it with.
    pub sealed: Vec<(BatchBuilder, u64)>,
    /// The last batch, appended with the chunk's end position (maybe empty).
    pub open: BatchBuilder,
}

impl PartitionBatches {
    /// Number of events in all batches.
    pub fn len(&self) -> u64 {
        self.sealed.iter().map(|(b, _)| b.len() as u64).sum::<u64>() + self.open.len() as u64
    }

    /// True if there is no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of ingesting one chunk.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Per log partition, its batches.
    pub batches: Vec<PartitionBatches>,
    /// Lines that were rejected, in input order.
    pub rejects: Vec<Rejected>,
    /// Events accepted into `batches`.
    pub accepted: u64,
    /// The chunk's end position.
    pub end: u64,
    /// Bytes of input in the chunk.
    pub input_bytes: u64,
    /// Events in the chunk (non-blank lines, or messages and unsplittable rests),
    /// accepted or not.
    pub events: u64,
}

/// Validates lines and encodes them as event records routed to partitions.
#[derive(Debug, Clone)]
pub struct Ingestor {
    extractor: JsonExtractor,
    #[cfg(feature = "protobuf")]
    protobuf: Option<ProtobufExtractor>,
    fields_id: u32,
    partitions: u32,
    max_event_size: usize,
    max_batch_bytes: usize,
}

/// Framing and header bytes an event record adds to its JSON, at most.
const RECORD_OVERHEAD: usize = 4 + 1 + 4 + 8 + 2 + 2 + 1;

impl Ingestor {
    /// An ingestor extracting `fields`, for a log of `partitions` partitions whose
    /// batches may hold `max_batch_bytes`, refusing events over `max_event_size` bytes.
    pub fn new(
        fields: FieldNames,
        partitions: u32,
        max_event_size: usize,
        max_batch_bytes: usize,
    ) -> Self {
        let fields_id = event::fields_id(
            &fields.key,
            &fields.time,
            fields.id.as_deref().unwrap_or(""),
            &fields.numbers,
        );
        Ingestor {
            extractor: JsonExtractor::new(fields),
            #[cfg(feature = "protobuf")]
            protobuf: None,
            fields_id,
            partitions,
            max_event_size,
            max_batch_bytes,
        }
    }

    /// The ingestor of a pipeline: its field names, log batch size and `[protobuf]`
    /// schema (compiled now), for a log of `partitions` partitions, refusing events over
    /// `max_event_size` bytes.
    ///
    /// # Errors
    /// The schema cannot be read, compiled or fitted to the field names.
    pub fn for_pipeline(
        cfg: &crate::config::PipelineConfig,
        partitions: u32,
        max_event_size: u64,
    ) -> Result<Self, crate::Error> {
        let ingestor = Ingestor::new(
            cfg.field_names(),
            partitions,
            max_event_size as usize,
            cfg.log.max_batch_size as usize,
        );
        #[cfg(feature = "protobuf")]
        match cfg.protobuf_extractor() {
            Ok(Some(pb)) => return Ok(ingestor.with_protobuf(pb)),
            Ok(None) => {}
            Err(e) => {
                return Err(crate::Error::Config(crate::config::ConfigErrors(vec![
                    crate::config::ConfigError {
                        file: cfg
                            .protobuf
                            .as_ref()
                            .map(|p| p.file.clone())
                            .unwrap_or_default(),
                        line: 0,
                        column: 0,
                        field: "protobuf".to_owned(),
                        message: e.to_string(),
                    },
                ])));
            }
        }
        Ok(ingestor)
    }

    /// The number of log partitions events are routed to.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The fingerprint of the field names, stored in every record.
    pub fn fields_id(&self) -> u32 {
        self.fields_id
    }

    /// The extractor (consumers use it to re-extract records written with other
    /// field names).
    pub fn extractor(&self) -> &JsonExtractor {
        &self.extractor
    }

    /// This ingestor, reading Protobuf chunks with `extractor` (built for the same field
    /// names). Without one, every message of a Protobuf chunk is rejected.
    #[cfg(feature = "protobuf")]
    pub fn with_protobuf(mut self, extractor: ProtobufExtractor) -> Self {
        self.protobuf = Some(extractor);
        self
    }

    /// The Protobuf extractor, if the pipeline has a schema.
    #[cfg(feature = "protobuf")]
    pub fn protobuf(&self) -> Option<&ProtobufExtractor> {
        self.protobuf.as_ref()
    }

    /// Checks an extracted event and adds its record to its partition's batch: `Ok(true)`
    /// if added, `Ok(false)` if its partition already has it (`skip`), or the kind and
    /// reason it is refused for.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn accept(
        &self,
        out: &mut Ingested,
        capacity: usize,
        skip: &[u64],
        position: u64,
        event: (&[u8], &[u8], i64, &[f64]),
        payload: &[u8],
        format: InputFormat,
    ) -> Result<bool, (&'static str, String)> {
        let (key, id, ts, numbers) = event;
        if key.len() > u16::MAX as usize || id.len() > u16::MAX as usize {
            return Err(("too_large", "key or id longer than 65535 bytes".to_owned()));
        }
        if !(-MAX_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts) {
            return Err((
                "out_of_range",
                format!(
                    "field `{}` is {ts}, outside the supported range of event times (±{MAX_EVENT_TIME} ms, about ±31,700 years around 1970)",
                    self.extractor.fields().time,
                ),
            ));
        }
        let record = RECORD_OVERHEAD + key.len() + id.len() + numbers.len() * 8 + payload.len();
        if record + BATCH_HEADER_LEN > self.max_batch_bytes {
            return Err((
                "too_large",
                format!(
                    "the event's record ({record} bytes with its key and id) does not fit in a log batch ({} bytes)",
                    self.max_batch_bytes
                ),
            ));
        }
        let p = partition_for(key_hash(key), self.partitions) as usize;
        if position < skip[p] {
            return Ok(false);
        }
        let fields_id = self.fields_id;
        let target = &mut out.batches[p];
        if !target.open.is_empty() && target.open.encoded_len() + record > self.max_batch_bytes {
            // Full: seal it; it covers the partition up to this event.
            let full = std::mem::replace(&mut target.open, BatchBuilder::with_capacity(capacity));
            target.sealed.push((full, position));
        }
        target.open.push_with(|buf| {
            event::encode_as(buf, format, fields_id, ts, key, id, numbers, payload)
                .expect("lengths checked above");
        });
        out.accepted += 1;
        Ok(true)
    }

    /// Ingests `chunk`. A line at position `x` goes to partition `p` only if
    /// `x >= skip[p]`, and is reported as rejected only if `x >= skip_rejects`.
    pub fn ingest(&self, chunk: &RawChunk, skip: &[u64], skip_rejects: u64, out: &mut Ingested) {
        let parts = self.partitions as usize;
        let capacity = (chunk.data.len() * 3 / 2 / parts + 1024).min(self.max_batch_bytes);
        if out.batches.len() != parts {
            out.batches = (0..parts)
                .map(|_| PartitionBatches {
                    sealed: Vec::new(),
                    open: BatchBuilder::with_capacity(capacity),
                })
                .collect();
        } else {
            for b in &mut out.batches {
                b.sealed.clear();
                b.open.clear();
            }
        }
        out.rejects.clear();
        out.accepted = 0;
        out.events = 0;
        out.end = chunk.end;
        out.input_bytes = chunk.data.len() as u64;
        let mut numbers = vec![0.0; self.extractor.fields().numbers.len()];
        if chunk.format == InputFormat::Protobuf {
            self.ingest_protobuf(chunk, skip, skip_rejects, out, capacity, &mut numbers);
            return;
        }
        let data = &chunk.data[..];
        let mut line_start = 0usize;
        let mut index = 0u64;
        while line_start < data.len() {
            let line_end =
                memchr::memchr(b'\n', &data[line_start..]).map_or(data.len(), |i| line_start + i);
            let line = &data[line_start..line_end];
            let position = match chunk.positions {
                Positions::Bytes { start } => start + line_start as u64,
                Positions::Lines { first } => first + index,
            };
            let line_no = chunk.first_line + index;
            line_start = line_end + 1;
            index += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.events += 1;
            let reject = |kind: &'static str, reason: String| Rejected {
                position,
                location: format!("{}:{line_no}", chunk.origin),
                kind,
                reason,
                payload: line[..line.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
            };
            if line.len() > self.max_event_size {
                if position >= skip_rejects {
                    out.rejects.push(reject(
                        "too_large",
                        format!(
                            "event of {} bytes exceeds max_event_size ({} bytes)",
                            line.len(),
                            self.max_event_size
                        ),
                    ));
                }
                continue;
            }
            let result = match self.extractor.extract(line, &mut numbers) {
                Ok(ev) => {
                    let key = ev.key.as_bytes();
                    let id = ev.id.as_deref().unwrap_or("").as_bytes();
                    let event = (key, id, ev.ts, &numbers[..]);
                    self.accept(
                        out,
                        capacity,
                        skip,
                        position,
                        event,
                        line,
                        InputFormat::Json,
                    )
                }
                Err(e) => Err((e.kind(), e.to_string())),
            };
            if let Err((kind, reason)) = result
                && position >= skip_rejects
            {
                out.rejects.push(reject(kind, reason));
            }
        }
    }

    /// [`ingest`](Self::ingest) for a chunk of length-delimited Protobuf messages.
    #[allow(clippy::too_many_arguments)]
    fn ingest_protobuf(
        &self,
        chunk: &RawChunk,
        skip: &[u64],
        skip_rejects: u64,
        out: &mut Ingested,
        capacity: usize,
        numbers: &mut [f64],
    ) {
        let data = &chunk.data[..];
        let location = |offset: usize, index: u64| match chunk.positions {
            Positions::Bytes { start } => {
                let byte = (start + offset as u64) & ((1 << crate::sources::file::OFFSET_BITS) - 1);
                format!("{}@{byte}", chunk.origin)
            }
            Positions::Lines { .. } => format!("{}:{}", chunk.origin, chunk.first_line + index),
        };
        let position = |offset: usize, index: u64| match chunk.positions {
            Positions::Bytes { start } => start + offset as u64,
            Positions::Lines { first } => first + index,
        };
        #[cfg(feature = "protobuf")]
        if let Some(pb) = &self.protobuf {
            let mut ints = itoa::Buffer::new();
            let mut id_ints = itoa::Buffer::new();
            for (index, frame) in Delimited::new(data, self.max_event_size).enumerate() {
                let index = index as u64;
                out.events += 1;
                let (offset, payload, result) = match frame {
                    Frame::Message { offset, bytes } => {
                        let pos = position(offset, index);
                        let result = match pb.extract(bytes, numbers) {
                            Ok(ev) => {
                                let key = ev.key.text(&mut ints).as_bytes();
                                let id = match &ev.id {
                                    Some(id) => id.text(&mut id_ints).as_bytes(),
                                    None => b"",
                                };
                                let event = (key, id, ev.ts, &numbers[..]);
                                self.accept(
                                    out,
                                    capacity,
                                    skip,
                                    pos,
                                    event,
                                    bytes,
                                    InputFormat::Protobuf,
                                )
                            }
                            Err(e) => Err((e.kind(), e.to_string())),
                        };
                        (offset, bytes, result)
                    }
                    Frame::TooLarge { offset, len, head } => (
                        offset,
                        head,
                        Err((
                            "too_large",
                            format!(
                                "message of {len} bytes exceeds max_event_size ({} bytes)",
                                self.max_event_size
                            ),
                        )),
                    ),
                    Frame::Broken {
                        offset,
                        reason,
                        rest,
                    } => (
                        offset,
                        rest,
                        Err((
                            "invalid_framing",
                            format!(
                                "{reason}: the remaining {} bytes cannot be split into messages",
                                rest.len()
                            ),
                        )),
                    ),
                };
                let pos = position(offset, index);
                if let Err((kind, reason)) = result
                    && pos >= skip_rejects
                {
                    out.rejects.push(Rejected {
                        position: pos,
                        location: location(offset, index),
                        kind,
                        reason,
                        payload: payload[..payload.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
                    });
                }
            }
            return;
        }
        // No schema (or no Protobuf support in this build): the chunk cannot be read.
        let _ = (capacity, &numbers, skip);
        if !data.is_empty() && position(0, 0) >= skip_rejects {
            out.events += 1;
            out.rejects.push(Rejected {
                position: position(0, 0),
                location: location(0, 0),
                kind: "unsupported_format",
                reason: "Protobuf input needs a [protobuf] schema in the pipeline file (and a build with the cargo feature `protobuf`)".to_owned(),
                payload: data[..data.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
            });
        }
    }
}

/// A chunk to ingest, with where to send the result.
struct Job {
    seq: u64,
    chunk: RawChunk,
    skip: Arc<[u64]>,
    skip_rejects: u64,
    out: Ingested,
    reply: Sender<Done>,
}

/// A finished job: the chunk (to reuse its buffer) and the result.
pub struct Done {
    /// The sequence number given to `IngestPool::submit`.
    pub seq: u64,
    /// The chunk, returned for buffer reuse.
    pub chunk: RawChunk,
    /// The result.
    pub out: Ingested,
}

/// Worker threads running an [`Ingestor`]. Bounded: at most `2 x workers` jobs wait.
pub struct IngestPool {
    jobs: Sender<Job>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for IngestPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestPool")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl IngestPool {
    /// Starts `workers` threads (at least one).
    pub fn new(ingestor: Arc<Ingestor>, workers: usize) -> Self {
        let workers = workers.max(1);
        let (jobs, rx): (Sender<Job>, Receiver<Job>) = bounded(workers * 2);
        let handles = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                let ingestor = ingestor.clone();
                std::thread::Builder::new()
                    .name(format!("lungfish-ingest-{i}"))
                    .spawn(move || {
                        while let Ok(mut job) = rx.recv() {
                            ingestor.ingest(&job.chunk, &job.skip, job.skip_rejects, &mut job.out);
                            // The submitter may have gone (shutdown); nothing to do then.
                            let _ = job.reply.send(Done {
                                seq: job.seq,
                                chunk: job.chunk,
                                out: job.out,
                            });
                        }
                    })
                    .expect("spawn ingest worker")
            })
            .collect();
        IngestPool {
            jobs,
            workers: handles,
        }
    }

    /// Queues a chunk; the result goes to `reply`. Blocks while the queue is full, up to
    /// `timeout`; gives the job back if it timed out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        seq: u64,
        chunk: RawChunk,
        skip: Arc<[u64]>,
        skip_rejects: u64,
        out: Ingested,
        reply: Sender<Done>,
        timeout: Duration,
    ) -> Result<(), Box<(RawChunk, Ingested)>> {
        let job = Job {
            seq,
            chunk,
            skip,
            skip_rejects,
            out,
            reply,
        };
        self.jobs.send_timeout(job, timeout).map_err(|e| {
            let job = e.into_inner();
            Box::new((job.chunk, job.out))
        })
    }

    /// Stops the workers after the queued jobs.
    pub fn shutdown(self) {
        drop(self.jobs);
        for w in self.workers {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventRef;

    fn ingestor(partitions: u32) -> Ingestor {
        Ingestor::new(FieldNames::default(), partitions, 200, 64 * 1024)
    }

    fn chunk(text: &str) -> RawChunk {
        RawChunk {
            data: text.as_bytes().to_vec(),
            format: InputFormat::Json,
            positions: Positions::Bytes { start: 1000 },
            end: 1000 + text.len() as u64,
            origin: "events.jsonl".into(),
            first_line: 10,
        }
    }

    #[test]
    fn good_lines_are_encoded_and_bad_lines_kept_with_reasons() {
        let text = concat!(
            r#"{"id":"a","user":"u1","ts":1,"value":1.5}"#,
            "\n",
            "not json\n",
            "\n",
            r#"{"id":"b","user":"u2","ts":"late","value":2}"#,
            "\n",
            r#"{"id":"c","ts":3,"value":2}"#,
            "\n",
            r#"{"id":"d","user":"u1","ts":4,"value":-1}"#,
        );
        let ing = ingestor(1);
        let mut out = Ingested::default();
        ing.ingest(&chunk(text), &[0], 0, &mut out);
        assert_eq!(out.accepted, 2);
        assert_eq!(out.end, 1000 + text.len() as u64);
        let events: Vec<EventRef<'_>> = out.batches[0]
            .open
            .records()
            .map(|(_, r)| EventRef::decode(r).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].key, events[0].id, events[0].ts),
            (&b"u1"[..], &b"a"[..], 1)
        );
        assert_eq!(events[0].number(0), 1.5);
        assert_eq!(events[0].fields_id, ing.fields_id());
        assert_eq!(
            events[1].raw,
            br#"{"id":"d","user":"u1","ts":4,"value":-1}"#
        );
        let locations: Vec<_> = out
            .rejects
            .iter()
            .map(|r| (r.location.as_str(), r.kind))
            .collect();
        assert_eq!(
            locations,
            vec![
                ("events.jsonl:11", "invalid_json"),
                ("events.jsonl:13", "wrong_type"),
                ("events.jsonl:14", "missing_field"),
            ]
        );
        assert_eq!(out.rejects[0].payload, b"not json");
        assert!(
            out.rejects[2].reason.contains("user"),
            "{}",
            out.rejects[2].reason
        );
    }

    #[test]
    fn oversized_lines_are_rejected() {
        let big = format!(
            r#"{{"user":"u","ts":1,"value":1,"pad":"{}"}}"#,
            "x".repeat(300)
        );
        let mut out = Ingested::default();
        ingestor(1).ingest(&chunk(&big), &[0], 0, &mut out);
        assert_eq!(out.accepted, 0);
        assert_eq!(out.rejects[0].kind, "too_large");
    }

    #[test]
    fn extreme_times_and_records_too_large_for_a_batch_are_rejected() {
        let ing = Ingestor::new(FieldNames::default(), 1, 60_000, 8 * 1024);
        let long_key = "k".repeat(7_000);
        let text = format!(
            "{{\"user\":\"u\",\"ts\":{},\"value\":1}}\n{{\"user\":\"{long_key}\",\"ts\":1,\"value\":1,\"pad\":\"{}\"}}\n{{\"user\":\"u\",\"ts\":5,\"value\":1}}\n",
            i64::MAX,
            "p".repeat(1_500),
        );
        let mut out = Ingested::default();
        ing.ingest(&chunk(&text), &[0], 0, &mut out);
        let kinds: Vec<_> = out.rejects.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, vec!["out_of_range", "too_large"]);
        assert!(
            out.rejects[0].reason.contains("ts"),
            "{}",
            out.rejects[0].reason
        );
        assert_eq!(out.accepted, 1);
    }

    #[test]
    fn skip_positions_filter_per_partition() {
        let lines: String = (0..200)
            .map(|i| format!("{{\"user\":\"u{i}\",\"ts\":{i},\"value\":1}}\n"))
            .collect();
        let ing = ingestor(2);
        let mut all = Ingested::default();
        ing.ingest(&chunk(&lines), &[0, 0], 0, &mut all);
        assert_eq!(all.accepted, 200);
        // Partition 0 already has everything; partition 1 nothing.
        let mut half = Ingested::default();
        ing.ingest(&chunk(&lines), &[u64::MAX, 0], 0, &mut half);
        assert_eq!(half.batches[0].len(), 0);
        assert_eq!(half.batches[1].len(), all.batches[1].len());
    }

    #[test]
    fn a_partition_gets_several_batches_when_one_would_be_too_large() {
        let lines: String = (0..2000)
            .map(|i| {
                format!(
                    "{{\"user\":\"u{i}\",\"ts\":{i},\"value\":1,\"pad\":\"{}\"}}\n",
                    "p".repeat(100)
                )
            })
            .collect();
        let fields = ingestor(1).extractor().fields().clone();
        let ing = Ingestor::new(fields, 1, 200, 8 * 1024);
        let c = chunk(&lines);
        let mut out = Ingested::default();
        ing.ingest(&c, &[0], 0, &mut out);
        let b = &out.batches[0];
        assert_eq!(b.len(), 2000);
        assert!(b.sealed.len() > 10, "{} sealed batches", b.sealed.len());
        let mut previous = 0;
        for (batch, seq) in &b.sealed {
            assert!(batch.encoded_len() <= 8 * 1024);
            assert!(*seq > previous, "positions increase");
            // A sealed batch ends just before the line at its position.
            assert_eq!(lines.as_bytes()[(*seq - 1000 - 1) as usize], b'\n');
            previous = *seq;
        }
        assert!(c.end > previous);
    }
}
