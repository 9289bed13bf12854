//! Byte budgets, and queues bounded by them where each item carries its share.
//!
//! Every mailbox in quicmesh (an actor's, a proc's outbound queue, the
//! allocator's queue towards a proc) is one of these. A sender reserves the
//! item's cost in bytes before enqueueing: [`QueueSender::send`] waits for
//! room (backpressure), [`QueueSender::try_send`] says `Full`. The
//! reservation travels with the item as a [`Permit`] and is given back when
//! that permit is dropped, which may be long after the item left the queue:
//! the allocator keeps it until the worker acknowledges delivery, so "queued
//! bytes" covers everything not yet delivered.
//!
//! A [`Budget`] can also stand on its own: the allocator charges the returns
//! it owes a proc, and the envelopes a proc's sender parks while their
//! destination is full, to budgets of their own, and queues such items with
//! [`QueueSender::push`] and the permit already taken. A permit may thus
//! cross from one budget's accounting into another queue: memory stays
//! bounded by the sum of the budgets whatever path an item takes.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Fixed cost added to every item, so that empty messages are bounded too.
pub const ITEM_OVERHEAD: usize = 64;

/// A share of a byte budget; dropping it gives the bytes back.
#[derive(Debug)]
pub struct Permit {
    _inner: Option<OwnedSemaphorePermit>,
}

impl Permit {
    /// A permit that reserves nothing (for items outside any budget).
    pub fn none() -> Permit {
        Permit { _inner: None }
    }
}

/// Permits being given back together: those of one budget in a row become
/// one, released once (one lock of the budget's waiters) when this is
/// dropped, instead of one release each. What an ack covers is many
/// permits of one budget, so this is how acknowledged envelopes let go of
/// their shares.
#[derive(Debug, Default)]
pub struct PermitRun {
    run: Option<OwnedSemaphorePermit>,
}

impl PermitRun {
    /// Adds `permit` to the run; a permit of another budget than the run's
    /// gives the run so far back at once and starts a new one.
    pub fn add(&mut self, permit: Permit) {
        let Some(next) = permit._inner else { return };
        match &mut self.run {
            Some(held) if Arc::ptr_eq(held.semaphore(), next.semaphore()) => held.merge(next),
            _ => self.run = Some(next),
        }
    }
}

/// Why an item could not be queued; the item is handed back.
#[derive(Debug)]
pub enum QueueError<T> {
    /// The queue's byte budget is used up (only from `try_send`).
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// A number of bytes that can be reserved, waited for and given back.
#[derive(Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    capacity: usize,
    peak: AtomicU64,
}

impl Budget {
    /// A budget of `capacity_bytes` (at least [`ITEM_OVERHEAD`]).
    pub fn new(capacity_bytes: usize) -> Arc<Budget> {
        let capacity = capacity_bytes.clamp(ITEM_OVERHEAD, Semaphore::MAX_PERMITS);
        Arc::new(Budget {
            sem: Arc::new(Semaphore::new(capacity)),
            capacity,
            peak: AtomicU64::new(0),
        })
    }

    /// What an item of `bytes` bytes costs: its size plus the fixed
    /// overhead, and never more than the whole budget (so that one item
    /// larger than the budget takes all of it rather than waiting for ever).
    fn cost(&self, bytes: usize) -> u32 {
        bytes
            .saturating_add(ITEM_OVERHEAD)
            .min(self.capacity)
            .min(u32::MAX as usize) as u32
    }

    fn granted(&self, permit: OwnedSemaphorePermit) -> Permit {
        let used = (self.capacity - self.sem.available_permits()) as u64;
        self.peak.fetch_max(used, Ordering::Relaxed);
        Permit {
            _inner: Some(permit),
        }
    }

    /// Reserves `bytes` if they are free now; `None` if the budget is used up.
    pub fn try_reserve(&self, bytes: usize) -> Option<Permit> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.cost(bytes))
            .ok()
            .map(|p| self.granted(p))
    }

    /// Reserves `bytes`, waiting until they are free.
    pub async fn reserve(&self, bytes: usize) -> Permit {
        if let Some(permit) = self.try_reserve(bytes) {
            return permit;
        }
        match self.sem.clone().acquire_many_owned(self.cost(bytes)).await {
            Ok(p) => self.granted(p),
            // The semaphore is never closed, so this cannot happen; an
            // unaccounted item is still better than a panic.
            Err(_) => Permit::none(),
        }
    }

    /// Bytes reserved now.
    pub fn used_bytes(&self) -> u64 {
        (self.capacity - self.sem.available_permits()) as u64
    }

    /// The most bytes ever reserved at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The size of the budget.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity as u64
    }
}

