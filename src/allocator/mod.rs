//! The allocator: launches or admits workers, starts procs on them, and
//! reports what happens to them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quicmesh::allocator::{Allocator, AllocatorConfig, Launcher};
//! let certs = quicmesh::tls::ensure_dev_certs("certs")?;
//! let alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
//! let mut events = alloc.events();
//! alloc.launch(&Launcher::current_exe()?, 4, 1)?;
//! while let Some(event) = events.next().await {
//!     println!("{event}");
//! }
//! # Ok(()) }
//! ```
//!
//! What lives here, and what it may use (actors, heartbeats, transport,
//! wire, TLS, settings, ids, reasons; never the worker side):
//!
//! - this file: the [`Allocator`] handle; `config.rs`, `error.rs`: its
//!   settings and errors; `events.rs`: what it reports; `shared.rs`: the
//!   state its handle and tasks share;
//! - `server.rs`: the listener (Retry, handshake slots `handshakes.rs`,
//!   admission `admission.rs`); `session.rs`: one worker's session as a
//!   state machine, `connection.rs` its driver;
//! - `router.rs`: where envelopes go; `link.rs`: the allocator's end of one
//!   proc's mailbox stream, with `in_flight.rs` (what is unacknowledged),
//!   `parking.rs` (lines for full destinations) and `stall.rs` (the judge of
//!   a proc that takes nothing);
//! - `launcher.rs`: starting worker processes and supervising them.
//!
//! The decisions (`admission`, `handshakes`, `session`, `in_flight`,
//! `parking`, `stall`) are plain code with unit tests; the rest moves bytes,
//! time and tasks. See `docs/design.md` for the protocol and why.

mod admission;
mod config;
mod connection;
mod error;
mod events;
mod handshakes;
mod in_flight;
mod launcher;
mod link;
mod logs;
mod metrics;
mod parking;
mod router;
mod server;
mod session;
mod shared;
mod stall;
mod status;

pub use crate::actor::Returns;
pub use crate::wire::{LogLevel, LogSource};
pub use config::AllocatorConfig;
pub use error::{AllocatorError, StartError};
pub use events::{AllocEvent, Events, ProcState, RefusalStats};
pub use launcher::Launcher;
pub use link::LinkStats;
pub use logs::{LogRecord, Logs};
pub use metrics::{Metrics, MetricsServer, ProcStreamMetrics, WorkerMetrics};
pub use status::WorkerStatus;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::task::JoinHandle;

use crate::actor::{returns, Client, Proc, ProcConfig};
use crate::config::{self as settings, ConfigError};
use crate::id::{is_valid_name, ProcId};
use crate::reason::ExitReport;
use crate::sync::lock;
use crate::tls;
use session::WorkerCommand;
use shared::Shared;

/// Everything a worker started by other means needs to join.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JoinTicket {
    /// The worker's index.
    pub index: u32,
    /// The environment to give the worker (its token included: keep it secret).
    pub env: Vec<(&'static str, String)>,
}

/// A running allocation: listener, workers, procs and their events.
///
/// Every method takes `&self`: the handle can be shared (in an `Arc`)
/// between tasks that launch, send and watch at once.
pub struct Allocator {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    client: Client,
    controller: Proc,
    returns: Returns,
}

