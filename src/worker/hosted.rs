//! A proc hosted by this worker, wired to its mailbox stream.
//!
//! Its tasks are split between the worker's two runtimes (see
//! [`super::runtimes`]). The tasks that move the stream (reader, writer)
//! and forward failures run where the session runs, on the transport
//! runtime: they run no user code, and a handler that blocks its thread
//! cannot strand them (a task woken by a handler just before it blocks
//! would otherwise wait in that thread's run slot forever). What does run
//! user code goes to the actor runtime: the actors themselves, and requests
//! to the proc (spawning runs a constructor and decodes parameters), which
//! the reader hands to a system task there, in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stop::Stop;

use super::stop_budget::StopDeadlines;
use crate::actor::{Proc, ProcConfig, Registry};
use crate::id::{ActorId, ProcId};
use crate::mailbox::{self, AckState, Received};
use crate::queue::{self, QueueError, QueueReceiver};
use crate::reason::{ActorFailure, FailureReason, ReturnReason, StopReason};
use crate::transport::{FramedRecv, FramedSend};
use crate::wire::routes::RouteTable;
use crate::wire::{close, Dest, Envelope, MailboxFrame, Undeliverable, WorkerToAllocator};

/// Most envelopes handed to a mailbox as one batch.
const MAX_BATCH: usize = 256;

/// Longest a stopping proc's writer waits for the allocator to have read
/// everything (the stop's own deadline may cut it shorter).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running proc and the tasks that move its mailbox stream.
pub struct HostedProc {
    proc: Proc,
    events: mpsc::UnboundedSender<WorkerToAllocator>,
    stop_system: CancellationToken,
    stop_reader: Stop,
    stop_writer: CancellationToken,
    stop_forwarder: CancellationToken,
    system: JoinHandle<()>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

/// How the stop of a proc went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStopReport {
    /// Actors that did not stop by the deadline and were aborted.
    pub aborted: Vec<ActorId>,
    /// The proc's own tasks that did not end in time and were abandoned.
    pub abandoned: Vec<&'static str>,
}

impl ProcStopReport {
    /// The reason to report with `ProcStopped`: `why`, and which actors were aborted.
    pub fn reason(&self, why: &str) -> StopReason {
        if self.aborted.is_empty() {
            return StopReason::ReportedByWorker(why.to_string());
        }
        let names: Vec<String> = self.aborted.iter().map(|a| a.to_string()).collect();
        StopReason::ReportedByWorker(format!(
            "{why}; aborted, as they did not stop in time: {}",
            names.join(", ")
        ))
    }
}

/// Handles requests to the proc (spawn, stop actor, stats) one at a time, in order, until stopped.
///
/// Requests still queued when it stops go back to their senders.
async fn serve_system(proc: Proc, mut requests: QueueReceiver<Envelope>, stop: CancellationToken) {
    loop {
        let env = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = requests.recv() => match next {
                Some((env, _permit)) => env,
                None => return,
            },
        };
        // Already acknowledged: what cannot be delivered now is bounced.
        if let Err(u) = proc.deliver(env).await {
            proc.bounce(u);
        }
    }
    requests.close();
    while let Some((env, _permit)) = requests.try_recv() {
        let reason = ReturnReason::ProcClosing(proc.id().clone());
        proc.bounce(Undeliverable::not_delivered(env, reason));
    }
}

