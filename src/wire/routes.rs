//! Stream-local routes: an envelope's ids travel once per stream, not in
//! every envelope (docs/design.md §2.7).
//!
//! An envelope names its sender and its destination by full ids (allocation
//! name, rank, actor name, instance number, for each). On a mailbox stream
//! where one pair of actors exchanges thousands of small messages, those ids
//! are most of every frame, and checking them as they are decoded (UTF-8,
//! the name rules) was most of the receiver's work. So each direction of a
//! mailbox stream has up to [`MAX_ROUTES`] numbered routes: the sender
//! defines a route once with a [`MailboxFrame::Route`] frame naming both
//! ids, then sends [`MailboxFrame::Routed`] frames that name only the
//! number. The stream is ordered, so a definition always arrives before the
//! envelopes that use it, and redefining a number affects only what follows.
//!
//! [`RouteCache`] is the sender's side: it chooses an envelope's route and
//! says when the route must be defined first; once every number is in use it
//! reuses them in turn. [`RouteTable`] is the receiver's side: it keeps the
//! definitions and turns a routed envelope back into an [`Envelope`]. A
//! number out of range, or one never defined, is a protocol violation
//! ([`RouteError`]). What a peer can make the receiver keep is bounded by
//! [`MAX_ROUTES`] pairs of ids, each already bounded in length where it is
//! decoded. Both sides are plain state, tested without a stream.
//!
//! [`MailboxFrame::Route`]: crate::wire::MailboxFrame::Route
//! [`MailboxFrame::Routed`]: crate::wire::MailboxFrame::Routed

use crate::id::ActorId;
#[cfg(any(test, feature = "testkit"))]
use crate::wire::MailboxFrame;
use crate::wire::{Dest, Envelope, RoutedEnvelope, MAX_ROUTES};

/// A peer used a route it may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route number is not below [`MAX_ROUTES`].
    #[error("route {route} is beyond the limit of {MAX_ROUTES} routes per stream")]
    OutOfRange {
        /// The number used.
        route: u32,
    },
    /// An envelope named a route that was never defined on the stream.
    #[error("envelope on route {route}, which was never defined on this stream")]
    Undefined {
        /// The number used.
        route: u32,
    },
}

/// The sender's choice of route for one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChoice {
    /// The route is defined already: send the envelope on it.
    Known(u32),
    /// Send a [`MailboxFrame::Route`](crate::wire::MailboxFrame::Route)
    /// defining this number first.
    Define(u32),
}

impl RouteChoice {
    /// The route number, defined already or about to be.
    pub fn route(self) -> u32 {
        match self {
            RouteChoice::Known(r) | RouteChoice::Define(r) => r,
        }
    }
}

/// The routes one side has defined on its direction of a stream.
#[derive(Debug, Default)]
pub struct RouteCache {
    /// Definitions by route number (`None`: forgotten, see [`RouteCache::forget`]).
    slots: Vec<Option<(ActorId, Dest)>>,
    /// The route of the previous envelope: consecutive envelopes of one
    /// pair (the common case) are matched with one comparison.
    last: Option<u32>,
    /// The next number to reuse once all are in use.
    next_reuse: u32,
}

impl RouteCache {
    /// The route for an envelope from `from` to `to`.
    ///
    /// A pair seen before keeps its number while it is defined. A new pair
    /// gets the next free number, or, when all [`MAX_ROUTES`] are in use, the
    /// numbers in turn (round robin): a definition costs one frame, so even
    /// a sender with more pairs than numbers pays no more than with full ids.
    pub fn choose(&mut self, from: &ActorId, to: &Dest) -> RouteChoice {
        let is_pair =
            |slot: &Option<(ActorId, Dest)>| matches!(slot, Some((f, t)) if t == to && f == from);
        if let Some(r) = self.last {
            if is_pair(&self.slots[r as usize]) {
                return RouteChoice::Known(r);
            }
        }
        if let Some(r) = self.slots.iter().position(is_pair) {
            let r = r as u32;
            self.last = Some(r);
            return RouteChoice::Known(r);
        }
        let pair = Some((from.clone(), to.clone()));
        let r = if (self.slots.len() as u32) < MAX_ROUTES {
            self.slots.push(pair);
            self.slots.len() as u32 - 1
        } else {
            let r = self.next_reuse;
            self.next_reuse = (r + 1) % MAX_ROUTES;
            self.slots[r as usize] = pair;
            r
        };
        self.last = Some(r);
        RouteChoice::Define(r)
    }

