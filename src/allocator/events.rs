//! What an allocator reports: proc states, workers joining, leaving and exiting.
//!
//! Events go out on a bounded channel. What strangers and misbehaving peers
//! cause (refused connections, rejected streams) is counted in
//! [`RefusalStats`] and reported as events at a limited rate
//! ([`Throttle`]), each event saying how many like it were not reported
//! since the previous one; reasons a peer can influence are cut to a fixed
//! length. A flood therefore costs a counter, not a queue.

use crate::tls::CertIdentity;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::id::{ActorId, ProcId};
use crate::reason::{ActorFailure, ExitReport, FailureReason, ProcEnd, StopReason};

/// Events kept for a reader that falls behind; older ones are dropped (and counted).
pub(crate) const EVENT_BACKLOG: usize = 4096;

/// The life of a proc as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcState {
    /// The allocator asked a worker to create the proc.
    Created,
    /// The worker created the proc and opened its mailbox stream.
    Running,
    /// The proc was stopped in order (command, SIGTERM of its worker...).
    Stopped {
        /// Why it stopped.
        reason: StopReason,
    },
    /// The proc is gone against plan: its worker was lost, crashed or misbehaved.
    Failed {
        /// What went wrong: heartbeat lost, connection lost, killed by a signal...
        reason: FailureReason,
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

    /// How a stopped or failed proc ended.
    pub fn end(&self) -> Option<ProcEnd> {
        match self {
            ProcState::Stopped { reason } => Some(ProcEnd::Stopped(reason.clone())),
            ProcState::Failed { reason } => Some(ProcEnd::Failed(reason.clone())),
            _ => None,
        }
    }

    /// The state a proc ends in.
    pub(crate) fn ended(end: ProcEnd) -> ProcState {
        match end {
            ProcEnd::Stopped(reason) => ProcState::Stopped { reason },
            ProcEnd::Failed(reason) => ProcState::Failed { reason },
        }
    }
}

/// Something that happened in an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
        /// The certificate it presented (verified by the TLS handshake;
        /// unlike `pid` and `host`, not chosen by the worker).
        identity: CertIdentity,
    },
    /// A connection was refused before admission (bad certificate, token, index, Hello...).
    WorkerRejected {
        /// The address it came from.
        addr: SocketAddr,
        /// Why, as told to the peer.
        reason: String,
        /// Refusals since the previous `WorkerRejected` event that were counted
        /// but not reported one by one (see [`RefusalStats`]).
        suppressed: u64,
    },
    /// An admitted worker's connection ended.
    WorkerLeft {
        /// Its index.
        index: u32,
        /// How: in order, or against plan (its procs were then reported failed).
        end: ProcEnd,
    },
    /// An actor failed (handler error or panic) and was stopped; its proc keeps running.
    ActorFailed {
        /// The actor.
        actor_id: ActorId,
        /// What went wrong.
        reason: ActorFailure,
    },
    /// A worker opened a mailbox stream that was refused (the worker's other procs are unaffected).
    MailboxRejected {
        /// The worker's index.
        worker: u32,
        /// Why.
        reason: String,
        /// Rejected streams since the previous `MailboxRejected` event that
        /// were counted but not reported one by one.
        suppressed: u64,
    },
    /// A launched worker process could not be started (the launch goes on
    /// with the others).
    LaunchFailed {
        /// Its index.
        index: u32,
        /// The OS error, with the program.
        reason: String,
    },
    /// A worker process launched by this allocator ended.
    ///
    /// Comes after the final state (stopped or failed) of each of the
    /// worker's procs and after its `WorkerLeft`, so a reader that stops at
    /// the last exit has seen how every proc ended. (The exit waits for the
    /// worker's session to end, at most the stop timeout plus 10 s; only a
    /// session stuck past that lets the exit go first, with a warning.)
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
                match state.end() {
                    Some(end) => write!(f, ": {end}"),
                    None => Ok(()),
                }
            }
            AllocEvent::WorkerJoined {
                index,
                pid,
                host,
                addr,
                identity,
            } => {
                write!(
                    f,
                    "worker {index} joined (pid {pid} on {host}, from {addr}, certificate {identity})"
                )
            }
            AllocEvent::WorkerRejected {
                addr,
                reason,
                suppressed,
            } => {
                write!(f, "connection from {addr} rejected: {reason}")?;
                more_not_reported(f, *suppressed, "refusals")
            }
            AllocEvent::WorkerLeft { index, end } => {
                let how = if end.is_failure() { "lost" } else { "left" };
                write!(f, "worker {index} {how}: {end}")
            }
            AllocEvent::WorkerExited { index, status } => write!(f, "worker {index} {status}"),
            AllocEvent::LaunchFailed { index, reason } => {
                write!(f, "worker {index} could not be started: {reason}")
            }
            AllocEvent::ActorFailed { actor_id, reason } => {
                write!(f, "actor {actor_id} failed: {reason}")
            }
            AllocEvent::MailboxRejected {
                worker,
                reason,
                suppressed,
            } => {
                write!(f, "worker {worker}: mailbox stream rejected: {reason}")?;
                more_not_reported(f, *suppressed, "stream rejections")
            }
        }
    }
}

/// Appends "(N more ... not reported)" when `n` is not zero.
fn more_not_reported(f: &mut fmt::Formatter<'_>, n: u64, what: &str) -> fmt::Result {
    if n > 0 {
        write!(f, " ({n} more {what} not reported)")?;
    }
    Ok(())
}

