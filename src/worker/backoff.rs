//! When a worker tries to join again: exponential backoff with full jitter,
//! bounded by the join deadline. Plain code, tested without sleeping.
//!
//! After the n-th failed attempt (n = 1, 2, ...) the worker waits a time
//! drawn uniformly from `0 ..= min(cap, base * 2^(n-1))` ("full jitter"). Exponential, so that a
//! refusing allocator sees fewer and fewer attempts; jittered over the whole
//! range, so that a burst of workers refused together (a launch larger than
//! the handshake cap, many workers behind one address) spreads out instead of
//! coming back in lockstep; capped, so that a worker is never more than a few
//! seconds late once the allocator can take it. No attempt starts at or
//! after the join deadline: when the wait drawn would reach it, the worker
//! gives up at once rather than sleep only to give up then. So a worker ends
//! by its deadline, at most one wait ([`CAP`]) before it.

use std::time::{Duration, Instant};

use rand::Rng;

/// First retry ceiling: a refused handshake on a LAN is retried within 100 ms.
pub const BASE: Duration = Duration::from_millis(100);

/// Largest wait between two attempts.
pub const CAP: Duration = Duration::from_secs(5);

/// The retry schedule of one join.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE, CAP)
    }
}

impl Backoff {
    /// A schedule whose first ceiling is `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// Failed attempts recorded so far.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The longest the next wait can be: `base * 2^failures`, at most `cap`
    /// (saturating, never overflowing).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }

    /// Records a failed attempt at `now` and says how long to wait before
    /// the next one, or `None` if that attempt could not start before
    /// `deadline` (give up).
    pub fn after_failure(
        &mut self,
        rng: &mut impl Rng,
        now: Instant,
        deadline: Instant,
    ) -> Option<Duration> {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let wait = rng.random_range(Duration::ZERO..=ceiling);
        let left = deadline.checked_duration_since(now)?;
        (wait < left).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_from_base_up_to_the_cap() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let far = now + Duration::from_secs(3600);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            b.after_failure(&mut rng, now, far).unwrap();
        }
        let ms: Vec<u128> = ceilings.iter().map(|c| c.as_millis()).collect();
        assert_eq!(
            ms,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(b.failures(), 10);
    }

    #[test]
    fn many_failures_saturate_at_the_cap() {
        let mut b = Backoff {
            failures: u32::MAX - 1,
            ..Backoff::default()
        };
        assert_eq!(b.ceiling(), CAP);
        let mut rng = StdRng::seed_from_u64(2);
        let now = Instant::now();
        b.after_failure(&mut rng, now, now + Duration::from_secs(60));
        b.after_failure(&mut rng, now, now + Duration::from_secs(60));
        assert_eq!(b.failures(), u32::MAX);
        assert_eq!(b.ceiling(), CAP);
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(), Duration::MAX);
    }

    #[test]
    fn waits_are_jittered_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let far = now + Duration::from_secs(3600);
        let mut waits = Vec::new();
        for _ in 0..2000 {
            // Always the fourth attempt: ceiling 800 ms.
            let mut b = Backoff {
                failures: 3,
                ..Backoff::default()
            };
            waits.push(b.after_failure(&mut rng, now, far).unwrap());
        }
        assert!(waits.iter().all(|w| *w <= 800 * MS));
        let below = waits.iter().filter(|w| **w < 200 * MS).count();
        let above = waits.iter().filter(|w| **w > 600 * MS).count();
        // Uniform: about a quarter each; far from both 0 and all.
        assert!((300..700).contains(&below), "{below} of 2000 below 200 ms");
        assert!((300..700).contains(&above), "{above} of 2000 above 600 ms");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 1900, "waits repeat: {}", distinct.len());
    }

    #[test]
    fn no_attempt_starts_at_or_after_the_deadline() {
        let mut rng = StdRng::seed_from_u64(4);
        let now = Instant::now();
        for left_ms in [1u32, 50, 99, 150] {
            let deadline = now + left_ms * MS;
            let (mut retried, mut gave_up) = (0, 0);
            for _ in 0..200 {
                let mut b = Backoff::default();
                match b.after_failure(&mut rng, now, deadline) {
                    Some(wait) => {
                        assert!(
                            now + wait < deadline,
                            "{} ns with {left_ms} ms left",
                            wait.as_nanos()
                        );
                        retried += 1;
                    }
                    None => gave_up += 1,
                }
            }
            // First ceiling 100 ms: with 50 ms left about half the draws fit.
            if left_ms == 50 {
                assert!(retried > 50 && gave_up > 50, "{retried} / {gave_up}");
            }
            if left_ms == 150 {
                assert_eq!(gave_up, 0);
            }
        }
        // At or past the deadline there is never another attempt.
        let mut b = Backoff::default();
        assert_eq!(b.after_failure(&mut rng, now, now), None);
        assert_eq!(b.after_failure(&mut rng, now + MS, now), None);
    }

    #[test]
    fn a_deadline_far_away_always_allows_a_retry() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b
                .after_failure(&mut rng, now, now + Duration::from_secs(6))
                .is_some());
        }
    }
}
