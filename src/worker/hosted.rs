//! A proc hosted by this worker, wired to its mailbox stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stop::Stop;

use crate::actor::{Proc, ProcConfig, Registry};
use crate::id::ProcId;
use crate::mailbox::{self, AckState};
use crate::transport::{FramedRecv, FramedSend};
use crate::wire::{close, MailboxFrame, WorkerToAllocator};

/// Most envelopes handed to a mailbox as one batch.
const MAX_BATCH: usize = 256;

/// How long a stopping proc may take to flush its mailbox stream.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running proc and the tasks that move its mailbox stream.
pub struct HostedProc {
    proc: Proc,
    stop_reader: Stop,
    stop_writer: CancellationToken,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

impl HostedProc {
    /// Starts proc `proc_id` on the mailbox stream `send`/`recv`; its failures go to `events`.
    pub fn start(
        proc_id: ProcId,
        registry: Arc<Registry>,
        config: ProcConfig,
        mut send: FramedSend,
        mut recv: FramedRecv,
        events: mpsc::UnboundedSender<WorkerToAllocator>,
    ) -> HostedProc {
        let (proc, mut outputs) = Proc::new(proc_id.clone(), registry, config);
        let acks = Arc::new(AckState::default());
        let stop_reader = Stop::new();
        let stop_writer = CancellationToken::new();
        let (reader_stop, writer_stop) = (stop_reader.clone(), stop_writer.clone());

        let reader = {
            let (proc, acks, events, proc_id) =
                (proc.clone(), acks.clone(), events.clone(), proc_id.clone());
            tokio::spawn(async move {
                // A frame read while gathering a batch that did not belong to it.
                let mut carried = None;
                // Position on the stream of the next envelope (for refusals).
                let mut next_seq: u64 = 0;
                loop {
                    if reader_stop.is_stopped() {
                        break;
                    }
                    // Fast path: a whole frame is buffered, reading it cannot wait.
                    let frame = if let Some(f) = carried.take() {
                        f
                    } else if recv.frame_ready() {
                        recv.next::<MailboxFrame>().await
                    } else {
                        tokio::select! {
                            biased;
                            _ = reader_stop.stopped() => break,
                            f = recv.next::<MailboxFrame>() => f,
                        }
                    };
                    match frame {
                        Ok(Some(MailboxFrame::Envelope(env))) => {
                            // Envelopes already buffered for the same actor go
                            // to its mailbox as one item: one wake, one permit.
                            let mut batch = vec![env];
                            while batch.len() < MAX_BATCH && recv.frame_ready() {
                                match recv.next::<MailboxFrame>().await {
                                    Ok(Some(MailboxFrame::Envelope(e))) if e.to == batch[0].to => {
                                        batch.push(e)
                                    }
                                    other => {
                                        carried = Some(other);
                                        break;
                                    }
                                }
                            }
                            let n = batch.len() as u64;
                            // Refusals go out before the ack that covers them.
                            for (i, u) in proc.deliver_batch(batch).await {
                                proc.refuse(next_seq + i as u64, &u.reason);
                            }
                            next_seq += n;
                            acks.bump_by(n, carried.is_some() || recv.frame_ready());
                        }
                        Ok(Some(MailboxFrame::Undeliverable(u))) => proc.returned(u),
                        Ok(Some(MailboxFrame::Ack { .. })) => {}
                        Ok(Some(MailboxFrame::Refused { .. })) => {
                            recv.stop(close::PROTOCOL);
                            let reason =
                                "protocol violation: the allocator sent a refusal".to_string();
                            let _ = events.send(WorkerToAllocator::ProcFailed { proc_id, reason });
                            break;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if e.is_protocol_violation() {
                                recv.stop(close::PROTOCOL);
                            }
                            let reason = format!("mailbox stream failed: {e}");
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
            tokio::spawn(async move {
                let mut on_sent = |_, _| {};
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
                    let reason = format!("mailbox stream write failed: {e}");
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

        let forwarder = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(f) = outputs.failures.recv() => {
                        let _ = events.send(WorkerToAllocator::ActorFailed { actor_id: f.actor_id, reason: f.reason });
                    }
                    Some(u) = outputs.returned.recv() => {
                        tracing::debug!("returned to {}: {}", u.envelope.from, u.reason);
                    }
                    else => break,
                }
            }
        });

        HostedProc {
            proc,
            stop_reader,
            stop_writer,
            reader,
            writer,
            forwarder,
        }
    }

    /// The proc.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Stops the proc in order: actors' stop hooks, then the stream is flushed and finished.
    ///
    /// Envelopes that arrive after the actors stopped are not acknowledged,
    /// so the allocator returns them to their senders.
    pub async fn stop(self) {
        self.proc.stop_all().await;
        self.stop_reader.stop();
        let _ = self.reader.await;
        self.stop_writer.cancel();
        if tokio::time::timeout(FLUSH_TIMEOUT * 2, self.writer)
            .await
            .is_err()
        {
            tracing::warn!(
                "proc {}: mailbox stream not flushed in time",
                self.proc.id()
            );
        }
        self.forwarder.abort();
    }
}
