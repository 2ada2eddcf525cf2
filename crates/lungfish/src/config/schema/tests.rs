//! Drift guards: the description against the reader, the committed reference files
//! against the code, and the examples against the JSON Schema.
//!
//! Most checks are generated from the description itself: for every section, a minimal
//! file of its required options (their examples) must parse and satisfy the schema;
//! leaving a required option out, giving any option a value of the wrong type, or adding
//! an unknown key must fail in the reader and in the schema; and writing an option's
//! described default explicitly must give the same configuration as leaving it out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use toml_edit::{Document, Item};

use super::json::{
    address_pattern, aggregate_pattern, duration_pattern, fsync_pattern, size_pattern,
};
use super::markdown::toml;
use super::*;
use crate::config::read;
use crate::config::units::{parse_duration, parse_size};
use crate::config::{AggregateSpec, ConfigErrors, PipelineConfig, WindowSpec};

// ----- helpers -----

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Files are parsed as if they were in `examples/`, where `[protobuf] file =
/// "events.proto"` finds the examples' schema.
fn parse(text: &str) -> Result<PipelineConfig, ConfigErrors> {
    PipelineConfig::parse(text, &repo().join("examples/reference.toml"))
}

/// The keys the reader accepts in the section at `place`.
fn reader_keys(place: Place) -> &'static [&'static str] {
    match place {
        Place::Top => read::TOP_KEYS,
        Place::Table("log") => read::LOG_KEYS,
        Place::Table("pipeline") => read::PIPELINE_KEYS,
        Place::Table("metrics") => read::METRICS_KEYS,
        Place::Table("protobuf") => read::PROTOBUF_KEYS,
        Place::Source("generator") => read::GENERATOR_KEYS,
        Place::Source("file") => read::FILE_SOURCE_KEYS,
        Place::Source("http") => read::HTTP_SOURCE_KEYS,
        Place::Source("kafka") => read::KAFKA_SOURCE_KEYS,
        Place::Operator("filter") => read::FILTER_KEYS,
        Place::Operator("enrich") => read::ENRICH_KEYS,
        Place::Sink("sqlite") => read::SQLITE_KEYS,
        Place::Sink("file") => read::FILE_SINK_KEYS,
        Place::Sink("stdout") => read::STDOUT_KEYS,
        Place::Sink("postgres" | "clickhouse") => read::DATABASE_SINK_KEYS,
        Place::Sink("kafka") => read::KAFKA_SINK_KEYS,
        Place::Window("tumbling") => read::TUMBLING_KEYS,
        Place::Window("sliding") => read::SLIDING_KEYS,
        Place::Window("session") => read::SESSION_KEYS,
        other => panic!(
            "{} is described but this test does not know the reader's keys for it: add it to reader_keys",
            other.title()
        ),
    }
}

/// The dotted path of the section's options in errors.
fn prefix(place: Place) -> String {
    match place {
        Place::Top => String::new(),
        Place::Table(name) => format!("{name}."),
        Place::Source(_) => "sources.s.".to_owned(),
        Place::Operator(_) => "operators.o.".to_owned(),
        Place::Sink(_) => "sinks.k.".to_owned(),
        Place::Window(_) => "pipeline.window.".to_owned(),
    }
}

/// Options a minimal file needs besides the required ones (one of two is required).
fn extra(place: Place) -> &'static [(&'static str, &'static str)] {
    match place {
        Place::Sink("postgres") => &[("url", "\"postgres://lungfish@127.0.0.1:5432/db\"")],
        Place::Sink("clickhouse") => &[("url", "\"http://127.0.0.1:8123\"")],
        _ => &[],
    }
}

/// A change to a section's minimal file.
#[derive(Clone, Copy)]
enum Change<'a> {
    None,
    /// Leave this required option out.
    Drop(&'a str),
    /// Set this option to this TOML value.
    Set(&'a str, &'a str),
}

