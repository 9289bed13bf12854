//! What can go wrong creating an allocator or asking it for something.

use std::time::Duration;

use crate::config;
use crate::id::ProcId;
use crate::reason::{ExitReport, FailureReason};
use crate::tls;

/// An allocator could not be created or could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocatorError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC endpoint could not be created.
    #[error("cannot create the allocator's endpoint")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A worker process could not be started.
    #[error("cannot start worker {index} ({program})")]
    Spawn {
        /// The worker's index.
        index: u32,
        /// The program that failed to start.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A launch was refused before anything started: its command template
    /// asks for a secret on the command line, or mixes the per-worker and
    /// group forms. The text says what to use instead.
    #[error("launch refused: {0}")]
    Launch(String),
    /// No worker with this index is connected.
    #[error("worker {0} is not connected")]
    NotConnected(u32),
    /// No proc with this id in the allocation.
    #[error("unknown proc {0}")]
    UnknownProc(ProcId),
    /// The metrics endpoint could not listen on this address.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The procs did not come up.
    #[error("allocation did not start: {0}")]
    Start(#[source] StartError),
}

impl From<crate::transport::TransportError> for AllocatorError {
    fn from(e: crate::transport::TransportError) -> Self {
        AllocatorError::Transport(Box::new(e))
    }
}

/// Why waiting for procs to run ended without them all running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A proc waited for failed.
    #[error("proc {proc_id} failed: {reason}")]
    ProcFailed {
        /// The proc.
        proc_id: ProcId,
        /// Why.
        reason: FailureReason,
    },
    /// A launched worker hosting a proc waited for exited.
    #[error("worker {index} {status}")]
    WorkerExited {
        /// The worker.
        index: u32,
        /// How it ended.
        status: ExitReport,
    },
    /// A launched worker hosting a proc waited for could not be started.
    #[error("worker {index} could not be started: {reason}")]
    WorkerNotStarted {
        /// The worker.
        index: u32,
        /// The OS error, with the program.
        reason: String,
    },
    /// Time ran out.
    #[error("{running} of {total} procs running after {after:?}")]
    Timeout {
        /// Procs running at the deadline.
        running: usize,
        /// Procs waited for.
        total: usize,
        /// The timeout.
        after: Duration,
    },
    /// The allocator shut down while waiting.
    #[error("allocator shut down")]
    ShutDown,
}
