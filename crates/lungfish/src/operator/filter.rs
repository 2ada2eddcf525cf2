//! `type = "filter"`: keeps the events whose number satisfies a comparison.
//!
//! ```toml
//! [[operators]]
//! type = "filter"
//! name = "sane_values"          # optional; dead letters say operator:sane_values
//! condition = "value < 1000"    # FIELD OP NUMBER, OP one of < <= > >= == !=
//! otherwise = "dead_letter"     # or "drop" (the default)
//! ```
//!
//! An event whose field is missing (NaN, e.g. an enrichment that found nothing) does not
//! satisfy any comparison but `!=`.

use std::fmt::{self, Write as _};

use super::{Failure, Operator, OperatorBatch};

/// A comparison operator of a [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
            Comparison::Equal => "==",
            Comparison::NotEqual => "!=",
        }
    }

    #[inline]
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Comparison::Less => a < b,
            Comparison::LessOrEqual => a <= b,
            Comparison::Greater => a > b,
            Comparison::GreaterOrEqual => a >= b,
            Comparison::Equal => a == b,
            Comparison::NotEqual => a != b,
        }
    }
}

/// `FIELD OP NUMBER`, e.g. `value < 1000`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The numeric field compared.
    pub field: String,
    /// How.
    pub comparison: Comparison,
    /// With what.
    pub value: f64,
}

impl Condition {
    /// Parses `FIELD OP NUMBER`.
    ///
    /// # Errors
    /// A message saying what is wrong, for the config error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let at = t
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| format!("{text:?} has no comparison: expected FIELD OP NUMBER with OP one of < <= > >= == != (e.g. \"value < 1000\")"))?;
        let field = t[..at].trim();
        let rest = &t[at..];
        let (comparison, len) = [
            ("<=", Comparison::LessOrEqual),
            (">=", Comparison::GreaterOrEqual),
            ("==", Comparison::Equal),
            ("!=", Comparison::NotEqual),
            ("<", Comparison::Less),
            (">", Comparison::Greater),
        ]
        .into_iter()
        .find(|(s, _)| rest.starts_with(s))
        .map(|(s, c)| (c, s.len()))
        .ok_or_else(|| format!("{text:?}: unknown comparison; use one of < <= > >= == !="))?;
        if field.is_empty()
            || !field
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(format!(
                "{text:?}: the left side must be a field name (letters, digits, _ - .)"
            ));
        }
        let number = rest[len..].trim();
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("{text:?}: the right side {number:?} is not a number"))?;
        Ok(Condition {
            field: field.to_owned(),
            comparison,
            value,
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.field,
            self.comparison.symbol(),
            self.value
        )
    }
}

/// What a filter does with an event that fails its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Otherwise {
    /// Removes it, counted in `lungfish_operator_events_total{outcome="dropped"}`.
    #[default]
    Drop,
    /// Sends it to the dead-letter queue with the condition as the reason.
    DeadLetter,
}

/// The filter operator.
#[derive(Debug, Clone)]
pub struct Filter {
    name: String,
    condition: Condition,
    otherwise: Otherwise,
    field: usize,
    /// A dead letter's reason is `FIELD = VALUE does not satisfy CONDITION`: the parts
    /// around the value, written once.
    reason_prefix: String,
    reason_suffix: String,
}

impl Filter {
    /// A filter named `name` keeping events that satisfy `condition`; `fields` are the
    /// number fields events carry (the condition's field must be among them).
    ///
    /// # Errors
    /// The field is not carried by events.
    pub fn new(
        name: &str,
        condition: Condition,
        otherwise: Otherwise,
        fields: &[String],
    ) -> Result<Self, String> {
        let field = fields
            .iter()
            .position(|f| *f == condition.field)
            .ok_or_else(|| {
                format!(
                    "filter {name}: events carry no number field {:?}",
                    condition.field
                )
            })?;
        Ok(Filter {
            name: name.to_owned(),
            reason_prefix: format!("{} = ", condition.field),
            reason_suffix: format!(" does not satisfy {condition}"),
            condition,
            otherwise,
            field,
        })
    }
}

impl Operator for Filter {
    fn name(&self) -> &str {
        &self.name
    }

    fn process(&mut self, batch: &mut OperatorBatch<'_>) {
        let (cmp, bound) = (self.condition.comparison, self.condition.value);
        for i in 0..batch.len() {
            if !batch.is_live(i) || cmp.holds(batch.number(i, self.field), bound) {
                continue;
            }
            match self.otherwise {
                Otherwise::Drop => batch.drop_event(i),
                Otherwise::DeadLetter => {
                    let v = batch.number(i, self.field);
                    let mut reason = String::with_capacity(
                        self.reason_prefix.len() + 24 + self.reason_suffix.len(),
                    );
                    reason.push_str(&self.reason_prefix);
                    let _ = write!(reason, "{v}");
                    reason.push_str(&self.reason_suffix);
                    batch.fail(i, Failure::permanent("filtered", reason))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::operator::{EventSlot, Verdict};

    #[test]
    fn conditions_parse_and_explain_mistakes() {
        let c = Condition::parse(" value <= 12.5 ").unwrap();
        assert_eq!(
            (c.field.as_str(), c.comparison, c.value),
            ("value", Comparison::LessOrEqual, 12.5)
        );
        assert_eq!(
            Condition::parse("a!=-3").unwrap().comparison,
            Comparison::NotEqual
        );
        assert!(
            Condition::parse("value")
                .unwrap_err()
                .contains("no comparison")
        );
        assert!(
            Condition::parse("value < x")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(Condition::parse("< 3").unwrap_err().contains("field name"));
        assert!(
            Condition::parse("value <> 3")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            Condition::parse("value < inf")
                .unwrap_err()
                .contains("not a number")
        );
    }

    #[test]
    fn filter_drops_or_dead_letters_what_fails() {
        let fields = vec!["value".to_owned()];
        for otherwise in [Otherwise::Drop, Otherwise::DeadLetter] {
            let mut b = OperatorBatch::new(&fields);
            for v in [1.0, 50.0, f64::NAN, 99.0] {
                b.push(
                    EventSlot {
                        offset: 0,
                        key: Cow::Borrowed(b"k"),
                        ts: 0,
                        raw: b"{}",
                    },
                    &[v],
                );
            }
            let mut f = Filter::new(
                "f",
                Condition::parse("value < 60").unwrap(),
                otherwise,
                &fields,
            )
            .unwrap();
            f.process(&mut b);
            assert_eq!(b.live().collect::<Vec<_>>(), vec![0, 1]);
            match otherwise {
                Otherwise::Drop => assert_eq!(b.verdict(3), &Verdict::Dropped),
                Otherwise::DeadLetter => {
                    assert!(
                        matches!(b.verdict(3), Verdict::Failed(f) if f.reason == "value = 99 does not satisfy value < 60")
                    )
                }
            }
        }
        assert!(
            Filter::new(
                "f",
                Condition::parse("x < 1").unwrap(),
                Otherwise::Drop,
                &fields
            )
            .is_err()
        );
    }
}
