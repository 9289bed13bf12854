//! Meshes: a set of procs, and one actor of a type on each of them.

use std::time::Duration;

use futures::future::join_all;

use crate::actor::{ActorRef, Client, SendError, Spawn, SpawnError, StopError};
use crate::allocator::{Allocator, AllocatorError, ProcState};
use crate::id::{ActorId, ProcId};
use crate::wire::{codec, Dest};

/// Some members of a mesh could not be stopped as asked; the others were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} of the mesh's members did not stop as asked: {}", failures.len(), describe(failures))]
#[non_exhaustive]
pub struct MeshError {
    /// Each member that did not stop as asked, with why.
    pub failures: Vec<(String, String)>,
}

fn describe(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(who, why)| format!("{who}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A set of procs, ordered by rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcMesh {
    procs: Vec<ProcId>,
}

impl ProcMesh {
    /// The procs of `alloc` that are running now, by rank.
    pub fn of(alloc: &Allocator) -> ProcMesh {
        let procs = alloc
            .procs()
            .into_iter()
            .filter(|p| alloc.proc_state(p) == Some(ProcState::Running))
            .collect();
        ProcMesh { procs }
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
    pub async fn spawn<A: Spawn>(
        &self,
        from: &impl AsRef<Client>,
        name: &str,
        params: impl Fn(usize) -> A::Params,
    ) -> Result<ActorMesh<A>, SpawnError> {
        let client = from.as_ref();
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

    /// Stops every proc of the mesh (their actors' stop hooks run) and waits,
    /// up to `timeout`, until each is reported stopped or failed.
    ///
    /// Errors: [`MeshError`] naming each proc that could not be told (its
    /// worker is gone) or had not ended by the deadline; the others are
    /// stopped all the same.
    pub async fn stop(&self, alloc: &Allocator, timeout: Duration) -> Result<(), MeshError> {
        let mut failures = Vec::new();
        let mut told = Vec::new();
        for p in &self.procs {
            match alloc.stop_proc(p) {
                Ok(()) => told.push(p.clone()),
                Err(AllocatorError::NotConnected(_)) | Err(AllocatorError::UnknownProc(_))
                    if alloc.proc_state(p).is_some_and(|s| s.is_terminal()) =>
                {
                    // Already ended: nothing to stop.
                }
                Err(e) => failures.push((p.to_string(), e.to_string())),
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = alloc.events();
        loop {
            let waiting: Vec<&ProcId> = told
                .iter()
                .filter(|p| !alloc.proc_state(p).is_some_and(|s| s.is_terminal()))
                .collect();
            if waiting.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, events.next())
                .await
                .is_err()
            {
                for p in waiting {
                    failures.push((p.to_string(), format!("not stopped within {timeout:?}")));
                }
                break;
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(MeshError { failures })
        }
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

impl<A: Spawn> ActorMesh<A> {
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
    pub async fn cast(&self, from: &impl AsRef<Client>, msg: A::Message) -> Result<(), SendError> {
        let client = from.as_ref();
        let payload = codec::encode(&msg).map_err(SendError::Encode)?;
        let sends = self
            .actors
            .iter()
            .map(|a| client.send_envelope(Dest::Actor(a.id().clone()), payload.clone(), None));
        join_all(sends).await.into_iter().collect()
    }

    /// Stops every actor of the mesh (stop hooks run) and waits for each.
    ///
    /// Errors: [`MeshError`] naming each actor whose proc did not answer or
    /// could not stop it as asked; the others are stopped all the same.
    pub async fn stop(&self, from: &impl AsRef<Client>) -> Result<(), MeshError> {
        let client = from.as_ref();
        let results = join_all(self.actors.iter().map(|a| client.stop_actor(a.id()))).await;
        let failures: Vec<(String, String)> = self
            .actors
            .iter()
            .zip(results)
            .filter_map(|(a, r): (&ActorRef<A>, Result<(), StopError>)| {
                r.err().map(|e| (a.id().to_string(), e.to_string()))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(MeshError { failures })
        }
    }

    /// The ids of the actors, by rank.
    pub fn ids(&self) -> Vec<ActorId> {
        self.actors.iter().map(|a| a.id().clone()).collect()
    }
}
