//! One admitted worker, as seen from the allocator: its control stream,
//! heartbeats, mailbox streams and the states of its procs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::events::{AllocEvent, ProcState};
use super::link::ProcLink;
use super::Shared;
use crate::heartbeat::{self, HeartbeatOutcome};
use crate::id::ProcId;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, AllocatorToWorker, MailboxOpen, Welcome, WorkerToAllocator};

/// How long a worker has to name the proc on a mailbox stream it opened.
const MAILBOX_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A command from the allocator's API to one worker's session.
#[derive(Debug)]
pub(crate) enum WorkerCommand {
    StartProc(ProcId),
    StopProc(ProcId),
    StopAndExit(i32),
    Exit(i32),
    /// The launched worker process has ended (reaped by the launcher).
    ProcessExited(super::events::ExitReport),
}

/// What the session expects the worker to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Keep running.
    Serve,
    /// Told to stop: `Leaving` should follow within the stop timeout.
    Stopping { until: tokio::time::Instant },
    /// Told to exit at once: the connection will drop.
    Exiting { code: i32 },
}

struct ProcSlot {
    state: ProcState,
    link: Arc<ProcLink>,
    attached: bool,
}

/// The allocator's side of one worker's connection.
pub(crate) struct WorkerSession {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: u32,
    pub(crate) conn: Connection,
    pub(crate) control_send: FramedSend,
    pub(crate) control_recv: FramedRecv,
    pub(crate) commands: mpsc::UnboundedReceiver<WorkerCommand>,
    pub(crate) initial_procs: Vec<ProcId>,
}

/// How the session ended.
struct End {
    failed: bool,
    reason: String,
    close: Option<(quinn::VarInt, String)>,
}

impl End {
    fn failed(reason: impl Into<String>) -> Self {
        End {
            failed: true,
            reason: reason.into(),
            close: None,
        }
    }
}

/// The procs of one worker and their links.
struct Procs {
    shared: Arc<Shared>,
    worker: u32,
    slots: BTreeMap<ProcId, ProcSlot>,
}

impl Procs {
    fn create(&mut self, proc_id: &ProcId) {
        let link = ProcLink::new(
            proc_id.clone(),
            self.shared.config.limits.mailbox_bytes as usize,
        );
        self.shared.router.add(link.clone());
        self.slots.insert(
            proc_id.clone(),
            ProcSlot {
                state: ProcState::Created,
                link,
                attached: false,
            },
        );
        self.emit(proc_id, ProcState::Created);
    }

    fn emit(&self, proc_id: &ProcId, state: ProcState) {
        self.shared.emit(AllocEvent::Proc {
            proc_id: proc_id.clone(),
            worker: self.worker,
            state,
        });
    }

    /// Moves a proc to `state`; a terminal state closes its link (after the
    /// worker's side of the stream is drained, if `drain`).
    fn set(&mut self, proc_id: &ProcId, state: ProcState, drain: Option<Duration>) {
        let Some(slot) = self.slots.get_mut(proc_id) else {
            return;
        };
        if slot.state.is_terminal() || slot.state == state {
            return;
        }
        slot.state = state.clone();
        let link = slot.link.clone();
        self.emit(proc_id, state.clone());
        if let Some(reason) = state.reason() {
            let reason = match &state {
                ProcState::Stopped { .. } => format!("proc {proc_id} stopped: {reason}"),
                _ => format!("proc {proc_id} failed: {reason}"),
            };
            let router = self.shared.router.clone();
            tokio::spawn(async move {
                if let Some(within) = drain {
                    link.drained(within).await;
                }
                link.close(&reason, &router).await;
            });
        }
    }
}

