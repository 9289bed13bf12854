//! The round trip of a peer's path: where it is read, published, and judged
//! against the heartbeat timeout.
//!
//! **Where the figure comes from.** Each heartbeat tick reads quinn's
//! smoothed round-trip estimate of the connection (`Connection::rtt`) rather
//! than echoing timestamps in the heartbeats:
//!
//! - it is RFC 9002's estimate, fed by every acknowledged packet (heartbeats,
//!   stream data, acknowledgements of acknowledgements), not one beat per
//!   interval, and with the peer's own acknowledgement delay taken out, so
//!   it is steady under jitter and loss;
//! - it needs nothing on the wire: echoing the peer's `sent_at_micros` would
//!   need a new heartbeat field (a protocol change) and would be a number
//!   chosen by the peer, to bound and distrust; a peer can only make quinn's
//!   estimate larger, by acknowledging late, never smaller than the path;
//! - it measures what the heartbeat judge relies on: a peer is alive as long
//!   as its heartbeats *or its acknowledgements of ours* arrive
//!   ([`crate::heartbeat`]), and acknowledgements are exactly what this
//!   round trip times.
//!
//! **When it is a problem.** A heartbeat timeout shorter than
//! [`SAFE_RTT_MULTIPLE`] round trips leaves too little room on a slow path:
//! a lost packet is only declared lost and sent again after about one and a
//! half round trips plus the variance (QUIC's probe timeout), so one loss
//! recovery, plus the one-way trip of the next beat, already takes two to
//! three round trips of silence. [`RttWatch`] turns samples into a warning
//! when the timeout stays below that multiple, and the warnings of all
//! connections in a process share one small budget ([`WarningBudget`]), so
//! a thousand workers behind one slow link produce a few lines, not a
//! thousand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// A heartbeat timeout should span at least this many round trips.
pub const SAFE_RTT_MULTIPLE: u32 = 4;

/// How long the round trip must stay too slow, sample after sample, before
/// a warning: a few slow samples (a machine busy starting many processes,
/// a burst of queueing) are noise, a path that stays slow is not.
pub const SLOW_FOR: Duration = Duration::from_secs(5);

/// Least time between two warnings about the same connection.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Most warnings per second across every connection of the process.
pub const WARNINGS_PER_SECOND: u32 = 5;

/// The last round trip measured on one connection, shared between the
/// heartbeat task that writes it and whoever reads it.
#[derive(Debug, Clone, Default)]
pub struct RttCell(Arc<AtomicU64>);

impl RttCell {
    /// A cell with no measurement yet.
    pub fn new() -> RttCell {
        RttCell::default()
    }

    /// Records a measurement (rounded to the microsecond, at least 1 us).
    pub fn set(&self, rtt: Duration) {
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.store(micros, Ordering::Relaxed);
    }

    /// The last measurement, if there has been one.
    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// A heartbeat timeout found too short for a path's round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttWarning {
    /// The round trip measured.
    pub rtt: Duration,
    /// The heartbeat timeout in force.
    pub timeout: Duration,
    /// The shortest timeout considered safe for that round trip.
    pub safe_timeout: Duration,
}

impl fmt::Display for RttWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heartbeat timeout {:?} is less than {SAFE_RTT_MULTIPLE} round trips \
             (round trip {:?}): a little more delay or loss on this path could end \
             the connection as dead; use a heartbeat timeout of at least {:?}",
            self.timeout, self.rtt, self.safe_timeout
        )
    }
}

/// Judges a connection's round-trip samples against its heartbeat timeout.
///
/// Plain code: told each sample and when it was taken, it answers whether
/// to warn. It warns when every sample for [`SLOW_FOR`] was too slow for
/// the timeout, then at most once per [`WARN_EVERY`].
#[derive(Debug, Clone)]
pub struct RttWatch {
    timeout: Duration,
    /// When the current run of too-slow samples began.
    slow_since: Option<Instant>,
    last_warned: Option<Instant>,
}

impl RttWatch {
    /// A watch for a connection whose heartbeat timeout is `timeout`.
    pub fn new(timeout: Duration) -> RttWatch {
        RttWatch {
            timeout,
            slow_since: None,
            last_warned: None,
        }
    }

    /// The shortest heartbeat timeout considered safe for round trip `rtt`.
    pub fn safe_timeout(rtt: Duration) -> Duration {
        rtt.saturating_mul(SAFE_RTT_MULTIPLE)
    }

    /// Records that the round trip was `rtt` at `now`; returns a warning
    /// when one is due.
    pub fn on_sample(&mut self, rtt: Duration, now: Instant) -> Option<RttWarning> {
        let safe_timeout = Self::safe_timeout(rtt);
        if self.timeout >= safe_timeout {
            self.slow_since = None;
            return None;
        }
        let since = *self.slow_since.get_or_insert(now);
        if now.saturating_duration_since(since) < SLOW_FOR {
            return None;
        }
        if let Some(last) = self.last_warned {
            if now.saturating_duration_since(last) < WARN_EVERY {
                return None;
            }
        }
        self.last_warned = Some(now);
        Some(RttWarning {
            rtt,
            timeout: self.timeout,
            safe_timeout,
        })
    }
}

