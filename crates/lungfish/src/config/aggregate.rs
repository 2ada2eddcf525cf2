//! The aggregate expression grammar: `count` | `sum(F)` | `min(F)` | `max(F)` | `mean(F)`,
//! optionally followed by `as NAME`.

use std::fmt;
use std::str::FromStr;

use super::suggest::closest;
use super::{AggFunc, AggregateSpec};

/// The accepted forms, for messages.
const FORMS: &str = "count, sum(F), min(F), max(F) or mean(F), optionally followed by `as NAME`";

/// An aggregate expression that does not follow the grammar; `Display` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAggregate(String);

impl AggFunc {
    /// All functions, in the order they are documented.
    pub const ALL: [AggFunc; 5] = [
        AggFunc::Count,
        AggFunc::Sum,
        AggFunc::Min,
        AggFunc::Max,
        AggFunc::Mean,
    ];

    /// The function's name in aggregate expressions: `count`, `sum`, `min`, `max`, `mean`.
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Mean => "mean",
        }
    }

    /// Whether the function reads a numeric field (all but `count`).
    pub fn takes_field(self) -> bool {
        self != AggFunc::Count
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
    /// `max_F`, `mean_F` with the characters of F that may not appear in an SQL
    /// identifier replaced by `_`.
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
                format!("{}_{field}", func.name())
            }
        }
    }
}

impl fmt::Display for AggregateSpec {
    /// Writes the expression back in the grammar it is parsed from, e.g. `sum(value) as total`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.func.name())?;
        if let Some(field) = &self.field {
            write!(f, "({field})")?;
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
        // Split into the function name, the optional `(field)` and what follows.
        let name_end = input
            .find(|c: char| c == '(' || c.is_whitespace())
            .unwrap_or(input.len());
        let name = &input[..name_end];
        let mut rest = input[name_end..].trim_start();
        let mut field = None;
        if let Some(after_paren) = rest.strip_prefix('(') {
            let Some(close) = after_paren.find(')') else {
                return fail("missing `)`".to_owned());
            };
            field = Some(after_paren[..close].trim()).filter(|f| !f.is_empty());
            rest = after_paren[close + 1..].trim_start();
        }
        let func = match AggFunc::ALL.into_iter().find(|f| f.name() == name) {
            Some(func) => func,
            None => {
                let names = AggFunc::ALL.map(AggFunc::name);
                let lower = name.to_ascii_lowercase();
                let suggestion = match lower.as_str() {
                    "avg" | "average" => Some("mean"),
                    _ => closest(&lower, &names),
                };
                return match suggestion {
                    Some(s) => fail(format!(
                        "unknown function `{name}`, did you mean `{s}`? Expected {FORMS}"
                    )),
                    None => fail(format!("unknown function `{name}`; expected {FORMS}")),
                };
            }
        };
        match (func.takes_field(), field) {
            (false, Some(_)) => return fail("`count` takes no field: write `count`".to_owned()),
            (true, None) => {
                return fail(format!("`{name}` needs a field: write `{name}(FIELD)`"));
            }
            (true, Some(f)) if !is_field_name(f) => {
                return fail(format!(
                    "`{f}` is not a field name: expected a letter or `_` followed by letters, digits, `_`, `.` or `-`"
                ));
            }
            _ => {}
        }
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
            (
                "median(x)",
                "unknown function `median`; expected count, sum(F)",
            ),
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
        ];
        for (text, expected) in cases {
            let err = text.parse::<AggregateSpec>().unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["count", "sum(value)", "mean(a.b) as avg_ab", "count as n"] {
            let spec: AggregateSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }
}
