//! What the allocator wrote on one proc's mailbox stream and the worker has
//! not yet acknowledged, and what the worker's acks and refusals may claim.
//!
//! Every envelope written towards a worker gets the next position on its
//! stream (0, 1, 2...). The worker answers with cumulative acks ("the first
//! N envelopes are processed") and, before an ack covers it, may refuse one
//! by position. This type is the whole bookkeeping, without I/O:
//!
//! - an ack may not go backwards nor cover more than was written;
//! - a refusal must name an envelope written and not yet acknowledged, and
//!   only once; the allocator then returns *its own copy*, so a worker can
//!   neither forge a return nor refuse what it already acknowledged;
//! - when the link closes, what is left is handed back with whether it was
//!   certainly not delivered or possibly delivered.
//!
//! A refused envelope keeps its position (acks count it as processed) and
//! gives its envelope back at once; what the caller chooses to keep of it
//! (its budget share) stays in the position until the ack covers it, so a
//! worker that refuses everything and never acknowledges fills its own
//! budget, not someone else's memory.

use std::collections::VecDeque;
use std::fmt;

/// A claim by the worker that the bookkeeping rules out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// An ack of fewer envelopes than an earlier ack.
    AckBackwards { processed: u64, acked: u64 },
    /// An ack of more envelopes than were written.
    AckBeyondSent { processed: u64, sent: u64 },
    /// A refusal of an envelope already acknowledged.
    RefusedAcked { seq: u64, acked: u64 },
    /// A refusal of an envelope never written.
    RefusedUnsent { seq: u64, sent: u64 },
    /// A second refusal of the same envelope.
    RefusedTwice { seq: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::AckBackwards { processed, acked } => {
                write!(f, "ack of {processed} envelopes after an ack of {acked}")
            }
            Violation::AckBeyondSent { processed, sent } => {
                write!(f, "ack of {processed} envelopes, but {sent} were sent")
            }
            Violation::RefusedAcked { seq, acked } => write!(
                f,
                "refusal of envelope {seq}, already acknowledged (ack {acked})"
            ),
            Violation::RefusedUnsent { seq, sent } => {
                write!(f, "refusal of envelope {seq}, but {sent} were sent")
            }
            Violation::RefusedTwice { seq } => write!(f, "second refusal of envelope {seq}"),
        }
    }
}

/// What an ack releases from one position, for the caller to drop (outside
/// any lock, and its budget shares together).
#[derive(Debug)]
pub(crate) enum Released<T, K> {
    /// An item the worker acknowledged as delivered.
    Delivered(T),
    /// What was kept of an item the worker refused.
    Refused(K),
}

/// One position on the stream.
#[derive(Debug)]
enum Slot<T, K> {
    /// Written, waiting for its ack or refusal.
    Pending(T),
    /// Refused; what is kept of it until the ack covers it.
    Refused(K),
    /// Only while a slot is being changed.
    Moving,
}

/// The unacknowledged envelopes of one stream, by position.
#[derive(Debug)]
pub(crate) struct InFlight<T, K = ()> {
    /// Entry `i` is position `acked + i`.
    entries: VecDeque<Slot<T, K>>,
    /// Envelopes acknowledged so far (the worker's cumulative count).
    acked: u64,
    /// Envelopes the worker acknowledged and had not refused.
    delivered: u64,
}

impl<T, K> Default for InFlight<T, K> {
    fn default() -> Self {
        InFlight {
            entries: VecDeque::new(),
            acked: 0,
            delivered: 0,
        }
    }
}

impl<T, K> InFlight<T, K> {
    /// Envelopes written so far.
    pub(crate) fn sent(&self) -> u64 {
        self.acked + self.entries.len() as u64
    }

    /// Envelopes acknowledged so far (the worker's cumulative count).
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Envelopes acknowledged as delivered (not refused) so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Whether everything written has been acknowledged.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `item` was written; returns its position on the stream.
    pub(crate) fn on_sent(&mut self, item: T) -> u64 {
        let seq = self.sent();
        self.entries.push_back(Slot::Pending(item));
        seq
    }

    /// Applies a cumulative ack; the newly acknowledged items are dropped.
    ///
    /// Returns how many of them were delivered (not refused). Errors: an ack
    /// that goes backwards or covers more than was written.
    #[cfg(test)]
    pub(crate) fn on_ack(&mut self, processed: u64) -> Result<u64, Violation> {
        self.on_ack_with(processed, drop)
    }

