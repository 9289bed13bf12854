//! Configuration: heartbeat and transport settings, and the names of the
//! worker's environment variables (read by [`crate::worker::WorkerSettings`]).
//!
//! Defaults follow the design: heartbeat every 250 ms, peer declared dead after
//! 1.5 s of silence, frames up to 16 MiB, connect timeout 5 s, Hello within 5 s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::link::{Congestion, LinkConfig};

/// Environment variable: `host:port` of the allocator.
pub const ENV_ALLOCATOR_ADDR: &str = "QUICMESH_ALLOCATOR_ADDR";
/// Environment variable: the name the allocator's certificate must carry
/// (optional for a worker, default [`DEFAULT_SERVER_NAME`]).
pub const ENV_SERVER_NAME: &str = "QUICMESH_SERVER_NAME";
/// Environment variable: this worker's index in the allocation.
pub const ENV_INDEX: &str = "QUICMESH_INDEX";
/// Environment variable: the secret issued by the allocator for this index.
pub const ENV_TOKEN: &str = "QUICMESH_TOKEN";
/// Environment variable: PEM path of the mesh CA.
pub const ENV_CA: &str = "QUICMESH_CA";
/// Environment variable: PEM path of this worker's certificate.
pub const ENV_CERT: &str = "QUICMESH_CERT";
/// Environment variable: PEM path of this worker's private key.
pub const ENV_KEY: &str = "QUICMESH_KEY";
/// Environment variable (optional): how long a worker keeps trying to join,
/// e.g. `30s`, `500ms`, `2m` or a number of seconds; default [`DEFAULT_JOIN_TIMEOUT`].
pub const ENV_JOIN_TIMEOUT: &str = "QUICMESH_JOIN_TIMEOUT";
/// Environment variable (optional): threads of a worker's tokio runtime.
pub const ENV_WORKER_THREADS: &str = "QUICMESH_WORKER_THREADS";
/// Environment variable (optional): how a worker lays out its threads,
/// `split` (default) or `shared` (see `worker::WorkerRuntime`).
pub const ENV_WORKER_RUNTIME: &str = "QUICMESH_WORKER_RUNTIME";
/// Environment variable (optional): the link setting of this worker's
/// connection, e.g. `wan` (see [`LinkConfig`]); default `lan`. The
/// allocator sets it for the workers it launches and in its join tickets.
pub const ENV_LINK: &str = "QUICMESH_LINK";
/// Environment variable (optional): the heartbeat interval this worker
/// expects, e.g. `250ms`. The allocator's value, sent in the Welcome, is the
/// one used (see `WorkerEnv::heartbeat`).
pub const ENV_HEARTBEAT_INTERVAL: &str = "QUICMESH_HEARTBEAT_INTERVAL";
/// Environment variable (optional): the heartbeat timeout this worker
/// expects, e.g. `1500ms`. The allocator's value, sent in the Welcome, is the
/// one used (see `WorkerEnv::heartbeat`).
pub const ENV_HEARTBEAT_TIMEOUT: &str = "QUICMESH_HEARTBEAT_TIMEOUT";
/// Environment variable (optional): `1` makes a worker read its settings as
/// `NAME=value` lines from its standard input (see the README, "Secrets
/// delivery"); what `quicmesh worker --secrets-stdin` does.
pub const ENV_SECRETS_STDIN: &str = "QUICMESH_SECRETS_STDIN";
/// Environment variable (optional): the name of the variable that holds this
/// worker's index within a group launch, e.g. `SLURM_PROCID` (see
/// [`ENGINE_INDEX_VARS`]). Used when [`ENV_INDEX`] is not set.
pub const ENV_INDEX_FROM: &str = "QUICMESH_INDEX_FROM";
/// Environment variable (optional): added to the index read through
/// [`ENV_INDEX_FROM`]: the allocation index of the group's first worker.
pub const ENV_INDEX_OFFSET: &str = "QUICMESH_INDEX_OFFSET";
/// Environment variable: the allocation secret of a group launch; a worker
/// derives its token from it and its index (used when [`ENV_TOKEN`] is not
/// set). A secret: deliver it like the token.
pub const ENV_GROUP_SECRET: &str = "QUICMESH_GROUP_SECRET";

/// The variables in which the engines people run give each copy of a
/// command its index: Slurm, a Kubernetes Indexed Job, Open MPI, MPICH/PMI.
pub const ENGINE_INDEX_VARS: [&str; 4] = [
    "SLURM_PROCID",
    "JOB_COMPLETION_INDEX",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
];

