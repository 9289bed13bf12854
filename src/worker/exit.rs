//! How a worker's run ends: which exit code, and the one line that says why.
//!
//! Mapping a connection error to an exit code is plain code, tested without
//! sockets, so that "rejected" (77) is never confused with "unreachable" (69)
//! or "connection lost" (75).

use std::fmt;

use quinn::ConnectionError;

use crate::exit_code;
use crate::wire::close;

/// The end of a worker's run: its exit code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    /// The process exit code (see [`crate::exit_code`]).
    pub code: i32,
    /// One line saying why, for the log.
    pub reason: String,
}

impl WorkerExit {
    /// An exit with `code` because of `reason`.
    pub fn new(code: i32, reason: impl Into<String>) -> Self {
        WorkerExit {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {} ({}): {}",
            self.code,
            exit_code::describe(self.code),
            self.reason
        )
    }
}

fn reason_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit for a connection that ended before the allocator welcomed us.
///
/// An application close with code REJECTED or REVOKED is a rejection (77);
/// anything else, a TLS alert included, means the handshake failed (69).
pub fn before_welcome(err: &ConnectionError) -> WorkerExit {
    match err {
        ConnectionError::ApplicationClosed(c)
            if c.error_code == close::REJECTED || c.error_code == close::REVOKED =>
        {
            WorkerExit::new(
                exit_code::REJECTED,
                format!("rejected by the allocator: {}", reason_text(&c.reason)),
            )
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == close::PROTOCOL => {
            WorkerExit::new(
                exit_code::PROTOCOL,
                format!(
                    "allocator reports a protocol violation: {}",
                    reason_text(&c.reason)
                ),
            )
        }
        ConnectionError::ConnectionClosed(c) => WorkerExit::new(
            exit_code::UNREACHABLE,
            format!("handshake failed, allocator closed the connection: {c}"),
        ),
        other => WorkerExit::new(
            exit_code::UNREACHABLE,
            format!("handshake with the allocator failed: {other}"),
        ),
    }
}

/// The exit for a connection that ended after we were welcomed.
pub fn after_welcome(err: &ConnectionError) -> WorkerExit {
    match err {
        ConnectionError::ApplicationClosed(c) => {
            let reason = reason_text(&c.reason);
            let code = c.error_code;
            if code == close::HEARTBEAT_LOST {
                WorkerExit::new(
                    exit_code::HEARTBEAT_LOST,
                    format!("allocator stopped hearing our heartbeats: {reason}"),
                )
            } else if code == close::PROTOCOL {
                WorkerExit::new(
                    exit_code::PROTOCOL,
                    format!("allocator reports a protocol violation: {reason}"),
                )
            } else if code == close::REJECTED || code == close::REVOKED {
                // REVOKED's reason says "certificate revoked: <which>".
                WorkerExit::new(
                    exit_code::REJECTED,
                    format!("rejected by the allocator: {reason}"),
                )
            } else {
                WorkerExit::new(
                    exit_code::CONNECTION_LOST,
                    format!("allocator closed the connection (code {code}): {reason}"),
                )
            }
        }
        other => WorkerExit::new(
            exit_code::CONNECTION_LOST,
            format!("connection to the allocator lost: {other}"),
        ),
    }
}

/// A connection closed by the peer with `code` and `reason` (for tests).
#[cfg(test)]
pub(super) fn app(code: quinn::VarInt, reason: &str) -> ConnectionError {
    ConnectionError::ApplicationClosed(quinn::ApplicationClose {
        error_code: code,
        reason: reason.as_bytes().to_vec().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_is_77_with_the_allocators_reason() {
        let e = before_welcome(&app(close::REJECTED, "bad token for index 2"));
        assert_eq!(e.code, exit_code::REJECTED);
        assert!(e.reason.contains("bad token for index 2"));
    }

    #[test]
    fn other_failures_before_welcome_are_69() {
        assert_eq!(
            before_welcome(&ConnectionError::TimedOut).code,
            exit_code::UNREACHABLE
        );
        assert_eq!(
            before_welcome(&ConnectionError::Reset).code,
            exit_code::UNREACHABLE
        );
    }

    #[test]
    fn a_revoked_certificate_is_a_rejection_with_the_reason() {
        let why = "certificate revoked: CN=node-a sha256:00";
        for exit in [
            before_welcome(&app(close::REVOKED, why)),
            after_welcome(&app(close::REVOKED, why)),
        ] {
            assert_eq!(exit.code, exit_code::REJECTED);
            assert!(exit.to_string().contains(why), "{exit}");
        }
    }

    #[test]
    fn after_welcome_codes() {
        assert_eq!(
            after_welcome(&app(close::HEARTBEAT_LOST, "x")).code,
            exit_code::HEARTBEAT_LOST
        );
        assert_eq!(
            after_welcome(&app(close::PROTOCOL, "x")).code,
            exit_code::PROTOCOL
        );
        assert_eq!(
            after_welcome(&app(close::SHUTDOWN, "bye")).code,
            exit_code::CONNECTION_LOST
        );
        assert_eq!(
            after_welcome(&ConnectionError::TimedOut).code,
            exit_code::CONNECTION_LOST
        );
        assert_eq!(
            after_welcome(&ConnectionError::Reset).code,
            exit_code::CONNECTION_LOST
        );
    }
}
