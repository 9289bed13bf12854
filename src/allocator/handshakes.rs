//! How many handshakes may be pending, in total and per source: the decision
//! on a new connection attempt, made without sockets.
//!
//! A handshake holds a slot from the moment the allocator starts it (the
//! peer's address is already validated by a QUIC Retry) until the peer is
//! admitted or refused: the TLS phase and the Hello. The total is capped so
//! that the allocator's pre-admission work is bounded; each source gets at
//! most a share of the cap so that one host cannot keep everyone else out.
//!
//! A *source* is an IPv4 address, or the /64 prefix of an IPv6 address: a
//! single IPv6 host is commonly given a whole /64, so counting addresses
//! would let it claim every slot. IPv4-mapped IPv6 addresses count as the
//! IPv4 address they carry.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// The unit one share of the handshake slots is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(prefix.into()))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a handshake may not start now. The worker is expected to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// Every slot is taken.
    #[error("too many handshakes in progress ({max})")]
    Full {
        /// The cap.
        max: usize,
    },
    /// This source already holds its share.
    #[error("too many handshakes in progress from {from} ({max} per source)")]
    SourceShare {
        /// The source.
        from: Source,
        /// Its share.
        max: usize,
    },
}

/// Pending handshakes, in total and by source.
#[derive(Debug)]
pub struct HandshakeSlots {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl HandshakeSlots {
    /// Slots for at most `max_total` handshakes, at most `max_per_source` from one source.
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        HandshakeSlots {
            max_total,
            max_per_source,
            total: 0,
            by_source: HashMap::new(),
        }
    }

    /// Takes a slot for a handshake from `source`, or says why not.
    ///
    /// Every `Ok` must be matched by one [`HandshakeSlots::release`] of the same source.
    pub fn claim(&mut self, source: Source) -> Result<(), Busy> {
        if self.total >= self.max_total {
            return Err(Busy::Full {
                max: self.max_total,
            });
        }
        let held = self.by_source.entry(source).or_insert(0);
        if *held >= self.max_per_source {
            return Err(Busy::SourceShare {
                from: source,
                max: self.max_per_source,
            });
        }
        *held += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back a slot taken by [`HandshakeSlots::claim`] for `source`.
    ///
    /// Releasing a slot that was not claimed changes nothing.
    pub fn release(&mut self, source: Source) {
        if let Some(held) = self.by_source.get_mut(&source) {
            *held -= 1;
            self.total -= 1;
            if *held == 0 {
                self.by_source.remove(&source);
            }
        }
    }

    /// Handshakes pending now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.total
    }

    /// Handshakes pending now from `source`.
    #[cfg(test)]
    pub fn pending_from(&self, source: Source) -> usize {
        self.by_source.get(&source).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn one_source_gets_only_its_share() {
        let mut slots = HandshakeSlots::new(8, 2);
        let a = src("10.0.0.1");
        assert_eq!(slots.claim(a), Ok(()));
        assert_eq!(slots.claim(a), Ok(()));
        assert_eq!(slots.claim(a), Err(Busy::SourceShare { from: a, max: 2 }));
        // Others still get in.
        assert_eq!(slots.claim(src("10.0.0.2")), Ok(()));
        slots.release(a);
        assert_eq!(slots.claim(a), Ok(()));
        assert_eq!(slots.pending(), 3);
        assert_eq!(slots.pending_from(a), 2);
    }

    #[test]
    fn total_is_capped_and_slots_come_back() {
        let mut slots = HandshakeSlots::new(3, 3);
        let sources: Vec<Source> = (1..=4).map(|i| src(&format!("10.0.0.{i}"))).collect();
        for s in &sources[..3] {
            slots.claim(*s).unwrap();
        }
        assert_eq!(slots.claim(sources[3]), Err(Busy::Full { max: 3 }));
        for s in &sources[..3] {
            slots.release(*s);
        }
        assert_eq!(slots.pending(), 0);
        assert!(
            slots.by_source.is_empty(),
            "no per-source entry left behind"
        );
        assert_eq!(slots.claim(sources[3]), Ok(()));
    }

    #[test]
    fn releasing_what_was_never_claimed_changes_nothing() {
        let mut slots = HandshakeSlots::new(2, 1);
        slots.release(src("10.0.0.1"));
        assert_eq!(slots.pending(), 0);
        slots.claim(src("10.0.0.1")).unwrap();
        slots.release(src("10.0.0.2"));
        assert_eq!(slots.pending(), 1);
    }

    #[test]
    fn an_ipv6_host_is_its_64_prefix_and_mapped_v4_is_v4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:10.0.0.1"), src("10.0.0.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        let mut slots = HandshakeSlots::new(8, 1);
        slots.claim(src("2001:db8::1")).unwrap();
        assert!(slots.claim(src("2001:db8::2")).is_err());
    }

    #[test]
    fn refusals_say_why() {
        let full = Busy::Full { max: 4 }.to_string();
        assert!(full.contains("too many handshakes") && full.contains('4'));
        let share = Busy::SourceShare {
            from: src("127.0.0.1"),
            max: 1,
        }
        .to_string();
        assert!(share.contains("127.0.0.1") && share.contains("per source"));
    }
}
