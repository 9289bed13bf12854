//! Where an envelope goes: the controller's own proc, or a worker's proc.
//!
//! [`Router::destination`] is the decision, plain code over the table of
//! links; [`Router::route`] carries it out and returns to its sender anything
//! that cannot go where it was sent, with the reason (unknown proc, proc
//! failed or stopped).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use futures::future::BoxFuture;

use super::link::ProcLink;
use crate::actor::{NotDelivered, Outgoing, Outlet, Proc};
use crate::id::ProcId;
use crate::queue::QueueError;
use crate::sync::{read, write};
use crate::wire::{Envelope, Undeliverable};

/// Where an envelope or a return must go.
pub(crate) enum Destination {
    /// The controller's proc, in this process.
    Controller,
    /// A worker's proc, through its mailbox stream.
    Link(Arc<ProcLink>),
    /// Nowhere: the reason says why.
    Nowhere(String),
}

/// The allocator's routing table.
pub(crate) struct Router {
    controller: Proc,
    links: RwLock<HashMap<ProcId, Arc<ProcLink>>>,
}

impl Router {
    pub(crate) fn new(controller: Proc) -> Self {
        Router {
            controller,
            links: RwLock::new(HashMap::new()),
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
            None => Destination::Nowhere(format!("unknown proc {proc_id}")),
        }
    }

    /// Sends `env` on towards its destination, waiting for room; returns it to its sender if it cannot go.
    pub(crate) async fn route(&self, env: Envelope) {
        let reason = match self.destination(env.to.proc_id()) {
            Destination::Controller => match self.controller.deliver(env).await {
                Ok(()) => return,
                Err(u) => return self.return_to_sender(u),
            },
            Destination::Link(link) => {
                let cost = env.payload.len();
                match link.queue().send(Outgoing::Envelope(env), cost).await {
                    Ok(()) => return,
                    Err(
                        QueueError::Closed(Outgoing::Envelope(env))
                        | QueueError::Full(Outgoing::Envelope(env)),
                    ) => {
                        let reason = link
                            .closed_reason()
                            .unwrap_or_else(|| format!("proc {} closed", link.proc_id));
                        return self.return_to_sender(Undeliverable {
                            envelope: env,
                            reason,
                        });
                    }
                    Err(_) => return,
                }
            }
            Destination::Nowhere(reason) => reason,
        };
        self.return_to_sender(Undeliverable {
            envelope: env,
            reason,
        });
    }

    /// Sends `env` on if there is room now; hands it back when the destination is full.
    pub(crate) fn try_route(&self, env: Envelope) -> Result<(), Envelope> {
        let reason = match self.destination(env.to.proc_id()) {
            Destination::Controller => match self.controller.try_deliver(env) {
                Ok(()) => return Ok(()),
                Err(NotDelivered::Undeliverable(u)) => {
                    self.return_to_sender(u);
                    return Ok(());
                }
                Err(NotDelivered::Full(env)) => return Err(env),
            },
            Destination::Link(link) => {
                let cost = env.payload.len();
                match link.queue().try_send(Outgoing::Envelope(env), cost) {
                    Ok(()) => return Ok(()),
                    Err(QueueError::Full(Outgoing::Envelope(env))) => return Err(env),
                    Err(QueueError::Closed(Outgoing::Envelope(env))) => {
                        let reason = link
                            .closed_reason()
                            .unwrap_or_else(|| format!("proc {} closed", link.proc_id));
                        self.return_to_sender(Undeliverable {
                            envelope: env,
                            reason,
                        });
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                }
            }
            Destination::Nowhere(reason) => reason,
        };
        self.return_to_sender(Undeliverable {
            envelope: env,
            reason,
        });
        Ok(())
    }

    /// Sends a returned envelope back to the proc of its sender (dropped if that proc is gone too).
    pub(crate) fn return_to_sender(&self, u: Undeliverable) {
        match self.destination(&u.envelope.from.proc_id) {
            Destination::Controller => self.controller.returned(u),
            Destination::Link(link) => {
                if link.queue().send_unbudgeted(Outgoing::Returned(u)).is_err() {
                    tracing::debug!("return dropped: sender's proc closed");
                }
            }
            Destination::Nowhere(why) => {
                tracing::debug!(
                    "return of envelope to {} dropped: sender unreachable ({why})",
                    u.envelope.to
                )
            }
        }
    }
}

/// The controller proc's way out: straight into the router, from the sender's own task.
pub(crate) struct RouterOutlet(pub(crate) Weak<Router>);

impl Outlet for RouterOutlet {
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), Outgoing>> {
        Box::pin(async move {
            let Some(router) = self.0.upgrade() else {
                return Err(item);
            };
            match item {
                Outgoing::Envelope(env) => router.route(env).await,
                Outgoing::Returned(u) => router.return_to_sender(u),
            }
            Ok(())
        })
    }

    fn try_send(&self, item: Outgoing) -> Result<(), QueueError<Outgoing>> {
        let Some(router) = self.0.upgrade() else {
            return Err(QueueError::Closed(item));
        };
        match item {
            Outgoing::Envelope(env) => router
                .try_route(env)
                .map_err(|env| QueueError::Full(Outgoing::Envelope(env))),
            Outgoing::Returned(u) => {
                router.return_to_sender(u);
                Ok(())
            }
        }
    }

    fn send_unbudgeted(&self, item: Outgoing) -> Result<(), Outgoing> {
        let Some(router) = self.0.upgrade() else {
            return Err(item);
        };
        match item {
            Outgoing::Envelope(env) => {
                let router = router.clone();
                tokio::spawn(async move { router.route(env).await });
            }
            Outgoing::Returned(u) => router.return_to_sender(u),
        }
        Ok(())
    }

    fn queued_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
}
