//! The allocator's end of one proc's mailbox stream.
//!
//! Everything queued for the proc is held, with its byte budget, until the
//! worker acknowledges it ([`InFlight`]); when the proc ends, whatever was not
//! acknowledged (queued or in flight) is handed back by [`ProcLink::close`]
//! to be returned to its sender. That is where "nothing is lost silently" is
//! kept for envelopes sent to a worker.
//!
//! What the worker sends on the stream is checked and passed to the link's
//! [`Switch`] (the router, one layer up): envelopes go on to their
//! destination, or wait in the proc's own parking lines when that
//! destination is full ([`Parking`]), so one full destination never stops
//! the rest of the proc's traffic. Every way a worker can make the allocator
//! hold memory is charged to one of its proc's budgets: envelopes towards
//! it (the queue), envelopes from it waiting for a full destination (the
//! parking budget), and returns the allocator owes it (the returns budget;
//! a proc that lets more returns pile up than that budget holds is failed).
//! A proc with data waiting that neither takes bytes off its stream nor
//! acknowledges anything for the stall timeout is failed as stalled
//! ([`StallJudge`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::in_flight::{InFlight, Released};
use super::parking::Parking;
use super::stall::StallJudge;
use crate::id::ProcId;
use crate::mailbox::{self, AckState, Outgoing, Received};
use crate::queue::{self, Budget, Permit, PermitRun, QueueError, QueueReceiver, QueueSender};
use crate::reason::{Bounded, FailureReason, ReturnReason, REASON_COST};
use crate::sync::lock;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::routes::RouteTable;
use crate::wire::{close, DeliveryStatus, Dest, Envelope, MailboxFrame, Undeliverable};

/// Why an envelope was not forwarded at once.
pub(crate) enum NotForwarded {
    /// Its destination is full now: the envelope, to wait or go back.
    Full(Envelope),
    /// It cannot go anywhere (unknown or closed destination): the return.
    Undeliverable(Undeliverable),
}

/// Where a link sends what its worker gives it: implemented by the router.
pub(crate) trait Switch: Send + Sync + 'static {
    /// Forwards `env` if its destination has room now.
    fn try_forward(&self, env: Envelope) -> Result<(), NotForwarded>;

    /// Forwards `env`, waiting for room at its destination; the return if
    /// it cannot go anywhere.
    fn forward(&self, env: Envelope) -> BoxFuture<'_, Result<(), Undeliverable>>;

    /// Returns `u` to its sender. `permit` is a budget share the envelope
    /// holds that may travel with it (one that no live destination needs
    /// back); without one the return is charged to the sender's returns
    /// budget.
    fn give_back(&self, u: Undeliverable, permit: Option<Permit>);
}

/// How a proc link behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkConfig {
    /// Byte budget of each of the link's queues (towards the proc, parked, returns).
    pub(crate) budget_bytes: usize,
    /// How long the proc may leave data waiting without acknowledging anything.
    pub(crate) stall_timeout: Duration,
    /// Whether the proc may send requests (spawn, stop, stats) to other procs.
    pub(crate) remote_proc_requests: bool,
}

/// An envelope written to the worker and not yet acknowledged.
type Pending = (Envelope, Permit);

/// Counters of one proc link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LinkStats {
    /// Envelopes the worker acknowledged as delivered (not refused).
    pub delivered: u64,
    /// Envelopes returned to their senders by this link or the worker.
    pub returned: u64,
    /// Bytes queued or in flight towards the proc now.
    pub queued_bytes: u64,
    /// Most bytes ever queued or in flight at once.
    pub peak_queued_bytes: u64,
    /// Byte budget of the queue.
    pub budget_bytes: u64,
    /// Bytes the proc sent that wait for a full destination now.
    pub parked_bytes: u64,
    /// Bytes of returns waiting to be written to the proc now.
    pub returns_bytes: u64,
    /// Envelopes written towards the proc on its stream.
    pub sent: u64,
    /// Payload bytes of those envelopes (the encoded messages, without ids).
    pub sent_bytes: u64,
    /// Envelopes the proc sent on its stream.
    pub received: u64,
    /// Payload bytes of those envelopes.
    pub received_bytes: u64,
}

struct State {
    /// Refused positions keep their budget share until acknowledged.
    in_flight: InFlight<Pending, Permit>,
    closed: Option<ReturnReason>,
    /// The worker finished its side of the stream in order (final ack sent).
    finished: bool,
}

