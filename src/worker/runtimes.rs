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
/// [`run_on`] with [`WorkerRuntime::Split`]; a worker run on one runtime (shared, or a
/// caller's through [`crate::worker::run`]) keeps everything on it.
pub(super) fn actor_handle() -> Handle {
    ACTORS
        .try_with(Handle::clone)
        .unwrap_or_else(|_| Handle::current())
}

/// Runs the future made by `make` to its end in the `layout` asked for, with
/// `threads` runtime threads, and returns its output.
///
/// - [`WorkerRuntime::Split`]: `make`'s future on a new transport runtime in
///   a thread of its own (`quicmesh-transport`), actors on a new actor
///   runtime of `threads` threads.
/// - [`WorkerRuntime::Shared`]: `make`'s future on a thread of its own
///   (`quicmesh-session`), everything it spawns (connection drivers,
///   heartbeats, actors, mailbox tasks) on one new runtime of `threads`
///   threads.
///
/// Either way a caller already inside a runtime is no obstacle. Errors: a
/// runtime or the thread could not be created (the text says which), or
/// that thread panicked.
pub(super) fn run_on<F, T>(
    layout: WorkerRuntime,
    threads: usize,
    make: impl FnOnce() -> F + Send + 'static,
) -> Result<T, String>
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    match layout {
        WorkerRuntime::Split => {
            let actors = multi_thread(threads, "quicmesh-actor", "actor")?;
            on_thread("quicmesh-transport", "transport", move || {
                let transport = Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the transport runtime: {e}"))?;
                let transport = Background(Some(transport));
                let (Some(t), Some(a)) = (&transport.0, &actors.0) else {
                    return Err("worker runtimes gone before use".to_string());
                };
                Ok(t.block_on(ACTORS.scope(a.handle().clone(), make())))
            })
        }
        WorkerRuntime::Shared => {
            let shared = multi_thread(threads, "quicmesh-worker", "worker")?;
            on_thread("quicmesh-session", "session", move || {
                let Some(rt) = &shared.0 else {
                    return Err("worker runtime gone before use".to_string());
                };
                Ok(rt.block_on(SHARED.scope((), make())))
            })
        }
    }
}

/// A multi-thread runtime of `threads` threads named `name`; errors say
/// which (`what`) runtime could not be started.
fn multi_thread(threads: usize, name: &str, what: &str) -> Result<Background, String> {
    let rt = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {what} runtime: {e}"))?;
    Ok(Background(Some(rt)))
}

/// Runs `job` on a new thread named `name` and waits for its result; errors
/// say which (`what`) thread could not be started or panicked.
fn on_thread<T: Send + 'static>(
    name: &str,
    what: &str,
    job: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(job)
        .map_err(|e| format!("cannot start the {what} thread: {e}"))?
        .join()
        .map_err(|_| format!("the {what} thread panicked"))?
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
