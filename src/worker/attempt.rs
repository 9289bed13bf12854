//! How one attempt to join can fail, and whether another attempt may succeed.
//!
//! Plain code, tested without sockets. A worker retries (with backoff, until
//! its join deadline) what time can fix:
//!
//! - the allocator is **busy**: it refused the attempt before any handshake
//!   (QUIC `CONNECTION_REFUSED`: handshake slots full, or this source's share
//!   used up), closed it with [`close::BUSY`], or gave up on it
//!   (`APPLICATION_ERROR` during the handshake: its TLS deadline passed; or
//!   [`close::HELLO_TIMEOUT`]: our Hello came too late);
//! - the allocator is **unreachable**: no answer within the attempt's
//!   timeout, its address does not resolve (yet), the idle timer fired, or a
//!   stateless reset says it does not know this connection (it restarted).
//!
//! It does not retry what another attempt would only repeat:
//!
//! - **rejected** by the allocator (bad token, unknown or duplicate index):
//!   exit 77;
//! - a **protocol violation**, either way: exit 76;
//! - a **certificate** refused by either side (a TLS alert from the
//!   allocator, or our own check of its certificate), any other transport
//!   error, or an allocator shutting down: exit 69 at once, with the reason.
//!
//! An attempt that timed out after the Hello was sent may have been admitted
//! without our seeing the Welcome; the worker then closes that connection, so
//! the allocator ends the slot and the next attempt is told so (exit 77,
//! "already left"), which is the truth.

use quinn::{ConnectionError, TransportErrorCode};

use super::exit::{before_welcome, WorkerExit};
use crate::exit_code;
use crate::wire::close;

/// Why one attempt to join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// How the worker ends if it does not (or may no longer) try again.
    pub exit: WorkerExit,
    /// Whether another attempt may succeed.
    pub retry: bool,
}

impl AttemptError {
    /// A failure that another attempt may not see: the allocator is busy or unreachable.
    pub fn transient(reason: impl Into<String>) -> Self {
        AttemptError {
            exit: WorkerExit::new(exit_code::UNREACHABLE, reason),
            retry: true,
        }
    }

    /// A failure every attempt would meet: the worker ends with `exit`.
    pub fn fatal(exit: WorkerExit) -> Self {
        AttemptError { exit, retry: false }
    }
}

fn reason_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether a transport error code carries a TLS alert (the handshake itself failed).
fn is_tls_alert(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Classifies a connection that ended before the Welcome.
pub fn classify(err: &ConnectionError) -> AttemptError {
    match err {
        ConnectionError::ApplicationClosed(c) if c.error_code == close::BUSY => {
            AttemptError::transient(format!("allocator busy: {}", reason_text(&c.reason)))
        }
        ConnectionError::ApplicationClosed(c) if c.error_code == close::HELLO_TIMEOUT => {
            AttemptError::transient(format!(
                "allocator did not get our Hello in time: {}",
                reason_text(&c.reason)
            ))
        }
        ConnectionError::ConnectionClosed(c)
            if c.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            AttemptError::transient(
                "allocator busy: it refused the connection (too many handshakes in progress)",
            )
        }
        ConnectionError::ConnectionClosed(c)
            if c.error_code == TransportErrorCode::APPLICATION_ERROR =>
        {
            AttemptError::transient(
                "allocator busy: it abandoned the handshake (not completed in its time limit)",
            )
        }
        ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
            AttemptError::fatal(before_welcome(err))
        }
        ConnectionError::TimedOut => {
            AttemptError::transient("allocator unreachable: the connection timed out")
        }
        ConnectionError::Reset => AttemptError::transient(
            "allocator reset the connection (it does not know it: restarted?)",
        ),
        _ => AttemptError::fatal(before_welcome(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::exit::app;

    fn transport(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Vec::new().into(),
        })
    }

    #[test]
    fn busy_and_unreachable_are_retried_as_69() {
        for (err, words) in [
            (app(close::BUSY, "too many"), "busy: too many"),
            (
                app(close::HELLO_TIMEOUT, "no Hello"),
                "Hello in time: no Hello",
            ),
            (transport(TransportErrorCode::CONNECTION_REFUSED), "refused"),
            (
                transport(TransportErrorCode::APPLICATION_ERROR),
                "abandoned",
            ),
            (ConnectionError::TimedOut, "timed out"),
            (ConnectionError::Reset, "reset"),
        ] {
            let e = classify(&err);
            assert!(e.retry, "{err} not retried");
            assert_eq!(e.exit.code, exit_code::UNREACHABLE);
            assert!(e.exit.reason.contains(words), "{}", e.exit.reason);
        }
    }

    #[test]
    fn rejection_protocol_and_certificates_are_final() {
        let rejected = classify(&app(close::REJECTED, "bad token for worker index 2"));
        assert!(!rejected.retry);
        assert_eq!(rejected.exit.code, exit_code::REJECTED);
        assert!(rejected.exit.reason.contains("bad token"));

        let protocol = classify(&app(close::PROTOCOL, "invalid Hello"));
        assert!(!protocol.retry);
        assert_eq!(protocol.exit.code, exit_code::PROTOCOL);

        // TLS alert 48 (unknown CA) from the allocator: our certificate is refused.
        let cert = classify(&transport(TransportErrorCode::crypto(48)));
        assert!(!cert.retry);
        assert_eq!(cert.exit.code, exit_code::UNREACHABLE);
        assert!(
            cert.exit.reason.contains("handshake"),
            "{}",
            cert.exit.reason
        );

        for err in [
            app(close::SHUTDOWN, "allocator shut down"),
            transport(TransportErrorCode::PROTOCOL_VIOLATION),
            ConnectionError::VersionMismatch,
            ConnectionError::LocallyClosed,
        ] {
            let e = classify(&err);
            assert!(!e.retry, "{err} retried");
            assert_eq!(e.exit.code, exit_code::UNREACHABLE, "{err}");
        }
    }
}