/// A minimal pipeline file exercising `section`: its required options set to their
/// examples, inside a valid pipeline, with `change` applied.
fn file(section: &Section, change: Change<'_>) -> String {
    let entries = |s: &Section, change: Change<'_>| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for option in &s.options {
            if let DefaultValue::Required(example) = &option.default {
                out.push((option.name.to_owned(), example.clone()));
            }
        }
        for (name, value) in extra(s.place) {
            out.push(((*name).to_owned(), (*value).to_owned()));
        }
        match change {
            Change::None => {}
            Change::Drop(name) => out.retain(|(n, _)| n != name),
            Change::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.to_owned(), value.to_owned()));
            }
        }
        out
    };
    let inline = |entries: Vec<(String, String)>| {
        let parts: Vec<String> = entries
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        format!("{{ {} }}", parts.join(", "))
    };
    let sections = describe();
    let top = sections.iter().find(|s| s.place == Place::Top).unwrap();
    let (top_change, own) = match section.place {
        Place::Top => (change, None),
        _ => (Change::None, Some(inline(entries(section, change)))),
    };
    let mut lines = entries(top, top_change);
    let mut put = |key: &str, value: String| {
        lines.retain(|(k, _)| k != key);
        lines.push((key.to_owned(), value));
    };
    match (section.place, own) {
        (Place::Table(name), Some(own)) => put(name, own),
        (Place::Source(_), Some(own)) => put("sources", format!("{{ s = {own} }}")),
        (Place::Operator(_), Some(own)) => put("operators", format!("{{ o = {own} }}")),
        (Place::Sink(_), Some(own)) => put("sinks", format!("{{ k = {own} }}")),
        (Place::Window(_), Some(own)) => put(
            "pipeline",
            format!("{{ window = {own}, aggregates = [\"count\"] }}"),
        ),
        _ => {}
    }
    lines
        .into_iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

/// Whether an error at `field` concerns the option at `path`.
fn concerns(field: &str, path: &str) -> bool {
    field == path
        || field
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn to_json(item: &Item) -> Value {
    match item {
        Item::None => Value::Null,
        Item::Value(v) => value_json(v),
        Item::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect())
        }
        Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .map(|t| Value::Object(t.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect()))
                .collect(),
        ),
    }
}

fn value_json(value: &toml_edit::Value) -> Value {
    use toml_edit::Value as V;
    match value {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::from(*i.value()),
        V::Float(f) => serde_json::json!(*f.value()),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::String(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(value_json).collect()),
        V::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_owned(), value_json(v)))
                .collect(),
        ),
    }
}