    /// Forgets route `route`: its definition could not be sent, so the
    /// peer must never see the number used for this pair (the next
    /// envelope of the pair defines a route again).
    pub fn forget(&mut self, route: u32) {
        if let Some(slot) = self.slots.get_mut(route as usize) {
            *slot = None;
        }
        if self.last == Some(route) {
            self.last = None;
        }
    }
}

/// The routes the other side has defined on its direction of a stream.
#[derive(Debug, Default)]
pub struct RouteTable {
    slots: Vec<Option<(ActorId, Dest)>>,
}

impl RouteTable {
    /// Defines (or redefines) route `route`.
    ///
    /// Errors: [`RouteError::OutOfRange`] if `route` is not below [`MAX_ROUTES`].
    pub fn define(&mut self, route: u32, from: ActorId, to: Dest) -> Result<(), RouteError> {
        if route >= MAX_ROUTES {
            return Err(RouteError::OutOfRange { route });
        }
        let i = route as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some((from, to));
        Ok(())
    }

    /// The full envelope a routed one stands for.
    ///
    /// Errors: [`RouteError::OutOfRange`] or [`RouteError::Undefined`] for a
    /// route that cannot have been defined.
    pub fn envelope(&self, routed: RoutedEnvelope) -> Result<Envelope, RouteError> {
        let route = routed.route;
        if route >= MAX_ROUTES {
            return Err(RouteError::OutOfRange { route });
        }
        let Some(Some((from, to))) = self.slots.get(route as usize) else {
            return Err(RouteError::Undefined { route });
        };
        Ok(Envelope {
            id: routed.id,
            from: from.clone(),
            to: to.clone(),
            return_port: routed.return_port,
            payload: routed.payload,
        })
    }

