//! Actors: typed message handlers hosted by procs.
//!
//! An [`Actor`] handles one serde message type. It is reached through an
//! [`ActorRef`], with [`ActorRef::tell`] (fire and forget, with backpressure)
//! or [`ActorRef::ask`] (the message carries a [`PortRef`] the actor replies
//! to). Actors live in a [`Proc`]; a worker's procs and the controller's own
//! proc are the same type, so an actor does not care where it runs. Actor
//! types are made spawnable by name through a [`Registry`], so a worker
//! (the same binary as the controller) can create them on request.
//!
//! Nothing is lost silently: an envelope that cannot be delivered comes back
//! to its sender as [`Undeliverable`](crate::wire::Undeliverable) with a
//! reason; an `ask` whose envelope comes back fails at once.

mod cell;
mod client;
mod outlet;
mod proc;
mod refs;
mod registry;

pub mod builtin;

pub use client::{AskError, Client, SendError, SpawnError};
pub use outlet::Outlet;
pub(crate) use proc::NotDelivered;
pub use proc::{ActorFailure, Proc, ProcConfig, ProcOutputs};
pub use refs::{ActorRef, PortRef};
pub use registry::Registry;

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::id::{ActorId, ProcId};
use crate::wire::Undeliverable;

/// A typed message handler with lifecycle hooks.
///
/// Handlers run one message at a time, in arrival order. A handler that
/// returns an error or panics stops the actor: the failure is reported to
/// the controller, later messages to it come back undeliverable, and the
/// other actors of its proc keep running.
pub trait Actor: Sized + Send + 'static {
    /// Name under which the type is registered and spawned remotely; stable across binaries.
    const NAME: &'static str;
    /// The messages this actor handles.
    type Message: Serialize + DeserializeOwned + Send + 'static;
    /// What it takes to create one (sent over the wire for remote spawns).
    type Params: Serialize + DeserializeOwned + Send + 'static;

    /// Creates the actor; an error is returned to whoever asked for the spawn.
    fn new(params: Self::Params) -> anyhow::Result<Self>;

    /// Runs once before the first message.
    fn on_start(&mut self, _ctx: &Context) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Handles one message.
    fn handle(
        &mut self,
        msg: Self::Message,
        ctx: &Context,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Runs once when the actor is stopped in order (not after a failure), with a deadline.
    fn on_stop(&mut self, _ctx: &Context) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Receives a message this actor sent that could not be delivered.
    fn on_undeliverable(
        &mut self,
        returned: Undeliverable,
        ctx: &Context,
    ) -> impl Future<Output = ()> + Send {
        tracing::warn!(
            "{}: message to {} undeliverable: {}",
            ctx.id(),
            returned.envelope.to,
            returned.reason
        );
        async {}
    }
}

/// What a handler knows about where it runs, and its way to send messages.
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
