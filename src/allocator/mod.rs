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
//! - `launcher.rs`: starting worker processes and supervising them;
//!   `launch_window.rs`: when the next one may start; `progress.rs`: how far
//!   an allocation has come, as data.
//!
//! The decisions (`admission`, `handshakes`, `session`, `in_flight`,
//! `parking`, `stall`, `launch_window`) are plain code with unit tests; the rest moves bytes,
//! time and tasks. See `docs/design.md` for the protocol and why.

mod admission;
mod advertise;
mod config;
mod connection;
mod error;
mod events;
mod handshakes;
mod in_flight;
mod launch_window;
mod launcher;
mod link;
mod logs;
mod metrics;
mod parking;
mod progress;
mod router;
mod server;
mod session;
mod shared;
mod stall;
mod status;

pub use crate::actor::Returns;
pub use crate::wire::{LogLevel, LogSource};
pub use advertise::routable_host;
pub use config::{AllocatorConfig, DEFAULT_LAUNCH_WINDOW};
pub use error::{AllocatorError, StartError};
pub use events::{AllocEvent, Events, ProcState, RefusalKind, RefusalStats};
pub use launcher::{Launcher, SecretsDelivery};
pub use link::LinkStats;
pub use logs::{LogRecord, Logs};
pub use metrics::{Metrics, MetricsServer, ProcStreamMetrics, WorkerMetrics};
pub use progress::Progress;
pub use status::WorkerStatus;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::actor::{returns, Client, Proc, ProcConfig};
use crate::config::{self as settings, ConfigError};
use crate::id::{is_valid_name, ProcId};
use crate::join_token;
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

/// Everything the workers of one group launch need to join: one
/// environment for all of them (see [`Allocator::reserve_group`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupTicket {
    /// The index of the group's first worker; the others follow it.
    pub first_index: u32,
    /// How many workers the group has.
    pub count: u32,
    /// The environment to give every worker of the group (its allocation
    /// secret included: keep it secret). Each worker reads its index from
    /// the variable named in `QUICMESH_INDEX_FROM`, adds
    /// `QUICMESH_INDEX_OFFSET`, and derives its token from
    /// `QUICMESH_GROUP_SECRET`.
    pub env: Vec<(&'static str, String)>,
}

/// The allocator's tasks, aborted when it is dropped; launches add to them.
type Tasks = Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>;

