//! Tests of pipeline files: the typed result, defaults, and every kind of error with its
//! location.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FULL_EXAMPLE: &str = r#"name = "quickstart"
data_dir = "lungfish-data"

[sources.gen]
type = "generator"
count = 5_000_000
rate = "unlimited"
keys = 100_000
distribution = "zipf"
zipf_exponent = 1.0
disorder = "2s"
malformed = 0.0
seed = 42
start_time = 1767225600000
events_per_second = 100_000

[sources.files]
type = "file"
paths = ["data/*.jsonl", "more.jsonl"]

[log]
partitions = 4
segment_size = "128MiB"
fsync = "every 10ms"
max_batch_size = "8MiB"
retention_size = "1GiB"
retention_age = "7d"
max_size = "4GiB"
when_full = "delete_oldest"

[pipeline]
key = "user"
time = "ts"
id = "id"
out_of_orderness = "2s"
shards = 0
batch_max_events = 8192
batch_max_age = "50ms"
max_event_size = "64KiB"
window = { type = "tumbling", size = "1s" }
aggregates = ["count", "sum(value)", "mean(value)"]

[sinks.results]
type = "sqlite"
path = "quickstart.db"
table = "windows"
batch_max_rows = 10000
batch_max_age = "100ms"
synchronous = "full"

[sinks.copy]
type = "file"
path = "windows.jsonl"
batch_max_rows = 10000
batch_max_age = "100ms"

[sinks.console]
type = "stdout"

[metrics]
address = "127.0.0.1:9898"
"#;

/// One source, a window, aggregates and one sink: everything else defaults.
const MINIMAL: &str = r#"[sources.gen]
type = "generator"

[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]

[sinks.out]
type = "stdout"
"#;

fn origin() -> &'static Path {
    Path::new("pipelines/test.toml")
}

fn parse(text: &str) -> Result<PipelineConfig, ConfigErrors> {
    PipelineConfig::parse(text, origin())
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors.0,
    }
}

/// The only error of `text`.
fn single(text: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    errors.into_iter().next().unwrap()
}

/// The 1-based line and column where `needle` first occurs in `text` (columns in chars).
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

/// Asserts that `error` is at the first occurrence of `needle`, names `field`, and that its
/// message contains `message`.
fn assert_error(text: &str, error: &ConfigError, needle: &str, field: &str, message: &str) {
    assert_eq!(
        (error.line, error.column),
        position(text, needle),
        "{error}"
    );
    assert_eq!(error.field, field, "{error}");
    assert!(
        error.message.contains(message),
        "{error}\nexpected to contain: {message}"
    );
    assert_eq!(error.file, origin());
}

/// `MINIMAL` with `extra` appended (TOML allows reopening nothing, so `extra` adds sections).
fn minimal_with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

// ----- the typed result -----

#[test]
fn full_example_parses_to_the_expected_structs() {
    let config = parse(FULL_EXAMPLE).unwrap();
    assert_eq!(config.name, "quickstart");
    assert_eq!(config.data_dir, PathBuf::from("lungfish-data"));

    assert_eq!(config.sources.len(), 2);
    assert_eq!(config.sources[0].name, "gen");
    assert_eq!(
        config.sources[0].config,
        SourceConfig::Generator(GeneratorConfig {
            count: Some(5_000_000),
            duration: None,
            rate: Rate::Unlimited,
            keys: 100_000,
            distribution: KeyDistribution::Zipf,
            zipf_exponent: 1.0,
            hot_share: 0.5,
            disorder: Duration::from_secs(2),
            malformed: 0.0,
            seed: 42,
            start_time: 1_767_225_600_000,
            events_per_second: 100_000,
        })
    );
    assert_eq!(config.sources[1].name, "files");
    assert_eq!(
        config.sources[1].config,
        SourceConfig::File(FileSourceConfig::new(["data/*.jsonl", "more.jsonl"]))
    );

    assert_eq!(
        config.log,
        LogSettings {
            partitions: 4,
            segment_size: 128 * 1024 * 1024,
            fsync: FsyncPolicy::Every(Duration::from_millis(10)),
            max_batch_size: 8 * 1024 * 1024,
            retention_size: Some(1 << 30),
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_size: Some(4 << 30),
            when_full: WhenFull::DeleteOldest,
        }
    );

    let p = &config.pipeline;
    assert_eq!(
        (p.key.as_str(), p.time.as_str(), p.id.as_str()),
        ("user", "ts", "id")
    );
    assert_eq!(p.out_of_orderness, Duration::from_secs(2));
    assert_eq!(p.shards, 0);
    assert_eq!(p.batch_max_events, 8192);
    assert_eq!(p.batch_max_age, Duration::from_millis(50));
    assert_eq!(p.max_event_size, 64 * 1024);
    assert_eq!(
        p.window,
        WindowSpec::Tumbling {
            size: Duration::from_secs(1)
        }
    );
    assert_eq!(
        p.aggregates,
        vec![
            AggregateSpec {
                func: AggFunc::Count,
                field: None,
                column: "count".to_owned()
            },
            AggregateSpec {
                func: AggFunc::Sum,
                field: Some("value".to_owned()),
                column: "sum_value".to_owned()
            },
            AggregateSpec {
                func: AggFunc::Mean,
                field: Some("value".to_owned()),
                column: "mean_value".to_owned()
            },
        ]
    );
    assert_eq!(config.number_fields(), vec!["value".to_owned()]);

    let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["results", "copy", "console"]);
    assert_eq!(
        config.sinks[0].config,
        SinkConfig::Sqlite(SqliteSinkConfig {
            path: PathBuf::from("quickstart.db"),
            table: "windows".to_owned(),
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
            synchronous: SqliteSync::Full,
            write_timeout: Duration::from_secs(30),
            write_behind: None,
        })
    );
    assert_eq!(
        config.sinks[1].config,
        SinkConfig::File(FileSinkConfig {
            path: PathBuf::from("windows.jsonl"),
            batch_max_rows: 10_000,
            batch_max_age: Duration::from_millis(100),
        })
    );
    assert_eq!(config.sinks[2].config, SinkConfig::Stdout);
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            address: "127.0.0.1:9898".parse::<SocketAddr>().unwrap()
        })
    );
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.name, "test", "the name defaults to the file's stem");
    assert_eq!(config.data_dir, PathBuf::from("lungfish-data"));
    let SourceConfig::Generator(generator) = &config.sources[0].config else {
        panic!("not a generator: {:?}", config.sources[0]);
    };
    assert_eq!(generator.count, None);
    assert_eq!(generator.duration, None);
    assert_eq!(generator.rate, Rate::Unlimited);
    assert_eq!(generator.keys, 1000);
    assert_eq!(generator.distribution, KeyDistribution::Uniform);
    assert_eq!(generator.zipf_exponent, 1.0);
    assert_eq!(generator.disorder, Duration::ZERO);
    assert_eq!(generator.malformed, 0.0);
    assert_eq!(generator.seed, 0);
    assert_eq!(generator.start_time, 1_767_225_600_000);
    assert_eq!(generator.events_per_second, 100_000);

    assert_eq!(config.log.partitions, 4);
    assert_eq!(config.log.segment_size, 128 << 20);
    assert_eq!(
        config.log.fsync,
        FsyncPolicy::Every(Duration::from_millis(10))
    );
    assert_eq!(config.log.max_batch_size, 8 << 20);

    let p = &config.pipeline;
    assert_eq!(
        (p.key.as_str(), p.time.as_str(), p.id.as_str()),
        ("user", "ts", "id")
    );
    assert_eq!(p.out_of_orderness, Duration::from_secs(2));
    assert_eq!(p.shards, 0);
    assert_eq!(p.batch_max_events, 8192);
    assert_eq!(p.batch_max_age, Duration::from_millis(50));
    assert_eq!(p.max_event_size, 64 << 10);
    assert_eq!(config.metrics, None);
    assert!(config.number_fields().is_empty());

    // The Rust defaults are the file defaults.
    assert_eq!(config.log, LogSettings::default());
    assert_eq!(config.pipeline, ProcessingConfig::default());
    assert_eq!(
        config.sources[0].config,
        SourceConfig::Generator(GeneratorConfig::default())
    );
}