impl HostedProc {
    /// Starts proc `proc_id` on the mailbox stream `send`/`recv`; its failures go to `events`.
    ///
    /// Its actors and its system task run on the runtime of `actors`; the
    /// stream tasks on the runtime this is called from.
    pub fn start(
        proc_id: ProcId,
        registry: Arc<Registry>,
        config: ProcConfig,
        mut send: FramedSend,
        mut recv: FramedRecv,
        events: mpsc::UnboundedSender<WorkerToAllocator>,
        actors: &Handle,
    ) -> HostedProc {
        let (proc, mut outputs) = Proc::new(proc_id.clone(), registry, config, None);
        let acks = Arc::new(AckState::default());
        let stop_system = CancellationToken::new();
        let stop_reader = Stop::new();
        let stop_writer = CancellationToken::new();
        let stop_forwarder = CancellationToken::new();
        let (reader_stop, writer_stop, forwarder_stop) = (
            stop_reader.clone(),
            stop_writer.clone(),
            stop_forwarder.clone(),
        );

        // Requests waiting for the system task count against the same budget
        // as an actor's mailbox; past it the reader waits, as for a full mailbox.
        let (system_tx, system_rx) = queue::bounded(config.mailbox_bytes);
        let system = actors.spawn(serve_system(proc.clone(), system_rx, stop_system.clone()));

        let reader = {
            let (proc, acks, events, proc_id) =
                (proc.clone(), acks.clone(), events.clone(), proc_id.clone());
            spawn_in_span(async move {
                // A frame read while gathering a batch that did not belong to it.
                let mut carried = None;
                // Position on the stream of the next envelope (for refusals).
                let mut next_seq: u64 = 0;
                let mut routes = RouteTable::default();
                loop {
                    if reader_stop.is_stopped() {
                        break;
                    }
                    // Fast path: a whole frame is buffered, reading it cannot wait.
                    let received = if let Some(r) = carried.take() {
                        r
                    } else if recv.frame_ready() {
                        mailbox::read(&mut recv, &mut routes).await
                    } else {
                        acks.idle();
                        tokio::select! {
                            biased;
                            _ = reader_stop.stopped() => break,
                            r = mailbox::read(&mut recv, &mut routes) => r,
                        }
                    };
                    match received {
                        Ok(Some(Received::Envelope { env, route })) => {
                            // Envelopes already buffered for the same actor go
                            // to its mailbox as one item: one wake, one permit.
                            // The same route means the same destination (a
                            // new definition of it ends the comparison by
                            // number); otherwise destinations are compared.
                            let mut batch_route = route;
                            let mut batch = Vec::with_capacity(16);
                            batch.push(env);
                            while batch.len() < MAX_BATCH && recv.frame_ready() {
                                match mailbox::read(&mut recv, &mut routes).await {
                                    Ok(Some(Received::Envelope { env, route }))
                                        if (route.is_some() && route == batch_route)
                                            || env.to == batch[0].to =>
                                    {
                                        batch.push(env)
                                    }
                                    // A definition: the batch goes on.
                                    Ok(Some(Received::Defined(r))) => {
                                        if batch_route == Some(r) {
                                            batch_route = None;
                                        }
                                    }
                                    other => {
                                        carried = Some(other);
                                        break;
                                    }
                                }
                            }
                            let n = batch.len() as u64;
                            // Refusals go out before the ack that covers them.
                            if matches!(batch[0].to, Dest::Proc(_)) {
                                // Requests to the proc run user code: not here.
                                for (i, env) in batch.into_iter().enumerate() {
                                    let cost = env.wire_size();
                                    if let Err(QueueError::Closed(_) | QueueError::Full(_)) =
                                        system_tx.send(env, cost).await
                                    {
                                        let reason = ReturnReason::ProcClosing(proc_id.clone());
                                        proc.refuse(next_seq + i as u64, reason);
                                    }
                                }
                            } else {
                                for (i, u) in proc.deliver_batch(batch).await {
                                    proc.refuse(next_seq + i as u64, u.reason);
                                }
                            }
                            next_seq += n;
                            acks.bump_by(n, carried.is_some() || recv.frame_ready());
                        }
                        Ok(Some(Received::Defined(_))) => {}
                        Ok(Some(Received::Frame(frame))) => match *frame {
                            MailboxFrame::Undeliverable(u) => proc.returned(u),
                            MailboxFrame::Refused { .. } => {
                                recv.stop(close::PROTOCOL);
                                let reason = FailureReason::ProtocolViolation(
                                    "the allocator sent a refusal".to_string(),
                                );
                                let _ =
                                    events.send(WorkerToAllocator::ProcFailed { proc_id, reason });
                                break;
                            }
                            // `read` keeps definitions and returns envelopes
                            // as such; an ack needs nothing here.
                            MailboxFrame::Ack { .. }
                            | MailboxFrame::Route { .. }
                            | MailboxFrame::Routed(_)
                            | MailboxFrame::Envelope(_) => {}
                        },
                        Ok(None) => break,
                        Err(e) => {
                            if e.is_protocol_violation() {
                                recv.stop(close::PROTOCOL);
                            }
                            let reason = FailureReason::MailboxStream(e.to_string());
                            let _ = events.send(WorkerToAllocator::ProcFailed { proc_id, reason });
                            break;
                        }
                    }
                }
            })
        };

        let outbound = outputs.outbound.take();
        let writer = {
            let (proc, events) = (proc.clone(), events.clone());
            spawn_in_span(async move {
                let mut on_sent = |_: &mut Vec<_>| {};
                let returner = proc.clone();
                let mut on_too_large = move |u, _permit| returner.returned(u);
                let Some(mut outbound) = outbound else { return };
                let result = mailbox::write_loop(
                    &mut send,
                    &mut outbound,
                    &acks,
                    &writer_stop,
                    &mut on_sent,
                    &mut on_too_large,
                )
                .await;
                if let Err(e) = result {
                    let reason = FailureReason::MailboxStream(format!("write failed: {e}"));
                    let _ = events.send(WorkerToAllocator::ProcFailed {
                        proc_id: proc.id().clone(),
                        reason,
                    });
                    return;
                }
                // Wait until the allocator has everything we wrote.
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
            })
        };

        let forwarder = {
            let events = events.clone();
            spawn_in_span(async move {
                loop {
                    tokio::select! {
                        biased;
                        Some((actor_id, reason)) = outputs.failures.recv() => {
                            let _ = events.send(WorkerToAllocator::ActorFailed { actor_id, reason });
                        }
                        // Both channels are empty: everything reported so far is forwarded.
                        _ = forwarder_stop.cancelled() => break,
                        else => break,
                    }
                }
            })
        };

        HostedProc {
            proc,
            events,
            stop_system,
            stop_reader,
            stop_writer,
            stop_forwarder,
            system,
            reader,
            writer,
            forwarder,
        }
    }