/// A running allocation: listener, workers, procs and their events.
///
/// Every method takes `&self`: the handle can be shared (in an `Arc`)
/// between tasks that launch, send and watch at once.
pub struct Allocator {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    /// The endpoint's configuration; a reload swaps its TLS part.
    quic_config: std::sync::Mutex<quinn::ServerConfig>,
    local_addr: SocketAddr,
    advertised: advertise::Advertised,
    tasks: Tasks,
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
        if config.launch_window == 0 {
            return Err(ConfigError::Invalid {
                name: "launch window",
                value: "0".into(),
                problem: "at least one worker must be allowed to join at a time".into(),
            }
            .into());
        }
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
        let (server_tls, revocations) = load_server_tls(&config)?;
        let quic_config = crate::transport::endpoint::server_quic_config(
            server_tls,
            &config.heartbeat,
            &config.link,
        )?;
        let endpoint = crate::transport::endpoint::bind_server(config.listen, quic_config.clone())?;
        let local_addr =
            endpoint
                .local_addr()
                .map_err(|source| crate::transport::TransportError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let advertised = Self::advertise(&config, local_addr)?;
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
        let shared = Arc::new(Shared::new(config, router, revocations));
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
            quic_config: std::sync::Mutex::new(quic_config),
            local_addr,
            advertised,
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
            returns,
        })
    }

    /// Reads the allocator's certificate and key, its CA bundle and its
    /// revocation list again from the configured paths and puts them in
    /// force, without a restart: what `quicmesh` does on SIGHUP.
    ///
    /// Connected workers keep their connections (TLS authenticated them
    /// once, in their handshake), except those whose certificate the new
    /// revocation list names: they are disconnected with close code
    /// `REVOKED` and their procs reported failed,
    /// [`FailureReason::CertificateRevoked`](crate::reason::FailureReason::CertificateRevoked).
    /// Every handshake that begins after the call uses the new certificate
    /// and trusts the new bundle; one already under way finishes with the
    /// material it began with, but is checked against the new revocation
    /// list before admission. To move workers to a new CA, reload with a
    /// bundle holding the old and the new CA, move the workers over, then
    /// reload with the new CA alone.
    ///
    /// Returns the indexes of the workers disconnected as revoked. Errors,
    /// as at [`bind`](Allocator::bind): [`AllocatorError::Tls`] naming the
    /// file that is missing, malformed, expired, mismatched or readable by
    /// others, [`AllocatorError::Transport`] if the result cannot be used
    /// for QUIC. On error nothing changes: the old material stays in force.
    pub fn reload_tls(&self) -> Result<Vec<u32>, AllocatorError> {
        let (server_tls, revocations) = load_server_tls(&self.shared.config)?;
        let crypto = crate::transport::endpoint::quic_server_crypto(server_tls)?;
        let mut quic_config = lock(&self.quic_config);
        // The rest of the configuration, the Retry token key included, stays:
        // a worker holding a Retry token from before the reload still gets in.
        quic_config.crypto = crypto;
        self.endpoint.set_server_config(Some(quic_config.clone()));
        drop(quic_config);
        let revoked = self.shared.set_revocations(revocations);
        tracing::info!(
            "reloaded TLS material (certificate {}, CA bundle {}{}); {} connected workers revoked",
            self.shared.config.cert.display(),
            self.shared.config.ca.display(),
            match &self.shared.config.crl {
                Some(crl) => format!(", revocation list {}", crl.display()),
                None => String::new(),
            },
            revoked.len()
        );
        Ok(revoked)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Decides what workers are told to dial and checks that the
    /// certificate names it (see `advertise.rs`).
    fn advertise(
        config: &AllocatorConfig,
        bound: SocketAddr,
    ) -> Result<advertise::Advertised, AllocatorError> {
        let (mut advertised, source) = advertise::decide(
            bound,
            config.advertise.as_deref(),
            &config.server_name,
            advertise::routable_host,
        )?;
        if source == advertise::Source::Bound {
            return Ok(advertised);
        }
        let host = advertised.remote.server_name.clone();
        let names = advertise::cert_names(&config.cert)?;
        if !advertise::names_host(&names, &host) {
            if source == advertise::Source::Configured {
                return Err(advertise::missing_name(&host, &config.cert, &names).into());
            }
            tracing::warn!(
                "listening on {bound}: workers on other hosts are told {} but the certificate {} does not name {host}; they will verify {:?} instead (to verify this host: quicmesh certs --san {host} --force, or set an advertise address)",
                advertised.remote.addr,
                config.cert.display(),
                config.server_name,
            );
            advertised.remote.server_name = config.server_name.clone();
        }
        Ok(advertised)
    }

    /// The `host:port` workers started elsewhere are told to dial (join
    /// tickets, group launches, remote launchers): the configured advertise
    /// address, else, when listening on an unspecified address, this host's
    /// routable address ([`routable_host`]), else the bound address.
    pub fn advertised_addr(&self) -> String {
        self.advertised.remote.addr.clone()
    }

    /// The name workers started elsewhere verify in the allocator's
    /// certificate: the advertised host, or [`AllocatorConfig::server_name`]
    /// when the allocator listens on a specified address (or the
    /// certificate does not name the routable host).
    pub fn advertised_server_name(&self) -> String {
        self.advertised.remote.server_name.clone()
    }

    /// The allocation's configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.shared.config
    }

    /// Reserves the next worker index with a fresh token and `procs` procs to start on it.
    ///
    /// Start the worker with the ticket's environment, by any means (it
    /// dials [`Allocator::advertised_addr`]).
    pub fn reserve(&self, procs: u32) -> JoinTicket {
        self.reserve_for(procs, &self.advertised.remote)
    }

    /// The ranks of `procs` new procs.
    fn new_procs(&self, procs: u32) -> Vec<ProcId> {
        let first = self.shared.next_rank.fetch_add(procs, Ordering::Relaxed);
        (first..first + procs)
            .map(|rank| ProcId::new(self.shared.config.alloc_name.clone(), rank))
            .collect()
    }

    /// The variables every worker gets, whatever its index and token.
    fn common_env(&self, target: &advertise::Target) -> Vec<(&'static str, String)> {
        let abs = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let c = &self.shared.config;
        vec![
            (settings::ENV_ALLOCATOR_ADDR, target.addr.clone()),
            (settings::ENV_SERVER_NAME, target.server_name.clone()),
            (settings::ENV_CA, abs(&c.ca)),
            (settings::ENV_CERT, abs(&c.worker_cert)),
            (settings::ENV_KEY, abs(&c.worker_key)),
            (settings::ENV_LINK, c.link.to_string()),
        ]
    }

    fn reserve_for(&self, procs: u32, target: &advertise::Target) -> JoinTicket {
        let token = join_token::random_secret();
        let proc_ids = self.new_procs(procs);
        let mut admission = self.shared.lock_admission();
        let index = admission.next_index();
        admission.reserve(index, token.clone(), proc_ids);
        drop(admission);
        self.shared.reserved.fetch_add(1, Ordering::Relaxed);
        let mut env = self.common_env(target);
        env.insert(2, (settings::ENV_INDEX, index.to_string()));
        env.insert(3, (settings::ENV_TOKEN, token));
        JoinTicket { index, env }
    }

    /// Reserves `workers` consecutive indexes, each for `procs_per_worker`
    /// procs, for one command that starts them all (an `srun -n N`, a
    /// Kubernetes Indexed Job, an `mpirun`), and returns the one environment
    /// they all get.
    ///
    /// One random allocation secret is issued for the group; the token of
    /// each index is derived from it (HMAC-SHA256, see docs/design.md), so
    /// the workers share an environment yet each index is admitted once,
    /// with its own token. Each copy reads its index from the variable
    /// `index_from` (e.g. `SLURM_PROCID`, `JOB_COMPLETION_INDEX`; see
    /// [`settings::ENGINE_INDEX_VARS`]), counting from 0, and adds the
    /// group's first index (`QUICMESH_INDEX_OFFSET`).
    ///
    /// Errors: [`AllocatorError::Config`] if `index_from` is not a variable
    /// name.
    pub fn reserve_group(
        &self,
        workers: u32,
        procs_per_worker: u32,
        index_from: &str,
    ) -> Result<GroupTicket, AllocatorError> {
        self.reserve_group_for(
            workers,
            procs_per_worker,
            index_from,
            &self.advertised.remote,
        )
    }

    fn reserve_group_for(
        &self,
        workers: u32,
        procs_per_worker: u32,
        index_from: &str,
        target: &advertise::Target,
    ) -> Result<GroupTicket, AllocatorError> {
        if index_from.is_empty()
            || !index_from
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError::Invalid {
                name: "index variable",
                value: index_from.to_owned(),
                problem: "must be a variable name (A-Z, a-z, 0-9, _), e.g. SLURM_PROCID".into(),
            }
            .into());
        }
        let secret = join_token::random_secret();
        let mut admission = self.shared.lock_admission();
        let first_index = admission.next_index();
        for index in first_index..first_index + workers {
            let procs = self.new_procs(procs_per_worker);
            admission.reserve(index, join_token::derive_token(&secret, index), procs);
        }
        drop(admission);
        self.shared.reserved.fetch_add(workers, Ordering::Relaxed);
        let mut env = self.common_env(target);
        env.extend([
            (settings::ENV_INDEX_FROM, index_from.to_owned()),
            (settings::ENV_INDEX_OFFSET, first_index.to_string()),
            (settings::ENV_GROUP_SECRET, secret),
        ]);
        Ok(GroupTicket {
            first_index,
            count: workers,
            env,
        })
    }

    /// Starts `workers` worker processes with `launcher`, each to host `procs_per_worker` procs.
    ///
    /// Children on this host are told loopback when the allocator listens
    /// on an unspecified address; a [`Launcher::remote`] one is told
    /// [`Allocator::advertised_addr`]. Returns their indexes, all reserved
    /// now. At most [`AllocatorConfig::launch_window`] of them are
    /// *joining* at once (started, not yet welcomed): the first ones start
    /// before this returns, each of the others when a joining one is
    /// welcomed or ends (docs/design.md, launch window). Watch it with
    /// [`Allocator::progress`] or the events; [`Allocator::wait_running`]
    /// waits for all of them.
    ///
    /// Errors: [`AllocatorError::Launch`] before anything starts if the
    /// template asks for a secret (`{token}`, `{env}`) or is a group
    /// launcher (see [`Allocator::launch_group`]); [`AllocatorError::Spawn`]
    /// if one of the first processes cannot be started (those already
    /// started keep running, the rest are not started). A later one that
    /// cannot be started is reported as [`AllocEvent::LaunchFailed`] and
    /// the launch goes on.
    pub fn launch(
        &self,
        launcher: &Launcher,
        workers: u32,
        procs_per_worker: u32,
    ) -> Result<Vec<u32>, AllocatorError> {
        launcher.check().map_err(AllocatorError::Launch)?;
        if launcher.is_group() {
            return Err(AllocatorError::Launch(
                "a group launcher (Launcher::group) starts all its workers with one command: use Allocator::launch_group".into(),
            ));
        }
        let target = if launcher.is_remote() {
            &self.advertised.remote
        } else {
            &self.advertised.local
        };
        let mut tickets: HashMap<u32, JoinTicket> = HashMap::new();
        let mut indexes = Vec::with_capacity(workers as usize);
        for _ in 0..workers {
            let ticket = self.reserve_for(procs_per_worker, target);
            indexes.push(ticket.index);
            tickets.insert(ticket.index, ticket);
        }
        let mut window =
            launch_window::LaunchWindow::new(self.shared.config.launch_window, indexes.clone());
        while let Some(index) = window.next_to_start() {
            let Some(ticket) = tickets.remove(&index) else {
                continue;
            };
            let child = launcher
                .spawn(index, format!("worker {index}"), &ticket.env)
                .map_err(|source| AllocatorError::Spawn {
                    index,
                    program: format!("{launcher:?}"),
                    source,
                })?;
            let task = launcher::supervise(self.shared.clone(), index, child);
            lock(&self.tasks).push(task);
        }
        if !window.all_started() {
            let task = tokio::spawn(launch_rest(
                self.shared.clone(),
                self.tasks.clone(),
                launcher.clone(),
                window,
                tickets,
            ));
            lock(&self.tasks).push(task);
        }
        Ok(indexes)
    }

    /// Starts `workers` workers with one command, `launcher` in its group
    /// form ([`Launcher::group`], `{n}` standing for `workers`), each to host
    /// `procs_per_worker` procs: e.g. `srun -n {n} --overcommit quicmesh
    /// worker` with [`Launcher::index_from`]`("SLURM_PROCID")`.
    ///
    /// Reserves the indexes as [`Allocator::reserve_group`] does and
    /// supervises the one child: it is killed when the allocator is dropped
    /// (and by the parent-death signal if the allocator dies), a worker
    /// that fails does not kill it, and when it exits every worker of the
    /// group is reported exited with its status (a worker still connected
    /// then has its procs failed; one that never joined has its index
    /// closed and is named in the log). Returns the indexes.
    ///
    /// Errors: [`AllocatorError::Launch`] before anything starts for a
    /// per-worker launcher, a template asking for a secret, or a bad index
    /// variable; [`AllocatorError::Spawn`] if the command cannot be started.
    pub fn launch_group(
        &self,
        launcher: &Launcher,
        workers: u32,
        procs_per_worker: u32,
    ) -> Result<Vec<u32>, AllocatorError> {
        launcher.check().map_err(AllocatorError::Launch)?;
        let Some(index_from) = launcher.index_var().filter(|_| launcher.is_group()) else {
            return Err(AllocatorError::Launch(
                "launch_group needs a group launcher: Launcher::group(PROGRAM).index_from(VAR)"
                    .into(),
            ));
        };
        let ticket = self
            .reserve_group_for(
                workers,
                procs_per_worker,
                index_from,
                &self.advertised.remote,
            )
            .map_err(|e| AllocatorError::Launch(e.to_string()))?;
        let indexes: Vec<u32> = (ticket.first_index..ticket.first_index + workers).collect();
        let label = match (indexes.first(), indexes.last()) {
            (Some(a), Some(b)) if a != b => format!("workers {a}-{b}"),
            (Some(a), _) => format!("worker {a}"),
            _ => "workers (none)".to_owned(),
        };
        let child = launcher
            .spawn(workers, label, &ticket.env)
            .map_err(|source| AllocatorError::Spawn {
                index: ticket.first_index,
                program: format!("{launcher:?}"),
                source,
            })?;
        // Indexes that never join are closed when the command ends.
        let task = launcher::supervise_group(self.shared.clone(), indexes.clone(), child);
        lock(&self.tasks).push(task);
        Ok(indexes)
    }

    /// Counts of workers and procs now: what a progress bar shows.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
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
    /// its own connection, wherever it runs (docs/design.md §2.12).
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
    /// [`StartError::WorkerExited`] if a launched worker hosting one exits
    /// before it joined (one that joined has its procs failed first, so
    /// that is [`StartError::ProcFailed`] with the exit as the reason),
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
                        let worker = self.worker_of(p);
                        if let Some((index, reason)) =
                            worker.and_then(|i| self.shared.spawn_failure(i).map(|r| (i, r)))
                        {
                            return Err(AllocatorError::Start(StartError::WorkerNotStarted {
                                index,
                                reason,
                            }));
                        }
                        let exited = worker.and_then(|i| self.exit_status(i).map(|s| (i, s)));
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
        let launched = self.shared.launched_indexes();
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

