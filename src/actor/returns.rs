//! Messages that came back to their sender, and the bounded stream of them.
//!
//! An actor gets what it sent back in its `on_undeliverable` hook; the
//! controller's own client (which is no actor) gets them from
//! [`Returns`](crate::allocator::Allocator::returns), a stream any number of
//! tasks can read. Each comes as a [`Returned`]: who it was for, why it came
//! back, whether it may still have been delivered, and the message, which
//! [`Returned::decode`] turns back into its type.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::id::{ActorId, PortId, ProcId};
use crate::queue::{self, QueueError, QueueReceiver, QueueSender};
use crate::reason::ReturnReason;
use crate::wire::{codec, CodecError, DeliveryStatus, Dest, Undeliverable};

/// Who a message was for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Recipient {
    /// An actor.
    Actor(ActorId),
    /// A reply port.
    Port(PortId),
    /// A proc itself (a spawn, stop or stats request).
    Proc(ProcId),
}

impl From<&Dest> for Recipient {
    fn from(dest: &Dest) -> Self {
        match dest {
            Dest::Actor(a) => Recipient::Actor(a.clone()),
            Dest::Port(p) | Dest::PortFailure(p) => Recipient::Port(p.clone()),
            Dest::Proc(p) => Recipient::Proc(p.clone()),
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::Actor(a) => write!(f, "{a}"),
            Recipient::Port(p) => write!(f, "{p}"),
            Recipient::Proc(p) => write!(f, "{p}"),
        }
    }
}

/// A returned message not yet decoded: its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecoded(Vec<u8>);

impl Undecoded {
    /// The encoded message.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A message that came back to its sender undelivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned<M = Undecoded> {
    recipient: Recipient,
    reason: ReturnReason,
    status: DeliveryStatus,
    was_ask: bool,
    message: M,
}

impl<M> Returned<M> {
    /// Who it was for.
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// Why it came back.
    pub fn reason(&self) -> &ReturnReason {
        &self.reason
    }

    /// Whether it certainly did not reach its actor, or may have.
    pub fn status(&self) -> DeliveryStatus {
        self.status
    }

    /// Whether it was an `ask` (whose asker was told at once).
    pub fn was_ask(&self) -> bool {
        self.was_ask
    }

    /// The message.
    pub fn message(&self) -> &M {
        &self.message
    }

    /// The message, taken out.
    pub fn into_message(self) -> M {
        self.message
    }
}

impl Returned<Undecoded> {
    /// A returned envelope, as its sender sees it.
    pub(crate) fn from_wire(u: Undeliverable) -> Returned {
        Returned {
            recipient: Recipient::from(&u.envelope.to),
            reason: u.reason,
            status: u.status,
            was_ask: u.envelope.return_port.is_some(),
            message: Undecoded(u.envelope.payload),
        }
    }

    /// The same return with its message decoded as an `M`.
    ///
    /// Errors: [`CodecError`] when the bytes are not an `M` (the return was
    /// of a message of another type).
    pub fn decode<M: DeserializeOwned>(&self) -> Result<Returned<M>, CodecError> {
        Ok(Returned {
            recipient: self.recipient.clone(),
            reason: self.reason.clone(),
            status: self.status,
            was_ask: self.was_ask,
            message: codec::decode(&self.message.0)?,
        })
    }
}

impl<M> fmt::Display for Returned<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message to {} came back ({}): {}",
            self.recipient, self.status, self.reason
        )
    }
}

struct Shared {
    rx: tokio::sync::Mutex<QueueReceiver<Returned>>,
    dropped: AtomicU64,
}

/// A bounded stream of returned messages; cheap to clone, every clone reads
/// the same stream (each return is taken once).
///
/// It holds at most a byte budget of returns; when nobody reads them, later
/// ones are dropped and counted ([`Returns::dropped`]).
#[derive(Clone)]
pub struct Returns {
    shared: Arc<Shared>,
}

/// The writing end of a [`Returns`] stream.
#[derive(Clone)]
pub(crate) struct ReturnsSender {
    tx: QueueSender<Returned>,
    shared: Arc<Shared>,
}

/// A returns stream holding at most `budget_bytes` of returns.
pub(crate) fn returns(budget_bytes: usize) -> (ReturnsSender, Returns) {
    let (tx, rx) = queue::bounded(budget_bytes);
    let shared = Arc::new(Shared {
        rx: tokio::sync::Mutex::new(rx),
        dropped: AtomicU64::new(0),
    });
    (
        ReturnsSender {
            tx,
            shared: shared.clone(),
        },
        Returns { shared },
    )
}

impl ReturnsSender {
    /// Adds a return; drops it (and counts it) when the stream is full.
    pub(crate) fn push(&self, u: Undeliverable) {
        let cost = u.envelope.wire_size();
        match self.tx.try_send(Returned::from_wire(u), cost) {
            Ok(()) => {}
            Err(QueueError::Full(r)) | Err(QueueError::Closed(r)) => {
                let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!("{n} returned messages dropped, nobody reads them: {r}");
                }
            }
        }
    }
}

impl Returns {
    /// The next returned message, waiting for one.
    pub async fn next(&self) -> Option<Returned> {
        self.shared.rx.lock().await.recv().await.map(|(r, _)| r)
    }

    /// A returned message if one is waiting now.
    pub fn try_next(&self) -> Option<Returned> {
        self.shared.rx.try_lock().ok()?.try_recv().map(|(r, _)| r)
    }

    /// Returns dropped because the stream was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Envelope;

    fn returned(seq: u64, pad: usize) -> Undeliverable {
        let to = ProcId::new("m", 1).actor("b", 0);
        Undeliverable::not_delivered(
            Envelope {
                id: seq,
                from: ProcId::new("m", 0).actor("a", 0),
                to: Dest::Actor(to.clone()),
                return_port: None,
                payload: codec::encode(&(seq, vec![0u8; pad])).unwrap(),
            },
            ReturnReason::ActorNotFound(to),
        )
    }

    #[tokio::test]
    async fn returns_decode_to_their_type_and_are_bounded() {
        let (tx, rx) = returns(64 * 1024);
        for seq in 0..100 {
            tx.push(returned(seq, 4096));
        }
        assert!(rx.dropped() > 0, "a full stream drops");
        let first = rx.next().await.unwrap();
        let typed: Returned<(u64, Vec<u8>)> = first.decode().unwrap();
        assert_eq!(typed.message().0, 0);
        assert!(matches!(typed.reason(), ReturnReason::ActorNotFound(_)));
        assert_eq!(typed.status(), DeliveryStatus::NotDelivered);
        assert!(first.decode::<String>().is_err());
        let other = rx.clone();
        assert!(other.try_next().is_some(), "clones read the same stream");
    }
}