#[test]
fn sink_and_metrics_defaults() {
    let text = r#"[sources.gen]
type = "generator"
[pipeline]
window = { type = "sliding", size = "10s", slide = "1s" }
aggregates = ["count"]
[sinks.db]
type = "sqlite"
path = "out.db"
[sinks.file]
type = "file"
path = "out.jsonl"
[metrics]
"#;
    let config = parse(text).unwrap();
    assert_eq!(
        config.sinks[0].config,
        SinkConfig::Sqlite(SqliteSinkConfig::new("out.db"))
    );
    let SinkConfig::Sqlite(sqlite) = &config.sinks[0].config else {
        unreachable!()
    };
    assert_eq!(sqlite.table, "windows");
    assert_eq!(sqlite.batch_max_rows, 10_000);
    assert_eq!(sqlite.batch_max_age, Duration::from_millis(100));
    assert_eq!(sqlite.synchronous, SqliteSync::Full);
    assert_eq!(
        config.sinks[1].config,
        SinkConfig::File(FileSinkConfig::new("out.jsonl"))
    );
    assert_eq!(config.metrics, Some(MetricsConfig::default()));
    assert_eq!(
        config.pipeline.window,
        WindowSpec::Sliding {
            size: Duration::from_secs(10),
            slide: Duration::from_secs(1)
        }
    );
}

#[test]
fn events_per_second_defaults_to_a_numeric_rate() {
    let text = MINIMAL.replace("type = \"generator\"", "type = \"generator\"\nrate = 5000");
    let config = parse(&text).unwrap();
    let SourceConfig::Generator(generator) = &config.sources[0].config else {
        unreachable!()
    };
    assert_eq!(generator.rate, Rate::PerSecond(5000));
    assert_eq!(generator.events_per_second, 5000);
}

#[test]
fn other_spellings_are_accepted() {
    let text = r#"name = "alt"
sources.gen.type = "generator"
sources.gen.duration = "1m30s"
[log]
fsync = "always"
segment_size = 1048576
max_batch_size = "64 KiB"
[pipeline]
max_event_size = 1000
aggregates = ["count as n", "max(a.b-c)", "min(x) as smallest", "sum(a.b-c)"]
[pipeline.window]
type = "tumbling"
size = "250ms"
[sinks.db]
type = "sqlite"
path = "x.db"
synchronous = "normal"
"#;
    let config = parse(text).unwrap();
    let SourceConfig::Generator(generator) = &config.sources[0].config else {
        unreachable!()
    };
    assert_eq!(generator.duration, Some(Duration::from_secs(90)));
    assert_eq!(config.log.fsync, FsyncPolicy::Always);
    assert_eq!(config.log.segment_size, 1 << 20);
    assert_eq!(config.log.max_batch_size, 64 << 10);
    assert_eq!(config.pipeline.max_event_size, 1000);
    assert_eq!(config.pipeline.window.size(), Duration::from_millis(250));
    let columns: Vec<&str> = config
        .pipeline
        .aggregates
        .iter()
        .map(|a| a.column.as_str())
        .collect();
    assert_eq!(columns, ["n", "max_a_b_c", "smallest", "sum_a_b_c"]);
    assert_eq!(config.number_fields(), ["a.b-c", "x"]);
    let SinkConfig::Sqlite(sqlite) = &config.sinks[0].config else {
        unreachable!()
    };
    assert_eq!(sqlite.synchronous, SqliteSync::Normal);
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quick.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    assert_eq!(config.name, "quick");

    std::fs::write(&path, format!("{MINIMAL}[log]\npartitions = 0\n")).unwrap();
    let errors = PipelineConfig::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.0[0].file, path);
    assert_eq!((errors.0[0].line, errors.0[0].column), (11, 14));
}

#[test]
fn load_reports_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let errors = PipelineConfig::load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    let error = &errors.0[0];
    assert_eq!((error.line, error.column), (0, 0));
    assert!(
        error.message.starts_with("cannot read the pipeline file"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("{}: {}", path.display(), error.message),
        "no line, no field"
    );
}

// ----- errors, one kind at a time -----

#[test]
fn typo_is_reported_with_location_and_suggestion() {
    let text = minimal_with("\n[log]\npartitions = 8\nsegment_szie = \"64MiB\"\n");
    let error = single(&text);
    assert_eq!(error.line, 13);
    assert_eq!(error.column, 1);
    assert_eq!(error.field, "log.segment_szie");
    assert_eq!(
        error.message,
        "unknown field `segment_szie`, did you mean `segment_size`?"
    );
    assert_eq!(
        error.to_string(),
        "pipelines/test.toml:13:1: log.segment_szie: unknown field `segment_szie`, did you mean `segment_size`?"
    );
}

#[test]
fn unknown_field_without_a_close_match_lists_the_known_fields() {
    let text = minimal_with("[metrics]\ncolour = \"blue\"\n");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "colour",
        "metrics.colour",
        "unknown field `colour`; known fields: address",
    );

    let text = format!("verbose = true\n{MINIMAL}");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "verbose",
        "verbose",
        "known fields: name, data_dir, sources, log",
    );
}

