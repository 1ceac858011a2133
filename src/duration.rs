//! The one parser of human durations (`10s`, `500ms`, `5m`, `1h 30m`): every duration read from the
//! command line (clap's `value_parser`), from user-data (`discovery_timeout`) or any other text
//! goes through [`parse_duration`], so they all accept the same syntax and fail with the same message.
//!
//! Must never: accept a syntax one place takes and another refuses; invent a unit for a bare number
//! (`10` is refused: seconds or milliseconds would be a guess). Durations in the cluster file are
//! integers with the unit in the field's name (`flush_interval_us`) and are not parsed here.

use std::time::Duration;

/// Text that is not a duration, or not one the caller can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a duration like 10s, 500ms or 5m: {why}")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub why: String,
}

/// Parses a duration in humantime's syntax: a number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`,
/// `d`, and their long forms), possibly several (`1m 30s`).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s).map_err(|e| DurationError { input: s.to_string(), why: e.to_string() })
}

/// [`parse_duration`], refusing zero: for periods and timeouts, where zero would spin or never wait.
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(DurationError { input: s.to_string(), why: "it must be longer than zero".into() });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syntax_used_so_far_parses() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("20m", Duration::from_secs(1200)),
            ("1h 30m", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("2sec", Duration::from_secs(2)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_quote_the_input_in_one_form() {
        for bad in ["10", "ten seconds", "", "5 parsecs", "-1s"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("'{bad}' is not a duration like 10s, 500ms or 5m: ")), "{e}");
        }
        let e = parse_nonzero_duration("0ms").unwrap_err().to_string();
        assert_eq!(e, "'0ms' is not a duration like 10s, 500ms or 5m: it must be longer than zero");
        assert_eq!(parse_nonzero_duration("1ms"), Ok(Duration::from_millis(1)));
    }
}
