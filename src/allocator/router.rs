//! Where an envelope goes: the controller's own proc, or a worker's proc.
//!
//! [`Router::destination`] is the decision, plain code over the table of
//! links; [`Router::route`] and [`Router::try_route`] carry it out and return
//! to its sender anything that cannot go where it was sent, with the reason
//! (unknown proc, proc failed or stopped). The router is the [`Switch`] of
//! every link: what a worker sends comes through here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use futures::future::BoxFuture;

use super::link::{NotForwarded, ProcLink, Switch};
use crate::actor::{NotDelivered, Outlet, OutletError, Proc};
use crate::id::ProcId;
use crate::mailbox::Outgoing;
use crate::queue::{Permit, QueueError};
use crate::reason::ReturnReason;
use crate::sync::{read, write};
use crate::wire::{Envelope, Undeliverable};

/// Where an envelope or a return must go.
pub(crate) enum Destination {
    /// The controller's proc, in this process.
    Controller,
    /// A worker's proc, through its mailbox stream.
    Link(Arc<ProcLink>),
    /// Nowhere: the reason says why.
    Nowhere(ReturnReason),
}

/// The allocator's routing table.
pub(crate) struct Router {
    controller: Proc,
    links: RwLock<Links<Arc<ProcLink>>>,
}

/// Ranks up to this are looked up by index (a proc's rank is chosen by the
/// allocator, from 0 up, so the table stays as long as the procs created).
const MAX_INDEXED_RANK: u32 = 1 << 20;

/// Every proc's link, found by its rank: every envelope the allocator
/// passes on looks one up, and an index and one comparison of ids cost far
/// less than hashing the id. A proc whose rank is beyond
/// [`MAX_INDEXED_RANK`], or whose slot another proc holds (a proc of another
/// allocation, which this allocator never creates), is kept in `others`.
struct Links<T> {
    by_rank: Vec<Option<(ProcId, T)>>,
    others: HashMap<ProcId, T>,
}

impl<T> Default for Links<T> {
    fn default() -> Self {
        Links {
            by_rank: Vec::new(),
            others: HashMap::new(),
        }
    }
}

impl<T> Links<T> {
    /// Adds (or replaces) the entry of `proc_id`.
    fn insert(&mut self, proc_id: ProcId, value: T) {
        let rank = proc_id.rank;
        if rank < MAX_INDEXED_RANK {
            let i = rank as usize;
            if self.by_rank.len() <= i {
                self.by_rank.resize_with(i + 1, || None);
            }
            let slot = &mut self.by_rank[i];
            if !matches!(slot, Some((held, _)) if *held != proc_id) {
                *slot = Some((proc_id, value));
                return;
            }
        }
        self.others.insert(proc_id, value);
    }

    /// The entry of `proc_id`, if it was ever added.
    fn get(&self, proc_id: &ProcId) -> Option<&T> {
        if let Some(Some((held, value))) = self.by_rank.get(proc_id.rank as usize) {
            if held == proc_id {
                return Some(value);
            }
        }
        if self.others.is_empty() {
            return None;
        }
        self.others.get(proc_id)
    }
}

impl Router {
    pub(crate) fn new(controller: Proc) -> Self {
        Router {
            controller,
            links: RwLock::new(Links::default()),
        }
    }

    pub(crate) fn controller(&self) -> &Proc {
        &self.controller
    }

    /// Adds the link of a newly created proc.
    pub(crate) fn add(&self, link: Arc<ProcLink>) {
        write(&self.links).insert(link.proc_id.clone(), link);
    }

    /// The link of `proc_id`, if it was ever created.
    pub(crate) fn link(&self, proc_id: &ProcId) -> Option<Arc<ProcLink>> {
        read(&self.links).get(proc_id).cloned()
    }

