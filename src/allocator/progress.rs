//! How far an allocation has come: counts of workers and procs, as data.
//!
//! A launch of hundreds of workers takes seconds to minutes; a program that
//! waits for it wants to show how far it is, in its own way (a bar on a
//! terminal, a line in a log, a metric). [`Progress`] is what it needs,
//! taken at one moment by [`Allocator::progress`](super::Allocator::progress);
//! `quicmesh demo` draws its bar from it.

use std::fmt;

/// Counts of an allocation's workers and procs at one moment.
///
/// Counts only grow, except `connected`: a worker counted in `joined` stays
/// there after it leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Worker indexes reserved (by `launch` or `reserve`).
    pub workers: usize,
    /// Worker processes this allocator started.
    pub started: usize,
    /// Workers welcomed so far.
    pub joined: usize,
    /// Workers connected now.
    pub connected: usize,
    /// Launched workers that could not be started at all.
    pub spawn_failed: usize,
    /// Launched workers that exited.
    pub exited: usize,
    /// Of those, the ones that did not exit 0.
    pub exited_failed: usize,
    /// Procs of the allocation (reserved, running or ended).
    pub procs: usize,
    /// Procs running now.
    pub procs_running: usize,
    /// Procs that failed.
    pub procs_failed: usize,
    /// Procs stopped in order.
    pub procs_stopped: usize,
}

impl Progress {
    /// Workers that failed before or after joining: could not be started, or
    /// exited other than 0.
    pub fn workers_failed(&self) -> usize {
        self.spawn_failed + self.exited_failed
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workers: {} joined, {} failed of {}; procs: {} running, {} failed of {}",
            self.joined,
            self.workers_failed(),
            self.workers,
            self.procs_running,
            self.procs_failed,
            self.procs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_both_kinds_and_show_in_the_text() {
        let p = Progress {
            workers: 10,
            joined: 7,
            spawn_failed: 1,
            exited_failed: 2,
            procs: 20,
            procs_running: 14,
            procs_failed: 4,
            ..Progress::default()
        };
        assert_eq!(p.workers_failed(), 3);
        assert_eq!(
            p.to_string(),
            "workers: 7 joined, 3 failed of 10; procs: 14 running, 4 failed of 20"
        );
    }
}
