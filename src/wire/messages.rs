//! The messages of the allocator/worker protocol (docs/design.md §2: §2.5 control
//! stream, §2.6 heartbeats, §2.7 mailbox streams).
//!
//! The control stream carries [`WorkerToAllocator`] one way and
//! [`AllocatorToWorker`] the other; datagrams carry [`Heartbeat`]; the first
//! frame of every other stream a worker opens is a [`StreamOpen`]: a mailbox
//! stream ([`MailboxOpen`]) or the worker's log stream, which then carries
//! [`LogFrame`]s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{HeartbeatConfig, Limits};
use crate::id::{ActorId, PortId, ProcId};
use crate::reason::{ActorFailure, FailureReason, ReturnReason, StopReason};

/// Version of this protocol; a Hello with another version is rejected.
pub const PROTOCOL_VERSION: u32 = 4;

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
        reason: FailureReason,
    },
    /// A proc was stopped in order.
    ProcStopped {
        /// The proc.
        proc_id: ProcId,
        /// Why it stopped.
        reason: StopReason,
    },
    /// An actor failed (its handler returned an error or panicked) and was stopped.
    ActorFailed {
        /// The actor.
        actor_id: ActorId,
        /// What went wrong.
        reason: ActorFailure,
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
    /// Microseconds since the sender's connection started. Round trips are
    /// not computed from it: they come from QUIC's own estimate, which needs
    /// no peer-chosen number (see [`crate::rtt`]).
    pub sent_at_micros: u64,
}

/// The first frame on a mailbox stream: names the proc whose mailbox it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxOpen {
    /// The proc.
    pub proc_id: ProcId,
}

/// The first frame of every stream a worker opens after the control stream:
/// what the stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOpen {
    /// A proc's mailbox stream; [`MailboxFrame`]s follow both ways.
    Mailbox(MailboxOpen),
    /// The worker's log stream (at most one per connection): [`LogFrame`]s
    /// follow from the worker; the allocator writes nothing on it.
    Logs,
}

/// How important a forwarded log line is (the `tracing` levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    /// `tracing::Level::ERROR`.
    Error,
    /// `tracing::Level::WARN`.
    Warn,
    /// `tracing::Level::INFO`; also every stdout or stderr line.
    Info,
    /// `tracing::Level::DEBUG`.
    Debug,
    /// `tracing::Level::TRACE`.
    Trace,
}

impl LogLevel {
    /// The level's name in capitals, as `tracing` prints it.
    pub fn word(&self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
            LogLevel::Trace => "TRACE",
        }
    }
}

/// Where a forwarded line came from in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogSource {
    /// A `tracing` event.
    Tracing,
    /// A line the process wrote to its standard output.
    Stdout,
    /// A line the process wrote to its standard error (not through `tracing`).
    Stderr,
}

/// One forwarded line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// Where it came from.
    pub source: LogSource,
    /// The `tracing` target (module path), empty for stdout and stderr lines.
    pub target: String,
    /// The text, without its line end, cut to the forwarder's line limit.
    pub text: String,
}

/// Frames of a worker's log stream (worker to allocator only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrame {
    /// A line.
    Line(LogLine),
    /// The worker dropped this many lines since its last `Dropped` frame
    /// because its queue was full (the allocator was slower than the logs).
    Dropped {
        /// Lines dropped.
        count: u64,
    },
}

/// Where an envelope is going.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dest {
    /// An actor's mailbox.
    Actor(ActorId),
    /// A reply port: the payload is the reply.
    Port(PortId),
    /// A reply port whose ask failed after it was delivered (the asked actor
    /// failed or could not decode it): the payload is the reason, encoded as
    /// a string. Holding the port id is the right to answer it, so this needs
    /// no more authority than a reply.
    PortFailure(PortId),
    /// The proc itself: a [`SystemMsg`] such as a spawn request.
    Proc(ProcId),
}

impl Dest {
    /// The proc hosting the destination.
    pub fn proc_id(&self) -> &ProcId {
        match self {
            Dest::Actor(a) => &a.proc_id,
            Dest::Port(p) | Dest::PortFailure(p) => &p.actor_id.proc_id,
            Dest::Proc(p) => p,
        }
    }