    /// Applies a frame: a route definition is kept (`Ok(None)`), a routed
    /// envelope comes back as [`MailboxFrame::Envelope`], any other frame as
    /// it is.
    ///
    /// The mailbox stream's readers use `mailbox::read`, which decodes a
    /// routed envelope alone; this is for tests and fuzz targets that hold
    /// whole frames.
    ///
    /// Errors: as [`RouteTable::define`] and [`RouteTable::envelope`].
    #[cfg(any(test, feature = "testkit"))]
    pub fn resolve(&mut self, frame: MailboxFrame) -> Result<Option<MailboxFrame>, RouteError> {
        match frame {
            MailboxFrame::Route { route, from, to } => {
                self.define(route, from, to)?;
                Ok(None)
            }
            MailboxFrame::Routed(routed) => {
                Ok(Some(MailboxFrame::Envelope(self.envelope(routed)?)))
            }
            other => Ok(Some(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ProcId;

    fn actor(name: &str) -> ActorId {
        ActorId {
            proc_id: ProcId::new("routes", 0),
            name: name.into(),
            pid: 1,
        }
    }

    fn routed(route: u32, id: u64) -> RoutedEnvelope {
        RoutedEnvelope {
            route,
            id,
            return_port: None,
            payload: vec![id as u8],
        }
    }

    /// Sends `(from, to)` through a cache and a table as the two sides of a
    /// stream would, and returns the envelope the receiver rebuilt.
    fn through(
        cache: &mut RouteCache,
        table: &mut RouteTable,
        from: &ActorId,
        to: &Dest,
        id: u64,
    ) -> Envelope {
        let choice = cache.choose(from, to);
        if let RouteChoice::Define(r) = choice {
            table.define(r, from.clone(), to.clone()).expect("define");
        }
        table.envelope(routed(choice.route(), id)).expect("routed")
    }

    #[test]
    fn a_pair_is_defined_once_and_rebuilt_exactly() {
        let (mut cache, mut table) = (RouteCache::default(), RouteTable::default());
        let (a, b) = (actor("a"), Dest::Actor(actor("b")));
        assert_eq!(cache.choose(&a, &b), RouteChoice::Define(0));
        table.define(0, a.clone(), b.clone()).expect("define");
        for id in 0..10 {
            assert_eq!(cache.choose(&a, &b), RouteChoice::Known(0));
            let env = table.envelope(routed(0, id)).expect("routed");
            assert_eq!((env.id, &env.from, &env.to), (id, &a, &b));
            assert_eq!(env.payload, vec![id as u8]);
        }
        // Another pair gets another number; the first keeps its own.
        let c = Dest::Port(actor("c").port(7));
        assert_eq!(cache.choose(&a, &c), RouteChoice::Define(1));
        assert_eq!(cache.choose(&a, &b), RouteChoice::Known(0));
        assert_eq!(cache.choose(&a, &c), RouteChoice::Known(1));
    }

    #[test]
    fn more_pairs_than_routes_reuse_numbers_and_stay_correct() {
        let (mut cache, mut table) = (RouteCache::default(), RouteTable::default());
        let to = Dest::Actor(actor("sink"));
        let senders: Vec<ActorId> = (0..MAX_ROUTES * 3)
            .map(|i| actor(&format!("s{i}")))
            .collect();
        let mut id = 0;
        for round in 0..3 {
            for (i, from) in senders.iter().enumerate() {
                // Interleave a long-lived pair with the churn.
                let env = through(&mut cache, &mut table, &senders[0], &to, id);
                assert_eq!(env.from, senders[0], "round {round}");
                let env = through(&mut cache, &mut table, from, &to, id + 1);
                assert_eq!(
                    (&env.from, &env.to),
                    (from, &to),
                    "round {round} sender {i}"
                );
                id += 2;
            }
        }
        assert_eq!(cache.slots.len() as u32, MAX_ROUTES);
        assert!(table.slots.len() as u32 <= MAX_ROUTES);
    }

    #[test]
    fn a_hostile_peer_cannot_use_or_grow_routes_beyond_the_bound() {
        let mut table = RouteTable::default();
        assert_eq!(
            table.define(MAX_ROUTES, actor("a"), Dest::Actor(actor("b"))),
            Err(RouteError::OutOfRange { route: MAX_ROUTES })
        );
        assert_eq!(
            table.define(u32::MAX, actor("a"), Dest::Actor(actor("b"))),
            Err(RouteError::OutOfRange { route: u32::MAX })
        );
        assert!(table.slots.is_empty(), "a refused definition keeps nothing");
        assert_eq!(
            table.envelope(routed(3, 0)),
            Err(RouteError::Undefined { route: 3 })
        );
        assert_eq!(
            table.envelope(routed(MAX_ROUTES + 1, 0)),
            Err(RouteError::OutOfRange {
                route: MAX_ROUTES + 1
            })
        );
        table
            .define(5, actor("a"), Dest::Actor(actor("b")))
            .expect("define");
        assert_eq!(
            table.envelope(routed(4, 0)),
            Err(RouteError::Undefined { route: 4 }),
            "numbers below a defined one are not defined by it"
        );
        let resolved = table
            .resolve(MailboxFrame::Routed(routed(5, 9)))
            .expect("resolve");
        assert!(matches!(resolved, Some(MailboxFrame::Envelope(e)) if e.id == 9));
        let ack = table
            .resolve(MailboxFrame::Ack { processed: 1 })
            .expect("ack");
        assert_eq!(ack, Some(MailboxFrame::Ack { processed: 1 }));
    }

    #[test]
    fn a_forgotten_route_is_defined_again_before_it_is_used() {
        let mut cache = RouteCache::default();
        let (a, b) = (actor("a"), Dest::Actor(actor("b")));
        assert_eq!(cache.choose(&a, &b), RouteChoice::Define(0));
        cache.forget(0);
        assert!(
            matches!(cache.choose(&a, &b), RouteChoice::Define(_)),
            "a forgotten route was used as if the peer knew it"
        );
        assert!(matches!(cache.choose(&a, &b), RouteChoice::Known(_)));
        // Forgetting a number never handed out is harmless.
        cache.forget(MAX_ROUTES + 3);
    }

    #[test]
    fn redefining_a_route_changes_only_what_follows() {
        let mut table = RouteTable::default();
        table
            .define(0, actor("a"), Dest::Actor(actor("b")))
            .expect("define");
        let first = table.envelope(routed(0, 1)).expect("routed");
        table
            .define(0, actor("c"), Dest::Actor(actor("d")))
            .expect("redefine");
        let second = table.envelope(routed(0, 2)).expect("routed");
        assert_eq!(first.from, actor("a"));
        assert_eq!(second.from, actor("c"));
        assert_eq!(second.to, Dest::Actor(actor("d")));
    }
}
