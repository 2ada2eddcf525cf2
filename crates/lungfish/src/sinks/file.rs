//! The `file` sink: window rows as JSON lines, appended to a file.
//!
//! Each batch is appended with one write and made durable with `fdatasync` before it is
//! acknowledged. A file cannot upsert, so after a crash the rows of the batches written
//! but not yet committed are written again: the file is at-least-once, each row complete
//! and keyed by `(window_start, key)` so readers can keep the last of each. Use the
//! `sqlite` sink where effectively-once matters.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::FileSinkConfig;
use crate::window::{RowSchema, WindowRows};

use super::{Sink, SinkError, write_json_row};

/// Appends window rows to a JSON-lines file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
}

impl FileSink {
    /// A sink appending to `config.path`.
    pub fn new(config: &FileSinkConfig) -> Self {
        FileSink {
            path: config.path.clone(),
            file: None,
            buf: Vec::new(),
        }
    }
}

impl Sink for FileSink {
    fn open(&mut self, _schema: &RowSchema) -> Result<(), SinkError> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| SinkError::permanent(format!("{}: {e}", self.path.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| SinkError::permanent(format!("{}: {e}", self.path.display())))?;
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        self.buf.clear();
        for rows in batch {
            for i in 0..rows.len() {
                write_json_row(rows, i, &mut self.buf);
                self.buf.push(b'\n');
            }
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| SinkError::permanent("the file sink was not opened"))?;
        let io = |e: std::io::Error| SinkError::transient(format!("{}: {e}", self.path.display()));
        file.write_all(&self.buf).map_err(io)?;
        file.sync_data().map_err(io)
    }

    fn describe(&self) -> String {
        format!("JSON lines in {}", self.path.display())
    }

    fn query_hint(&self) -> Option<String> {
        Some(format!("head {}", self.path.display()))
    }
}