    /// An upper bound on the encoded size of this destination.
    pub fn wire_size(&self) -> usize {
        1 + match self {
            Dest::Actor(a) => a.wire_size(),
            Dest::Port(p) | Dest::PortFailure(p) => p.wire_size(),
            Dest::Proc(p) => p.wire_size(),
        }
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Actor(a) => write!(f, "{a}"),
            Dest::Port(p) => write!(f, "{p}"),
            Dest::PortFailure(p) => write!(f, "{p} (failure)"),
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
    #[serde(with = "crate::wire::codec::byte_buf")]
    pub payload: Vec<u8>,
}

impl Envelope {
    /// An upper bound on this envelope's encoded size, ids included: what
    /// every queue charges for it, so a message with a long actor name costs
    /// what it weighs, not just its payload.
    pub fn wire_size(&self) -> usize {
        // Frame prefix, id, return port and payload length: at most 4 + 10 + 11 + 5.
        const FIXED: usize = 30;
        FIXED + self.from.wire_size() + self.to.wire_size() + self.payload.len()
    }
}

/// Whether an envelope that came back may still have reached its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Certainly not delivered: it never left the allocator, or the
    /// receiving side refused it explicitly, or that side's stream ended in
    /// order after acknowledging everything it delivered.
    NotDelivered,
    /// Possibly delivered: it was written towards the receiving worker, which
    /// was lost before acknowledging it. It may have reached the actor's
    /// mailbox, and even been handled, before the worker died.
    PossiblyDelivered,
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryStatus::NotDelivered => "not delivered",
            DeliveryStatus::PossiblyDelivered => "possibly delivered",
        })
    }
}

/// An envelope returned to its sender, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undeliverable {
    /// The envelope as it was sent.
    pub envelope: Envelope,
    /// Why it could not be delivered: proc failed, actor not found, connection lost, too large...
    pub reason: ReturnReason,
    /// Whether it certainly did not reach its actor, or may have.
    pub status: DeliveryStatus,
}

impl Undeliverable {
    /// An envelope that certainly did not reach its actor, returned because of `reason`.
    pub fn not_delivered(envelope: Envelope, reason: ReturnReason) -> Undeliverable {
        Undeliverable {
            envelope,
            reason,
            status: DeliveryStatus::NotDelivered,
        }
    }
}

/// Frames on a mailbox stream, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxFrame {
    /// A message for this proc (towards the worker) or from it (towards the allocator).
    Envelope(Envelope),
    /// Cumulative: this many `Envelope` frames received on this stream have been
    /// processed (delivered to their actor, or refused before this ack).
    Ack {
        /// Count of processed envelopes, from the start of the stream.
        processed: u64,
    },
    /// Allocator to worker only: an envelope this proc sent, returned to it.
    Undeliverable(Undeliverable),
    /// Worker to allocator only: the envelope at position `seq` on this
    /// stream (counting `Envelope` frames from 0) was not delivered.
    ///
    /// The worker names the envelope rather than sending it back: the
    /// allocator still holds it until it is acknowledged, returns its own
    /// copy, and so a worker can neither forge a return for an envelope it
    /// never received nor refuse one it already acknowledged.
    Refused {
        /// Position of the envelope among the `Envelope` frames of this stream.
        seq: u64,
        /// Why it could not be delivered.
        reason: ReturnReason,
    },
    /// Defines, or redefines, route `route` of this direction of the stream:
    /// later [`MailboxFrame::Routed`] frames naming it carry envelopes from
    /// `from` to `to`, so the ids travel once instead of in every envelope
    /// (docs/design.md §2.7; see [`crate::wire::routes`]). `route` must be
    /// below [`MAX_ROUTES`].
    Route {
        /// The route's number on this direction of the stream.
        route: u32,
        /// The sender of every envelope on the route.
        from: ActorId,
        /// Their destination.
        to: Dest,
    },
    /// An envelope sent over a route defined earlier in this direction of
    /// the stream; counts as an `Envelope` frame for acks and refusals.
    Routed(RoutedEnvelope),
}

/// Routes one direction of a mailbox stream may have defined at once.
///
/// Bounds what a peer can make the receiver keep: at most this many pairs
/// of ids (each id at most a few hundred bytes) per stream direction.
pub const MAX_ROUTES: u32 = 64;

/// An [`Envelope`] without its ids, which its route stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedEnvelope {
    /// The route, defined earlier by a [`MailboxFrame::Route`] frame.
    pub route: u32,
    /// As [`Envelope::id`].
    pub id: u64,
    /// As [`Envelope::return_port`].
    pub return_port: Option<u64>,
    /// As [`Envelope::payload`].
    #[serde(with = "crate::wire::codec::byte_buf")]
    pub payload: Vec<u8>,
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
        #[serde(with = "crate::wire::codec::byte_buf")]
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

/// A proc's occupancy, as `Client::proc_stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcStats {
    /// Actors hosted.
    pub actors: u32,
    /// Bytes queued in the proc's actor mailboxes and outbound queue.
    pub queued_bytes: u64,
    /// The most bytes any one of its queues ever held (each queue is bounded by the budget).
    pub peak_queued_bytes: u64,
}
