//! The allocator: launches or admits workers, starts procs on them, and
//! reports what happens to them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use quicmesh::allocator::{Allocator, AllocatorConfig, Launcher};
//! let certs = quicmesh::tls::ensure_dev_certs("certs".as_ref())?;
//! let mut alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
//! alloc.launch(&Launcher::current_exe()?, 4, 1)?;
//! while let Some(event) = alloc.next_event().await {
//!     println!("{event}");
//! }
//! # Ok(()) }
//! ```

mod admission;
mod connection;
mod events;
mod handshakes;
mod in_flight;
mod launcher;
mod link;
mod parking;
mod router;
mod server;
mod session;
mod stall;

pub use admission::{Admission, Rejection};
pub use events::{AllocEvent, ExitReport, ProcState, RefusalStats};
pub use handshakes::{Busy, HandshakeSlots, Source};
pub use launcher::Launcher;
pub use link::LinkStats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::lock;

use rand::RngCore;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::actor::{Client, Proc, ProcConfig, Registry};
use crate::config::{self, HeartbeatConfig, Limits, TransportConfig};
use crate::id::{is_valid_name, ProcId};
use crate::link::LinkConfig;
use crate::rtt::RttCell;
use crate::tls::{self, CertPaths};
use crate::wire::{bounded_text, Undeliverable};
use events::Throttle;
use session::WorkerCommand;

/// Events kept for a reader that falls behind; older ones are dropped (and counted).
const EVENT_BACKLOG: usize = 4096;

/// Longest reason kept in a refusal event or counter, in bytes.
const MAX_REFUSAL_REASON: usize = 200;

/// Most refusal events of one kind per second; more are only counted.
const REFUSAL_EVENTS_PER_SECOND: u32 = 10;

/// Settings of an allocator.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port on loopback).
    pub listen: SocketAddr,
    /// `host:port` workers dial; defaults to the bound address.
    pub advertise: Option<String>,
    /// Name workers verify in the allocator's certificate.
    pub server_name: String,
    /// Name of the allocation, the first part of every proc id.
    pub alloc_name: String,
    /// PEM path of the mesh CA (verifies workers; handed to workers).
    pub ca: PathBuf,
    /// PEM path of the allocator's certificate.
    pub cert: PathBuf,
    /// PEM path of the allocator's key.
    pub key: PathBuf,
    /// PEM path of the certificate handed to launched workers.
    pub worker_cert: PathBuf,
    /// PEM path of the key handed to launched workers.
    pub worker_key: PathBuf,
    /// Heartbeat settings, sent to workers in Welcome.
    pub heartbeat: HeartbeatConfig,
    /// Limits, sent to workers in Welcome.
    pub limits: Limits,
    /// Handshake, Hello and stop timeouts.
    pub transport: TransportConfig,
    /// Flow-control windows and congestion controller of every worker
    /// connection (default [`LinkConfig::lan`]; [`LinkConfig::wan`] for links
    /// between datacenters). Launched workers and join tickets get the same
    /// setting in `QUICMESH_LINK` (see [`crate::link`]).
    pub link: LinkConfig,
    /// Actor types the controller's own proc can spawn on request.
    pub registry: Registry,
    /// Default timeout of the controller's `ask`s.
    pub ask_timeout: Duration,
    /// How long a proc may leave messages waiting for it without
    /// acknowledging any before it is failed as stalled (default 30 s).
    pub stall_timeout: Duration,
    /// Whether actors on one proc may ask another proc to spawn or stop
    /// actors or report its stats (default false: only the controller and
    /// actors on the same proc may; others get their request back, refused).
    pub remote_proc_requests: bool,
}