    /// Stops the proc in order, within `deadlines`: actors' stop hooks, then
    /// the stream is flushed and finished.
    ///
    /// Actors still running at `deadlines.actors` are aborted, reported as
    /// failed (`ActorFailed` on the events channel) and named in the report.
    /// Stream tasks still running at `deadlines.streams` are abandoned.
    /// Envelopes that arrive after the actors stopped are not acknowledged,
    /// so the allocator returns them to their senders. This future runs on
    /// whichever runtime awaits it and only waits: a stuck actor runtime
    /// delays it to the deadlines, never beyond.
    pub async fn stop(self, deadlines: StopDeadlines) -> ProcStopReport {
        let started = tokio::time::Instant::now();
        let mut abandoned = Vec::new();
        // No new actors from here on: requests still queued go back.
        self.stop_system.cancel();
        if !end_by(self.system, deadlines.actors).await {
            abandoned.push("system task");
        }
        let aborted = self.proc.stop_all(deadlines.actors).await;
        if !aborted.is_empty() {
            let allowed = deadlines.actors.saturating_duration_since(started);
            for actor_id in &aborted {
                let reason = ActorFailure::Aborted(allowed);
                let _ = self.events.send(WorkerToAllocator::ActorFailed {
                    actor_id: actor_id.clone(),
                    reason,
                });
            }
        }
        self.stop_reader.stop();
        if !end_by(self.reader, deadlines.streams).await {
            abandoned.push("reader");
        }
        self.stop_writer.cancel();
        if !end_by(self.writer, deadlines.streams).await {
            abandoned.push("writer");
        }
        self.stop_forwarder.cancel();
        if !end_by(self.forwarder, deadlines.streams).await {
            abandoned.push("failure forwarder");
        }
        if !abandoned.is_empty() {
            tracing::warn!(
                "proc {}: {} did not end in time, abandoned",
                self.proc.id(),
                abandoned.join(", ")
            );
        }
        ProcStopReport { aborted, abandoned }
    }
}

/// Waits for `task` until `deadline`, else aborts it; whether it ended in time.
async fn end_by(mut task: JoinHandle<()>, deadline: tokio::time::Instant) -> bool {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(_) => true,
        Err(_) => {
            task.abort();
            false
        }
    }
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
