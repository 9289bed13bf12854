//! Typed references: to an actor, and to a reply port.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::Client;
use super::error::{AskError, SendError};
use super::traits::Actor;
use crate::id::{ActorId, PortId};
use crate::wire::{codec, Dest};

/// A reference to an actor of type `A`, anywhere in the mesh; travels inside messages.
pub struct ActorRef<A> {
    id: ActorId,
    _type: PhantomData<fn() -> A>,
}

impl<A> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef::attest(self.id.clone())
    }
}

impl<A> PartialEq for ActorRef<A> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<A> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorRef({})", self.id)
    }
}

impl<A> Serialize for ActorRef<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

impl<'de, A> Deserialize<'de> for ActorRef<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ActorRef::attest(ActorId::deserialize(d)?))
    }
}

impl<A> ActorRef<A> {
    /// Claims that `id` is an actor of type `A` (a wrong claim makes its messages come back undeliverable).
    pub fn attest(id: ActorId) -> Self {
        ActorRef {
            id,
            _type: PhantomData,
        }
    }

    /// The actor's id.
    pub fn id(&self) -> &ActorId {
        &self.id
    }
}

impl<A: Actor> ActorRef<A> {
    /// Sends `msg` from `from` (a [`Client`] or an actor's [`Context`](super::Context)),
    /// waiting while the path to the actor is full.
    ///
    /// `Ok` means the runtime accepted the message: from then on it is either
    /// delivered or returned to the sender as undeliverable. Errors:
    /// [`SendError::Encode`] if the message cannot be serialized,
    /// [`SendError::TooLarge`] if it exceeds the frame limit,
    /// [`SendError::Refused`] if its proc is known to have ended,
    /// [`SendError::Closed`] if the sender's proc is shutting down.
    pub async fn tell(&self, from: &impl AsRef<Client>, msg: A::Message) -> Result<(), SendError> {
        let payload = codec::encode(&msg).map_err(SendError::Encode)?;
        from.as_ref()
            .send_envelope(Dest::Actor(self.id.clone()), payload, None)
            .await
    }

    /// Sends `msg`, waiting at most `timeout` while the path to the actor is full.
    ///
    /// Errors: [`SendError::Timeout`] if there was no room in time (then the
    /// message was not sent), else as [`ActorRef::tell`].
    pub async fn tell_within(
        &self,
        from: &impl AsRef<Client>,
        timeout: Duration,
        msg: A::Message,
    ) -> Result<(), SendError> {
        let payload = codec::encode(&msg).map_err(SendError::Encode)?;
        from.as_ref()
            .send_envelope_within(Dest::Actor(self.id.clone()), payload, timeout)
            .await
    }

    /// Sends `msg` if there is room now.
    ///
    /// Errors: [`SendError::Full`] when the path to the actor is full, else as [`ActorRef::tell`].
    pub fn try_tell(&self, from: &impl AsRef<Client>, msg: A::Message) -> Result<(), SendError> {
        let payload = codec::encode(&msg).map_err(SendError::Encode)?;
        from.as_ref()
            .try_send_envelope(Dest::Actor(self.id.clone()), payload)
    }

    /// Sends the message built by `make` around a fresh reply port and waits for the reply.
    ///
    /// Errors: [`AskError::Undeliverable`] as soon as the message comes back
    /// (actor not found or failed, proc failed, connection lost...),
    /// [`AskError::Timeout`] after the client's ask timeout, [`AskError::Send`]
    /// if it could not be sent, [`AskError::Decode`] if the reply is not an `R`.
    pub async fn ask<R: DeserializeOwned>(
        &self,
        from: &impl AsRef<Client>,
        make: impl FnOnce(PortRef<R>) -> A::Message,
    ) -> Result<R, AskError> {
        let from = from.as_ref();
        self.ask_within(from, from.ask_timeout(), make).await
    }

    /// [`ActorRef::ask`] with an explicit timeout.
    pub async fn ask_within<R: DeserializeOwned>(
        &self,
        from: &impl AsRef<Client>,
        timeout: Duration,
        make: impl FnOnce(PortRef<R>) -> A::Message,
    ) -> Result<R, AskError> {
        let bytes = from
            .as_ref()
            .ask_raw(Dest::Actor(self.id.clone()), timeout, |port| {
                codec::encode(&make(PortRef::attest(port))).map_err(SendError::Encode)
            })
            .await?;
        codec::decode(&bytes).map_err(AskError::Decode)
    }
}

/// A one-shot reply port of type `T`, carried inside a message.
pub struct PortRef<T> {
    id: PortId,
    _type: PhantomData<fn(T)>,
}

impl<T> PortRef<T> {
    /// Claims that `id` is a port expecting `T`.
    pub fn attest(id: PortId) -> Self {
        PortRef {
            id,
            _type: PhantomData,
        }
    }

    /// The port's id.
    pub fn id(&self) -> &PortId {
        &self.id
    }
}

impl<T: Serialize> PortRef<T> {
    /// Sends the reply from `from` (in a handler: the [`Context`](super::Context)).
    ///
    /// Errors: as [`ActorRef::tell`].
    pub async fn send(&self, from: &impl AsRef<Client>, value: T) -> Result<(), SendError> {
        let payload = codec::encode(&value).map_err(SendError::Encode)?;
        from.as_ref()
            .send_envelope(Dest::Port(self.id.clone()), payload, None)
            .await
    }
}

impl<T> Clone for PortRef<T> {
    fn clone(&self) -> Self {
        PortRef::attest(self.id.clone())
    }
}

impl<T> fmt::Debug for PortRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortRef({})", self.id)
    }
}

impl<T> Serialize for PortRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for PortRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PortRef::attest(PortId::deserialize(d)?))
    }
}
