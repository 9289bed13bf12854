//! Sending as someone: the handle actors and the controller send messages with.

use std::time::Duration;

use super::proc::Proc;
use super::refs::ActorRef;
use super::Actor;
use crate::id::{ActorId, PortId, ProcId};
use crate::wire::{codec, Dest, ProcStats, SystemMsg};

/// A message could not be accepted for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The path to the destination is full (only from `try_tell`).
    #[error("mailbox full")]
    Full,
    /// The sending proc is shutting down.
    #[error("sender's proc is closed")]
    Closed,
    /// The message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// There was no room on the path to the destination within the deadline
    /// (only from `tell_within`); the message was not sent.
    #[error("no room to send within {0:?}")]
    Timeout(Duration),
}

/// An `ask` got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The request came back undeliverable, or its target failed.
    #[error("undeliverable: {0}")]
    Undeliverable(String),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The reply is not of the expected type.
    #[error("reply does not decode: {0}")]
    Decode(String),
}

/// A remote spawn failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The spawn request got no answer.
    #[error("spawn request failed: {0}")]
    Ask(#[from] AskError),
    /// The proc refused: unknown type, bad parameters, name taken, constructor error.
    #[error("spawn refused: {0}")]
    Refused(String),
}

/// Sends messages as one identity (an actor, or the controller) from one proc.
#[derive(Clone)]
pub struct Client {
    proc: Proc,
    me: ActorId,
}

impl Client {
    pub(crate) fn new(proc: Proc, me: ActorId) -> Self {
        Client { proc, me }
    }

    /// Who the messages are from.
    pub fn id(&self) -> &ActorId {
        &self.me
    }

    /// The proc messages leave from.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Default timeout of `ask`.
    pub fn ask_timeout(&self) -> Duration {
        self.proc.config().ask_timeout
    }

    /// Sends an envelope to `to`, waiting for room.
    ///
    /// Errors: [`SendError::Closed`] if this proc is shutting down.
    pub async fn send_envelope(
        &self,
        to: Dest,
        payload: Vec<u8>,
        return_port: Option<u64>,
    ) -> Result<(), SendError> {
        let env = self.proc.envelope(&self.me, to, payload, return_port);
        self.proc.send(env).await
    }

    /// Sends an envelope to `to`, waiting at most `timeout` for room.
    ///
    /// Errors: [`SendError::Timeout`] if there was no room in time (nothing
    /// was sent), [`SendError::Closed`] if this proc is shutting down.
    pub async fn send_envelope_within(
        &self,
        to: Dest,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let env = self.proc.envelope(&self.me, to, payload, None);
        self.proc.send_within(env, timeout).await
    }

    /// Sends an envelope to `to` if there is room now.
    ///
    /// Errors: [`SendError::Full`] when there is no room, [`SendError::Closed`] when shutting down.
    pub fn try_send_envelope(&self, to: Dest, payload: Vec<u8>) -> Result<(), SendError> {
        let env = self.proc.envelope(&self.me, to, payload, None);
        self.proc.try_send(env)
    }

    /// Sends the payload built around a fresh reply port, waits for the reply bytes.
    ///
    /// Errors: as [`ActorRef::ask`].
    pub async fn ask_raw(
        &self,
        to: Dest,
        timeout: Duration,
        make: impl FnOnce(PortId) -> Result<Vec<u8>, SendError>,
    ) -> Result<Vec<u8>, AskError> {
        let (port, reply) = self.proc.open_port(to.proc_id().clone());
        let guard = PortGuard {
            proc: &self.proc,
            port,
        };
        let payload = make(self.me.port(port))?;
        self.send_envelope(to, payload, Some(port)).await?;
        let result = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(reason))) => Err(AskError::Undeliverable(reason)),
            Ok(Err(_)) => Err(AskError::Undeliverable("reply port closed".into())),
            Err(_) => Err(AskError::Timeout(timeout)),
        };
        drop(guard);
        result
    }

    /// Asks proc `proc_id` to spawn an actor of type `A` named `name`.
    ///
    /// Errors: [`SpawnError::Refused`] with the proc's reason (unknown type,
    /// parameters that do not decode, name taken, constructor error),
    /// [`SpawnError::Ask`] if the proc did not answer.
    pub async fn spawn<A: Actor>(
        &self,
        proc_id: &ProcId,
        name: &str,
        params: &A::Params,
    ) -> Result<ActorRef<A>, SpawnError> {
        let params = codec::encode(params)
            .map_err(|e| SpawnError::Refused(format!("cannot encode parameters: {e}")))?;
        let id = self.spawn_named(proc_id, A::NAME, name, params).await?;
        Ok(ActorRef::attest(id))
    }

    /// Asks proc `proc_id` to spawn an actor of the type registered as `actor_type`.
    ///
    /// Errors: as [`Client::spawn`].
    pub async fn spawn_named(
        &self,
        proc_id: &ProcId,
        actor_type: &str,
        name: &str,
        params: Vec<u8>,
    ) -> Result<ActorId, SpawnError> {
        let request = SystemMsg::Spawn {
            actor_type: actor_type.to_string(),
            name: name.to_string(),
            params,
        };
        let reply: Result<ActorId, String> = self.system(proc_id, request).await?;
        reply.map_err(SpawnError::Refused)
    }

    /// Asks proc `proc_id` to stop its actor `name` (its stop hook runs).
    ///
    /// Errors: [`AskError`] if the proc did not answer; the inner `Err` is the proc's refusal.
    pub async fn stop_actor(&self, actor: &ActorId) -> Result<Result<(), String>, AskError> {
        self.system(
            &actor.proc_id,
            SystemMsg::StopActor {
                name: actor.name.to_string(),
            },
        )
        .await
    }

    /// Asks proc `proc_id` for its queue occupancy.
    ///
    /// Errors: [`AskError`] if the proc did not answer.
    pub async fn proc_stats(&self, proc_id: &ProcId) -> Result<ProcStats, AskError> {
        self.system(proc_id, SystemMsg::Stats).await
    }

    async fn system<R: serde::de::DeserializeOwned>(
        &self,
        proc_id: &ProcId,
        msg: SystemMsg,
    ) -> Result<R, AskError> {
        let bytes = self
            .ask_raw(Dest::Proc(proc_id.clone()), self.ask_timeout(), |port| {
                codec::encode(&(msg, port)).map_err(|e| SendError::Encode(e.to_string()))
            })
            .await?;
        codec::decode(&bytes).map_err(|e| AskError::Decode(e.to_string()))
    }
}

/// Closes a reply port however the ask ends.
struct PortGuard<'a> {
    proc: &'a Proc,
    port: u64,
}

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        self.proc.close_port(self.port);
    }
}