/// A budget of warnings per one-second window, shared by many connections.
#[derive(Debug, Clone)]
pub struct WarningBudget {
    per_second: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl WarningBudget {
    /// A budget of `per_second` warnings in each one-second window.
    pub const fn new(per_second: u32) -> WarningBudget {
        WarningBudget {
            per_second,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a warning may be written at `now`: `Some(n)` where `n` is how
    /// many were left out since the last one written, `None` if this one
    /// must be left out too (it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window_start {
            Some(start) => now.saturating_duration_since(start) >= Duration::from_secs(1),
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// The budget every connection of this process draws from.
static BUDGET: Mutex<WarningBudget> = Mutex::new(WarningBudget::new(WARNINGS_PER_SECOND));

/// Logs `warning` about `peer` if the process-wide budget allows.
pub(crate) fn log_warning(peer: &str, warning: &RttWarning) {
    let Some(suppressed) = lock(&BUDGET).admit(Instant::now()) else {
        return;
    };
    if suppressed > 0 {
        tracing::warn!("{peer}: {warning} ({suppressed} similar warnings left out)");
    } else {
        tracing::warn!("{peer}: {warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cell_starts_empty_and_keeps_the_last_sample() {
        let cell = RttCell::new();
        assert_eq!(cell.get(), None);
        let reader = cell.clone();
        cell.set(100 * MS);
        assert_eq!(reader.get(), Some(100 * MS));
        cell.set(Duration::ZERO);
        assert_eq!(
            reader.get(),
            Some(Duration::from_micros(1)),
            "zero is still a sample"
        );
        cell.set(Duration::MAX);
        assert!(reader.get().is_some());
    }

    #[test]
    fn a_timeout_of_four_round_trips_or_more_is_never_warned_about() {
        let t0 = Instant::now();
        let mut watch = RttWatch::new(1500 * MS);
        for i in 0..100u32 {
            assert_eq!(watch.on_sample(375 * MS, t0 + 250 * MS * i), None);
        }
    }

    #[test]
    fn a_short_timeout_is_warned_about_once_slow_for_a_while_then_once_a_minute() {
        let t0 = Instant::now();
        let mut watch = RttWatch::new(300 * MS);
        let at = |i: u32| t0 + 250 * MS * i;
        // Slow from sample 0 on: quiet until SLOW_FOR (5 s, sample 20) has passed.
        for i in 0..20 {
            assert_eq!(watch.on_sample(100 * MS, at(i)), None, "sample {i}");
        }
        let warning = watch.on_sample(100 * MS, at(20)).expect("warned");
        assert_eq!(
            warning,
            RttWarning {
                rtt: 100 * MS,
                timeout: 300 * MS,
                safe_timeout: 400 * MS
            }
        );
        let text = warning.to_string();
        assert!(text.contains("300ms") && text.contains("400ms"), "{text}");
        // Still slow: quiet until a minute has passed since the warning.
        let quiet = (21..260).filter_map(|i| watch.on_sample(100 * MS, at(i)));
        assert_eq!(quiet.count(), 0);
        assert!(watch.on_sample(100 * MS, at(20) + WARN_EVERY).is_some());
    }

    #[test]
    fn one_fast_sample_resets_the_run_of_slow_ones() {
        let t0 = Instant::now();
        let mut watch = RttWatch::new(300 * MS);
        for i in 0..200u32 {
            let rtt = if i % 19 == 18 { 10 * MS } else { 100 * MS };
            assert_eq!(watch.on_sample(rtt, t0 + 250 * MS * i), None, "sample {i}");
        }
    }

    #[test]
    fn absurd_round_trips_do_not_overflow() {
        let mut watch = RttWatch::new(1500 * MS);
        let t0 = Instant::now();
        assert_eq!(watch.on_sample(Duration::MAX, t0), None);
        let w = watch.on_sample(Duration::MAX, t0 + SLOW_FOR);
        assert_eq!(w.map(|w| w.safe_timeout), Some(Duration::MAX));
    }

    #[test]
    fn the_budget_allows_a_few_lines_a_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut budget = WarningBudget::new(5);
        let admitted: Vec<Option<u64>> = (0..1000).map(|_| budget.admit(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 5);
        assert!(admitted[..5].iter().all(|a| *a == Some(0)));
        assert_eq!(budget.admit(t0 + 999 * MS), None);
        assert_eq!(
            budget.admit(t0 + 1000 * MS),
            Some(996),
            "the next line says how many were left out"
        );
        assert_eq!(budget.admit(t0 + 1001 * MS), Some(0));
    }
}
