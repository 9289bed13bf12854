//! The worker's two runtimes: one for its connection, one for its actors.
//!
//! A handler that blocks its thread (a busy loop, a blocking call) stalls
//! every task of the runtime thread it runs on, and a task that never
//! yields cannot even be aborted. If the QUIC driver, the heartbeats and the
//! session shared those threads, enough stuck actors would silence the
//! worker: the allocator would declare it dead while its actors were merely
//! busy, and a worker whose allocator had died would never notice. So a
//! worker runs two runtimes:
//!
//! - the **transport** runtime, one thread (`quicmesh-transport`) with a
//!   current-thread scheduler: the endpoint and connection drivers, the
//!   heartbeat task, the session (control stream, stops, exit) and the
//!   tasks that move each proc's mailbox stream. Nothing of the user's runs
//!   there.
//! - the **actor** runtime, `QUICMESH_WORKER_THREADS` threads (default 2,
//!   named `quicmesh-actor`; `QUICMESH_WORKER_THREADS` or
//!   `--worker-threads`): actors, and each proc's system task, which runs
//!   user code (parameter decoding, constructors of remotely spawned
//!   actors).
//!
//! That isolation has a price on every round trip: a message arriving for
//! an actor wakes a sleeping actor thread from the transport thread, and its
//! answer wakes the transport thread again, two thread wake-ups that a
//! program with one runtime does not have (about 40 us of an ask's round
//! trip on a 2-core machine, where bare quinn's is about 120 us; see the
//! README's Performance section). A worker whose actors never block their
//! thread can have the round trip without them: [`WorkerRuntime::Shared`]
//! (`QUICMESH_WORKER_RUNTIME=shared`) runs the connection, heartbeats and
//! actors on one runtime of `QUICMESH_WORKER_THREADS` threads (with one
//! thread no message crosses threads; with two, the runtime's work
//! stealing moves tasks between them and brings most of the wake-ups back;
//! the session itself, control stream and signals, is polled on a thread of
//! its own, `quicmesh-session`).
//! The cost is
//! the isolation: a handler that blocks a thread delays whatever else that
//! thread had queued (a connection driver, a heartbeat), and handlers that
//! block every thread for longer than the heartbeat timeout get the worker
//! declared lost and its procs failed, the stuck actor's neighbours with
//! them. Other workers are unaffected either way, and the worker itself
//! still ends, through its [`super::watchdog`].
//!
//! Neither runtime is dropped in the ordinary way at the end: that waits for
//! every task, and a task stuck in a loop never ends. Both are shut down in
//! the background, and the process exits right after.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use tokio::runtime::{Builder, Handle, Runtime};

tokio::task_local! {
    /// The actor runtime of the worker whose session is polled in this task.
    static ACTORS: Handle;
    /// Set while the session of a [`WorkerRuntime::Shared`] worker is polled.
    static SHARED: ();
}

/// Whether the worker polled here shares its runtime with its actors (and
/// so needs the [`super::watchdog`]).
pub(super) fn is_shared() -> bool {
    SHARED.try_with(|_| ()).is_ok()
}

/// How a worker lays out its threads (`QUICMESH_WORKER_RUNTIME`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WorkerRuntime {
    /// The connection, heartbeats and session on a thread of their own, the
    /// actors on the worker's runtime threads: no actor, blocked or not, can
    /// delay a heartbeat or an exit. The default.
    #[default]
    Split,
    /// Everything on one runtime of the worker's threads: two thread
    /// wake-ups fewer per round trip, but a handler that blocks its thread
    /// can delay the connection, and handlers blocking every thread for
    /// longer than the heartbeat timeout get the whole worker declared lost.
    /// For actors that never block.
    Shared,
}

impl WorkerRuntime {
    /// The name used in settings: `split` or `shared`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerRuntime::Split => "split",
            WorkerRuntime::Shared => "shared",
        }
    }
}

impl fmt::Display for WorkerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorkerRuntime {
    type Err = String;

    /// `split` or `shared`; anything else is an error saying what is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "split" => Ok(WorkerRuntime::Split),
            "shared" => Ok(WorkerRuntime::Shared),
            _ => Err("expected split or shared".to_string()),
        }
    }
}

/// The runtime on which the worker polled here runs actors and each proc's system task.
///
/// That is the actor runtime when the worker was started by
/// [`run_on_worker_runtimes`]; a worker run on one runtime (shared, or a
/// caller's through [`crate::worker::run`]) keeps everything on it.
pub(super) fn actor_handle() -> Handle {
    ACTORS
        .try_with(Handle::clone)
        .unwrap_or_else(|_| Handle::current())
}

/// Runs the future made by `make` on a new transport runtime, in a thread of
/// its own, with actors on a new actor runtime of `threads` threads.
///
/// Errors: a runtime or the thread could not be created (the text says
/// which), or the transport thread panicked.
pub(super) fn run_on_worker_runtimes<F, T>(
    threads: usize,
    make: impl FnOnce() -> F + Send + 'static,
) -> Result<T, String>
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let actors = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("quicmesh-actor")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the actor runtime: {e}"))?;
    let actors = Background(Some(actors));
    let job = move || -> Result<T, String> {
        let transport = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the transport runtime: {e}"))?;
        let transport = Background(Some(transport));
        let (Some(t), Some(a)) = (&transport.0, &actors.0) else {
            return Err("worker runtimes gone before use".to_string());
        };
        Ok(t.block_on(ACTORS.scope(a.handle().clone(), make())))
    };
    std::thread::Builder::new()
        .name("quicmesh-transport".into())
        .spawn(job)
        .map_err(|e| format!("cannot start the transport thread: {e}"))?
        .join()
        .map_err(|_| "the transport thread panicked".to_string())?
}

/// Runs the future made by `make` to its end on a thread of its own
/// (`quicmesh-session`, so that a caller already inside a runtime is no
/// obstacle), with everything it spawns (connection drivers, heartbeats,
/// actors, mailbox tasks) on one new runtime of `threads` threads
/// ([`WorkerRuntime::Shared`]).
///
/// Errors: the runtime or the thread could not be created (the text says
/// which), or the session thread panicked.
pub(super) fn run_on_shared_runtime<F, T>(
    threads: usize,
    make: impl FnOnce() -> F + Send + 'static,
) -> Result<T, String>
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let shared = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("quicmesh-worker")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the worker runtime: {e}"))?;
    let shared = Background(Some(shared));
    let job = move || -> Result<T, String> {
        let Some(rt) = &shared.0 else {
            return Err("worker runtime gone before use".to_string());
        };
        Ok(rt.block_on(SHARED.scope((), make())))
    };
    std::thread::Builder::new()
        .name("quicmesh-session".into())
        .spawn(job)
        .map_err(|e| format!("cannot start the session thread: {e}"))?
        .join()
        .map_err(|_| "the session thread panicked".to_string())?
}

/// A runtime shut down in the background when dropped, even while unwinding:
/// an ordinary drop would wait for tasks that may never end.
struct Background(Option<Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
