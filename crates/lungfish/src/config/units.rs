//! Human-readable durations (`50ms`, `1m30s`) and sizes (`64KiB`, `128MiB`, `10MB`).

use std::time::Duration;

/// Duration units, largest first, with their length in nanoseconds.
pub(crate) const DURATION_UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Size units with their length in bytes.
pub(crate) const SIZE_UNITS: [(&str, u64); 8] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

const DURATION_EXPECTED: &str =
    "expected a number followed by ns, us, ms, s, m, h or d (e.g. `50ms`, `1m30s`)";
const SIZE_EXPECTED: &str = "expected a number followed by B, KiB, MiB, GiB, TiB, KB, MB or GB";

/// Why a duration or size string was rejected; `Display` gives the message for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The text is not a duration at all.
    #[error("`{0}` is not a duration: {DURATION_EXPECTED}")]
    NotADuration(String),
    /// A number without a unit where a duration was expected.
    #[error("`{0}` is not a duration: add a unit, e.g. `{0}s` or `{0}ms`")]
    MissingDurationUnit(String),
    /// A duration with a unit that does not exist.
    #[error(
        "`{input}` is not a duration: unknown unit `{unit}`, expected ns, us, ms, s, m, h or d"
    )]
    UnknownDurationUnit {
        /// The whole text.
        input: String,
        /// The unknown unit.
        unit: String,
    },
    /// A compound duration whose units are repeated or not from largest to smallest.
    #[error(
        "`{0}` is not a duration: write the units from largest to smallest, each at most once (e.g. `1m30s`)"
    )]
    DurationUnitOrder(String),
    /// The text is not a size; the second field is an optional hint.
    #[error("`{0}` is not a size: {SIZE_EXPECTED}{1}")]
    NotASize(String, String),
    /// The value does not fit (durations: about 584 years; sizes: 2^64 - 1 bytes).
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses a duration: one or more `<integer><unit>` parts with units `ns`, `us`, `ms`, `s`,
/// `m`, `h`, `d` from largest to smallest, e.g. `250us`, `2s`, `1m30s`, `0s`.
///
/// # Errors
/// [`UnitError`]: not a duration (with a hint when the unit is missing or unknown),
/// units out of order, or more than about 584 years.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let input = text.trim();
    if input.is_empty() {
        return Err(UnitError::NotADuration(input.to_owned()));
    }
    let mut rest = input;
    let mut total: u128 = 0;
    let mut last_rank = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(UnitError::NotADuration(input.to_owned()));
        }
        let number: u128 = rest[..digits]
            .parse::<u64>()
            .map_err(|_| UnitError::TooLarge(input.to_owned()))?
            .into();
        rest = rest[digits..].trim_start();
        let unit_len = rest.len() - rest.trim_start_matches(|c: char| c.is_alphabetic()).len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        if unit.is_empty() {
            return Err(if rest.is_empty() && last_rank.is_none() {
                UnitError::MissingDurationUnit(input.to_owned())
            } else {
                UnitError::NotADuration(input.to_owned())
            });
        }
        let Some(rank) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(UnitError::UnknownDurationUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            });
        };
        if last_rank.is_some_and(|last| rank <= last) {
            return Err(UnitError::DurationUnitOrder(input.to_owned()));
        }
        last_rank = Some(rank);
        total = number
            .checked_mul(DURATION_UNITS[rank].1)
            .and_then(|nanos| total.checked_add(nanos))
            .ok_or_else(|| UnitError::TooLarge(input.to_owned()))?;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| UnitError::TooLarge(input.to_owned()))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Parses a size in bytes: a plain integer (`1024`) or an integer and a unit: `B`, binary
/// `KiB`, `MiB`, `GiB`, `TiB` or decimal `KB`, `MB`, `GB`. Units are case-sensitive; a space
/// between number and unit is allowed.
///
/// # Errors
/// [`UnitError`]: not a size (with a hint), or more than 2^64 - 1 bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let input = text.trim();
    let digits = input.len() - input.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(UnitError::NotASize(input.to_owned(), String::new()));
    }
    let number: u64 = input[..digits]
        .parse()
        .map_err(|_| UnitError::TooLarge(input.to_owned()))?;
    let unit = input[digits..].trim_start();
    if unit.is_empty() {
        return Ok(number);
    }
    match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
        Some((_, factor)) => number
            .checked_mul(*factor)
            .ok_or_else(|| UnitError::TooLarge(input.to_owned())),
        None => {
            let hint = SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(name, _)| {
                    format!(" (units are case-sensitive: did you mean `{number}{name}`?)")
                })
                .unwrap_or_default();
            Err(UnitError::NotASize(input.to_owned(), hint))
        }
    }
}

/// Formats a duration the way [`parse_duration`] reads it, e.g. `1m30s`, `250us`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, length) in DURATION_UNITS {
        if nanos >= length {
            out.push_str(&format!("{}{name}", nanos / length));
            nanos %= length;
        }
    }
    out
}