impl Allocator {
    /// Loads the certificates, binds the listener and starts accepting workers.
    ///
    /// Errors: [`AllocatorError::Config`] for an invalid name or setting,
    /// [`AllocatorError::Tls`] naming the certificate file that is missing,
    /// malformed, expired or mismatched, [`AllocatorError::Transport`] if the
    /// address cannot be bound.
    pub async fn bind(config: AllocatorConfig) -> Result<Allocator, AllocatorError> {
        config.heartbeat.validate()?;
        config.limits.validate()?;
        config.transport.validate()?;
        config.link.validate()?;
        if !is_valid_name(&config.alloc_name) {
            return Err(ConfigError::Invalid {
                name: "allocation name",
                value: config.alloc_name.clone(),
                problem: "must be 1-128 characters of [A-Za-z0-9_-]".into(),
            }
            .into());
        }
        // Workers get these paths: check them now rather than in every worker.
        tls::load::load_identity(&config.worker_cert, &config.worker_key)?;
        let roots = tls::load::load_roots(&config.ca)?;
        let identity = tls::load::load_identity(&config.cert, &config.key)?;
        let server_tls = tls::rustls_config::server_config(roots, identity)?;
        let endpoint = crate::transport::server_endpoint(
            config.listen,
            server_tls,
            &config.heartbeat,
            &config.limits,
            &config.link,
        )?;
        let local_addr =
            endpoint
                .local_addr()
                .map_err(|source| crate::transport::TransportError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let controller_id = ProcId::new(format!("{}_ctl", config.alloc_name), 0);
        let proc_config = ProcConfig {
            mailbox_bytes: config.limits.mailbox_bytes as usize,
            ask_timeout: config.ask_timeout,
            max_frame: config.limits.max_frame,
            ..ProcConfig::default()
        };
        let (returns_tx, returns) = returns(config.returns_bytes);
        let registry = Arc::new(config.registry.clone());
        let mut outputs = None;
        let router = Arc::new_cyclic(|weak| {
            let outlet = Arc::new(router::RouterOutlet(weak.clone()));
            let (controller, out) = Proc::with_outlet(
                controller_id,
                registry,
                proc_config,
                outlet,
                Some(returns_tx),
            );
            outputs = Some(out);
            router::Router::new(controller)
        });
        let controller = router.controller().clone();
        let shared = Arc::new(Shared::new(config, router));
        let mut tasks = vec![tokio::spawn(server::accept_loop(
            shared.clone(),
            endpoint.clone(),
        ))];
        if let Some(mut outputs) = outputs {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                while let Some((actor_id, reason)) = outputs.failures.recv().await {
                    shared.emit(AllocEvent::ActorFailed { actor_id, reason });
                }
            }));
        }
        if shared.config.print_worker_logs {
            tasks.push(tokio::spawn(logs::print_lines(shared.logs.subscribe())));
        }
        tracing::info!("allocator listening on {local_addr}");
        let client = controller
            .client("controller")
            .map_err(|e| ConfigError::Invalid {
                name: "controller client name",
                value: "controller".into(),
                problem: e.to_string(),
            })?;
        Ok(Allocator {
            client,
            controller,
            shared,
            endpoint,
            local_addr,
            tasks: std::sync::Mutex::new(tasks),
            returns,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `host:port` workers are told to dial.
    pub fn advertised_addr(&self) -> String {
        self.shared
            .config
            .advertise
            .clone()
            .unwrap_or_else(|| self.local_addr.to_string())
    }

    /// The allocation's configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.shared.config
    }

    /// Reserves the next worker index with a fresh token and `procs` procs to start on it.
    ///
    /// Start the worker with the ticket's environment, by any means.
    pub fn reserve(&self, procs: u32) -> JoinTicket {
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let first = self.shared.next_rank.fetch_add(procs, Ordering::Relaxed);
        let proc_ids: Vec<ProcId> = (first..first + procs)
            .map(|rank| ProcId::new(self.shared.config.alloc_name.clone(), rank))
            .collect();
        let mut admission = self.shared.lock_admission();
        let index = admission.next_index();
        admission.reserve(index, token.clone(), proc_ids);
        drop(admission);
        let abs = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let c = &self.shared.config;
        JoinTicket {
            index,
            env: vec![
                (settings::ENV_ALLOCATOR_ADDR, self.advertised_addr()),
                (settings::ENV_SERVER_NAME, c.server_name.clone()),
                (settings::ENV_INDEX, index.to_string()),
                (settings::ENV_TOKEN, token),
                (settings::ENV_CA, abs(&c.ca)),
                (settings::ENV_CERT, abs(&c.worker_cert)),
                (settings::ENV_KEY, abs(&c.worker_key)),
                (settings::ENV_LINK, c.link.to_string()),
            ],
        }
    }

    /// Starts `workers` worker processes with `launcher`, each to host `procs_per_worker` procs.
    ///
    /// Returns their indexes. Errors: [`AllocatorError::Spawn`] if a process
    /// cannot be started (those already started keep running).
    pub fn launch(
        &self,
        launcher: &Launcher,
        workers: u32,
        procs_per_worker: u32,
    ) -> Result<Vec<u32>, AllocatorError> {
        let mut indexes = Vec::new();
        for _ in 0..workers {
            let ticket = self.reserve(procs_per_worker);
            let index = ticket.index;
            let child =
                launcher
                    .spawn(index, &ticket.env)
                    .map_err(|source| AllocatorError::Spawn {
                        index,
                        program: format!("{launcher:?}"),
                        source,
                    })?;
            let task = launcher::supervise(self.shared.clone(), index, child);
            lock(&self.tasks).push(task);
            indexes.push(index);
        }
        Ok(indexes)
    }

    /// Starts one more proc on connected worker `index`; returns its id.
    ///
    /// Errors: [`AllocatorError::NotConnected`] if that worker is not connected.
    pub fn start_proc(&self, index: u32) -> Result<ProcId, AllocatorError> {
        let rank = self.shared.next_rank.fetch_add(1, Ordering::Relaxed);
        let proc_id = ProcId::new(self.shared.config.alloc_name.clone(), rank);
        if !self
            .shared
            .command(index, WorkerCommand::StartProc(proc_id.clone()))
        {
            return Err(AllocatorError::NotConnected(index));
        }
        self.shared
            .lock_admission()
            .add_proc(index, proc_id.clone());
        Ok(proc_id)
    }

    /// Stops proc `proc_id`: its actors' stop hooks run, then it is reported `Stopped`.
    ///
    /// Errors: [`AllocatorError::UnknownProc`] if there is no such proc,
    /// [`AllocatorError::NotConnected`] if its worker is not connected.
    pub fn stop_proc(&self, proc_id: &ProcId) -> Result<(), AllocatorError> {
        let index = self
            .worker_of(proc_id)
            .ok_or_else(|| AllocatorError::UnknownProc(proc_id.clone()))?;
        self.command(index, WorkerCommand::StopProc(proc_id.clone()))
    }

    /// The index of the worker hosting `proc_id`.
    pub fn worker_of(&self, proc_id: &ProcId) -> Option<u32> {
        self.shared.lock_admission().worker_of(proc_id)
    }

    /// Every proc of the allocation so far (reserved, running or ended), by rank.
    pub fn procs(&self) -> Vec<ProcId> {
        self.shared.lock_admission().procs()
    }

    /// The controller's handle for sending messages, asking, and spawning actors.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The controller's own proc, to host actors in this process.
    pub fn controller_proc(&self) -> &Proc {
        &self.controller
    }

    /// The messages the controller's clients sent that came back undelivered
    /// (asks are failed directly and do not appear here).
    ///
    /// A bounded stream ([`AllocatorConfig::returns_bytes`]): returns nobody
    /// reads are dropped past that and counted ([`Returns::dropped`]). Every
    /// call gives a handle to the same stream.
    pub fn returns(&self) -> Returns {
        self.returns.clone()
    }

    /// A new subscription to the allocator's events, from now on.
    ///
    /// Any number of tasks may subscribe; each sees every event (see
    /// [`Events`] for what happens to a subscriber that falls behind).
    pub fn events(&self) -> Events {
        self.shared.subscribe()
    }

    /// A new subscription to every worker's log lines, from now on: the
    /// `tracing` events and stdout/stderr lines each worker forwards over
    /// its own connection, wherever it runs (docs/design.md §2.11).
    ///
    /// Any number of tasks may subscribe; each sees every line accepted
    /// (see [`Logs`] for a subscriber that falls behind). Unless
    /// [`AllocatorConfig::print_worker_logs`] is off, the allocator also
    /// prints them, as `[worker N host] ...`.
    pub fn logs(&self) -> Logs {
        self.shared.logs.subscribe()
    }

    /// A snapshot of the allocator's counters: workers and procs by state,
    /// round trips, per-proc stream counters, refusals, log lines dropped.
    pub fn metrics(&self) -> Metrics {
        metrics::snapshot(&self.shared)
    }

    /// Serves [`Allocator::metrics`] in the Prometheus text format at
    /// `http://ADDR/metrics` until the returned handle is dropped (port 0
    /// picks a free port: see [`MetricsServer::local_addr`]).
    ///
    /// Errors: [`AllocatorError::Metrics`] if `addr` cannot be bound.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> Result<MetricsServer, AllocatorError> {
        metrics::serve(Arc::downgrade(&self.shared), addr)
            .await
            .map_err(|source| AllocatorError::Metrics { addr, source })
    }

    /// One row per worker slot: index, host, state, round trip, live procs
    /// and bytes queued towards them (what `quicmesh demo --metrics` shows).
    pub fn status(&self) -> Vec<WorkerStatus> {
        status::table(&self.metrics())
    }

    /// Connections refused before admission and mailbox streams rejected so
    /// far, with the last reason of each.
    pub fn refusals(&self) -> RefusalStats {
        self.shared.refusals()
    }

    /// The round trip of connected worker `index`'s path, as last measured
    /// by its heartbeats (quinn's smoothed estimate, read every heartbeat
    /// interval). `None` if that worker is not connected or no heartbeat has
    /// been sent yet.
    pub fn worker_rtt(&self, index: u32) -> Option<Duration> {
        self.shared.worker_rtt(index)
    }

    /// Delivery counters of the mailbox towards `proc_id`.
    pub fn link_stats(&self, proc_id: &ProcId) -> Option<LinkStats> {
        self.shared.router.link(proc_id).map(|l| l.stats())
    }

    fn command(&self, index: u32, cmd: WorkerCommand) -> Result<(), AllocatorError> {
        if self.shared.command(index, cmd) {
            Ok(())
        } else {
            Err(AllocatorError::NotConnected(index))
        }
    }

    /// Tells worker `index` to stop its procs and exit with `code`.
    ///
    /// Errors: [`AllocatorError::NotConnected`] if that worker is not connected.
    pub fn stop_worker(&self, index: u32, code: i32) -> Result<(), AllocatorError> {
        self.command(index, WorkerCommand::StopAndExit(code))
    }

    /// Tells worker `index` to exit with `code` at once.
    ///
    /// Errors: [`AllocatorError::NotConnected`] if that worker is not connected.
    pub fn exit_worker(&self, index: u32, code: i32) -> Result<(), AllocatorError> {
        self.command(index, WorkerCommand::Exit(code))
    }

    /// Tells every connected worker to stop and exit with `code`; returns how many were told.
    pub fn stop_all(&self, code: i32) -> usize {
        self.shared.command_all(|| WorkerCommand::StopAndExit(code))
    }

    /// Indexes of the workers connected now.
    pub fn connected_workers(&self) -> Vec<u32> {
        self.shared.connected_workers()
    }

    /// The OS process id of launched worker `index`, while it runs.
    pub fn worker_pid(&self, index: u32) -> Option<u32> {
        self.shared.child_pid(index)
    }

    /// SIGKILLs launched worker `index` now; false if this allocator did not
    /// launch it or it has already exited.
    pub fn kill_worker(&self, index: u32) -> bool {
        self.shared.kill_child(index, Duration::ZERO)
    }

    /// The last reported state of `proc_id`.
    pub fn proc_state(&self, proc_id: &ProcId) -> Option<ProcState> {
        self.shared.proc_state(proc_id)
    }

    /// How launched worker `index` exited, once it has.
    pub fn exit_status(&self, index: u32) -> Option<ExitReport> {
        self.shared.exit_status(index)
    }

    /// Waits until every proc that exists now and has not ended is running.
    ///
    /// Procs that already ended are not waited for, so this can be called
    /// again after a failure, e.g. once replacements are launched. Errors:
    /// [`StartError::ProcFailed`] as soon as a proc waited for fails,
    /// [`StartError::WorkerExited`] if a launched worker hosting one exits,
    /// [`StartError::Timeout`] when `timeout` passes.
    pub async fn wait_running(&self, timeout: Duration) -> Result<(), AllocatorError> {
        let mut events = self.events();
        let deadline = tokio::time::Instant::now() + timeout;
        let waited: Vec<ProcId> = self
            .procs()
            .into_iter()
            .filter(|p| !self.proc_state(p).is_some_and(|s| s.is_terminal()))
            .collect();
        loop {
            let mut running = 0;
            for p in &waited {
                match self.proc_state(p) {
                    Some(ProcState::Running) => running += 1,
                    Some(ProcState::Failed { reason }) => {
                        return Err(AllocatorError::Start(StartError::ProcFailed {
                            proc_id: p.clone(),
                            reason,
                        }))
                    }
                    _ => {
                        let exited = self
                            .worker_of(p)
                            .and_then(|i| self.exit_status(i).map(|s| (i, s)));
                        if let Some((index, status)) = exited {
                            return Err(AllocatorError::Start(StartError::WorkerExited {
                                index,
                                status,
                            }));
                        }
                    }
                }
            }
            if running == waited.len() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(AllocatorError::Start(StartError::ShutDown)),
                Err(_) => {
                    return Err(AllocatorError::Start(StartError::Timeout {
                        running,
                        total: waited.len(),
                        after: timeout,
                    }))
                }
            }
        }
    }

    /// Tells every worker to stop and exit with `code`, and waits (up to
    /// `timeout`) until every worker this allocator launched has exited.
    ///
    /// Returns the exit status of each launched worker, by index; one still
    /// running at the deadline is missing.
    pub async fn stop_and_wait(&self, code: i32, timeout: Duration) -> Vec<(u32, ExitReport)> {
        let mut events = self.events();
        self.stop_all(code);
        let launched: Vec<u32> = lock(&self.shared.children).keys().copied().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        while launched.iter().any(|i| self.exit_status(*i).is_none()) {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let mut exits: Vec<(u32, ExitReport)> = launched
            .into_iter()
            .filter_map(|i| self.exit_status(i).map(|s| (i, s)))
            .collect();
        exits.sort_unstable_by_key(|(i, _)| *i);
        exits
    }
}

impl Drop for Allocator {
    /// Closes every connection and kills every worker process this allocator launched.
    fn drop(&mut self) {
        self.endpoint
            .close(crate::wire::close::SHUTDOWN, b"allocator shut down");
        for slot in lock(&self.shared.children).values() {
            if let Some(pid) = slot.pid {
                // The supervisor task owns the Child; a direct SIGKILL makes
                // the kill immediate even if the runtime is going away with it.
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}
