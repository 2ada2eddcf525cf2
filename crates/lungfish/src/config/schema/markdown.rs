//! The Markdown reference of pipeline files (`docs/reference/config.md`), rendered from
//! [`describe`] and [`aggregate_forms`].

use std::fmt::Write;

use serde_json::Value;

use super::{DefaultValue, Family, Kind, Place, Section, aggregate_forms, describe};
use crate::config::units::{DURATION_UNITS, SIZE_UNITS};

/// The reference: an introduction to the value syntax, one table per section (option,
/// type, default, unit, meaning) and the aggregate forms. Deterministic: the same code
/// gives the same text, ending with a newline.
pub fn markdown() -> String {
    let mut out = String::new();
    let units = |names: &mut dyn Iterator<Item = &str>| {
        names
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let duration_units = units(&mut DURATION_UNITS.iter().map(|(n, _)| *n));
    let size_units = units(&mut SIZE_UNITS.iter().map(|(n, _)| *n));
    let _ = write!(
        out,
        "# Pipeline file reference

<!-- Generated from crates/lungfish/src/config/schema.rs: do not edit. Regenerate with
     LUNGFISH_BLESS=1 cargo test -p lungfish --lib config::schema
     (or: lungfish config reference > docs/reference/config.md) -->

Every option of a Lungfish pipeline file (TOML), section by section, generated from the
code that reads the file: the defaults are the code's own. `lungfish validate FILE`
checks a file; `lungfish config schema` prints the same description as a JSON Schema
([pipeline.schema.json](pipeline.schema.json)) for editors.

Values:

* **duration**: a string of whole numbers with units, largest first, each unit at most
  once: `\"50ms\"`, `\"1m30s\"`, `\"0s\"`. Units: {duration_units}.
* **size**: a string of a whole number and a unit (case-sensitive), or a whole number of
  bytes: `\"64MiB\"`, `65536`. Units: {size_units}.
* **address**: a socket address string, `\"IP:PORT\"` or `\"[IPv6]:PORT\"` (no host names).
* Unknown keys are errors, in every table.
"
    );
    let mut family = None;
    for section in describe() {
        let now = group(section.place);
        if now != family {
            family = now;
            if let Some(title) = now {
                let _ = write!(out, "\n## {}\n\n{}\n", title.0, title.1);
            }
        }
        write_section(&mut out, &section, now.is_some());
    }
    out.push_str("\n## Aggregates\n\n");
    out.push_str(
        "Each entry of `[pipeline] aggregates` is one column of the window rows (besides \
         `window_start`, `window_end` and `key`), computed per window and key; F is a \
         numeric field of the events (a letter or `_`, then letters, digits, `_`, `.` or \
         `-`). Column names must be unique (ignoring case).\n\n",
    );
    out.push_str("| form | column | meaning |\n|---|---|---|\n");
    for form in aggregate_forms() {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} |",
            cell(form.form),
            cell(&form.column()),
            cell(form.meaning)
        );
    }
    out
}

/// The group heading and introduction of sections in a family, or `None` for the
/// sections of their own.
fn group(place: Place) -> Option<(&'static str, &'static str)> {
    match place {
        Place::Top | Place::Table(_) => None,
        Place::Source(_) => Some((
            "Sources",
            "One table per source, `[sources.NAME]`, at least one; `type` says which kind.",
        )),
        Place::Operator(_) => Some((
            "Operators",
            "One table per operator, `[operators.NAME]`, run on every event in file order; `type` says which kind.",
        )),
        Place::Sink(_) => Some((
            "Sinks",
            "One table per sink, `[sinks.NAME]`, at least one; every sink gets every window row; `type` says which kind.",
        )),
        Place::Window(_) => Some((
            "Windows",
            "`[pipeline] window` is an inline table (or a `[pipeline.window]` table); `type` says which kind.",
        )),
    }
}

fn write_section(out: &mut String, section: &Section, grouped: bool) {
    let level = if grouped { "###" } else { "##" };
    let title = match section.place {
        Place::Top => section.place.title(),
        _ => format!("`{}`", section.place.title()),
    };
    let _ = write!(
        out,
        "\n<a id=\"{}\"></a>\n\n{level} {title}\n\n{}\n\n",
        section.place.id(),
        section.about
    );
    out.push_str("| option | type | default | unit | meaning |\n|---|---|---|---|---|\n");
    for s in &section.options {
        let default = match &s.default {
            DefaultValue::Value(value) => format!("`{}`", cell(&toml(value))),
            DefaultValue::Absent(text) => cell(text),
            DefaultValue::Required(example) => format!("**required**, e.g. `{}`", cell(example)),
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            s.name,
            type_text(&s.kind),
            default,
            cell(s.unit_text()),
            cell(s.meaning)
        );
    }
}

/// The type column.
fn type_text(kind: &Kind) -> String {
    let quoted = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`\"{n}\"`"))
            .collect::<Vec<_>>()
            .join(" \\| ")
    };
    match kind {
        Kind::String => "string".to_owned(),
        Kind::Boolean => "boolean".to_owned(),
        Kind::Count => "integer (>= 0)".to_owned(),
        Kind::Integer => "integer".to_owned(),
        Kind::Number => "number".to_owned(),
        Kind::Duration => "duration".to_owned(),
        Kind::Size => "size".to_owned(),
        Kind::Address => "address".to_owned(),
        Kind::Choice(names) => quoted(names),
        Kind::Choices(names) => format!("array of {}", quoted(names)),
        Kind::Strings { .. } => "array of strings".to_owned(),
        Kind::Type(name) => quoted(&[name]),
        Kind::Rate => "`\"unlimited\"` \\| integer".to_owned(),
        Kind::Fsync => "`\"always\"` \\| `\"every DURATION\"` \\| `\"never\"`".to_owned(),
        Kind::StringTable => "table of strings".to_owned(),
        Kind::ClientOptions => "table of strings".to_owned(),
        Kind::Window => "table, see [Windows](#windows)".to_owned(),
        Kind::Aggregates => "array of strings, see [Aggregates](#aggregates)".to_owned(),
        Kind::Table(name) => format!("table, see [`[{name}]`](#{name})"),
        Kind::Named(family) => {
            let title = match family {
                Family::Sources => "Sources",
                Family::Operators => "Operators",
                Family::Sinks => "Sinks",
            };
            format!("tables, see [{title}](#{})", title.to_ascii_lowercase())
        }
    }
}

/// A JSON value written as TOML.
pub(super) fn toml(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml(v)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// Text for a table cell: `|` escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
