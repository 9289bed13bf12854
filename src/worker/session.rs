//! A joined worker's main loop: commands, heartbeats, signals, bounded stops.
//!
//! Heartbeats run in a task of their own on the transport runtime (see
//! [`super::runtimes`]), so they keep flowing whatever the session is
//! waiting for, and their outcome ends the session at once, even in the
//! middle of a stop. Stops are bounded by the [`StopBudget`] from the
//! allocator's stop timeout: a proc stopped on request is stopped in the
//! background (the session keeps serving, so `Exit` is still obeyed at
//! once), and `StopAndExit` or a signal stops every proc at once, reports
//! which actors had to be aborted, sends `Leaving` and waits for the
//! allocator's acknowledgement, each step by its deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio::time::Instant;

use super::exit::{after_welcome, WorkerExit};
use super::hosted::{HostedProc, ProcStopReport};
use super::log_forward::LogForwarder;
use super::procs::ProcTable;
use super::runtimes;
use super::stop_budget::{StopBudget, StopDeadlines};
use super::watchdog::{self, Watchdog};
use crate::actor::{ProcConfig, Registry};
use crate::config::HeartbeatConfig;
use crate::exit_code;
use crate::heartbeat::{self, HeartbeatOutcome};
use crate::id::ProcId;
use crate::link::LinkConfig;
use crate::reason::{FailureReason, StopReason};
use crate::rtt::RttCell;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, AllocatorToWorker, MailboxOpen, StreamOpen, Welcome, WorkerToAllocator};

/// How long a worker waits for the allocator to close after it finished the control stream.
const LEAVE_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of a worker after Welcome.
pub(super) struct Session {
    conn: Connection,
    control_send: FramedSend,
    control_recv: FramedRecv,
    welcome: Welcome,
    index: u32,
    /// The link setting this worker's connection was created with.
    link: LinkConfig,
    procs: ProcTable,
    registry: Arc<Registry>,
    events_tx: mpsc::UnboundedSender<WorkerToAllocator>,
    events_rx: mpsc::UnboundedReceiver<WorkerToAllocator>,
    /// Where the procs' tasks and actors run.
    actors: Handle,
    budget: StopBudget,
    /// Procs being stopped in the background; their reports arrive on `stopped_rx`.
    stopping: BTreeMap<ProcId, AbortHandle>,
    stopped_tx: mpsc::UnboundedSender<(ProcId, ProcStopReport)>,
    stopped_rx: mpsc::UnboundedReceiver<(ProcId, ProcStopReport)>,
}

/// How serving the allocator ended.
enum Ending {
    /// The worker exits now.
    Exit(WorkerExit),
    /// `Leaving` was sent: the worker exits once the allocator closes the
    /// connection (its acknowledgement), or at `deadline` without it.
    Left { exit: WorkerExit, deadline: Instant },
}

/// The heartbeat task; aborted when dropped, so it never outlives its session.
struct HeartbeatTask(JoinHandle<HeartbeatOutcome>);

