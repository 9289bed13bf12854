//! What an allocator reports: proc states, workers joining, leaving and exiting.
//!
//! Events go out on a bounded channel. What strangers and misbehaving peers
//! cause (refused connections, rejected streams) is counted in
//! [`RefusalStats`] and reported as events at a limited rate
//! ([`Throttle`]), each event saying how many like it were not reported
//! since the previous one; reasons a peer can influence are cut to a fixed
//! length. A flood therefore costs a counter, not a queue.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

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
        /// Refusals since the previous `WorkerRejected` event that were counted
        /// but not reported one by one (see [`RefusalStats`]).
        suppressed: u64,
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
        /// Rejected streams since the previous `MailboxRejected` event that
        /// were counted but not reported one by one.
        suppressed: u64,
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
            AllocEvent::WorkerRejected {
                addr,
                reason,
                suppressed,
            } => {
                write!(f, "connection from {addr} rejected: {reason}")?;
                more_not_reported(f, *suppressed, "refusals")
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

/// Counts of what was refused, with the last reason of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalStats {
    /// Connections refused or dropped before admission.
    pub connections: u64,
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