#[test]
fn unknown_fields_are_found_in_every_kind_of_table() {
    let text = r#"naem = "x"
[sources.gen]
type = "generator"
rates = 10
[sources.f]
type = "file"
paths = ["a"]
path = "b"
[pipeline]
windw = 1
window = { type = "tumbling", size = "1s", sise = "2s" }
aggregates = ["count"]
[sinks.db]
type = "sqlite"
path = "x.db"
tabel = "t"
[sinks.out]
type = "stdout"
path = "nowhere"
"#;
    let found: Vec<(String, String)> = errors(text)
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect();
    let expected = [
        ("naem", "did you mean `name`?"),
        ("sources.gen.rates", "did you mean `rate`?"),
        ("sources.f.path", "did you mean `paths`?"),
        ("pipeline.windw", "did you mean `window`?"),
        ("pipeline.window.sise", "did you mean `size`?"),
        ("sinks.db.tabel", "did you mean `table`?"),
        ("sinks.out.path", "unknown field `path`; known fields: type"),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for ((field, message), (expected_field, expected_message)) in found.iter().zip(expected) {
        assert_eq!(field, expected_field);
        assert!(message.contains(expected_message), "{field}: {message}");
    }
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    let cases = [
        (
            "[log]\npartitions = \"four\"\n",
            "\"four\"",
            "log.partitions",
            "expected an integer, found a string",
        ),
        (
            "[log]\npartitions = -1\n",
            "-1",
            "log.partitions",
            "must not be negative",
        ),
        (
            "[log]\npartitions = 5000000000\n",
            "5000000000",
            "log.partitions",
            "5000000000 is too large",
        ),
        (
            "[log]\nsegment_size = 1.5\n",
            "1.5",
            "log.segment_size",
            "expected a size such as \"64MiB\"",
        ),
        (
            "[log]\nfsync = true\n",
            "true",
            "log.fsync",
            "expected \"always\", \"never\" or \"every <duration>\"",
        ),
        (
            "[log]\nfsync = \"sometimes\"\n",
            "\"sometimes\"",
            "log.fsync",
            "found \"sometimes\"",
        ),
        (
            "[metrics]\naddress = 9898\n",
            "9898",
            "metrics.address",
            "expected a string, found an integer",
        ),
        (
            "[metrics]\naddress = \"localhost:9898\"\n",
            "\"localhost:9898\"",
            "metrics.address",
            "`localhost:9898` is not a socket address",
        ),
        (
            "log = 4\n",
            "4",
            "log",
            "expected a table, found an integer",
        ),
        (
            "[[metrics]]\n",
            "[[metrics]]",
            "metrics",
            "expected a table, found an array of tables",
        ),
    ];
    for (extra, needle, field, message) in cases {
        // Top-level keys must come before the first table.
        let text = if extra.starts_with('[') {
            minimal_with(extra)
        } else {
            format!("{extra}{MINIMAL}")
        };
        let error = single(&text);
        assert_error(&text, &error, needle, field, message);
    }
}

#[test]
fn wrong_types_in_sources_and_pipeline() {
    let text = r#"[sources.gen]
type = "generator"
keys = "many"
distribution = "zipfian"
zipf_exponent = "1"
malformed = true
seed = -3
start_time = "now"
rate = "1000"
[sources.f]
type = "file"
paths = "a.jsonl"
[sources.g]
type = "file"
paths = ["a.jsonl", 7]
[pipeline]
key = 1
shards = 1.0
window = "1s"
aggregates = "count"
[sinks.db]
type = "sqlite"
path = "x.db"
synchronous = "off"
batch_max_rows = "many"
"#;
    let expected = [
        (
            "\"many\"",
            "sources.gen.keys",
            "expected an integer, found a string",
        ),
        (
            "\"zipfian\"",
            "sources.gen.distribution",
            "expected \"uniform\" or \"zipf\" or \"hot\", found \"zipfian\"",
        ),
        (
            "\"1\"",
            "sources.gen.zipf_exponent",
            "expected a number, found a string",
        ),
        (
            "true",
            "sources.gen.malformed",
            "expected a number, found a boolean",
        ),
        ("-3", "sources.gen.seed", "must not be negative"),
        ("\"now\"", "sources.gen.start_time", "expected an integer"),
        (
            "\"1000\"",
            "sources.gen.rate",
            "without quotes: rate = 1000",
        ),
        (
            "\"a.jsonl\"\n",
            "sources.f.paths",
            "expected an array such as [\"events/*.jsonl\"], found a string",
        ),
        (
            "7]",
            "sources.g.paths[1]",
            "expected a string, found an integer",
        ),
        ("1\n", "pipeline.key", "expected a string, found an integer"),
        (
            "1.0",
            "pipeline.shards",
            "expected an integer, found a float",
        ),
        (
            "\"1s\"",
            "pipeline.window",
            "expected a table, found a string",
        ),
        (
            "\"count\"",
            "pipeline.aggregates",
            "expected an array such as [\"count\", \"sum(value)\"]",
        ),
        (
            "\"off\"",
            "sinks.db.synchronous",
            "expected \"full\" or \"normal\", found \"off\"",
        ),
        (
            "\"many\"\n",
            "sinks.db.batch_max_rows",
            "expected an integer, found a string",
        ),
    ];
    let found = errors(text);
    assert_eq!(
        found.len(),
        expected.len(),
        "{}",
        ConfigErrors(found.clone())
    );
    // Needles may repeat; search from the previous error's position on.
    let mut from = 0;
    for (error, (needle, field, message)) in found.iter().zip(expected) {
        let offset = from + text[from..].find(needle).unwrap();
        assert_eq!((error.line, error.column), pos_at(text, offset), "{error}");
        assert_eq!(error.field, field, "{error}");
        assert!(error.message.contains(message), "{error}");
        from = offset + 1;
    }
}

/// Line and column of a byte offset.
fn pos_at(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        text[line_start..offset].chars().count() + 1,
    )
}

#[test]
fn bad_units_are_reported_with_a_specific_message() {
    let text = minimal_with(
        "[log]\nsegment_size = \"64MB_\"\nfsync = \"every 10\"\n\
         [metrics]\naddress = \"127.0.0.1:1\"\n",
    )
    .replace("size = \"1s\"", "size = \"1 sec\"")
    .replace("type = \"generator\"", "type = \"generator\"\ndisorder = 2");
    let found = errors(&text);
    assert_eq!(found.len(), 4, "{}", ConfigErrors(found.clone()));
    assert_error(
        &text,
        &found[0],
        "2\n",
        "sources.gen.disorder",
        "expected a duration string with a unit, such as \"2s\" or \"2ms\", found the integer 2",
    );
    assert_error(
        &text,
        &found[1],
        "\"1 sec\"",
        "pipeline.window.size",
        "`1 sec` is not a duration: unknown unit `sec`",
    );
    assert_error(
        &text,
        &found[2],
        "\"64MB_\"",
        "log.segment_size",
        "`64MB_` is not a size: expected a number followed by B, KiB, MiB, GiB, TiB, KB, MB or GB",
    );
    assert_error(
        &text,
        &found[3],
        "\"every 10\"",
        "log.fsync",
        "`10` is not a duration: add a unit",
    );
}

