//! Meshes: a set of procs, and one actor of a type on each of them.

use futures::future::join_all;

use crate::actor::{Actor, ActorRef, Client, SendError, SpawnError};
use crate::allocator::{Allocator, AllocatorError};
use crate::id::ProcId;
use crate::wire::{codec, Dest};

/// A set of procs, ordered by rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcMesh {
    procs: Vec<ProcId>,
}

impl ProcMesh {
    /// The procs of `alloc` (all started so far), by rank.
    pub fn of(alloc: &Allocator) -> ProcMesh {
        ProcMesh {
            procs: alloc.procs(),
        }
    }

    /// A mesh of exactly these procs.
    pub fn new(mut procs: Vec<ProcId>) -> ProcMesh {
        procs.sort();
        ProcMesh { procs }
    }

    /// The procs, by rank.
    pub fn procs(&self) -> &[ProcId] {
        &self.procs
    }

    /// Number of procs.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the mesh has no proc.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Spawns one actor of type `A` named `name` on every proc, with the parameters `params(rank)`.
    ///
    /// Spawns run concurrently. Errors: the first proc's refusal or failure
    /// (actors already spawned elsewhere are stopped again).
    pub async fn spawn<A: Actor>(
        &self,
        client: &Client,
        name: &str,
        params: impl Fn(usize) -> A::Params,
    ) -> Result<ActorMesh<A>, SpawnError> {
        let spawns = self.procs.iter().enumerate().map(|(rank, proc_id)| {
            let p = params(rank);
            async move { client.spawn::<A>(proc_id, name, &p).await }
        });
        let results = join_all(spawns).await;
        let mut actors = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(a) => actors.push(a),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            join_all(actors.iter().map(|a| client.stop_actor(a.id()))).await;
            return Err(e);
        }
        Ok(ActorMesh { actors })
    }

    /// Stops every proc of the mesh (their actors' stop hooks run).
    ///
    /// Errors: the first proc whose worker is not connected (the others are still told).
    pub fn stop(&self, alloc: &Allocator) -> Result<(), AllocatorError> {
        let mut first = Ok(());
        for p in &self.procs {
            if let Err(e) = alloc.stop_proc(p) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// One actor of type `A` on each proc of a mesh.
#[derive(Debug)]
pub struct ActorMesh<A> {
    actors: Vec<ActorRef<A>>,
}

impl<A> Clone for ActorMesh<A> {
    fn clone(&self) -> Self {
        ActorMesh {
            actors: self.actors.clone(),
        }
    }
}

impl<A: Actor> ActorMesh<A> {
    /// The actor on the proc of rank `rank` in the mesh.
    pub fn get(&self, rank: usize) -> Option<&ActorRef<A>> {
        self.actors.get(rank)
    }

    /// All actors, by rank.
    pub fn actors(&self) -> &[ActorRef<A>] {
        &self.actors
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// Whether the mesh has no actor.
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// Sends `msg` to every actor; it is encoded once and the sends run concurrently.
    ///
    /// Errors: [`SendError::Encode`] if `msg` cannot be serialized, else the
    /// first send that was refused (the others are still sent).
    pub async fn cast(&self, client: &Client, msg: A::Message) -> Result<(), SendError> {
        let payload = codec::encode(&msg).map_err(|e| SendError::Encode(e.to_string()))?;
        let sends = self
            .actors
            .iter()
            .map(|a| client.send_envelope(Dest::Actor(a.id().clone()), payload.clone(), None));
        join_all(sends).await.into_iter().collect()
    }

    /// Stops every actor of the mesh (stop hooks run).
    ///
    /// Errors: the first actor whose proc did not answer or refused.
    pub async fn stop(&self, client: &Client) -> Result<(), String> {
        for r in join_all(self.actors.iter().map(|a| client.stop_actor(a.id()))).await {
            r.map_err(|e| e.to_string())??;
        }
        Ok(())
    }
}
