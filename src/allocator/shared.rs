//! The state an allocator's handle and its tasks share: who joined, what
//! was launched, what each proc's state is, and where events go.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use super::admission::Admission;
use super::config::AllocatorConfig;
use super::events::{
    AllocEvent, Events, ProcState, RefusalKind, RefusalStats, Throttle, EVENT_BACKLOG,
};
use super::logs::LogHub;
use super::progress::Progress;
use super::router::Router;
use super::session::WorkerCommand;
use crate::id::ProcId;
use crate::reason::{bounded_text, ExitReport, ProcEnd};
use crate::rtt::RttCell;
use crate::sync::lock;
use crate::tls::revocation::Revocations;
use crate::tls::CertIdentity;
use rustls_pki_types::CertificateDer;

/// Longest reason kept in a refusal event or counter, in bytes.
const MAX_REFUSAL_REASON: usize = 200;

/// Most refusal events of one kind per second; more are only counted.
const REFUSAL_EVENTS_PER_SECOND: u32 = 10;

/// A worker process this allocator launched.
pub(crate) struct ChildSlot {
    /// Its pid while it runs.
    pub(crate) pid: Option<u32>,
    /// Asks its reaper to SIGKILL it after the given grace period.
    pub(crate) kill: mpsc::UnboundedSender<Duration>,
}

/// One command started for a group of workers (a group launch).
pub(crate) struct GroupSlot {
    /// The indexes of its workers.
    pub(crate) indexes: Vec<u32>,
    /// Its pid while it runs.
    pub(crate) pid: Option<u32>,
}

/// What was refused: a connection from an address, or a stream of a worker.
#[derive(Clone, Copy)]
enum Refused {
    Connection(SocketAddr, RefusalKind),
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
    pub(crate) router: Arc<Router>,
    /// The next proc rank to hand out.
    pub(crate) next_rank: AtomicU32,
    /// Launched worker processes, by index.
    pub(crate) children: Mutex<HashMap<u32, ChildSlot>>,
    /// Commands started for groups of workers.
    pub(crate) groups: Mutex<Vec<GroupSlot>>,
    admission: Mutex<Admission>,
    workers: Mutex<HashMap<u32, mpsc::UnboundedSender<WorkerCommand>>>,
    events: broadcast::Sender<AllocEvent>,
    refusals: Mutex<Refusals>,
    proc_states: Mutex<HashMap<ProcId, ProcState>>,
    exits: Mutex<HashMap<u32, ExitReport>>,
    /// The round trip of each connected worker's path, written by its heartbeat task.
    rtts: Mutex<HashMap<u32, RttCell>>,
    /// Heartbeats missed by each worker that ever connected (kept after it leaves).
    beats_missed: Mutex<HashMap<u32, Arc<AtomicU64>>>,
    /// The certificate each connected worker presented, checked again
    /// whenever a new revocation list is loaded.
    peer_certs: Mutex<HashMap<u32, CertificateDer<'static>>>,
    /// The revocation list in force (replaced whole by a reload).
    revocations: Mutex<Arc<Revocations>>,
    /// Worker indexes reserved so far (launched or not).
    pub(crate) reserved: AtomicU32,
    /// Every worker index ever welcomed.
    joined: Mutex<HashSet<u32>>,
    /// Launched workers that could not be started, with why.
    spawn_failures: Mutex<HashMap<u32, String>>,
    /// Bumped whenever a worker is welcomed or a launched one ends: what a
    /// launch waits on to start the next workers.
    launch_changes: watch::Sender<u64>,
    /// Workers whose session is ending: out of `workers` already, their
    /// `WorkerLeft` not yet emitted.
    leaving: Mutex<HashSet<u32>>,
    /// Bumped whenever a worker's session has ended (after its procs' final
    /// states and `WorkerLeft` were emitted).
    departures: watch::Sender<u64>,
    /// Workers' forwarded log lines and their counts.
    pub(crate) logs: LogHub,
    /// Each admitted worker's host, as its Hello named it (cut).
    pub(crate) hosts: Mutex<HashMap<u32, String>>,
}

