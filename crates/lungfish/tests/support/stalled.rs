//! A sink that stalls: the real SQLite sink behind writes that hang until a deadline,
//! as a store under a long lock would.

use std::sync::Arc;
use std::time::Instant;

use lungfish::sinks::sqlite::SqliteSink;
use lungfish::sinks::{Sink, SinkError};
use lungfish::window::{RowSchema, WindowRows};

/// Writes hang until `until`, then go to `inner`.
pub struct Stalled {
    pub inner: SqliteSink,
    pub until: Instant,
}

impl Sink for Stalled {
    fn open(&mut self, schema: &RowSchema) -> Result<(), SinkError> {
        self.inner.open(schema)
    }
    fn write(&mut self, batch: &[Arc<WindowRows>]) -> Result<(), SinkError> {
        std::thread::sleep(self.until.saturating_duration_since(Instant::now()));
        self.inner.write(batch)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
