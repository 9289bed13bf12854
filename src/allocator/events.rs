//! What an allocator reports: proc states, workers joining, leaving and exiting.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitStatus;

use crate::id::ProcId;

/// The life of a proc as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    /// The allocator asked a worker to create the proc.
    Created,
    /// The worker created the proc and opened its mailbox stream.
    Running,
    /// The proc was stopped in order (command, SIGTERM of its worker...).
    Stopped {
        /// Why it stopped.
        reason: String,
    },
    /// The proc is gone against plan: its worker was lost, crashed or misbehaved.
    Failed {
        /// What went wrong, e.g. "heartbeat lost" or "connection lost: ...".
        reason: String,
    },
}

impl ProcState {
    /// One word for the state: created, running, stopped, failed.
    pub fn word(&self) -> &'static str {
        match self {
            ProcState::Created => "created",
            ProcState::Running => "running",
            ProcState::Stopped { .. } => "stopped",
            ProcState::Failed { .. } => "failed",
        }
    }

    /// Whether the proc can no longer change state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ProcState::Stopped { .. } | ProcState::Failed { .. })
    }

    /// The reason of a stopped or failed proc.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ProcState::Stopped { reason } | ProcState::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

/// How a launched worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReport {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Its status could not be collected.
    Unknown,
}

impl From<std::io::Result<ExitStatus>> for ExitReport {
    fn from(status: std::io::Result<ExitStatus>) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => ExitReport::Code(c),
                (None, Some(sig)) => ExitReport::Signal(sig),
                (None, None) => ExitReport::Unknown,
            },
            Err(_) => ExitReport::Unknown,
        }
    }
}

impl fmt::Display for ExitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReport::Code(c) => write!(
                f,
                "exited with code {c} ({})",
                crate::exit_code::describe(*c)
            ),
            ExitReport::Signal(s) => write!(f, "killed by signal {s}"),
            ExitReport::Unknown => write!(f, "exit status unknown"),
        }
    }
}

/// Something that happened in an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocEvent {
    /// A proc changed state.
    Proc {
        /// The proc.
        proc_id: ProcId,
        /// Index of the worker hosting it.
        worker: u32,
        /// Its new state.
        state: ProcState,
    },
    /// A worker was admitted.
    WorkerJoined {
        /// Its index.
        index: u32,
        /// Its process id, as it reported.
        pid: u32,
        /// Its host name, as it reported.
        host: String,
        /// The address it connects from.
        addr: SocketAddr,
    },
    /// A connection was refused before admission (bad certificate, token, index, Hello...).
    WorkerRejected {
        /// The address it came from.
        addr: SocketAddr,
        /// Why, as told to the peer.
        reason: String,
    },
    /// An admitted worker's connection ended.
    WorkerLeft {
        /// Its index.
        index: u32,
        /// Whether it left against plan (its procs were reported failed).
        failed: bool,
        /// Why.
        reason: String,
    },
    /// An actor failed (handler error or panic) and was stopped; its proc keeps running.
    ActorFailed {
        /// The actor.
        actor_id: crate::id::ActorId,
        /// Its error or panic message.
        reason: String,
    },
    /// A worker opened a mailbox stream that was refused (the worker's other procs are unaffected).
    MailboxRejected {
        /// The worker's index.
        worker: u32,
        /// Why.
        reason: String,
    },
    /// A worker process launched by this allocator ended.
    WorkerExited {
        /// Its index.
        index: u32,
        /// How it ended.
        status: ExitReport,
    },
}

impl fmt::Display for AllocEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocEvent::Proc {
                proc_id,
                worker,
                state,
            } => {
                write!(f, "proc {proc_id} {} (worker {worker})", state.word())?;
                match state.reason() {
                    Some(r) => write!(f, ": {r}"),
                    None => Ok(()),
                }
            }
            AllocEvent::WorkerJoined {
                index,
                pid,
                host,
                addr,
            } => {
                write!(
                    f,
                    "worker {index} joined (pid {pid} on {host}, from {addr})"
                )
            }
            AllocEvent::WorkerRejected { addr, reason } => {
                write!(f, "connection from {addr} rejected: {reason}")
            }
            AllocEvent::WorkerLeft {
                index,
                failed,
                reason,
            } => {
                let how = if *failed { "lost" } else { "left" };
                write!(f, "worker {index} {how}: {reason}")
            }
            AllocEvent::WorkerExited { index, status } => write!(f, "worker {index} {status}"),
            AllocEvent::ActorFailed { actor_id, reason } => {
                write!(f, "actor {actor_id} failed: {reason}")
            }
            AllocEvent::MailboxRejected { worker, reason } => {
                write!(f, "worker {worker}: mailbox stream rejected: {reason}")
            }
        }
    }
}