/// The name the allocator's certificate must carry when nothing says
/// otherwise: the development certificates are issued for it.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// How long a worker keeps trying to join when nothing says otherwise.
///
/// Long enough to ride out a burst of workers larger than the allocator's
/// handshake cap, a flood of strangers, or an allocator that starts a little
/// after its workers; short enough that a worker whose allocator is really
/// gone does not linger for long.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest join timeout accepted (a year): anything longer is a typo,
/// and keeping it bounded keeps deadline arithmetic far from overflow.
pub const MAX_JOIN_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A configuration value that is missing or unusable; names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required environment variable (or flag) is not set.
    #[error("{name} is not set")]
    Missing {
        /// The variable's name.
        name: &'static str,
    },
    /// A setting is present but its value cannot be used.
    #[error("{name}={value:?} is invalid: {problem}")]
    Invalid {
        /// The setting's name.
        name: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Shortest heartbeat interval either side accepts: shorter would have a
/// process spin sending datagrams instead of doing work.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1);

/// Longest heartbeat timeout either side accepts: half a worker's QUIC idle
/// timeout, so that heartbeats, not the idle timer, decide when a peer is
/// gone. (The timeout spans at least two intervals, which bounds the
/// interval to half of this.)
pub const MAX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often heartbeats are sent and how long silence means death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// Time between two heartbeats sent by each side.
    pub interval: Duration,
    /// Silence after which the peer is declared dead.
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(1500),
        }
    }
}

impl HeartbeatConfig {
    /// Heartbeats every `interval`, a peer dead after `timeout` of silence
    /// (checked when an allocator starts: see [`HeartbeatConfig::validate`]).
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        HeartbeatConfig { interval, timeout }
    }

    /// Checks that the interval is at least [`MIN_HEARTBEAT_INTERVAL`] and
    /// the timeout spans at least two intervals and at most
    /// [`MAX_HEARTBEAT_TIMEOUT`].
    ///
    /// A timeout shorter than two intervals would declare a peer dead after a
    /// single lost datagram, which ordinary packet loss makes routine. The
    /// bounds are the ones a worker applies to its allocator's Welcome, so an
    /// allocator refuses at start-up a setting every worker would refuse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, value: Duration, problem: String| ConfigError::Invalid {
            name,
            value: format!("{value:?}"),
            problem,
        };
        if self.interval < MIN_HEARTBEAT_INTERVAL {
            return Err(invalid(
                "heartbeat interval",
                self.interval,
                format!("must be at least {MIN_HEARTBEAT_INTERVAL:?}"),
            ));
        }
        // Checked: an interval near `Duration::MAX` must be refused, not overflow.
        let Some(two_intervals) = self.interval.checked_mul(2) else {
            return Err(invalid(
                "heartbeat interval",
                self.interval,
                "is too large".into(),
            ));
        };
        if self.timeout < two_intervals {
            return Err(invalid(
                "heartbeat timeout",
                self.timeout,
                format!("must be at least twice the interval ({:?})", self.interval),
            ));
        }
        if self.timeout > MAX_HEARTBEAT_TIMEOUT {
            return Err(invalid(
                "heartbeat timeout",
                self.timeout,
                format!("must be at most {MAX_HEARTBEAT_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }
}

/// Limits both sides enforce on what the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame body accepted on any stream, in bytes.
    pub max_frame: u32,
    /// Most procs one worker may host (also bounds its mailbox streams).
    pub max_procs_per_worker: u32,
    /// Byte budget of each mailbox queue: an actor's mailbox, a proc's
    /// outbound queue, and the allocator's undelivered envelopes per proc.
    pub mailbox_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 * 1024 * 1024,
            max_procs_per_worker: 1024,
            mailbox_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Largest frame limit a worker accepts: each frame is one allocation of
/// that size. Four times the default.
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Smallest frame limit: what is already allowed before admission, so every
/// control frame still fits.
pub const MIN_FRAME: u32 = MAX_PRE_ADMISSION_FRAME;

/// Largest byte budget of one queue: 1 GiB, 32 times the default.
pub const MAX_MAILBOX_BYTES: u32 = 1024 * 1024 * 1024;

/// Smallest byte budget of one queue. A zero budget would make every item
/// free, that is an unbounded queue.
pub const MIN_MAILBOX_BYTES: u32 = 1024;

/// Most procs a worker agrees to host; this also bounds its number of
/// mailbox streams and so its connection receive window.
pub const MAX_PROCS_PER_WORKER: u32 = 4096;

impl Limits {
    /// Checks each limit against the bounds every worker applies to its
    /// allocator's Welcome: the frame limit within [`MIN_FRAME`] to
    /// [`MAX_FRAME`], the queue budget within [`MIN_MAILBOX_BYTES`] to
    /// [`MAX_MAILBOX_BYTES`], 1 to [`MAX_PROCS_PER_WORKER`] procs.
    ///
    /// An allocator checks its own limits when it starts, so a setting every
    /// worker would refuse (exiting 76 right after joining) is refused once,
    /// at `Allocator::bind`, naming the limit.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the first limit out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |name, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    name,
                    value: value.to_string(),
                    problem: format!("must be {min} to {max}"),
                })
            }
        };
        check("limits.max_frame", self.max_frame, MIN_FRAME, MAX_FRAME)?;
        check(
            "limits.mailbox_bytes",
            self.mailbox_bytes,
            MIN_MAILBOX_BYTES,
            MAX_MAILBOX_BYTES,
        )?;
        check(
            "limits.max_procs_per_worker",
            self.max_procs_per_worker,
            1,
            MAX_PROCS_PER_WORKER,
        )
    }
}