impl AllocEvent {
    /// Logs the event, once, at a level that fits it.
    pub(crate) fn log(&self) {
        match self {
            AllocEvent::Proc {
                state: ProcState::Failed { .. },
                ..
            }
            | AllocEvent::ActorFailed { .. }
            | AllocEvent::WorkerRejected { .. }
            | AllocEvent::LaunchFailed { .. }
            | AllocEvent::MailboxRejected { .. } => tracing::warn!("{self}"),
            AllocEvent::WorkerLeft { end, .. } if end.is_failure() => tracing::warn!("{self}"),
            AllocEvent::WorkerExited { status, .. } if !matches!(status, ExitReport::Code(0)) => {
                tracing::warn!("{self}")
            }
            _ => tracing::info!("{self}"),
        }
    }
}

/// A subscription to an allocator's events: each subscriber sees every
/// event from when it subscribed, in order.
///
/// Events wait in a bounded backlog (4096); a subscriber that falls further
/// behind loses the oldest ones and is told how many ([`Events::lost`]).
/// The states they report stay available from the allocator itself
/// (`proc_state`, `exit_status`).
pub struct Events {
    rx: broadcast::Receiver<AllocEvent>,
    lost: u64,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<AllocEvent>) -> Self {
        Events { rx, lost: 0 }
    }

    /// The next event; `None` once the allocator has been dropped.
    pub async fn next(&mut self) -> Option<AllocEvent> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// An event if one is waiting now.
    pub fn try_next(&mut self) -> Option<AllocEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost += n,
                Err(_) => return None,
            }
        }
    }

    /// Events this subscriber lost by falling too far behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// Why a connection was refused before admission, as a fixed list: what
/// the metrics count by (a peer cannot add a label by choosing its words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// Every handshake slot (or every slot for its source address) was taken.
    Busy,
    /// The TLS handshake failed (no or untrusted certificate, wrong ALPN...).
    TlsFailed,
    /// The TLS handshake did not complete in time.
    TlsTimeout,
    /// The peer's certificate is on the revocation list.
    Revoked,
    /// The peer does not accept datagrams, so heartbeats are impossible.
    NoDatagrams,
    /// No Hello arrived in time after the handshake.
    HelloTimeout,
    /// The connection or control stream failed before the Hello.
    LostBeforeHello,
    /// The first frame was not a valid Hello (or no client certificate showed up).
    BadHello,
    /// The Hello named another protocol version.
    ProtocolVersion,
    /// The Hello named a worker index that was never reserved.
    UnknownIndex,
    /// The token was not the one issued for the index.
    BadToken,
    /// Another connection already holds the index.
    DuplicateIndex,
    /// The index joined before and has left.
    IndexFinished,
}

impl RefusalKind {
    /// Every kind, in order.
    pub const ALL: [RefusalKind; 13] = [
        RefusalKind::Busy,
        RefusalKind::TlsFailed,
        RefusalKind::TlsTimeout,
        RefusalKind::Revoked,
        RefusalKind::NoDatagrams,
        RefusalKind::HelloTimeout,
        RefusalKind::LostBeforeHello,
        RefusalKind::BadHello,
        RefusalKind::ProtocolVersion,
        RefusalKind::UnknownIndex,
        RefusalKind::BadToken,
        RefusalKind::DuplicateIndex,
        RefusalKind::IndexFinished,
    ];

    /// The kind's name in metrics (`reason="..."`): lower case, underscores.
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::Busy => "busy",
            RefusalKind::TlsFailed => "tls_failed",
            RefusalKind::TlsTimeout => "tls_timeout",
            RefusalKind::Revoked => "revoked",
            RefusalKind::NoDatagrams => "no_datagrams",
            RefusalKind::HelloTimeout => "hello_timeout",
            RefusalKind::LostBeforeHello => "lost_before_hello",
            RefusalKind::BadHello => "bad_hello",
            RefusalKind::ProtocolVersion => "protocol_version",
            RefusalKind::UnknownIndex => "unknown_index",
            RefusalKind::BadToken => "bad_token",
            RefusalKind::DuplicateIndex => "duplicate_index",
            RefusalKind::IndexFinished => "index_finished",
        }
    }
}

/// Counts of what was refused, with the last reason of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusalStats {
    /// Connections refused or dropped before admission.
    pub connections: u64,
    /// The same connections, by why (each kind counted since the start).
    pub connections_by_kind: std::collections::BTreeMap<RefusalKind, u64>,
    /// The reason of the last refused connection.
    pub last_connection_reason: Option<String>,
    /// Mailbox streams rejected (admitted workers opening streams wrongly).
    pub streams: u64,
    /// The reason of the last rejected stream.
    pub last_stream_reason: Option<String>,
}

/// Limits how often something is reported: at most `max` times per window,
/// counting what was left out.
#[derive(Debug, Clone)]
pub(crate) struct Throttle {
    window: Duration,
    max: u32,
    started: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Throttle {
    /// At most `max` reports per `window`.
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Throttle {
            window,
            max,
            started: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether to report one more at `now`: `Some(n)` with the number left
    /// out since the last report, `None` to leave this one out.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.started {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.window,
        };
        if fresh {
            self.started = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.max {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_reports_a_few_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = Throttle::new(3, Duration::from_secs(1));
        let admitted: Vec<Option<u64>> = (0..10).map(|_| t.admit(t0)).collect();
        assert_eq!(&admitted[..4], &[Some(0), Some(0), Some(0), None]);
        assert_eq!(admitted.iter().filter(|a| a.is_none()).count(), 7);
        assert_eq!(t.admit(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(8));
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn suppressed_counts_show_in_the_event_text() {
        let e = AllocEvent::WorkerRejected {
            addr: "127.0.0.1:1".parse().unwrap(),
            reason: "bad token".into(),
            suppressed: 41,
        };
        assert_eq!(
            e.to_string(),
            "connection from 127.0.0.1:1 rejected: bad token (41 more refusals not reported)"
        );
    }
}
