//! The aggregate expression grammar, each optionally followed by `as NAME`:
//!
//! * `count`, `sum(F)`, `min(F)`, `max(F)`, `mean(F)`;
//! * `distinct(F)`: approximate distinct count;
//! * `quantile(F, Q)` with `0 <= Q <= 1` (at most 6 decimals), and the shorthands
//!   `p50(F)`, `p90(F)`, `p95(F)`, `p99(F)`, `p999(F)` (0.5 ... 0.999);
//! * `ewma(F, HALF_LIFE)`: exponentially weighted mean, the half-life a duration such
//!   as `30s` or `500ms` (a whole number of milliseconds).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::suggest::closest;
use super::units::{format_duration, parse_duration};
use super::{AggFunc, AggregateSpec};

/// The accepted forms, for messages.
const FORMS: &str = "count, sum(F), min(F), max(F), mean(F), distinct(F), quantile(F, Q), p50(F) .. p999(F) or ewma(F, HALF_LIFE), optionally followed by `as NAME`";

/// The quantile shorthands and their quantiles in parts per million.
pub(crate) const SHORTHANDS: [(&str, u32); 5] = [
    ("p50", 500_000),
    ("p90", 900_000),
    ("p95", 950_000),
    ("p99", 990_000),
    ("p999", 999_000),
];

/// An aggregate expression that does not follow the grammar; `Display` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAggregate(String);

impl AggFunc {
    /// The functions that take no parameter besides the field, in documented order.
    pub const ALL: [AggFunc; 6] = [
        AggFunc::Count,
        AggFunc::Sum,
        AggFunc::Min,
        AggFunc::Max,
        AggFunc::Mean,
        AggFunc::Distinct,
    ];

    /// Every function name the grammar knows (shorthands included).
    pub const NAMES: [&'static str; 13] = [
        "count", "sum", "min", "max", "mean", "distinct", "quantile", "ewma", "p50", "p90", "p95",
        "p99", "p999",
    ];

    /// The function's name in aggregate expressions: `count`, `sum`, `min`, `max`, `mean`,
    /// `distinct`, `quantile`, `ewma`.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Mean => "mean",
            AggFunc::Distinct => "distinct",
            AggFunc::Quantile { .. } => "quantile",
            AggFunc::Ewma { .. } => "ewma",
        }
    }

    /// Whether the function reads a numeric field (all but `count`).
    pub fn takes_field(self) -> bool {
        self != AggFunc::Count
    }

    /// Whether the function needs a sketch per key (`distinct`, `quantile`, `ewma`)
    /// rather than the running sum, minimum and maximum.
    pub fn is_sketch(self) -> bool {
        matches!(
            self,
            AggFunc::Distinct | AggFunc::Quantile { .. } | AggFunc::Ewma { .. }
        )
    }

    /// The prefix of the default column: the name, or for quantiles `p` and the
    /// percentage with `_` for the decimal point (`p99`, `p50`, `p99_9`).
    fn column_prefix(self) -> String {
        match self {
            AggFunc::Quantile { ppm } => {
                let (whole, frac) = (ppm / 10_000, ppm % 10_000);
                if frac == 0 {
                    format!("p{whole}")
                } else {
                    let frac = format!("{frac:04}");
                    format!("p{whole}_{}", frac.trim_end_matches('0'))
                }
            }
            f => f.name().to_owned(),
        }
    }
}

/// `ppm / 10^6` as the shortest decimal: `0.99`, `0.5`, `1`, `0`.
fn format_quantile(ppm: u32) -> String {
    if ppm >= 1_000_000 {
        return "1".to_owned();
    }
    if ppm == 0 {
        return "0".to_owned();
    }
    let frac = format!("{ppm:06}");
    format!("0.{}", frac.trim_end_matches('0'))
}

