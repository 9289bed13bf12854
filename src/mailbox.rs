//! A proc's mailbox stream: batched writes and cumulative acknowledgements.
//!
//! Both ends of a mailbox stream run [`write_loop`] for their direction. It
//! takes what the proc (or the router) queued, encodes as many frames as are
//! ready into one buffer and writes them at once, so small messages share
//! packets. Each side counts the envelopes it has *processed* from the other
//! side (delivered to an actor, or returned as undeliverable) in an
//! [`AckState`], and the writer sends that count as `Ack` frames.
//!
//! The one subtle rule: a returned envelope must be on the wire before an
//! ack that covers it, or the peer would count it as delivered and then
//! receive it back. Readers push the return *before* bumping the count, and
//! the writer reads the count *before* draining the queue and only sends it
//! when it drained the queue empty; so an ack never overtakes a return.
//!
//! Acks ride along with data when there is some; otherwise the writer waits
//! up to [`ACK_DELAY`] (or until [`ACK_EVERY`] envelopes are owed) before
//! sending one alone, so a request/reply exchange costs one packet each way
//! rather than two.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::{Permit, QueueReceiver};
use crate::reason::ReturnReason;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::codec::{self, Variant};
use crate::wire::routes::{RouteCache, RouteChoice, RouteTable};
use crate::wire::{CodecError, Envelope, MailboxFrame, RoutedEnvelope, Undeliverable};

/// What one side queues for its end of a mailbox stream.
#[derive(Debug)]
pub enum Outgoing {
    /// A message for an actor, port or proc on the other side.
    Envelope(Envelope),
    /// Allocator to worker: an envelope the proc sent, returned to it
    /// (boxed: returns are rare, and an item is moved several times on its
    /// way to the stream, so its size is what every envelope pays).
    Returned(Box<Undeliverable>),
    /// Worker to allocator: the envelope at stream position `seq` was not delivered.
    Refused {
        /// Position of the envelope among those received on the stream.
        seq: u64,
        /// Why.
        reason: ReturnReason,
    },
}

impl Outgoing {
    /// Bytes the item counts against queue budgets: its encoded size, ids included.
    pub fn cost(&self) -> usize {
        match self {
            Outgoing::Envelope(e) => e.wire_size(),
            Outgoing::Returned(u) => u.envelope.wire_size() + crate::reason::REASON_COST,
            Outgoing::Refused { .. } => 16 + crate::reason::REASON_COST,
        }
    }
}

/// Largest batch of frames written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// Longest an ack waits for data to ride along with (like QUIC's own ack delay).
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Acks are sent at once when this many envelopes are unacknowledged.
const ACK_EVERY: u64 = 64;

/// The count of envelopes one side has processed from the other, to be acknowledged.
#[derive(Debug, Default)]
pub struct AckState {
    processed: AtomicU64,
    /// `processed` when the writer was last woken for it.
    announced: AtomicU64,
    changed: Notify,
}

impl AckState {
    /// Records one more processed envelope (after any return for it was queued).
    ///
    /// The writer is woken only when `more_ready` is false (the reader is
    /// about to wait for input) or every [`ACK_EVERY`] envelopes: waking it
    /// for every envelope would cost a thread switch per message.
    pub fn bump(&self, more_ready: bool) {
        let n = self.processed.fetch_add(1, Ordering::Release) + 1;
        if !more_ready || n % ACK_EVERY == 0 {
            self.announce(n);
        }
    }

    /// Wakes the writer for everything processed so far, if it was not
    /// woken for it yet. Readers call it before they wait for input: a
    /// batch that ended because another kind of frame followed it (an ack,
    /// a route) bumped with `more_ready`, and nothing else would wake the
    /// writer to acknowledge it.
    pub fn idle(&self) {
        let n = self.processed.load(Ordering::Acquire);
        if self.announced.load(Ordering::Acquire) != n {
            self.announce(n);
        }
    }

