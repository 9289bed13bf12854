//! Workers' log lines, as the controller receives them (docs/design.md §2.12).
//!
//! Each worker forwards its log lines on a stream of its own
//! (`StreamOpen::Logs`). [`serve_log_stream`] reads it, charged to that
//! worker: frames of at most [`MAX_LOG_FRAME`] bytes, at most
//! [`LOG_LINES_PER_SECOND`] lines a second (the rest dropped and counted),
//! every text cut to one line of bounded size. A stream that sends anything
//! else is rejected (stopped, counted with the refusals); the worker's
//! connection and procs are not touched. Accepted lines go to every
//! [`Logs`] subscriber and, unless the configuration says otherwise, are
//! printed as `[worker N host] ...`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::events::Throttle;
use super::Shared;
use crate::line_cut::{cut_line, MAX_LINE};
use crate::sync::lock;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, LogFrame, LogLevel, LogSource};

/// Largest frame accepted on a log stream.
pub(crate) const MAX_LOG_FRAME: u32 = 16 * 1024;

/// Most lines accepted from one worker per second; more are dropped and counted.
pub(crate) const LOG_LINES_PER_SECOND: u32 = 2000;

/// Lines a [`Logs`] subscriber may fall behind before it loses the oldest.
pub(crate) const LOG_BACKLOG: usize = 4096;

/// Longest host name kept for a worker's lines.
const MAX_HOST: usize = 64;

/// Longest target kept.
const MAX_TARGET: usize = 128;

/// One line a worker logged or printed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogRecord {
    /// The worker's index.
    pub worker: u32,
    /// The host the worker said it runs on (cut to 64 bytes).
    pub host: String,
    /// The line's level (`Info` for stdout and stderr lines).
    pub level: LogLevel,
    /// Where the line came from in the worker.
    pub source: LogSource,
    /// The `tracing` target, empty for stdout and stderr lines.
    pub target: String,
    /// The text: one line, no control characters, at most 4096 bytes and a
    /// marker if it was cut.
    pub text: String,
}

impl std::fmt::Display for LogRecord {
    /// `[worker N host] LEVEL target: text` for `tracing` events,
    /// `[worker N host] text` for stdout and stderr lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[worker {} {}] ", self.worker, self.host)?;
        if self.source == LogSource::Tracing {
            write!(f, "{} ", self.level.word())?;
            if !self.target.is_empty() {
                write!(f, "{}: ", self.target)?;
            }
        }
        f.write_str(&self.text)
    }
}

/// A subscription to every worker's log lines (`Allocator::logs`).
///
/// Lines wait in a bounded backlog (4096); a subscriber that falls further
/// behind loses the oldest and is told how many ([`Logs::lost`]).
pub struct Logs {
    rx: broadcast::Receiver<LogRecord>,
    lost: u64,
}

impl Logs {
    pub(crate) fn new(rx: broadcast::Receiver<LogRecord>) -> Logs {
        Logs { rx, lost: 0 }
    }

    /// The next line; `None` once the allocator has been dropped.
    pub async fn next(&mut self) -> Option<LogRecord> {
        loop {
            match self.rx.recv().await {
                Ok(r) => return Some(r),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lost += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Lines this subscriber lost by falling too far behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

/// Counts of one worker's forwarded lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LogCounts {
    /// Lines accepted.
    pub(crate) lines: u64,
    /// Lines the worker reported it dropped (its queue was full).
    pub(crate) dropped_by_worker: u64,
    /// Lines the allocator dropped (over the rate limit).
    pub(crate) dropped_by_allocator: u64,
}

/// The log lines' channel and the counts per worker.
pub(crate) struct LogHub {
    tx: broadcast::Sender<LogRecord>,
    counts: std::sync::Mutex<HashMap<u32, LogCounts>>,
}

impl LogHub {
    pub(crate) fn new() -> LogHub {
        LogHub {
            tx: broadcast::channel(LOG_BACKLOG).0,
            counts: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> Logs {
        Logs::new(self.tx.subscribe())
    }

    /// The counts of every worker that opened a log stream.
    pub(crate) fn counts(&self) -> HashMap<u32, LogCounts> {
        lock(&self.counts).clone()
    }

    fn count(&self, worker: u32, f: impl FnOnce(&mut LogCounts)) {
        f(lock(&self.counts).entry(worker).or_default());
    }
}

/// Per-worker rate limit of accepted lines (sans-IO).
pub(crate) struct LineRate(Throttle);

impl LineRate {
    pub(crate) fn new(per_second: u32) -> LineRate {
        LineRate(Throttle::new(per_second, Duration::from_secs(1)))
    }

    /// Whether one more line may pass at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        self.0.admit(now).is_some()
    }
}

/// Reads worker `index`'s log stream until it ends or breaks. The
/// allocator writes nothing on `send`; it is kept to refuse the stream with
/// the `PROTOCOL` code both ways.
pub(crate) async fn serve_log_stream(
    shared: Arc<Shared>,
    index: u32,
    host: String,
    mut send: FramedSend,
    mut recv: FramedRecv,
) {
    recv.set_max_frame(MAX_LOG_FRAME);
    let host = cut_line(&host, MAX_HOST);
    let hub = &shared.logs;
    let mut rate = LineRate::new(LOG_LINES_PER_SECOND);
    hub.count(index, |_| {});
    loop {
        match recv.next::<LogFrame>().await {
            Ok(Some(LogFrame::Line(line))) => {
                if !rate.admit(Instant::now()) {
                    hub.count(index, |c| c.dropped_by_allocator += 1);
                    continue;
                }
                hub.count(index, |c| c.lines += 1);
                let record = LogRecord {
                    worker: index,
                    host: host.clone(),
                    level: line.level,
                    source: line.source,
                    target: cut_line(&line.target, MAX_TARGET),
                    text: cut_line(&line.text, MAX_LINE),
                };
                let _ = hub.tx.send(record);
            }
            Ok(Some(LogFrame::Dropped { count })) => {
                hub.count(index, |c| {
                    c.dropped_by_worker = c.dropped_by_worker.saturating_add(count)
                });
            }
            Ok(None) => return,
            Err(StreamError::Read(_)) => return,
            Err(e) => {
                send.reset(close::PROTOCOL);
                recv.stop(close::PROTOCOL);
                shared.stream_rejected(index, format!("log stream: {e}"));
                return;
            }
        }
    }
}

/// Prints every worker's lines, each whole in one write: `tracing` events
/// and stderr lines on stderr, stdout lines on stdout.
pub(crate) async fn print_lines(mut logs: Logs) {
    while let Some(record) = logs.next().await {
        let line = format!("{record}\n");
        let _ = match record.source {
            LogSource::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            _ => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_admits_a_fixed_number_per_second() {
        let t0 = Instant::now();
        let mut rate = LineRate::new(5);
        let admitted = (0..20).filter(|_| rate.admit(t0)).count();
        assert_eq!(admitted, 5);
        assert!(!rate.admit(t0 + Duration::from_millis(900)));
        assert!(rate.admit(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn records_print_with_worker_and_host() {
        let mut r = LogRecord {
            worker: 3,
            host: "node7".into(),
            level: LogLevel::Warn,
            source: LogSource::Tracing,
            target: "app::job".into(),
            text: "slow disk".into(),
        };
        assert_eq!(r.to_string(), "[worker 3 node7] WARN app::job: slow disk");
        r.source = LogSource::Stdout;
        assert_eq!(r.to_string(), "[worker 3 node7] slow disk");
    }
}
