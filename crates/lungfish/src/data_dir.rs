//! The data directory of a pipeline: what lives where, exclusive use, and which field
//! the log was partitioned by.
//!
//! ```text
//! DATA_DIR/lock              held (flock) by the one process using the directory
//! DATA_DIR/partitioning      the key field the log's events were partitioned by
//! DATA_DIR/log/              the event log (lungfish-log)
//! DATA_DIR/dlq/              the dead-letter queue (lungfish-log, one partition)
//! DATA_DIR/sources/          per-source state (pinned file lists)
//! ```
//!
//! Opening a log recovers it, which writes; two processes must never do that to the same
//! directory, so everything that opens these logs holds the lock. And since a key lives
//! in one partition only if every event was partitioned by the same field, a pipeline
//! keyed by another field than the log's is refused.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::Error;

const PARTITIONING: &str = "partitioning";

/// A data directory in exclusive use. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (if needed) and locks the data directory `root`.
    ///
    /// # Errors
    /// The directory cannot be created, or another process holds it.
    pub fn lock(root: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::Failed(format!("data directory {}: {e}", root.display())))?;
        let path = root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Failed(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDir {
                root: root.to_path_buf(),
                _lock: file,
            }),
            Err(TryLockError::WouldBlock) => Err(Error::Failed(format!(
                "the data directory {} is in use by another lungfish process; stop it first (or use another data_dir)",
                root.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::Failed(format!("{}: {e}", path.display()))),
        }
    }

    /// Records the key field on first use; refuses another key field later.
    ///
    /// # Errors
    /// The log was partitioned by another field, or the record cannot be read or written.
    pub fn check_key_field(&self, key: &str) -> Result<(), Error> {
        let path = self.root.join(PARTITIONING);
        let io = |e: std::io::Error| Error::Failed(format!("{}: {e}", path.display()));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let existing = text.trim().strip_prefix("key ").unwrap_or("").to_owned();
                if existing != key {
                    return Err(Error::Failed(format!(
                        "the log in {} was partitioned by the field `{existing}`, but this pipeline keys by `{key}`: \
                         events of one key would be spread over partitions and their windows split. \
                         Use another data_dir for a pipeline with another key.",
                        self.root.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("key {key}\n")).map_err(io)?;
                File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                File::open(&self.root)
                    .and_then(|d| d.sync_all())
                    .map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the event log lives.
    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// Where the dead-letter queue lives.
    pub fn dead_letters(&self) -> PathBuf {
        self.root.join("dlq")
    }

    /// Where per-source state lives.
    pub fn sources(&self) -> PathBuf {
        self.root.join("sources")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time_and_one_key_field() {
        let dir = tempfile::tempdir().unwrap();
        let a = DataDir::lock(dir.path()).unwrap();
        let err = DataDir::lock(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("in use by another lungfish process"),
            "{err}"
        );
        a.check_key_field("user").unwrap();
        a.check_key_field("user").unwrap();
        let err = a.check_key_field("region").unwrap_err();
        assert!(
            err.to_string().contains("partitioned by the field `user`"),
            "{err}"
        );
        drop(a);
        DataDir::lock(dir.path()).unwrap();
    }
}