    /// Decides where anything addressed to `proc_id` goes.
    pub(crate) fn destination(&self, proc_id: &ProcId) -> Destination {
        if proc_id == self.controller.id() {
            return Destination::Controller;
        }
        match self.link(proc_id) {
            Some(link) => match link.closed_reason() {
                Some(reason) => Destination::Nowhere(reason),
                None => Destination::Link(link),
            },
            None => Destination::Nowhere(ReturnReason::UnknownProc(proc_id.clone())),
        }
    }

    /// Sends `env` on towards its destination, waiting for room.
    ///
    /// Errors: the return, if it cannot go where it was sent (unknown or
    /// closed proc, actor not found on the controller's proc).
    pub(crate) async fn route(&self, env: Envelope) -> Result<(), Undeliverable> {
        let reason = match self.destination(env.to.proc_id()) {
            Destination::Controller => return self.controller.deliver(env).await,
            Destination::Link(link) => match link.send(env).await {
                Ok(()) => return Ok(()),
                Err(env) => {
                    let reason = closed_reason(&link);
                    return Err(Undeliverable::not_delivered(env, reason));
                }
            },
            Destination::Nowhere(reason) => reason,
        };
        Err(Undeliverable::not_delivered(env, reason))
    }

    /// Sends `env` on if its destination has room now.
    ///
    /// Errors: [`NotForwarded::Full`] with the envelope when the destination
    /// is full, [`NotForwarded::Undeliverable`] with the return when it
    /// cannot go where it was sent.
    pub(crate) fn try_route(&self, env: Envelope) -> Result<(), NotForwarded> {
        let reason = match self.destination(env.to.proc_id()) {
            Destination::Controller => {
                return match self.controller.try_deliver(env) {
                    Ok(()) => Ok(()),
                    Err(NotDelivered::Undeliverable(u)) => Err(NotForwarded::Undeliverable(u)),
                    Err(NotDelivered::Full(env)) => Err(NotForwarded::Full(env)),
                }
            }
            Destination::Link(link) => match link.try_send(env) {
                Ok(()) => return Ok(()),
                Err(QueueError::Full(env)) => return Err(NotForwarded::Full(env)),
                Err(QueueError::Closed(env)) => {
                    let reason = closed_reason(&link);
                    return Err(NotForwarded::Undeliverable(Undeliverable::not_delivered(
                        env, reason,
                    )));
                }
            },
            Destination::Nowhere(reason) => reason,
        };
        Err(NotForwarded::Undeliverable(Undeliverable::not_delivered(
            env, reason,
        )))
    }

    /// Sends a returned envelope back to the proc of its sender (dropped if
    /// that proc is gone too). `permit` is the budget share it holds already.
    pub(crate) fn return_to_sender(&self, u: Undeliverable, permit: Option<Permit>) {
        match self.destination(&u.envelope.from.proc_id) {
            Destination::Controller => self.controller.returned(u),
            Destination::Link(link) => link.give_back(u, permit),
            Destination::Nowhere(why) => {
                tracing::debug!(
                    "return of envelope to {} dropped: sender unreachable ({why})",
                    u.envelope.to
                )
            }
        }
    }

    /// A proc's link has closed: the controller's asks to it fail at once,
    /// and what the link could not deliver goes back to its senders.
    pub(crate) fn link_closed(
        &self,
        proc_id: &ProcId,
        reason: &ReturnReason,
        back: Vec<(Undeliverable, Option<Permit>)>,
    ) {
        self.controller.fail_asks_to(proc_id, reason);
        for (u, permit) in back {
            self.return_to_sender(u, permit);
        }
    }
}

/// Why a link refused an envelope: its close reason, or that it is closing.
fn closed_reason(link: &ProcLink) -> ReturnReason {
    link.closed_reason()
        .unwrap_or_else(|| ReturnReason::ProcClosing(link.proc_id.clone()))
}

impl Switch for Router {
    fn try_forward(&self, env: Envelope) -> Result<(), NotForwarded> {
        self.try_route(env)
    }