/// One proc's mailbox, as the allocator holds it.
pub(crate) struct ProcLink {
    pub(crate) proc_id: ProcId,
    config: LinkConfig,
    queue: QueueSender<Outgoing>,
    returns: Arc<Budget>,
    parking: Arc<Parking>,
    idle_rx: Mutex<Option<QueueReceiver<Outgoing>>>,
    state: Mutex<State>,
    /// Set with `state.closed`, read without the lock on every routed envelope.
    is_closed: AtomicBool,
    /// Set once a failure of this link was reported (reported once).
    failing: AtomicBool,
    /// Set once the worker opened the proc's mailbox stream.
    attached: AtomicBool,
    failures: mpsc::UnboundedSender<(ProcId, FailureReason)>,
    stop_writer: CancellationToken,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<Option<QueueReceiver<Outgoing>>>>>,
    reader_done: CancellationToken,
    returned: AtomicU64,
    /// Traffic of the stream, each way: envelopes and payload bytes.
    traffic: Traffic,
}

/// Envelopes and payload bytes a proc stream carried, each way.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
}

impl ProcLink {
    /// A link for a proc whose stream is not attached yet: envelopes queue up
    /// meanwhile. Failures of the link (stalls, returns not read, protocol
    /// violations on the stream) are reported on `failures`.
    pub(crate) fn new(
        proc_id: ProcId,
        config: LinkConfig,
        failures: mpsc::UnboundedSender<(ProcId, FailureReason)>,
    ) -> Arc<ProcLink> {
        let (tx, rx) = queue::bounded(config.budget_bytes);
        let link = Arc::new(ProcLink {
            proc_id,
            config,
            queue: tx,
            returns: Budget::new(config.budget_bytes),
            parking: Arc::new(Parking::new(config.budget_bytes)),
            idle_rx: Mutex::new(Some(rx)),
            state: Mutex::new(State {
                in_flight: InFlight::default(),
                closed: None,
                finished: false,
            }),
            is_closed: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            failures,
            stop_writer: CancellationToken::new(),
            reader: Mutex::new(None),
            writer: Mutex::new(None),
            reader_done: CancellationToken::new(),
            returned: AtomicU64::new(0),
            traffic: Traffic::default(),
        });
        // A worker that never opens the proc's stream would leave it, and
        // everyone waiting to send to it, hanging for ever.
        let watched = Arc::downgrade(&link);
        let timeout = config.stall_timeout;
        spawn_in_span(async move {
            tokio::time::sleep(timeout).await;
            if let Some(link) = watched.upgrade() {
                if !link.attached.load(Ordering::Acquire) && link.closed_reason().is_none() {
                    link.fail(FailureReason::MailboxNotOpened(timeout));
                }
            }
        });
        link
    }

    /// Queues `env` for the proc if there is room now.
    ///
    /// Errors: [`QueueError::Full`] or [`QueueError::Closed`], handing the
    /// envelope back.
    pub(crate) fn try_send(&self, env: Envelope) -> Result<(), QueueError<Envelope>> {
        let cost = env.wire_size();
        match self.queue.try_send(Outgoing::Envelope(env), cost) {
            Ok(()) => Ok(()),
            Err(QueueError::Full(Outgoing::Envelope(env))) => Err(QueueError::Full(env)),
            Err(QueueError::Closed(Outgoing::Envelope(env))) => Err(QueueError::Closed(env)),
            // The queue hands back exactly the item it was given.
            Err(_) => Ok(()),
        }
    }

    /// Queues `env` for the proc, waiting for room.
    ///
    /// Errors: the envelope back if the link closed meanwhile.
    pub(crate) async fn send(&self, env: Envelope) -> Result<(), Envelope> {
        let cost = env.wire_size();
        match self.queue.send(Outgoing::Envelope(env), cost).await {
            Ok(()) => Ok(()),
            Err(QueueError::Full(Outgoing::Envelope(env)))
            | Err(QueueError::Closed(Outgoing::Envelope(env))) => Err(env),
            // The queue hands back exactly the item it was given.
            Err(_) => Ok(()),
        }
    }

    /// Queues a return for the proc: one of its envelopes came back.
    ///
    /// With `permit` (the envelope's existing share of some budget) it is
    /// queued as it is. Without one it is charged to this proc's returns
    /// budget; if that is used up, the proc is not reading what it is owed
    /// and is failed instead of letting the allocator's memory grow.
    /// Returns to a closed link are dropped: the proc is gone.
    pub(crate) fn give_back(&self, u: Undeliverable, permit: Option<Permit>) {
        let permit = match permit {
            Some(p) => p,
            None => match self.returns.try_reserve(return_cost(&u)) {
                Some(p) => p,
                None => {
                    self.fail(FailureReason::ReturnsNotRead {
                        budget: self.returns.capacity_bytes(),
                    });
                    return;
                }
            },
        };
        if self
            .queue
            .push(Outgoing::Returned(Box::new(u)), permit)
            .is_err()
        {
            tracing::debug!("return to {} dropped: proc closed", self.proc_id);
        }
    }

