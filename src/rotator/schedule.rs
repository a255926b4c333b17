//! When the rotator runs: the schedule and the retry backoff, as pure
//! functions of what the ledger records and the clock the caller reads.
//!
//! The next scheduled run is one interval after the last recorded rotation
//! (its `kernel.rotate` entry), or, on a ledger that has never rotated, one
//! interval after its first entry. Both come from the ledger, so a restart
//! does not move the schedule: a service restarted more often than its
//! interval still rotates, and a run that is overdue at start runs at once.
//! A failed run is retried after an exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Longest wait between retries of a failing run.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a failure.
pub const BASE_BACKOFF: Duration = Duration::from_secs(2);

/// When the next scheduled run is due (ms): one `interval` after the last
/// recorded rotation, else after the first entry, else (an empty ledger)
/// after `now_ms`. A time in the past means the run is overdue.
pub fn next_due_ms(
    last_rotation_ms: Option<u64>,
    first_entry_ms: Option<u64>,
    interval: Duration,
    now_ms: u64,
) -> u64 {
    let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    last_rotation_ms
        .or(first_entry_ms)
        .unwrap_or(now_ms)
        .saturating_add(interval)
}

/// The wait before retry number `failures` (1 = after the first failure):
/// [`BASE_BACKOFF`] doubled per failure, capped at [`MAX_BACKOFF`], times a
/// random factor in 0.5..=1 so that many kernels do not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    let cap = exp.min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.5..=1.0);
    cap.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_schedule_follows_the_ledger_not_the_start_time() {
        let day = 86_400_000;
        // Given a ledger that rotated on day 10, when the service starts on
        // day 12, then the next run is on day 17.
        assert_eq!(
            next_due_ms(Some(10 * day), Some(day), 7 * DAY, 12 * day),
            17 * day
        );
        // Given a ledger that never rotated and began on day 1, when the
        // service starts on day 9, then the run is overdue (day 8): at once.
        let due = next_due_ms(None, Some(day), 7 * DAY, 9 * day);
        assert_eq!(due, 8 * day);
        assert!(due < 9 * day);
        // Given an empty ledger, the first run is one interval from now.
        assert_eq!(next_due_ms(None, None, DAY, 5), 5 + day);
        // Huge intervals saturate instead of wrapping.
        assert_eq!(
            next_due_ms(Some(1), None, Duration::from_secs(u64::MAX), 0),
            u64::MAX
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for failures in 1..40 {
            let b = backoff(failures);
            let full = BASE_BACKOFF
                .saturating_mul(1u32 << failures.min(16).saturating_sub(1))
                .min(MAX_BACKOFF);
            assert!(b <= full && b >= full / 2, "{failures}: {b:?} vs {full:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF);
    }
}