impl AllocatorConfig {
    /// Defaults for a mesh using the certificates in `certs`, on `127.0.0.1:0`.
    pub fn new(certs: &CertPaths) -> Self {
        AllocatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            server_name: "localhost".into(),
            alloc_name: "mesh".into(),
            ca: certs.ca_cert.clone(),
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            worker_cert: certs.worker_cert.clone(),
            worker_key: certs.worker_key.clone(),
            heartbeat: HeartbeatConfig::default(),
            limits: Limits::default(),
            transport: TransportConfig::default(),
            link: LinkConfig::default(),
            registry: Registry::new(),
            ask_timeout: ProcConfig::default().ask_timeout,
            stall_timeout: Duration::from_secs(30),
            remote_proc_requests: false,
        }
    }
}

/// An allocator could not be created or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// A worker process could not be started.
    #[error("cannot start worker {index} ({program}): {source}")]
    Spawn {
        /// The worker's index.
        index: u32,
        /// The program that failed to start.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No worker with this index is connected.
    #[error("worker {0} is not connected")]
    NotConnected(u32),
    /// The allocation did not come up: a proc failed, a worker exited, or time ran out.
    #[error("allocation did not start: {0}")]
    Start(String),
}

/// Everything a worker started by other means needs to join (design §4 variables).
#[derive(Debug, Clone)]
pub struct JoinTicket {
    /// The worker's index.
    pub index: u32,
    /// The environment to give the worker.
    pub env: Vec<(&'static str, String)>,
}

struct ChildSlot {
    pid: Option<u32>,
    /// Asks the reaper to SIGKILL the child after the given grace period.
    kill: mpsc::UnboundedSender<Duration>,
}

/// What was refused: a connection from an address, or a stream of a worker.
#[derive(Clone, Copy)]
enum Refused {
    Connection(SocketAddr),
    Stream(u32),
}

/// Refusal counters and the throttles of their events.
struct Refusals {
    stats: RefusalStats,
    connections: Throttle,
    streams: Throttle,
}

/// State shared by the allocator handle and its tasks.
pub(crate) struct Shared {
    pub(crate) config: AllocatorConfig,
    admission: Mutex<Admission>,
    workers: Mutex<HashMap<u32, mpsc::UnboundedSender<WorkerCommand>>>,
    children: Mutex<HashMap<u32, ChildSlot>>,
    events: broadcast::Sender<AllocEvent>,
    refusals: Mutex<Refusals>,
    next_rank: AtomicU32,
    pub(crate) router: Arc<router::Router>,
    proc_states: Mutex<HashMap<ProcId, ProcState>>,
    exits: Mutex<HashMap<u32, ExitReport>>,
    /// The round trip of each connected worker's path, written by its heartbeat task.
    rtts: Mutex<HashMap<u32, RttCell>>,
}

impl Shared {
    pub(crate) fn emit(&self, event: AllocEvent) {
        match &event {
            AllocEvent::Proc { proc_id, state, .. } => {
                lock(&self.proc_states).insert(proc_id.clone(), state.clone());
            }
            AllocEvent::WorkerExited { index, status } => {
                lock(&self.exits).insert(*index, *status);
            }
            _ => {}
        }
        let _ = self.events.send(event);
    }

    /// Counts a connection refused before admission; reports it at a limited rate.
    pub(crate) fn connection_refused(&self, addr: SocketAddr, reason: String) {
        self.refused(Refused::Connection(addr), reason);
    }

    /// Counts a mailbox stream rejected; reports it at a limited rate.
    pub(crate) fn stream_rejected(&self, worker: u32, reason: String) {
        self.refused(Refused::Stream(worker), reason);
    }

