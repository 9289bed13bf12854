//! One admitted worker, as seen from the allocator: the thin async driver of
//! its [`Session`]. It feeds the session what arrives (control frames,
//! commands, mailbox streams, link failures, the heartbeat verdict) and
//! carries out the actions it answers with (send frames, create and attach
//! links, report states, close).
//!
//! Heartbeats run in a task of their own, so nothing the session waits for
//! (sending a frame to a slow worker, draining streams) delays them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::events::{AllocEvent, ProcState};
use super::link::{LinkConfig, ProcLink, Switch};
use super::session::{Action, End, Input, Session, WorkerCommand};
use super::Shared;
use crate::heartbeat::{self, HeartbeatOutcome};
use crate::id::ProcId;
use crate::reason::{FailureReason, ReturnReason};
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, AllocatorToWorker, MailboxOpen, StreamOpen, Welcome, WorkerToAllocator};
use tracing::Instrument;

/// How long a worker has to name the proc on a mailbox stream it opened.
const MAILBOX_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest first frame of a mailbox stream (it only names a proc).
const MAX_MAILBOX_OPEN_FRAME: u32 = 1024;

/// The allocator's side of one worker's connection.
pub(crate) struct WorkerSession {
    pub(crate) shared: Arc<Shared>,
    pub(crate) index: u32,
    /// The host the worker named in its Hello (for its log lines).
    pub(crate) host: String,
    pub(crate) conn: Connection,
    pub(crate) control_send: FramedSend,
    pub(crate) control_recv: FramedRecv,
    pub(crate) commands: mpsc::UnboundedReceiver<WorkerCommand>,
    pub(crate) initial_procs: Vec<ProcId>,
}

/// A mailbox stream that named its proc, waiting for the session's verdict.
type OpenedStream = (FramedSend, FramedRecv);

/// A stream the worker opened, once its first frame said what it is for.
enum Opened {
    Mailbox(ProcId, FramedSend, FramedRecv),
    Logs(FramedSend, FramedRecv),
}

