//! One admitted worker's session, as a state machine without I/O.
//!
//! [`Session::on`] takes one thing that happened (a control frame from the
//! worker, a command from the allocator's API, a mailbox stream that named
//! its proc, a link failure, the heartbeat verdict, the connection's end...)
//! and answers with the [`Action`]s to carry out, in order. It decides which
//! frame is legal when and what each leads to; `connection.rs` only moves
//! bytes, time and tasks. Once it has answered with [`Action::End`] it is
//! finished and answers nothing more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quinn::VarInt;

use super::events::ProcState;
use crate::id::{ActorId, ProcId};
use crate::reason::{
    bounded_text, ActorFailure, Bounded, ExitReport, FailureReason, ProcEnd, StopReason,
    MAX_PEER_TEXT,
};
use crate::wire::{close, AllocatorToWorker, WorkerToAllocator};

/// Most actor failures of one worker reported per second; more are counted.
const ACTOR_FAILURES_PER_SECOND: u32 = 100;

/// A command from the allocator's API to one worker's session.
#[derive(Debug)]
pub(crate) enum WorkerCommand {
    StartProc(ProcId),
    StopProc(ProcId),
    StopAndExit(i32),
    Exit(i32),
    /// The launched worker process has ended (reaped by the launcher).
    ProcessExited(ExitReport),
    /// The worker's certificate (described by the text) has been revoked:
    /// disconnect it and fail its procs.
    Revoked(String),
}

/// Something that happened to the session.
#[derive(Debug)]
pub(crate) enum Input {
    /// The worker sent a control frame.
    Frame(WorkerToAllocator),
    /// The allocator's API asked for something.
    Command(WorkerCommand),
    /// Every handle to the session's command channel is gone: the allocator shut down.
    CommandsClosed,
    /// The worker opened a mailbox stream that names `proc_id`.
    StreamOpened(ProcId),
    /// A mailbox stream could not be opened properly (the reason says why).
    StreamBroken(String),
    /// A proc's link failed: protocol violation on its stream, stall, returns not read...
    LinkFailed(ProcId, FailureReason),
    /// No sign of life from the worker for `silent_for`.
    HeartbeatLost { silent_for: Duration },
    /// The worker sent a datagram that is not a heartbeat, or refuses datagrams.
    BadDatagrams(String),
    /// The connection ended (quinn's reason).
    ConnectionLost(String),
    /// The control stream broke: `violation` if the worker sent something
    /// that is not a valid frame, else the transport failed.
    ControlBroken { violation: bool, detail: String },
    /// A control frame could not be sent (`what` failed).
    SendFailed(String),
    /// The worker did not leave within the stop timeout after `StopAndExit`.
    StopDeadline,
}

/// How the session ended, and how to close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct End {
    /// How, and why: a failure ends the worker's procs as failed.
    pub(crate) end: ProcEnd,
    /// The close code and reason to send, if the connection is to be closed.
    pub(crate) close: Option<(VarInt, String)>,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a control frame; a failure ends the session (feed [`Input::SendFailed`]).
    Send(AllocatorToWorker),
    /// Send a control frame; a failure is ignored (the session ends anyway soon).
    TrySend(AllocatorToWorker),
    /// Create the link of a new proc (state `Created`).
    CreateLink(ProcId),
    /// Attach the opened stream to this proc's link.
    Attach(ProcId),
    /// Refuse the opened stream (reset it) and report why.
    RejectStream(String),
    /// A proc changed state: report it; a terminal state closes its link,
    /// after the worker's side of the stream is drained if `drain` is set.
    SetState {
        proc_id: ProcId,
        state: ProcState,
        drain: Option<Duration>,
    },
    /// Report an actor failure of this worker.
    ActorFailed {
        actor_id: ActorId,
        reason: ActorFailure,
    },
    /// Wait (up to `within`) until the streams of these procs are drained.
    DrainAll {
        procs: Vec<ProcId>,
        within: Duration,
    },
    /// The session is over: close the connection as said, report the worker gone.
    End(End),
}

/// What the session expects the worker to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Keep running.
    Serve,
    /// Told to stop: `Leaving` should follow within the stop timeout.
    Stopping,
    /// Told to exit at once: the connection will drop.
    Exiting { code: i32 },
}

#[derive(Debug)]
struct ProcSlot {
    state: ProcState,
    attached: bool,
}

