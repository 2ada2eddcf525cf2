//! The JSON Schema (draft-07) of pipeline files, rendered from [`describe`].
//!
//! Tables are closed (`additionalProperties: false`), so a misspelt key is flagged. Sources,
//! operators and sinks are tables of named tables whose `type` picks the schema that applies
//! (`if`/`then`); so is the window. Durations, sizes, fsync policies, socket addresses
//! and aggregate expressions are strings checked by patterns built from the units and
//! function names the reader knows. The patterns accept everything the reader accepts
//! and a little more (units out of order, an IPv4 octet over 255): the reader stays the
//! authority, the schema catches typos and wrong types as they are typed.

use serde_json::{Map, Value, json};

use super::{DefaultValue, Family, Kind, Place, Section, Setting, describe};
use crate::config::aggregate::SHORTHANDS;
use crate::config::units::{DURATION_UNITS, SIZE_UNITS};
use crate::config::{AggFunc, WindowSpec};

/// The JSON Schema draft the schema follows.
const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

/// The JSON Schema of pipeline files: draft-07, with a description and, where the code
/// has one, the default of every option. Deterministic: the same code gives the same
/// schema.
pub fn json_schema() -> Value {
    let sections = describe();
    let mut definitions = Map::new();
    for section in sections.iter().filter(|s| s.place != Place::Top) {
        definitions.insert(section.place.id(), table(section));
    }
    for family in [Family::Sources, Family::Operators, Family::Sinks] {
        let places = family.types().iter().map(|kind| family.place(kind));
        definitions.insert(
            dispatcher_id(family).to_owned(),
            dispatcher(family_about(family), family.types(), places),
        );
    }
    definitions.insert(
        "window".to_owned(),
        dispatcher(
            "The windows events are aggregated in; `type` says which kind.",
            &WindowSpec::TYPES,
            WindowSpec::TYPES.iter().map(|kind| Place::Window(kind)),
        ),
    );
    let top = sections
        .iter()
        .find(|s| s.place == Place::Top)
        .expect("the description has a top level");
    let mut root = Map::new();
    root.insert("$schema".to_owned(), json!(DRAFT));
    root.insert("title".to_owned(), json!("Lungfish pipeline file"));
    if let Value::Object(body) = table(top) {
        root.extend(body);
    }
    root.insert("definitions".to_owned(), Value::Object(definitions));
    Value::Object(root)
}

/// [`json_schema`] as the text of `docs/reference/pipeline.schema.json`: pretty-printed,
/// ending with a newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).expect("a JSON value prints");
    text.push('\n');
    text
}

/// The definition a family's named tables refer to.
fn dispatcher_id(family: Family) -> &'static str {
    match family {
        Family::Sources => "source",
        Family::Operators => "operator",
        Family::Sinks => "sink",
    }
}

fn family_about(family: Family) -> &'static str {
    match family {
        Family::Sources => "A source, `[sources.NAME]`; `type` says which kind.",
        Family::Operators => "An operator, `[operators.NAME]`; `type` says which kind.",
        Family::Sinks => "A sink, `[sinks.NAME]`; `type` says which kind.",
    }
}

fn reference(id: &str) -> Value {
    json!({ "$ref": format!("#/definitions/{id}") })
}