/// Formats a size the way [`parse_size`] reads it, in the largest binary unit that divides
/// it exactly, e.g. `128MiB`, `64KiB`, `1000B`.
pub fn format_size(bytes: u64) -> String {
    for (name, factor) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(factor) {
            return format!("{}{name}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn valid_durations() {
        let cases = [
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
            ("1500ns", Duration::from_nanos(1500)),
            ("50ms", ms(50)),
            ("2s", ms(2_000)),
            ("1m", ms(60_000)),
            ("1h", ms(3_600_000)),
            ("1d", ms(86_400_000)),
            ("1m30s", ms(90_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("1d1ms", ms(86_400_001)),
            ("90s", ms(90_000)),
            ("1m 30s", ms(90_000)),
            (" 2s ", ms(2_000)),
            ("10 ms", ms(10)),
            ("007s", ms(7_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn invalid_durations() {
        let not = |s: &str| UnitError::NotADuration(s.to_owned());
        let unknown = |s: &str, u: &str| UnitError::UnknownDurationUnit {
            input: s.to_owned(),
            unit: u.to_owned(),
        };
        let cases = [
            ("", not("")),
            ("   ", not("")),
            ("s", not("s")),
            ("ms50", not("ms50")),
            ("-1s", not("-1s")),
            ("1.5s", not("1.5s")),
            ("1s_", not("1s_")),
            ("2", UnitError::MissingDurationUnit("2".to_owned())),
            ("1m30", not("1m30")),
            ("2S", unknown("2S", "S")),
            ("5sec", unknown("5sec", "sec")),
            ("3µs", unknown("3µs", "µs")),
            ("30s1m", UnitError::DurationUnitOrder("30s1m".to_owned())),
            ("1s1s", UnitError::DurationUnitOrder("1s1s".to_owned())),
            (
                "99999999999999999999s",
                UnitError::TooLarge("99999999999999999999s".to_owned()),
            ),
            (
                "18446744073709551615d",
                UnitError::TooLarge("18446744073709551615d".to_owned()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn duration_messages() {
        assert_eq!(
            parse_duration("5x").unwrap_err().to_string(),
            "`5x` is not a duration: unknown unit `x`, expected ns, us, ms, s, m, h or d"
        );
        assert_eq!(
            parse_duration("fast").unwrap_err().to_string(),
            "`fast` is not a duration: expected a number followed by ns, us, ms, s, m, h or d (e.g. `50ms`, `1m30s`)"
        );
        assert_eq!(
            parse_duration("2").unwrap_err().to_string(),
            "`2` is not a duration: add a unit, e.g. `2s` or `2ms`"
        );
    }

    #[test]
    fn valid_sizes() {
        let cases = [
            ("0", 0),
            ("4096", 4096),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("128MiB", 128 << 20),
            ("1GiB", 1 << 30),
            ("1TiB", 1 << 40),
            ("10KB", 10_000),
            ("64MB", 64_000_000),
            ("2GB", 2_000_000_000),
            ("64 MiB", 64 << 20),
            (" 1KiB ", 1024),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn invalid_sizes() {
        let not = |s: &str| UnitError::NotASize(s.to_owned(), String::new());
        let cases = [
            ("", not("")),
            ("MiB", not("MiB")),
            ("64MB_", not("64MB_")),
            ("1.5GiB", not("1.5GiB")),
            ("-1", not("-1")),
            ("1_000", not("1_000")),
            ("8Mi", not("8Mi")),
            ("1TB", not("1TB")),
            ("1KiB2", not("1KiB2")),
            (
                "64mib",
                UnitError::NotASize(
                    "64mib".to_owned(),
                    " (units are case-sensitive: did you mean `64MiB`?)".to_owned(),
                ),
            ),
            ("16777216TiB", UnitError::TooLarge("16777216TiB".to_owned())),
            (
                "99999999999999999999",
                UnitError::TooLarge("99999999999999999999".to_owned()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn size_messages() {
        assert_eq!(
            parse_size("64MB_").unwrap_err().to_string(),
            "`64MB_` is not a size: expected a number followed by B, KiB, MiB, GiB, TiB, KB, MB or GB"
        );
        assert_eq!(
            parse_size("64mb").unwrap_err().to_string(),
            "`64mb` is not a size: expected a number followed by B, KiB, MiB, GiB, TiB, KB, MB or GB \
             (units are case-sensitive: did you mean `64MB`?)"
        );
    }

    #[test]
    fn formatting_round_trips() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (ms(50), "50ms"),
            (ms(90_000), "1m30s"),
            (Duration::from_micros(1_250), "1ms250us"),
            (Duration::from_nanos(86_400_000_000_001), "1d1ns"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
        for (bytes, text) in [
            (0, "0B"),
            (1000, "1000B"),
            (64 << 10, "64KiB"),
            (128 << 20, "128MiB"),
            (3 << 30, "3GiB"),
            (1 << 40, "1TiB"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes));
        }
    }
}