#[test]
fn missing_required_fields_point_at_their_table() {
    let text = r#"[sources.gen]
[sources.f]
type = "file"
[pipeline]
key = "k"
[sinks.db]
type = "sqlite"
[sinks.jsonl]
type = "file"
"#;
    let found = errors(text);
    let summary: Vec<(usize, &str, &str)> = found
        .iter()
        .map(|e| (e.line, e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                "sources.gen.type",
                "missing required field `type`; known source types: generator, file, http, kafka"
            ),
            (
                2,
                "sources.f.paths",
                "missing required field `paths`, e.g. paths = [\"events/*.jsonl\"]"
            ),
            (
                4,
                "pipeline.window",
                "missing required field `window`, e.g. window = { type = \"tumbling\", size = \"1s\" }"
            ),
            (
                4,
                "pipeline.aggregates",
                "missing required field `aggregates`, e.g. aggregates = [\"count\"]"
            ),
            (
                6,
                "sinks.db.path",
                "missing required field `path`, e.g. path = \"results.db\""
            ),
            (
                8,
                "sinks.jsonl.path",
                "missing required field `path`, e.g. path = \"windows.jsonl\""
            ),
        ]
    );
    assert!(found.iter().all(|e| e.column == 1));
}

#[test]
fn missing_window_parts_and_sections() {
    let text = MINIMAL.replace(
        "{ type = \"tumbling\", size = \"1s\" }",
        "{ type = \"sliding\", size = \"10s\" }",
    );
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "{ type",
        "pipeline.window.slide",
        "missing required field `slide`",
    );

    let text = MINIMAL.replace("type = \"tumbling\", ", "");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "{ size",
        "pipeline.window.type",
        "missing required field `type`; known window types: tumbling, sliding",
    );

    let text = "[sources.gen]\ntype = \"generator\"\n\n[sinks.out]\ntype = \"stdout\"\n";
    let error = single(text);
    assert_eq!((error.line, error.column), (1, 1));
    assert_eq!(error.field, "pipeline");
    assert!(error.message.contains("missing required table [pipeline]"));
}

#[test]
fn no_source_and_no_sink() {
    let text =
        "[pipeline]\nwindow = { type = \"tumbling\", size = \"1s\" }\naggregates = [\"count\"]\n";
    let found = errors(text);
    assert_eq!(found.len(), 2, "{}", ConfigErrors(found.clone()));
    assert_eq!(
        (found[0].line, found[0].column, found[0].field.as_str()),
        (1, 1, "sources")
    );
    assert!(
        found[0]
            .message
            .starts_with("at least one source is required")
    );
    assert_eq!(
        (found[1].line, found[1].column, found[1].field.as_str()),
        (1, 1, "sinks")
    );
    assert!(
        found[1]
            .message
            .starts_with("at least one sink is required")
    );

    // Empty tables: the errors point at them.
    let text = format!("[sources]\n{text}[sinks]\n");
    let found = errors(&text);
    assert_eq!(found.len(), 2);
    assert_error(
        &text,
        &found[0],
        "[sources]",
        "sources",
        "at least one source is required",
    );
    assert_error(
        &text,
        &found[1],
        "[sinks]",
        "sinks",
        "at least one sink is required",
    );
}

#[test]
fn unknown_types_list_the_known_ones() {
    let text = MINIMAL
        .replace("\"generator\"", "\"kinesis\"")
        .replace("\"stdout\"", "\"stdot\"")
        .replace("\"tumbling\"", "\"hopping\"");
    let found = errors(&text);
    assert_eq!(found.len(), 3, "{}", ConfigErrors(found.clone()));
    assert_error(
        &text,
        &found[0],
        "\"kinesis\"",
        "sources.gen.type",
        "unknown source type `kinesis`; known types: generator, file",
    );
    assert_error(
        &text,
        &found[1],
        "\"hopping\"",
        "pipeline.window.type",
        "unknown window type `hopping`; known types: tumbling, sliding",
    );
    assert_error(
        &text,
        &found[2],
        "\"stdot\"",
        "sinks.out.type",
        "unknown sink type `stdot`, did you mean `stdout`? Known types: sqlite, file, stdout",
    );
}

#[test]
fn bad_values_are_reported() {
    let text = r#"name = ""
[sources.gen]
type = "generator"
rate = 0
keys = 0
zipf_exponent = 0
malformed = 1.5
count = 0
events_per_second = 0
[sources.f]
type = "file"
paths = []
[log]
partitions = 2000
segment_size = "512KiB"
fsync = "every 0s"
max_batch_size = "1KiB"
[pipeline]
key = ""
shards = 300
batch_max_events = 0
batch_max_age = "0s"
max_event_size = 0
window = { type = "tumbling", size = "1500us" }
aggregates = []
[sinks.db]
type = "sqlite"
path = ""
table = "1table"
batch_max_rows = 0
batch_max_age = "0ms"
"#;
    let expected = [
        ("\"\"", "name", "must not be empty"),
        (
            "= 0\n",
            "sources.gen.rate",
            "must be greater than 0 (or \"unlimited\")",
        ),
        ("= 0\n", "sources.gen.keys", "must be at least 1"),
        (
            "= 0\n",
            "sources.gen.zipf_exponent",
            "must be a number greater than 0",
        ),
        ("1.5", "sources.gen.malformed", "must be between 0 and 1"),
        (
            "= 0\n",
            "sources.gen.count",
            "must be at least 1 (leave it out to run forever)",
        ),
        (
            "= 0\n",
            "sources.gen.events_per_second",
            "must be at least 1",
        ),
        (
            "[]",
            "sources.f.paths",
            "must list at least one path or glob pattern",
        ),
        (
            "2000",
            "log.partitions",
            "must be between 1 and 1024, got 2000",
        ),
        (
            "\"512KiB\"",
            "log.segment_size",
            "must be at least 1MiB, got 512KiB",
        ),
        (
            "\"every 0s\"",
            "log.fsync",
            "the interval must be greater than 0",
        ),
        (
            "\"1KiB\"",
            "log.max_batch_size",
            "must be at least 64KiB, got 1KiB",
        ),
        ("\"\"", "pipeline.key", "must not be empty"),
        (
            "300",
            "pipeline.shards",
            "must be at most 256 (0 = one per core), got 300",
        ),
        ("= 0\n", "pipeline.batch_max_events", "must be at least 1"),
        ("\"0s\"", "pipeline.batch_max_age", "must be greater than 0"),
        ("= 0\n", "pipeline.max_event_size", "must be greater than 0"),
        (
            "\"1500us\"",
            "pipeline.window.size",
            "must be a whole number of milliseconds",
        ),
        (
            "[]",
            "pipeline.aggregates",
            "must list at least one aggregate",
        ),
        ("\"\"", "sinks.db.path", "must not be empty"),
        (
            "\"1table\"",
            "sinks.db.table",
            "`1table` is not a valid table name",
        ),
        ("= 0\n", "sinks.db.batch_max_rows", "must be at least 1"),
        (
            "\"0ms\"",
            "sinks.db.batch_max_age",
            "must be greater than 0",
        ),
    ];
    let found = errors(text);
    assert_eq!(
        found.len(),
        expected.len(),
        "{}",
        ConfigErrors(found.clone())
    );
    let mut from = 0;
    for (error, (needle, field, message)) in found.iter().zip(expected) {
        // `= 0` needles point at the value after `= `.
        let offset = from + text[from..].find(needle).unwrap();
        let offset = if needle.starts_with("= ") {
            offset + 2
        } else {
            offset
        };
        assert_eq!((error.line, error.column), pos_at(text, offset), "{error}");
        assert_eq!(error.field, field, "{error}");
        assert!(error.message.contains(message), "{error}");
        from = offset + 1;
    }
}

