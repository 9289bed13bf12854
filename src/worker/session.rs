//! A joined worker's main loop: commands, heartbeats, signals.

use std::time::Duration;

use quinn::Connection;
use tokio::signal::unix::{signal, SignalKind};

use std::sync::Arc;

use tokio::sync::mpsc;

use super::exit::{after_welcome, WorkerExit};
use super::hosted::HostedProc;
use super::procs::ProcTable;
use crate::actor::{ProcConfig, Registry};
use crate::exit_code;
use crate::heartbeat::{self, HeartbeatOutcome};
use crate::id::ProcId;
use crate::link::LinkConfig;
use crate::rtt::RttCell;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, AllocatorToWorker, MailboxOpen, Welcome, WorkerToAllocator};

/// How long a leaving worker waits for the allocator to acknowledge `Leaving`.
const LEAVE_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Priority of mailbox streams, below the control stream.
const MAILBOX_PRIORITY: i32 = 0;

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
        let (events_tx, events_rx) = mpsc::unbounded_channel();
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
        }
    }

    /// Serves the allocator until this worker must exit.
    pub(super) async fn run(mut self) -> WorkerExit {
        let heartbeats = heartbeat::run_measured(
            self.conn.clone(),
            self.welcome.heartbeat,
            RttCell::new(),
            "allocator",
        );
        tokio::pin!(heartbeats);
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
        loop {
            tokio::select! {
                outcome = &mut heartbeats => return self.on_heartbeat_end(outcome),
                msg = self.control_recv.next::<AllocatorToWorker>() => {
                    if let Some(exit) = self.on_control(msg).await {
                        return exit;
                    }
                }
                Some(event) = self.events_rx.recv() => {
                    if let Some(exit) = self.send(&event).await {
                        return exit;
                    }
                }
                _ = sigterm.recv() => return self.leave(exit_code::OK, "SIGTERM").await,
                _ = sigint.recv() => return self.leave(exit_code::OK, "SIGINT").await,
            }
        }
    }

    fn on_heartbeat_end(&self, outcome: HeartbeatOutcome) -> WorkerExit {
        match outcome {
            HeartbeatOutcome::Lost { silent_for } => {
                let why = format!("no heartbeat from the allocator for {silent_for:?}");
                self.conn
                    .close(close::HEARTBEAT_LOST, &close::reason_bytes(&why));
                WorkerExit::new(exit_code::HEARTBEAT_LOST, why)
            }
            HeartbeatOutcome::Closed(e) => after_welcome(&e),
            HeartbeatOutcome::BadDatagram(e) => {
                self.violation(format!("invalid heartbeat datagram: {e}"))
            }
            HeartbeatOutcome::DatagramsUnsupported => {
                self.violation("allocator does not accept datagrams, heartbeats impossible".into())
            }
        }
    }

    fn violation(&self, why: String) -> WorkerExit {
        self.conn.close(close::PROTOCOL, &close::reason_bytes(&why));
        WorkerExit::new(exit_code::PROTOCOL, why)
    }

    /// Handles one control-stream event; `Some` when the worker must exit.
    async fn on_control(
        &mut self,
        msg: Result<Option<AllocatorToWorker>, StreamError>,
    ) -> Option<WorkerExit> {
        match msg {
            Ok(Some(AllocatorToWorker::StartProc { proc_id })) => self.start_proc(proc_id).await,
            Ok(Some(AllocatorToWorker::StopProc { proc_id })) => {
                let Some(hosted) = self.procs.remove(&proc_id) else {
                    let reason = format!("no proc {proc_id} on this worker");
                    return self
                        .send(&WorkerToAllocator::ProcFailed { proc_id, reason })
                        .await;
                };
                hosted.stop().await;
                let reason = "stopped on request".to_string();
                self.send(&WorkerToAllocator::ProcStopped { proc_id, reason })
                    .await
            }
            Ok(Some(AllocatorToWorker::StopAndExit { code })) => Some(
                self.leave(code, &format!("StopAndExit({code}) from the allocator"))
                    .await,
            ),
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
        }
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

    /// Creates a proc: opens its mailbox stream, names the proc on it, reports back.
    async fn start_proc(&mut self, proc_id: ProcId) -> Option<WorkerExit> {
        if let Err(e) = self.procs.check_new(&proc_id) {
            let reason = e.to_string();
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
            send.set_priority(MAILBOX_PRIORITY);
            send.send(&MailboxOpen {
                proc_id: proc_id.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((send, FramedRecv::new(recv, max_frame)))
        }
        .await;
        match opened {
            Ok((send, recv)) => {
                let config = ProcConfig {
                    mailbox_bytes: self.welcome.limits.mailbox_bytes as usize,
                    ..ProcConfig::default()
                };
                let hosted = HostedProc::start(
                    proc_id.clone(),
                    self.registry.clone(),
                    config,
                    send,
                    recv,
                    self.events_tx.clone(),
                );
                if let Err(e) = self.procs.insert(proc_id.clone(), hosted) {
                    return self
                        .send(&WorkerToAllocator::ProcFailed {
                            proc_id,
                            reason: e.to_string(),
                        })
                        .await;
                }
                tracing::debug!("worker {}: proc {proc_id} started", self.index);
                let agent = format!("{}:{}", super::host_name(), std::process::id());
                self.send(&WorkerToAllocator::StartedProc { proc_id, agent })
                    .await
            }
            Err(reason) => {
                let reason = format!("cannot open mailbox stream: {reason}");
                self.send(&WorkerToAllocator::ProcFailed { proc_id, reason })
                    .await
            }
        }
    }

    /// Stops every proc, tells the allocator, waits for its goodbye, returns `code`.
    async fn leave(&mut self, code: i32, why: &str) -> WorkerExit {
        tracing::info!(
            "worker {}: stopping {} procs ({why})",
            self.index,
            self.procs.len()
        );
        // Stop every proc at once; each flushes its own stream.
        let stopping: Vec<_> = self
            .procs
            .drain()
            .into_iter()
            .map(|(proc_id, hosted)| (proc_id, tokio::spawn(hosted.stop())))
            .collect();
        for (proc_id, task) in stopping {
            let _ = task.await;
            let reason = why.to_string();
            if let Some(exit) = self
                .send(&WorkerToAllocator::ProcStopped { proc_id, reason })
                .await
            {
                return exit;
            }
        }
        let leaving = WorkerToAllocator::Leaving {
            code,
            reason: why.to_string(),
        };
        if let Some(exit) = self.send(&leaving).await {
            return exit;
        }
        self.control_send.finish();
        // The allocator closes the connection once it has read `Leaving`;
        // waiting for that is the acknowledgement that nothing was lost.
        match tokio::time::timeout(LEAVE_ACK_TIMEOUT, self.conn.closed()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    "worker {}: allocator did not acknowledge Leaving within {LEAVE_ACK_TIMEOUT:?}",
                    self.index
                );
                self.conn.close(close::NORMAL, b"leaving");
            }
        }
        WorkerExit::new(code, why.to_string())
    }
}
