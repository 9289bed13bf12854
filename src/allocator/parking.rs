//! Envelopes a proc sent to a destination that is full, waiting in line.
//!
//! The allocator reads each proc's mailbox stream in one task. If that task
//! waited whenever an envelope's destination was full, one slow destination
//! would stop the sender's traffic to every other destination too. Instead
//! an envelope for a full destination is parked in a line of its own (one
//! line per destination), and a small task per line forwards the line in
//! order as room appears; the stream goes on being read. Once a destination
//! has a line, later envelopes for it join the line rather than overtaking
//! it, so order between one sender and one receiver holds.
//!
//! Parked envelopes are charged to the sending proc's parking budget: a
//! proc that keeps sending to full destinations fills its own budget, and
//! only then does the allocator stop reading its stream (backpressure on
//! that proc alone).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::id::ProcId;
use crate::queue::{Budget, Permit};
use crate::sync::lock;
use crate::wire::Envelope;

/// The lines of one sending proc.
pub(crate) struct Parking {
    budget: Arc<Budget>,
    lines: Mutex<HashMap<ProcId, VecDeque<(Envelope, Permit)>>>,
    /// Number of lines, read without the lock on every envelope.
    active: AtomicUsize,
}

impl Parking {
    /// Lines sharing a budget of `budget_bytes`.
    pub(crate) fn new(budget_bytes: usize) -> Parking {
        Parking {
            budget: Budget::new(budget_bytes),
            lines: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
        }
    }

    /// The budget parked envelopes are charged to.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Whether envelopes for `dest` are waiting: a new one must join the line.
    pub(crate) fn has_line(&self, dest: &ProcId) -> bool {
        self.active.load(Ordering::Acquire) > 0 && lock(&self.lines).contains_key(dest)
    }

    /// Puts `env` at the end of its destination's line.
    ///
    /// Returns true if the line is new: the caller must start a task that
    /// forwards it (see [`Parking::next`]).
    pub(crate) fn park(&self, env: Envelope, permit: Permit) -> bool {
        let mut lines = lock(&self.lines);
        let dest = env.to.proc_id().clone();
        let new = !lines.contains_key(&dest);
        lines.entry(dest).or_default().push_back((env, permit));
        if new {
            self.active.fetch_add(1, Ordering::Release);
        }
        new
    }

    /// The next envelope of `dest`'s line; `None` once the line is empty,
    /// and then the line is gone (so the next envelope for `dest` may be
    /// forwarded directly again).
    pub(crate) fn next(&self, dest: &ProcId) -> Option<(Envelope, Permit)> {
        let mut lines = lock(&self.lines);
        let line = lines.get_mut(dest)?;
        match line.pop_front() {
            Some(item) => Some(item),
            None => {
                lines.remove(dest);
                self.active.fetch_sub(1, Ordering::Release);
                None
            }
        }
    }

    /// Bytes parked now.
    pub(crate) fn parked_bytes(&self) -> u64 {
        self.budget.used_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Dest;

    fn env(id: u64, to_rank: u32) -> Envelope {
        let from = ProcId::new("m", 0).actor("a", 0);
        Envelope {
            id,
            from,
            to: Dest::Actor(ProcId::new("m", to_rank).actor("b", 0)),
            return_port: None,
            payload: vec![0; 10],
        }
    }

    #[test]
    fn lines_keep_order_and_vanish_when_empty() {
        let p = Parking::new(1 << 20);
        let dest = ProcId::new("m", 1);
        assert!(!p.has_line(&dest));
        assert!(
            p.park(env(1, 1), Permit::none()),
            "first envelope opens a line"
        );
        assert!(!p.park(env(2, 1), Permit::none()));
        assert!(
            p.park(env(3, 2), Permit::none()),
            "another destination, another line"
        );
        assert!(p.has_line(&dest));
        assert_eq!(p.next(&dest).map(|(e, _)| e.id), Some(1));
        assert_eq!(p.next(&dest).map(|(e, _)| e.id), Some(2));
        assert!(p.has_line(&dest), "the line lasts until found empty");
        assert!(p.next(&dest).is_none());
        assert!(!p.has_line(&dest));
        assert!(p.has_line(&ProcId::new("m", 2)));
    }

    #[test]
    fn parked_bytes_are_charged_until_forwarded() {
        let p = Parking::new(1 << 20);
        let e = env(1, 1);
        let permit = p.budget().try_reserve(e.wire_size()).unwrap();
        p.park(e, permit);
        assert!(p.parked_bytes() > 0);
        let taken = p.next(&ProcId::new("m", 1));
        assert!(p.parked_bytes() > 0, "still charged while being forwarded");
        drop(taken);
        assert_eq!(p.parked_bytes(), 0);
    }
}
