//! The worker side: join the allocator, host procs, exit when told or when cut off.
//!
//! A worker process dials its allocator (design §1), sends `Hello`, waits for
//! `Welcome`, then serves commands on the control stream while heartbeats
//! flow as datagrams. It never outlives its allocator: a lost connection or
//! lost heartbeats end the process with the codes of [`crate::exit_code`].
//!
//! A user's binary becomes a worker by calling [`bootstrap_or_die`] first
//! thing in `main`: when the process was started by an allocator it runs the
//! worker and exits; otherwise it returns and `main` goes on as controller.

mod exit;
mod hosted;
mod procs;
pub mod runtimes;
mod session;
mod stop_budget;

pub use exit::{after_welcome, before_welcome, WorkerExit};
pub use hosted::{HostedProc, ProcStopReport};
pub use procs::{ProcTable, ProcTableError};
pub use stop_budget::{StopBudget, StopDeadlines, MAX_STOP_TIMEOUT};

use std::sync::Arc;

use crate::actor::Registry;

use std::time::Duration;

use crate::config::{Limits, MAX_PRE_ADMISSION_FRAME};
use crate::config::{TransportConfig, WorkerEnv, ENV_ALLOCATOR_ADDR};
use crate::exit_code;
use crate::tls;
use crate::transport::{self, FramedRecv, FramedSend, StreamError};
use crate::wire::{AllocatorToWorker, Hello, WorkerToAllocator, PROTOCOL_VERSION};

/// Priority of the control stream: above every mailbox stream, so bulk
/// traffic cannot delay commands.
pub const CONTROL_PRIORITY: i32 = 100;

/// Runs this process as a worker if an allocator started it, else returns.
///
/// "Started by an allocator" means `QUICMESH_ALLOCATOR_ADDR` is set. Then the
/// rest of the environment (design §4) is read, the worker runs, and the
/// process exits with the worker's exit code; on a configuration error it
/// exits 78 naming the variable. Call it before anything else in `main`; it
/// starts its own tokio runtime (on a separate thread if one is running).
/// `registry` holds the actor types the controller may spawn here.
pub fn bootstrap_or_die(registry: &Registry) {
    if std::env::var_os(ENV_ALLOCATOR_ADDR).is_none() {
        return;
    }
    crate::logging::init();
    let exit = match WorkerEnv::from_env() {
        Ok(env) => run_blocking(env, registry.clone()),
        Err(e) => WorkerExit::new(exit_code::CONFIG, format!("configuration error: {e}")),
    };
    finish(exit)
}

/// Logs `exit` in one line and ends the process with its code.
pub fn finish(exit: WorkerExit) -> ! {
    if !exit_code::is_failure(exit.code) {
        tracing::info!("worker exiting: {exit}");
    } else {
        tracing::error!("worker exiting: {exit}");
    }
    std::process::exit(exit.code)
}

/// Runs a worker to its end on runtimes of its own, from synchronous code.
///
/// The connection, heartbeats and session run on a transport thread of
/// their own, the actors on `QUICMESH_WORKER_THREADS` other threads (see
/// [`runtimes`]), so no actor, stuck or not, can delay a heartbeat or an
/// exit. Returns as soon as the worker's run ends, without waiting for actor
/// tasks: the caller is expected to exit the process (as [`finish`] does).
pub fn run_blocking(env: WorkerEnv, registry: Registry) -> WorkerExit {
    let threads = runtimes::actor_threads();
    match runtimes::run_on_worker_runtimes(threads, move || run(env, registry)) {
        Ok(exit) => exit,
        Err(e) => WorkerExit::new(exit_code::CONFIG, e),
    }
}

/// Joins the allocator described by `env` and serves it until the end.
///
/// Never fails: every way the run can end is a [`WorkerExit`] with the exit
/// code of [`crate::exit_code`] and a reason.
pub async fn run(env: WorkerEnv, registry: Registry) -> WorkerExit {
    run_with(env, TransportConfig::default(), registry).await
}