impl WorkerSession {
    /// Serves the worker until its connection ends, then reports its procs;
    /// everything runs in the span `worker{index, host}`.
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("worker", index = self.index, host = %self.host);
        self.serve().instrument(span).await
    }

    async fn serve(self) {
        let WorkerSession {
            shared,
            index,
            host,
            conn,
            mut control_send,
            mut control_recv,
            mut commands,
            initial_procs,
        } = self;
        let config = &shared.config;
        let max_frame = config.limits.max_frame;
        control_send.set_max_frame(max_frame);
        control_recv.set_max_frame(max_frame);
        control_send.set_priority(crate::transport::priority::CONTROL);
        let (link_failures_tx, mut link_failures) =
            mpsc::unbounded_channel::<(ProcId, FailureReason)>();
        let link_config = LinkConfig {
            budget_bytes: config.limits.mailbox_bytes as usize,
            stall_timeout: config.stall_timeout,
            remote_proc_requests: config.remote_proc_requests,
        };
        let welcome = AllocatorToWorker::Welcome(Welcome {
            heartbeat: config.heartbeat,
            limits: config.limits,
            stop_timeout: config.transport.stop_timeout,
        });
        let (mut session, actions) = Session::start(
            welcome,
            initial_procs,
            config.transport.stop_timeout,
            Instant::now(),
        );
        let mut pending: VecDeque<Action> = actions.into();
        let mut links: HashMap<ProcId, Arc<ProcLink>> = HashMap::new();
        let mut opened: Option<OpenedStream> = None;
        let mut opening: JoinSet<Result<Opened, String>> = JoinSet::new();
        // The worker's log stream, read while the session lasts (at most one).
        let mut log_stream: Option<AbortOnDropHandle<()>> = None;
        let mut heartbeats = AbortOnDropHandle::new(tokio::spawn({
            let (conn, rtt) = (conn.clone(), shared.rtt_cell(index));
            let missed = shared.beats_missed_cell(index);
            let heartbeat = config.heartbeat;
            async move {
                let peer = format!("worker {index}");
                heartbeat::run_measured(conn, heartbeat, rtt, missed, &peer).await
            }
        }));
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let end: End = 'session: loop {
            while let Some(action) = pending.pop_front() {
                let (action, must) = match action {
                    Action::TrySend(frame) => (Action::Send(frame), false),
                    other => (other, true),
                };
                match action {
                    Action::Send(frame) | Action::TrySend(frame) => {
                        // A worker that stops reading its control stream must
                        // not keep the heartbeat verdict from being heard.
                        let sent = tokio::select! {
                            r = control_send.send(&frame) => Ok(r),
                            outcome = &mut heartbeats => Err(heartbeat_input(outcome)),
                        };
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) if must => {
                                let what = format!("cannot send {}: {e}", frame_name(&frame));
                                pending =
                                    session.on(Input::SendFailed(what), Instant::now()).into();
                            }
                            Ok(Err(_)) => {}
                            Err(input) => pending = session.on(input, Instant::now()).into(),
                        }
                    }
                    Action::CreateLink(proc_id) => {
                        let link =
                            ProcLink::new(proc_id.clone(), link_config, link_failures_tx.clone());
                        shared.router.add(link.clone());
                        links.insert(proc_id.clone(), link);
                        crate::transport::endpoint::fit_receive_window(
                            &conn,
                            links.len(),
                            &config.link,
                        );
                        shared.emit(AllocEvent::Proc {
                            proc_id,
                            worker: index,
                            state: ProcState::Created,
                        });
                    }
                    Action::Attach(proc_id) => {
                        if let (Some((send, recv)), Some(link)) =
                            (opened.take(), links.get(&proc_id))
                        {
                            let switch: Arc<dyn Switch> = shared.router.clone();
                            // The link's tasks run in the proc stream's span.
                            let span = tracing::info_span!("proc_stream", worker = index, proc_id = %proc_id);
                            let _in_stream = span.enter();
                            link.attach(send, recv, switch);
                        }
                    }
                    Action::RejectStream(reason) => {
                        if let Some((mut send, mut recv)) = opened.take() {
                            send.reset(close::PROTOCOL);
                            recv.stop(close::PROTOCOL);
                        }
                        shared.stream_rejected(index, reason);
                    }
                    Action::SetState {
                        proc_id,
                        state,
                        drain,
                    } => {
                        if let (Some(end), Some(link)) = (state.end(), links.get(&proc_id)) {
                            let reason = ReturnReason::ProcEnded {
                                proc_id: proc_id.clone(),
                                end,
                            };
                            let (link, router, proc_id) =
                                (link.clone(), shared.router.clone(), proc_id.clone());
                            tokio::spawn(async move {
                                if let Some(within) = drain {
                                    link.drained(within).await;
                                }
                                let back = link.close(&reason).await;
                                router.link_closed(&proc_id, &reason, back);
                            });
                        }
                        shared.emit(AllocEvent::Proc {
                            proc_id,
                            worker: index,
                            state,
                        });
                    }
                    Action::ActorFailed { actor_id, reason } => {
                        shared.emit(AllocEvent::ActorFailed { actor_id, reason });
                    }
                    Action::DrainAll { procs, within } => {
                        let drains = procs
                            .iter()
                            .filter_map(|p| links.get(p))
                            .map(|link| link.drained(within));
                        futures::future::join_all(drains).await;
                    }
                    Action::End(end) => break 'session end,
                }
            }
            if stop_deadline.is_none() && session.is_stopping() {
                stop_deadline = Some(tokio::time::Instant::now() + config.transport.stop_timeout);
            }
            let input = tokio::select! {
                biased;
                outcome = &mut heartbeats => heartbeat_input(outcome),
                msg = control_recv.next::<WorkerToAllocator>() => match msg {
                    Ok(Some(frame)) => Input::Frame(frame),
                    Ok(None) => Input::ControlBroken {
                        violation: true,
                        detail: "control stream finished before Leaving".into(),
                    },
                    Err(StreamError::Read(quinn::ReadError::ConnectionLost(e))) => Input::ConnectionLost(e.to_string()),
                    Err(e) => Input::ControlBroken { violation: e.is_protocol_violation(), detail: e.to_string() },
                },
                Some((proc_id, reason)) = link_failures.recv() => Input::LinkFailed(proc_id, reason),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => Input::Command(cmd),
                    None => Input::CommandsClosed,
                },
                accepted = conn.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        opening.spawn(read_stream_open(send, recv, max_frame));
                        continue;
                    }
                    Err(e) => Input::ConnectionLost(e.to_string()),
                },
                Some(result) = opening.join_next(), if !opening.is_empty() => match result {
                    Ok(Ok(Opened::Mailbox(proc_id, send, recv))) => {
                        opened = Some((send, recv));
                        Input::StreamOpened(proc_id)
                    }
                    Ok(Ok(Opened::Logs(mut send, mut recv))) => {
                        if log_stream.is_some() {
                            send.reset(close::PROTOCOL);
                            recv.stop(close::PROTOCOL);
                            shared.stream_rejected(index, "second log stream".into());
                        } else {
                            let task = super::logs::serve_log_stream(shared.clone(), index, host.clone(), send, recv);
                            log_stream = Some(AbortOnDropHandle::new(tokio::spawn(task.in_current_span())));
                        }
                        continue;
                    }
                    Ok(Err(why)) => Input::StreamBroken(why),
                    Err(e) => {
                        tracing::error!("mailbox open task failed: {e}");
                        continue;
                    }
                },
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or_else(far_future)), if stop_deadline.is_some() => Input::StopDeadline,
            };
            pending.extend(session.on(input, Instant::now()));
        };
        if let Some((code, reason)) = &end.close {
            conn.close(*code, &close::reason_bytes(reason));
        }
        let suppressed = session.suppressed_actor_failures();
        if suppressed > 0 {
            tracing::warn!(
                "worker {index}: {suppressed} actor failures were not reported (rate limit)"
            );
        }
        shared.worker_left(index, end.end);
    }
}