    /// Reports a failure of this link to its session, once.
    fn fail(&self, reason: FailureReason) {
        if !self.failing.swap(true, Ordering::AcqRel) {
            let _ = self.failures.send((self.proc_id.clone(), reason));
        }
    }

    /// Why the link is closed, if it is.
    pub(crate) fn closed_reason(&self) -> Option<ReturnReason> {
        if !self.is_closed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.state).closed.clone()
    }

    pub(crate) fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: lock(&self.state).in_flight.delivered(),
            returned: self.returned.load(Ordering::Relaxed),
            queued_bytes: self.queue.used_bytes(),
            peak_queued_bytes: self.queue.peak_bytes(),
            budget_bytes: self.queue.capacity_bytes(),
            parked_bytes: self.parking.parked_bytes(),
            returns_bytes: self.returns.used_bytes(),
            sent: self.traffic.sent.load(Ordering::Relaxed),
            sent_bytes: self.traffic.sent_bytes.load(Ordering::Relaxed),
            received: self.traffic.received.load(Ordering::Relaxed),
            received_bytes: self.traffic.received_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether anything waits to reach the worker (queued, in flight or
    /// owed), whatever budget it is charged to.
    fn data_waiting(&self) -> bool {
        self.queue.queued_items() > 0
            || self.queue.used_bytes() > 0
            || self.returns.used_bytes() > 0
    }

    /// Starts moving envelopes over the proc's mailbox stream.
    ///
    /// Stream-level failures (a frame that does not decode, an envelope
    /// claiming another sender, an ack or refusal the bookkeeping rules out,
    /// a stall) are reported on the link's failure channel with the reason;
    /// the session then fails this proc only.
    pub(crate) fn attach(
        self: &Arc<Self>,
        mut send: FramedSend,
        mut recv: FramedRecv,
        switch: Arc<dyn Switch>,
    ) {
        let Some(mut rx) = lock(&self.idle_rx).take() else {
            return;
        };
        self.attached.store(true, Ordering::Release);
        let acks = Arc::new(AckState::default());
        // What the worker takes off the stream, so a peer that reads returns
        // (which it never acknowledges) is not taken for a stalled one.
        let written = Arc::new(AtomicU64::new(0));
        send.count_written(written.clone());
        let writer = {
            let (link, acks, switch, stop) = (
                self.clone(),
                acks.clone(),
                switch.clone(),
                self.stop_writer.clone(),
            );
            spawn_in_span(async move {
                let sent_link = link.clone();
                let mut on_sent = move |sent: &mut Vec<(Envelope, Permit)>| {
                    let bytes: u64 = sent.iter().map(|(e, _)| e.payload.len() as u64).sum();
                    let traffic = &sent_link.traffic;
                    traffic.sent.fetch_add(sent.len() as u64, Ordering::Relaxed);
                    traffic.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
                    let mut state = lock(&sent_link.state);
                    for item in sent.drain(..) {
                        state.in_flight.on_sent(item);
                    }
                };
                let (large_switch, large_link) = (switch.clone(), link.clone());
                // This proc's budget share goes back to it at once; the return
                // is charged to its sender.
                let mut on_too_large = move |u: Undeliverable, _permit: Permit| {
                    large_link.returned.fetch_add(1, Ordering::Relaxed);
                    large_switch.give_back(u, None);
                };
                // Closing the link abandons the stream at once: whatever was
                // written but not acknowledged is handed back by `close`.
                let never = CancellationToken::new();
                let result = tokio::select! {
                    r = mailbox::write_loop(&mut send, &mut rx, &acks, &never, &mut on_sent, &mut on_too_large) => Some(r),
                    _ = stop.cancelled() => None,
                };
                if let Some(Err(e)) = result {
                    link.fail(FailureReason::MailboxStream(format!("write failed: {e}")));
                }
                Some(rx)
            })
        };
        *lock(&self.writer) = Some(writer);
        let reader = {
            let link = self.clone();
            spawn_in_span(async move {
                let outcome = link.read_loop(&mut recv, &acks, &written, &switch).await;
                match outcome {
                    Ok(()) => lock(&link.state).finished = true,
                    Err(reason) => {
                        recv.stop(close::PROTOCOL);
                        link.fail(reason);
                    }
                }
                link.reader_done.cancel();
            })
        };
        *lock(&self.reader) = Some(reader);
    }

    /// Reads the worker's frames until the stream ends; `Err` with the reason
    /// on a protocol violation, a broken stream or a stall.
    async fn read_loop(
        self: &Arc<Self>,
        recv: &mut FramedRecv,
        acks: &AckState,
        written: &AtomicU64,
        switch: &Arc<dyn Switch>,
    ) -> Result<(), FailureReason> {
        let mut judge = StallJudge::new(self.config.stall_timeout, Instant::now());
        let mut written_seen = 0;
        let mut routes = RouteTable::default();
        let mut checks = tokio::time::interval(judge.check_every());
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = if recv.frame_ready() {
                mailbox::read(recv, &mut routes).await
            } else {
                acks.idle();
                tokio::select! {
                    f = mailbox::read(recv, &mut routes) => f,
                    _ = checks.tick() => {
                        let now = Instant::now();
                        let written_now = written.load(Ordering::Relaxed);
                        if written_now != written_seen {
                            written_seen = written_now;
                            judge.on_progress(now);
                        }
                        if let Some(quiet) = judge.check(now, self.data_waiting()) {
                            return Err(FailureReason::Stalled {
                                quiet,
                                waiting_bytes: self.queue.used_bytes() + self.returns.used_bytes(),
                            });
                        }
                        continue;
                    }
                }
            };
            let received = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) if e.is_protocol_violation() => {
                    return Err(FailureReason::ProtocolViolation(format!(
                        "on mailbox stream: {e}"
                    )))
                }
                Err(StreamError::Read(e)) => {
                    return Err(FailureReason::MailboxStream(e.to_string()))
                }
                Err(e) => return Err(FailureReason::MailboxStream(e.to_string())),
            };
            let frame = match received {
                // A route definition is kept, nothing more to do.
                Received::Defined(_) => continue,
                Received::Frame(frame) => frame,
                Received::Envelope { env, .. } => {
                    self.traffic.received.fetch_add(1, Ordering::Relaxed);
                    let bytes = env.payload.len() as u64;
                    self.traffic
                        .received_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    if env.from.proc_id != self.proc_id {
                        return Err(FailureReason::ProtocolViolation(format!(
                            "envelope on the stream of {} claims to come from {}",
                            self.proc_id, env.from
                        )));
                    }
                    self.forward(env, switch, &mut judge).await;
                    acks.bump(recv.frame_ready());
                    continue;
                }
            };
            match *frame {
                MailboxFrame::Refused { seq, reason } => {
                    // The envelope goes back to its sender, charged to the
                    // sender's returns budget; this proc's budget share stays
                    // with the position until this worker acknowledges it.
                    let refused = lock(&self.state)
                        .in_flight
                        .on_refused(seq, |(env, permit)| (env, permit));
                    let env =
                        refused.map_err(|v| FailureReason::ProtocolViolation(v.to_string()))?;
                    self.returned.fetch_add(1, Ordering::Relaxed);
                    let u = Undeliverable::not_delivered(env, reason.bounded());
                    switch.give_back(u, None);
                }
                MailboxFrame::Ack { processed } => {
                    let mut state = lock(&self.state);
                    let before = state.in_flight.acked();
                    // The budget shares of what the ack covers go back at once.
                    let mut shares = PermitRun::default();
                    state
                        .in_flight
                        .on_ack_with(processed, |done| match done {
                            Released::Delivered((_env, permit)) => shares.add(permit),
                            Released::Refused(permit) => shares.add(permit),
                        })
                        .map_err(|v| FailureReason::ProtocolViolation(v.to_string()))?;
                    drop(state);
                    drop(shares);
                    // Only an ack that covers something new is progress.
                    if processed > before {
                        judge.on_progress(Instant::now());
                    }
                }
                MailboxFrame::Undeliverable(_) => {
                    return Err(FailureReason::ProtocolViolation(
                        "a worker returns envelopes by refusing them, not by sending them back"
                            .into(),
                    ));
                }
                // `read` keeps definitions and returns every envelope as such.
                MailboxFrame::Route { .. }
                | MailboxFrame::Routed(_)
                | MailboxFrame::Envelope(_) => {}
            }
        }
    }

    /// Passes an envelope from the proc on: at once if its destination has
    /// room and no line of this proc waits for it, else into that line; if
    /// this proc's parking budget is used up, back to it as "full". The
    /// proc's stream is never left unread because a destination is full.
    async fn forward(
        self: &Arc<Self>,
        env: Envelope,
        switch: &Arc<dyn Switch>,
        judge: &mut StallJudge,
    ) {
        if let Dest::Proc(target) = &env.to {
            if !self.config.remote_proc_requests {
                let reason = ReturnReason::RequestRefused {
                    from: self.proc_id.clone(),
                    target: target.clone(),
                };
                return self
                    .owe(Undeliverable::not_delivered(env, reason), judge)
                    .await;
            }
        }
        let env = if self.parking.has_line(env.to.proc_id()) {
            env
        } else {
            match switch.try_forward(env) {
                Ok(()) => return,
                Err(NotForwarded::Full(env)) => env,
                Err(NotForwarded::Undeliverable(u)) => return self.owe(u, judge).await,
            }
        };
        let Some(permit) = self.parking.budget().try_reserve(env.wire_size()) else {
            let reason = ReturnReason::DestinationFull {
                destination: env.to.proc_id().clone(),
                parked_bytes: self.parking.parked_bytes(),
            };
            return self
                .owe(Undeliverable::not_delivered(env, reason), judge)
                .await;
        };
        let dest = env.to.proc_id().clone();
        if self.parking.park(env, permit) {
            let (link, switch) = (self.clone(), switch.clone());
            spawn_in_span(async move {
                while let Some((env, permit)) = link.parking.next(&dest) {
                    // What cannot go comes back with this proc's own parking
                    // share: no new budget is needed for it.
                    if let Err(u) = switch.forward(env).await {
                        link.give_back(u, Some(permit));
                    }
                }
            });
        }
    }

    /// Queues a return this proc caused while its stream was being read
    /// (it sent to nowhere, or to a destination that is full), charged to
    /// its returns budget. If that is used up the reading waits, as the
    /// proc is not reading what it is owed; if it stays used up for the
    /// stall timeout, the proc is failed.
    async fn owe(&self, u: Undeliverable, judge: &mut StallJudge) {
        let cost = return_cost(&u);
        let permit = match self.returns.try_reserve(cost) {
            Some(p) => p,
            None => {
                judge.pause();
                let got =
                    tokio::time::timeout(self.config.stall_timeout, self.returns.reserve(cost))
                        .await;
                judge.resume(Instant::now());
                match got {
                    Ok(p) => p,
                    Err(_) => {
                        return self.fail(FailureReason::ReturnsNotRead {
                            budget: self.returns.capacity_bytes(),
                        })
                    }
                }
            }
        };
        if self
            .queue
            .push(Outgoing::Returned(Box::new(u)), permit)
            .is_err()
        {
            tracing::debug!("return to {} dropped: proc closed", self.proc_id);
        }
    }

    /// Waits (up to `within`) for the worker to finish its side of the stream.
    pub(crate) async fn drained(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.reader_done.cancelled()).await;
    }

    /// Closes the link and hands back everything not acknowledged, each
    /// with `reason` and its budget share, to be returned to its sender.
    ///
    /// What never left the allocator is certainly not delivered; what was
    /// written and not acknowledged is possibly delivered, unless the worker
    /// ended its side of the stream in order (its final ack then covers all
    /// it delivered). A second close hands back nothing.
    pub(crate) async fn close(
        &self,
        reason: &ReturnReason,
    ) -> Vec<(Undeliverable, Option<Permit>)> {
        {
            let mut state = lock(&self.state);
            if state.closed.is_some() {
                return Vec::new();
            }
            state.closed = Some(reason.clone());
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
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
        // Nothing more will be read: nobody need wait for the stream to drain.
        self.reader_done.cancel();
        let mut back = Vec::new();
        {
            let mut state = lock(&self.state);
            let status = if state.finished {
                DeliveryStatus::NotDelivered
            } else {
                DeliveryStatus::PossiblyDelivered
            };
            for (env, permit) in state.in_flight.drain() {
                let u = Undeliverable {
                    envelope: env,
                    reason: reason.clone(),
                    status,
                };
                back.push((u, Some(permit)));
            }
        }
        if let Some(mut rx) = rx {
            rx.close();
            while let Some((item, permit)) = rx.try_recv() {
                // Returns owed to this proc go nowhere: it is gone.
                if let Outgoing::Envelope(env) = item {
                    back.push((
                        Undeliverable::not_delivered(env, reason.clone()),
                        Some(permit),
                    ));
                }
            }
        }
        self.returned
            .fetch_add(back.len() as u64, Ordering::Relaxed);
        back
    }
}

/// What a return costs in a returns budget.
fn return_cost(u: &Undeliverable) -> usize {
    u.envelope.wire_size() + REASON_COST
}

/// `tokio::spawn` in the current `tracing` span (the proc's), so the task's
/// events carry its worker index and proc id.
fn spawn_in_span<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(task))
}