/// The session's state.
#[derive(Debug)]
pub(crate) struct Session {
    plan: Plan,
    procs: BTreeMap<ProcId, ProcSlot>,
    /// How long a stopping proc's stream may take to drain.
    drain: Duration,
    ended: bool,
    /// Actor failures reported in the current one-second window, and when it began.
    failures_window: (Instant, u32),
    /// Actor failures not reported since the last one that was.
    failures_suppressed: u64,
}

impl Session {
    /// A session that is about to welcome its worker and start `procs` on it.
    ///
    /// Returns the session and the actions that open it: `Welcome`, then a
    /// `StartProc` and a link per proc.
    pub(crate) fn start(
        welcome: AllocatorToWorker,
        procs: Vec<ProcId>,
        drain: Duration,
        now: Instant,
    ) -> (Session, Vec<Action>) {
        let mut session = Session {
            plan: Plan::Serve,
            procs: BTreeMap::new(),
            drain,
            ended: false,
            failures_window: (now, 0),
            failures_suppressed: 0,
        };
        let mut actions = vec![Action::Send(welcome)];
        for proc_id in procs {
            actions.extend(session.start_proc(proc_id));
        }
        (session, actions)
    }

    /// Whether the worker was told to stop and has not left yet: the driver
    /// then feeds [`Input::StopDeadline`] when the stop timeout passes.
    pub(crate) fn is_stopping(&self) -> bool {
        self.plan == Plan::Stopping
    }

    /// Whether the session is over.
    #[cfg(test)]
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Actor failures of this worker that were not reported (rate limit).
    pub(crate) fn suppressed_actor_failures(&self) -> u64 {
        self.failures_suppressed
    }