/// A table whose `type`, one of `types`, picks the definition of the matching place.
fn dispatcher(about: &str, types: &[&'static str], places: impl Iterator<Item = Place>) -> Value {
    let cases: Vec<Value> = types
        .iter()
        .zip(places)
        .map(|(kind, place)| {
            json!({
                "if": { "properties": { "type": { "const": kind } }, "required": ["type"] },
                "then": reference(&place.id()),
            })
        })
        .collect();
    json!({
        "type": "object",
        "description": about,
        "required": ["type"],
        "properties": { "type": { "type": "string", "enum": types } },
        "allOf": cases,
    })
}

/// A section as a closed table.
fn table(section: &Section) -> Value {
    let mut properties = Map::new();
    for setting in &section.options {
        properties.insert(setting.name.to_owned(), property(setting));
    }
    let required: Vec<&str> = section
        .options
        .iter()
        .filter(|s| s.required())
        .map(|s| s.name)
        .collect();
    let mut out = Map::new();
    out.insert("type".to_owned(), json!("object"));
    out.insert(
        "description".to_owned(),
        json!(format!("{}: {}", section.place.title(), section.about)),
    );
    out.insert("properties".to_owned(), Value::Object(properties));
    out.insert("additionalProperties".to_owned(), json!(false));
    if !required.is_empty() {
        out.insert("required".to_owned(), json!(required));
    }
    Value::Object(out)
}

/// One option: its value's schema, its description and its default.
fn property(setting: &Setting) -> Value {
    let mut out = kind(&setting.kind, setting.required());
    let mut description = setting.meaning.to_owned();
    if let Some(unit) = setting.unit {
        description.push_str(&format!(" Unit: {unit}."));
    }
    match &setting.default {
        DefaultValue::Value(value) => {
            out.insert("default".to_owned(), value.clone());
        }
        DefaultValue::Absent(text) => description.push_str(&format!(" Default: {text}.")),
        DefaultValue::Required(example) => {
            description.push_str(&format!(" Required, e.g. {example}."));
        }
    }
    out.insert("description".to_owned(), json!(description));
    Value::Object(out)
}

/// The schema of a value of `kind`; `required` options that are collections must not be
/// empty.
fn kind(kind: &Kind, required: bool) -> Map<String, Value> {
    let value = match kind {
        Kind::String => json!({ "type": "string" }),
        Kind::Boolean => json!({ "type": "boolean" }),
        Kind::Count => json!({ "type": "integer", "minimum": 0 }),
        Kind::Integer => json!({ "type": "integer" }),
        Kind::Number => json!({ "type": "number" }),
        Kind::Duration => json!({ "type": "string", "pattern": duration_pattern() }),
        Kind::Size => {
            json!({ "type": ["integer", "string"], "minimum": 0, "pattern": size_pattern() })
        }
        Kind::Address => json!({ "type": "string", "pattern": address_pattern() }),
        Kind::Choice(names) => json!({ "type": "string", "enum": names }),
        Kind::Choices(names) => json!({
            "type": "array",
            "items": { "type": "string", "enum": names },
        }),
        Kind::Strings { non_empty } => {
            let mut list = json!({ "type": "array", "items": { "type": "string" } });
            if *non_empty {
                list["minItems"] = json!(1);
            }
            list
        }
        Kind::Type(name) => json!({ "type": "string", "const": name }),
        Kind::Rate => json!({
            "anyOf": [
                { "type": "string", "const": "unlimited" },
                { "type": "integer", "minimum": 0 },
            ],
        }),
        Kind::Fsync => json!({ "type": "string", "pattern": fsync_pattern() }),
        Kind::StringTable => json!({
            "type": "object",
            "additionalProperties": { "type": "string" },
        }),
        Kind::ClientOptions => json!({
            "type": "object",
            "additionalProperties": { "type": ["string", "integer", "boolean"] },
        }),
        Kind::Window => json!({ "allOf": [reference("window")] }),
        Kind::Aggregates => json!({
            "type": "array",
            "minItems": 1,
            "items": { "type": "string", "pattern": aggregate_pattern() },
        }),
        Kind::Table(name) => json!({ "allOf": [reference(name)] }),
        Kind::Named(family) => {
            let mut named = json!({
                "type": "object",
                "additionalProperties": reference(dispatcher_id(*family)),
            });
            if required {
                named["minProperties"] = json!(1);
            }
            named
        }
    };
    match value {
        Value::Object(map) => map,
        _ => unreachable!("every kind is an object schema"),
    }
}

/// The parts of a duration after the optional leading space: `NUMBER UNIT` repeated.
fn duration_body() -> String {
    let mut units: Vec<&str> = DURATION_UNITS.iter().map(|(name, _)| *name).collect();
    units.sort_by_key(|u| std::cmp::Reverse(u.len()));
    format!(r"([0-9]+\s*({})\s*)+", units.join("|"))
}

/// Durations as [`parse_duration`](super::super::units::parse_duration) reads them (units
/// in any order).
pub(crate) fn duration_pattern() -> String {
    format!(r"^\s*{}$", duration_body())
}

/// Sizes as [`parse_size`](super::super::units::parse_size) reads them.
pub(crate) fn size_pattern() -> String {
    let mut units: Vec<&str> = SIZE_UNITS.iter().map(|(name, _)| *name).collect();
    units.sort_by_key(|u| std::cmp::Reverse(u.len()));
    format!(r"^\s*[0-9]+\s*({})?\s*$", units.join("|"))
}

/// `always`, `never` or `every DURATION`.
pub(crate) fn fsync_pattern() -> String {
    format!(r"^\s*(always|never|every\s+{})\s*$", duration_body())
}

/// `IPv4:PORT` or `[IPv6]:PORT`.
pub(crate) fn address_pattern() -> String {
    r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+(%[0-9A-Za-z]+)?\]):[0-9]{1,5}$".to_owned()
}

/// The aggregate grammar: `count`, `FUNC(F)`, `quantile(F, Q)`, `ewma(F, HALF_LIFE)`,
/// each optionally followed by `as NAME`.
pub(crate) fn aggregate_pattern() -> String {
    let field = r"\s*[A-Za-z_][A-Za-z0-9_.-]*\s*";
    let name = r"as\s+[A-Za-z_][A-Za-z0-9_]*";
    let mut unary: Vec<&str> = AggFunc::ALL
        .iter()
        .filter(|f| f.takes_field())
        .map(|f| f.name())
        .chain(SHORTHANDS.iter().map(|(name, _)| *name))
        .collect();
    unary.sort_by_key(|u| std::cmp::Reverse(u.len()));
    let quantile = r"\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?";
    format!(
        r"^\s*(count(\s+{name})?|(({unary})\s*\({field}\)|quantile\s*\({field},\s*{quantile}\s*\)|ewma\s*\({field},\s*{half_life}\))(\s*{name})?)\s*$",
        unary = unary.join("|"),
        half_life = duration_body(),
    )
}
