//! Why things end or come back: typed reasons a program can match on.
//!
//! Every reason prints as one readable line (its `Display`), so logs read as
//! before, and is a value a program can inspect: "heartbeat lost" and
//! "killed by signal 9" are different variants, not different strings. The
//! reasons that travel between processes (returns, refusals, proc and actor
//! failures a worker reports) are serde types; text inside them that a peer
//! chose is cut to a fixed length ([`Bounded::bounded`]) when it arrives.
//!
//! This module sits at the bottom with the ids: wire, actors and allocator
//! all use it.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{ActorId, PortId, ProcId};

/// Longest text kept inside a reason that came from a peer, in bytes.
pub(crate) const MAX_PEER_TEXT: usize = 256;

/// What a reason is charged in a queue budget: an upper bound on the
/// encoded size of a bounded reason (two ids and a bounded text).
pub(crate) const REASON_COST: usize = 2 * 300 + MAX_PEER_TEXT;

/// `text` cut to at most `max` bytes (on a character boundary, marked with `...`).
pub(crate) fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Reasons that may carry text a peer chose, and can be cut to a bound.
pub(crate) trait Bounded {
    /// The same reason with every text inside cut to [`MAX_PEER_TEXT`] bytes.
    fn bounded(self) -> Self;
}

fn cut(text: String) -> String {
    if text.len() <= MAX_PEER_TEXT {
        text
    } else {
        bounded_text(&text, MAX_PEER_TEXT)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitReport {
    /// It exited with this code (see [`crate::exit_code`]).
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Its status could not be collected.
    Unknown,
}

impl ExitReport {
    /// Whether the process exited with code 0.
    pub fn is_success(&self) -> bool {
        *self == ExitReport::Code(0)
    }
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

/// Why a proc failed (ended against plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureReason {
    /// No sign of life from its worker for the heartbeat timeout.
    HeartbeatLost,
    /// Its worker's connection ended (the transport's reason).
    ConnectionLost(String),
    /// Its worker's process ended (reaped by the launcher).
    WorkerExited(ExitReport),
    /// Its worker broke the protocol.
    ProtocolViolation(String),
    /// Its worker's control stream failed.
    ControlStream(String),
    /// A command could not be sent to its worker.
    SendFailed(String),
    /// Its worker did not leave within the stop timeout after being told to.
    StopTimeout,
    /// It left data waiting and took nothing off its stream for this long.
    Stalled {
        /// How long nothing moved.
        quiet: Duration,
        /// Bytes waiting for it then.
        waiting_bytes: u64,
    },
    /// It did not read the returns owed to it (more than `budget` bytes).
    ReturnsNotRead {
        /// The returns budget of a proc, in bytes.
        budget: u64,
    },
    /// Its mailbox stream failed (the transport's reason).
    MailboxStream(String),
    /// Its worker did not open its mailbox stream within this long.
    MailboxNotOpened(Duration),
    /// Its worker reported it failed, for this reason.
    ReportedByWorker(String),
    /// Its worker's certificate was revoked while it was connected (the
    /// allocator loaded a revocation list naming it); the text identifies
    /// the certificate.
    CertificateRevoked(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::HeartbeatLost => write!(f, "heartbeat lost"),
            FailureReason::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            FailureReason::WorkerExited(status @ ExitReport::Code(crate::exit_code::HEARTBEAT_LOST)) => {
                write!(f, "heartbeat lost (the worker {status})")
            }
            FailureReason::WorkerExited(status) => write!(f, "worker process {status}"),
            FailureReason::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
            FailureReason::ControlStream(e) => write!(f, "control stream failed: {e}"),
            FailureReason::SendFailed(what) => write!(f, "{what}"),
            FailureReason::StopTimeout => write!(f, "did not stop within the stop timeout"),
            FailureReason::Stalled {
                quiet,
                waiting_bytes,
            } => write!(
                f,
                "stalled: nothing acknowledged for {quiet:.1?} while {waiting_bytes} bytes waited for it"
            ),
            FailureReason::ReturnsNotRead { budget } => {
                write!(f, "more than {budget} bytes of returned messages not read")
            }
            FailureReason::MailboxStream(e) => write!(f, "mailbox stream failed: {e}"),
            FailureReason::MailboxNotOpened(within) => {
                write!(f, "mailbox stream not opened within {within:?}")
            }
            FailureReason::ReportedByWorker(why) => write!(f, "{why}"),
            FailureReason::CertificateRevoked(cert) => {
                write!(f, "certificate revoked: {cert}")
            }
        }
    }
}

impl Bounded for FailureReason {
    fn bounded(self) -> Self {
        match self {
            FailureReason::ConnectionLost(e) => FailureReason::ConnectionLost(cut(e)),
            FailureReason::ProtocolViolation(e) => FailureReason::ProtocolViolation(cut(e)),
            FailureReason::ControlStream(e) => FailureReason::ControlStream(cut(e)),
            FailureReason::SendFailed(e) => FailureReason::SendFailed(cut(e)),
            FailureReason::MailboxStream(e) => FailureReason::MailboxStream(cut(e)),
            FailureReason::ReportedByWorker(e) => FailureReason::ReportedByWorker(cut(e)),
            FailureReason::CertificateRevoked(e) => FailureReason::CertificateRevoked(cut(e)),
            other => other,
        }
    }
}

/// Why a proc stopped in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StopReason {
    /// Its worker stopped it and said why (e.g. "stopped on request").
    ReportedByWorker(String),
    /// Its worker left in order with this exit code, saying why.
    WorkerLeft {
        /// The exit code the worker announced.
        code: i32,
        /// Why it left (e.g. "StopAndExit(0) from the allocator", "SIGTERM").
        reason: String,
    },
    /// Its worker exited on an `Exit` command with this code.
    ExitedOnCommand(i32),
    /// The allocator shut down.
    AllocatorShutDown,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::ReportedByWorker(why) => write!(f, "{why}"),
            StopReason::WorkerLeft { code, reason } => write!(f, "{reason} (exit code {code})"),
            StopReason::ExitedOnCommand(code) => write!(f, "exited on command (code {code})"),
            StopReason::AllocatorShutDown => write!(f, "allocator shut down"),
        }
    }
}

