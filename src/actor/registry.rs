//! Actor types by name, so a worker can spawn what the controller asks for.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::cell::panic_message;

use super::proc::Proc;
use super::Actor;
use crate::id::ActorId;
use crate::wire::codec;

type SpawnFn = fn(&Proc, &str, &[u8]) -> Result<ActorId, String>;

/// The actor types a process can spawn on request, by [`Actor::NAME`].
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<&'static str, SpawnFn>,
}

/// Decodes `A`'s parameters and spawns it; every failure is text for the spawner.
///
/// Decoding runs the parameters' `Deserialize`, which is user code: a panic
/// there refuses the spawn like a decoding error, instead of ending the task
/// that reads the proc's mailbox stream.
fn spawn_erased<A: Actor>(proc: &Proc, name: &str, params: &[u8]) -> Result<ActorId, String> {
    let params: A::Params = match catch_unwind(AssertUnwindSafe(|| codec::decode(params))) {
        Ok(Ok(params)) => params,
        Ok(Err(e)) => {
            return Err(format!(
                "parameters do not decode as those of {}: {e}",
                A::NAME
            ))
        }
        Err(panic) => {
            return Err(format!(
                "decoding the parameters of {} panicked: {}",
                A::NAME,
                panic_message(&*panic)
            ))
        }
    };
    proc.spawn::<A>(name, params).map(|r| r.id().clone())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds actor type `A` under [`Actor::NAME`].
    pub fn register<A: Actor>(&mut self) -> &mut Self {
        self.types.insert(A::NAME, spawn_erased::<A>);
        self
    }

    /// Adds actor type `A` (builder form).
    pub fn with<A: Actor>(mut self) -> Self {
        self.register::<A>();
        self
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    /// Spawns `actor_type` named `name` on `proc` from encoded parameters.
    ///
    /// Errors (as text for the remote asker): unknown type, parameters that
    /// do not decode (or whose decoding panics), or the spawn's own errors
    /// (see [`Proc::spawn`]).
    pub fn spawn(
        &self,
        proc: &Proc,
        actor_type: &str,
        name: &str,
        params: &[u8],
    ) -> Result<ActorId, String> {
        match self.types.get(actor_type) {
            Some(spawn) => spawn(proc, name, params),
            None => Err(format!(
                "unknown actor type {actor_type:?} (registered: {})",
                self.names().join(", ")
            )),
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.types.keys()).finish()
    }
}
