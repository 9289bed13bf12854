//! One admitted worker, as seen from the allocator: its control stream,
//! heartbeats, mailbox streams and the states of its procs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::events::{AllocEvent, ProcState};
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
    StopAndExit(i32),
    Exit(i32),
}

/// What the session expects the worker to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Keep running.
    Serve,
    /// Told to stop: `Leaving` should follow within the stop timeout.
    Stopping {
        code: i32,
        until: tokio::time::Instant,
    },
    /// Told to exit at once: the connection will drop.
    Exiting { code: i32 },
}

struct ProcSlot {
    state: ProcState,
    mailbox: Option<(FramedSend, FramedRecv)>,
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
        let mut procs: BTreeMap<ProcId, ProcSlot> = BTreeMap::new();
        let mut plan = Plan::Serve;
        let max_frame = shared.config.limits.max_frame;
        control_send.set_max_frame(max_frame);
        control_recv.set_max_frame(max_frame);
        control_send.set_priority(crate::worker::CONTROL_PRIORITY);

        let emit = |proc_id: &ProcId, state: ProcState| {
            shared.emit(AllocEvent::Proc {
                proc_id: proc_id.clone(),
                worker: index,
                state,
            })
        };
        let set_state =
            |procs: &mut BTreeMap<ProcId, ProcSlot>, proc_id: &ProcId, state: ProcState| -> bool {
                match procs.get_mut(proc_id) {
                    Some(slot) if !slot.state.is_terminal() && slot.state != state => {
                        slot.state = state.clone();
                        emit(proc_id, state);
                        true
                    }
                    _ => false,
                }
            };

        let welcome = AllocatorToWorker::Welcome(Welcome {
            heartbeat: shared.config.heartbeat,
            limits: shared.config.limits,
        });
        let mut end: Option<End> = None;
        if let Err(e) = control_send.send(&welcome).await {
            end = Some(End::failed(format!("cannot send Welcome: {e}")));
        }
        if end.is_none() {
            for proc_id in initial_procs {
                if let Err(e) = control_send
                    .send(&AllocatorToWorker::StartProc {
                        proc_id: proc_id.clone(),
                    })
                    .await
                {
                    end = Some(End::failed(format!("cannot send StartProc: {e}")));
                    break;
                }
                procs.insert(
                    proc_id.clone(),
                    ProcSlot {
                        state: ProcState::Created,
                        mailbox: None,
                    },
                );
                emit(&proc_id, ProcState::Created);
            }
        }

        let heartbeats = heartbeat::run(conn.clone(), shared.config.heartbeat);
        tokio::pin!(heartbeats);
        let mut opening: JoinSet<Result<(ProcId, FramedSend, FramedRecv), String>> = JoinSet::new();

        while end.is_none() {
            let stop_deadline = match plan {
                Plan::Stopping { until, .. } => until,
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
                        if !procs.contains_key(&proc_id) {
                            end = Some(violation(format!("StartedProc for unknown proc {proc_id}")));
                        } else {
                            tracing::debug!("proc {proc_id} running on {agent}");
                            set_state(&mut procs, &proc_id, ProcState::Running);
                        }
                    }
                    Ok(Some(WorkerToAllocator::ProcFailed { proc_id, reason })) => {
                        set_state(&mut procs, &proc_id, ProcState::Failed { reason });
                    }
                    Ok(Some(WorkerToAllocator::ProcStopped { proc_id, reason })) => {
                        set_state(&mut procs, &proc_id, ProcState::Stopped { reason });
                    }
                    Ok(Some(WorkerToAllocator::Leaving { code, reason })) => {
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
                cmd = commands.recv() => match cmd {
                    Some(WorkerCommand::StartProc(proc_id)) => {
                        match control_send.send(&AllocatorToWorker::StartProc { proc_id: proc_id.clone() }).await {
                            Ok(()) => {
                                procs.insert(proc_id.clone(), ProcSlot { state: ProcState::Created, mailbox: None });
                                emit(&proc_id, ProcState::Created);
                            }
                            Err(e) => end = Some(End::failed(format!("cannot send StartProc: {e}"))),
                        }
                    }
                    Some(WorkerCommand::StopAndExit(code)) => {
                        if let Err(e) = control_send.send(&AllocatorToWorker::StopAndExit { code }).await {
                            end = Some(End::failed(format!("cannot send StopAndExit: {e}")));
                        } else {
                            let until = tokio::time::Instant::now() + shared.config.transport.stop_timeout;
                            plan = Plan::Stopping { code, until };
                        }
                    }
                    Some(WorkerCommand::Exit(code)) => {
                        if let Err(e) = control_send.send(&AllocatorToWorker::Exit { code }).await {
                            end = Some(End::failed(format!("cannot send Exit: {e}")));
                        } else {
                            plan = Plan::Exiting { code };
                        }
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
                    Ok(Ok((proc_id, send, recv))) => match procs.get_mut(&proc_id) {
                        Some(slot) if slot.mailbox.is_none() && !slot.state.is_terminal() => {
                            slot.mailbox = Some((send, recv));
                        }
                        Some(_) => end = Some(violation(format!("second mailbox stream for proc {proc_id}"))),
                        None => end = Some(violation(format!("mailbox stream for proc {proc_id}, which this worker does not host"))),
                    },
                    Ok(Err(why)) => end = Some(violation(why)),
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
        for (proc_id, slot) in procs.iter_mut() {
            if slot.state.is_terminal() {
                continue;
            }
            let state = if end.failed {
                ProcState::Failed {
                    reason: end.reason.clone(),
                }
            } else {
                ProcState::Stopped {
                    reason: end.reason.clone(),
                }
            };
            slot.state = state.clone();
            emit(proc_id, state);
        }
        shared.worker_left(index, end.failed, end.reason);
    }
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
async fn read_mailbox_open(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame: u32,
) -> Result<(ProcId, FramedSend, FramedRecv), String> {
    let mut recv = FramedRecv::new(recv, max_frame);
    match tokio::time::timeout(MAILBOX_OPEN_TIMEOUT, recv.next::<MailboxOpen>()).await {
        Ok(Ok(Some(open))) => Ok((open.proc_id, FramedSend::new(send, max_frame), recv)),
        Ok(Ok(None)) => Err("mailbox stream ended before naming its proc".into()),
        Ok(Err(e)) => Err(format!(
            "mailbox stream does not start with a proc name: {e}"
        )),
        Err(_) => Err(format!(
            "mailbox stream named no proc within {MAILBOX_OPEN_TIMEOUT:?}"
        )),
    }
}
