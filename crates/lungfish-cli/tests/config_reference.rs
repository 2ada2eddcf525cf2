//! `lungfish config schema` prints the pipeline file's JSON Schema, with the code's
//! defaults, and `lungfish config reference` prints the committed Markdown reference.

mod common;

use std::path::Path;

use common::*;

fn stdout_of(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = lungfish(dir.path()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lungfish {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn config_schema_prints_the_json_schema_with_defaults() {
    let text = stdout_of(&["config", "schema"]);
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(
        schema["required"],
        serde_json::json!(["sources", "pipeline", "sinks"])
    );
    let defs = &schema["definitions"];
    let pipeline = &defs["pipeline"]["properties"];
    assert_eq!(pipeline["checkpoint_interval"]["default"], "5s");
    assert_eq!(pipeline["memory_limit"]["default"], "256MiB");
    assert_eq!(pipeline["batch_max_events"]["default"], 8192);
    assert_eq!(defs["log"]["properties"]["fsync"]["default"], "every 10ms");
    assert_eq!(
        defs["log"]["properties"]["segment_size"]["default"],
        "128MiB"
    );
    let sqlite = &defs["sink-sqlite"]["properties"];
    assert_eq!(
        sqlite["synchronous"]["enum"],
        serde_json::json!(["full", "normal"])
    );
    assert_eq!(sqlite["batch_max_age"]["default"], "100ms");
    assert_eq!(defs["sink-sqlite"]["additionalProperties"], false);
    let http = &defs["source-http"];
    assert_eq!(http["required"], serde_json::json!(["type", "address"]));
    assert_eq!(
        http["properties"]["formats"]["default"],
        serde_json::json!(["json", "ndjson"])
    );
    assert!(
        pipeline["out_of_orderness"]["description"]
            .as_str()
            .unwrap()
            .contains("watermark")
    );
    let committed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference/pipeline.schema.json");
    assert_eq!(text, std::fs::read_to_string(committed).unwrap());
}

#[test]
fn config_reference_prints_the_committed_markdown() {
    let text = stdout_of(&["config", "reference"]);
    assert!(text.starts_with("# Pipeline file reference\n"));
    assert!(text.contains("| `checkpoint_interval` | duration | `\"5s\"` |"));
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference/config.md");
    assert_eq!(text, std::fs::read_to_string(committed).unwrap());
}