/// A TOML file as the JSON an editor validates.
fn toml_to_json(text: &str) -> Value {
    let doc = Document::parse(text).unwrap_or_else(|e| panic!("invalid TOML: {e}\n{text}"));
    Value::Object(
        doc.as_table()
            .iter()
            .map(|(k, v)| (k.to_owned(), to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn matches(pattern: &str, text: &str) -> bool {
    regex_automata::meta::Regex::new(pattern)
        .unwrap_or_else(|e| panic!("bad pattern {pattern}: {e}"))
        .is_match(text)
}

/// The problems of `value` under `schema`, for the draft-07 keywords the generated schema
/// uses. A keyword this does not know is a test failure, so the schema cannot use one
/// that goes unchecked here.
fn check(root: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let schema = schema.as_object().expect("a schema is an object");
    for (keyword, arg) in schema {
        match keyword.as_str() {
            "$schema" | "title" | "description" | "default" | "definitions" | "then" => {}
            "$ref" => {
                let id = arg
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/definitions/"))
                    .expect("local references");
                let target = &root["definitions"][id];
                assert!(!target.is_null(), "dangling reference {id}");
                check(root, target, value, path, out);
            }
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => panic!("bad type {arg}"),
                };
                let ok = types.iter().any(|t| match *t {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "integer" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    other => panic!("unknown type {other}"),
                });
                if !ok {
                    out.push(format!("{path}: {value} is not of type {arg}"));
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    for (key, sub) in arg.as_object().unwrap() {
                        if let Some(v) = object.get(key) {
                            check(root, sub, v, &format!("{path}.{key}"), out);
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (key, v) in object {
                        if known.is_some_and(|k| k.contains_key(key)) {
                            continue;
                        }
                        match arg {
                            Value::Bool(false) => out.push(format!("{path}.{key}: unknown key")),
                            Value::Bool(true) => {}
                            sub => check(root, sub, v, &format!("{path}.{key}"), out),
                        }
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for key in arg.as_array().unwrap() {
                        let key = key.as_str().unwrap();
                        if !object.contains_key(key) {
                            out.push(format!("{path}.{key}: required"));
                        }
                    }
                }
            }
            "enum" => {
                if !arg.as_array().unwrap().contains(value) {
                    out.push(format!("{path}: {value} is not one of {arg}"));
                }
            }
            "const" => {
                if value != arg {
                    out.push(format!("{path}: {value} is not {arg}"));
                }
            }
            "pattern" => {
                if let Some(text) = value.as_str()
                    && !matches(arg.as_str().unwrap(), text)
                {
                    out.push(format!("{path}: {value} does not match {arg}"));
                }
            }
            "minimum" => {
                if let Some(n) = value.as_f64()
                    && n < arg.as_f64().unwrap()
                {
                    out.push(format!("{path}: {value} is less than {arg}"));
                }
            }
            "minItems" => {
                if let Some(items) = value.as_array()
                    && (items.len() as u64) < arg.as_u64().unwrap()
                {
                    out.push(format!("{path}: fewer than {arg} items"));
                }
            }
            "minProperties" => {
                if let Some(object) = value.as_object()
                    && (object.len() as u64) < arg.as_u64().unwrap()
                {
                    out.push(format!("{path}: fewer than {arg} entries"));
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        check(root, arg, item, &format!("{path}[{i}]"), out);
                    }
                }
            }
            "allOf" => {
                for sub in arg.as_array().unwrap() {
                    check(root, sub, value, path, out);
                }
            }
            "anyOf" => {
                let any = arg.as_array().unwrap().iter().any(|sub| {
                    let mut errors = Vec::new();
                    check(root, sub, value, path, &mut errors);
                    errors.is_empty()
                });
                if !any {
                    out.push(format!("{path}: {value} matches none of {arg}"));
                }
            }
            "if" => {
                let mut errors = Vec::new();
                check(root, arg, value, path, &mut errors);
                if errors.is_empty()
                    && let Some(then) = schema.get("then")
                {
                    check(root, then, value, path, out);
                }
            }
            other => panic!("the schema uses `{other}`, which this check does not know"),
        }
    }
}

/// The JSON Schema's problems with a TOML text.
fn schema_problems(schema: &Value, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, schema, &toml_to_json(text), "", &mut out);
    out
}

// ----- the description against the reader -----

#[test]
fn every_key_the_reader_accepts_is_described_and_every_described_key_is_accepted() {
    let mut problems = Vec::new();
    for section in describe() {
        let title = section.place.title();
        let described: BTreeSet<&str> = section.options.iter().map(|s| s.name).collect();
        if described.len() != section.options.len() {
            problems.push(format!("{title}: an option is described twice"));
        }
        let accepted: BTreeSet<&str> = reader_keys(section.place).iter().copied().collect();
        for key in accepted.difference(&described) {
            problems.push(format!(
                "{title}: the reader accepts `{key}`, which config/schema.rs does not describe"
            ));
        }
        for key in described.difference(&accepted) {
            problems.push(format!(
                "{title}: config/schema.rs describes `{key}`, which the reader does not accept"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_type_the_reader_knows_has_a_section_and_no_other() {
    let sections = describe();
    let described = |family: Option<Family>| -> Vec<&'static str> {
        sections
            .iter()
            .filter_map(|s| match (s.place, family) {
                (Place::Source(k), Some(Family::Sources))
                | (Place::Operator(k), Some(Family::Operators))
                | (Place::Sink(k), Some(Family::Sinks))
                | (Place::Window(k), None) => Some(k),
                _ => None,
            })
            .collect()
    };
    for family in [Family::Sources, Family::Operators, Family::Sinks] {
        assert_eq!(described(Some(family)), family.types(), "{}", family.key());
    }
    assert_eq!(described(None), WindowSpec::TYPES, "windows");
    let tables: Vec<&str> = sections
        .iter()
        .filter_map(|s| match s.place {
            Place::Table(name) => Some(name),
            _ => None,
        })
        .collect();
    let top = sections.iter().find(|s| s.place == Place::Top).unwrap();
    for option in &top.options {
        if let Kind::Table(name) = option.kind {
            assert!(tables.contains(&name), "[{name}] has no section");
        }
    }
}

#[test]
fn minimal_files_of_every_section_are_valid_for_the_reader_and_the_schema() {
    let schema = json_schema();
    for section in describe() {
        let text = file(&section, Change::None);
        if let Err(errors) = parse(&text) {
            panic!(
                "{}: the file of its required options does not parse:\n{text}\n{errors}",
                section.place.title()
            );
        }
        let problems = schema_problems(&schema, &text);
        assert!(
            problems.is_empty(),
            "{}: {text}\n{problems:?}",
            section.place.title()
        );
    }
}

#[test]
fn leaving_out_a_required_option_is_an_error_at_it() {
    let schema = json_schema();
    for section in describe() {
        for option in section.options.iter().filter(|o| o.required()) {
            let path = format!("{}{}", prefix(section.place), option.name);
            let text = file(&section, Change::Drop(option.name));
            let errors = parse(&text).expect_err(&text).0;
            assert!(
                errors.iter().any(|e| concerns(&e.field, &path)),
                "no error at {path} for:\n{text}\n{}",
                ConfigErrors(errors.clone())
            );
            assert!(
                !schema_problems(&schema, &text).is_empty(),
                "the schema takes a file without {path}:\n{text}"
            );
        }
    }
}

#[test]
fn every_described_option_is_read_a_wrong_type_is_an_error_at_it() {
    let schema = json_schema();
    for section in describe() {
        for option in section.options.iter().filter(|o| o.name != "type") {
            let path = format!("{}{}", prefix(section.place), option.name);
            let text = file(&section, Change::Set(option.name, "[[1]]"));
            let errors = parse(&text).expect_err(&text).0;
            assert!(
                errors
                    .iter()
                    .any(|e| concerns(&e.field, &path) && !e.message.contains("unknown field")),
                "no error at {path} for:\n{text}\n{}",
                ConfigErrors(errors.clone())
            );
            assert!(
                !schema_problems(&schema, &text).is_empty(),
                "the schema takes a wrong type at {path}:\n{text}"
            );
        }
    }
}

#[test]
fn unknown_keys_are_errors_in_every_section() {
    let schema = json_schema();
    for section in describe() {
        let path = format!("{}bogus_key", prefix(section.place));
        let text = file(&section, Change::Set("bogus_key", "1"));
        let errors = parse(&text).expect_err(&text).0;
        assert!(
            errors
                .iter()
                .any(|e| e.field == path && e.message.contains("unknown field")),
            "{path}: {}",
            ConfigErrors(errors.clone())
        );
        assert!(
            schema_problems(&schema, &text)
                .iter()
                .any(|p| p.ends_with("bogus_key: unknown key")),
            "the schema takes {path}:\n{text}"
        );
    }
}

#[test]
fn described_defaults_are_what_the_reader_gives_when_an_option_is_left_out() {
    let schema = json_schema();
    for section in describe() {
        let implicit = parse(&file(&section, Change::None)).unwrap();
        for option in &section.options {
            let DefaultValue::Value(default) = &option.default else {
                continue;
            };
            let value = toml(default);
            let text = file(&section, Change::Set(option.name, &value));
            let explicit = parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
            assert_eq!(
                explicit,
                implicit,
                "{}: `{} = {value}` is not what the reader gives without it",
                section.place.title(),
                option.name
            );
            let problems = schema_problems(&schema, &text);
            assert!(problems.is_empty(), "{text}\n{problems:?}");
        }
    }
}

#[test]
fn every_aggregate_form_parses() {
    for form in aggregate_forms() {
        assert!(
            form.form.parse::<AggregateSpec>().is_ok(),
            "{} does not parse",
            form.form
        );
        assert!(matches(&aggregate_pattern(), form.form), "{}", form.form);
    }
}

// ----- patterns against the parsers -----

#[test]
fn value_patterns_take_what_the_reader_takes() {
    let durations = [
        "0s",
        "50ms",
        "1m30s",
        "1h2m3s4ms",
        " 2 s ",
        "250us",
        "1500ns",
        "7d",
        "1m 30s",
    ];
    for text in durations {
        assert!(parse_duration(text).is_ok(), "{text}");
        assert!(matches(&duration_pattern(), text), "duration {text:?}");
        let every = format!("every {text}");
        assert!(matches(&fsync_pattern(), &every), "fsync {every:?}");
    }
    for text in ["", "5", "5 sec", "s", "1.5s", "-1s", "5S"] {
        assert!(parse_duration(text).is_err(), "{text}");
        assert!(!matches(&duration_pattern(), text), "duration {text:?}");
    }
    for text in ["always", "never", " every 10ms "] {
        assert!(matches(&fsync_pattern(), text), "{text}");
    }
    for text in ["every", "every10ms", "sometimes", "every 10"] {
        assert!(!matches(&fsync_pattern(), text), "{text}");
    }
    for text in ["64MiB", "1024", "10 MB", "1B", "1TiB", " 8KiB "] {
        assert!(parse_size(text).is_ok(), "{text}");
        assert!(matches(&size_pattern(), text), "size {text:?}");
    }
    for text in ["64mib", "MiB", "1.5GiB", "-1", "64 MiBs"] {
        assert!(parse_size(text).is_err(), "{text}");
        assert!(!matches(&size_pattern(), text), "size {text:?}");
    }
    for text in [
        "127.0.0.1:9898",
        "0.0.0.0:0",
        "[::1]:8080",
        "[fe80::1%2]:80",
    ] {
        assert!(text.parse::<std::net::SocketAddr>().is_ok(), "{text}");
        assert!(matches(&address_pattern(), text), "address {text:?}");
    }
    for text in ["localhost:8080", "127.0.0.1", ":8080", "::1:8080"] {
        assert!(text.parse::<std::net::SocketAddr>().is_err(), "{text}");
        assert!(!matches(&address_pattern(), text), "address {text:?}");
    }
}

#[test]
fn the_aggregate_pattern_takes_what_the_parser_takes() {
    let good = [
        "count",
        "count as n",
        "sum(value)",
        "  max( _x1 )   as   m_2 ",
        "mean(price.usd)",
        "sum(bytes-in)",
        "distinct(user)",
        "quantile(latency, 0.99)",
        "quantile(latency, 1)",
        "quantile(latency, .5) as median",
        "p50(v)",
        "p999(v)",
        "ewma(v, 30s)",
        "ewma(v, 1m30s) as smooth",
        "sum (value)",
        "sum(value)as total",
    ];
    for text in good {
        assert!(text.parse::<AggregateSpec>().is_ok(), "{text}");
        assert!(matches(&aggregate_pattern(), text), "{text:?}");
    }
    let bad = [
        "",
        "avg(value)",
        "count(value)",
        "sum",
        "sum()",
        "sum(value",
        "sum(1x)",
        "quantile(latency)",
        "ewma(v)",
        "ewma(v, 30)",
        "sum(value) total",
        "sum(value) as 1x",
        "max(v, 3)",
    ];
    for text in bad {
        assert!(text.parse::<AggregateSpec>().is_err(), "{text}");
        assert!(!matches(&aggregate_pattern(), text), "{text:?}");
    }
}

// ----- examples and negative cases against the schema -----

#[test]
fn every_example_validates_against_the_json_schema() {
    let schema = json_schema();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let problems = schema_problems(&schema, &text);
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "examples/*.toml not found");
}

#[test]
fn the_schema_rejects_unknown_options_wrong_types_and_bad_values() {
    let schema = json_schema();
    let base = std::fs::read_to_string(repo().join("examples/quickstart.toml")).unwrap();
    assert!(schema_problems(&schema, &base).is_empty());
    let cases = [
        (
            "[log]",
            "[log]\nsegment_szie = \"1MiB\"",
            "log.segment_szie: unknown key",
        ),
        ("partitions = 4", "partitions = \"four\"", "log.partitions"),
        (
            "out_of_orderness = \"2s\"",
            "out_of_orderness = \"2\"",
            "pipeline.out_of_orderness",
        ),
        (
            "fsync = \"every 10ms\"",
            "fsync = \"sometimes\"",
            "log.fsync",
        ),
        (
            "type = \"generator\"",
            "type = \"generater\"",
            "sources.gen.type",
        ),
        (
            "keys = 100_000",
            "keys = 100_000\npaths = [\"x\"]",
            "sources.gen.paths: unknown key",
        ),
        (
            "\"mean(value)\"]",
            "\"avg(value)\"]",
            "pipeline.aggregates[2]",
        ),
        (
            "size = \"1s\" }",
            "size = \"1s\", slide = \"1s\" }",
            "pipeline.window.slide: unknown key",
        ),
        ("path = \"quickstart.db\"", "path = 1", "sinks.results.path"),
        (
            "address = \"127.0.0.1:9898\"",
            "address = \"localhost:9898\"",
            "metrics.address",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        assert!(parse(&text).is_err(), "the reader takes {to}");
        let problems = schema_problems(&schema, &text);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!(".{expected}"))),
            "{to}: expected a problem at {expected}, got {problems:#?}"
        );
    }
}

// ----- the committed files -----

/// Checks that the committed file at `relative` (from the repository's root) is
/// `generated`, or rewrites it with `LUNGFISH_BLESS=1`.
fn check_committed(relative: &str, generated: &str, command: &str) {
    let path = repo().join(relative);
    if std::env::var("LUNGFISH_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{relative} is not what the code generates. Regenerate it with\n  \
         LUNGFISH_BLESS=1 cargo test -p lungfish --lib config::schema\n\
         (or `cargo run -p lungfish-cli -- config {command} > {relative}`) and commit it."
    );
}

#[test]
fn the_committed_markdown_reference_is_current() {
    check_committed("docs/reference/config.md", &markdown(), "reference");
}

#[test]
fn the_committed_json_schema_is_current() {
    check_committed(
        "docs/reference/pipeline.schema.json",
        &json_schema_text(),
        "schema",
    );
}

#[test]
fn the_schema_is_draft_07_with_descriptions_and_defaults() {
    let schema = json_schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let log = &schema["definitions"]["log"]["properties"];
    assert_eq!(log["segment_size"]["default"], "128MiB");
    assert_eq!(log["fsync"]["default"], "every 10ms");
    let pipeline = &schema["definitions"]["pipeline"]["properties"];
    assert_eq!(
        pipeline["checkpoint_interval"]["default"],
        crate::config::units::format_duration(Duration::from_secs(5))
    );
    for section in describe() {
        for option in &section.options {
            assert!(!option.meaning.is_empty(), "{}", option.name);
        }
        assert!(!section.about.is_empty());
    }
}