/// What the heartbeat task's verdict means for the session.
fn heartbeat_input(outcome: Result<HeartbeatOutcome, tokio::task::JoinError>) -> Input {
    match outcome {
        Ok(HeartbeatOutcome::Lost { silent_for }) => Input::HeartbeatLost { silent_for },
        Ok(HeartbeatOutcome::Closed(e)) => Input::ConnectionLost(e.to_string()),
        Ok(HeartbeatOutcome::BadDatagram(e)) => {
            Input::BadDatagrams(format!("invalid heartbeat datagram: {e}"))
        }
        Ok(HeartbeatOutcome::DatagramsUnsupported) => {
            Input::BadDatagrams("worker does not accept datagrams".into())
        }
        Err(e) => Input::ConnectionLost(format!("heartbeat task ended: {e}")),
    }
}

/// An instant no deadline reaches (for a disabled `sleep_until` arm).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// The name of a control frame, for error messages.
fn frame_name(frame: &AllocatorToWorker) -> &'static str {
    match frame {
        AllocatorToWorker::Welcome(_) => "Welcome",
        AllocatorToWorker::StartProc { .. } => "StartProc",
        AllocatorToWorker::StopAndExit { .. } => "StopAndExit",
        AllocatorToWorker::StopProc { .. } => "StopProc",
        AllocatorToWorker::Exit { .. } => "Exit",
    }
}

/// Reads the first frame of a stream the worker opened: a mailbox stream
/// names its proc, the log stream says it is one.
///
/// The frame only names a proc, so it may be at most
/// [`MAX_MAILBOX_OPEN_FRAME`] bytes: a worker opening many streams holds
/// little memory each. On failure the stream is abandoned with the PROTOCOL
/// code.
async fn read_stream_open(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame: u32,
) -> Result<Opened, String> {
    let mut recv = FramedRecv::new(recv, MAX_MAILBOX_OPEN_FRAME);
    let mut send = FramedSend::new(send, max_frame);
    let why = match tokio::time::timeout(MAILBOX_OPEN_TIMEOUT, recv.next::<StreamOpen>()).await {
        Ok(Ok(Some(StreamOpen::Mailbox(MailboxOpen { proc_id })))) => {
            recv.set_max_frame(max_frame);
            return Ok(Opened::Mailbox(proc_id, send, recv));
        }
        Ok(Ok(Some(StreamOpen::Logs))) => return Ok(Opened::Logs(send, recv)),
        Ok(Ok(None)) => "mailbox stream ended before naming its proc".to_string(),
        Ok(Err(e)) => format!("mailbox stream does not start with a proc name: {e}"),
        Err(_) => format!("mailbox stream named no proc within {MAILBOX_OPEN_TIMEOUT:?}"),
    };
    send.reset(close::PROTOCOL);
    recv.stop(close::PROTOCOL);
    Err(why)
}
