//! quicmesh: a mesh of worker processes over QUIC with mutual TLS.
//!
//! A controller program creates an [`Allocator`](allocator::Allocator), which
//! launches worker processes (or admits workers started elsewhere). Each
//! worker opens one QUIC connection to the allocator, with a control stream
//! for commands, datagrams for heartbeats in both directions, and one stream
//! per proc mailbox. A worker that loses its allocator exits; an allocator
//! that loses a worker reports its procs as failed.
//!
//! What a program uses: [`Actor`] (with [`Spawn`] when it takes parameters),
//! [`ActorRef`], [`PortRef`], [`Context`], [`Client`], [`Registry`],
//! [`ProcMesh`], [`ActorMesh`] and [`bootstrap_or_die`] here;
//! [`allocator`] for the allocator and what it reports; [`tls`] for
//! development certificates; [`config`] for the settings an allocator takes;
//! [`worker`] to give a binary of one's own a worker mode; [`exit_code`].
//! Everything else is internal. The design, the protocol and the reasons for
//! both are in `docs/design.md`.
//!
//! Layers, each looking only down: the allocator and the worker over the
//! actors, heartbeats and the transport, over the wire format, TLS, settings,
//! ids and reasons.

// Undeliverable envelopes are handed back to the caller by value in `Err`,
// so they can be returned to their sender without a copy; those errors are
// large on purpose.
#![allow(clippy::result_large_err)]

pub mod actor;
pub mod allocator;
pub mod config;
pub mod exit_code;
mod heartbeat;
mod id;
mod join_token;
mod line_cut;
mod link;
mod log_queue;
mod logging;
mod mailbox;
mod mesh;
mod queue;
mod reason;
#[cfg(any(test, feature = "testkit"))]
mod relay;
mod rtt;
mod stop;
mod sync;
pub mod tls;
mod transport;
mod wire;
pub mod worker;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use actor::{
    Actor, ActorRef, AskError, Client, Context, PortRef, Registry, Returned, SendError, Spawn,
    SpawnError, StopError,
};
pub use id::{ActorId, IdParseError, PortId, ProcId};
pub use logging::init as init_logging;
pub use logging::init_with_default as init_logging_with_default;
pub use mesh::{ActorMesh, MeshError, ProcMesh};
pub use reason::{
    ActorFailure, ExitReport, FailureReason, ProcEnd, ReturnReason, SpawnRefusal, StopReason,
    StopRefusal,
};
pub use wire::{CodecError, DeliveryStatus, ProcStats};
pub use worker::bootstrap_or_die;

/// The README's code, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