/// Parses `Q` of `quantile(F, Q)` into parts per million.
fn parse_quantile(text: &str) -> Result<u32, String> {
    let q: f64 = text.parse().map_err(|_| {
        format!("`{text}` is not a number: expected a quantile between 0 and 1, such as 0.99")
    })?;
    if !(0.0..=1.0).contains(&q) {
        return Err(format!(
            "quantile {text} is out of range: expected a number between 0 and 1, such as 0.99"
        ));
    }
    let ppm = (q * 1e6).round();
    if (ppm / 1e6 - q).abs() > 1e-12 {
        return Err(format!(
            "quantile {text} has more than 6 decimals: write it to at most 6 (e.g. 0.999999)"
        ));
    }
    Ok(ppm as u32)
}

/// Parses `HALF_LIFE` of `ewma(F, HALF_LIFE)`: a positive whole number of milliseconds.
fn parse_half_life(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text).map_err(|e| format!("half-life: {e}"))?;
    half_life_problem(d).map_or(Ok(d), Err)
}

/// What is wrong with an `ewma` half-life, if anything.
pub(crate) fn half_life_problem(d: Duration) -> Option<String> {
    if d < Duration::from_millis(1) {
        Some(format!(
            "half-life {} is too short: expected at least 1ms",
            format_duration(d)
        ))
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        Some(format!(
            "half-life {} is not a whole number of milliseconds (event times are in milliseconds)",
            format_duration(d)
        ))
    } else {
        None
    }
}

impl AggregateSpec {
    /// `count`, in column `count`.
    pub fn count() -> Self {
        Self::new(AggFunc::Count, None)
    }

    /// `func(field)` in its default column; `field` must be `None` for `count` and `Some`
    /// for the others ([`PipelineConfig::validate`](super::PipelineConfig::validate) checks).
    pub fn new(func: AggFunc, field: Option<&str>) -> Self {
        Self {
            func,
            field: field.map(str::to_owned),
            column: Self::default_column(func, field),
        }
    }

    /// The same aggregate, written to column `column`.
    pub fn named(mut self, column: impl Into<String>) -> Self {
        self.column = column.into();
        self
    }

    /// The column an aggregate gets without `as NAME`: `count`, or `sum_F`, `min_F`,
    /// `max_F`, `mean_F`, `distinct_F`, `ewma_F`, and `pNN_F` for quantiles (`p99_F` for
    /// 0.99, `p50_F` for 0.5, `p99_9_F` for 0.999), with the characters of F that may not
    /// appear in an SQL identifier replaced by `_`.
    pub fn default_column(func: AggFunc, field: Option<&str>) -> String {
        match field {
            None => func.name().to_owned(),
            Some(field) => {
                let field: String = field
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("{}_{field}", func.column_prefix())
            }
        }
    }
}

impl fmt::Display for AggregateSpec {
    /// Writes the expression back in the grammar it is parsed from, e.g.
    /// `sum(value) as total`, `quantile(latency, 0.99)`, `ewma(v, 30s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.func.name())?;
        if let Some(field) = &self.field {
            match self.func {
                AggFunc::Quantile { ppm } => write!(f, "({field}, {})", format_quantile(ppm))?,
                AggFunc::Ewma { half_life } => {
                    write!(f, "({field}, {})", format_duration(half_life))?;
                }
                _ => write!(f, "({field})")?,
            }
        }
        if self.column != Self::default_column(self.func, self.field.as_deref()) {
            write!(f, " as {}", self.column)?;
        }
        Ok(())
    }
}