impl Bounded for StopReason {
    fn bounded(self) -> Self {
        match self {
            StopReason::ReportedByWorker(e) => StopReason::ReportedByWorker(cut(e)),
            StopReason::WorkerLeft { code, reason } => StopReason::WorkerLeft {
                code,
                reason: cut(reason),
            },
            other => other,
        }
    }
}

/// How a proc (or a worker's session) ended: stopped in order, or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProcEnd {
    /// Stopped in order.
    Stopped(StopReason),
    /// Ended against plan.
    Failed(FailureReason),
}

impl ProcEnd {
    /// Whether it ended against plan.
    pub fn is_failure(&self) -> bool {
        matches!(self, ProcEnd::Failed(_))
    }
}

impl fmt::Display for ProcEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcEnd::Stopped(r) => write!(f, "{r}"),
            ProcEnd::Failed(r) => write!(f, "{r}"),
        }
    }
}

impl Bounded for ProcEnd {
    fn bounded(self) -> Self {
        match self {
            ProcEnd::Stopped(r) => ProcEnd::Stopped(r.bounded()),
            ProcEnd::Failed(r) => ProcEnd::Failed(r.bounded()),
        }
    }
}

/// Why an actor failed (and was stopped; its proc goes on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ActorFailure {
    /// Its start hook returned this error.
    StartFailed(String),
    /// Its start hook panicked with this message.
    StartPanicked(String),
    /// Its handler returned this error.
    HandlerError(String),
    /// Its handler panicked with this message.
    HandlerPanicked(String),
    /// Decoding one of its messages panicked with this message.
    DecodePanicked(String),
    /// Its `on_undeliverable` hook panicked with this message.
    UndeliverableHookPanicked(String),
    /// It did not stop within this long of being told to: its task was aborted.
    Aborted(Duration),
}

impl fmt::Display for ActorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorFailure::StartFailed(e) => write!(f, "start hook failed: {e}"),
            ActorFailure::StartPanicked(p) => write!(f, "start hook panicked: {p}"),
            ActorFailure::HandlerError(e) => write!(f, "handler error: {e}"),
            ActorFailure::HandlerPanicked(p) => write!(f, "handler panicked: {p}"),
            ActorFailure::DecodePanicked(p) => write!(f, "decoding a message panicked: {p}"),
            ActorFailure::UndeliverableHookPanicked(p) => {
                write!(f, "undeliverable hook panicked: {p}")
            }
            ActorFailure::Aborted(timeout) => write!(
                f,
                "did not stop within {timeout:?} of being told to: its task was aborted"
            ),
        }
    }
}