    /// Handles `input` at `now`; returns the actions to carry out in order.
    pub(crate) fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if self.ended {
            return Vec::new();
        }
        match input {
            Input::Frame(frame) => self.on_frame(frame, now),
            Input::Command(cmd) => self.on_command(cmd),
            Input::CommandsClosed => self.end(End {
                end: ProcEnd::Stopped(StopReason::AllocatorShutDown),
                close: Some((close::SHUTDOWN, "allocator shut down".into())),
            }),
            Input::StreamOpened(proc_id) => match self.procs.get_mut(&proc_id) {
                Some(slot) if !slot.attached && !slot.state.is_terminal() => {
                    slot.attached = true;
                    vec![Action::Attach(proc_id)]
                }
                Some(slot) if slot.attached => vec![Action::RejectStream(format!(
                    "second mailbox stream for proc {proc_id}"
                ))],
                Some(_) => vec![Action::RejectStream(format!(
                    "mailbox stream for proc {proc_id}, which has ended"
                ))],
                None => vec![Action::RejectStream(format!(
                    "mailbox stream for proc {proc_id}, which this worker does not host"
                ))],
            },
            Input::StreamBroken(why) => vec![Action::RejectStream(why)],
            Input::LinkFailed(proc_id, reason) => {
                let mut actions = self.set(&proc_id, ProcState::Failed { reason }, None);
                if !actions.is_empty() {
                    actions.push(Action::TrySend(AllocatorToWorker::StopProc { proc_id }));
                }
                actions
            }
            Input::HeartbeatLost { silent_for } => self.end(End {
                end: ProcEnd::Failed(FailureReason::HeartbeatLost),
                close: Some((
                    close::HEARTBEAT_LOST,
                    format!("no heartbeat for {silent_for:?}"),
                )),
            }),
            Input::BadDatagrams(why) => self.end(violation(why)),
            Input::ConnectionLost(err) => {
                let end = self.connection_ended(&err);
                self.end(end)
            }
            Input::ControlBroken {
                violation: true,
                detail,
            } => self.end(violation(format!("invalid control frame: {detail}"))),
            Input::ControlBroken {
                violation: false,
                detail,
            } => self.end(End::failed(FailureReason::ControlStream(detail))),
            Input::SendFailed(what) => self.end(End::failed(FailureReason::SendFailed(what))),
            Input::StopDeadline => self.end(End {
                end: ProcEnd::Failed(FailureReason::StopTimeout),
                close: Some((close::SHUTDOWN, "stop timeout".into())),
            }),
        }
    }

    fn on_frame(&mut self, frame: WorkerToAllocator, now: Instant) -> Vec<Action> {
        match frame {
            WorkerToAllocator::StartedProc { proc_id, .. } => {
                if !self.procs.contains_key(&proc_id) {
                    return self.end(violation(format!("StartedProc for unknown proc {proc_id}")));
                }
                self.set(&proc_id, ProcState::Running, None)
            }
            WorkerToAllocator::ProcFailed { proc_id, reason } => {
                let reason = reason.bounded();
                self.set(&proc_id, ProcState::Failed { reason }, None)
            }
            WorkerToAllocator::ProcStopped { proc_id, reason } => {
                let reason = reason.bounded();
                let drain = Some(self.drain);
                self.set(&proc_id, ProcState::Stopped { reason }, drain)
            }
            WorkerToAllocator::ActorFailed { actor_id, reason } => {
                if !self.procs.contains_key(&actor_id.proc_id) {
                    return self.end(violation(format!(
                        "ActorFailed for {actor_id}, not on this worker"
                    )));
                }
                if !self.admit_actor_failure(now) {
                    return Vec::new();
                }
                let reason = reason.bounded();
                vec![Action::ActorFailed { actor_id, reason }]
            }
            WorkerToAllocator::Leaving { code, reason } => {
                let reason = bounded_text(&reason, MAX_PEER_TEXT);
                // Read what the worker flushed on its mailbox streams before closing.
                let procs = self
                    .procs
                    .iter()
                    .filter(|(_, slot)| slot.attached)
                    .map(|(p, _)| p.clone())
                    .collect();
                let mut actions = vec![Action::DrainAll {
                    procs,
                    within: self.drain,
                }];
                actions.extend(self.end(End {
                    end: ProcEnd::Stopped(StopReason::WorkerLeft { code, reason }),
                    close: Some((close::NORMAL, "goodbye".into())),
                }));
                actions
            }
            WorkerToAllocator::Hello(_) => self.end(violation("second Hello".into())),
        }
    }

    fn on_command(&mut self, cmd: WorkerCommand) -> Vec<Action> {
        match cmd {
            WorkerCommand::StartProc(proc_id) => self.start_proc(proc_id),
            WorkerCommand::StopProc(proc_id) => {
                vec![Action::Send(AllocatorToWorker::StopProc { proc_id })]
            }
            WorkerCommand::StopAndExit(code) => {
                if self.plan == Plan::Serve {
                    self.plan = Plan::Stopping;
                }
                vec![Action::Send(AllocatorToWorker::StopAndExit { code })]
            }
            WorkerCommand::Exit(code) => {
                self.plan = Plan::Exiting { code };
                vec![Action::Send(AllocatorToWorker::Exit { code })]
            }
            WorkerCommand::Revoked(cert) => self.end(End {
                close: Some((close::REVOKED, format!("certificate revoked: {cert}"))),
                end: ProcEnd::Failed(FailureReason::CertificateRevoked(cert)),
            }),
            WorkerCommand::ProcessExited(status) => {
                let end = match self.plan {
                    Plan::Exiting { code } => End {
                        end: ProcEnd::Stopped(StopReason::ExitedOnCommand(code)),
                        close: None,
                    },
                    _ => End::failed(FailureReason::WorkerExited(status)),
                };
                self.end(end)
            }
        }
    }

    /// Asks the worker for a new proc and creates its link.
    fn start_proc(&mut self, proc_id: ProcId) -> Vec<Action> {
        self.procs.insert(
            proc_id.clone(),
            ProcSlot {
                state: ProcState::Created,
                attached: false,
            },
        );
        vec![
            Action::Send(AllocatorToWorker::StartProc {
                proc_id: proc_id.clone(),
            }),
            Action::CreateLink(proc_id),
        ]
    }

    /// Moves a proc to `state`, unless it is unknown, already there or over.
    fn set(&mut self, proc_id: &ProcId, state: ProcState, drain: Option<Duration>) -> Vec<Action> {
        let Some(slot) = self.procs.get_mut(proc_id) else {
            return Vec::new();
        };
        if slot.state.is_terminal() || slot.state == state {
            return Vec::new();
        }
        slot.state = state.clone();
        vec![Action::SetState {
            proc_id: proc_id.clone(),
            state,
            drain,
        }]
    }

    /// Ends the session: every proc still alive ends with it.
    fn end(&mut self, end: End) -> Vec<Action> {
        self.ended = true;
        let ids: Vec<ProcId> = self.procs.keys().cloned().collect();
        let mut actions = Vec::new();
        for proc_id in ids {
            let state = ProcState::ended(end.end.clone());
            actions.extend(self.set(&proc_id, state, None));
        }
        actions.push(Action::End(end));
        actions
    }

    /// The end for a connection that dropped, given what we expected.
    fn connection_ended(&self, err: &str) -> End {
        match self.plan {
            Plan::Exiting { code } => End {
                end: ProcEnd::Stopped(StopReason::ExitedOnCommand(code)),
                close: None,
            },
            _ => End::failed(FailureReason::ConnectionLost(err.to_string())),
        }
    }

    /// Whether one more actor failure may be reported at `now`.
    fn admit_actor_failure(&mut self, now: Instant) -> bool {
        let (start, count) = &mut self.failures_window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count < ACTOR_FAILURES_PER_SECOND {
            *count += 1;
            true
        } else {
            self.failures_suppressed += 1;
            false
        }
    }
}

