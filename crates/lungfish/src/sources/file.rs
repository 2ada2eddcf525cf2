//! The `file` source: JSON lines, or length-delimited Protobuf messages
//! (`format = "protobuf"`), from one or more files or glob patterns.
//!
//! Files are read in the order their paths/patterns are listed (each pattern's matches
//! sorted), each once, to the end it has when reached. A line's position is
//! `file index << 40 | byte offset`, so a restart resumes at the exact line.
//!
//! The list of files is resolved on the first run and pinned in
//! `DATA_DIR/sources/NAME.files`; later runs of the same pipeline read that list, so
//! positions keep their meaning even if the glob matches new files meanwhile (a warning
//! says so).
//!
//! Memory is bounded: a chunk is at most `chunk_bytes`. A line longer than
//! `max_event_size` is not held in memory: its first bytes are kept for the rejection
//! report and the rest is skipped.
//!
//! Protobuf files are cut at message ends (a message's position is the byte offset of
//! its length prefix). A message over `max_event_size` is skipped the same way (its
//! prefix says where the next one starts); a broken length prefix makes the rest of the
//! file unsplittable: its head is reported once and reading goes on with the next file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::InputFormat;
use crate::ingest::{Positions, RawChunk};

use super::{ChunkSource, SourceError};

/// Bits of a position that hold the byte offset within a file (files up to 1 TiB).
pub const OFFSET_BITS: u32 = 40;

/// The position of byte `offset` of file number `index`.
pub fn file_position(index: usize, offset: u64) -> u64 {
    ((index as u64) << OFFSET_BITS) | offset
}