impl Bounded for ActorFailure {
    fn bounded(self) -> Self {
        match self {
            ActorFailure::StartFailed(e) => ActorFailure::StartFailed(cut(e)),
            ActorFailure::StartPanicked(e) => ActorFailure::StartPanicked(cut(e)),
            ActorFailure::HandlerError(e) => ActorFailure::HandlerError(cut(e)),
            ActorFailure::HandlerPanicked(e) => ActorFailure::HandlerPanicked(cut(e)),
            ActorFailure::DecodePanicked(e) => ActorFailure::DecodePanicked(cut(e)),
            ActorFailure::UndeliverableHookPanicked(e) => {
                ActorFailure::UndeliverableHookPanicked(cut(e))
            }
            other => other,
        }
    }
}

/// Why a message came back to its sender (or an `ask` failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReturnReason {
    /// No actor of that name and instance lives on its proc.
    ActorNotFound(ActorId),
    /// The actor stopped before the message reached it.
    ActorStopped(ActorId),
    /// The actor failed before or while handling the message.
    ActorFailed {
        /// The actor.
        actor: ActorId,
        /// What went wrong.
        failure: ActorFailure,
    },
    /// The reply port was closed (its ask was over) before the reply arrived.
    PortClosed(PortId),
    /// The message was for another proc than the one it reached.
    WrongProc(ProcId),
    /// No such proc in the allocation.
    UnknownProc(ProcId),
    /// The destination proc ended; the message was queued or in flight.
    ProcEnded {
        /// The proc.
        proc_id: ProcId,
        /// How it ended.
        end: ProcEnd,
    },
    /// The destination proc is closing (it will report how it ended).
    ProcClosing(ProcId),
    /// The message is larger than the frame limit.
    TooLarge {
        /// Encoded size in bytes.
        len: u64,
        /// The frame limit.
        max: u32,
    },
    /// The message could not be encoded.
    Unencodable(String),
    /// The message does not decode as its actor's message type.
    Undecodable {
        /// The registered name of the actor's type.
        actor_type: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// A request to a proc (spawn, stop, stats) that is not one.
    NotAProcRequest(String),
    /// A request from another proc to this proc, which the allocator does
    /// not allow (see `AllocatorConfig::remote_proc_requests`).
    RequestRefused {
        /// The proc the request came from.
        from: ProcId,
        /// The proc it was for.
        target: ProcId,
    },
    /// Its destination proc was full, and so were its sender's lines of
    /// messages waiting for full destinations (see `docs/design.md`).
    DestinationFull {
        /// The destination proc.
        destination: ProcId,
        /// Bytes of the sender's that were already waiting.
        parked_bytes: u64,
    },
    /// The message was returned, but it was too large to return whole: its
    /// payload was dropped; the reason it came back is inside.
    PayloadDropped(Box<ReturnReason>),
}

impl fmt::Display for ReturnReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReturnReason::ActorNotFound(a) => write!(f, "actor {a} not found"),
            ReturnReason::ActorStopped(a) => write!(f, "actor {a} stopped"),
            ReturnReason::ActorFailed { actor, failure } => {
                write!(f, "actor {actor} failed: {failure}")
            }
            ReturnReason::PortClosed(p) => write!(f, "port {p} is closed"),
            ReturnReason::WrongProc(p) => write!(f, "not for this proc ({p})"),
            ReturnReason::UnknownProc(p) => write!(f, "unknown proc {p}"),
            ReturnReason::ProcEnded { proc_id, end } => match end {
                ProcEnd::Stopped(r) => write!(f, "proc {proc_id} stopped: {r}"),
                ProcEnd::Failed(r) => write!(f, "proc {proc_id} failed: {r}"),
            },
            ReturnReason::ProcClosing(p) => write!(f, "proc {p} closed"),
            ReturnReason::TooLarge { len, max } => write!(
                f,
                "message too large: {len} bytes encoded, frame limit {max}"
            ),
            ReturnReason::Unencodable(e) => write!(f, "message cannot be encoded: {e}"),
            ReturnReason::Undecodable { actor_type, detail } => {
                write!(f, "message does not decode as {actor_type}: {detail}")
            }
            ReturnReason::NotAProcRequest(e) => write!(f, "not a proc request: {e}"),
            ReturnReason::RequestRefused { from, target } => write!(
                f,
                "refused: {from} may not send requests to proc {target} (remote proc requests are disabled by the allocator)"
            ),
            ReturnReason::DestinationFull {
                destination,
                parked_bytes,
            } => write!(
                f,
                "destination proc {destination} is full, and {parked_bytes} bytes of its sender's already wait for full destinations"
            ),
            ReturnReason::PayloadDropped(inner) => {
                write!(f, "{inner} (payload dropped: too large to return)")
            }
        }
    }
}

