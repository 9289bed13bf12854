//! What a handler knows about where it runs, and its way to send messages.

use super::client::Client;
use super::refs::ActorRef;
use super::traits::Actor;
use crate::id::{ActorId, ProcId};

/// What a handler knows about where it runs, and its way to send messages.
///
/// Sending takes anything that can lend a [`Client`]: pass the context
/// itself (`reply.send(ctx, value)`, `other.tell(ctx, msg)`).
#[derive(Clone)]
pub struct Context {
    client: Client,
}

impl Context {
    pub(crate) fn new(client: Client) -> Self {
        Context { client }
    }

    /// This actor's id.
    pub fn id(&self) -> &ActorId {
        self.client.id()
    }

    /// The proc this actor runs on.
    pub fn proc_id(&self) -> &ProcId {
        &self.client.id().proc_id
    }

    /// The handle to send messages as this actor.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A typed reference to this actor.
    pub fn this<A: Actor>(&self) -> ActorRef<A> {
        ActorRef::attest(self.id().clone())
    }
}

impl AsRef<Client> for Context {
    fn as_ref(&self) -> &Client {
        &self.client
    }
}