impl FromStr for AggregateSpec {
    type Err = InvalidAggregate;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let input = text.trim();
        let fail = |why: String| {
            Err(InvalidAggregate(format!(
                "`{input}` is not an aggregate: {why}"
            )))
        };
        if input.is_empty() {
            return Err(InvalidAggregate(format!(
                "an empty string is not an aggregate: expected {FORMS}"
            )));
        }
        // Split into the function name, the optional `(field[, arg])` and what follows.
        let name_end = input
            .find(|c: char| c == '(' || c.is_whitespace())
            .unwrap_or(input.len());
        let name = &input[..name_end];
        let mut rest = input[name_end..].trim_start();
        let mut field = None;
        let mut arg = None;
        if let Some(after_paren) = rest.strip_prefix('(') {
            let Some(close) = after_paren.find(')') else {
                return fail("missing `)`".to_owned());
            };
            let inside = &after_paren[..close];
            let (f, a) = match inside.split_once(',') {
                Some((f, a)) => (f, Some(a.trim())),
                None => (inside, None),
            };
            field = Some(f.trim()).filter(|f| !f.is_empty());
            arg = a;
            rest = after_paren[close + 1..].trim_start();
        }
        let shorthand = SHORTHANDS.iter().find(|(n, _)| *n == name);
        let func = match name {
            "quantile" => AggFunc::Quantile { ppm: 0 },
            "ewma" => AggFunc::Ewma {
                half_life: Duration::ZERO,
            },
            _ if shorthand.is_some() => AggFunc::Quantile {
                ppm: shorthand.map_or(0, |s| s.1),
            },
            _ => match AggFunc::ALL.into_iter().find(|f| f.name() == name) {
                Some(func) => func,
                None => {
                    let lower = name.to_ascii_lowercase();
                    let suggestion = match lower.as_str() {
                        "avg" | "average" => Some("mean"),
                        "median" => Some("p50"),
                        "count_distinct" | "distinct_count" | "approx_distinct" => Some("distinct"),
                        "percentile" | "quantiles" => Some("quantile"),
                        _ => closest(&lower, &AggFunc::NAMES),
                    };
                    return match suggestion {
                        Some(s) => fail(format!(
                            "unknown function `{name}`, did you mean `{s}`? Expected {FORMS}"
                        )),
                        None => fail(format!("unknown function `{name}`; expected {FORMS}")),
                    };
                }
            },
        };
        match (func.takes_field(), field) {
            (false, Some(_)) => return fail("`count` takes no field: write `count`".to_owned()),
            (true, None) => {
                let usage = match func {
                    AggFunc::Quantile { .. } if shorthand.is_none() => {
                        "`quantile(FIELD, Q)`".to_owned()
                    }
                    AggFunc::Ewma { .. } => "`ewma(FIELD, HALF_LIFE)`".to_owned(),
                    _ => format!("`{name}(FIELD)`"),
                };
                return fail(format!("`{name}` needs a field: write {usage}"));
            }
            (true, Some(f)) if !is_field_name(f) => {
                return fail(format!(
                    "`{f}` is not a field name: expected a letter or `_` followed by letters, digits, `_`, `.` or `-`"
                ));
            }
            _ => {}
        }
        let func = match (func, arg) {
            (AggFunc::Quantile { .. }, None) if shorthand.is_none() => {
                return fail(
                    "`quantile` needs the quantile: write `quantile(FIELD, Q)` with Q between 0 and 1, e.g. `quantile(latency, 0.99)`"
                        .to_owned(),
                );
            }
            (AggFunc::Quantile { .. }, Some(q)) if shorthand.is_none() => {
                if q.contains(',') {
                    return fail(format!(
                        "`quantile` takes a field and one quantile, got `{q}`: write one aggregate per quantile"
                    ));
                }
                match parse_quantile(q) {
                    Ok(ppm) => AggFunc::Quantile { ppm },
                    Err(why) => return fail(why),
                }
            }
            (AggFunc::Ewma { .. }, None) => {
                return fail(
                    "`ewma` needs a half-life: write `ewma(FIELD, HALF_LIFE)`, e.g. `ewma(value, 30s)`"
                        .to_owned(),
                );
            }
            (AggFunc::Ewma { .. }, Some(h)) => {
                if h.contains(',') {
                    return fail(format!("`ewma` takes a field and one half-life, got `{h}`"));
                }
                match parse_half_life(h) {
                    Ok(half_life) => AggFunc::Ewma { half_life },
                    Err(why) => return fail(why),
                }
            }
            (_, Some(a)) => {
                return fail(format!(
                    "`{name}` takes only a field, got the extra argument `{a}`: write `{name}(FIELD)`"
                ));
            }
            (func, None) => func,
        };
        let mut spec = AggregateSpec::new(func, field);
        if !rest.is_empty() {
            let alias = rest
                .strip_prefix("as")
                .filter(|alias| alias.starts_with(char::is_whitespace))
                .map(str::trim);
            match alias {
                Some(alias) if is_identifier(alias) => spec.column = alias.to_owned(),
                Some(alias) => {
                    return fail(format!(
                        "`{alias}` is not a valid column name: expected a letter or `_` followed by letters, digits or `_`"
                    ));
                }
                None => return fail(format!("unexpected `{rest}`: expected {FORMS}")),
            }
        }
        Ok(spec)
    }
}

