//! The worker's queue of log lines waiting for the log stream.
//!
//! Logging must never block the code that logs, and a worker whose
//! allocator reads slowly must not buffer without bound. So the queue holds
//! at most a fixed number of lines; a line pushed into a full queue is
//! dropped and counted, and the count travels to the allocator with the next
//! batch (`LogFrame::Dropped`). Sans-IO: the forwarder task and the tap
//! (`crate::logging`) share it behind a mutex.

use std::collections::VecDeque;

use crate::wire::LogLine;

/// Most lines a worker holds for its log stream.
pub(crate) const LOG_QUEUE_LINES: usize = 1024;

/// A bounded queue of lines that drops (and counts) what does not fit.
#[derive(Debug)]
pub(crate) struct LogQueue {
    lines: VecDeque<LogLine>,
    capacity: usize,
    /// Dropped since the last [`LogQueue::take`].
    dropped: u64,
}

impl LogQueue {
    /// A queue of at most `capacity` lines.
    pub(crate) fn new(capacity: usize) -> LogQueue {
        LogQueue {
            lines: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Queues `line`; returns `false` (and counts it) if the queue is full.
    pub(crate) fn push(&mut self, line: LogLine) -> bool {
        if self.lines.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        self.lines.push_back(line);
        true
    }

    /// Up to `max` lines, oldest first, and the lines dropped since the last take.
    pub(crate) fn take(&mut self, max: usize) -> (Vec<LogLine>, u64) {
        let n = max.min(self.lines.len());
        let lines = self.lines.drain(..n).collect();
        (lines, std::mem::take(&mut self.dropped))
    }

    /// Whether nothing waits (no line, no drop to report).
    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }

    /// Forgets what waits (the stream is gone), keeping the totals.
    pub(crate) fn clear(&mut self) {
        self.lines.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{LogLevel, LogSource};

    fn line(i: usize) -> LogLine {
        LogLine {
            level: LogLevel::Info,
            source: LogSource::Stdout,
            target: String::new(),
            text: format!("line {i}"),
        }
    }

    #[test]
    fn a_full_queue_drops_new_lines_and_counts_them() {
        let mut q = LogQueue::new(3);
        let pushed: Vec<bool> = (0..5).map(|i| q.push(line(i))).collect();
        assert_eq!(pushed, [true, true, true, false, false]);
        let (lines, dropped) = q.take(10);
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["line 0", "line 1", "line 2"]
        );
        assert_eq!(dropped, 2);
        // The count is reported once.
        assert_eq!(q.take(10), (vec![], 0));
        assert!(q.is_empty());
    }

    #[test]
    fn take_hands_out_batches_in_order() {
        let mut q = LogQueue::new(10);
        for i in 0..5 {
            q.push(line(i));
        }
        assert_eq!(q.take(2).0, vec![line(0), line(1)]);
        assert_eq!(q.take(2).0, vec![line(2), line(3)]);
        assert!(!q.is_empty());
        q.clear();
        assert!(q.is_empty());
        // Room again after taking.
        assert!(q.push(line(9)));
    }
}
