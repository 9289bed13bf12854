//! When the next launched worker may start: the decision, made without
//! processes or sockets.
//!
//! Starting a thousand processes at once does not get a thousand workers
//! running sooner. They all compete for the same cores while they exec, load
//! their certificates and run their TLS handshakes; the allocator's
//! handshake slots refuse most of them, and they come back on backoff; and
//! the workers that *did* join have to keep their heartbeats on time in the
//! middle of that storm. So a launch keeps at most `max_joining` workers
//! *joining* at once: started, but not yet welcomed. A welcomed worker frees
//! its place, and so does one that ended before it was welcomed (it exited,
//! or could not be spawned): the launch never waits on a dead child.
//!
//! This is the right shape on a real cluster too. The allocator's cost per
//! joining worker (a TLS handshake, a Hello, a first window of streams) is
//! paid on the allocator's host whatever the launcher is, so the rate at
//! which it can admit workers is what bounds a launch; more children
//! started at once only turn into refused handshakes and retries. A window
//! instead of a fixed rate adapts by itself: on a fast allocator, workers
//! are welcomed quickly and the next ones start at once; on a loaded one
//! the launch slows down instead of failing.

use std::collections::{BTreeSet, VecDeque};

/// Workers of one launch waiting to start and joining now.
#[derive(Debug)]
pub(crate) struct LaunchWindow {
    max_joining: usize,
    waiting: VecDeque<u32>,
    joining: BTreeSet<u32>,
}

impl LaunchWindow {
    /// A window over `indexes`, started in order, at most `max_joining` at
    /// once (at least one).
    pub(crate) fn new(max_joining: usize, indexes: impl IntoIterator<Item = u32>) -> Self {
        LaunchWindow {
            max_joining: max_joining.max(1),
            waiting: indexes.into_iter().collect(),
            joining: BTreeSet::new(),
        }
    }

    /// The next worker to start now, if the window has a free place; it
    /// counts as joining from now on.
    pub(crate) fn next_to_start(&mut self) -> Option<u32> {
        if self.joining.len() >= self.max_joining {
            return None;
        }
        let index = self.waiting.pop_front()?;
        self.joining.insert(index);
        Some(index)
    }

    /// Worker `index` is no longer joining: it was welcomed, or it ended
    /// (exited, or could not be started) before that. Its place is free.
    /// An index not joining changes nothing.
    pub(crate) fn on_done(&mut self, index: u32) {
        self.joining.remove(&index);
    }

    /// The workers joining now (started, not yet welcomed or ended).
    pub(crate) fn joining(&self) -> impl Iterator<Item = u32> + '_ {
        self.joining.iter().copied()
    }

    /// Workers not started yet.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether every worker has been started.
    pub(crate) fn all_started(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_all_now(w: &mut LaunchWindow) -> Vec<u32> {
        std::iter::from_fn(|| w.next_to_start()).collect()
    }

    #[test]
    fn starts_at_most_the_window_and_in_order() {
        let mut w = LaunchWindow::new(3, 10..20);
        assert_eq!(start_all_now(&mut w), vec![10, 11, 12]);
        assert_eq!(w.next_to_start(), None);
        assert_eq!(w.waiting(), 7);
        assert_eq!(w.joining().collect::<Vec<_>>(), vec![10, 11, 12]);
    }

    #[test]
    fn a_welcomed_or_dead_worker_frees_its_place() {
        let mut w = LaunchWindow::new(2, 0..5);
        assert_eq!(start_all_now(&mut w), vec![0, 1]);
        // Welcomed.
        w.on_done(1);
        assert_eq!(start_all_now(&mut w), vec![2]);
        // Exited before its Welcome (or could not be spawned).
        w.on_done(0);
        assert_eq!(start_all_now(&mut w), vec![3]);
        w.on_done(2);
        w.on_done(3);
        assert_eq!(start_all_now(&mut w), vec![4]);
        assert!(w.all_started());
        assert_eq!(w.next_to_start(), None);
    }

    #[test]
    fn unknown_or_repeated_ends_free_nothing() {
        let mut w = LaunchWindow::new(2, 0..4);
        assert_eq!(start_all_now(&mut w), vec![0, 1]);
        // A worker of another launch, or one reported twice (joined, then exited).
        w.on_done(99);
        w.on_done(0);
        w.on_done(0);
        assert_eq!(start_all_now(&mut w), vec![2]);
        assert_eq!(w.next_to_start(), None);
    }

    #[test]
    fn a_zero_window_still_makes_progress() {
        let mut w = LaunchWindow::new(0, 0..2);
        assert_eq!(start_all_now(&mut w), vec![0]);
        w.on_done(0);
        assert_eq!(start_all_now(&mut w), vec![1]);
    }
}
