//! Where a proc's outgoing envelopes go.
//!
//! A worker's proc sends everything down its own mailbox stream, through a
//! byte-bounded queue. The controller's proc lives next to the router, so it
//! routes directly from the sender's task: a full queue towards one proc then
//! holds up only the senders to that proc, never the controller's traffic to
//! the others.

use futures::future::BoxFuture;

use crate::mailbox::Outgoing;
use crate::queue::{QueueError, QueueSender};

/// The way out of a proc.
pub trait Outlet: Send + Sync + 'static {
    /// Sends `item`, waiting for room; hands it back if the way out is closed.
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), Outgoing>>;
    /// Sends `item` if there is room now.
    fn try_send(&self, item: Outgoing) -> Result<(), QueueError<Outgoing>>;
    /// Sends a returned envelope without waiting (returns must never block).
    fn send_unbudgeted(&self, item: Outgoing) -> Result<(), Outgoing>;
    /// Whether returned envelopes may go this way: true for the controller's
    /// proc (the router is trusted with them), false for a worker's stream,
    /// where the allocator accepts refusals by position only.
    fn carries_returns(&self) -> bool;
    /// Bytes queued now and at most, if this way out has a queue.
    fn queued_bytes(&self) -> (u64, u64);
}

impl Outlet for QueueSender<Outgoing> {
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), Outgoing>> {
        Box::pin(async move {
            let cost = item.cost();
            QueueSender::send(self, item, cost)
                .await
                .map_err(|e| match e {
                    QueueError::Closed(i) | QueueError::Full(i) => i,
                })
        })
    }

    fn try_send(&self, item: Outgoing) -> Result<(), QueueError<Outgoing>> {
        let cost = item.cost();
        QueueSender::try_send(self, item, cost)
    }

    fn send_unbudgeted(&self, item: Outgoing) -> Result<(), Outgoing> {
        QueueSender::send_unbudgeted(self, item).map_err(|e| match e {
            QueueError::Closed(i) | QueueError::Full(i) => i,
        })
    }

    fn carries_returns(&self) -> bool {
        false
    }

    fn queued_bytes(&self) -> (u64, u64) {
        (self.used_bytes(), self.peak_bytes())
    }
}