/// The sending side of a byte-bounded queue; cheap to clone.
pub struct QueueSender<T> {
    tx: mpsc::UnboundedSender<(T, Permit)>,
    budget: Arc<Budget>,
    queued: Arc<AtomicUsize>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
            queued: self.queued.clone(),
        }
    }
}

/// The receiving side of a byte-bounded queue.
pub struct QueueReceiver<T> {
    rx: mpsc::UnboundedReceiver<(T, Permit)>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `capacity_bytes` (an item larger than that takes the whole budget).
pub fn bounded<T>(capacity_bytes: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            budget: Budget::new(capacity_bytes),
            queued: queued.clone(),
        },
        QueueReceiver { rx, queued },
    )
}

impl<T> QueueSender<T> {
    /// Queues `item` of `bytes` bytes, waiting for room.
    ///
    /// Errors: [`QueueError::Closed`] (with the item) if the receiver is gone.
    pub async fn send(&self, item: T, bytes: usize) -> Result<(), QueueError<T>> {
        if self.tx.is_closed() {
            return Err(QueueError::Closed(item));
        }
        // Fast path: room now, no waiting machinery.
        if let Some(permit) = self.budget.try_reserve(bytes) {
            return self.push(item, permit);
        }
        let permit = tokio::select! {
            p = self.budget.reserve(bytes) => p,
            _ = self.tx.closed() => return Err(QueueError::Closed(item)),
        };
        self.push(item, permit)
    }

    /// Queues `item` if there is room now.
    ///
    /// Errors: [`QueueError::Full`] when the budget is used up, [`QueueError::Closed`]
    /// when the receiver is gone; both hand the item back.
    pub fn try_send(&self, item: T, bytes: usize) -> Result<(), QueueError<T>> {
        if self.tx.is_closed() {
            return Err(QueueError::Closed(item));
        }
        match self.budget.try_reserve(bytes) {
            Some(permit) => self.push(item, permit),
            None => Err(QueueError::Full(item)),
        }
    }

    /// Queues `item` outside the budget (for small control items that must not wait).
    ///
    /// Errors: [`QueueError::Closed`] if the receiver is gone.
    pub fn send_unbudgeted(&self, item: T) -> Result<(), QueueError<T>> {
        self.push(item, Permit::none())
    }

    /// Queues `item` with a permit already taken (from this queue's budget or another).
    ///
    /// Errors: [`QueueError::Closed`] if the receiver is gone.
    pub fn push(&self, item: T, permit: Permit) -> Result<(), QueueError<T>> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send((item, permit)).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            QueueError::Closed(e.0 .0)
        })
    }

    /// Items in the queue now, whatever budget they are charged to.
    pub fn queued_items(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Bytes reserved now (queued, or taken out but not yet released).
    pub fn used_bytes(&self) -> u64 {
        self.budget.used_bytes()
    }

    /// The most bytes ever reserved at once.
    pub fn peak_bytes(&self) -> u64 {
        self.budget.peak_bytes()
    }

    /// The byte budget.
    pub fn capacity_bytes(&self) -> u64 {
        self.budget.capacity_bytes()
    }
}

impl<T> QueueReceiver<T> {
    /// The next item and its permit; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<(T, Permit)> {
        let item = self.rx.recv().await;
        if item.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<(T, Permit)> {
        let item = self.rx.try_recv().ok();
        if item.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }

    /// Hands `take` every item queued now, in order, until the queue is
    /// empty or `take` answers [`ControlFlow::Break`]; returns whether it did.
    ///
    /// The same as calling [`QueueReceiver::try_recv`] in a loop, minus a
    /// move of each item through a return value and one atomic count per
    /// item: a writer draining a queue of small envelopes does this for
    /// every message, and an item (an envelope with its ids) is large.
    #[inline]
    pub fn try_recv_each(&mut self, mut take: impl FnMut(T, Permit) -> ControlFlow<()>) -> bool {
        /// Subtracts what was taken even if `take` panics part way.
        struct Taken<'a> {
            queued: &'a AtomicUsize,
            n: usize,
        }
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                if self.n > 0 {
                    self.queued.fetch_sub(self.n, Ordering::Relaxed);
                }
            }
        }
        let mut taken = Taken {
            queued: &self.queued,
            n: 0,
        };
        while let Ok((item, permit)) = self.rx.try_recv() {
            taken.n += 1;
            if take(item, permit).is_break() {
                return true;
            }
        }
        false
    }

    /// Refuses further items; those already queued can still be received.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_bounds_bytes_and_permits_travel_with_items() {
        let (tx, mut rx) = bounded::<u32>(1000);
        tx.try_send(1, 400).unwrap();
        tx.try_send(2, 400).unwrap();
        assert!(matches!(tx.try_send(3, 400), Err(QueueError::Full(3))));
        assert_eq!(tx.used_bytes(), 928);
        let (item, permit) = rx.recv().await.unwrap();
        assert_eq!(item, 1);
        // Taken out but not released: still counted.
        assert!(matches!(tx.try_send(3, 400), Err(QueueError::Full(3))));
        drop(permit);
        tx.try_send(3, 400).unwrap();
        assert_eq!(tx.peak_bytes(), 928);
    }

    #[test]
    fn permits_of_several_budgets_released_together_are_all_given_back() {
        let (a, b) = (Budget::new(1000), Budget::new(1000));
        let mut permits = Vec::new();
        for i in 0..9 {
            let budget = if i % 3 == 2 { &b } else { &a };
            permits.push(budget.try_reserve(100).expect("room"));
        }
        permits.push(Permit::none());
        let mut run = PermitRun::default();
        for permit in permits {
            run.add(permit);
        }
        // Each switch of budget gave a run back; the last (of `b`) is still held.
        assert_eq!((a.used_bytes(), b.used_bytes()), (0, 164));
        drop(run);
        assert_eq!((a.used_bytes(), b.used_bytes()), (0, 0));
        // Everything is free again, to the last byte.
        assert!(a.try_reserve(1000 - ITEM_OVERHEAD).is_some());
        assert!(b.try_reserve(1000 - ITEM_OVERHEAD).is_some());
    }

    #[tokio::test]
    async fn send_waits_for_room() {
        let (tx, mut rx) = bounded::<u32>(200);
        tx.send(1, 100).await.unwrap();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { tx2.send(2, 100).await.is_ok() });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "second send must wait for room");
        drop(rx.recv().await);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn oversized_item_takes_whole_budget_instead_of_hanging() {
        let (tx, mut rx) = bounded::<u32>(100);
        tx.send(1, 10_000).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().0, 1);
    }

    #[tokio::test]
    async fn closed_receiver_hands_item_back() {
        let (tx, rx) = bounded::<u32>(100);
        drop(rx);
        assert!(matches!(tx.send(7, 1).await, Err(QueueError::Closed(7))));
        assert!(matches!(tx.try_send(8, 1), Err(QueueError::Closed(8))));
    }

    #[test]
    fn try_recv_each_takes_in_order_stops_when_told_and_counts_what_it_took() {
        let (tx, mut rx) = bounded::<u32>(10_000);
        for i in 0..5 {
            tx.try_send(i, 10).unwrap();
        }
        let mut seen = Vec::new();
        let stopped = rx.try_recv_each(|item, _permit| {
            seen.push(item);
            if item == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(stopped, "told to stop at 2");
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(tx.queued_items(), 2, "the two not taken are still queued");
        // Dropped permits gave their bytes back; the two queued still hold theirs.
        assert_eq!(tx.used_bytes(), 2 * (10 + ITEM_OVERHEAD) as u64);
        let stopped = rx.try_recv_each(|item, _permit| {
            seen.push(item);
            ControlFlow::Continue(())
        });
        assert!(!stopped, "ran until the queue was empty");
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!((tx.queued_items(), tx.used_bytes()), (0, 0));
        assert!(
            !rx.try_recv_each(|_, _| ControlFlow::Break(())),
            "nothing to take"
        );
    }
}