impl WorkerSession {
    /// Serves the worker until its connection ends, then reports its procs.
    pub(crate) async fn run(self) {
        let WorkerSession {
            shared,
            index,
            conn,
            mut control_send,
            mut control_recv,
            mut commands,
            initial_procs,
        } = self;
        let mut procs = Procs {
            shared: shared.clone(),
            worker: index,
            slots: BTreeMap::new(),
        };
        let mut plan = Plan::Serve;
        let max_frame = shared.config.limits.max_frame;
        let drain_time = shared.config.transport.stop_timeout;
        control_send.set_max_frame(max_frame);
        control_recv.set_max_frame(max_frame);
        control_send.set_priority(crate::worker::CONTROL_PRIORITY);
        let (link_failures_tx, mut link_failures) = mpsc::unbounded_channel::<(ProcId, String)>();

        let welcome = AllocatorToWorker::Welcome(Welcome {
            heartbeat: shared.config.heartbeat,
            limits: shared.config.limits,
            stop_timeout: shared.config.transport.stop_timeout,
        });
        let mut end: Option<End> = None;
        if let Err(e) = control_send.send(&welcome).await {
            end = Some(End::failed(format!("cannot send Welcome: {e}")));
        }
        if end.is_none() {
            for proc_id in initial_procs {
                let start = AllocatorToWorker::StartProc {
                    proc_id: proc_id.clone(),
                };
                if let Err(e) = control_send.send(&start).await {
                    end = Some(End::failed(format!("cannot send StartProc: {e}")));
                    break;
                }
                procs.create(&proc_id);
            }
        }

        let heartbeats = heartbeat::run(conn.clone(), shared.config.heartbeat);
        tokio::pin!(heartbeats);
        let mut opening: JoinSet<Result<(ProcId, FramedSend, FramedRecv), String>> = JoinSet::new();

        while end.is_none() {
            let stop_deadline = match plan {
                Plan::Stopping { until } => until,
                _ => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                outcome = &mut heartbeats => {
                    end = Some(match outcome {
                        HeartbeatOutcome::Lost { silent_for } => End {
                            failed: true,
                            reason: "heartbeat lost".into(),
                            close: Some((close::HEARTBEAT_LOST, format!("no heartbeat for {silent_for:?}"))),
                        },
                        HeartbeatOutcome::Closed(e) => connection_ended(&e, plan),
                        HeartbeatOutcome::BadDatagram(e) => violation(format!("invalid heartbeat datagram: {e}")),
                        HeartbeatOutcome::DatagramsUnsupported => violation("worker does not accept datagrams".into()),
                    });
                }
                msg = control_recv.next::<WorkerToAllocator>() => match msg {
                    Ok(Some(WorkerToAllocator::StartedProc { proc_id, agent })) => {
                        if !procs.slots.contains_key(&proc_id) {
                            end = Some(violation(format!("StartedProc for unknown proc {proc_id}")));
                        } else {
                            tracing::debug!("proc {proc_id} running on {agent}");
                            procs.set(&proc_id, ProcState::Running, None);
                        }
                    }
                    Ok(Some(WorkerToAllocator::ProcFailed { proc_id, reason })) => {
                        procs.set(&proc_id, ProcState::Failed { reason }, None);
                    }
                    Ok(Some(WorkerToAllocator::ProcStopped { proc_id, reason })) => {
                        procs.set(&proc_id, ProcState::Stopped { reason }, Some(drain_time));
                    }
                    Ok(Some(WorkerToAllocator::ActorFailed { actor_id, reason })) => {
                        if procs.slots.contains_key(&actor_id.proc_id) {
                            shared.emit(AllocEvent::ActorFailed { actor_id, reason });
                        } else {
                            end = Some(violation(format!("ActorFailed for {actor_id}, not on this worker")));
                        }
                    }
                    Ok(Some(WorkerToAllocator::Leaving { code, reason })) => {
                        // Read what the worker flushed on its mailbox streams before closing.
                        let drains = procs.slots.values().filter(|s| s.attached).map(|s| s.link.drained(drain_time));
                        futures::future::join_all(drains).await;
                        end = Some(End {
                            failed: false,
                            reason: format!("{reason} (exit code {code})"),
                            close: Some((close::NORMAL, "goodbye".into())),
                        });
                    }
                    Ok(Some(WorkerToAllocator::Hello(_))) => end = Some(violation("second Hello".into())),
                    Ok(None) => end = Some(connection_ended(&conn.closed().await, plan)),
                    Err(StreamError::Read(quinn::ReadError::ConnectionLost(e))) => end = Some(connection_ended(&e, plan)),
                    Err(e) if e.is_protocol_violation() => end = Some(violation(format!("invalid control frame: {e}"))),
                    Err(e) => end = Some(End::failed(format!("control stream failed: {e}"))),
                },
                Some((proc_id, reason)) = link_failures.recv() => {
                    tracing::warn!("worker {index}: proc {proc_id}: {reason}");
                    procs.set(&proc_id, ProcState::Failed { reason }, None);
                    let _ = control_send.send(&AllocatorToWorker::StopProc { proc_id }).await;
                }
                cmd = commands.recv() => match cmd {
                    Some(WorkerCommand::StartProc(proc_id)) => {
                        match control_send.send(&AllocatorToWorker::StartProc { proc_id: proc_id.clone() }).await {
                            Ok(()) => procs.create(&proc_id),
                            Err(e) => end = Some(End::failed(format!("cannot send StartProc: {e}"))),
                        }
                    }
                    Some(WorkerCommand::StopProc(proc_id)) => {
                        if let Err(e) = control_send.send(&AllocatorToWorker::StopProc { proc_id }).await {
                            end = Some(End::failed(format!("cannot send StopProc: {e}")));
                        }
                    }
                    Some(WorkerCommand::StopAndExit(code)) => {
                        if let Err(e) = control_send.send(&AllocatorToWorker::StopAndExit { code }).await {
                            end = Some(End::failed(format!("cannot send StopAndExit: {e}")));
                        } else {
                            let until = tokio::time::Instant::now() + shared.config.transport.stop_timeout;
                            plan = Plan::Stopping { until };
                        }
                    }
                    Some(WorkerCommand::Exit(code)) => {
                        if let Err(e) = control_send.send(&AllocatorToWorker::Exit { code }).await {
                            end = Some(End::failed(format!("cannot send Exit: {e}")));
                        } else {
                            plan = Plan::Exiting { code };
                        }
                    }
                    Some(WorkerCommand::ProcessExited(status)) => {
                        end = Some(match plan {
                            Plan::Exiting { code } => End {
                                failed: false,
                                reason: format!("exited on command (code {code})"),
                                close: None,
                            },
                            _ if status == super::events::ExitReport::Code(crate::exit_code::HEARTBEAT_LOST) => {
                                End::failed(format!("heartbeat lost (the worker {status})"))
                            }
                            _ => End::failed(format!("worker process {status}")),
                        });
                    }
                    None => {
                        end = Some(End {
                            failed: false,
                            reason: "allocator shut down".into(),
                            close: Some((close::SHUTDOWN, "allocator shut down".into())),
                        });
                    }
                },
                accepted = conn.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        opening.spawn(read_mailbox_open(send, recv, max_frame));
                    }
                    Err(e) => end = Some(connection_ended(&e, plan)),
                },
                Some(opened) = opening.join_next(), if !opening.is_empty() => match opened {
                    Ok(Ok((proc_id, mut send, mut recv))) => match procs.slots.get_mut(&proc_id) {
                        Some(slot) if !slot.attached && !slot.state.is_terminal() => {
                            slot.attached = true;
                            slot.link.attach(send, recv, shared.router.clone(), link_failures_tx.clone());
                        }
                        other => {
                            let why = match other {
                                Some(_) => format!("second mailbox stream for proc {proc_id}"),
                                None => format!("mailbox stream for proc {proc_id}, which this worker does not host"),
                            };
                            send.reset(close::PROTOCOL);
                            recv.stop(close::PROTOCOL);
                            reject_stream(&shared, index, why);
                        }
                    },
                    Ok(Err(why)) => reject_stream(&shared, index, why),
                    Err(e) => tracing::error!("mailbox open task failed: {e}"),
                },
                _ = tokio::time::sleep_until(stop_deadline), if matches!(plan, Plan::Stopping { .. }) => {
                    end = Some(End {
                        failed: true,
                        reason: format!("did not stop within {:?}", shared.config.transport.stop_timeout),
                        close: Some((close::SHUTDOWN, "stop timeout".into())),
                    });
                }
            }
        }
        let end = end.unwrap_or_else(|| End::failed("session ended"));
        if let Some((code, reason)) = &end.close {
            conn.close(*code, &close::reason_bytes(reason));
        }
        let ids: Vec<ProcId> = procs.slots.keys().cloned().collect();
        for proc_id in ids {
            let state = if end.failed {
                ProcState::Failed {
                    reason: end.reason.clone(),
                }
            } else {
                ProcState::Stopped {
                    reason: end.reason.clone(),
                }
            };
            procs.set(&proc_id, state, None);
        }
        shared.worker_left(index, end.failed, end.reason);
    }
}

