//! The [`Actor`] trait, and [`Spawn`]: how an actor is created from parameters.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::context::Context;
use super::returns::Returned;

/// A typed message handler with lifecycle hooks.
///
/// Handlers run one message at a time, in arrival order. A handler that
/// returns an error or panics stops the actor: the failure is reported to
/// the controller, later messages to it come back undeliverable, and the
/// other actors of its proc keep running.
///
/// An actor type that is `Default` can be spawned with no parameters as it
/// is; one that needs parameters implements [`Spawn`] as well.
pub trait Actor: Sized + Send + 'static {
    /// Name under which the type is registered and spawned remotely; stable
    /// across binaries, unique within a [`Registry`](super::Registry).
    const NAME: &'static str;
    /// The messages this actor handles.
    type Message: Serialize + DeserializeOwned + Send + 'static;

    /// Runs once before the first message; an error fails the actor.
    fn on_start(&mut self, _ctx: &Context) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Handles one message; an error fails the actor.
    fn handle(
        &mut self,
        msg: Self::Message,
        ctx: &Context,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Runs once when the actor is stopped in order (not after a failure).
    ///
    /// The stop (the message in hand, then this hook) has a deadline: past
    /// it the actor's task is aborted and reported failed.
    fn on_stop(&mut self, _ctx: &Context) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Receives a message this actor sent that came back undelivered
    /// ([`Returned::decode`] gives the message back in its type).
    fn on_undeliverable(
        &mut self,
        returned: Returned,
        ctx: &Context,
    ) -> impl Future<Output = ()> + Send {
        tracing::warn!(
            "{}: message to {} undeliverable: {}",
            ctx.id(),
            returned.recipient(),
            returned.reason()
        );
        async {}
    }
}

/// How an actor is created, here or on a remote proc.
///
/// Every `Default` actor is `Spawn` with no parameters (`Params = ()`); an
/// actor that needs parameters (they travel over the wire for remote
/// spawns) implements this trait itself.
pub trait Spawn: Actor {
    /// What it takes to create one.
    type Params: Serialize + DeserializeOwned + Send + 'static;

    /// Creates the actor; an error (or a panic) refuses the spawn, and the
    /// reason goes back to whoever asked for it.
    fn new(params: Self::Params) -> anyhow::Result<Self>;
}

impl<A: Actor + Default> Spawn for A {
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(A::default())
    }
}