/// Expands paths and glob patterns into files, in order, without repeats.
///
/// # Errors
/// A pattern is invalid, or a plain path does not exist.
pub fn resolve(paths: &[String]) -> Result<Vec<PathBuf>, SourceError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let is_pattern = p.contains(['*', '?', '[']);
        if is_pattern {
            let mut matched: Vec<PathBuf> = glob::glob(p)
                .map_err(|e| SourceError::Config(format!("invalid glob pattern {p:?}: {e}")))?
                .filter_map(Result::ok)
                .filter(|m| m.is_file())
                .collect();
            matched.sort();
            if matched.is_empty() {
                tracing::warn!(pattern = %p, "no file matches the pattern");
            }
            for m in matched {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        } else {
            let path = PathBuf::from(p);
            if !path.is_file() {
                return Err(SourceError::Config(format!("file not found: {p}")));
            }
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Reads the pinned file list of source `name` in `state_dir`, or resolves `paths` and
/// pins the result.
///
/// # Errors
/// As [`resolve`], or the list cannot be read or written.
pub fn pinned_files(
    state_dir: &Path,
    name: &str,
    paths: &[String],
) -> Result<Vec<PathBuf>, SourceError> {
    let list = state_dir.join(format!("{name}.files"));
    let io = |e: std::io::Error| SourceError::Io(format!("{}: {e}", list.display()));
    if list.exists() {
        let text = std::fs::read_to_string(&list).map_err(io)?;
        let pinned: Vec<PathBuf> = serde_json::from_str(&text)
            .map_err(|e| SourceError::Io(format!("{}: not a file list: {e}", list.display())))?;
        if let Ok(now) = resolve(paths)
            && now != pinned
        {
            tracing::warn!(
                source = name,
                "the paths now match other files than on the first run; reading the {} files pinned in {}",
                pinned.len(),
                list.display()
            );
        }
        return Ok(pinned);
    }
    let files = resolve(paths)?;
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let tmp = list.with_extension("files.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&files).expect("paths serialize"),
    )
    .map_err(io)?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, &list).map_err(io)?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(files)
}

#[derive(Debug)]
struct Open {
    index: usize,
    file: File,
    origin: Arc<str>,
    len: u64,
    offset: u64,
    /// Line number of the line starting at `offset`.
    line: u64,
}

/// Reads JSON lines from a list of files as [`RawChunk`]s.
#[derive(Debug)]
pub struct FileSource {
    files: Vec<PathBuf>,
    current: Option<Open>,
    next_index: usize,
    chunk_bytes: usize,
    max_event_size: usize,
    format: InputFormat,
}

impl FileSource {
    /// A source over `files` producing chunks of up to `chunk_bytes` (raised to at least
    /// twice `max_event_size`, so every acceptable line fits in a chunk).
    pub fn new(files: Vec<PathBuf>, chunk_bytes: usize, max_event_size: usize) -> Self {
        FileSource {
            files,
            current: None,
            next_index: 0,
            chunk_bytes: chunk_bytes.max(2 * max_event_size + 2),
            max_event_size,
            format: InputFormat::Json,
        }
    }

    /// This source, reading its files as `format` (JSON lines by default).
    pub fn with_format(mut self, format: InputFormat) -> Self {
        self.format = format;
        self
    }

    fn open(&self, index: usize, offset: u64) -> Result<Open, SourceError> {
        let path = &self.files[index];
        let io = |e: std::io::Error| SourceError::Io(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len >= 1 << OFFSET_BITS {
            return Err(SourceError::Io(format!(
                "{}: files over 1 TiB are not supported",
                path.display()
            )));
        }
        if offset > len {
            return Err(SourceError::Io(format!(
                "{}: the file is shorter ({len} bytes) than where the log says reading stopped ({offset}); was it replaced?",
                path.display()
            )));
        }
        // Count the lines before `offset`, so rejects name the right line (Protobuf
        // locations are byte offsets).
        let mut line = 1u64;
        let mut buf = vec![
            0u8;
            if self.format == InputFormat::Json {
                1 << 20
            } else {
                0
            }
        ];
        let mut at = if self.format == InputFormat::Json {
            0
        } else {
            offset
        };
        while at < offset {
            let want = ((offset - at) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], at).map_err(io)?;
            if n == 0 {
                break;
            }
            line += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
            at += n as u64;
        }
        Ok(Open {
            index,
            file,
            origin: path.display().to_string().into(),
            len,
            offset,
            line,
        })
    }
}

/// Where to cut a Protobuf chunk read at file offset `offset` (`buf` holds what was
/// read): the bytes to keep and the file offset the next chunk starts at.
#[cfg(feature = "protobuf")]
fn protobuf_cut(
    max_event_size: usize,
    buf: &[u8],
    at_eof: bool,
    offset: u64,
    len: u64,
) -> Result<(usize, u64), SourceError> {
    use crate::codec::protobuf::whole_messages;
    if at_eof {
        // A broken or cut-off tail is reported by the ingestor.
        return Ok((buf.len(), offset + buf.len() as u64));
    }
    let keep = max_event_size + 1;
    Ok(match whole_messages(buf) {
        (Some(used), _) if used > 0 => (used, offset + used as u64),
        (_, Some(message)) => {
            // A message longer than a chunk (so over max_event_size): keep its
            // prefix and head for the report, skip the rest of it.
            let prefix = buf
                .iter()
                .position(|b| *b < 0x80)
                .map_or(buf.len(), |i| i + 1);
            let end = (offset + prefix as u64).saturating_add(message).min(len);
            ((prefix + keep).min(buf.len()), end)
        }
        // A prefix that is not a varint: nothing after it can be split.
        _ => (keep.min(buf.len()), len),
    })
}

#[cfg(not(feature = "protobuf"))]
fn protobuf_cut(
    _max_event_size: usize,
    _buf: &[u8],
    _at_eof: bool,
    _offset: u64,
    _len: u64,
) -> Result<(usize, u64), SourceError> {
    Err(SourceError::Config(
        "this build of lungfish has no Protobuf support (cargo feature `protobuf`)".to_owned(),
    ))
}

impl ChunkSource for FileSource {
    fn seek(&mut self, position: u64) -> Result<(), SourceError> {
        let index = (position >> OFFSET_BITS) as usize;
        let offset = position & ((1 << OFFSET_BITS) - 1);
        self.current = None;
        self.next_index = index;
        if index < self.files.len() {
            self.current = Some(self.open(index, offset)?);
            self.next_index = index + 1;
        }
        Ok(())
    }

    fn next_chunk(&mut self, mut buf: Vec<u8>) -> Result<Option<RawChunk>, SourceError> {
        loop {
            let cur = match &mut self.current {
                Some(c) if c.offset < c.len => c,
                _ => {
                    if self.next_index >= self.files.len() {
                        return Ok(None);
                    }
                    let index = self.next_index;
                    self.next_index += 1;
                    self.current = Some(self.open(index, 0)?);
                    continue;
                }
            };
            let io = |e: std::io::Error| SourceError::Io(format!("{}: {e}", cur.origin));
            let want = ((cur.len - cur.offset) as usize).min(self.chunk_bytes);
            // A recycled buffer keeps its length: resizing only fills what is new.
            buf.resize(want, 0);
            let mut got = 0;
            while got < want {
                let n = cur
                    .file
                    .read_at(&mut buf[got..], cur.offset + got as u64)
                    .map_err(io)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            buf.truncate(got);
            let at_eof = cur.offset + got as u64 >= cur.len;
            let start = file_position(cur.index, cur.offset);
            let first_line = cur.line;
            if self.format == InputFormat::Protobuf {
                let (used, next) =
                    protobuf_cut(self.max_event_size, &buf, at_eof, cur.offset, cur.len)?;
                buf.truncate(used);
                cur.offset = next;
                return Ok(Some(RawChunk {
                    data: buf,
                    format: InputFormat::Protobuf,
                    positions: Positions::Bytes { start },
                    end: file_position(cur.index, next),
                    origin: cur.origin.clone(),
                    first_line,
                }));
            }
            let used = if at_eof {
                got
            } else if let Some(last_nl) = memchr::memrchr(b'\n', &buf) {
                last_nl + 1
            } else {
                // One line longer than a whole chunk: keep its head for the report and
                // skip to its end.
                let mut end = cur.offset + got as u64;
                let mut scan = vec![0u8; 1 << 20];
                let mut found = None;
                while end < cur.len {
                    let n = cur.file.read_at(&mut scan, end).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    if let Some(i) = memchr::memchr(b'\n', &scan[..n]) {
                        found = Some(end + i as u64 + 1);
                        break;
                    }
                    end += n as u64;
                }
                let line_end = found.unwrap_or(cur.len);
                buf.truncate(self.max_event_size + 1);
                buf.push(b'\n');
                cur.offset = line_end;
                cur.line += 1;
                return Ok(Some(RawChunk {
                    data: buf,
                    format: InputFormat::Json,
                    positions: Positions::Bytes { start },
                    end: file_position(cur.index, line_end),
                    origin: cur.origin.clone(),
                    first_line,
                }));
            };
            buf.truncate(used);
            cur.offset += used as u64;
            cur.line += memchr::memchr_iter(b'\n', &buf).count() as u64;
            return Ok(Some(RawChunk {
                data: buf,
                format: InputFormat::Json,
                positions: Positions::Bytes { start },
                end: file_position(cur.index, cur.offset),
                origin: cur.origin.clone(),
                first_line,
            }));
        }
    }

    fn describe(&self) -> String {
        match self.files.len() {
            1 => format!("file {}", self.files[0].display()),
            n => format!("{n} files"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn drain(src: &mut FileSource) -> Vec<RawChunk> {
        let mut out = vec![];
        while let Some(c) = src.next_chunk(Vec::new()).unwrap() {
            out.push(c);
        }
        out
    }

    #[test]
    fn chunks_are_whole_lines_with_positions_and_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.jsonl", "l1\nl2\nl3\n");
        let b = write(dir.path(), "b.jsonl", "m1\nm2");
        let mut src = FileSource::new(vec![a, b], 4, 1);
        let chunks = drain(&mut src);
        let text: Vec<_> = chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect();
        assert_eq!(text, vec!["l1\n", "l2\n", "l3\n", "m1\n", "m2"]);
        assert_eq!(chunks[2].positions, Positions::Bytes { start: 6 });
        assert_eq!(chunks[2].first_line, 3);
        assert_eq!(chunks[2].end, 9);
        assert_eq!(
            chunks[4].positions,
            Positions::Bytes {
                start: file_position(1, 3)
            }
        );
        assert_eq!(chunks[4].first_line, 2);
        assert_eq!(chunks[4].end, file_position(1, 5));
    }

    #[test]
    fn seek_resumes_at_a_line_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.jsonl", "l1\nl2\nl3\n");
        let mut src = FileSource::new(vec![a], 1 << 20, 100);
        src.seek(6).unwrap();
        let c = src.next_chunk(Vec::new()).unwrap().unwrap();
        assert_eq!((&c.data[..], c.first_line), (&b"l3\n"[..], 3));
        assert!(src.next_chunk(Vec::new()).unwrap().is_none());
        // Seeking to the end of a file continues with the next one (none here).
        src.seek(9).unwrap();
        assert!(src.next_chunk(Vec::new()).unwrap().is_none());
    }

    #[test]
    fn an_overlong_line_is_cut_and_skipped_without_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(5000);
        let a = write(dir.path(), "a.jsonl", &format!("ok1\n{long}\nok2\n"));
        let mut src = FileSource::new(vec![a], 64, 16);
        let chunks = drain(&mut src);
        let lines: Vec<Vec<u8>> = chunks.iter().map(|c| c.data.clone()).collect();
        assert_eq!(lines[0], b"ok1\n");
        assert_eq!(
            lines[1].len(),
            18,
            "head of the long line, one byte over the limit, plus newline"
        );
        assert_eq!(chunks[1].first_line, 2);
        assert_eq!(chunks[1].end, 4 + 5001);
        assert_eq!(lines[2], b"ok2\n");
        assert_eq!(chunks[2].first_line, 3);
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_files_are_cut_at_message_ends_and_oversized_or_broken_framing_is_skipped() {
        use crate::codec::protobuf::{Delimited, Frame, write_delimited};
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        let mut starts = Vec::new();
        for i in 0..40u8 {
            starts.push(data.len() as u64);
            let len = if i == 20 { 500 } else { 5 + (i as usize % 7) };
            write_delimited(&mut data, &vec![i; len]);
        }
        let broken_at = data.len() as u64;
        data.extend_from_slice(&[0xff; 12]);
        data.extend_from_slice(&[1, 1, 1]);
        let path = dir.path().join("a.pb");
        std::fs::write(&path, &data).unwrap();
        let mut src =
            FileSource::new(vec![path.clone()], 64, 16).with_format(InputFormat::Protobuf);
        let chunks = drain(&mut src);
        // Every chunk starts at a message and holds whole ones (or the oversized one's
        // head, or the broken rest's head); together they cover the file once.
        let mut seen = Vec::new();
        let mut next = 0;
        for c in &chunks {
            assert_eq!(c.format, InputFormat::Protobuf);
            let Positions::Bytes { start } = c.positions else {
                panic!()
            };
            assert_eq!(start, next, "chunks follow each other");
            next = c.end;
            for f in Delimited::new(&c.data, 16) {
                match f {
                    Frame::Message { offset, .. } | Frame::TooLarge { offset, .. } => {
                        seen.push((start + offset as u64, matches!(f, Frame::TooLarge { .. })));
                    }
                    Frame::Broken { offset, .. } => seen.push((start + offset as u64, true)),
                }
            }
        }
        assert_eq!(next, data.len() as u64);
        let want: Vec<(u64, bool)> = starts
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i == 20))
            .chain([(broken_at, true)])
            .collect();
        assert_eq!(seen, want);
        // The oversized message is not held: its chunk is its prefix and head.
        assert!(chunks.iter().all(|c| c.data.len() <= 64), "bounded chunks");
        // A restart resumes at a message, exactly.
        let mut src = FileSource::new(vec![path], 64, 16).with_format(InputFormat::Protobuf);
        src.seek(starts[30]).unwrap();
        let c = src.next_chunk(Vec::new()).unwrap().unwrap();
        assert_eq!(c.positions, Positions::Bytes { start: starts[30] });
        assert_eq!(c.data[1], 30);
    }

    #[test]
    fn globs_resolve_in_order_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.jsonl", "");
        write(dir.path(), "a.jsonl", "");
        let pattern = format!("{}/*.jsonl", dir.path().display());
        let files = resolve(std::slice::from_ref(&pattern)).unwrap();
        assert_eq!(
            files,
            vec![dir.path().join("a.jsonl"), dir.path().join("b.jsonl")]
        );
        let err = resolve(&[format!("{}/nope.jsonl", dir.path().display())]).unwrap_err();
        assert!(err.to_string().contains("file not found"), "{err}");
        // The pinned list survives new matches.
        let state = dir.path().join("state");
        assert_eq!(
            pinned_files(&state, "f", std::slice::from_ref(&pattern))
                .unwrap()
                .len(),
            2
        );
        write(dir.path(), "c.jsonl", "");
        assert_eq!(pinned_files(&state, "f", &[pattern]).unwrap().len(), 2);
    }
}
