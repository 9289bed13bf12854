//! The messages of the allocator/worker protocol (design §1).
//!
//! The control stream carries [`WorkerToAllocator`] one way and
//! [`AllocatorToWorker`] the other; datagrams carry [`Heartbeat`]; the first
//! frame of every mailbox stream is a [`MailboxOpen`].

use serde::{Deserialize, Serialize};

use crate::config::{HeartbeatConfig, Limits};
use crate::id::ProcId;

/// Version of this protocol; a Hello with another version is rejected.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame a worker sends on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The worker's index in the allocation.
    pub index: u32,
    /// The secret the allocator issued for that index.
    pub token: String,
    /// The worker's process id, for logs and exit reports.
    pub pid: u32,
    /// The worker's host name, for logs.
    pub host: String,
}

/// The allocator's answer to an accepted Hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Heartbeat settings both sides use from now on.
    pub heartbeat: HeartbeatConfig,
    /// Limits both sides enforce from now on.
    pub limits: Limits,
}

/// Frames a worker sends on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerToAllocator {
    /// Asks to join; must be the first frame.
    Hello(Hello),
    /// A proc was created and its mailbox stream opened.
    StartedProc {
        /// The proc.
        proc_id: ProcId,
        /// Describes where the proc runs (host and pid), for logs.
        agent: String,
    },
    /// A proc could not be created or has failed.
    ProcFailed {
        /// The proc.
        proc_id: ProcId,
        /// Why.
        reason: String,
    },
    /// A proc was stopped in order.
    ProcStopped {
        /// The proc.
        proc_id: ProcId,
        /// Why it stopped.
        reason: String,
    },
    /// The worker has stopped all its procs and is about to exit with `code`.
    ///
    /// Sent after `StopAndExit` (as its acknowledgement) or on SIGTERM/SIGINT.
    Leaving {
        /// The exit code the worker will use.
        code: i32,
        /// Why it leaves.
        reason: String,
    },
}

/// Frames the allocator sends on a worker's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocatorToWorker {
    /// Hello accepted; must be the first frame.
    Welcome(Welcome),
    /// Create a proc and open its mailbox stream.
    StartProc {
        /// The proc to create.
        proc_id: ProcId,
    },
    /// Stop every proc, acknowledge with `Leaving`, then exit with `code`.
    StopAndExit {
        /// Exit code to use.
        code: i32,
    },
    /// Exit with `code` at once.
    Exit {
        /// Exit code to use.
        code: i32,
    },
}

/// A heartbeat datagram, sent by both sides every interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one with every beat a side sends.
    pub seq: u64,
    /// Microseconds since the sender's connection started, for RTT estimates.
    pub sent_at_micros: u64,
}

/// The first frame on a mailbox stream: names the proc whose mailbox it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxOpen {
    /// The proc.
    pub proc_id: ProcId,
}
