//! When a proc that has messages waiting stops taking them: the stall judge.
//!
//! A worker can keep its connection and its heartbeats alive while never
//! reading one proc's mailbox stream. Envelopes for that proc then wait in
//! the allocator, every sender to it waits for room, and nothing else would
//! ever end it. The judge fails such a proc: if data has been waiting for it
//! and the worker has neither taken bytes off the stream nor acknowledged
//! anything for `timeout`, it is stalled. (A worker that reads but never
//! acknowledges fills the proc's budget with unacknowledged envelopes, after
//! which nothing more is written: it stalls too.)
//!
//! Time the allocator itself is not reading the worker's stream (because
//! the proc's own envelopes wait for a full destination, which is
//! backpressure the allocator applies) does not count: the worker's
//! acknowledgements travel on that stream and could not be seen.

use std::time::{Duration, Instant};

/// Decides whether a proc's peer has stopped making progress.
#[derive(Debug, Clone)]
pub(crate) struct StallJudge {
    timeout: Duration,
    /// Start of the current stretch without progress while data waited.
    since: Instant,
    /// Whether data was waiting at the last check.
    waiting: bool,
    paused: bool,
}

impl StallJudge {
    /// A judge with no stretch started yet.
    pub(crate) fn new(timeout: Duration, now: Instant) -> Self {
        StallJudge {
            timeout,
            since: now,
            waiting: false,
            paused: false,
        }
    }

    /// The peer acknowledged something, or took bytes off the stream, at `now`.
    pub(crate) fn on_progress(&mut self, now: Instant) {
        self.since = now;
    }

    /// The allocator stops reading the peer's stream (backpressure of its own).
    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    /// The allocator reads the peer's stream again at `now`.
    pub(crate) fn resume(&mut self, now: Instant) {
        self.paused = false;
        // Count from here if data still waits at the next check.
        self.waiting = true;
        self.since = now;
    }

    /// At `now`, with data `waiting` for the peer or not: how long it has
    /// been stalled, if it has been for the whole timeout.
    ///
    /// A stretch starts at the first check that sees data waiting, so a
    /// stall is never declared early (at most one check interval late).
    pub(crate) fn check(&mut self, now: Instant, waiting: bool) -> Option<Duration> {
        let was_waiting = std::mem::replace(&mut self.waiting, waiting && !self.paused);
        if !self.waiting || !was_waiting {
            self.since = now;
            return None;
        }
        let stalled = now.saturating_duration_since(self.since);
        (stalled >= self.timeout).then_some(stalled)
    }

    /// How often [`StallJudge::check`] should be called: often enough that a
    /// stall is declared at most a tenth of the timeout late, and never more
    /// than ten times a second.
    pub(crate) fn check_every(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn stalled_only_after_the_timeout_with_data_waiting() {
        let t0 = Instant::now();
        let mut j = StallJudge::new(30 * S, t0);
        assert_eq!(
            j.check(t0 + 100 * S, false),
            None,
            "nothing waits: not stalled"
        );
        assert_eq!(
            j.check(t0 + 110 * S, true),
            None,
            "waiting starts the clock"
        );
        assert_eq!(j.check(t0 + 139 * S, true), None);
        assert_eq!(j.check(t0 + 140 * S, true), Some(30 * S));
        assert_eq!(j.check(t0 + 141 * S, false), None);
        assert_eq!(j.check(t0 + 200 * S, true), None, "a new stretch starts");
    }

    #[test]
    fn progress_restarts_the_clock() {
        let t0 = Instant::now();
        let mut j = StallJudge::new(30 * S, t0);
        assert_eq!(j.check(t0, true), None);
        assert_eq!(j.check(t0 + 20 * S, true), None);
        j.on_progress(t0 + 25 * S);
        assert_eq!(j.check(t0 + 50 * S, true), None);
        assert_eq!(j.check(t0 + 55 * S, true), Some(30 * S));
    }

    #[test]
    fn time_spent_not_reading_the_peer_does_not_count() {
        let t0 = Instant::now();
        let mut j = StallJudge::new(30 * S, t0);
        j.check(t0, true);
        j.pause();
        assert_eq!(j.check(t0 + 100 * S, true), None);
        j.resume(t0 + 100 * S);
        assert_eq!(j.check(t0 + 129 * S, true), None);
        assert_eq!(j.check(t0 + 130 * S, true), Some(30 * S));
    }

    #[test]
    fn checks_are_frequent_but_not_busy() {
        let t0 = Instant::now();
        assert_eq!(StallJudge::new(30 * S, t0).check_every(), 3 * S);
        assert_eq!(
            StallJudge::new(S / 2, t0).check_every(),
            Duration::from_millis(100)
        );
        assert_eq!(StallJudge::new(600 * S, t0).check_every(), 5 * S);
    }
}
