//! Located configuration errors, and the dotted field paths they name.

use std::fmt;
use std::path::PathBuf;

/// One problem in a pipeline file: where it is, which field it concerns, and what is wrong.
///
/// `line` and `column` are 1-based; the column counts characters, not bytes. They are 0
/// when the error has no place in a file: the file could not be read, or the
/// configuration was built in Rust and checked with
/// [`PipelineConfig::validate`](super::PipelineConfig::validate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigError {
    /// The file the error is in (empty for configurations built in Rust).
    pub file: PathBuf,
    /// 1-based line of the offending key or value (0: no place in a file).
    pub line: usize,
    /// 1-based column, in characters, of the offending key or value (0: no place in a file).
    pub column: usize,
    /// Dotted path of the field, e.g. `sources.gen.rate` or `pipeline.aggregates[2]`;
    /// empty for TOML syntax errors and unreadable files.
    pub field: String,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// Formats as `FILE:LINE:COL: FIELD: MESSAGE`, leaving out the parts that are absent
    /// (no line for errors without a place, no field for syntax errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        if self.line > 0 {
            write!(f, "{file}:{}:{}: ", self.line, self.column)?;
        } else if !file.is_empty() {
            write!(f, "{file}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a pipeline file, in file order (never empty when returned as an
/// error).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no problem at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    /// One line per error, as formatted by [`ConfigError`]'s `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Maps byte offsets in a text to 1-based (line, column) pairs, columns in characters.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// The 1-based line and column of byte `offset` (clamped to the text).
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

/// The path of `key` inside the table at `parent` (`""` for the root); keys that are not
/// bare TOML keys are quoted: `sources."my source".type`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of element `i` of the array at `parent`: `pipeline.aggregates[2]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The path of the table or array holding `path`, if any.
pub(crate) fn parent(path: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut last = None;
    for (i, c) in path.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '.' | '[' if !quoted => last = Some(i),
            _ => {}
        }
    }
    last.map(|i| &path[..i])
}

/// Whether the field at `path` is `ancestor` or lies inside it.
pub(crate) fn is_within(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}
