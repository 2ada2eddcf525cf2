//! The `stdout` sink: window rows as JSON lines on standard output, for trying things
//! out and for piping into other tools. Nothing is durable, so it is at-least-once.

use std::io::Write;
use std::sync::Arc;

use crate::window::{RowSchema, WindowRows};

use super::{Sink, SinkError, write_json_row};

/// Prints window rows as JSON lines.
#[derive(Debug, Default)]
pub struct StdoutSink {
    buf: Vec<u8>,
}

impl Sink for StdoutSink {
    fn open(&mut self, _schema: &RowSchema) -> Result<(), SinkError> {
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
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::permanent(format!("stdout: {e}")))
    }

    fn describe(&self) -> String {
        "standard output".to_owned()
    }
}
