//! Sending as someone: the handle actors and the controller send messages with.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::error::{AskError, SendError, SpawnError, StopError};
use super::host::{Host, PortAnswer, TrySendError};
use super::refs::ActorRef;
use super::traits::Spawn;
use crate::id::{ActorId, PortId, ProcId};
use crate::reason::{SpawnRefusal, StopRefusal};
use crate::wire::{codec, Dest, Envelope, ProcStats, SystemMsg};

/// Sends messages as one identity (an actor, or the controller) from one proc;
/// cheap to clone.
///
/// Every send method also takes a [`Context`](super::Context), which lends
/// its actor's client.
#[derive(Clone)]
pub struct Client {
    host: Arc<dyn Host>,
    me: ActorId,
}

impl AsRef<Client> for Client {
    fn as_ref(&self) -> &Client {
        self
    }
}

impl Client {
    pub(crate) fn new(host: Arc<dyn Host>, me: ActorId) -> Self {
        Client { host, me }
    }

    /// Who the messages are from.
    pub fn id(&self) -> &ActorId {
        &self.me
    }

    /// Default timeout of `ask`.
    pub fn ask_timeout(&self) -> Duration {
        self.host.ask_timeout()
    }

    /// An envelope from this client, refused at once if it cannot fit a frame.
    fn envelope(
        &self,
        to: Dest,
        payload: Vec<u8>,
        return_port: Option<u64>,
    ) -> Result<Envelope, SendError> {
        let env = self.host.envelope(&self.me, to, payload, return_port);
        let (len, max) = (env.wire_size() as u64, self.host.max_frame());
        if len > u64::from(max) {
            return Err(SendError::TooLarge { len, max });
        }
        Ok(env)
    }

    /// Sends `env`, waiting for room (no allocation when there is room now).
    async fn send(&self, env: Envelope) -> Result<(), SendError> {
        match self.host.try_send(env) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(env)) => self.host.send(env).await,
            Err(TrySendError::Refused(e)) => Err(e),
        }
    }

    /// Sends a payload to `to`, waiting for room.
    pub(crate) async fn send_envelope(
        &self,
        to: Dest,
        payload: Vec<u8>,
        return_port: Option<u64>,
    ) -> Result<(), SendError> {
        let env = self.envelope(to, payload, return_port)?;
        self.send(env).await
    }

    /// Sends a payload to `to`, waiting at most `timeout` for room.
    pub(crate) async fn send_envelope_within(
        &self,
        to: Dest,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        let env = self.envelope(to, payload, None)?;
        match tokio::time::timeout(timeout, self.send(env)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    /// Sends a payload to `to` if there is room now.
    pub(crate) fn try_send_envelope(&self, to: Dest, payload: Vec<u8>) -> Result<(), SendError> {
        let env = self.envelope(to, payload, None)?;
        match self.host.try_send(env) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SendError::Full),
            Err(TrySendError::Refused(e)) => Err(e),
        }
    }

    /// Sends the payload built around a fresh reply port and waits for the reply bytes.
    ///
    /// Errors: as [`ActorRef::ask`].
    pub(crate) async fn ask_raw(
        &self,
        to: Dest,
        timeout: Duration,
        make: impl FnOnce(PortId) -> Result<Vec<u8>, SendError>,
    ) -> Result<Vec<u8>, AskError> {
        let (port, reply) = self.host.open_port(to.proc_id().clone());
        let guard = PortGuard {
            host: &*self.host,
            port,
        };
        let payload = make(self.me.port(port))?;
        self.send_envelope(to, payload, Some(port)).await?;
        let result = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(PortAnswer::Reply(bytes))) => Ok(bytes),
            Ok(Ok(PortAnswer::Failed(reason))) => Err(AskError::Undeliverable(reason)),
            Ok(Err(_)) => Err(AskError::Send(SendError::Closed)),
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
    pub async fn spawn<A: Spawn>(
        &self,
        proc_id: &ProcId,
        name: &str,
        params: &A::Params,
    ) -> Result<ActorRef<A>, SpawnError> {
        let params = codec::encode(params)
            .map_err(|e| SpawnError::Refused(SpawnRefusal::Unencodable(e.to_string())))?;
        let request = SystemMsg::Spawn {
            actor_type: A::NAME.to_string(),
            name: name.to_string(),
            params,
        };
        let reply: Result<ActorId, SpawnRefusal> = self.system(proc_id, request).await?;
        reply.map(ActorRef::attest).map_err(SpawnError::Refused)
    }

    /// Asks proc `proc_id` to spawn an actor of the type registered as
    /// `actor_type`, with parameters already encoded (or deliberately not).
    ///
    /// Errors: as [`Client::spawn`].
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) async fn spawn_named(
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
        let reply: Result<ActorId, SpawnRefusal> = self.system(proc_id, request).await?;
        reply.map_err(SpawnError::Refused)
    }

    /// Asks the proc of `actor` to stop it (its stop hook runs) and waits
    /// until it has stopped.
    ///
    /// Errors: [`StopError::Refused`] if there is no such actor, or it did
    /// not stop within its proc's stop timeout (it was aborted);
    /// [`StopError::Ask`] if the proc did not answer.
    pub async fn stop_actor(&self, actor: &ActorId) -> Result<(), StopError> {
        let request = SystemMsg::StopActor {
            name: actor.name.to_string(),
        };
        let reply: Result<(), StopRefusal> = self.system(&actor.proc_id, request).await?;
        reply.map_err(StopError::Refused)
    }

    /// Asks proc `proc_id` for its queue occupancy.
    ///
    /// Errors: [`AskError`] if the proc did not answer.
    pub async fn proc_stats(&self, proc_id: &ProcId) -> Result<ProcStats, AskError> {
        self.system(proc_id, SystemMsg::Stats).await
    }

    async fn system<R: DeserializeOwned>(
        &self,
        proc_id: &ProcId,
        msg: SystemMsg,
    ) -> Result<R, AskError> {
        let bytes = self
            .ask_raw(Dest::Proc(proc_id.clone()), self.ask_timeout(), |port| {
                codec::encode(&(msg, port)).map_err(SendError::Encode)
            })
            .await?;
        codec::decode(&bytes).map_err(AskError::Decode)
    }
}

/// Closes a reply port however the ask ends.
struct PortGuard<'a> {
    host: &'a dyn Host,
    port: u64,
}

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        self.host.close_port(self.port);
    }
}
