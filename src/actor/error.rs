//! What can go wrong when sending, asking, spawning or stopping.

use std::time::Duration;

use crate::reason::{ReturnReason, SpawnRefusal, StopRefusal};
use crate::wire::CodecError;

/// A message could not be accepted for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The path to the destination is full (only from `try_tell`).
    #[error("mailbox full")]
    Full,
    /// The sending proc is shutting down.
    #[error("sender's proc is closed")]
    Closed,
    /// The message could not be serialized.
    #[error("cannot encode message")]
    Encode(#[source] CodecError),
    /// The message is larger than the frame limit, ids included; it was not sent.
    #[error("message too large: about {len} bytes with its envelope, frame limit {max}")]
    TooLarge {
        /// The envelope's size (an upper bound).
        len: u64,
        /// The frame limit.
        max: u32,
    },
    /// The destination is known to be gone (its proc ended); nothing was sent.
    #[error("refused at once: {0}")]
    Refused(ReturnReason),
    /// There was no room on the path to the destination within the deadline
    /// (only from `tell_within`); the message was not sent.
    #[error("no room to send within {0:?}")]
    Timeout(Duration),
}

/// An `ask` got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The request came back undeliverable, or its target failed before answering.
    #[error("undeliverable: {0}")]
    Undeliverable(ReturnReason),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The reply is not of the expected type.
    #[error("reply does not decode")]
    Decode(#[source] CodecError),
}

/// A remote spawn failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The spawn request got no answer.
    #[error("spawn request failed: {0}")]
    Ask(#[from] AskError),
    /// The proc refused: unknown type, bad parameters, name taken, constructor error.
    #[error("spawn refused: {0}")]
    Refused(#[source] SpawnRefusal),
}

/// An actor could not be stopped as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The stop request got no answer.
    #[error("stop request failed: {0}")]
    Ask(#[from] AskError),
    /// The proc could not stop it as asked (not found, or aborted after the timeout).
    #[error("{0}")]
    Refused(#[source] StopRefusal),
}
