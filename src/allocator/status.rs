//! The status table: one compact row per worker, as data
//! (`Allocator::status`) and as text (`quicmesh demo --metrics`).

use std::fmt;
use std::time::Duration;

use super::metrics::Metrics;

/// One worker's row of the status table.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Its index.
    pub index: u32,
    /// Its host, once it joined.
    pub host: Option<String>,
    /// `waiting`, `connected` or `left`.
    pub state: &'static str,
    /// Its connection's round trip, while connected.
    pub rtt: Option<Duration>,
    /// Its procs that have not ended.
    pub procs: u32,
    /// Bytes queued or in flight towards its procs.
    pub queued_bytes: u64,
}

/// The rows of `metrics`, by index.
pub(crate) fn table(metrics: &Metrics) -> Vec<WorkerStatus> {
    metrics
        .workers
        .iter()
        .map(|w| WorkerStatus {
            index: w.index,
            host: w.host.clone(),
            state: w.state,
            rtt: w.rtt,
            procs: w.live_procs,
            queued_bytes: w.queued_bytes,
        })
        .collect()
}

impl WorkerStatus {
    /// The header line matching [`WorkerStatus`]'s `Display`.
    pub fn header() -> &'static str {
        "worker  host                  state      rtt        procs  queued"
    }
}

impl fmt::Display for WorkerStatus {
    /// One fixed-width line: index, host, state, rtt, procs, queued bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.as_deref().unwrap_or("-");
        let host: String = host.chars().take(20).collect();
        let rtt = match self.rtt {
            Some(r) => format!("{:.2}ms", r.as_secs_f64() * 1e3),
            None => "-".into(),
        };
        write!(
            f,
            "{:<7} {:<21} {:<10} {:<10} {:<6} {}",
            self.index, host, self.state, rtt, self.procs, self.queued_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_lines_up_with_the_header() {
        let row = WorkerStatus {
            index: 12,
            host: Some("a-very-long-host-name-indeed".into()),
            state: "connected",
            rtt: Some(Duration::from_micros(1500)),
            procs: 3,
            queued_bytes: 4096,
        };
        let line = row.to_string();
        assert_eq!(
            line,
            "12      a-very-long-host-nam  connected  1.50ms     3      4096"
        );
        let header = WorkerStatus::header();
        assert_eq!(line.find("connected"), header.find("state"));
        assert_eq!(line.find("4096"), header.find("queued"));
    }
}