/// Whether `s` is an SQL identifier as the sinks accept it: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `s` is a field name aggregates may read: `[A-Za-z_][A-Za-z0-9_.-]*`.
pub(crate) fn is_field_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(func: AggFunc, field: Option<&str>, column: &str) -> AggregateSpec {
        AggregateSpec {
            func,
            field: field.map(str::to_owned),
            column: column.to_owned(),
        }
    }

    #[test]
    fn valid_expressions() {
        let cases = [
            ("count", spec(AggFunc::Count, None, "count")),
            ("sum(value)", spec(AggFunc::Sum, Some("value"), "sum_value")),
            ("min(value)", spec(AggFunc::Min, Some("value"), "min_value")),
            ("max(value)", spec(AggFunc::Max, Some("value"), "max_value")),
            (
                "mean(value)",
                spec(AggFunc::Mean, Some("value"), "mean_value"),
            ),
            (
                "mean(price.usd)",
                spec(AggFunc::Mean, Some("price.usd"), "mean_price_usd"),
            ),
            (
                "sum(bytes-in)",
                spec(AggFunc::Sum, Some("bytes-in"), "sum_bytes_in"),
            ),
            (
                "sum(value) as total",
                spec(AggFunc::Sum, Some("value"), "total"),
            ),
            ("count as n", spec(AggFunc::Count, None, "n")),
            (
                "  max( _x1 )   as   m_2 ",
                spec(AggFunc::Max, Some("_x1"), "m_2"),
            ),
            (
                "distinct(user)",
                spec(AggFunc::Distinct, Some("user"), "distinct_user"),
            ),
            (
                "quantile(latency, 0.99) as p99",
                spec(AggFunc::Quantile { ppm: 990_000 }, Some("latency"), "p99"),
            ),
            (
                "quantile(latency,0.5)",
                spec(
                    AggFunc::Quantile { ppm: 500_000 },
                    Some("latency"),
                    "p50_latency",
                ),
            ),
            (
                "quantile( latency , 0.999 )",
                spec(
                    AggFunc::Quantile { ppm: 999_000 },
                    Some("latency"),
                    "p99_9_latency",
                ),
            ),
            (
                "quantile(x, 1)",
                spec(AggFunc::Quantile { ppm: 1_000_000 }, Some("x"), "p100_x"),
            ),
            (
                "quantile(x, 0)",
                spec(AggFunc::Quantile { ppm: 0 }, Some("x"), "p0_x"),
            ),
            (
                "quantile(x, 0.12345)",
                spec(AggFunc::Quantile { ppm: 123_450 }, Some("x"), "p12_345_x"),
            ),
            (
                "p99(latency)",
                spec(
                    AggFunc::Quantile { ppm: 990_000 },
                    Some("latency"),
                    "p99_latency",
                ),
            ),
            (
                "p999(a.b) as tail",
                spec(AggFunc::Quantile { ppm: 999_000 }, Some("a.b"), "tail"),
            ),
            (
                "p50(v)",
                spec(AggFunc::Quantile { ppm: 500_000 }, Some("v"), "p50_v"),
            ),
            (
                "ewma(v, 30s)",
                spec(
                    AggFunc::Ewma {
                        half_life: Duration::from_secs(30),
                    },
                    Some("v"),
                    "ewma_v",
                ),
            ),
            (
                "ewma(v, 1m500ms) as smooth",
                spec(
                    AggFunc::Ewma {
                        half_life: Duration::from_millis(60_500),
                    },
                    Some("v"),
                    "smooth",
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<AggregateSpec>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn invalid_expressions() {
        let cases = [
            ("", "an empty string is not an aggregate: expected count"),
            (
                "avg(value)",
                "`avg(value)` is not an aggregate: unknown function `avg`, did you mean `mean`?",
            ),
            (
                "summ(value)",
                "unknown function `summ`, did you mean `sum`?",
            ),
            ("COUNT", "unknown function `COUNT`, did you mean `count`?"),
            ("mode(x)", "unknown function `mode`; expected count, sum(F)"),
            ("count(value)", "`count` takes no field"),
            ("sum", "`sum` needs a field: write `sum(FIELD)`"),
            ("sum()", "`sum` needs a field"),
            ("sum( )", "`sum` needs a field"),
            ("sum(value", "missing `)`"),
            ("sum(1value)", "`1value` is not a field name"),
            ("sum(a b)", "`a b` is not a field name"),
            ("sum(value) total", "unexpected `total`"),
            ("sum(value) as", "unexpected `as`"),
            ("sum(value) as 2x", "`2x` is not a valid column name"),
            ("sum(value) as a-b", "`a-b` is not a valid column name"),
            ("sum(value) assum", "unexpected `assum`"),
            ("median(x)", "did you mean `p50`?"),
            ("distinc(x)", "did you mean `distinct`?"),
            (
                "distinct",
                "`distinct` needs a field: write `distinct(FIELD)`",
            ),
            (
                "distinct(x, 3)",
                "`distinct` takes only a field, got the extra argument `3`",
            ),
            ("sum(x, 2)", "`sum` takes only a field"),
            ("p99(x, 0.5)", "`p99` takes only a field"),
            (
                "quantile(x)",
                "`quantile` needs the quantile: write `quantile(FIELD, Q)`",
            ),
            ("quantile(x, )", "`` is not a number"),
            (
                "quantile",
                "`quantile` needs a field: write `quantile(FIELD, Q)`",
            ),
            ("quantile(, 0.5)", "`quantile` needs a field"),
            ("quantile(x, 1.5)", "quantile 1.5 is out of range"),
            ("quantile(x, -0.1)", "quantile -0.1 is out of range"),
            ("quantile(x, high)", "`high` is not a number"),
            ("quantile(x, NaN)", "quantile NaN is out of range"),
            ("quantile(x, 0.1234567)", "more than 6 decimals"),
            ("quantile(x, 0.5, 0.9)", "write one aggregate per quantile"),
            (
                "ewma(x)",
                "`ewma` needs a half-life: write `ewma(FIELD, HALF_LIFE)`",
            ),
            (
                "ewma",
                "`ewma` needs a field: write `ewma(FIELD, HALF_LIFE)`",
            ),
            ("ewma(x, 30)", "half-life:"),
            ("ewma(x, fast)", "half-life:"),
            ("ewma(x, 0s)", "half-life 0s is too short"),
            ("ewma(x, 1500us)", "not a whole number of milliseconds"),
            ("ewma(x, 1s, 2s)", "`ewma` takes a field and one half-life"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<AggregateSpec>().unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "count",
            "sum(value)",
            "mean(a.b) as avg_ab",
            "count as n",
            "distinct(u)",
            "distinct(u) as users",
            "quantile(v, 0.99)",
            "quantile(v, 0.5) as median",
            "quantile(v, 0.999)",
            "quantile(v, 0.123456)",
            "quantile(v, 0)",
            "quantile(v, 1)",
            "ewma(v, 30s)",
            "ewma(v, 1m30s500ms) as slow",
        ] {
            let spec: AggregateSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        // Shorthands print as the general form, which parses back to the same spec.
        for text in ["p50(v)", "p90(v)", "p95(v)", "p99(v)", "p999(v) as tail"] {
            let spec: AggregateSpec = text.parse().unwrap();
            assert_eq!(
                spec.to_string().parse::<AggregateSpec>(),
                Ok(spec),
                "{text}"
            );
        }
    }
}
