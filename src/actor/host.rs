//! What clients and actor tasks need from the proc they belong to.
//!
//! A [`Client`](super::Client) sends, asks and opens reply ports; an actor's
//! task hands back what it could not handle and reports its end. Both talk
//! to their proc only through [`Host`], which [`Proc`](super::Proc)
//! implements. This keeps the dependencies in one direction: clients, refs,
//! actor tasks and the registry know this trait, not the proc.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::error::SendError;
use crate::id::{ActorId, ProcId};
use crate::reason::{ActorFailure, ReturnReason};
use crate::wire::{Dest, Envelope, Undeliverable};

/// What a reply port receives.
#[derive(Debug)]
pub(crate) enum PortAnswer {
    /// The reply's payload.
    Reply(Vec<u8>),
    /// The ask failed: its envelope came back, or its target failed.
    Failed(ReturnReason),
}

/// Why an envelope could not be sent without waiting.
pub(crate) enum TrySendError {
    /// No room now: the envelope is handed back, to be sent with [`Host::send`].
    Full(Envelope),
    /// It cannot be sent at all.
    Refused(SendError),
}

/// The proc a client or actor task belongs to.
pub(crate) trait Host: Send + Sync + 'static {
    /// Default timeout of `ask`.
    fn ask_timeout(&self) -> Duration;

    /// Largest frame the proc's stream carries (a bigger envelope is refused at once).
    fn max_frame(&self) -> u32;

    /// How long an actor told to stop may take.
    fn stop_timeout(&self) -> Duration;

    /// An envelope from `from` to `to` with a fresh id.
    fn envelope(
        &self,
        from: &ActorId,
        to: Dest,
        payload: Vec<u8>,
        return_port: Option<u64>,
    ) -> Envelope;

    /// Sends `env` if there is room now (the fast path: no allocation).
    fn try_send(&self, env: Envelope) -> Result<(), TrySendError>;

    /// Sends `env`, waiting for room.
    fn send(&self, env: Envelope) -> BoxFuture<'_, Result<(), SendError>>;

    /// Opens a one-shot reply port for an ask to `target`; returns its number.
    fn open_port(&self, target: ProcId) -> (u64, oneshot::Receiver<PortAnswer>);

    /// Closes a reply port (the ask is over).
    fn close_port(&self, port: u64);

    /// Hands back an envelope that reached its actor but was not handled.
    fn bounce(&self, u: Undeliverable);

    /// The actor `id` takes no more messages: later ones are undeliverable.
    fn forget_actor(&self, id: &ActorId);

    /// Reports that actor `id` failed.
    fn report_failure(&self, id: &ActorId, failure: ActorFailure);
}
