//! quicmesh: a mesh of worker processes over QUIC with mutual TLS.
//!
//! A controller program creates an [`Allocator`](allocator::Allocator), which
//! launches worker processes (or admits workers started elsewhere). Each
//! worker opens one QUIC connection to the allocator, with a control stream
//! for commands, datagrams for heartbeats in both directions, and one stream
//! per proc mailbox. A worker that loses its allocator exits; an allocator
//! that loses a worker reports its procs as failed.
//!
//! Layers, each looking only down: [`allocator`] and [`worker`] over
//! [`heartbeat`] and [`transport`], over [`wire`], [`tls`], [`config`], [`link`] and [`id`].

// Undeliverable envelopes are handed back to the caller by value in `Err`,
// so they can be returned to their sender without a copy; those errors are
// large on purpose.
#![allow(clippy::result_large_err)]

pub mod actor;
pub mod allocator;
pub mod config;
pub mod exit_code;
pub mod heartbeat;
pub mod id;
pub mod link;
pub mod logging;
pub mod mailbox;
pub mod mesh;
pub mod queue;
pub mod relay;
pub mod rtt;
pub mod stop;
mod sync;
pub mod tls;
pub mod transport;
pub mod wire;
pub mod worker;

pub use actor::{Actor, ActorRef, Client, Context, PortRef, Registry};
pub use allocator::{AllocEvent, Allocator, AllocatorConfig, ProcState};
pub use id::{ActorId, PortId, ProcId};
pub use mesh::{ActorMesh, ProcMesh};
pub use worker::bootstrap_or_die;

/// The README's code, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