#[test]
fn count_and_duration_together() {
    let text = MINIMAL.replace(
        "type = \"generator\"",
        "type = \"generator\"\ncount = 10\nduration = \"60s\"",
    );
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"60s\"",
        "sources.gen.duration",
        "set either `count` or `duration`, not both",
    );
}

#[test]
fn sliding_window_shape() {
    let window = |w: &str| MINIMAL.replace("{ type = \"tumbling\", size = \"1s\" }", w);

    let text = window("{ type = \"sliding\", size = \"1s\", slide = \"2s\" }");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"2s\"",
        "pipeline.window.slide",
        "the slide (2s) must not be longer than the window size (1s)",
    );

    let text = window("{ type = \"sliding\", size = \"10s\", slide = \"3s\" }");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"3s\"",
        "pipeline.window.slide",
        "the window size (10s) must be a multiple of the slide (3s)",
    );

    let text = window("{ type = \"tumbling\", size = \"10s\", slide = \"1s\" }");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "slide",
        "pipeline.window.slide",
        "`slide` only applies to sliding windows",
    );

    // A slide that could not be read is reported once, not again as "longer than size".
    let text = window("{ type = \"sliding\", size = \"1s\", slide = \"2x\" }");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"2x\"",
        "pipeline.window.slide",
        "`2x` is not a duration",
    );
}

#[test]
fn aggregate_problems() {
    let text = MINIMAL.replace(
        "aggregates = [\"count\"]",
        "aggregates = [\"count\", \"avg(value)\", \"sum(value)\", 3, \"max(value) as sum_value\", \"count as KEY\", \"COUNT\", \"count as Count\"]",
    );
    let found = errors(&text);
    let summary: Vec<(&str, &str)> = found
        .iter()
        .map(|e| (e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "pipeline.aggregates[1]",
                "`avg(value)` is not an aggregate: unknown function `avg`, did you mean `mean`? \
                 Expected count, sum(F), min(F), max(F), mean(F), distinct(F), quantile(F, Q), \
                 p50(F) .. p999(F) or ewma(F, HALF_LIFE), optionally followed by `as NAME`"
            ),
            (
                "pipeline.aggregates[3]",
                "expected a string, found an integer"
            ),
            (
                "pipeline.aggregates[4]",
                "column `sum_value` is already produced by an earlier aggregate (`sum(value)`); rename one with `as NAME`"
            ),
            (
                "pipeline.aggregates[5]",
                "column `KEY` is reserved (window_start, window_end and key are in every row); rename it with `as NAME`"
            ),
            (
                "pipeline.aggregates[6]",
                "`COUNT` is not an aggregate: unknown function `COUNT`, did you mean `count`? \
                 Expected count, sum(F), min(F), max(F), mean(F), distinct(F), quantile(F, Q), \
                 p50(F) .. p999(F) or ewma(F, HALF_LIFE), optionally followed by `as NAME`"
            ),
            (
                "pipeline.aggregates[7]",
                "column `Count` is already produced by an earlier aggregate (`count`); rename one with `as NAME`"
            ),
        ]
    );
    // Element paths follow the file even after elements that could not be read.
    for error in &found {
        let i: usize = error.field["pipeline.aggregates[".len()..error.field.len() - 1]
            .parse()
            .unwrap();
        let needle = [
            "\"count\"",
            "\"avg",
            "\"sum",
            "3,",
            "\"max",
            "\"count as KEY",
            "\"COUNT",
            "\"count as Count",
        ][i];
        assert_eq!(
            (error.line, error.column),
            position(&text, needle),
            "{error}"
        );
    }
}

#[test]
fn cross_section_sizes() {
    let text = minimal_with("[log]\nsegment_size = \"4MiB\"\n");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"4MiB\"",
        "log.segment_size",
        "8MiB must not exceed log.segment_size (4MiB)",
    );

    let text = MINIMAL.replace("[pipeline]", "[pipeline]\nmax_event_size = \"8MiB\"");
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"8MiB\"",
        "pipeline.max_event_size",
        "8MiB must be smaller than log.max_batch_size (8MiB)",
    );
}

#[test]
fn five_problems_give_exactly_five_errors() {
    let text = r#"[sources.gen]
type = "generator"
rate = "fast"

[log]
segment_szie = "64MiB"

[pipeline]
window = { type = "sliding", size = "1s", slide = "2s" }
aggregates = ["count", "sum(value)", "sum(value)"]

[sinks.out]
type = "kinesis"
"#;
    let found = errors(text);
    let summary: Vec<(usize, usize, &str)> = found
        .iter()
        .map(|e| (e.line, e.column, e.field.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, 8, "sources.gen.rate"),
            (6, 1, "log.segment_szie"),
            (9, 51, "pipeline.window.slide"),
            (10, 38, "pipeline.aggregates[2]"),
            (13, 8, "sinks.out.type"),
        ]
    );
    let display = ConfigErrors(found).to_string();
    assert_eq!(display.lines().count(), 5);
    assert_eq!(
        display.lines().next().unwrap(),
        "pipelines/test.toml:3:8: sources.gen.rate: \
         expected \"unlimited\" or an integer number of events per second, found \"fast\""
    );
    assert!(
        display
            .lines()
            .last()
            .unwrap()
            .starts_with("pipelines/test.toml:13:8: sinks.out.type: unknown sink type")
    );
}

#[test]
fn syntax_errors_stop_the_pass_with_a_location() {
    let text = "[sources.gen]\ntype = \"generator\"\nrate = \n";
    let error = single(text);
    assert_eq!((error.line, error.column), (3, 8));
    assert_eq!(error.field, "");
    assert!(error.message.starts_with("invalid TOML: "), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("pipelines/test.toml:3:8: invalid TOML: ")
    );

    let text = "[log]\npartitions = 1\npartitions = 2\n";
    let error = single(text);
    assert_eq!((error.line, error.column), (3, 1));
    assert!(error.message.contains("duplicate key"), "{error}");
}