    /// Applies a cumulative ack; the newly acknowledged items are handed
    /// to `release`, in order.
    ///
    /// Returns and errors as [`InFlight::on_ack`]; on an error nothing is released.
    pub(crate) fn on_ack_with(
        &mut self,
        processed: u64,
        mut release: impl FnMut(Released<T, K>),
    ) -> Result<u64, Violation> {
        if processed < self.acked {
            return Err(Violation::AckBackwards {
                processed,
                acked: self.acked,
            });
        }
        if processed > self.sent() {
            return Err(Violation::AckBeyondSent {
                processed,
                sent: self.sent(),
            });
        }
        let mut delivered = 0;
        for _ in self.acked..processed {
            match self.entries.pop_front() {
                Some(Slot::Pending(item)) => {
                    delivered += 1;
                    release(Released::Delivered(item));
                }
                Some(Slot::Refused(kept)) => release(Released::Refused(kept)),
                Some(Slot::Moving) | None => {}
            }
        }
        self.acked = processed;
        self.delivered += delivered;
        Ok(delivered)
    }

    /// Applies a refusal of the envelope at `seq`: `split` divides its item
    /// into what to give back (returned) and what to keep until the ack.
    ///
    /// Errors: `seq` already acknowledged, never written, or refused before.
    pub(crate) fn on_refused<U>(
        &mut self,
        seq: u64,
        split: impl FnOnce(T) -> (U, K),
    ) -> Result<U, Violation> {
        if seq < self.acked {
            return Err(Violation::RefusedAcked {
                seq,
                acked: self.acked,
            });
        }
        let sent = self.sent();
        let slot = usize::try_from(seq - self.acked)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .ok_or(Violation::RefusedUnsent { seq, sent })?;
        match std::mem::replace(slot, Slot::Moving) {
            Slot::Pending(item) => {
                let (back, keep) = split(item);
                *slot = Slot::Refused(keep);
                Ok(back)
            }
            other => {
                *slot = other;
                Err(Violation::RefusedTwice { seq })
            }
        }
    }

    /// Takes every item written and neither acknowledged nor refused, in order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.acked += self.entries.len() as u64;
        self.entries.drain(..).filter_map(|slot| match slot {
            Slot::Pending(item) => Some(item),
            Slot::Refused(_) | Slot::Moving => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(n: u32) -> InFlight<u32> {
        let mut f = InFlight::default();
        for i in 0..n {
            assert_eq!(f.on_sent(i), u64::from(i));
        }
        f
    }

    #[test]
    fn acks_release_in_order_and_count_deliveries() {
        let mut f = sent(5);
        assert_eq!(f.on_ack(2), Ok(2));
        assert_eq!(f.on_ack(2), Ok(0), "a repeated ack is harmless");
        assert_eq!(f.on_refused(3, |x| (x, ())), Ok(3));
        assert_eq!(
            f.on_ack(5),
            Ok(2),
            "the refused one is processed, not delivered"
        );
        assert_eq!(f.delivered(), 4);
        assert!(f.is_empty());
        assert_eq!(f.on_sent(9), 5, "positions keep counting");
    }

    #[test]
    fn acks_cannot_go_back_or_beyond_what_was_sent() {
        let mut f = sent(3);
        assert_eq!(
            f.on_ack(4),
            Err(Violation::AckBeyondSent {
                processed: 4,
                sent: 3
            })
        );
        f.on_ack(2).unwrap();
        assert_eq!(
            f.on_ack(1),
            Err(Violation::AckBackwards {
                processed: 1,
                acked: 2
            })
        );
        assert_eq!(
            f.on_ack(u64::MAX).unwrap_err().to_string(),
            "ack of 18446744073709551615 envelopes, but 3 were sent"
        );
    }

    #[test]
    fn refusals_must_name_an_unacknowledged_envelope_once() {
        let mut f = sent(4);
        f.on_ack(1).unwrap();
        assert_eq!(
            f.on_refused(0, |x| (x, ())),
            Err(Violation::RefusedAcked { seq: 0, acked: 1 })
        );
        assert_eq!(
            f.on_refused(4, |x| (x, ())),
            Err(Violation::RefusedUnsent { seq: 4, sent: 4 })
        );
        assert_eq!(
            f.on_refused(u64::MAX, |x| (x, ())),
            Err(Violation::RefusedUnsent {
                seq: u64::MAX,
                sent: 4
            })
        );
        assert_eq!(f.on_refused(2, |x| (x, ())), Ok(2));
        assert_eq!(
            f.on_refused(2, |x| (x, ())),
            Err(Violation::RefusedTwice { seq: 2 })
        );
    }

    #[test]
    fn drain_hands_back_what_is_unacknowledged_and_unrefused() {
        let mut f = sent(5);
        f.on_ack(1).unwrap();
        f.on_refused(2, |x| (x, ())).unwrap();
        assert_eq!(f.drain().collect::<Vec<_>>(), vec![1, 3, 4]);
        assert!(f.is_empty());
        assert_eq!(f.sent(), 5);
        assert_eq!(f.on_ack(5), Ok(0));
    }
}