impl Bounded for ReturnReason {
    fn bounded(self) -> Self {
        match self {
            ReturnReason::ActorFailed { actor, failure } => ReturnReason::ActorFailed {
                actor,
                failure: failure.bounded(),
            },
            ReturnReason::ProcEnded { proc_id, end } => ReturnReason::ProcEnded {
                proc_id,
                end: end.bounded(),
            },
            ReturnReason::Unencodable(e) => ReturnReason::Unencodable(cut(e)),
            ReturnReason::Undecodable { actor_type, detail } => ReturnReason::Undecodable {
                actor_type: cut(actor_type),
                detail: cut(detail),
            },
            ReturnReason::NotAProcRequest(e) => ReturnReason::NotAProcRequest(cut(e)),
            // One level of nesting is all a return ever needs.
            ReturnReason::PayloadDropped(inner) => match *inner {
                ReturnReason::PayloadDropped(_) => ReturnReason::PayloadDropped(Box::new(
                    ReturnReason::Unencodable("nested return".into()),
                )),
                inner => ReturnReason::PayloadDropped(Box::new(inner.bounded())),
            },
            other => other,
        }
    }
}

/// Why a proc refused to spawn an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnRefusal {
    /// No actor type is registered under this name on that proc's binary.
    #[error("unknown actor type {actor_type:?} (registered: {})", registered.join(", "))]
    UnknownType {
        /// The name asked for.
        actor_type: String,
        /// The names that are registered.
        registered: Vec<String>,
    },
    /// The parameters do not decode as the type's parameters.
    #[error("parameters do not decode as those of {actor_type}: {detail}")]
    BadParams {
        /// The actor type.
        actor_type: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// Decoding the parameters panicked.
    #[error("decoding the parameters of {actor_type} panicked: {detail}")]
    ParamsPanicked {
        /// The actor type.
        actor_type: String,
        /// The panic message.
        detail: String,
    },
    /// The parameters could not be encoded by the asking side.
    #[error("cannot encode parameters: {0}")]
    Unencodable(String),
    /// The actor name is not 1-128 characters of `[A-Za-z0-9_-]`.
    #[error("invalid actor name {0:?}: use 1-128 characters of [A-Za-z0-9_-]")]
    InvalidName(String),
    /// An actor of that name already lives on the proc.
    #[error("actor {name} already exists on {proc_id}")]
    NameTaken {
        /// The name.
        name: String,
        /// The proc.
        proc_id: ProcId,
    },
    /// The type's constructor returned an error.
    #[error("{actor_type} constructor failed: {detail}")]
    ConstructorFailed {
        /// The actor type.
        actor_type: String,
        /// The constructor's error.
        detail: String,
    },
    /// The type's constructor panicked.
    #[error("{actor_type} constructor panicked: {detail}")]
    ConstructorPanicked {
        /// The actor type.
        actor_type: String,
        /// The panic message.
        detail: String,
    },
    /// The proc is stopping and starts no more actors.
    #[error("proc {0} is stopping")]
    ProcStopping(ProcId),
}

