//! Where a proc's outgoing envelopes go.
//!
//! A worker's proc sends everything down its own mailbox stream, through a
//! byte-bounded queue. The controller's proc lives next to the router, so it
//! routes directly from the sender's task: a full queue towards one proc then
//! holds up only the senders to that proc, never the controller's traffic to
//! the others; and a destination known to be gone refuses at once.

use futures::future::BoxFuture;

use crate::mailbox::Outgoing;
use crate::queue::{QueueError, QueueSender};
use crate::reason::ReturnReason;

/// Why an item did not go out.
pub(crate) enum OutletError {
    /// No room now (only from `try_send`): the item is handed back.
    Full(Outgoing),
    /// The way out is closed (the proc is shutting down).
    Closed,
    /// The destination is known to be gone: refused at once, nothing sent.
    Refused(ReturnReason),
}

/// The way out of a proc.
pub(crate) trait Outlet: Send + Sync + 'static {
    /// Sends `item`, waiting for room.
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), OutletError>>;
    /// Sends `item` if there is room now.
    fn try_send(&self, item: Outgoing) -> Result<(), OutletError>;
    /// Sends a returned envelope or a refusal without waiting (they must never block).
    fn send_unbudgeted(&self, item: Outgoing) -> Result<(), Outgoing>;
    /// Whether returned envelopes may go this way: true for the controller's
    /// proc (the router is trusted with them), false for a worker's stream,
    /// where the allocator accepts refusals by position only.
    fn carries_returns(&self) -> bool;
    /// Bytes queued now and at most, if this way out has a queue.
    fn queued_bytes(&self) -> (u64, u64);
}

impl Outlet for QueueSender<Outgoing> {
    fn send(&self, item: Outgoing) -> BoxFuture<'_, Result<(), OutletError>> {
        Box::pin(async move {
            let cost = item.cost();
            QueueSender::send(self, item, cost)
                .await
                .map_err(|_| OutletError::Closed)
        })
    }

    fn try_send(&self, item: Outgoing) -> Result<(), OutletError> {
        let cost = item.cost();
        QueueSender::try_send(self, item, cost).map_err(|e| match e {
            QueueError::Full(item) => OutletError::Full(item),
            QueueError::Closed(_) => OutletError::Closed,
        })
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