#[test]
fn columns_count_characters_and_names_are_quoted() {
    let text = MINIMAL.replace("[sources.gen]", "[sources.\"générateur\"]\nrate = \"vite\"");
    let error = single(&text);
    assert_eq!(error.field, "sources.\"générateur\".rate");
    assert_eq!((error.line, error.column), (2, 8));

    // Multi-byte characters before the value on the same line.
    let text = format!("sinks.\"é\".type = \"kinesis\"\n{MINIMAL}");
    let error = single(&text);
    assert_eq!(error.field, "sinks.\"é\".type");
    assert_eq!((error.line, error.column), (1, 18));
}

// ----- configurations built in Rust -----

#[test]
fn rust_built_configs_validate_without_locations() {
    let mut config = PipelineConfig {
        sources: vec![NamedSource {
            name: "gen".to_owned(),
            config: SourceConfig::Generator(GeneratorConfig {
                count: Some(1000),
                seed: 7,
                ..GeneratorConfig::default()
            }),
        }],
        sinks: vec![NamedSink {
            name: "db".to_owned(),
            config: SinkConfig::Sqlite(SqliteSinkConfig::new("out.db")),
        }],
        ..PipelineConfig::default()
    };
    config.pipeline.aggregates = vec![
        AggregateSpec::count(),
        AggregateSpec::new(AggFunc::Sum, Some("value")),
        AggregateSpec::new(AggFunc::Max, Some("latency")),
        AggregateSpec::new(AggFunc::Mean, Some("value")).named("avg"),
    ];
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.number_fields(), ["value", "latency"]);
    assert_eq!(
        config.pipeline.aggregates[3].to_string(),
        "mean(value) as avg"
    );

    config
        .pipeline
        .aggregates
        .push(AggregateSpec::new(AggFunc::Min, None));
    config.log.partitions = 0;
    let errors = config.validate().unwrap_err();
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "log.partitions: must be between 1 and 1024, got 0",
            "pipeline.aggregates[4]: `min` needs a field",
        ]
    );
    assert!(
        errors
            .iter()
            .all(|e| e.line == 0 && e.file.as_os_str().is_empty())
    );
}

#[test]
fn default_pipeline_lacks_only_sources_and_sinks() {
    let errors = PipelineConfig::default().validate().unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["sources", "sinks"]);
}

const HTTP_SOURCE: &str = r#"name = "edge"
[sources.api]
type = "http"
address = "0.0.0.0:8080"
max_body_size = "4MiB"
max_event_size = "2KiB"
formats = ["ndjson"]
encodings = ["zstd"]
max_connections = 100
max_inflight_bytes = "64MiB"
header_timeout = "5s"
body_timeout = "20s"
ack_timeout = "3s"
idempotency_horizon = "1h"
idempotency_max_keys = 5000
max_lag = 1_000_000
rate_limit = 2500.5
rate_limit_burst = 10000
client_header = "x-client-id"
retry_after = "3s"
[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]
[sinks.out]
type = "stdout"
"#;

#[test]
fn an_http_source_reads_every_setting() {
    let config = parse(HTTP_SOURCE).unwrap();
    let SourceConfig::Http(http) = &config.sources[0].config else {
        panic!("{:?}", config.sources[0]);
    };
    let want = HttpSourceConfig {
        address: "0.0.0.0:8080".parse().unwrap(),
        max_body_size: 4 << 20,
        max_event_size: Some(2048),
        formats: vec![BodyFormat::Ndjson],
        encodings: vec![ContentEncoding::Zstd],
        max_connections: 100,
        max_inflight_bytes: 64 << 20,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(20),
        ack_timeout: Duration::from_secs(3),
        idempotency_horizon: Duration::from_secs(3600),
        idempotency_max_keys: 5000,
        max_lag: Some(1_000_000),
        rate_limit: Some(2500.5),
        rate_limit_burst: Some(10000),
        client_header: Some("x-client-id".into()),
        retry_after: Duration::from_secs(3),
    };
    assert_eq!(http, &want);
    // Only the address is required.
    let text = "[sources.api]\ntype = \"http\"\naddress = \"127.0.0.1:9000\"\n[pipeline]\nwindow = { type = \"tumbling\", size = \"1s\" }\naggregates = [\"count\"]\n[sinks.out]\ntype = \"stdout\"\n";
    let config = parse(text).unwrap();
    assert_eq!(
        config.sources[0].config,
        SourceConfig::Http(HttpSourceConfig::new("127.0.0.1:9000".parse().unwrap()))
    );
}

#[test]
fn http_source_errors_name_their_field() {
    let text = HTTP_SOURCE.replace("formats = [\"ndjson\"]", "formats = [\"xml\"]");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"xml\"",
        "sources.api.formats[0]",
        "unknown format `xml`",
    );
    let text = HTTP_SOURCE.replace("encodings = [\"zstd\"]", "encodings = [\"br\"]");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"br\"",
        "sources.api.encodings[0]",
        "unknown encoding `br`",
    );
    let text = HTTP_SOURCE.replace(
        "max_inflight_bytes = \"64MiB\"",
        "max_inflight_bytes = \"1MiB\"",
    );
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"1MiB\"",
        "sources.api.max_inflight_bytes",
        "at least max_body_size",
    );
    let text = HTTP_SOURCE.replace("rate_limit = 2500.5", "rate_limit = -0.5");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "-0.5",
        "sources.api.rate_limit",
        "greater than 0",
    );
    let text = HTTP_SOURCE.replace(
        "client_header = \"x-client-id\"",
        "client_header = \"x client\"",
    );
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"x client\"",
        "sources.api.client_header",
        "not a valid HTTP header name",
    );
    let text = HTTP_SOURCE.replace("address = \"0.0.0.0:8080\"", "adress = \"0.0.0.0:8080\"");
    let found = errors(&text);
    assert!(
        found.iter().any(|e| e.message.contains("address")),
        "{}",
        ConfigErrors(found.clone())
    );
    let text = format!("{HTTP_SOURCE}[metrics]\naddress = \"127.0.0.1:8080\"\n");
    let e = single(&text);
    assert!(e.message.contains("also used by metrics.address"), "{e}");
}

