//! Checking the allocator's `Welcome` against this worker's own maxima.
//!
//! A worker admits its allocator's authority to command it, not its sanity:
//! an allocator may be buggy, misconfigured or taken over. Every value in a
//! `Welcome` ends up in a timer, in arithmetic or in an allocation size, so
//! each is checked here, with checked arithmetic, against bounds this worker
//! sets for itself. A value out of range is a protocol violation (the worker
//! exits 76 naming the field), never a panic, a busy loop or an unbounded
//! allocation.

use std::fmt;
use std::time::Duration;

use crate::config::{
    MAX_FRAME, MAX_MAILBOX_BYTES, MAX_PROCS_PER_WORKER, MIN_FRAME, MIN_MAILBOX_BYTES,
};
pub use crate::config::{
    MAX_HEARTBEAT_TIMEOUT, MAX_STOP_TIMEOUT, MIN_HEARTBEAT_INTERVAL, MIN_STOP_TIMEOUT,
};
use crate::wire::Welcome;

/// A `Welcome` value outside what this worker accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeError {
    /// The field, e.g. `heartbeat.interval`.
    pub field: &'static str,
    /// Its value as received.
    pub value: String,
    /// What this worker accepts.
    pub accepted: String,
}

impl fmt::Display for WelcomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Welcome field {} = {} is out of range (this worker accepts {})",
            self.field, self.value, self.accepted
        )
    }
}

impl std::error::Error for WelcomeError {}

fn out_of_range(
    field: &'static str,
    value: impl fmt::Debug,
    accepted: impl Into<String>,
) -> WelcomeError {
    WelcomeError {
        field,
        value: format!("{value:?}"),
        accepted: accepted.into(),
    }
}

/// Checks every value of `welcome`; returns the accepted settings or the
/// first field out of range.
///
/// The heartbeat bounds ([`MIN_HEARTBEAT_INTERVAL`], [`MAX_HEARTBEAT_TIMEOUT`])
/// are the ones an allocator checks its own configuration against.
pub fn check(welcome: &Welcome) -> Result<Welcome, WelcomeError> {
    let hb = &welcome.heartbeat;
    let max_interval = MAX_HEARTBEAT_TIMEOUT / 2;
    if hb.interval < MIN_HEARTBEAT_INTERVAL || hb.interval > max_interval {
        return Err(out_of_range(
            "heartbeat.interval",
            hb.interval,
            format!("{MIN_HEARTBEAT_INTERVAL:?} to {max_interval:?}"),
        ));
    }
    // Cannot overflow after the check above; checked all the same.
    let min_timeout = hb.interval.checked_mul(2).unwrap_or(Duration::MAX);
    if hb.timeout < min_timeout || hb.timeout > MAX_HEARTBEAT_TIMEOUT {
        return Err(out_of_range(
            "heartbeat.timeout",
            hb.timeout,
            format!("twice the interval ({min_timeout:?}) to {MAX_HEARTBEAT_TIMEOUT:?}"),
        ));
    }
    let limits = &welcome.limits;
    let in_range = |field, value: u32, min: u32, max: u32| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(out_of_range(field, value, format!("{min} to {max}")))
        }
    };
    in_range("limits.max_frame", limits.max_frame, MIN_FRAME, MAX_FRAME)?;
    in_range(
        "limits.mailbox_bytes",
        limits.mailbox_bytes,
        MIN_MAILBOX_BYTES,
        MAX_MAILBOX_BYTES,
    )?;
    in_range(
        "limits.max_procs_per_worker",
        limits.max_procs_per_worker,
        1,
        MAX_PROCS_PER_WORKER,
    )?;
    if !(MIN_STOP_TIMEOUT..=MAX_STOP_TIMEOUT).contains(&welcome.stop_timeout) {
        return Err(out_of_range(
            "stop_timeout",
            welcome.stop_timeout,
            format!("{MIN_STOP_TIMEOUT:?} to {MAX_STOP_TIMEOUT:?}"),
        ));
    }
    Ok(welcome.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeartbeatConfig, Limits};

    fn welcome() -> Welcome {
        Welcome {
            heartbeat: HeartbeatConfig::default(),
            limits: Limits::default(),
            stop_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_defaults_are_accepted_unchanged() {
        assert_eq!(check(&welcome()), Ok(welcome()));
    }

    #[test]
    fn each_absurd_value_is_refused_naming_its_field() {
        type Spoil<'a> = Box<dyn Fn(&mut Welcome) + 'a>;
        let secs = Duration::from_secs;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "heartbeat.interval",
                Box::new(|w| w.heartbeat.interval = Duration::MAX),
            ),
            (
                "heartbeat.interval",
                Box::new(|w| w.heartbeat.interval = secs(u64::MAX)),
            ),
            (
                "heartbeat.interval",
                Box::new(|w| w.heartbeat.interval = Duration::ZERO),
            ),
            (
                "heartbeat.interval",
                Box::new(|w| w.heartbeat.interval = Duration::from_nanos(1)),
            ),
            (
                "heartbeat.timeout",
                Box::new(|w| w.heartbeat.timeout = Duration::ZERO),
            ),
            (
                "heartbeat.timeout",
                Box::new(|w| w.heartbeat.timeout = Duration::MAX),
            ),
            (
                "heartbeat.timeout",
                Box::new(|w| w.heartbeat.timeout = secs(31)),
            ),
            (
                "limits.max_frame",
                Box::new(|w| w.limits.max_frame = u32::MAX),
            ),
            ("limits.max_frame", Box::new(|w| w.limits.max_frame = 0)),
            (
                "limits.mailbox_bytes",
                Box::new(|w| w.limits.mailbox_bytes = 0),
            ),
            (
                "limits.mailbox_bytes",
                Box::new(|w| w.limits.mailbox_bytes = u32::MAX),
            ),
            (
                "limits.max_procs_per_worker",
                Box::new(|w| w.limits.max_procs_per_worker = 0),
            ),
            (
                "limits.max_procs_per_worker",
                Box::new(|w| w.limits.max_procs_per_worker = u32::MAX),
            ),
            (
                "stop_timeout",
                Box::new(|w| w.stop_timeout = Duration::ZERO),
            ),
            ("stop_timeout", Box::new(|w| w.stop_timeout = Duration::MAX)),
        ];
        for (field, spoil) in cases {
            let mut w = welcome();
            spoil(&mut w);
            let err = check(&w).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(field) && text.contains("out of range"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let mut w = welcome();
        w.heartbeat = HeartbeatConfig {
            interval: MIN_HEARTBEAT_INTERVAL,
            timeout: MAX_HEARTBEAT_TIMEOUT,
        };
        w.limits = Limits {
            max_frame: MAX_FRAME,
            max_procs_per_worker: MAX_PROCS_PER_WORKER,
            mailbox_bytes: MIN_MAILBOX_BYTES,
        };
        assert!(check(&w).is_ok());
        w.heartbeat = HeartbeatConfig {
            interval: MAX_HEARTBEAT_TIMEOUT / 2,
            timeout: MAX_HEARTBEAT_TIMEOUT,
        };
        w.limits.max_frame = MIN_FRAME;
        w.limits.mailbox_bytes = MAX_MAILBOX_BYTES;
        w.limits.max_procs_per_worker = 1;
        assert!(check(&w).is_ok());
    }

    #[test]
    fn a_timeout_shorter_than_two_intervals_is_refused() {
        let mut w = welcome();
        w.heartbeat = HeartbeatConfig {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(999),
        };
        assert_eq!(check(&w).unwrap_err().field, "heartbeat.timeout");
    }
}