/// Largest frame accepted before a peer has been admitted (Hello is small).
///
/// Until the Hello's token is checked the peer is only known to hold a
/// certificate of the mesh CA; it gets no more than this much memory.
pub(crate) const MAX_PRE_ADMISSION_FRAME: u32 = 64 * 1024;

/// QUIC connection receive window before the peer is admitted (both sides).
///
/// This is all the unread data a peer that has not yet been admitted (or,
/// for a worker, an allocator that has not yet sent its Welcome) can make us
/// buffer on the whole connection. Twice [`MAX_PRE_ADMISSION_FRAME`], so a
/// Hello or Welcome of the largest allowed size never waits for a window
/// update. It is raised once admitted, see
/// [`crate::transport::endpoint::fit_receive_window`].
pub(crate) const PRE_ADMISSION_RECEIVE_WINDOW: u32 = 2 * MAX_PRE_ADMISSION_FRAME;

/// Shortest stop timeout an allocator may give its workers: enough for a
/// proc's stop hooks and stream flush to have a chance at all.
pub const MIN_STOP_TIMEOUT: Duration = Duration::from_millis(100);

/// Longest stop timeout a worker accepts in `Welcome`; it keeps deadline
/// arithmetic far from overflow whatever an allocator sends.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Timeouts and bounds of the QUIC transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Longest a worker waits, in one attempt, for its connection to be
    /// established and welcomed (it retries until its join deadline).
    pub connect_timeout: Duration,
    /// Longest the allocator waits for a peer whose address is validated to
    /// complete TLS. Shorter than `hello_timeout`: until TLS completes the
    /// peer is a stranger that holds a handshake slot, so it gets little time.
    pub tls_timeout: Duration,
    /// Longest the allocator waits for a Hello once TLS is complete (the peer
    /// then holds a certificate of the mesh CA).
    pub hello_timeout: Duration,
    /// Longest an allocator waits for a worker to leave after `StopAndExit`.
    pub stop_timeout: Duration,
    /// Most handshakes (TLS and Hello) the allocator runs at once; more are
    /// refused and the workers retry. One source address may hold at most a
    /// quarter of them.
    pub max_pending_handshakes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(5),
            tls_timeout: Duration::from_secs(3),
            hello_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
        }
    }
}

impl TransportConfig {
    /// Most pending handshakes one source may hold: a quarter of
    /// `max_pending_handshakes`, at least one.
    ///
    /// A source is an IPv4 address or an IPv6 /64 (what one host usually
    /// controls). A quarter means no single host can keep the others out,
    /// while many workers behind one address (loopback, a NAT) still get in
    /// a quarter at a time, the rest by retrying.
    pub(crate) fn max_pending_per_source(&self) -> usize {
        (self.max_pending_handshakes / 4).max(1)
    }