    fn announce(&self, n: u64) {
        self.announced.fetch_max(n, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// Records `n` more processed envelopes; wakes the writer as [`AckState::bump`] does.
    pub fn bump_by(&self, n: u64, more_ready: bool) {
        if n == 0 {
            return;
        }
        let before = self.processed.fetch_add(n, Ordering::Release);
        if !more_ready || (before + n) / ACK_EVERY != before / ACK_EVERY {
            self.announce(before + n);
        }
    }

    /// Envelopes processed so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Acquire)
    }
}

/// One frame read from a mailbox stream, with the peer's routes applied.
#[derive(Debug)]
pub enum Received {
    /// An envelope, and the route it came on if it was sent on one: two
    /// envelopes on the same route, with no new definition of it between
    /// them, have the same sender and destination.
    Envelope {
        /// The envelope, with its full ids.
        env: Envelope,
        /// Its stream-local route, `None` if it came with full ids.
        route: Option<u32>,
    },
    /// The peer (re)defined this route: kept, nothing more to do.
    Defined(u32),
    /// Any other frame (boxed: it is rare and large, and an envelope,
    /// small, is what moves most).
    Frame(Box<MailboxFrame>),
}

/// The variant number of [`MailboxFrame::Routed`], read from an encoded
/// sample (see [`codec::variant_index`]): what [`read`] decodes alone.
pub fn routed_variant() -> u32 {
    static ROUTED: OnceLock<u32> = OnceLock::new();
    *ROUTED.get_or_init(|| {
        let sample = MailboxFrame::Routed(RoutedEnvelope {
            route: 0,
            id: 0,
            return_port: None,
            payload: Vec::new(),
        });
        codec::encode(&sample)
            .ok()
            .and_then(|body| codec::variant_index(&body).map(|(index, _)| index))
            // Not reachable (the sample always encodes); a number no frame
            // has only turns the fast path off.
            .unwrap_or(u32::MAX)
    })
}

/// Reads the next frame from a mailbox stream and applies the peer's routes
/// (kept in `routes`); `None` when the peer finished the stream cleanly.
///
/// A routed envelope, the frame that moves most, is decoded without the
/// rest of [`MailboxFrame`] around it and comes back with its full ids.
/// Errors: as [`FramedRecv::next`]; a route the peer may not use is
/// [`StreamError::Route`], a protocol violation like an undecodable frame.
pub async fn read(
    recv: &mut FramedRecv,
    routes: &mut RouteTable,
) -> Result<Option<Received>, StreamError> {
    let Some(frame) = recv
        .next_variant::<RoutedEnvelope, MailboxFrame>(routed_variant())
        .await?
    else {
        return Ok(None);
    };
    let routed = |routes: &RouteTable, routed: RoutedEnvelope| {
        let route = routed.route;
        routes.envelope(routed).map(|env| Received::Envelope {
            env,
            route: Some(route),
        })
    };
    Ok(Some(match frame {
        Variant::Hot(r) => routed(routes, r)?,
        Variant::Other(frame) => match *frame {
            MailboxFrame::Route { route, from, to } => {
                routes.define(route, from, to)?;
                Received::Defined(route)
            }
            MailboxFrame::Routed(r) => routed(routes, r)?,
            MailboxFrame::Envelope(env) => Received::Envelope { env, route: None },
            // Nothing was moved out: the box goes on as it is.
            _ => Received::Frame(frame),
        },
    }))
}

/// What the writer calls with the envelopes of each batch it wrote (it may drain them).
pub type OnSent<'a> = dyn FnMut(&mut Vec<(Envelope, Permit)>) + Send + 'a;

/// Writes what `queue` yields to `send` until told to stop, in batches, with acks.
///
/// `on_sent` is given the envelopes of each batch, in order, once they are
/// encoded and before they are flushed (the allocator keeps them until
/// acknowledged); `on_too_large` every envelope that exceeds the frame limit,
/// to return to its sender, with the permit it was queued with. On `stop`, drains what is queued, writes a final
/// ack and finishes the stream. A peer that stops reading with code 0 is
/// done with the stream in order (a proc being stopped) and ends the loop
/// with `Ok`. Errors: [`StreamError::Write`] if the stream or connection is
/// gone otherwise (the queue keeps whatever was not taken).
pub async fn write_loop(
    send: &mut FramedSend,
    queue: &mut QueueReceiver<Outgoing>,
    acks: &AckState,
    stop: &CancellationToken,
    on_sent: &mut OnSent<'_>,
    on_too_large: &mut (dyn FnMut(Undeliverable, Permit) + Send),
) -> Result<(), StreamError> {
    match write_batches(send, queue, acks, stop, on_sent, on_too_large).await {
        Err(e) if e.is_stopped_normally() => Ok(()),
        other => other,
    }
}

/// The body of [`write_loop`].
async fn write_batches(
    send: &mut FramedSend,
    queue: &mut QueueReceiver<Outgoing>,
    acks: &AckState,
    stop: &CancellationToken,
    on_sent: &mut OnSent<'_>,
    on_too_large: &mut (dyn FnMut(Undeliverable, Permit) + Send),
) -> Result<(), StreamError> {
    let mut acked = 0u64;
    let mut routes = RouteCache::default();
    // What a batch wrote, handed to `on_sent` at once (one lock, not one per envelope).
    let mut sent: Vec<(Envelope, Permit)> = Vec::new();
    let mut stopping = false;
    // When an ack is owed but there is no data to carry it, wait a little for some.
    let mut ack_due: Option<tokio::time::Instant> = None;
    loop {
        let mut ack_now = false;
        let first = if stopping {
            None
        } else {
            let due = ack_due.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                biased;
                _ = stop.cancelled() => { stopping = true; None }
                item = queue.recv() => match item {
                    Some(item) => Some(item),
                    None => {
                        // Every sender is gone, so nothing can be returned any more.
                        buffer_ack(send, acks.processed(), &mut acked);
                        send.flush().await?;
                        send.finish();
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep_until(due), if ack_due.is_some() => { ack_now = true; None }
                _ = acks.changed.notified() => {
                    let owed = acks.processed().saturating_sub(acked);
                    if owed >= ACK_EVERY {
                        ack_now = true;
                    } else if owed > 0 && ack_due.is_none() {
                        ack_due = Some(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    None
                }
            }
        };
        if first.is_none() && !ack_now && !stopping {
            continue;
        }
        // Read the count before draining: see the module docs.
        let ack_snapshot = acks.processed();
        let mut out = Out {
            send: &mut *send,
            routes: &mut routes,
            sent: &mut sent,
            on_too_large: &mut *on_too_large,
        };
        if let Some((item, permit)) = first {
            out.buffer(item, permit);
        }
        // A batch ends at BATCH_BYTES, except when stopping (then the whole
        // queue goes, so that the final ack covers everything).
        let full = |out: &Out<'_>| out.send.buffered() >= BATCH_BYTES && !stopping;
        let drained = !full(&out)
            && !queue.try_recv_each(|item, permit| {
                out.buffer(item, permit);
                if full(&out) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        if !sent.is_empty() {
            // Before the flush, so an ack can never find them missing.
            on_sent(&mut sent);
            sent.clear();
        }
        if drained {
            // Whatever was owed goes now; nothing is due any more.
            ack_due = None;
            buffer_ack(send, ack_snapshot, &mut acked);
        }
        send.flush().await?;
        if stopping {
            // Stopping drains the whole queue above, so the ack is final.
            send.finish();
            return Ok(());
        }
    }
}

/// Buffers an ack of `processed` envelopes if that is more than `acked` said.
fn buffer_ack(send: &mut FramedSend, processed: u64, acked: &mut u64) {
    if processed <= *acked {
        return;
    }
    match send.buffer(&MailboxFrame::Ack { processed }) {
        Ok(()) => *acked = processed,
        Err(e) => tracing::error!("cannot encode ack: {e}"),
    }
}

/// Where a batch is encoded: the stream's buffer, its routes, and what was sent.
struct Out<'a> {
    send: &'a mut FramedSend,
    routes: &'a mut RouteCache,
    sent: &'a mut Vec<(Envelope, Permit)>,
    on_too_large: &'a mut (dyn FnMut(Undeliverable, Permit) + Send),
}

impl Out<'_> {
    /// Encodes one outgoing item into the write buffer.
    fn buffer(&mut self, item: Outgoing, permit: Permit) {
        match item {
            Outgoing::Envelope(mut env) => match self.envelope(&mut env) {
                // Encoded in place: the envelope (large, with its ids) moves once, into `sent`.
                Ok(()) => self.sent.push((env, permit)),
                Err(CodecError::TooLarge { len, max }) => (self.on_too_large)(
                    Undeliverable::not_delivered(env, ReturnReason::TooLarge { len, max }),
                    permit,
                ),
                Err(e) => (self.on_too_large)(
                    Undeliverable::not_delivered(env, ReturnReason::Unencodable(e.to_string())),
                    permit,
                ),
            },
            Outgoing::Refused { seq, reason } => {
                if let Err(e) = self.send.buffer(&MailboxFrame::Refused { seq, reason }) {
                    tracing::error!("cannot encode refusal of envelope {seq}: {e}");
                }
            }
            Outgoing::Returned(u) => self.returned(*u),
        }
    }

    /// Encodes an envelope on its route (defining the route first if need
    /// be); the envelope is left as it was either way.
    fn envelope(&mut self, env: &mut Envelope) -> Result<(), CodecError> {
        let choice = self.routes.choose(&env.from, &env.to);
        if let RouteChoice::Define(route) = choice {
            let define = MailboxFrame::Route {
                route,
                from: env.from.clone(),
                to: env.to.clone(),
            };
            if let Err(e) = self.send.buffer(&define) {
                // Not sent: the peer must not see the number used for this pair.
                self.routes.forget(route);
                return Err(e);
            }
        }
        let frame = MailboxFrame::Routed(RoutedEnvelope {
            route: choice.route(),
            id: env.id,
            return_port: env.return_port,
            payload: std::mem::take(&mut env.payload),
        });
        let result = self.send.buffer(&frame);
        if let MailboxFrame::Routed(routed) = frame {
            env.payload = routed.payload;
        }
        result
    }

    /// Encodes a return (without its payload if it is too large to frame).
    fn returned(&mut self, u: Undeliverable) {
        let frame = MailboxFrame::Undeliverable(u);
        if self.send.buffer(&frame).is_ok() {
            return;
        }
        // The return itself is too large to frame: send it without the payload.
        let MailboxFrame::Undeliverable(mut u) = frame else {
            return;
        };
        u.envelope.payload.clear();
        u.reason = ReturnReason::PayloadDropped(Box::new(u.reason));
        if let Err(e) = self.send.buffer(&MailboxFrame::Undeliverable(u)) {
            tracing::error!("cannot return undeliverable envelope: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the writer would be woken now.
    async fn woken(acks: &AckState) -> bool {
        tokio::time::timeout(Duration::from_millis(50), acks.changed.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_batch_cut_short_by_another_frame_is_still_announced_when_the_reader_idles() {
        let acks = AckState::default();
        // A batch that ended because an ack or a route followed it.
        acks.bump_by(5, true);
        assert!(!woken(&acks).await, "woken although more input was ready");
        // The reader handled the other frame and is about to wait.
        acks.idle();
        assert!(
            woken(&acks).await,
            "the writer was never told of 5 envelopes"
        );
        // Nothing new since: idling again does not wake the writer.
        acks.idle();
        assert!(!woken(&acks).await);
        acks.bump(false);
        assert!(woken(&acks).await);
        assert_eq!(acks.processed(), 6);
    }
}