    /// Counts a refusal and keeps its (bounded) reason; emits and logs an
    /// event for it unless its kind's throttle says enough were reported.
    fn refused(&self, what: Refused, reason: String) {
        let reason = bounded_text(&reason, MAX_REFUSAL_REASON);
        let mut refusals = lock(&self.refusals);
        let Refusals {
            stats,
            connections,
            streams,
        } = &mut *refusals;
        let (count, last, throttle) = match what {
            Refused::Connection(_) => (
                &mut stats.connections,
                &mut stats.last_connection_reason,
                connections,
            ),
            Refused::Stream(_) => (&mut stats.streams, &mut stats.last_stream_reason, streams),
        };
        *count += 1;
        *last = Some(reason.clone());
        let admitted = throttle.admit(std::time::Instant::now());
        drop(refusals);
        let Some(suppressed) = admitted else { return };
        let event = match what {
            Refused::Connection(addr) => AllocEvent::WorkerRejected {
                addr,
                reason,
                suppressed,
            },
            Refused::Stream(worker) => AllocEvent::MailboxRejected {
                worker,
                reason,
                suppressed,
            },
        };
        tracing::warn!("{event}");
        self.emit(event);
    }

    pub(crate) fn lock_admission(&self) -> MutexGuard<'_, Admission> {
        lock(&self.admission)
    }

    pub(crate) fn worker_joined(&self, index: u32, commands: mpsc::UnboundedSender<WorkerCommand>) {
        lock(&self.workers).insert(index, commands);
    }

    /// The cell where worker `index`'s heartbeat task publishes its round trip.
    pub(crate) fn rtt_cell(&self, index: u32) -> RttCell {
        lock(&self.rtts).entry(index).or_default().clone()
    }

    /// Records that worker `index`'s connection ended; kills it if it failed.
    ///
    /// A failed worker gets one heartbeat timeout (at least 1 s) to exit by
    /// itself, which it does when it is merely cut off (and then reports
    /// why in its exit code); a frozen one is SIGKILLed and reaped after that.
    pub(crate) fn worker_left(&self, index: u32, failed: bool, reason: String) {
        lock(&self.workers).remove(&index);
        lock(&self.rtts).remove(&index);
        self.lock_admission().finish(index);
        if failed {
            self.kill_child(
                index,
                self.config.heartbeat.timeout.max(Duration::from_secs(1)),
            );
        }
        tracing::info!(
            "worker {index} {}: {reason}",
            if failed { "lost" } else { "left" }
        );
        self.emit(AllocEvent::WorkerLeft {
            index,
            failed,
            reason,
        });
    }

    /// Kills launched worker `index` unless it exits within `grace`
    /// (false for workers started elsewhere or already reaped).
    fn kill_child(&self, index: u32, grace: Duration) -> bool {
        match lock(&self.children).get(&index) {
            Some(slot) if slot.pid.is_some() => slot.kill.send(grace).is_ok(),
            _ => false,
        }
    }
}

/// A running allocation: listener, workers, procs and their events.
pub struct Allocator {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    events: broadcast::Receiver<AllocEvent>,
    tasks: Vec<JoinHandle<()>>,
    client: Client,
    returned: Option<mpsc::UnboundedReceiver<Undeliverable>>,
}

