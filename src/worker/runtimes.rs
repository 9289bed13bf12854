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
//!   heartbeat task and the session (control stream, stops, exit). Nothing
//!   of the user's runs there.
//! - the **actor** runtime, `QUICMESH_WORKER_THREADS` threads (default 2,
//!   named `quicmesh-actor`; `QUICMESH_WORKER_THREADS` or `--worker-threads`): actors, and the tasks that move each proc's
//!   mailbox stream, which also run user code (message and parameter
//!   decoding, constructors of remotely spawned actors).
//!
//! Neither runtime is dropped in the ordinary way at the end: that waits for
//! every task, and a task stuck in a loop never ends. Both are shut down in
//! the background, and the process exits right after.

use std::future::Future;

use tokio::runtime::{Builder, Handle, Runtime};

tokio::task_local! {
    /// The actor runtime of the worker whose session is polled in this task.
    static ACTORS: Handle;
}

/// The runtime on which the worker polled here runs actors and mailbox tasks.
///
/// That is the actor runtime when the worker was started by
/// [`run_on_worker_runtimes`]; a worker run directly on a caller's runtime
/// (through [`crate::worker::run`]) keeps everything on that runtime.
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
