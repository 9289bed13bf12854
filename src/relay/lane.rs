//! One direction of a relayed path, without I/O: what happens to each
//! datagram (lost, duplicated, held back) and when it leaves.
//!
//! A [`Lane`] is told "this datagram arrived at `now`" and answers with a
//! [`Verdict`]; the relay's forwarder asks it which datagrams are due at
//! `now` and when the next one will be, and sleeps until then (a timer, not
//! a polling loop). Randomness comes from the caller, so the decisions are
//! tested here with a seeded generator, without sockets or sleeping.
//!
//! The model, per direction ([`Conditions`]):
//!
//! - **delay** and **jitter**: each datagram is given `delay` plus a uniform
//!   offset in `-jitter..=jitter` (never below zero), but never leaves before
//!   the datagram in front of it, as in a real router queue: jitter alone
//!   does not reorder. Under load the queue therefore tends towards
//!   `delay + jitter`, and a lone datagram sees anything between
//!   `delay - jitter` and `delay + jitter`.
//! - **loss**: each datagram is dropped with this probability.
//! - **duplication**: with this probability a datagram is sent twice, the
//!   copy right behind the original.
//! - **reordering**: with this probability a datagram is held back an extra
//!   `reorder_gap` outside the queue's order, so datagrams arriving up to
//!   that much later overtake it.
//!
//! A lane holds at most a fixed number of datagrams and bytes; beyond that a
//! datagram is refused ([`Verdict::Overflow`]) and the relay counts it as
//! dropped, so a long delay on a fast sender cannot grow memory without bound.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;

/// Longest delay, jitter or reorder gap honoured; larger values are capped
/// so that deadlines never overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What one direction of a path does to the datagrams crossing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// Base one-way delay.
    pub delay: Duration,
    /// Each datagram's delay varies uniformly by up to this much either way
    /// (order is kept: see the [module documentation](self)).
    pub jitter: Duration,
    /// Probability (0 to 1) that a datagram is dropped.
    pub loss: f64,
    /// Probability (0 to 1) that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability (0 to 1) that a datagram is held back by `reorder_gap`,
    /// letting later ones overtake it.
    pub reorder: f64,
    /// How much later a reordered datagram leaves (default 10 ms).
    pub reorder_gap: Duration,
}

impl Default for Conditions {
    /// A perfect path: no delay, loss, duplication or reordering.
    fn default() -> Self {
        Conditions {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(10),
        }
    }
}

impl Conditions {
    /// These conditions made usable: probabilities clamped to 0..=1 (NaN
    /// counts as 0), durations capped at [`MAX_DELAY`].
    pub fn sanitized(self) -> Conditions {
        let probability = |p: f64| if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        Conditions {
            delay: self.delay.min(MAX_DELAY),
            jitter: self.jitter.min(MAX_DELAY),
            loss: probability(self.loss),
            duplicate: probability(self.duplicate),
            reorder: probability(self.reorder),
            reorder_gap: self.reorder_gap.min(MAX_DELAY),
        }
    }
}

/// What a lane did with a datagram it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued to leave later, `copies` times (2 when duplicated).
    /// `earliest` is set when it is now the first datagram due, so a
    /// forwarder sleeping until a later one must wake up.
    Queued { copies: u32, earliest: bool },
    /// Dropped by the loss probability.
    Lost,
    /// Refused: the lane already holds its maximum of datagrams or bytes.
    Overflow,
}

/// A datagram waiting in a lane, ordered by departure time, then arrival.
struct Entry<P> {
    at: Instant,
    seq: u64,
    len: usize,
    packet: P,
}

impl<P> PartialEq for Entry<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<P> Eq for Entry<P> {}

impl<P> PartialOrd for Entry<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Entry<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One direction of a path: the conditions and the datagrams waiting to leave.
pub struct Lane<P> {
    conditions: Conditions,
    queue: BinaryHeap<Reverse<Entry<P>>>,
    /// When the last datagram kept in order leaves: none after it may leave earlier.
    last_in_order: Option<Instant>,
    next_seq: u64,
    bytes: usize,
    max_packets: usize,
    max_bytes: usize,
}