#[test]
fn database_sinks_read_every_setting_and_need_a_url() {
    let text = r#"[sources.gen]
type = "generator"
[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]
[sinks.pg]
type = "postgres"
url_env = "DATABASE_URL"
table = "public.clicks"
columns = { key = "user_id", count = "n" }
create_table = false
batch_max_rows = 5000
batch_max_age = "1s"
pool_size = 2
statement_timeout = "5s"
[sinks.ch]
type = "clickhouse"
url = "http://127.0.0.1:8123"
"#;
    let config = parse(text).unwrap();
    let SinkConfig::Postgres(pg) = &config.sinks[0].config else {
        panic!("{:?}", config.sinks[0]);
    };
    assert_eq!(
        pg,
        &DatabaseSinkConfig {
            url: String::new(),
            url_env: Some("DATABASE_URL".into()),
            table: "public.clicks".into(),
            columns: vec![
                ("key".into(), "user_id".into()),
                ("count".into(), "n".into())
            ],
            create_table: false,
            batch_max_rows: 5000,
            batch_max_age: Duration::from_secs(1),
            pool_size: 2,
            statement_timeout: Duration::from_secs(5),
            tls: false,
            write_behind: None,
        }
    );
    assert_eq!(pg.column_name("key"), "user_id");
    assert_eq!(pg.column_name("window_start"), "window_start");
    assert_eq!(
        config.sinks[1].config,
        SinkConfig::ClickHouse(DatabaseSinkConfig::new("http://127.0.0.1:8123"))
    );
    let text = text.replace("url_env = \"DATABASE_URL\"\n", "");
    let e = single(&text);
    assert_eq!(e.field, "sinks.pg.url");
    assert!(e.message.contains("url_env"), "{e}");
}

// ----- operators -----

#[test]
fn operators_parse_in_file_order_and_set_the_number_fields() {
    let text = minimal_with(
        r#"
[operators.lookup]
type = "enrich"
url = "http://127.0.0.1:8080/lookup"
method = "post"
fields = ["weight"]
flag = "enriched"
timeout = "250ms"
cache_size = 1000
cache_ttl = "5m"
max_concurrency = 8
on_unavailable = "dead_letter"

[operators.sane]
type = "filter"
condition = "weight >= 0.5"
otherwise = "dead_letter"
"#,
    );
    let config = parse(&text).unwrap();
    let names: Vec<&str> = config.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["lookup", "sane"]);
    let OperatorConfig::Enrich(e) = &config.operators[0].config else {
        panic!("{:?}", config.operators[0]);
    };
    assert_eq!(e.method, EnrichMethod::Post);
    assert_eq!(e.timeout, Duration::from_millis(250));
    assert_eq!(e.on_unavailable, OnUnavailable::DeadLetter);
    assert_eq!((e.cache_size, e.max_concurrency), (1000, 8));
    let OperatorConfig::Filter(f) = &config.operators[1].config else {
        panic!("{:?}", config.operators[1]);
    };
    assert_eq!(f.condition.to_string(), "weight >= 0.5");
    assert_eq!(f.otherwise, crate::operator::filter::Otherwise::DeadLetter);
    // The filter reads `weight` from the enrichment, not from the JSON.
    assert!(!config.ingest_number_fields().contains(&"weight".to_owned()));
    let all = config.number_fields();
    assert!(
        all.ends_with(&["weight".to_owned(), "enriched".to_owned()]),
        "{all:?}"
    );
}

#[test]
fn operator_mistakes_are_located() {
    let text = minimal_with(
        r#"
[operators.sane]
type = "filter"
condition = "value ~ 3"
"#,
    );
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"value ~ 3\"",
        "operators.sane.condition",
        "no comparison",
    );

    let text = minimal_with(
        r#"
[operators.sane]
type = "filter"
condition = "weight > 1"

[operators.lookup]
type = "enrich"
url = "http://127.0.0.1:1/x"
fields = ["weight"]
"#,
    );
    let error = single(&text);
    assert!(
        error.message.contains("put the enrichment first"),
        "{error}"
    );

    let text = minimal_with(
        r#"
[operators.lookup]
type = "enrich"
url = "https://example.com/x"
fields = ["weight"]
"#,
    );
    let error = single(&text);
    assert_error(
        &text,
        &error,
        "\"https://",
        "operators.lookup.url",
        "not an http:// URL",
    );

    let text = minimal_with(
        r#"
[operators.x]
type = "enrichh"
"#,
    );
    let error = single(&text);
    assert!(error.message.contains("did you mean `enrich`"), "{error}");
}

#[test]
fn write_behind_is_a_spool_size_on_store_sinks() {
    let text = MINIMAL.replace(
        "[sinks.out]\ntype = \"stdout\"",
        "[sinks.out]\ntype = \"sqlite\"\npath = \"x.db\"\nwrite_behind = \"512MiB\"",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.sinks[0].config.write_behind(), Some(512 << 20));
    let text = MINIMAL.replace(
        "[sinks.out]\ntype = \"stdout\"",
        "[sinks.out]\ntype = \"sqlite\"\npath = \"x.db\"\nwrite_behind = true",
    );
    let error = single(&text);
    assert_eq!(error.field, "sinks.out.write_behind");
}

#[test]
fn memory_limit_is_a_size_that_must_leave_room_for_http_requests() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.pipeline.memory_limit, 256 << 20, "the default");
    let text = HTTP_SOURCE.replace("[pipeline]\n", "[pipeline]\nmemory_limit = \"1GiB\"\n");
    assert_eq!(parse(&text).unwrap().pipeline.memory_limit, 1 << 30);

    let text = HTTP_SOURCE.replace("[pipeline]\n", "[pipeline]\nmemory_limit = \"8MiB\"\n");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"8MiB\"",
        "pipeline.memory_limit",
        "must be at least 16MiB",
    );
    // A quarter of 16MiB is 4MiB: exactly the source's max_body_size, so it fits ...
    let text = HTTP_SOURCE.replace("[pipeline]\n", "[pipeline]\nmemory_limit = \"16MiB\"\n");
    parse(&text).unwrap();
    // ... and 8MiB requests do not.
    let text = text.replace("max_body_size = \"4MiB\"", "max_body_size = \"8MiB\"");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"16MiB\"",
        "pipeline.memory_limit",
        "leaves 4MiB for this HTTP source's requests",
    );
    assert!(e.to_string().contains("sources.api.max_body_size"), "{e}");
    let text = text.replace("memory_limit = \"16MiB\"", "memory_limit = \"wide\"");
    assert_eq!(single(&text).field, "pipeline.memory_limit");
}

// ----- Kafka -----

