//! The messages of the allocator/worker protocol (design §1).
//!
//! The control stream carries [`WorkerToAllocator`] one way and
//! [`AllocatorToWorker`] the other; datagrams carry [`Heartbeat`]; the first
//! frame of every mailbox stream is a [`MailboxOpen`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{HeartbeatConfig, Limits};
use crate::id::{ActorId, PortId, ProcId};

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
    /// How long the allocator waits for `Leaving` after `StopAndExit`; the
    /// worker plans its own stop to end within it.
    pub stop_timeout: Duration,
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
    /// An actor failed (its handler returned an error or panicked) and was stopped.
    ActorFailed {
        /// The actor.
        actor_id: ActorId,
        /// What went wrong.
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
    /// Stop one proc: its actors' stop hooks run, then `ProcStopped` follows.
    StopProc {
        /// The proc to stop.
        proc_id: ProcId,
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

/// Where an envelope is going.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dest {
    /// An actor's mailbox.
    Actor(ActorId),
    /// A reply port.
    Port(PortId),
    /// The proc itself: a [`SystemMsg`] such as a spawn request.
    Proc(ProcId),
}

impl Dest {
    /// The proc hosting the destination.
    pub fn proc_id(&self) -> &ProcId {
        match self {
            Dest::Actor(a) => &a.proc_id,
            Dest::Port(p) => &p.actor_id.proc_id,
            Dest::Proc(p) => p,
        }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Actor(a) => write!(f, "{a}"),
            Dest::Port(p) => write!(f, "{p}"),
            Dest::Proc(p) => write!(f, "{p}"),
        }
    }
}

/// A message on its way to an actor, a port or a proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique among the envelopes sent from the sender's proc.
    pub id: u64,
    /// The sending actor (or controller client); undeliverable envelopes go back to it.
    pub from: ActorId,
    /// The destination.
    pub to: Dest,
    /// If this envelope is an `ask`, the sender's reply port, failed at once if the envelope comes back.
    pub return_port: Option<u64>,
    /// The message, encoded by [`crate::wire::codec`] (bytes in one piece, not element by element).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// An envelope returned to its sender, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undeliverable {
    /// The envelope as it was sent.
    pub envelope: Envelope,
    /// Why it could not be delivered: proc failed, actor not found, connection lost, too large...
    pub reason: String,
}

/// Frames on a mailbox stream, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxFrame {
    /// A message for this proc (towards the worker) or from it (towards the allocator).
    Envelope(Envelope),
    /// Cumulative: this many `Envelope` frames received on this stream have been
    /// processed (delivered to their actor, or returned as undeliverable before this ack).
    Ack {
        /// Count of processed envelopes, from the start of the stream.
        processed: u64,
    },
    /// An envelope returned to its sender.
    Undeliverable(Undeliverable),
}

/// Requests addressed to a proc itself (`Dest::Proc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemMsg {
    /// Spawn an actor of a registered type; the reply is `Result<ActorId, String>`.
    Spawn {
        /// The registered name of the actor type.
        actor_type: String,
        /// The new actor's name on the proc.
        name: String,
        /// The actor's parameters, encoded by the codec.
        #[serde(with = "serde_bytes")]
        params: Vec<u8>,
    },
    /// Stop an actor (its stop hook runs); the reply is `Result<(), String>`.
    StopActor {
        /// The actor's name on the proc.
        name: String,
    },
    /// Report the proc's queue occupancy; the reply is [`ProcStats`].
    Stats,
}

/// A proc's occupancy, answered to [`SystemMsg::Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStats {
    /// Actors hosted.
    pub actors: u32,
    /// Bytes queued in the proc's actor mailboxes and outbound queue.
    pub queued_bytes: u64,
    /// The most bytes any one of its queues ever held (each queue is bounded by the budget).
    pub peak_queued_bytes: u64,
}