impl HeartbeatTask {
    /// Spawns the heartbeat task; on a runtime shared with the actors, with
    /// a [`Watchdog`] that ends the process if the task stops being run.
    fn spawn(conn: Connection, config: HeartbeatConfig) -> Self {
        let task = heartbeat::run_measured(
            conn,
            config,
            RttCell::new(),
            Default::default(),
            "allocator",
        );
        if !runtimes::is_shared() {
            return HeartbeatTask(tokio::spawn(task));
        }
        match Watchdog::start(config.interval, config.timeout) {
            Ok(stamp) => HeartbeatTask(tokio::spawn(watchdog::stamp_polls(task, stamp))),
            Err(e) => {
                tracing::warn!(
                    "{e}: handlers that block every runtime thread would leave this worker hanging"
                );
                HeartbeatTask(tokio::spawn(task))
            }
        }
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The exit for a heartbeat task that ended: the allocator is lost, gone or misbehaving.
fn heartbeat_exit(conn: &Connection, ended: Result<HeartbeatOutcome, JoinError>) -> WorkerExit {
    let violation = |why: String| {
        conn.close(close::PROTOCOL, &close::reason_bytes(&why));
        WorkerExit::new(exit_code::PROTOCOL, why)
    };
    match ended {
        Ok(HeartbeatOutcome::Lost { silent_for }) => {
            let why = format!("no heartbeat from the allocator for {silent_for:?}");
            conn.close(close::HEARTBEAT_LOST, &close::reason_bytes(&why));
            WorkerExit::new(exit_code::HEARTBEAT_LOST, why)
        }
        Ok(HeartbeatOutcome::Closed(e)) => after_welcome(&e),
        Ok(HeartbeatOutcome::BadDatagram(e)) => {
            violation(format!("invalid heartbeat datagram: {e}"))
        }
        Ok(HeartbeatOutcome::DatagramsUnsupported) => {
            violation("allocator does not accept datagrams, heartbeats impossible".into())
        }
        Err(e) => {
            // Without heartbeats the worker can no longer tell whether its
            // allocator lives: leaving is the only safe course.
            let why = format!("heartbeat task ended: {e}");
            conn.close(close::HEARTBEAT_LOST, &close::reason_bytes(&why));
            WorkerExit::new(exit_code::HEARTBEAT_LOST, why)
        }
    }
}

impl Session {
    pub(super) fn new(
        conn: Connection,
        control_send: FramedSend,
        control_recv: FramedRecv,
        welcome: Welcome,
        index: u32,
        link: LinkConfig,
        registry: Arc<Registry>,
    ) -> Self {
        let procs = ProcTable::new(welcome.limits.max_procs_per_worker);
        let budget = StopBudget::new(welcome.stop_timeout);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = mpsc::unbounded_channel();
        Session {
            conn,
            control_send,
            control_recv,
            welcome,
            index,
            link,
            procs,
            registry,
            events_tx,
            events_rx,
            actors: runtimes::actor_handle(),
            budget,
            stopping: BTreeMap::new(),
            stopped_tx,
            stopped_rx,
        }
    }

    /// Serves the allocator until this worker must exit.
    pub(super) async fn run(mut self) -> WorkerExit {
        let (mut sigterm, mut sigint) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                return WorkerExit::new(
                    exit_code::CONFIG,
                    format!("cannot install signal handlers: {e}"),
                )
            }
        };
        let conn = self.conn.clone();
        let mut heartbeats = HeartbeatTask::spawn(conn.clone(), self.welcome.heartbeat);
        // Log lines go to the allocator until the session is over.
        let _logs = LogForwarder::start(conn.clone(), self.index);
        let ending = tokio::select! {
            biased;
            ended = &mut heartbeats.0 => return heartbeat_exit(&conn, ended),
            ending = self.serve(&mut sigterm, &mut sigint) => ending,
        };
        match ending {
            Ending::Exit(exit) => exit,
            Ending::Left { exit, deadline } => {
                // The allocator closes the connection once it has read
                // `Leaving`: that is the acknowledgement that nothing was lost.
                tokio::select! {
                    biased;
                    _ = conn.closed() => {}
                    // Closed or silent: nobody is left to acknowledge.
                    _ = &mut heartbeats.0 => conn.close(close::NORMAL, b"leaving"),
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(
                            "worker {}: allocator did not acknowledge Leaving in time",
                            self.index
                        );
                        conn.close(close::NORMAL, b"leaving");
                    }
                }
                exit
            }
        }
    }

    /// Handles commands, reports and signals until the worker must go.
    async fn serve(&mut self, sigterm: &mut Signal, sigint: &mut Signal) -> Ending {
        loop {
            tokio::select! {
                msg = self.control_recv.next::<AllocatorToWorker>() => {
                    if let Some(ending) = self.on_control(msg).await {
                        return ending;
                    }
                }
                Some(event) = self.events_rx.recv() => {
                    if let Some(exit) = self.send(&event).await {
                        return Ending::Exit(exit);
                    }
                }
                Some((proc_id, report)) = self.stopped_rx.recv() => {
                    self.stopping.remove(&proc_id);
                    if let Some(exit) = self.forward_events().await {
                        return Ending::Exit(exit);
                    }
                    let reason = report.reason("stopped on request");
                    if let Some(exit) = self.send(&WorkerToAllocator::ProcStopped { proc_id, reason }).await {
                        return Ending::Exit(exit);
                    }
                }
                _ = sigterm.recv() => return self.leave(exit_code::OK, "SIGTERM".into()).await,
                _ = sigint.recv() => return self.leave(exit_code::OK, "SIGINT".into()).await,
            }
        }
    }

    fn violation(&self, why: String) -> WorkerExit {
        self.conn.close(close::PROTOCOL, &close::reason_bytes(&why));
        WorkerExit::new(exit_code::PROTOCOL, why)
    }

    /// Handles one control-stream event; `Some` when the worker must go.
    async fn on_control(
        &mut self,
        msg: Result<Option<AllocatorToWorker>, StreamError>,
    ) -> Option<Ending> {
        let exit = match msg {
            Ok(Some(AllocatorToWorker::StartProc { proc_id })) => self.start_proc(proc_id).await,
            Ok(Some(AllocatorToWorker::StopProc { proc_id })) => {
                if self.stopping.contains_key(&proc_id) {
                    // Already being stopped: it will report `ProcStopped` once.
                    return None;
                }
                let Some(hosted) = self.procs.remove(&proc_id) else {
                    let reason = FailureReason::ReportedByWorker(format!(
                        "no proc {proc_id} on this worker"
                    ));
                    return self
                        .send(&WorkerToAllocator::ProcFailed { proc_id, reason })
                        .await
                        .map(Ending::Exit);
                };
                let deadlines = self.budget.deadlines(Instant::now());
                self.stop_in_background(proc_id, hosted, deadlines);
                None
            }
            Ok(Some(AllocatorToWorker::StopAndExit { code })) => {
                let why = format!("StopAndExit({code}) from the allocator");
                return Some(self.leave(code, why).await);
            }
            Ok(Some(AllocatorToWorker::Exit { code })) => {
                self.conn.close(close::NORMAL, b"exiting on command");
                Some(WorkerExit::new(
                    code,
                    format!("Exit({code}) from the allocator"),
                ))
            }
            Ok(Some(AllocatorToWorker::Welcome(_))) => {
                Some(self.violation("second Welcome on the control stream".into()))
            }
            Ok(None) => {
                // The allocator finished the control stream: it is going away.
                let closed = tokio::time::timeout(LEAVE_ACK_TIMEOUT, self.conn.closed()).await;
                Some(match closed {
                    Ok(e) => after_welcome(&e),
                    Err(_) => {
                        self.conn.close(close::PROTOCOL, b"control stream finished");
                        WorkerExit::new(
                            exit_code::CONNECTION_LOST,
                            "allocator finished the control stream",
                        )
                    }
                })
            }
            Err(StreamError::Read(quinn::ReadError::ConnectionLost(e))) => Some(after_welcome(&e)),
            Err(e) if e.is_protocol_violation() => {
                Some(self.violation(format!("invalid control frame: {e}")))
            }
            Err(e) => Some(WorkerExit::new(
                exit_code::CONNECTION_LOST,
                format!("control stream failed: {e}"),
            )),
        };
        exit.map(Ending::Exit)
    }

    async fn send(&mut self, msg: &WorkerToAllocator) -> Option<WorkerExit> {
        match self.control_send.send(msg).await {
            Ok(()) => None,
            Err(StreamError::Write(quinn::WriteError::ConnectionLost(e))) => {
                Some(after_welcome(&e))
            }
            Err(e) => Some(WorkerExit::new(
                exit_code::CONNECTION_LOST,
                format!("control stream failed: {e}"),
            )),
        }
    }

    /// Sends every report already waiting (actor failures...), in order.
    async fn forward_events(&mut self) -> Option<WorkerExit> {
        while let Ok(event) = self.events_rx.try_recv() {
            if let Some(exit) = self.send(&event).await {
                return Some(exit);
            }
        }
        None
    }

    /// Stops `hosted` in a task of its own; its report arrives on `stopped_rx`.
    ///
    /// The task only waits for the proc's own tasks, each wait bounded by
    /// `deadlines`, so it reports by the streams deadline (plus a moment).
    fn stop_in_background(
        &mut self,
        proc_id: ProcId,
        hosted: HostedProc,
        deadlines: StopDeadlines,
    ) {
        let done = self.stopped_tx.clone();
        let id = proc_id.clone();
        let task = tokio::spawn(async move {
            let report = hosted.stop(deadlines).await;
            let _ = done.send((id, report));
        });
        self.stopping.insert(proc_id, task.abort_handle());
    }

    /// Creates a proc: opens its mailbox stream, names the proc on it, reports back.
    async fn start_proc(&mut self, proc_id: ProcId) -> Option<WorkerExit> {
        if let Err(e) = self.procs.check_new(&proc_id) {
            let reason = FailureReason::ReportedByWorker(e.to_string());
            return self
                .send(&WorkerToAllocator::ProcFailed { proc_id, reason })
                .await;
        }
        // One more stream window for the allocator to fill, before the
        // stream exists: the window follows the procs hosted.
        crate::transport::endpoint::fit_receive_window(
            &self.conn,
            self.procs.len().saturating_add(1),
            &self.link,
        );
        let max_frame = self.welcome.limits.max_frame;
        let opened = async {
            let (send, recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut send = FramedSend::new(send, max_frame);
            send.set_priority(crate::transport::priority::MAILBOX);
            send.send(&StreamOpen::Mailbox(MailboxOpen {
                proc_id: proc_id.clone(),
            }))
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, FramedRecv::new(recv, max_frame)))
        }
        .await;
        match opened {
            Ok((send, recv)) => {
                let config = ProcConfig {
                    mailbox_bytes: self.welcome.limits.mailbox_bytes as usize,
                    stop_timeout: self.budget.actor_timeout(),
                    max_frame,
                    ..ProcConfig::default()
                };
                // The proc's tasks run in its span (a child of the worker's).
                let span = tracing::info_span!("proc", proc_id = %proc_id);
                let _in_proc = span.enter();
                let hosted = HostedProc::start(
                    proc_id.clone(),
                    self.registry.clone(),
                    config,
                    send,
                    recv,
                    self.events_tx.clone(),
                    &self.actors,
                );
                if let Err(e) = self.procs.insert(proc_id.clone(), hosted) {
                    return self
                        .send(&WorkerToAllocator::ProcFailed {
                            proc_id,
                            reason: FailureReason::ReportedByWorker(e.to_string()),
                        })
                        .await;
                }
                tracing::debug!("worker {}: proc {proc_id} started", self.index);
                let agent = format!("{}:{}", super::host_name(), std::process::id());
                self.send(&WorkerToAllocator::StartedProc { proc_id, agent })
                    .await
            }
            Err(reason) => {
                let reason = FailureReason::MailboxStream(format!("cannot open: {reason}"));
                self.send(&WorkerToAllocator::ProcFailed { proc_id, reason })
                    .await
            }
        }
    }

    /// Stops every proc within the stop budget, reports them, sends
    /// `Leaving` and hands over to waiting for the allocator's goodbye.
    ///
    /// Actors that do not stop by the actors' deadline are aborted and named
    /// (in `ActorFailed`, in their proc's `ProcStopped` and in `Leaving`).
    /// Whatever the actors do, this returns by the budget's exit deadline;
    /// it returns earlier with the connection's exit if the allocator is lost.
    async fn leave(&mut self, code: i32, why: String) -> Ending {
        let deadlines = self.budget.deadlines(Instant::now());
        tracing::info!(
            "worker {}: stopping {} procs within {:?} ({why})",
            self.index,
            self.procs.len() + self.stopping.len(),
            self.budget.timeout()
        );
        for (proc_id, hosted) in self.procs.drain() {
            self.stop_in_background(proc_id, hosted, deadlines);
        }
        // Every stop reports by the streams deadline (plus a moment); the
        // exit deadline only guards against one that never does.
        let mut stopped: Vec<(ProcId, ProcStopReport)> = Vec::new();
        let collect = async {
            while !self.stopping.is_empty() {
                let Some((proc_id, report)) = self.stopped_rx.recv().await else {
                    break;
                };
                self.stopping.remove(&proc_id);
                stopped.push((proc_id, report));
            }
        };
        let _ = tokio::time::timeout_at(deadlines.exit, collect).await;
        let mut reasons: Vec<(ProcId, StopReason)> = stopped
            .iter()
            .map(|(proc_id, report)| (proc_id.clone(), report.reason(&why)))
            .collect();
        for (proc_id, task) in std::mem::take(&mut self.stopping) {
            task.abort();
            reasons.push((
                proc_id,
                StopReason::ReportedByWorker(format!("{why}; did not finish stopping in time")),
            ));
        }
        let aborted: Vec<String> = stopped
            .iter()
            .flat_map(|(_, report)| report.aborted.iter().map(|a| a.to_string()))
            .collect();
        let reason = if aborted.is_empty() {
            why
        } else {
            format!(
                "{why}; aborted, as they did not stop in time: {}",
                aborted.join(", ")
            )
        };
        let exit = WorkerExit::new(code, reason.clone());
        let report = async {
            if let Some(lost) = self.forward_events().await {
                return Some(lost);
            }
            for (proc_id, reason) in reasons {
                let stopped = WorkerToAllocator::ProcStopped { proc_id, reason };
                if let Some(lost) = self.send(&stopped).await {
                    return Some(lost);
                }
            }
            self.send(&WorkerToAllocator::Leaving { code, reason })
                .await
        };
        match tokio::time::timeout_at(deadlines.exit, report).await {
            Ok(None) => {
                self.control_send.finish();
                Ending::Left {
                    exit,
                    deadline: deadlines.exit,
                }
            }
            Ok(Some(lost)) => Ending::Exit(lost),
            Err(_) => {
                tracing::warn!(
                    "worker {}: could not send Leaving within the stop timeout",
                    self.index
                );
                self.conn.close(close::NORMAL, b"leaving: stop timeout");
                Ending::Exit(exit)
            }
        }
    }
}
