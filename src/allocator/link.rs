//! The allocator's end of one proc's mailbox stream.
//!
//! Everything queued for the proc is held, with its byte budget, until the
//! worker acknowledges it; when the proc ends, whatever was not acknowledged
//! (queued or in flight) is returned to its sender with the reason. That is
//! where "nothing is lost silently" is kept for envelopes sent to a worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::router::Router;
use crate::actor::Outgoing;
use crate::id::ProcId;
use crate::mailbox::{self, AckState};
use crate::queue::{self, Permit, QueueReceiver, QueueSender};
use crate::transport::{FramedRecv, FramedSend};
use crate::wire::{close, Envelope, MailboxFrame, Undeliverable};

/// An envelope written to the worker and not yet acknowledged.
struct Pending {
    env: Envelope,
    /// The worker returned it before acknowledging it: not delivered.
    returned: bool,
    _permit: Permit,
}

#[derive(Default)]
struct InFlight {
    pending: VecDeque<Pending>,
    /// Envelopes acknowledged so far (the worker's cumulative count).
    acked: u64,
}

/// Counters of one proc link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Envelopes the worker acknowledged as delivered (not returned).
    pub delivered: u64,
    /// Envelopes returned to their senders by this link or the worker.
    pub returned: u64,
    /// Bytes queued or in flight towards the proc now.
    pub queued_bytes: u64,
    /// Most bytes ever queued or in flight at once.
    pub peak_queued_bytes: u64,
    /// Byte budget of the queue.
    pub budget_bytes: u64,
}

/// One proc's mailbox, as the allocator holds it.
pub(crate) struct ProcLink {
    pub(crate) proc_id: ProcId,
    queue: QueueSender<Outgoing>,
    idle_rx: Mutex<Option<QueueReceiver<Outgoing>>>,
    in_flight: Mutex<InFlight>,
    closed: Mutex<Option<String>>,
    /// Set with `closed`, read without the lock on every routed envelope.
    is_closed: std::sync::atomic::AtomicBool,
    stop_writer: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<Option<QueueReceiver<Outgoing>>>>>,
    reader_done: CancellationToken,
    delivered: AtomicU64,
    returned: AtomicU64,
}

impl ProcLink {
    /// A link for a proc whose stream is not attached yet: envelopes queue up meanwhile.
    pub(crate) fn new(proc_id: ProcId, budget_bytes: usize) -> Arc<ProcLink> {
        let (tx, rx) = queue::bounded(budget_bytes);
        Arc::new(ProcLink {
            proc_id,
            queue: tx,
            idle_rx: Mutex::new(Some(rx)),
            in_flight: Mutex::new(InFlight::default()),
            closed: Mutex::new(None),
            is_closed: std::sync::atomic::AtomicBool::new(false),
            stop_writer: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            reader_done: CancellationToken::new(),
            delivered: AtomicU64::new(0),
            returned: AtomicU64::new(0),
        })
    }

    pub(crate) fn queue(&self) -> &QueueSender<Outgoing> {
        &self.queue
    }

