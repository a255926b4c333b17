//! Durations in the configuration: `250ms`, `10s`, `30m`, `12h`, `7d` —
//! positive and bounded, with errors that name the key or variable.

use std::time::Duration;

use super::error::{ConfigError, err};

/// The longest duration any setting takes (100 years): every later
/// computation in milliseconds or `Instant`s stays far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a positive duration like `7d`, `12h`, `30m`, `10s`, `250ms` (at
/// most [`MAX_DURATION`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{text}' is not a duration (use ms, s, m, h or d units, e.g. 7d)"
        ));
    }
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use ms, s, m, h or d)"
            ));
        }
    };
    let too_long = || {
        format!(
            "'{text}' is too long (at most {}d)",
            MAX_DURATION.as_secs() / 86_400
        )
    };
    // All digits: a parse failure can only be a number past u64.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    if n == 0 {
        return Err(format!("'{text}': a duration must be positive"));
    }
    let ms = n
        .checked_mul(ms_per_unit)
        .filter(|ms| u128::from(*ms) <= MAX_DURATION.as_millis())
        .ok_or_else(too_long)?;
    Ok(Duration::from_millis(ms))
}

/// A duration setting: the environment variable `var` overrides the file's
/// `key`; `default` applies when neither is given. Errors name where the
/// bad value came from.
pub(super) fn duration_setting(
    key: &str,
    var: &str,
    file: Option<&str>,
    default: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Duration, ConfigError> {
    match env(var) {
        Some(v) => parse_duration(&v).map_err(|e| err(format!("{var} ({key}): {e}"))),
        None => parse_duration(file.unwrap_or(default)).map_err(|e| err(format!("{key}: {e}"))),
    }
}

/// A count setting: `var` overrides the file's `key`.
pub(super) fn count_setting(
    key: &str,
    var: &str,
    file: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<usize>, ConfigError> {
    match env(var) {
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| err(format!("{var} ({key}) '{v}' is not a number"))),
        None => Ok(file),
    }
}