#[test]
fn a_kafka_source_and_sink_read_with_their_defaults_and_pass_options_through() {
    let text = r#"[sources.orders]
type = "kafka"
brokers = "127.0.0.1:9092,127.0.0.1:9093"
topics = ["orders"]
group = "billing"
start = "latest"
session_timeout = "10s"
[sources.orders.options]
"security.protocol" = "SASL_SSL"
"fetch.wait.max.ms" = 100

[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]

[sinks.out]
type = "kafka"
brokers = "127.0.0.1:9092"
topic = "windows"
compression = "zstd"
linger = "20ms"
"#;
    let config = parse(text).unwrap();
    let SourceConfig::Kafka(k) = &config.sources[0].config else {
        panic!("a kafka source")
    };
    let mut want = KafkaSourceConfig::new("127.0.0.1:9092,127.0.0.1:9093", &["orders"]);
    want.group = Some("billing".into());
    want.start = KafkaStart::Latest;
    want.session_timeout = Duration::from_secs(10);
    want.options = vec![
        ("security.protocol".into(), "SASL_SSL".into()),
        ("fetch.wait.max.ms".into(), "100".into()),
    ];
    assert_eq!(*k, want);
    let SinkConfig::Kafka(s) = &config.sinks[0].config else {
        panic!("a kafka sink")
    };
    let mut want = KafkaSinkConfig::new("127.0.0.1:9092", "windows");
    want.compression = "zstd".into();
    want.linger = Duration::from_millis(20);
    assert_eq!(*s, want);
}

#[test]
fn a_kafka_source_must_stand_alone_and_a_bounded_one_reads_one_topic() {
    let text = r#"[sources.k]
type = "kafka"
brokers = "127.0.0.1:9092"
topics = ["a", "b"]
bounded = true

[sources.gen]
type = "generator"

[pipeline]
window = { type = "tumbling", size = "1s" }
aggregates = ["count"]

[sinks.out]
type = "kafka"
brokers = ""
topic = "t"
compression = "brotli"
"#;
    let found = errors(text);
    let fields: Vec<&str> = found.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "sources.k.type",
            "sources.k.bounded",
            "sinks.out.brokers",
            "sinks.out.compression"
        ],
        "in file order: {}",
        ConfigErrors(found.clone())
    );
    assert!(
        found[0].message.contains("only source"),
        "{}",
        found[0].message
    );
    assert!(found[3].message.contains("brotli"), "{}", found[3].message);
    let missing = errors(&MINIMAL.replace("type = \"generator\"", "type = \"kafka\""));
    let fields: Vec<&str> = missing.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["sources.gen.brokers", "sources.gen.topics"]);
}

// ----- Protobuf input -----

/// A pipeline reading Protobuf files with the schema `proto` (as written in the file).
fn protobuf_pipeline(proto: &str, key: &str, message: &str) -> String {
    format!(
        r#"[sources.files]
type = "file"
paths = ["events/*.pb"]
format = "protobuf"

[protobuf]
file = {proto:?}
message = "{message}"

[pipeline]
key = "{key}"
window = {{ type = "tumbling", size = "1s" }}
aggregates = ["count", "sum(value)"]

[sinks.out]
type = "stdout"
"#
    )
}

fn events_proto(dir: &Path) -> PathBuf {
    let path = dir.join("events.proto");
    std::fs::write(&path, include_str!("../../../../examples/events.proto")).unwrap();
    path
}

#[test]
fn protobuf_sources_and_schema_parse_with_the_file_relative_to_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let proto = events_proto(dir.path());
    let text = protobuf_pipeline("events.proto", "user", "acme.Event");
    let config = PipelineConfig::parse(&text, &dir.path().join("p.toml")).unwrap();
    assert_eq!(
        config.protobuf,
        Some(ProtobufConfig {
            file: proto.clone(),
            message: "acme.Event".into()
        })
    );
    match &config.sources[0].config {
        SourceConfig::File(f) => assert_eq!(f.format, crate::codec::InputFormat::Protobuf),
        other => panic!("{other:?}"),
    }
    // HTTP: "protobuf" among the formats.
    let text = text.replace(
        "type = \"file\"\npaths = [\"events/*.pb\"]\nformat = \"protobuf\"",
        "type = \"http\"\naddress = \"127.0.0.1:8080\"\nformats = [\"protobuf\", \"json\"]",
    );
    let config = PipelineConfig::parse(&text, &dir.path().join("p.toml")).unwrap();
    match &config.sources[0].config {
        SourceConfig::Http(h) => {
            assert_eq!(h.formats, vec![BodyFormat::Protobuf, BodyFormat::Json]);
        }
        other => panic!("{other:?}"),
    }
    // JSON stays the default.
    let config = parse(&minimal_with(
        "[sources.f]\ntype = \"file\"\npaths = [\"a\"]\n",
    ))
    .unwrap();
    assert!(config.protobuf.is_none());
    let file = config.sources.iter().find(|s| s.name == "f").unwrap();
    assert!(
        matches!(&file.config, SourceConfig::File(f) if f.format == crate::codec::InputFormat::Json)
    );
}

#[test]
fn protobuf_errors_name_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let proto = events_proto(dir.path()).display().to_string();
    // A field the message does not have: at the [pipeline] key, with a suggestion.
    let text = protobuf_pipeline(&proto, "usr", "acme.Event");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"usr\"",
        "pipeline.key",
        "message `acme.Event`: no top-level field `usr` (the key), did you mean `user`?",
    );
    assert!(e.message.contains("events.proto"), "{e}");
    // A field of the wrong type for its role (a number from a message).
    let text = protobuf_pipeline(&proto, "user", "acme.Event").replace("sum(value)", "sum(device)");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"acme.Event\"",
        "protobuf.message",
        "`device` (the aggregated number) is a message (acme.Device)",
    );
    // No such message.
    let text = protobuf_pipeline(&proto, "user", "acme.Evnt");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"acme.Evnt\"",
        "protobuf.message",
        "no message `acme.Evnt`, did you mean `acme.Event`?",
    );
    // A file that is not there or does not compile.
    let text = protobuf_pipeline("/nonexistent/x.proto", "user", "acme.Event");
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"/nonexistent/x.proto\"",
        "protobuf.file",
        "no such file",
    );
    std::fs::write(
        dir.path().join("bad.proto"),
        "syntax = \"proto3\"; message {",
    )
    .unwrap();
    let bad = dir.path().join("bad.proto").display().to_string();
    let text = protobuf_pipeline(&bad, "user", "acme.Event");
    let e = single(&text);
    assert_eq!(e.field, "protobuf.file", "{e}");
    // Protobuf input without a schema, and an unknown format.
    let text = minimal_with(
        "[sources.files]\ntype = \"file\"\npaths = [\"a.pb\"]\nformat = \"protobuf\"\n",
    );
    let e = single(&text);
    assert_error(
        &text,
        &e,
        "\"protobuf\"",
        "sources.files.format",
        "needs a [protobuf] table",
    );
    let text =
        minimal_with("[sources.files]\ntype = \"file\"\npaths = [\"a\"]\nformat = \"xml\"\n");
    let e = single(&text);
    assert_error(&text, &e, "\"xml\"", "sources.files.format", "\"protobuf\"");
    let text = minimal_with("[protobuf]\nfile = \"x.proto\"\nmesage = \"a.B\"\n");
    let errors = errors(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("did you mean `message`")),
        "{}",
        ConfigErrors(errors.clone())
    );
}