impl<P: Clone> Lane<P> {
    /// An empty lane with perfect conditions, holding at most `max_packets`
    /// datagrams and `max_bytes` bytes at once.
    pub fn new(max_packets: usize, max_bytes: usize) -> Lane<P> {
        Lane {
            conditions: Conditions::default(),
            queue: BinaryHeap::new(),
            last_in_order: None,
            next_seq: 0,
            bytes: 0,
            max_packets,
            max_bytes,
        }
    }

    /// The conditions in force.
    pub fn conditions(&self) -> Conditions {
        self.conditions
    }

    /// Applies `conditions` (sanitized) to datagrams arriving from now on;
    /// those already waiting keep their departure times.
    pub fn set_conditions(&mut self, conditions: Conditions) {
        self.conditions = conditions.sanitized();
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Decides what happens to `packet` (`len` bytes), arrived at `now`.
    pub fn push<R: Rng + ?Sized>(
        &mut self,
        packet: P,
        len: usize,
        now: Instant,
        rng: &mut R,
    ) -> Verdict {
        let c = self.conditions;
        if happens(c.loss, rng) {
            return Verdict::Lost;
        }
        if !self.has_room(1, len) {
            return Verdict::Overflow;
        }
        let mut delay = c.delay;
        if !c.jitter.is_zero() {
            let spread = u64::try_from(c.jitter.as_nanos()).unwrap_or(u64::MAX / 2);
            let offset = Duration::from_nanos(rng.random_range(0..=spread.saturating_mul(2)));
            delay = delay.saturating_add(offset).saturating_sub(c.jitter);
        }
        let mut at = now.checked_add(delay).unwrap_or(now);
        if happens(c.reorder, rng) {
            // Held back outside the queue's order: later datagrams overtake it.
            at = at.checked_add(c.reorder_gap).unwrap_or(at);
        } else {
            if let Some(last) = self.last_in_order {
                at = at.max(last);
            }
            self.last_in_order = Some(at);
        }
        let earliest = match self.next_due() {
            Some(due) => at < due,
            None => true,
        };
        let mut copies = 1;
        if happens(c.duplicate, rng) && self.has_room(2, len.saturating_mul(2)) {
            self.insert(at, len, packet.clone());
            copies = 2;
        }
        self.insert(at, len, packet);
        Verdict::Queued { copies, earliest }
    }

    /// The next datagram due at `now`, if any, in departure order (ties in
    /// arrival order).
    pub fn pop_due(&mut self, now: Instant) -> Option<P> {
        if self.queue.peek()?.0.at > now {
            return None;
        }
        let Reverse(entry) = self.queue.pop()?;
        self.bytes = self.bytes.saturating_sub(entry.len);
        Some(entry.packet)
    }

    /// When the next datagram is due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(e)| e.at)
    }

    /// Whether `packets` more datagrams of `bytes` in all fit.
    fn has_room(&self, packets: usize, bytes: usize) -> bool {
        self.queue.len().saturating_add(packets) <= self.max_packets
            && self.bytes.saturating_add(bytes) <= self.max_bytes
    }

    fn insert(&mut self, at: Instant, len: usize, packet: P) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.bytes = self.bytes.saturating_add(len);
        self.queue.push(Reverse(Entry {
            at,
            seq,
            len,
            packet,
        }));
    }
}