/// [`run`] with explicit transport timeouts.
pub async fn run_with(
    env: WorkerEnv,
    transport_config: TransportConfig,
    registry: Registry,
) -> WorkerExit {
    let config_err = |e: &dyn std::fmt::Display| {
        WorkerExit::new(exit_code::CONFIG, format!("configuration error: {e}"))
    };
    let roots = match tls::load_roots(&env.ca) {
        Ok(r) => r,
        Err(e) => return config_err(&e),
    };
    let identity = match tls::load_identity(&env.cert, &env.key) {
        Ok(i) => i,
        Err(e) => return config_err(&e),
    };
    let client_tls = match tls::client_config(roots, identity) {
        Ok(c) => c,
        Err(e) => return config_err(&e),
    };
    let addr = match transport::endpoint::resolve(&env.allocator_addr).await {
        Ok(a) => a,
        Err(e) => return WorkerExit::new(exit_code::UNREACHABLE, e.to_string()),
    };
    let limits = Limits::default();
    let endpoint = match transport::client_endpoint(client_tls, addr, &limits) {
        Ok(ep) => ep,
        Err(e) => return WorkerExit::new(exit_code::UNREACHABLE, e.to_string()),
    };
    let deadline = tokio::time::Instant::now() + transport_config.connect_timeout;
    let conn = match transport::connect(
        &endpoint,
        addr,
        &env.server_name,
        transport_config.connect_timeout,
    )
    .await
    {
        Ok(c) => c,
        Err(transport::ConnectError::Handshake { source, .. }) => return before_welcome(&source),
        Err(e) => return WorkerExit::new(exit_code::UNREACHABLE, e.to_string()),
    };
    tracing::debug!("connected to allocator at {addr}");
    let joined = tokio::time::timeout_at(deadline, join(&conn, &env)).await;
    let (control_send, control_recv, welcome) = match joined {
        Ok(Ok(j)) => j,
        Ok(Err(exit)) => {
            endpoint.wait_idle().await;
            return exit;
        }
        Err(_) => {
            conn.close(crate::wire::close::NORMAL, b"no Welcome in time");
            return WorkerExit::new(
                exit_code::UNREACHABLE,
                format!(
                    "no Welcome from the allocator at {addr} within {:?}",
                    transport_config.connect_timeout
                ),
            );
        }
    };
    tracing::info!("worker {} joined allocator at {addr}", env.index);
    let exit = session::Session::new(
        conn,
        control_send,
        control_recv,
        welcome,
        env.index,
        Arc::new(registry),
    )
    .run()
    .await;
    // Let close frames reach the allocator before the process ends.
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    exit
}

/// Opens the control stream, sends Hello and waits for Welcome.
async fn join(
    conn: &quinn::Connection,
    env: &WorkerEnv,
) -> Result<(FramedSend, FramedRecv, crate::wire::Welcome), WorkerExit> {
    let lost = |e: &quinn::ConnectionError| before_welcome(e);
    let (send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut send = FramedSend::new(send, MAX_PRE_ADMISSION_FRAME);
    send.set_priority(CONTROL_PRIORITY);
    let mut recv = FramedRecv::new(recv, MAX_PRE_ADMISSION_FRAME);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        index: env.index,
        token: env.token.clone(),
        pid: std::process::id(),
        host: host_name(),
    };
    let on_stream_error = |e: StreamError| -> WorkerExit {
        match e {
            StreamError::Read(quinn::ReadError::ConnectionLost(c))
            | StreamError::Write(quinn::WriteError::ConnectionLost(c)) => lost(&c),
            e if e.is_protocol_violation() => {
                conn.close(
                    crate::wire::close::PROTOCOL,
                    &crate::wire::close::reason_bytes(&e.to_string()),
                );
                WorkerExit::new(
                    exit_code::PROTOCOL,
                    format!("allocator sent an invalid frame: {e}"),
                )
            }
            e => match conn.close_reason() {
                Some(c) => lost(&c),
                None => WorkerExit::new(
                    exit_code::UNREACHABLE,
                    format!("control stream failed before Welcome: {e}"),
                ),
            },
        }
    };
    send.send(&WorkerToAllocator::Hello(hello))
        .await
        .map_err(on_stream_error)?;
    match recv.next::<AllocatorToWorker>().await {
        Ok(Some(AllocatorToWorker::Welcome(w))) => {
            if let Err(e) = w.heartbeat.validate() {
                conn.close(
                    crate::wire::close::PROTOCOL,
                    &crate::wire::close::reason_bytes(&e.to_string()),
                );
                return Err(WorkerExit::new(
                    exit_code::PROTOCOL,
                    format!("allocator sent unusable settings: {e}"),
                ));
            }
            send.set_max_frame(w.limits.max_frame);
            recv.set_max_frame(w.limits.max_frame);
            Ok((send, recv, w))
        }
        Ok(Some(other)) => {
            let why = format!("expected Welcome, got {other:?}");
            conn.close(
                crate::wire::close::PROTOCOL,
                &crate::wire::close::reason_bytes(&why),
            );
            Err(WorkerExit::new(exit_code::PROTOCOL, why))
        }
        Ok(None) => Err(lost(&conn.closed().await)),
        Err(e) => Err(on_stream_error(e)),
    }
}

/// This machine's host name, or `"unknown"`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}