    /// Checks that every timeout is positive and at least one handshake may run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("TLS timeout", self.tls_timeout),
            ("Hello timeout", self.hello_timeout),
            ("stop timeout", self.stop_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    name,
                    value: format!("{value:?}"),
                    problem: "must be positive".into(),
                });
            }
        }
        if !(MIN_STOP_TIMEOUT..=MAX_STOP_TIMEOUT).contains(&self.stop_timeout) {
            return Err(ConfigError::Invalid {
                name: "stop timeout",
                value: format!("{:?}", self.stop_timeout),
                problem: format!(
                    "must be {MIN_STOP_TIMEOUT:?} to {MAX_STOP_TIMEOUT:?} (workers refuse others)"
                ),
            });
        }
        if self.max_pending_handshakes == 0 {
            return Err(ConfigError::Invalid {
                name: "max pending handshakes",
                value: "0".into(),
                problem: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Parses a positive duration: a number with an optional unit, `ms`, `s` or
/// `m` (seconds when there is none), e.g. `500ms`, `30s`, `1.5`, `2m`.
///
/// Errors (as a sentence for [`ConfigError::Invalid`]): not a number, an
/// unknown unit, zero, or longer than [`MAX_JOIN_TIMEOUT`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| "expected a number with an optional unit, e.g. 30s or 500ms".to_string())?;
    let too_long = || format!("must be at most {} s", MAX_JOIN_TIMEOUT.as_secs());
    let duration = Duration::try_from_secs_f64(value * scale).map_err(|_| too_long())?;
    if duration.is_zero() {
        return Err("must be positive".into());
    }
    if duration > MAX_JOIN_TIMEOUT {
        return Err(too_long());
    }
    Ok(duration)
}

/// Splits `host:port` (IPv6 hosts in brackets) into host and port.
pub(crate) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_every_worker_would_refuse_are_refused_by_name() {
        let d = Limits::default();
        assert!(d.validate().is_ok());
        let cases = [
            (
                Limits {
                    max_frame: MIN_FRAME - 1,
                    ..d
                },
                "limits.max_frame",
            ),
            (
                Limits {
                    max_frame: MAX_FRAME + 1,
                    ..d
                },
                "limits.max_frame",
            ),
            (
                Limits {
                    mailbox_bytes: 0,
                    ..d
                },
                "limits.mailbox_bytes",
            ),
            (
                Limits {
                    max_procs_per_worker: 0,
                    ..d
                },
                "limits.max_procs_per_worker",
            ),
            (
                Limits {
                    max_procs_per_worker: MAX_PROCS_PER_WORKER + 1,
                    ..d
                },
                "limits.max_procs_per_worker",
            ),
        ];
        for (limits, name) in cases {
            let err = limits.validate().expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        // The bounds themselves are accepted.
        let edge = Limits {
            max_frame: MAX_FRAME,
            mailbox_bytes: MIN_MAILBOX_BYTES,
            max_procs_per_worker: MAX_PROCS_PER_WORKER,
        };
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("localhost:1"), Some(("localhost", 1)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", 443)));
        assert_eq!(split_host_port("::1:443"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[test]
    fn durations() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok(" 30s "), Duration::from_secs(30));
        assert_eq!(ok("1.5"), Duration::from_millis(1500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1 s"), Duration::from_secs(1));
        for bad in [
            "",
            "s",
            "0",
            "0ms",
            "-1",
            "1h",
            "1.2.3",
            "nan",
            "inf",
            "1e9",
            "9999999999",
            "1e400",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        let huge = "9".repeat(400);
        assert!(parse_duration(&huge).is_err());
    }

    #[test]
    fn transport_validation_and_source_share() {
        let mut t = TransportConfig::default();
        assert!(t.validate().is_ok());
        assert!(t.tls_timeout < t.hello_timeout);
        assert_eq!(t.max_pending_per_source(), 64);
        t.max_pending_handshakes = 3;
        assert_eq!(t.max_pending_per_source(), 1);
        t.max_pending_handshakes = 0;
        assert!(t.validate().is_err());
        let t = TransportConfig {
            tls_timeout: Duration::ZERO,
            ..TransportConfig::default()
        };
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TLS timeout"));
    }

    #[test]
    fn heartbeat_validation_never_overflows() {
        let huge = HeartbeatConfig {
            interval: Duration::MAX,
            timeout: Duration::MAX,
        };
        assert!(huge
            .validate()
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn heartbeat_bounds() {
        let hb = |interval, timeout| HeartbeatConfig { interval, timeout };
        let ms = Duration::from_millis;
        assert!(hb(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_TIMEOUT)
            .validate()
            .is_ok());
        assert!(hb(ms(0), ms(10)).validate().is_err());
        assert!(hb(Duration::from_micros(999), ms(10)).validate().is_err());
        let long = hb(ms(250), MAX_HEARTBEAT_TIMEOUT + ms(1)).validate();
        assert!(long.unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn heartbeat_validation() {
        assert!(HeartbeatConfig::default().validate().is_ok());
        let bad = HeartbeatConfig {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(600),
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heartbeat timeout"));
    }
}
