//! How a stopping worker spends its stop timeout.
//!
//! After `StopAndExit` the allocator waits its configured stop timeout (sent
//! in `Welcome`) for the worker's `Leaving`; past it, it reports the worker's
//! procs failed and kills a launched worker. So the worker cannot give its
//! actors the whole timeout: the frames that follow them (`ProcStopped`,
//! `Leaving`) must still reach the allocator in time, and the process must
//! still end. [`StopBudget`] splits the timeout `T` into deadlines counted
//! from the moment the stop began:
//!
//! | by | what must be done | past it |
//! |---|---|---|
//! | `T/2` | actors have finished their message and their stop hook | their tasks are aborted and reported |
//! | `3T/4` | mailbox streams are flushed, their tasks ended | those tasks are abandoned |
//! | `7T/8` | `Leaving` is sent and acknowledged | the worker closes the connection itself |
//!
//! The last eighth is left for the close to go out and the process to end,
//! so the whole stop fits in `T` whatever the actors do. A signal (SIGTERM,
//! SIGINT) stops the worker with the same budget. Plain code: the deadlines
//! are computed from a given start, and tested without a clock.

use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::MAX_STOP_TIMEOUT;

/// The stop timeout of a worker, and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopBudget {
    timeout: Duration,
}

/// The instants by which each part of a stop must be done (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopDeadlines {
    /// Actors still running after this are aborted.
    pub actors: Instant,
    /// Mailbox stream tasks still running after this are abandoned.
    pub streams: Instant,
    /// The worker stops waiting for the allocator's acknowledgement and exits.
    pub exit: Instant,
}

impl StopBudget {
    /// The budget of a worker whose allocator allows `timeout` for a stop (at most [`MAX_STOP_TIMEOUT`]).
    pub fn new(timeout: Duration) -> Self {
        StopBudget {
            timeout: timeout.min(MAX_STOP_TIMEOUT),
        }
    }

    /// The whole stop timeout, after clamping.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long an actor told to stop may take to finish its message and its stop hook.
    pub fn actor_timeout(&self) -> Duration {
        self.timeout / 2
    }

    /// The deadlines of a stop that begins at `start`.
    pub fn deadlines(&self, start: Instant) -> StopDeadlines {
        let eighth = self.timeout / 8;
        StopDeadlines {
            actors: start + self.actor_timeout(),
            streams: start + eighth * 6,
            exit: start + eighth * 7,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadlines_split_the_timeout_in_order() {
        let t0 = Instant::now();
        let d = StopBudget::new(8000 * MS).deadlines(t0);
        assert_eq!(d.actors, t0 + 4000 * MS);
        assert_eq!(d.streams, t0 + 6000 * MS);
        assert_eq!(d.exit, t0 + 7000 * MS);
    }

    #[test]
    fn everything_ends_within_the_timeout() {
        let t0 = Instant::now();
        for ms in [0, 1, 7, 999, 10_000, 123_457] {
            let budget = StopBudget::new(ms * MS);
            let d = budget.deadlines(t0);
            assert!(
                d.actors <= d.streams && d.streams <= d.exit,
                "{ms} ms: {d:?}"
            );
            assert!(d.exit <= t0 + budget.timeout(), "{ms} ms: {d:?}");
            assert_eq!(d.actors, t0 + budget.actor_timeout());
        }
    }

    #[test]
    fn absurd_timeouts_are_clamped_not_overflowed() {
        let budget = StopBudget::new(Duration::MAX);
        assert_eq!(budget.timeout(), MAX_STOP_TIMEOUT);
        let t0 = Instant::now();
        assert_eq!(budget.deadlines(t0).actors, t0 + MAX_STOP_TIMEOUT / 2);
    }

    #[test]
    fn a_zero_timeout_aborts_at_once() {
        let t0 = Instant::now();
        let d = StopBudget::new(Duration::ZERO).deadlines(t0);
        assert_eq!((d.actors, d.streams, d.exit), (t0, t0, t0));
    }
}