impl Bounded for SpawnRefusal {
    fn bounded(self) -> Self {
        match self {
            SpawnRefusal::UnknownType {
                actor_type,
                mut registered,
            } => {
                registered.truncate(64);
                SpawnRefusal::UnknownType {
                    actor_type: cut(actor_type),
                    registered: registered.into_iter().map(cut).collect(),
                }
            }
            SpawnRefusal::BadParams { actor_type, detail } => SpawnRefusal::BadParams {
                actor_type: cut(actor_type),
                detail: cut(detail),
            },
            SpawnRefusal::ParamsPanicked { actor_type, detail } => SpawnRefusal::ParamsPanicked {
                actor_type: cut(actor_type),
                detail: cut(detail),
            },
            SpawnRefusal::Unencodable(e) => SpawnRefusal::Unencodable(cut(e)),
            SpawnRefusal::InvalidName(n) => SpawnRefusal::InvalidName(cut(n)),
            SpawnRefusal::NameTaken { name, proc_id } => SpawnRefusal::NameTaken {
                name: cut(name),
                proc_id,
            },
            SpawnRefusal::ConstructorFailed { actor_type, detail } => {
                SpawnRefusal::ConstructorFailed {
                    actor_type: cut(actor_type),
                    detail: cut(detail),
                }
            }
            SpawnRefusal::ConstructorPanicked { actor_type, detail } => {
                SpawnRefusal::ConstructorPanicked {
                    actor_type: cut(actor_type),
                    detail: cut(detail),
                }
            }
            other => other,
        }
    }
}

/// Why a proc could not stop an actor as asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StopRefusal {
    /// No actor of that name lives on the proc.
    #[error("actor {name} not found on {proc_id}")]
    NotFound {
        /// The name.
        name: String,
        /// The proc.
        proc_id: ProcId,
    },
    /// The actor did not stop in time and was aborted (it is gone all the same).
    #[error("actor {actor} {}", ActorFailure::Aborted(*after))]
    Aborted {
        /// The actor.
        actor: ActorId,
        /// How long it was given.
        after: Duration,
    },
}

impl Bounded for StopRefusal {
    fn bounded(self) -> Self {
        match self {
            StopRefusal::NotFound { name, proc_id } => StopRefusal::NotFound {
                name: cut(name),
                proc_id,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_one_line_each() {
        let p = ProcId::new("m", 3);
        let a = p.actor("x", 0);
        let cases: Vec<(String, &str)> = vec![
            (FailureReason::HeartbeatLost.to_string(), "heartbeat lost"),
            (
                FailureReason::WorkerExited(ExitReport::Signal(9)).to_string(),
                "worker process killed by signal 9",
            ),
            (
                FailureReason::WorkerExited(ExitReport::Code(79)).to_string(),
                "heartbeat lost (the worker exited with code 79 (heartbeats lost))",
            ),
            (
                StopReason::WorkerLeft {
                    code: 0,
                    reason: "SIGTERM".into(),
                }
                .to_string(),
                "SIGTERM (exit code 0)",
            ),
            (
                ReturnReason::ActorNotFound(a.clone()).to_string(),
                "actor m[3].x[0] not found",
            ),
            (
                ReturnReason::ProcEnded {
                    proc_id: p.clone(),
                    end: ProcEnd::Failed(FailureReason::HeartbeatLost),
                }
                .to_string(),
                "proc m[3] failed: heartbeat lost",
            ),
            (
                ReturnReason::ActorFailed {
                    actor: a,
                    failure: ActorFailure::HandlerPanicked("boom".into()),
                }
                .to_string(),
                "actor m[3].x[0] failed: handler panicked: boom",
            ),
            (
                ReturnReason::TooLarge { len: 10, max: 5 }.to_string(),
                "message too large: 10 bytes encoded, frame limit 5",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn peer_text_is_bounded_and_nesting_flattened() {
        let long = "x".repeat(10_000);
        let r = ReturnReason::ProcEnded {
            proc_id: ProcId::new("m", 0),
            end: ProcEnd::Failed(FailureReason::ReportedByWorker(long.clone())),
        }
        .bounded();
        assert!(
            r.to_string().len() < MAX_PEER_TEXT + 64,
            "{}",
            r.to_string().len()
        );
        let nested = ReturnReason::PayloadDropped(Box::new(ReturnReason::PayloadDropped(
            Box::new(ReturnReason::Unencodable(long)),
        )))
        .bounded();
        assert!(nested.to_string().len() < MAX_PEER_TEXT + 128);
        let refusal = SpawnRefusal::UnknownType {
            actor_type: "t".into(),
            registered: vec!["x".repeat(1000); 1000],
        }
        .bounded();
        assert!(refusal.to_string().len() < 64 * (MAX_PEER_TEXT + 8) + 100);
    }
}