/// Loads the allocator's TLS material from the paths in `config` and builds
/// its rustls configuration, with the revocation list if one is configured.
fn load_server_tls(
    config: &AllocatorConfig,
) -> Result<(rustls::ServerConfig, tls::revocation::Revocations), AllocatorError> {
    let roots = tls::load::load_roots(&config.ca)?;
    let identity = tls::load::load_identity(&config.cert, &config.key)?;
    let revocations = match &config.crl {
        Some(path) => tls::revocation::load_crls(path)?,
        None => tls::revocation::Revocations::none(),
    };
    let server_tls =
        tls::rustls_config::server_config_with_crls(roots, identity, revocations.crls.clone())?;
    Ok((server_tls, revocations))
}

/// Starts the workers of a launch that did not fit in its window at first,
/// each as soon as a place is free; ends when all are started.
///
/// Woken by every welcome and every end of a launched worker; it also looks
/// once a second, so nothing it might miss can stall a launch.
async fn launch_rest(
    shared: Arc<Shared>,
    tasks: Tasks,
    launcher: Launcher,
    mut window: launch_window::LaunchWindow,
    mut tickets: HashMap<u32, JoinTicket>,
) {
    let mut changes = shared.launch_changes();
    loop {
        changes.borrow_and_update();
        let done: Vec<u32> = window
            .joining()
            .filter(|i| shared.done_joining(*i))
            .collect();
        for index in done {
            window.on_done(index);
        }
        while let Some(index) = window.next_to_start() {
            let Some(ticket) = tickets.remove(&index) else {
                continue;
            };
            match launcher.spawn(index, format!("worker {index}"), &ticket.env) {
                Ok(child) => {
                    let task = launcher::supervise(shared.clone(), index, child);
                    lock(&tasks).push(task);
                }
                Err(e) => {
                    shared.emit(AllocEvent::LaunchFailed {
                        index,
                        reason: format!("{launcher:?}: {e}"),
                    });
                    window.on_done(index);
                }
            }
        }
        if window.all_started() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
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
        for group in lock(&self.shared.groups).iter() {
            if let Some(pid) = group.pid {
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