/// A mailbox stream was refused; the worker's other procs are not affected.
fn reject_stream(shared: &Shared, worker: u32, reason: String) {
    tracing::warn!("worker {worker}: mailbox stream rejected: {reason}");
    shared.emit(AllocEvent::MailboxRejected { worker, reason });
}

/// A protocol violation by the worker: close with the reason, fail its procs.
fn violation(why: String) -> End {
    End {
        failed: true,
        reason: format!("protocol violation: {why}"),
        close: Some((close::PROTOCOL, why)),
    }
}

/// The end for a connection that dropped, given what we expected.
fn connection_ended(err: &quinn::ConnectionError, plan: Plan) -> End {
    match plan {
        Plan::Exiting { code } => End {
            failed: false,
            reason: format!("exited on command (code {code})"),
            close: None,
        },
        _ => End::failed(format!("connection lost: {err}")),
    }
}

/// Reads the first frame of a mailbox stream the worker opened.
///
/// On failure the stream is abandoned with the PROTOCOL code.
async fn read_mailbox_open(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame: u32,
) -> Result<(ProcId, FramedSend, FramedRecv), String> {
    let mut recv = FramedRecv::new(recv, max_frame);
    let mut send = FramedSend::new(send, max_frame);
    let why = match tokio::time::timeout(MAILBOX_OPEN_TIMEOUT, recv.next::<MailboxOpen>()).await {
        Ok(Ok(Some(open))) => return Ok((open.proc_id, send, recv)),
        Ok(Ok(None)) => "mailbox stream ended before naming its proc".to_string(),
        Ok(Err(e)) => format!("mailbox stream does not start with a proc name: {e}"),
        Err(_) => format!("mailbox stream named no proc within {MAILBOX_OPEN_TIMEOUT:?}"),
    };
    send.reset(close::PROTOCOL);
    recv.stop(close::PROTOCOL);
    Err(why)
}
