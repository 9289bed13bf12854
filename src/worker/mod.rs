//! The worker side: join the allocator, host procs, exit when told or when cut off.
//!
//! A worker process dials its allocator (docs/design.md §2.2), sends `Hello`, waits for
//! `Welcome`, then serves commands on the control stream while heartbeats
//! flow as datagrams. It never outlives its allocator: a lost connection or
//! lost heartbeats end the process with the codes of [`crate::exit_code`].
//!
//! A user's binary becomes a worker by calling [`bootstrap_or_die`] first
//! thing in `main`: when the process was started by an allocator it runs the
//! worker and exits; otherwise it returns and `main` goes on as controller.
//! What a worker is told (allocator address, index, token, certificates...)
//! is defined once, flags and `QUICMESH_*` variables alike, in
//! [`WorkerSettings`].

mod attempt;
mod backoff;
mod exit;
mod hosted;
mod log_forward;
mod procs;
mod runtimes;
mod secrets;
mod session;
mod settings;
mod stop_budget;
mod watchdog;
mod welcome;

pub use exit::WorkerExit;
pub use runtimes::WorkerRuntime;
pub use secrets::{SecretsError, MAX_SECRETS_BYTES, MAX_SECRETS_LINES};
pub use settings::{SettingsError, WorkerEnv, WorkerSettings};

use std::sync::Arc;

use tracing::Instrument;

use crate::actor::Registry;

use std::time::Duration;

use attempt::AttemptError;
use backoff::Backoff;

use crate::config::{Limits, MAX_PRE_ADMISSION_FRAME};
use crate::config::{
    TransportConfig, ENV_ALLOCATOR_ADDR, ENV_HEARTBEAT_INTERVAL, ENV_HEARTBEAT_TIMEOUT,
};
use crate::exit_code;
use crate::tls;
use crate::transport::endpoint::resolve;
use crate::transport::{self, ConnectError, FramedRecv, FramedSend, StreamError};
use crate::wire::{close, AllocatorToWorker, Hello, Welcome, WorkerToAllocator, PROTOCOL_VERSION};

/// Runs this process as a worker if an allocator started it, else returns.
///
/// "Started by an allocator" means `QUICMESH_ALLOCATOR_ADDR` is set, or
/// `QUICMESH_SECRETS_STDIN=1` (the settings then come on standard input,
/// see [`run_and_exit`]). Then the rest of the environment is read
/// ([`WorkerSettings::from_env`]), every `QUICMESH_*` variable is removed
/// from the process environment, the worker runs, and the process exits
/// with the worker's exit code; on a configuration error it exits 78 naming
/// the variable (and the flag of `quicmesh worker` that would set it).
///
/// Call it first thing in `main`, before the program starts any thread:
/// removing variables races with threads that read the environment. It
/// starts its own tokio runtime (on a separate thread if one is running).
/// `registry` holds the actor types the controller may spawn here.
pub fn bootstrap_or_die(registry: &Registry) {
    if std::env::var_os(ENV_ALLOCATOR_ADDR).is_none()
        && !matches!(
            std::env::var(crate::config::ENV_SECRETS_STDIN).as_deref(),
            Ok("1" | "true")
        )
    {
        return;
    }
    match WorkerSettings::from_env() {
        Ok(settings) => run_and_exit(&settings, registry),
        Err(e) => {
            crate::logging::init();
            finish(config_error(&e))
        }
    }
}

/// Checks `settings`, runs the worker, and ends the process with its exit
/// code; never returns.
///
/// Settings that fail [`WorkerSettings::validate`] end it at once with 78
/// ([`exit_code::CONFIG`]) and a line naming the variable and the flag. Sets
/// up logging ([`crate::logging::init`]) unless the program already did.
/// This is what `quicmesh worker` and [`bootstrap_or_die`] do, for a program
/// that flattens [`WorkerSettings`] into its own command line.
///
/// With `--secrets-stdin` (or `QUICMESH_SECRETS_STDIN=1`) the settings are
/// first read from standard input as `NAME=value` lines up to an empty line
/// or the end of input, within the join timeout given by flag or variable
/// (default 60 s) ([`SecretsError`] for a bad line or a timeout, exit 78); they win
/// over flags and variables. Once the settings are read, every `QUICMESH_*`
/// variable is removed from the process environment, so that programs the
/// actors start do not inherit the token: call this before the program
/// starts any thread (removing variables races with threads that read the
/// environment).
pub fn run_and_exit(settings: &WorkerSettings, registry: &Registry) -> ! {
    crate::logging::init();
    let prepared = prepare(settings.clone());
    secrets::scrub_environment();
    let exit = match prepared {
        Ok(env) => run_blocking(env, registry.clone()),
        Err(e) => config_error(&e),
    };
    finish(exit)
}

/// Reads standard input if the settings ask for it, then checks them.
fn prepare(mut settings: WorkerSettings) -> Result<WorkerEnv, SettingsError> {
    if settings.wants_stdin()? {
        let timeout = settings.join_timeout_given()?;
        settings.apply_pairs(secrets::read_stdin_secrets(timeout)?)?;
    }
    settings.validate()
}