impl Shared {
    pub(crate) fn new(
        config: AllocatorConfig,
        router: Arc<Router>,
        revocations: Revocations,
    ) -> Shared {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Shared {
            config,
            router,
            next_rank: AtomicU32::new(0),
            children: Mutex::new(HashMap::new()),
            groups: Mutex::new(Vec::new()),
            admission: Mutex::new(Admission::new()),
            workers: Mutex::new(HashMap::new()),
            events,
            refusals: Mutex::new(Refusals {
                stats: RefusalStats::default(),
                connections: Throttle::new(REFUSAL_EVENTS_PER_SECOND, Duration::from_secs(1)),
                streams: Throttle::new(REFUSAL_EVENTS_PER_SECOND, Duration::from_secs(1)),
            }),
            proc_states: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            rtts: Mutex::new(HashMap::new()),
            beats_missed: Mutex::new(HashMap::new()),
            peer_certs: Mutex::new(HashMap::new()),
            revocations: Mutex::new(Arc::new(revocations)),
            reserved: AtomicU32::new(0),
            joined: Mutex::new(HashSet::new()),
            spawn_failures: Mutex::new(HashMap::new()),
            launch_changes: watch::channel(0).0,
            leaving: Mutex::new(HashSet::new()),
            departures: watch::channel(0).0,
            logs: LogHub::new(),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The revocation list in force.
    pub(crate) fn revocations(&self) -> Arc<Revocations> {
        lock(&self.revocations).clone()
    }

    /// Puts `revocations` in force and tells every connected worker whose
    /// certificate it revokes to go; returns the indexes of those workers.
    ///
    /// The list is swapped in before the connected workers are looked at,
    /// and `admit` checks the list after registering a worker's certificate,
    /// so a worker admitted at the same moment is caught by one or the other.
    pub(crate) fn set_revocations(&self, revocations: Revocations) -> Vec<u32> {
        let revocations = Arc::new(revocations);
        *lock(&self.revocations) = revocations.clone();
        let revoked: Vec<(u32, String)> = lock(&self.peer_certs)
            .iter()
            .filter(|(_, cert)| revocations.is_revoked(cert))
            .map(|(index, cert)| (*index, CertIdentity::of(cert).to_string()))
            .collect();
        let mut indexes = Vec::new();
        for (index, identity) in revoked {
            tracing::warn!("worker {index}: certificate {identity} revoked, disconnecting it");
            if self.command(index, WorkerCommand::Revoked(identity)) {
                indexes.push(index);
            }
        }
        indexes.sort_unstable();
        indexes
    }

    /// Records the certificate connected worker `index` presented.
    pub(crate) fn set_peer_cert(&self, index: u32, cert: CertificateDer<'static>) {
        lock(&self.peer_certs).insert(index, cert);
    }

    /// Records what `event` says, logs it (this is the one place events are
    /// logged) and sends it to every subscriber.
    pub(crate) fn emit(&self, event: AllocEvent) {
        match &event {
            AllocEvent::Proc { proc_id, state, .. } => {
                lock(&self.proc_states).insert(proc_id.clone(), state.clone());
            }
            AllocEvent::WorkerExited { index, status } => {
                lock(&self.exits).insert(*index, *status);
                self.launch_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            AllocEvent::WorkerJoined { index, .. } => {
                lock(&self.joined).insert(*index);
                self.launch_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            AllocEvent::LaunchFailed { index, reason } => {
                lock(&self.spawn_failures).insert(*index, reason.clone());
                self.launch_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            _ => {}
        }
        event.log();
        let _ = self.events.send(event);
    }

    /// A new subscription to the events.
    pub(crate) fn subscribe(&self) -> Events {
        Events::new(self.events.subscribe())
    }

    /// Counts a connection refused before admission; reports it at a limited rate.
    pub(crate) fn connection_refused(&self, addr: SocketAddr, kind: RefusalKind, reason: String) {
        self.refused(Refused::Connection(addr, kind), reason);
    }

    /// Counts a mailbox stream rejected; reports it at a limited rate.
    pub(crate) fn stream_rejected(&self, worker: u32, reason: String) {
        self.refused(Refused::Stream(worker), reason);
    }

    /// Counts a refusal and keeps its (bounded) reason; emits an event for
    /// it unless its kind's throttle says enough were reported.
    fn refused(&self, what: Refused, reason: String) {
        let reason = bounded_text(&reason, MAX_REFUSAL_REASON);
        let mut refusals = lock(&self.refusals);
        let Refusals {
            stats,
            connections,
            streams,
        } = &mut *refusals;
        let (count, last, throttle) = match what {
            Refused::Connection(_, kind) => {
                *stats.connections_by_kind.entry(kind).or_insert(0) += 1;
                (
                    &mut stats.connections,
                    &mut stats.last_connection_reason,
                    connections,
                )
            }
            Refused::Stream(_) => (&mut stats.streams, &mut stats.last_stream_reason, streams),
        };
        *count += 1;
        *last = Some(reason.clone());
        let admitted = throttle.admit(std::time::Instant::now());
        drop(refusals);
        let Some(suppressed) = admitted else { return };
        self.emit(match what {
            Refused::Connection(addr, _) => AllocEvent::WorkerRejected {
                addr,
                reason,
                suppressed,
            },
            Refused::Stream(worker) => AllocEvent::MailboxRejected {
                worker,
                reason,
                suppressed,
            },
        });
    }

    /// Refusal counters so far.
    pub(crate) fn refusals(&self) -> RefusalStats {
        lock(&self.refusals).stats.clone()
    }

    pub(crate) fn lock_admission(&self) -> MutexGuard<'_, Admission> {
        lock(&self.admission)
    }

    pub(crate) fn worker_joined(&self, index: u32, commands: mpsc::UnboundedSender<WorkerCommand>) {
        lock(&self.workers).insert(index, commands);
    }

    /// Sends `cmd` to connected worker `index`; false if it is not connected.
    pub(crate) fn command(&self, index: u32, cmd: WorkerCommand) -> bool {
        match lock(&self.workers).get(&index) {
            Some(tx) => tx.send(cmd).is_ok(),
            None => false,
        }
    }

    /// Tells every connected worker `cmd()`; returns how many were told.
    pub(crate) fn command_all(&self, cmd: impl Fn() -> WorkerCommand) -> usize {
        lock(&self.workers)
            .values()
            .filter(|tx| tx.send(cmd()).is_ok())
            .count()
    }

    /// Indexes of the workers connected now, in order.
    pub(crate) fn connected_workers(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.workers).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The cell where worker `index`'s heartbeat task publishes its round trip.
    pub(crate) fn rtt_cell(&self, index: u32) -> RttCell {
        lock(&self.rtts).entry(index).or_default().clone()
    }

    /// The counter where worker `index`'s heartbeat task publishes the beats it missed.
    pub(crate) fn beats_missed_cell(&self, index: u32) -> Arc<AtomicU64> {
        lock(&self.beats_missed).entry(index).or_default().clone()
    }

    /// Heartbeats worker `index` missed so far (over all its connections).
    pub(crate) fn beats_missed(&self, index: u32) -> u64 {
        lock(&self.beats_missed)
            .get(&index)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The last round trip measured on worker `index`'s connection.
    pub(crate) fn worker_rtt(&self, index: u32) -> Option<Duration> {
        lock(&self.rtts).get(&index).and_then(RttCell::get)
    }

    /// The last reported state of `proc_id`.
    pub(crate) fn proc_state(&self, proc_id: &ProcId) -> Option<ProcState> {
        lock(&self.proc_states).get(proc_id).cloned()
    }

    /// How launched worker `index` exited, once it has.
    pub(crate) fn exit_status(&self, index: u32) -> Option<ExitReport> {
        lock(&self.exits).get(&index).copied()
    }

    /// Records that worker `index`'s connection ended; kills it if it failed.
    ///
    /// A failed worker gets one heartbeat timeout (at least 1 s) to exit by
    /// itself, which it does when it is merely cut off (and then reports
    /// why in its exit code); a frozen one is SIGKILLed and reaped after that.
    pub(crate) fn worker_left(&self, index: u32, end: ProcEnd) {
        // Marked before it leaves `workers`, so that `until_left` never sees
        // it in neither place before its `WorkerLeft` is out.
        lock(&self.leaving).insert(index);
        lock(&self.workers).remove(&index);
        lock(&self.rtts).remove(&index);
        lock(&self.peer_certs).remove(&index);
        self.lock_admission().finish(index);
        if end.is_failure() {
            self.kill_child(
                index,
                self.config.heartbeat.timeout.max(Duration::from_secs(1)),
            );
        }
        self.emit(AllocEvent::WorkerLeft { index, end });
        lock(&self.leaving).remove(&index);
        self.departures.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether worker `index` has a session that has not finished ending.
    fn in_session(&self, index: u32) -> bool {
        lock(&self.workers).contains_key(&index) || lock(&self.leaving).contains(&index)
    }

    /// Waits (at most `within`) until worker `index` has no session: the
    /// final state of each of its procs, and its `WorkerLeft`, have been
    /// emitted by then. Returns at once for a worker without a session.
    pub(crate) async fn until_left(&self, index: u32, within: Duration) {
        let mut departures = self.departures.subscribe();
        let left = async {
            // Subscribed before looking: a departure after the look is seen.
            // (`workers` is looked at before `leaving`, the order in which
            // `worker_left` moves it: it cannot slip between the two looks.)
            while self.in_session(index) {
                if departures.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(within, left).await.is_err() {
            tracing::warn!(
                "worker {index}: its session did not end within {within:?} of its process; reporting the exit anyway"
            );
        }
    }

    /// Kills launched worker `index` unless it exits within `grace`
    /// (false for workers started elsewhere or already reaped).
    pub(crate) fn kill_child(&self, index: u32, grace: Duration) -> bool {
        match lock(&self.children).get(&index) {
            Some(slot) if slot.pid.is_some() => slot.kill.send(grace).is_ok(),
            _ => false,
        }
    }

    /// The indexes of every worker this allocator launched, alone or in a group.
    pub(crate) fn launched_indexes(&self) -> Vec<u32> {
        let mut all: Vec<u32> = lock(&self.children).keys().copied().collect();
        for group in lock(&self.groups).iter() {
            all.extend(&group.indexes);
        }
        all.sort_unstable();
        all
    }

    /// The pid of launched worker `index` while it runs.
    pub(crate) fn child_pid(&self, index: u32) -> Option<u32> {
        lock(&self.children).get(&index).and_then(|c| c.pid)
    }

    /// Whether worker `index` was ever welcomed.
    pub(crate) fn has_joined(&self, index: u32) -> bool {
        lock(&self.joined).contains(&index)
    }

    /// Why launched worker `index` could not be started, if it could not.
    pub(crate) fn spawn_failure(&self, index: u32) -> Option<String> {
        lock(&self.spawn_failures).get(&index).cloned()
    }

    /// Whether launched worker `index` will never be welcomed now (it was
    /// and left, exited, or could not be started), or already was.
    pub(crate) fn done_joining(&self, index: u32) -> bool {
        self.has_joined(index)
            || self.exit_status(index).is_some()
            || lock(&self.spawn_failures).contains_key(&index)
    }

    /// A receiver told of every welcome and every end of a launched worker.
    pub(crate) fn launch_changes(&self) -> watch::Receiver<u64> {
        self.launch_changes.subscribe()
    }

    /// Counts of workers and procs now (see [`Progress`]).
    pub(crate) fn progress(&self) -> Progress {
        let mut p = Progress {
            workers: self.reserved.load(Ordering::Relaxed) as usize,
            started: lock(&self.children).len(),
            joined: lock(&self.joined).len(),
            connected: lock(&self.workers).len(),
            spawn_failed: lock(&self.spawn_failures).len(),
            ..Progress::default()
        };
        for status in lock(&self.exits).values() {
            p.exited += 1;
            if !status.is_success() {
                p.exited_failed += 1;
            }
        }
        p.procs = self.lock_admission().proc_count();
        for state in lock(&self.proc_states).values() {
            match state {
                ProcState::Running => p.procs_running += 1,
                ProcState::Failed { .. } => p.procs_failed += 1,
                ProcState::Stopped { .. } => p.procs_stopped += 1,
                ProcState::Created => {}
            }
        }
        p
    }
}