impl Allocator {
    /// Loads the certificates, binds the listener and starts accepting workers.
    ///
    /// Errors: [`AllocatorError::Config`] for an invalid name or heartbeat
    /// setting, [`AllocatorError::Tls`] naming the certificate file that is
    /// missing, malformed, expired or mismatched, [`AllocatorError::Transport`]
    /// if the address cannot be bound.
    pub async fn bind(config: AllocatorConfig) -> Result<Allocator, AllocatorError> {
        config.heartbeat.validate()?;
        config.transport.validate()?;
        config.link.validate()?;
        if !is_valid_name(&config.alloc_name) {
            return Err(config::ConfigError::Invalid {
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
        let (tx, rx) = broadcast::channel(EVENT_BACKLOG);
        let controller_id = ProcId::new(format!("{}_ctl", config.alloc_name), 0);
        let proc_config = ProcConfig {
            mailbox_bytes: config.limits.mailbox_bytes as usize,
            ask_timeout: config.ask_timeout,
            ..ProcConfig::default()
        };
        let mut outputs = None;
        let registry = Arc::new(config.registry.clone());
        let router = Arc::new_cyclic(|weak| {
            let outlet = Arc::new(router::RouterOutlet(weak.clone()));
            let (controller, out) = Proc::with_outlet(controller_id, registry, proc_config, outlet);
            outputs = Some(out);
            router::Router::new(controller)
        });
        let controller = router.controller().clone();
        let Some(outputs) = outputs else {
            unreachable!("new_cyclic runs its closure exactly once")
        };
        let shared = Arc::new(Shared {
            router: router.clone(),
            proc_states: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            rtts: Mutex::new(HashMap::new()),
            config,
            admission: Mutex::new(Admission::new()),
            workers: Mutex::new(HashMap::new()),
            children: Mutex::new(HashMap::new()),
            events: tx,
            refusals: Mutex::new(Refusals {
                stats: RefusalStats::default(),
                connections: Throttle::new(REFUSAL_EVENTS_PER_SECOND, Duration::from_secs(1)),
                streams: Throttle::new(REFUSAL_EVENTS_PER_SECOND, Duration::from_secs(1)),
            }),
            next_rank: AtomicU32::new(0),
        });
        let accept = tokio::spawn(server::accept_loop(shared.clone(), endpoint.clone()));
        let (returned_tx, returned_rx) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump_controller(shared.clone(), outputs, returned_tx));
        tracing::info!("allocator listening on {local_addr}");
        Ok(Allocator {
            client: controller.client("controller"),
            shared,
            endpoint,
            local_addr,
            events: rx,
            tasks: vec![accept, pump],
            returned: Some(returned_rx),
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
                (config::ENV_ALLOCATOR_ADDR, self.advertised_addr()),
                (config::ENV_SERVER_NAME, c.server_name.clone()),
                (config::ENV_INDEX, index.to_string()),
                (config::ENV_TOKEN, token),
                (config::ENV_CA, abs(&c.ca)),
                (config::ENV_CERT, abs(&c.worker_cert)),
                (config::ENV_KEY, abs(&c.worker_key)),
                (config::ENV_LINK, c.link.to_string()),
            ],
        }
    }

    /// Starts `workers` worker processes with `launcher`, each to host `procs_per_worker` procs.
    ///
    /// Returns their indexes. Errors: [`AllocatorError::Spawn`] if a process
    /// cannot be started (those already started keep running).
    pub fn launch(
        &mut self,
        launcher: &Launcher,
        workers: u32,
        procs_per_worker: u32,
    ) -> Result<Vec<u32>, AllocatorError> {
        let mut indexes = Vec::new();
        for _ in 0..workers {
            let ticket = self.reserve(procs_per_worker);
            let index = ticket.index;
            let mut child =
                launcher
                    .spawn(index, &ticket.env)
                    .map_err(|source| AllocatorError::Spawn {
                        index,
                        program: format!("{launcher:?}"),
                        source,
                    })?;
            let (kill, mut kill_requests) = mpsc::unbounded_channel::<Duration>();
            lock(&self.shared.children).insert(
                index,
                ChildSlot {
                    pid: child.id(),
                    kill,
                },
            );
            let shared = self.shared.clone();
            self.tasks.push(tokio::spawn(async move {
                let status = tokio::select! {
                    status = child.wait() => status,
                    Some(grace) = kill_requests.recv() => tokio::select! {
                        status = child.wait() => status,
                        _ = tokio::time::sleep(grace) => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    },
                };
                if let Some(slot) = lock(&shared.children).get_mut(&index) {
                    slot.pid = None;
                }
                let status = ExitReport::from(status);
                tracing::info!("worker {index} {status}");
                // Its connection is dead too: fail its procs now rather than
                // after the heartbeat timeout.
                if let Some(session) = lock(&shared.workers).get(&index) {
                    let _ = session.send(WorkerCommand::ProcessExited(status));
                }
                shared.emit(AllocEvent::WorkerExited { index, status });
            }));
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
        self.command(index, WorkerCommand::StartProc(proc_id.clone()))?;
        self.shared
            .lock_admission()
            .add_proc(index, proc_id.clone());
        Ok(proc_id)
    }

    /// Stops proc `proc_id`: its actors' stop hooks run, then it is reported `Stopped`.
    ///
    /// Errors: [`AllocatorError::NotConnected`] if its worker is not connected
    /// (or the proc is unknown: the index is then `u32::MAX`).
    pub fn stop_proc(&self, proc_id: &ProcId) -> Result<(), AllocatorError> {
        let index = self
            .worker_of(proc_id)
            .ok_or(AllocatorError::NotConnected(u32::MAX))?;
        self.command(index, WorkerCommand::StopProc(proc_id.clone()))
    }

    /// The index of the worker hosting `proc_id`.
    pub fn worker_of(&self, proc_id: &ProcId) -> Option<u32> {
        self.shared.lock_admission().worker_of(proc_id)
    }

    /// Every proc of the allocation so far, by rank.
    pub fn procs(&self) -> Vec<ProcId> {
        self.shared.lock_admission().procs()
    }

    /// The controller's handle for sending messages, asking, and spawning actors.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The controller's own proc, to host actors in this process.
    pub fn controller_proc(&self) -> &Proc {
        self.client.proc()
    }

    /// The envelopes the controller's client sent that came back undeliverable
    /// (asks are failed directly and do not appear here). Can be taken once.
    pub fn take_returned(&mut self) -> Option<mpsc::UnboundedReceiver<Undeliverable>> {
        self.returned.take()
    }

    /// Connections refused before admission and mailbox streams rejected so
    /// far, with the last reason of each.
    pub fn refusals(&self) -> RefusalStats {
        lock(&self.shared.refusals).stats.clone()
    }

    /// The round trip of connected worker `index`'s path, as last measured
    /// by its heartbeats (quinn's smoothed estimate, read every heartbeat
    /// interval; see [`crate::rtt`]). `None` if that worker is not
    /// connected or no heartbeat has been sent yet.
    pub fn worker_rtt(&self, index: u32) -> Option<Duration> {
        lock(&self.shared.rtts).get(&index).and_then(RttCell::get)
    }

    /// Delivery counters of the mailbox towards `proc_id`.
    pub fn link_stats(&self, proc_id: &ProcId) -> Option<LinkStats> {
        self.shared.router.link(proc_id).map(|l| l.stats())
    }

    fn command(&self, index: u32, cmd: WorkerCommand) -> Result<(), AllocatorError> {
        match lock(&self.shared.workers).get(&index) {
            Some(tx) => tx
                .send(cmd)
                .map_err(|_| AllocatorError::NotConnected(index)),
            None => Err(AllocatorError::NotConnected(index)),
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
        let workers = lock(&self.shared.workers);
        workers
            .values()
            .filter(|tx| tx.send(WorkerCommand::StopAndExit(code)).is_ok())
            .count()
    }

    /// Indexes of the workers connected now.
    pub fn connected_workers(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.shared.workers).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The OS process id of launched worker `index`.
    pub fn worker_pid(&self, index: u32) -> Option<u32> {
        lock(&self.shared.children).get(&index).and_then(|c| c.pid)
    }

    /// SIGKILLs launched worker `index` now; false if this allocator did not
    /// launch it or it has already exited.
    pub fn kill_worker(&self, index: u32) -> bool {
        self.shared.kill_child(index, Duration::ZERO)
    }

    /// The last reported state of `proc_id`.
    pub fn proc_state(&self, proc_id: &ProcId) -> Option<ProcState> {
        lock(&self.shared.proc_states).get(proc_id).cloned()
    }

    /// How launched worker `index` exited, once it has.
    pub fn exit_status(&self, index: u32) -> Option<ExitReport> {
        lock(&self.shared.exits).get(&index).copied()
    }

    /// Waits until every proc started so far is running, logging events as they come.
    ///
    /// The events are consumed. Errors: [`AllocatorError::Start`] as soon as a
    /// proc fails or a launched worker exits (with the reason), or when
    /// `timeout` passes (saying how many procs run).
    pub async fn wait_running(&mut self, timeout: Duration) -> Result<(), AllocatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let procs = self.procs();
            let running = procs
                .iter()
                .filter(|p| self.proc_state(p) == Some(ProcState::Running))
                .count();
            for p in &procs {
                if let Some(ProcState::Failed { reason }) = self.proc_state(p) {
                    return Err(AllocatorError::Start(format!("proc {p} failed: {reason}")));
                }
            }
            if let Some((index, status)) = lock(&self.shared.exits).iter().next() {
                return Err(AllocatorError::Start(format!("worker {index} {status}")));
            }
            if running == procs.len() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, next_event(&mut self.events)).await {
                Ok(Some(e)) => tracing::info!("{e}"),
                Ok(None) => return Err(AllocatorError::Start("allocator shut down".into())),
                Err(_) => {
                    return Err(AllocatorError::Start(format!(
                        "{running} of {} procs running after {timeout:?}",
                        procs.len()
                    )))
                }
            }
        }
    }

    /// Tells every worker to stop and exit with `code`, and waits (up to
    /// `timeout`) until every worker this allocator launched has exited.
    ///
    /// The events are consumed (and logged). Returns the exit status of each
    /// launched worker, by index; one still running at the deadline is missing.
    pub async fn stop_and_wait(&mut self, code: i32, timeout: Duration) -> Vec<(u32, ExitReport)> {
        self.stop_all(code);
        let launched: Vec<u32> = lock(&self.shared.children).keys().copied().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        while launched.iter().any(|i| self.exit_status(*i).is_none()) {
            match tokio::time::timeout_at(deadline, next_event(&mut self.events)).await {
                Ok(Some(e)) => tracing::info!("{e}"),
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

    /// The next event; `None` only after the allocator has been shut down.
    ///
    /// Events wait in a bounded backlog ([`EVENT_BACKLOG`]); a reader that
    /// falls further behind loses the oldest (the loss is logged). The
    /// states they report stay available from [`Allocator::proc_state`].
    pub async fn next_event(&mut self) -> Option<AllocEvent> {
        next_event(&mut self.events).await
    }

    /// An event if one is ready now.
    pub fn try_next_event(&mut self) -> Option<AllocEvent> {
        loop {
            match self.events.try_recv() {
                Ok(e) => return Some(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => log_lag(n),
                Err(_) => return None,
            }
        }
    }
}

/// The next event from `events`, skipping over (and logging) any lost ones.
async fn next_event(events: &mut broadcast::Receiver<AllocEvent>) -> Option<AllocEvent> {
    loop {
        match events.recv().await {
            Ok(e) => return Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => log_lag(n),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn log_lag(n: u64) {
    tracing::warn!(
        "{n} allocator events dropped: the reader fell more than {EVENT_BACKLOG} behind"
    );
}

impl Drop for Allocator {
    /// Closes every connection and kills every worker process this allocator launched.
    fn drop(&mut self) {
        self.endpoint
            .close(crate::wire::close::SHUTDOWN, b"allocator shut down");
        for slot in lock(&self.shared.children).values() {
            if let Some(pid) = slot.pid {
                // The reaper task owns the Child; a direct SIGKILL makes the
                // kill immediate even if the runtime is going away with it.
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Moves what the controller's proc reports: actor failures to events, returns to the user.
async fn pump_controller(
    shared: Arc<Shared>,
    mut outputs: crate::actor::ProcOutputs,
    returned: mpsc::UnboundedSender<Undeliverable>,
) {
    loop {
        tokio::select! {
            Some(f) = outputs.failures.recv() => {
                shared.emit(AllocEvent::ActorFailed { actor_id: f.actor_id, reason: f.reason });
            }
            Some(u) = outputs.returned.recv() => {
                let _ = returned.send(u);
            }
            else => break,
        }
    }
}