    fn forward(&self, env: Envelope) -> BoxFuture<'_, Result<(), Undeliverable>> {
        Box::pin(self.route(env))
    }

    fn give_back(&self, u: Undeliverable, permit: Option<Permit>) {
        self.return_to_sender(u, permit)
    }
}

/// The controller proc's way out: straight into the router, from the sender's own task.
pub(crate) struct RouterOutlet(pub(crate) Weak<Router>);

impl Outlet for RouterOutlet {
    /// An envelope whose destination is known to be gone is refused at once
    /// (the sender's call fails with the reason) rather than returned later.
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), OutletError>> {
        Box::pin(async move {
            let Some(router) = self.0.upgrade() else {
                return Err(OutletError::Closed);
            };
            match item {
                Outgoing::Envelope(env) => {
                    if let Err(u) = router.route(env).await {
                        return Err(OutletError::Refused(u.reason));
                    }
                }
                Outgoing::Returned(u) => router.return_to_sender(*u, None),
                // The controller's proc receives nothing over a stream.
                Outgoing::Refused { .. } => {}
            }
            Ok(())
        })
    }

    fn try_send(&self, item: Outgoing) -> Result<(), OutletError> {
        let Some(router) = self.0.upgrade() else {
            return Err(OutletError::Closed);
        };
        match item {
            Outgoing::Envelope(env) => match router.try_route(env) {
                Ok(()) => Ok(()),
                Err(NotForwarded::Full(env)) => Err(OutletError::Full(Outgoing::Envelope(env))),
                Err(NotForwarded::Undeliverable(u)) => Err(OutletError::Refused(u.reason)),
            },
            Outgoing::Returned(u) => {
                router.return_to_sender(*u, None);
                Ok(())
            }
            Outgoing::Refused { .. } => Ok(()),
        }
    }

    fn send_unbudgeted(&self, item: Outgoing) -> Result<(), Outgoing> {
        let Some(router) = self.0.upgrade() else {
            return Err(item);
        };
        match item {
            Outgoing::Envelope(env) => {
                let router = router.clone();
                tokio::spawn(async move {
                    if let Err(u) = router.route(env).await {
                        router.return_to_sender(u, None);
                    }
                });
            }
            Outgoing::Returned(u) => router.return_to_sender(*u, None),
            Outgoing::Refused { .. } => {}
        }
        Ok(())
    }

    fn carries_returns(&self) -> bool {
        true
    }

    fn queued_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_by_their_full_id_only() {
        let mut links = Links::default();
        links.insert(ProcId::new("a", 0), 10);
        links.insert(ProcId::new("a", 3), 13);
        assert_eq!(links.get(&ProcId::new("a", 0)), Some(&10));
        assert_eq!(links.get(&ProcId::new("a", 3)), Some(&13));
        // Ranks never added, beyond the table, or another allocation's.
        assert_eq!(links.get(&ProcId::new("a", 1)), None);
        assert_eq!(links.get(&ProcId::new("a", 4)), None);
        assert_eq!(links.get(&ProcId::new("a", u32::MAX)), None);
        assert_eq!(links.get(&ProcId::new("b", 0)), None);
        assert!(links.others.is_empty());
        // A second allocation's proc at a rank in use, and a rank beyond
        // the index, still work (through the map).
        links.insert(ProcId::new("b", 0), 20);
        links.insert(ProcId::new("a", u32::MAX), 30);
        assert_eq!(links.get(&ProcId::new("b", 0)), Some(&20));
        assert_eq!(links.get(&ProcId::new("a", 0)), Some(&10));
        assert_eq!(links.get(&ProcId::new("a", u32::MAX)), Some(&30));
        assert_eq!(links.others.len(), 2);
        // Replacing keeps one entry.
        links.insert(ProcId::new("a", 3), 33);
        assert_eq!(links.get(&ProcId::new("a", 3)), Some(&33));
        assert_eq!(links.by_rank.len(), 4);
    }
}