impl End {
    fn failed(reason: FailureReason) -> Self {
        End {
            end: ProcEnd::Failed(reason),
            close: None,
        }
    }
}

/// A protocol violation by the worker: close with the reason, fail its procs.
fn violation(why: String) -> End {
    End {
        end: ProcEnd::Failed(FailureReason::ProtocolViolation(why.clone())),
        close: Some((close::PROTOCOL, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rank: u32) -> ProcId {
        ProcId::new("t", rank)
    }

    fn welcome() -> AllocatorToWorker {
        AllocatorToWorker::StopAndExit { code: 0 } // any frame stands in for Welcome here
    }

    fn started(procs: &[u32]) -> (Session, Instant) {
        let now = Instant::now();
        let (s, actions) = Session::start(
            welcome(),
            procs.iter().map(|r| p(*r)).collect(),
            Duration::from_secs(1),
            now,
        );
        assert_eq!(actions[0], Action::Send(welcome()));
        assert_eq!(actions.len(), 1 + 2 * procs.len());
        (s, now)
    }

    fn states(actions: &[Action]) -> Vec<(ProcId, &'static str)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetState { proc_id, state, .. } => Some((proc_id.clone(), state.word())),
                _ => None,
            })
            .collect()
    }

    fn end_of(actions: &[Action]) -> Option<&End> {
        actions.iter().find_map(|a| match a {
            Action::End(e) => Some(e),
            _ => None,
        })
    }

    #[test]
    fn a_proc_runs_once_started_and_its_stream_attaches_once() {
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::Frame(WorkerToAllocator::StartedProc {
                proc_id: p(0),
                agent: "x".into(),
            }),
            now,
        );
        assert_eq!(states(&a), vec![(p(0), "running")]);
        assert_eq!(
            s.on(Input::StreamOpened(p(0)), now),
            vec![Action::Attach(p(0))]
        );
        assert!(matches!(
            s.on(Input::StreamOpened(p(0)), now)[..],
            [Action::RejectStream(_)]
        ));
        assert!(matches!(
            s.on(Input::StreamOpened(p(9)), now)[..],
            [Action::RejectStream(_)]
        ));
        assert!(
            !s.is_ended(),
            "stream refusals cost the worker nothing else"
        );
    }

    #[test]
    fn frames_about_procs_it_does_not_host_are_violations() {
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::Frame(WorkerToAllocator::StartedProc {
                proc_id: p(5),
                agent: "x".into(),
            }),
            now,
        );
        let end = end_of(&a).expect("ends");
        assert!(end.end.is_failure() && end.close.as_ref().map(|c| c.0) == Some(close::PROTOCOL));
        assert_eq!(states(&a), vec![(p(0), "failed")]);
        assert!(
            s.on(Input::CommandsClosed, now).is_empty(),
            "ended: nothing more"
        );
    }

    #[test]
    fn a_second_hello_and_foreign_actor_failures_end_the_session() {
        let (mut s, now) = started(&[0]);
        let hello = crate::wire::Hello {
            protocol_version: crate::wire::PROTOCOL_VERSION,
            index: 0,
            token: String::new(),
            pid: 1,
            host: "h".into(),
        };
        let a = s.on(Input::Frame(WorkerToAllocator::Hello(hello)), now);
        assert!(end_of(&a).is_some_and(|e| e.end.to_string().contains("second Hello")));
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::Frame(WorkerToAllocator::ActorFailed {
                actor_id: p(3).actor("a", 0),
                reason: ActorFailure::HandlerError("x".into()),
            }),
            now,
        );
        assert!(end_of(&a).is_some_and(|e| e.end.to_string().contains("not on this worker")));
    }

    #[test]
    fn leaving_drains_then_stops_every_proc() {
        let (mut s, now) = started(&[0, 1]);
        s.on(Input::StreamOpened(p(1)), now);
        s.on(Input::Command(WorkerCommand::StopAndExit(3)), now);
        assert!(s.is_stopping());
        let a = s.on(
            Input::Frame(WorkerToAllocator::Leaving {
                code: 3,
                reason: "bye".into(),
            }),
            now,
        );
        assert_eq!(
            a[0],
            Action::DrainAll {
                procs: vec![p(1)],
                within: Duration::from_secs(1)
            },
            "only attached streams are drained"
        );
        assert_eq!(states(&a), vec![(p(0), "stopped"), (p(1), "stopped")]);
        let end = end_of(&a).unwrap();
        assert!(!end.end.is_failure());
        assert!(end.end.to_string().contains("exit code 3"));
    }

    #[test]
    fn a_link_failure_fails_that_proc_only_and_asks_the_worker_to_stop_it() {
        let (mut s, now) = started(&[0, 1]);
        let a = s.on(Input::LinkFailed(p(1), FailureReason::StopTimeout), now);
        assert_eq!(states(&a), vec![(p(1), "failed")]);
        assert!(a.contains(&Action::TrySend(AllocatorToWorker::StopProc {
            proc_id: p(1)
        })));
        assert!(s
            .on(Input::LinkFailed(p(1), FailureReason::HeartbeatLost), now)
            .is_empty());
        assert!(!s.is_ended());
        let a = s.on(Input::ConnectionLost("reset".into()), now);
        assert_eq!(
            states(&a),
            vec![(p(0), "failed")],
            "a failed proc stays failed"
        );
    }

    #[test]
    fn a_commanded_exit_is_not_a_failure() {
        let (mut s, now) = started(&[0]);
        s.on(Input::Command(WorkerCommand::Exit(4)), now);
        let a = s.on(Input::ConnectionLost("closed".into()), now);
        let end = end_of(&a).unwrap();
        assert!(!end.end.is_failure());
        assert_eq!(states(&a), vec![(p(0), "stopped")]);
    }

    #[test]
    fn process_exit_codes_name_the_cause() {
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::Command(WorkerCommand::ProcessExited(ExitReport::Code(
                crate::exit_code::HEARTBEAT_LOST,
            ))),
            now,
        );
        assert!(end_of(&a)
            .unwrap()
            .end
            .to_string()
            .starts_with("heartbeat lost"));
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::Command(WorkerCommand::ProcessExited(ExitReport::Signal(9))),
            now,
        );
        assert!(end_of(&a).unwrap().end.to_string().contains("signal 9"));
    }

    #[test]
    fn worker_reasons_are_bounded_and_actor_failures_rate_limited() {
        let (mut s, now) = started(&[0]);
        let long = "x".repeat(10_000);
        let a = s.on(
            Input::Frame(WorkerToAllocator::ProcFailed {
                proc_id: p(0),
                reason: FailureReason::ReportedByWorker(long.clone()),
            }),
            now,
        );
        match &a[0] {
            Action::SetState {
                state: ProcState::Failed { reason },
                ..
            } => assert!(reason.to_string().len() <= MAX_PEER_TEXT + 3),
            other => panic!("{other:?}"),
        }
        let failure = || {
            Input::Frame(WorkerToAllocator::ActorFailed {
                actor_id: p(0).actor("a", 0),
                reason: ActorFailure::HandlerError(long.clone()),
            })
        };
        let reported = (0..1000)
            .filter(|_| !s.on(failure(), now).is_empty())
            .count();
        assert_eq!(reported, ACTOR_FAILURES_PER_SECOND as usize);
        assert_eq!(s.suppressed_actor_failures(), 900);
        assert_eq!(s.on(failure(), now + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn stop_deadline_and_heartbeat_loss_fail_the_worker() {
        let (mut s, now) = started(&[0]);
        let a = s.on(Input::StopDeadline, now);
        assert!(end_of(&a).unwrap().end.is_failure());
        let (mut s, now) = started(&[0]);
        let a = s.on(
            Input::HeartbeatLost {
                silent_for: Duration::from_secs(2),
            },
            now,
        );
        let end = end_of(&a).unwrap();
        assert_eq!(end.end, ProcEnd::Failed(FailureReason::HeartbeatLost));
        assert_eq!(end.close.as_ref().map(|c| c.0), Some(close::HEARTBEAT_LOST));
    }
}