    /// Why the link is closed, if it is.
    pub(crate) fn closed_reason(&self) -> Option<String> {
        if !self.is_closed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.closed).clone()
    }

    pub(crate) fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            returned: self.returned.load(Ordering::Relaxed),
            queued_bytes: self.queue.used_bytes(),
            peak_queued_bytes: self.queue.peak_bytes(),
            budget_bytes: self.queue.capacity_bytes(),
        }
    }

    /// Starts moving envelopes over the proc's mailbox stream.
    ///
    /// Stream-level failures (a frame that does not decode, an envelope
    /// claiming another sender, an ack for more than was sent) are reported
    /// on `failures` with the reason; the session then fails this proc only.
    pub(crate) fn attach(
        self: &Arc<Self>,
        mut send: FramedSend,
        mut recv: FramedRecv,
        router: Arc<Router>,
        failures: mpsc::UnboundedSender<(ProcId, String)>,
    ) {
        let Some(mut rx) = lock(&self.idle_rx).take() else {
            return;
        };
        let acks = Arc::new(AckState::default());
        let writer = {
            let (link, acks, router, stop, failures) = (
                self.clone(),
                acks.clone(),
                router.clone(),
                self.stop_writer.clone(),
                failures.clone(),
            );
            tokio::spawn(async move {
                let sent_link = link.clone();
                let mut on_sent = move |env: Envelope, permit: Permit| {
                    lock(&sent_link.in_flight).pending.push_back(Pending {
                        env,
                        returned: false,
                        _permit: permit,
                    });
                };
                let (large_router, large_link) = (router.clone(), link.clone());
                let mut on_too_large = move |u: Undeliverable| {
                    large_link.returned.fetch_add(1, Ordering::Relaxed);
                    large_router.return_to_sender(u);
                };
                // Closing the link abandons the stream at once: whatever was
                // written but not acknowledged is returned by `close`.
                let never = CancellationToken::new();
                let result = tokio::select! {
                    r = mailbox::write_loop(&mut send, &mut rx, &acks, &never, &mut on_sent, &mut on_too_large) => Some(r),
                    _ = stop.cancelled() => None,
                };
                if let Some(Err(e)) = result {
                    let _ = failures.send((
                        link.proc_id.clone(),
                        format!("mailbox stream write failed: {e}"),
                    ));
                }
                Some(rx)
            })
        };
        *lock(&self.writer) = Some(writer);
        let reader = {
            let link = self.clone();
            tokio::spawn(async move {
                let outcome = link.read_loop(&mut recv, &acks, &router).await;
                if let Err(reason) = outcome {
                    recv.stop(close::PROTOCOL);
                    let _ = failures.send((link.proc_id.clone(), reason));
                }
                link.reader_done.cancel();
            })
        };
        lock(&self.tasks).push(reader);
    }

    /// Reads the worker's frames until the stream ends; `Err` on a protocol violation.
    async fn read_loop(
        &self,
        recv: &mut FramedRecv,
        acks: &AckState,
        router: &Router,
    ) -> Result<(), String> {
        loop {
            let frame = match recv.next::<MailboxFrame>().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) if e.is_protocol_violation() => {
                    return Err(format!("protocol violation on mailbox stream: {e}"))
                }
                Err(e) => return Err(format!("mailbox stream failed: {e}")),
            };
            match frame {
                MailboxFrame::Envelope(env) => {
                    if env.from.proc_id != self.proc_id {
                        return Err(format!(
                            "protocol violation: envelope on the stream of {} claims to come from {}",
                            self.proc_id, env.from
                        ));
                    }
                    router.route(env).await;
                    acks.bump(recv.frame_ready());
                }
                MailboxFrame::Undeliverable(u) => {
                    if *u.envelope.to.proc_id() != self.proc_id {
                        return Err(format!(
                            "protocol violation: return on the stream of {} is for an envelope to {}",
                            self.proc_id, u.envelope.to
                        ));
                    }
                    let mut in_flight = lock(&self.in_flight);
                    if let Some(p) = in_flight
                        .pending
                        .iter_mut()
                        .find(|p| p.env.id == u.envelope.id && p.env.from == u.envelope.from)
                    {
                        p.returned = true;
                    }
                    drop(in_flight);
                    self.returned.fetch_add(1, Ordering::Relaxed);
                    router.return_to_sender(u);
                }
                MailboxFrame::Ack { processed } => {
                    let mut in_flight = lock(&self.in_flight);
                    let newly = processed.saturating_sub(in_flight.acked);
                    if processed < in_flight.acked || newly > in_flight.pending.len() as u64 {
                        return Err(format!(
                            "protocol violation: ack of {processed} envelopes, but {} were sent",
                            in_flight.acked + in_flight.pending.len() as u64
                        ));
                    }
                    for _ in 0..newly {
                        if let Some(p) = in_flight.pending.pop_front() {
                            if !p.returned {
                                self.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    in_flight.acked = processed;
                }
            }
        }
    }

    /// Waits (up to `within`) for the worker to finish its side of the stream.
    pub(crate) async fn drained(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.reader_done.cancelled()).await;
    }

    /// Closes the link: everything not acknowledged goes back to its sender with `reason`.
    pub(crate) async fn close(&self, reason: &str, router: &Router) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_some() {
                return;
            }
            *closed = Some(reason.to_string());
            self.is_closed.store(true, Ordering::Release);
        }
        self.stop_writer.cancel();
        let writer = lock(&self.writer).take();
        let rx = match writer {
            Some(task) => match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(rx)) => rx,
                _ => None,
            },
            None => lock(&self.idle_rx).take(),
        };
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let mut undelivered: Vec<Envelope> = Vec::new();
        {
            let mut in_flight = lock(&self.in_flight);
            undelivered.extend(
                in_flight
                    .pending
                    .drain(..)
                    .filter(|p| !p.returned)
                    .map(|p| p.env),
            );
        }
        if let Some(mut rx) = rx {
            rx.close();
            while let Some((item, _)) = rx.try_recv() {
                if let Outgoing::Envelope(env) = item {
                    undelivered.push(env);
                }
            }
        }
        self.returned
            .fetch_add(undelivered.len() as u64, Ordering::Relaxed);
        router.controller().fail_asks_to(&self.proc_id, reason);
        for env in undelivered {
            router.return_to_sender(Undeliverable {
                envelope: env,
                reason: reason.to_string(),
            });
        }
    }
}