/// Whether an event of probability `p` happens this time.
fn happens<R: Rng + ?Sized>(p: f64, rng: &mut R) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn lane(c: Conditions) -> Lane<u32> {
        let mut lane = Lane::new(100_000, usize::MAX);
        lane.set_conditions(c);
        lane
    }

    /// Feeds `n` datagrams 1 ms apart from `t0`, then drains the lane;
    /// returns (datagram, arrival, departure) in departure order.
    fn run(lane: &mut Lane<u32>, n: u32, t0: Instant) -> Vec<(u32, Instant, Instant)> {
        let mut rng = rng();
        let mut arrived = Vec::new();
        for i in 0..n {
            let at = t0 + MS * i;
            lane.push(i, 100, at, &mut rng);
            arrived.push(at);
        }
        let mut out = Vec::new();
        while let Some(due) = lane.next_due() {
            while let Some(p) = lane.pop_due(due) {
                out.push((p, arrived[p as usize], due));
            }
        }
        out
    }

    #[test]
    fn a_perfect_lane_passes_everything_at_once_in_order() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions::default());
        let mut rng = rng();
        for i in 0..10 {
            assert_eq!(
                lane.push(i, 10, t0, &mut rng),
                Verdict::Queued {
                    copies: 1,
                    earliest: i == 0
                }
            );
        }
        assert_eq!(lane.bytes(), 100);
        let out: Vec<u32> = std::iter::from_fn(|| lane.pop_due(t0)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert!(lane.is_empty() && lane.bytes() == 0);
    }

    #[test]
    fn delay_holds_each_datagram_exactly_that_long() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            delay: 50 * MS,
            ..Conditions::default()
        });
        let mut rng = rng();
        lane.push(1, 10, t0, &mut rng);
        lane.push(2, 10, t0 + MS, &mut rng);
        assert_eq!(lane.next_due(), Some(t0 + 50 * MS));
        assert_eq!(lane.pop_due(t0 + 49 * MS), None);
        assert_eq!(lane.pop_due(t0 + 50 * MS), Some(1));
        assert_eq!(lane.pop_due(t0 + 50 * MS), None);
        assert_eq!(lane.pop_due(t0 + 51 * MS), Some(2));
    }

    #[test]
    fn jitter_spreads_delays_within_bounds_without_reordering() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            delay: 50 * MS,
            jitter: 10 * MS,
            ..Conditions::default()
        });
        let out = run(&mut lane, 10_000, t0);
        assert_eq!(out.len(), 10_000);
        let order: Vec<u32> = out.iter().map(|(p, _, _)| *p).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "order kept");
        let delays: Vec<Duration> = out.iter().map(|(_, a, d)| *d - *a).collect();
        assert!(delays.iter().all(|d| (40 * MS..=60 * MS).contains(d)));
        // The spread is used: datagrams 1 ms apart see different delays.
        assert!(delays.iter().any(|d| *d < 45 * MS), "none early");
        assert!(delays.iter().any(|d| *d > 55 * MS), "none late");
    }

    #[test]
    fn loss_drops_about_its_share() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            loss: 0.02,
            ..Conditions::default()
        });
        let mut rng = rng();
        let lost = (0..50_000)
            .filter(|i| lane.push(*i, 1, t0, &mut rng) == Verdict::Lost)
            .count();
        assert!((800..1200).contains(&lost), "lost {lost} of 50000");
        assert_eq!(lane.len(), 50_000 - lost);
    }

    #[test]
    fn duplicates_follow_their_original() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            delay: 5 * MS,
            duplicate: 0.1,
            ..Conditions::default()
        });
        let out = run(&mut lane, 10_000, t0);
        let copies = out.len() - 10_000;
        assert!((800..1200).contains(&copies), "{copies} copies");
        let order: Vec<u32> = out.iter().map(|(p, _, _)| *p).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "copies adjacent");
    }

    #[test]
    fn reordered_datagrams_are_overtaken() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            delay: 20 * MS,
            reorder: 0.05,
            reorder_gap: 3 * MS,
            ..Conditions::default()
        });
        let out = run(&mut lane, 10_000, t0);
        assert_eq!(out.len(), 10_000, "nothing lost");
        let late: Vec<&(u32, Instant, Instant)> =
            out.iter().filter(|(_, a, d)| *d - *a > 20 * MS).collect();
        assert!((400..600).contains(&late.len()), "{} held back", late.len());
        assert!(late.iter().all(|(_, a, d)| *d - *a == 23 * MS));
        // Each held-back datagram leaves after the ones that arrived up to
        // 3 ms after it (1 ms apart here), unless they were held back too.
        let position = |p: u32| out.iter().position(|(q, _, _)| *q == p).unwrap();
        let overtaken = late
            .iter()
            .filter(|(p, _, _)| *p + 1 < 10_000 && position(*p) > position(*p + 1))
            .count();
        assert!(overtaken > late.len() * 8 / 10, "{overtaken} overtaken");
    }

    #[test]
    fn a_full_lane_refuses_and_frees_room_as_datagrams_leave() {
        let t0 = Instant::now();
        let mut lane: Lane<u32> = Lane::new(1000, 64 * 1000);
        lane.set_conditions(Conditions {
            delay: 50 * MS,
            ..Conditions::default()
        });
        let mut rng = rng();
        let overflow = (0..10_000)
            .filter(|i| lane.push(*i, 64, t0, &mut rng) == Verdict::Overflow)
            .count();
        assert_eq!(overflow, 9_000, "bounded by count");
        assert_eq!((lane.len(), lane.bytes()), (1000, 64_000));
        assert_eq!(lane.pop_due(t0 + 50 * MS), Some(0));
        assert!(matches!(
            lane.push(1, 64, t0, &mut rng),
            Verdict::Queued { .. }
        ));
        // Bounded by bytes too.
        let mut lane: Lane<u32> = Lane::new(1000, 1500);
        assert!(matches!(
            lane.push(0, 1000, t0, &mut rng),
            Verdict::Queued { .. }
        ));
        assert_eq!(lane.push(1, 1000, t0, &mut rng), Verdict::Overflow);
        assert!(matches!(
            lane.push(2, 500, t0, &mut rng),
            Verdict::Queued { .. }
        ));
    }

    #[test]
    fn a_duplicate_without_room_is_not_made() {
        let t0 = Instant::now();
        let mut lane: Lane<u32> = Lane::new(1, usize::MAX);
        lane.set_conditions(Conditions {
            duplicate: 1.0,
            ..Conditions::default()
        });
        assert_eq!(
            lane.push(0, 1, t0, &mut rng()),
            Verdict::Queued {
                copies: 1,
                earliest: true
            }
        );
        assert_eq!(lane.len(), 1);
    }

    #[test]
    fn an_earlier_datagram_says_so() {
        let t0 = Instant::now();
        let mut lane = lane(Conditions {
            delay: 50 * MS,
            ..Conditions::default()
        });
        let mut rng = rng();
        assert!(matches!(
            lane.push(0, 1, t0, &mut rng),
            Verdict::Queued { earliest: true, .. }
        ));
        assert!(matches!(
            lane.push(1, 1, t0 + MS, &mut rng),
            Verdict::Queued {
                earliest: false,
                ..
            }
        ));
        // Lowering the delay does not let a datagram jump the queue.
        lane.set_conditions(Conditions::default());
        assert!(matches!(
            lane.push(2, 1, t0 + 2 * MS, &mut rng),
            Verdict::Queued {
                earliest: false,
                ..
            }
        ));
        assert_eq!(lane.next_due(), Some(t0 + 50 * MS));
    }

    #[test]
    fn absurd_settings_are_made_usable() {
        let c = Conditions {
            delay: Duration::MAX,
            jitter: Duration::MAX,
            loss: f64::NAN,
            duplicate: -1.0,
            reorder: 7.0,
            reorder_gap: Duration::MAX,
        }
        .sanitized();
        assert_eq!(
            (c.delay, c.jitter, c.reorder_gap),
            (MAX_DELAY, MAX_DELAY, MAX_DELAY)
        );
        assert_eq!((c.loss, c.duplicate, c.reorder), (0.0, 0.0, 1.0));
        let mut lane = lane(c);
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(matches!(
                lane.push(i, 1, t0, &mut rng()),
                Verdict::Queued { .. }
            ));
        }
        assert!(lane.next_due().is_some());
    }
}
