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
//! Nothing is lost silently: a message that cannot be delivered comes back
//! to its sender as a [`Returned`] with a typed reason; an `ask` whose
//! message comes back fails at once.
//!
//! What lives here, and what it may use (everything below it: ids, reasons,
//! wire, queues, the mailbox stream's item type):
//!
//! - `traits.rs`: [`Actor`] and [`Spawn`]; `context.rs`: [`Context`].
//! - `refs.rs`: [`ActorRef`], [`PortRef`]; `client.rs`: [`Client`];
//!   `error.rs`: what sending, asking, spawning and stopping can fail with.
//! - `host.rs`: the narrow trait clients and actor tasks reach their proc
//!   through (implemented by [`Proc`]), so they never import the proc.
//! - `cell.rs`: one actor's task; `registry.rs`: types by name;
//!   `ports.rs`: reply ports; `returns.rs`: returned messages;
//!   `outlet.rs`: a proc's way out; `proc.rs`: the proc, where delivery is decided.
//! - `builtin.rs`: the `quicmesh` binary's actors; `test_actors.rs`: the
//!   project's test actors (tests and the `testkit` feature only).

mod cell;
mod client;
mod context;
mod error;
mod host;
mod outlet;
mod ports;
mod proc;
mod refs;
mod registry;
mod returns;
#[cfg(any(test, feature = "testkit"))]
pub(crate) mod test_actors;
mod traits;

pub mod builtin;

pub use client::Client;
pub use context::Context;
pub use error::{AskError, SendError, SpawnError, StopError};
pub use proc::Proc;
pub use refs::{ActorRef, PortRef};
pub use registry::{DuplicateActorType, Registry};
pub use returns::{Recipient, Returned, Returns, Undecoded};
pub use traits::{Actor, Spawn};

pub(crate) use outlet::{Outlet, OutletError};
pub(crate) use proc::{NotDelivered, ProcConfig};
pub(crate) use returns::returns;