/// The exit for settings that cannot be used.
fn config_error(e: &SettingsError) -> WorkerExit {
    WorkerExit::new(exit_code::CONFIG, format!("configuration error: {e}"))
}

/// Logs `exit` in one line and ends the process with its code.
pub(crate) fn finish(exit: WorkerExit) -> ! {
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
/// exit; with [`WorkerRuntime::Shared`] all of it runs on those threads
/// (quicker round trips, without that isolation). Returns as soon as the
/// worker's run ends, without waiting for actor tasks: the caller is
/// expected to exit the process (as [`finish`] does).
pub(crate) fn run_blocking(env: WorkerEnv, registry: Registry) -> WorkerExit {
    log_forward::own_process();
    let threads = env.worker_threads.clamp(1, settings::MAX_WORKER_THREADS);
    match runtimes::run_on(env.runtime, threads, move || run(env, registry)) {
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
///
/// Joining is retried (see [`attempt`] for what is retried and why, and
/// [`backoff`] for when) until `env.join_timeout` has passed since the
/// start; then the worker exits 69 with the last attempt's reason. Once
/// welcomed it never reconnects: a lost connection ends the worker.
pub(crate) async fn run_with(
    env: WorkerEnv,
    transport_config: TransportConfig,
    registry: Registry,
) -> WorkerExit {
    let config_err = |e: &dyn std::fmt::Display| {
        WorkerExit::new(exit_code::CONFIG, format!("configuration error: {e}"))
    };
    let roots = match tls::load::load_roots(&env.ca) {
        Ok(r) => r,
        Err(e) => return config_err(&e),
    };
    let identity = match tls::load::load_identity(&env.cert, &env.key) {
        Ok(i) => i,
        Err(e) => return config_err(&e),
    };
    let client_tls = match tls::rustls_config::client_config(roots, identity) {
        Ok(c) => c,
        Err(e) => return config_err(&e),
    };
    let joined = match join_with_retry(&env, &client_tls, &transport_config).await {
        Ok(j) => j,
        Err(exit) => return exit,
    };
    tracing::info!(
        "worker {} joined allocator at {}",
        env.index,
        joined.conn.remote_address()
    );
    if let Some(own) = env.heartbeat.filter(|own| *own != joined.welcome.heartbeat) {
        let used = joined.welcome.heartbeat;
        tracing::warn!(
            "worker {}: the allocator's heartbeat settings apply (interval {:?}, timeout {:?}), \
             not this worker's {ENV_HEARTBEAT_INTERVAL}={:?} / {ENV_HEARTBEAT_TIMEOUT}={:?}: \
             the allocator judges every worker by its own",
            env.index,
            used.interval,
            used.timeout,
            own.interval,
            own.timeout
        );
    }
    let exit = session::Session::new(
        joined.conn,
        joined.control_send,
        joined.control_recv,
        joined.welcome,
        env.index,
        env.link,
        Arc::new(registry),
    )
    .run()
    .instrument(tracing::info_span!("worker", index = env.index))
    .await;
    // Let close frames reach the allocator before the process ends.
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, joined.endpoint.wait_idle()).await;
    exit
}

/// How long a worker waits for its close frame to leave before it exits.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection welcomed by the allocator.
struct Joined {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    control_send: FramedSend,
    control_recv: FramedRecv,
    welcome: Welcome,
}

/// Tries to join until welcomed, a final failure, or the join deadline.
async fn join_with_retry(
    env: &WorkerEnv,
    client_tls: &rustls::ClientConfig,
    transport_config: &TransportConfig,
) -> Result<Joined, WorkerExit> {
    let started = tokio::time::Instant::now();
    let deadline = started + env.join_timeout;
    let mut backoff = Backoff::default();
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = transport_config.connect_timeout.min(left);
        let failure = match join_once(env, client_tls.clone(), limit).await {
            Ok(joined) => return Ok(joined),
            Err(failure) => failure,
        };
        if !failure.retry {
            return Err(failure.exit);
        }
        let reason = failure.exit.reason;
        let now = tokio::time::Instant::now();
        let wait = backoff.after_failure(&mut rand::rng(), now.into_std(), deadline.into_std());
        let Some(wait) = wait else {
            return Err(WorkerExit::new(
                exit_code::UNREACHABLE,
                format!(
                    "could not join the allocator at {} within the join deadline of {:?} \
                     ({attempts} attempts); last: {reason}",
                    env.allocator_addr, env.join_timeout
                ),
            ));
        };
        tracing::warn!(
            "worker {}: join attempt {attempts} failed ({reason}); retrying in {} ms",
            env.index,
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
}

/// One attempt: resolve and handshake within `limit`, then Hello and
/// Welcome within a fresh `limit`.
async fn join_once(
    env: &WorkerEnv,
    client_tls: rustls::ClientConfig,
    limit: Duration,
) -> Result<Joined, AttemptError> {
    let deadline = tokio::time::Instant::now() + limit;
    let addr = match tokio::time::timeout_at(deadline, resolve(&env.allocator_addr)).await {
        Ok(Ok(addr)) => addr,
        // The text was checked at start-up: the name may not resolve *yet*.
        Ok(Err(e)) => return Err(AttemptError::transient(e.to_string())),
        Err(_) => {
            return Err(AttemptError::transient(format!(
                "cannot resolve {:?} within {limit:?}",
                env.allocator_addr
            )))
        }
    };
    let endpoint = match transport::client_endpoint(client_tls, addr, &Limits::default(), &env.link)
    {
        Ok(ep) => ep,
        Err(e) => {
            return Err(AttemptError::fatal(WorkerExit::new(
                exit_code::UNREACHABLE,
                e.to_string(),
            )))
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let conn = match transport::connect(&endpoint, addr, &env.server_name, left).await {
        Ok(c) => c,
        Err(ConnectError::Handshake { source, .. }) => {
            let failure = attempt::classify(&source);
            if !failure.retry {
                flush_close(&endpoint).await;
            }
            return Err(failure);
        }
        Err(e @ ConnectError::Timeout { .. }) => {
            return Err(AttemptError::transient(e.to_string()))
        }
        Err(e) => {
            return Err(AttemptError::fatal(WorkerExit::new(
                exit_code::UNREACHABLE,
                e.to_string(),
            )))
        }
    };
    tracing::debug!("connected to allocator at {addr}");
    // The allocator completed the handshake: it is there, if loaded (a
    // thousand workers starting on its cores). The Hello and its Welcome
    // get a fresh `limit` of their own rather than what the handshake left:
    // giving up on a Welcome already on its way burns the slot (the next
    // attempt is told "already left").
    let deadline = deadline.max(tokio::time::Instant::now() + limit);
    match tokio::time::timeout_at(deadline, join(&conn, env)).await {
        Ok(Ok((control_send, control_recv, welcome))) => Ok(Joined {
            endpoint,
            conn,
            control_send,
            control_recv,
            welcome,
        }),
        Ok(Err(failure)) => {
            if !failure.retry {
                flush_close(&endpoint).await;
            }
            Err(failure)
        }
        Err(_) => {
            // If the allocator did admit us, closing ends that slot: the
            // next attempt is then told so instead of waiting forever.
            conn.close(close::NORMAL, b"no Welcome in time");
            Err(AttemptError::transient(format!(
                "no Welcome from the allocator at {addr} within {limit:?}"
            )))
        }
    }
}

/// Gives a close frame we sent a moment to leave before the worker exits.
async fn flush_close(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, endpoint.wait_idle()).await;
}

/// Opens the control stream, sends Hello and waits for a Welcome it accepts.
///
/// The Welcome is checked ([`welcome::check`]) before anything uses it; then
/// the frame limits are raised to it, and the connection's receive window to
/// what the control stream needs (it grows with each proc started, see
/// `session`).
async fn join(
    conn: &quinn::Connection,
    env: &WorkerEnv,
) -> Result<(FramedSend, FramedRecv, Welcome), AttemptError> {
    let lost = |e: &quinn::ConnectionError| attempt::classify(e);
    let violation = |why: String| -> AttemptError {
        conn.close(close::PROTOCOL, &close::reason_bytes(&why));
        AttemptError::fatal(WorkerExit::new(exit_code::PROTOCOL, why))
    };
    let (send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut send = FramedSend::new(send, MAX_PRE_ADMISSION_FRAME);
    send.set_priority(crate::transport::priority::CONTROL);
    let mut recv = FramedRecv::new(recv, MAX_PRE_ADMISSION_FRAME);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        index: env.index,
        token: env.token.clone(),
        pid: std::process::id(),
        host: host_name(),
    };
    let on_stream_error = |e: StreamError| -> AttemptError {
        match e {
            StreamError::Read(quinn::ReadError::ConnectionLost(c))
            | StreamError::Write(quinn::WriteError::ConnectionLost(c)) => lost(&c),
            e if e.is_protocol_violation() => {
                violation(format!("allocator sent an invalid frame: {e}"))
            }
            e => match conn.close_reason() {
                Some(c) => lost(&c),
                None => {
                    AttemptError::transient(format!("control stream failed before Welcome: {e}"))
                }
            },
        }
    };
    send.send(&WorkerToAllocator::Hello(hello))
        .await
        .map_err(on_stream_error)?;
    match recv.next::<AllocatorToWorker>().await {
        Ok(Some(AllocatorToWorker::Welcome(w))) => {
            let w = welcome::check(&w)
                .map_err(|e| violation(format!("allocator sent unusable settings: {e}")))?;
            send.set_max_frame(w.limits.max_frame);
            recv.set_max_frame(w.limits.max_frame);
            transport::endpoint::fit_receive_window(conn, 0, &env.link);
            Ok((send, recv, w))
        }
        Ok(Some(other)) => Err(violation(format!("expected Welcome, got {other:?}"))),
        Ok(None) => Err(lost(&conn.closed().await)),
        Err(e) => Err(on_stream_error(e)),
    }
}

/// This machine's host name, or `"unknown"`.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}
