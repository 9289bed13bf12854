//! A proc: hosts actors and reply ports, delivers envelopes, sends them out.
//!
//! Delivery decisions are made here and nowhere else: an envelope for this
//! proc goes to its actor's mailbox, to a reply port ([`Ports`]), or to the
//! proc itself (spawn, stop, stats); anything that cannot be delivered is
//! returned to its sender with the reason, through [`Proc::return_to_sender`].
//!
//! An envelope that reached its actor's mailbox and is then not handled
//! (the actor failed or stopped first, or the message did not decode) is
//! *bounced* ([`Proc::bounce`]): a sender on this proc gets it back, and an
//! ask from elsewhere fails at once through its reply port. A worker never
//! sends a delivered envelope back over the wire: the allocator has already
//! forgotten it, and could not tell a genuine return from a forged one.
//!
//! The actors' tasks and the clients reach their proc only through the
//! [`Host`] trait, which `Proc` implements here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cell::{Delivery, Startable};
use super::client::Client;
use super::context::Context;
use super::error::SendError;
use super::host::{Host, PortAnswer, TrySendError};
use super::outlet::{Outlet, OutletError};
use super::ports::Ports;
use super::refs::ActorRef;
use super::registry::{self, Registry};
use super::returns::ReturnsSender;
use super::traits::Spawn;
use crate::id::{check_name, ActorId, IdParseError, PortId, ProcId};
use crate::mailbox::Outgoing;
use crate::queue::{self, QueueError, QueueReceiver, QueueSender};
use crate::reason::{ActorFailure, Bounded, ReturnReason, SpawnRefusal, StopRefusal};
use crate::stop::Stop;
use crate::sync::lock;
use crate::wire::{codec, Dest, Envelope, ProcStats, SystemMsg, Undeliverable};

/// How long an aborted actor task gets to be dropped before its proc moves on.
const ABORT_GRACE: Duration = Duration::from_millis(100);

/// The instant `timeout` from now (far in the future if that does not fit).
fn deadline_in(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Why an envelope was not delivered at once.
pub(crate) enum NotDelivered {
    /// The actor's mailbox is full: try again later.
    Full(Envelope),
    /// It cannot be delivered at all.
    Undeliverable(Undeliverable),
}

/// Settings of a proc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcConfig {
    /// Byte budget of each actor's mailbox and of the proc's outbound queue.
    pub(crate) mailbox_bytes: usize,
    /// How long an actor told to stop may take to finish the message it is
    /// handling and run its stop hook; past it, its task is aborted.
    pub(crate) stop_timeout: Duration,
    /// Default timeout of `ask`.
    pub(crate) ask_timeout: Duration,
    /// Largest frame the proc's way out carries.
    pub(crate) max_frame: u32,
}

impl Default for ProcConfig {
    fn default() -> Self {
        ProcConfig {
            mailbox_bytes: 8 * 1024 * 1024,
            stop_timeout: Duration::from_secs(5),
            ask_timeout: Duration::from_secs(30),
            max_frame: crate::config::Limits::default().max_frame,
        }
    }
}

struct ActorSlot {
    pid: u64,
    mailbox: QueueSender<Delivery>,
    stop: Stop,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    id: ProcId,
    config: ProcConfig,
    registry: Arc<Registry>,
    outlet: Arc<dyn Outlet>,
    failures: mpsc::UnboundedSender<(ActorId, ActorFailure)>,
    /// Where returns for senders that are not actors go (`None`: logged only).
    returns: Option<ReturnsSender>,
    actors: Mutex<HashMap<String, ActorSlot>>,
    ports: Ports,
    next_pid: AtomicU64,
    next_envelope: AtomicU64,
}

/// A proc: a set of actors with one way in and one way out; cheap to clone.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<Inner>,
}

/// The receiving ends a proc's host drains.
pub(crate) struct ProcOutputs {
    /// Envelopes and returns leaving the proc (`None` when it has its own [`Outlet`]).
    pub(crate) outbound: Option<QueueReceiver<Outgoing>>,
    /// Actors that failed.
    pub(crate) failures: mpsc::UnboundedReceiver<(ActorId, ActorFailure)>,
}

impl Proc {
    /// A new proc with no actors, and the outputs its host must drain.
    pub(crate) fn new(
        id: ProcId,
        registry: Arc<Registry>,
        config: ProcConfig,
        returns: Option<ReturnsSender>,
    ) -> (Proc, ProcOutputs) {
        let (outbound_tx, outbound_rx) = queue::bounded(config.mailbox_bytes);
        let (proc, mut outputs) =
            Self::with_outlet(id, registry, config, Arc::new(outbound_tx), returns);
        outputs.outbound = Some(outbound_rx);
        (proc, outputs)
    }

    /// A new proc whose outgoing envelopes go to `outlet`.
    pub(crate) fn with_outlet(
        id: ProcId,
        registry: Arc<Registry>,
        config: ProcConfig,
        outlet: Arc<dyn Outlet>,
        returns: Option<ReturnsSender>,
    ) -> (Proc, ProcOutputs) {
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        let proc = Proc {
            inner: Arc::new(Inner {
                id,
                config,
                registry,
                outlet,
                failures: failures_tx,
                returns,
                actors: Mutex::new(HashMap::new()),
                ports: Ports::default(),
                next_pid: AtomicU64::new(0),
                next_envelope: AtomicU64::new(0),
            }),
        };
        let outputs = ProcOutputs {
            outbound: None,
            failures: failures_rx,
        };
        (proc, outputs)
    }

    /// This proc's id.
    pub fn id(&self) -> &ProcId {
        &self.inner.id
    }

    /// A client sending as `name` from this proc. It is no actor: what comes
    /// back to it goes to the proc's returns stream (for the controller's
    /// proc, [`Allocator::returns`](crate::allocator::Allocator::returns)).
    ///
    /// Errors: `name` is not 1-128 characters of `[A-Za-z0-9_-]`.
    pub fn client(&self, name: &str) -> Result<Client, IdParseError> {
        check_name(name)?;
        Ok(self.client_unchecked(name))
    }

    fn client_unchecked(&self, name: &str) -> Client {
        Client::new(Arc::new(self.clone()), self.id().actor(name, 0))
    }

    /// Spawns actor `A` named `name` here.
    ///
    /// Errors: invalid or taken name, or the actor's constructor failed or
    /// panicked.
    pub fn spawn<A: Spawn>(
        &self,
        name: &str,
        params: A::Params,
    ) -> Result<ActorRef<A>, SpawnRefusal> {
        let ready = registry::make::<A>(params)
            .inspect_err(|why| tracing::warn!("spawn of {name} on {} refused: {why}", self.id()))?;
        self.start(name, ready).map(ActorRef::attest)
    }

    /// Spawns the actor type registered as `actor_type` from encoded parameters.
    pub(crate) fn spawn_registered(
        &self,
        actor_type: &str,
        name: &str,
        params: &[u8],
    ) -> Result<ActorId, SpawnRefusal> {
        let ready = self.inner.registry.construct(actor_type, params)?;
        self.start(name, ready)
    }

    /// Starts a constructed actor as `name`.
    fn start(&self, name: &str, ready: Box<dyn Startable>) -> Result<ActorId, SpawnRefusal> {
        if check_name(name).is_err() {
            return Err(SpawnRefusal::InvalidName(name.to_string()));
        }
        let mut actors = lock(&self.inner.actors);
        if actors.contains_key(name) {
            return Err(SpawnRefusal::NameTaken {
                name: name.to_string(),
                proc_id: self.id().clone(),
            });
        }
        let pid = self.inner.next_pid.fetch_add(1, Ordering::Relaxed);
        let id = self.id().actor(name, pid);
        let (mailbox, rx) = queue::bounded(self.inner.config.mailbox_bytes);
        let stop = Stop::new();
        let host: Arc<dyn Host> = Arc::new(self.clone());
        let ctx = Context::new(Client::new(host.clone(), id.clone()));
        let task = tokio::spawn(ready.start(ctx, rx, stop.clone(), host));
        actors.insert(
            name.to_string(),
            ActorSlot {
                pid,
                mailbox,
                stop,
                task: Some(task),
            },
        );
        Ok(id)
    }

    /// The mailbox of `actor`, if it lives here under that name and pid; else why not.
    fn mailbox_of(&self, actor: &ActorId) -> Result<QueueSender<Delivery>, ReturnReason> {
        if actor.proc_id != *self.id() {
            return Err(ReturnReason::WrongProc(self.id().clone()));
        }
        match lock(&self.inner.actors).get(actor.name.as_str()) {
            Some(slot) if slot.pid == actor.pid => Ok(slot.mailbox.clone()),
            _ => Err(ReturnReason::ActorNotFound(actor.clone())),
        }
    }

    /// Delivers an envelope addressed to this proc, waiting for room in the actor's mailbox.
    ///
    /// Errors: the envelope back, with why it cannot be delivered (actor not
    /// found or stopped, port closed, not for this proc).
    pub(crate) async fn deliver(&self, env: Envelope) -> Result<(), Undeliverable> {
        let Dest::Actor(actor) = &env.to else {
            return self.deliver_now(env);
        };
        let mailbox = match self.mailbox_of(actor) {
            Ok(mailbox) => mailbox,
            Err(reason) => return Err(Undeliverable::not_delivered(env, reason)),
        };
        let cost = env.wire_size();
        match mailbox.send(Delivery::Message(env), cost).await {
            Ok(()) => Ok(()),
            Err(
                QueueError::Closed(Delivery::Message(env))
                | QueueError::Full(Delivery::Message(env)),
            ) => Err(stopped(env)),
            // The queue hands back exactly the item it was given.
            Err(_) => Ok(()),
        }
    }

    /// Delivers consecutive envelopes for one actor as one mailbox item.
    ///
    /// All of `envs` must be addressed to the same actor. Returns those that
    /// cannot be delivered, each with its index in `envs` and the reason.
    pub(crate) async fn deliver_batch(
        &self,
        mut envs: Vec<Envelope>,
    ) -> Vec<(usize, Undeliverable)> {
        if envs.len() <= 1 {
            return match envs.pop() {
                Some(env) => self
                    .deliver(env)
                    .await
                    .err()
                    .map(|u| (0, u))
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            };
        }
        let Dest::Actor(actor) = envs[0].to.clone() else {
            let mut returned = Vec::new();
            for (i, env) in envs.into_iter().enumerate() {
                if let Err(u) = self.deliver(env).await {
                    returned.push((i, u));
                }
            }
            return returned;
        };
        let all = |envs: Vec<Envelope>, reason: ReturnReason| -> Vec<(usize, Undeliverable)> {
            envs.into_iter()
                .enumerate()
                .map(|(i, e)| (i, Undeliverable::not_delivered(e, reason.clone())))
                .collect()
        };
        let mailbox = match self.mailbox_of(&actor) {
            Ok(mailbox) => mailbox,
            Err(reason) => return all(envs, reason),
        };
        let cost = envs.iter().map(|e| e.wire_size()).sum();
        match mailbox.send(Delivery::Batch(envs), cost).await {
            Ok(()) => Vec::new(),
            Err(
                QueueError::Closed(Delivery::Batch(envs)) | QueueError::Full(Delivery::Batch(envs)),
            ) => all(envs, ReturnReason::ActorStopped(actor)),
            Err(_) => Vec::new(),
        }
    }

    /// Delivers without waiting; [`NotDelivered::Full`] when the actor's mailbox is full.
    pub(crate) fn try_deliver(&self, env: Envelope) -> Result<(), NotDelivered> {
        let Dest::Actor(actor) = &env.to else {
            return self.deliver_now(env).map_err(NotDelivered::Undeliverable);
        };
        let mailbox = match self.mailbox_of(actor) {
            Ok(mailbox) => mailbox,
            Err(reason) => {
                return Err(NotDelivered::Undeliverable(Undeliverable::not_delivered(
                    env, reason,
                )))
            }
        };
        let cost = env.wire_size();
        match mailbox.try_send(Delivery::Message(env), cost) {
            Ok(()) => Ok(()),
            Err(QueueError::Full(Delivery::Message(env))) => Err(NotDelivered::Full(env)),
            Err(QueueError::Closed(Delivery::Message(env))) => {
                Err(NotDelivered::Undeliverable(stopped(env)))
            }
            Err(_) => Ok(()),
        }
    }

    /// Delivers to a port or to the proc itself.
    fn deliver_now(&self, env: Envelope) -> Result<(), Undeliverable> {
        match &env.to {
            Dest::Port(port) | Dest::PortFailure(port) if port.actor_id.proc_id == *self.id() => {
                let (port, failed) = (port.clone(), matches!(env.to, Dest::PortFailure(_)));
                let answer = if failed {
                    PortAnswer::Failed(port_failure_reason(&env.payload))
                } else {
                    PortAnswer::Reply(env.payload)
                };
                if self.inner.ports.answer(port.port, answer) {
                    Ok(())
                } else {
                    // The payload went into the answer; the envelope comes back without it.
                    let to = if failed {
                        Dest::PortFailure(port.clone())
                    } else {
                        Dest::Port(port.clone())
                    };
                    let env = Envelope {
                        id: env.id,
                        from: env.from,
                        to,
                        return_port: env.return_port,
                        payload: Vec::new(),
                    };
                    Err(Undeliverable::not_delivered(
                        env,
                        ReturnReason::PortClosed(port),
                    ))
                }
            }
            Dest::Proc(p) if p == self.id() => self.system(env),
            _ => Err(Undeliverable::not_delivered(
                env,
                ReturnReason::WrongProc(self.id().clone()),
            )),
        }
    }

    /// Handles a request addressed to the proc itself and answers its port.
    ///
    /// Errors: the envelope back if it is not a proc request.
    fn system(&self, env: Envelope) -> Result<(), Undeliverable> {
        let (msg, reply) = match codec::decode::<(SystemMsg, PortId)>(&env.payload) {
            Ok(m) => m,
            Err(e) => {
                let reason = ReturnReason::NotAProcRequest(e.to_string());
                return Err(Undeliverable::not_delivered(env, reason));
            }
        };
        let answer = match msg {
            SystemMsg::Spawn {
                actor_type,
                name,
                params,
            } => codec::encode(&self.spawn_registered(&actor_type, &name, &params)),
            SystemMsg::StopActor { name } => {
                let this = self.clone();
                tokio::spawn(async move {
                    let result = this.stop_actor(&name).await;
                    this.reply(reply, codec::encode(&result));
                });
                return Ok(());
            }
            SystemMsg::Stats => codec::encode(&self.stats()),
        };
        self.reply(reply, answer);
        Ok(())
    }

    /// Sends a proc request's answer to its reply port.
    fn reply(&self, port: PortId, answer: Result<Vec<u8>, codec::CodecError>) {
        match answer {
            Ok(payload) => {
                let env =
                    self.envelope_from(&self.id().actor("proc", 0), Dest::Port(port), payload);
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = this.send_env(env).await {
                        tracing::debug!("proc request answer not sent: {e}");
                    }
                });
            }
            Err(e) => tracing::error!("cannot encode proc reply: {e}"),
        }
    }

    fn envelope_from(&self, from: &ActorId, to: Dest, payload: Vec<u8>) -> Envelope {
        Host::envelope(self, from, to, payload, None)
    }

    /// Sends an envelope: delivered here if it is for this proc, else out (waiting for room).
    async fn send_env(&self, env: Envelope) -> Result<(), SendError> {
        match Host::try_send(self, env) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(env)) => Host::send(self, env).await,
            Err(TrySendError::Refused(e)) => Err(e),
        }
    }

    /// Returns an undeliverable envelope to its sender, wherever that is.
    ///
    /// Over a worker's stream, which carries no returns (see the module
    /// docs), this is [`Proc::bounce`]; a worker's reader refuses what it
    /// could not deliver by position instead ([`Proc::refuse`]).
    pub(crate) fn return_to_sender(&self, u: Undeliverable) {
        if u.envelope.from.proc_id == *self.id() {
            self.returned(u);
        } else if self.inner.outlet.carries_returns() {
            if let Err(Outgoing::Returned(u)) = self
                .inner
                .outlet
                .send_unbudgeted(Outgoing::Returned(Box::new(u)))
            {
                tracing::debug!(
                    "dropping return of envelope to {}: proc closed ({})",
                    u.envelope.to,
                    u.reason
                );
            }
        } else {
            self.bounce(u);
        }
    }

    /// Hands back an envelope that reached its actor's mailbox but was not
    /// handled: its actor failed or stopped first, or it did not decode.
    ///
    /// A sender on this proc gets it back (its ask fails, or its
    /// `on_undeliverable` hook runs). For a sender elsewhere an ask fails at
    /// once through its reply port (within the proc's outbound budget: if
    /// there is no room the ask is left to its timeout); a tell was delivered
    /// and is only logged.
    pub(crate) fn bounce(&self, u: Undeliverable) {
        if u.envelope.from.proc_id == *self.id() || self.inner.outlet.carries_returns() {
            return self.return_to_sender(u);
        }
        let Some(port) = u.envelope.return_port else {
            tracing::debug!(
                "message from {} to {} delivered but not handled: {}",
                u.envelope.from,
                u.envelope.to,
                u.reason
            );
            return;
        };
        let payload = match codec::encode(&u.reason.clone().bounded()) {
            Ok(p) => p,
            Err(e) => return tracing::error!("cannot encode ask failure: {e}"),
        };
        let from = match &u.envelope.to {
            Dest::Actor(actor) => actor.clone(),
            _ => self.id().actor("proc", 0),
        };
        let to = Dest::PortFailure(u.envelope.from.port(port));
        let env = self.envelope_from(&from, to, payload);
        if let Err(e) = self.inner.outlet.try_send(Outgoing::Envelope(env)) {
            let why = match e {
                OutletError::Full(_) => "outbound queue full",
                OutletError::Closed | OutletError::Refused(_) => "proc closed",
            };
            tracing::debug!("cannot fail ask of {} at once: {why}", u.envelope.from);
        }
    }

    /// Tells the sender of the envelope at stream position `seq` that it was
    /// not delivered (a worker's reader, before acknowledging it).
    pub(crate) fn refuse(&self, seq: u64, reason: ReturnReason) {
        let reason = reason.bounded();
        if self
            .inner
            .outlet
            .send_unbudgeted(Outgoing::Refused { seq, reason })
            .is_err()
        {
            tracing::debug!("cannot refuse envelope {seq} of {}: proc closed", self.id());
        }
    }

    /// Takes back an envelope sent from this proc: fails its ask, or hands
    /// it to its sending actor, or to the proc's returns stream.
    pub(crate) fn returned(&self, u: Undeliverable) {
        if let Some(port) = u.envelope.return_port {
            if self
                .inner
                .ports
                .answer(port, PortAnswer::Failed(u.reason.clone()))
            {
                return;
            }
        }
        let sender = self.mailbox_of(&u.envelope.from).ok();
        let u = match sender {
            Some(mailbox) => match mailbox.send_unbudgeted(Delivery::Returned(u)) {
                Ok(()) => return,
                Err(
                    QueueError::Closed(Delivery::Returned(u))
                    | QueueError::Full(Delivery::Returned(u)),
                ) => u,
                Err(_) => return,
            },
            None => u,
        };
        if u.envelope.return_port.is_some() {
            return;
        }
        match &self.inner.returns {
            Some(returns) => returns.push(u),
            None => tracing::debug!("returned to {}: {}", u.envelope.from, u.reason),
        }
    }

    /// Fails every pending ask to an actor on `target` (that proc has ended).
    pub(crate) fn fail_asks_to(&self, target: &ProcId, reason: &ReturnReason) {
        self.inner.ports.fail_all_to(target, reason);
    }

    /// Stops actor `name` (its stop hook runs) and waits for it, at most the stop timeout.
    ///
    /// Errors: no such actor; or it did not stop within the proc's stop
    /// timeout, so its task was aborted (that is also reported as the
    /// actor's failure). A task that never yields cannot be aborted: it keeps
    /// its thread, but the actor no longer gets messages.
    pub async fn stop_actor(&self, name: &str) -> Result<(), StopRefusal> {
        let (id, task) = {
            let mut actors = lock(&self.inner.actors);
            match actors.get_mut(name) {
                Some(slot) => {
                    slot.stop.stop();
                    (self.id().actor(name, slot.pid), slot.task.take())
                }
                None => {
                    return Err(StopRefusal::NotFound {
                        name: name.to_string(),
                        proc_id: self.id().clone(),
                    })
                }
            }
        };
        // Without a task, another stop of this actor is under way.
        let Some(task) = task else { return Ok(()) };
        let timeout = self.inner.config.stop_timeout;
        let aborted = self
            .await_stopped(vec![(id, task)], deadline_in(timeout))
            .await;
        match aborted.into_iter().next() {
            None => Ok(()),
            Some(id) => {
                Host::report_failure(self, &id, ActorFailure::Aborted(timeout));
                Err(StopRefusal::Aborted {
                    actor: id,
                    after: timeout,
                })
            }
        }
    }

    /// Stops every actor and waits for them until `deadline`; returns those that had to be aborted.
    ///
    /// Each actor finishes the message it is handling, then runs its stop
    /// hook; one still running at `deadline` has its task aborted and is
    /// forgotten, so nothing more is delivered to it. Unlike
    /// [`Proc::stop_actor`] this does not report them: the caller, which is
    /// shutting the proc down, says which actors were aborted in its own
    /// report (by then the path that forwards failures may be gone).
    pub(crate) async fn stop_all(&self, deadline: tokio::time::Instant) -> Vec<ActorId> {
        let tasks: Vec<(ActorId, JoinHandle<()>)> = {
            let mut actors = lock(&self.inner.actors);
            actors
                .iter_mut()
                .filter_map(|(name, slot)| {
                    slot.stop.stop();
                    let id = self.id().actor(name.as_str(), slot.pid);
                    slot.task.take().map(|task| (id, task))
                })
                .collect()
        };
        self.await_stopped(tasks, deadline).await
    }

    /// Waits for actor tasks until `deadline`, then aborts and forgets the late ones; returns them.
    async fn await_stopped(
        &self,
        tasks: Vec<(ActorId, JoinHandle<()>)>,
        deadline: tokio::time::Instant,
    ) -> Vec<ActorId> {
        let waits = tasks.into_iter().map(|(id, mut task)| async move {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(_) => None,
                Err(_) => {
                    task.abort();
                    Some((id, task))
                }
            }
        });
        let late: Vec<(ActorId, JoinHandle<()>)> = futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect();
        for (id, _) in &late {
            tracing::warn!("actor {id} did not stop in time: aborted");
            Host::forget_actor(self, id);
        }
        // An aborted task that yields is dropped at once, which returns what
        // was left in its mailbox; give that a moment before the caller
        // closes the proc's way out. One that never yields cannot be waited for.
        let grace = tokio::time::Instant::now() + ABORT_GRACE;
        let mut aborted = Vec::with_capacity(late.len());
        for (id, task) in late {
            let _ = tokio::time::timeout_at(grace, task).await;
            aborted.push(id);
        }
        aborted
    }

    /// Queue occupancy of this proc.
    pub fn stats(&self) -> ProcStats {
        let actors = lock(&self.inner.actors);
        let (mut used, mut peak) = self.inner.outlet.queued_bytes();
        for slot in actors.values() {
            used += slot.mailbox.used_bytes();
            peak = peak.max(slot.mailbox.peak_bytes());
        }
        ProcStats {
            actors: actors.len() as u32,
            queued_bytes: used,
            peak_queued_bytes: peak,
        }
    }
}

/// The return of an envelope whose actor stopped before taking it.
fn stopped(env: Envelope) -> Undeliverable {
    let reason = match &env.to {
        Dest::Actor(actor) => ReturnReason::ActorStopped(actor.clone()),
        other => ReturnReason::WrongProc(other.proc_id().clone()),
    };
    Undeliverable::not_delivered(env, reason)
}

/// The reason carried by a port failure, its peer-chosen text bounded.
fn port_failure_reason(payload: &[u8]) -> ReturnReason {
    match codec::decode::<ReturnReason>(payload) {
        Ok(reason) => reason.bounded(),
        Err(e) => ReturnReason::Unencodable(format!("ask failed (reason undecodable: {e})")),
    }
}

impl Host for Proc {
    fn ask_timeout(&self) -> Duration {
        self.inner.config.ask_timeout
    }

    fn max_frame(&self) -> u32 {
        self.inner.config.max_frame
    }

    fn stop_timeout(&self) -> Duration {
        self.inner.config.stop_timeout
    }

    fn envelope(
        &self,
        from: &ActorId,
        to: Dest,
        payload: Vec<u8>,
        return_port: Option<u64>,
    ) -> Envelope {
        Envelope {
            id: self.inner.next_envelope.fetch_add(1, Ordering::Relaxed),
            from: from.clone(),
            to,
            return_port,
            payload,
        }
    }

    fn try_send(&self, env: Envelope) -> Result<(), TrySendError> {
        if env.to.proc_id() == self.id() {
            return match self.try_deliver(env) {
                Ok(()) => Ok(()),
                Err(NotDelivered::Full(env)) => Err(TrySendError::Full(env)),
                Err(NotDelivered::Undeliverable(u)) => {
                    self.return_to_sender(u);
                    Ok(())
                }
            };
        }
        match self.inner.outlet.try_send(Outgoing::Envelope(env)) {
            Ok(()) => Ok(()),
            Err(OutletError::Full(Outgoing::Envelope(env))) => Err(TrySendError::Full(env)),
            Err(OutletError::Full(_)) | Err(OutletError::Closed) => {
                Err(TrySendError::Refused(SendError::Closed))
            }
            Err(OutletError::Refused(reason)) => {
                Err(TrySendError::Refused(SendError::Refused(reason)))
            }
        }
    }

    fn send(&self, env: Envelope) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(async move {
            if env.to.proc_id() == self.id() {
                if let Err(u) = self.deliver(env).await {
                    self.return_to_sender(u);
                }
                return Ok(());
            }
            match self.inner.outlet.send(Outgoing::Envelope(env)).await {
                Ok(()) => Ok(()),
                Err(OutletError::Refused(reason)) => Err(SendError::Refused(reason)),
                Err(_) => Err(SendError::Closed),
            }
        })
    }

    fn open_port(&self, target: ProcId) -> (u64, oneshot::Receiver<PortAnswer>) {
        self.inner.ports.open(target)
    }

    fn close_port(&self, port: u64) {
        self.inner.ports.close(port);
    }

    fn bounce(&self, u: Undeliverable) {
        Proc::bounce(self, u)
    }

    fn forget_actor(&self, id: &ActorId) {
        let mut actors = lock(&self.inner.actors);
        if actors
            .get(id.name.as_str())
            .is_some_and(|s| s.pid == id.pid)
        {
            actors.remove(id.name.as_str());
        }
    }

    fn report_failure(&self, id: &ActorId, failure: ActorFailure) {
        tracing::warn!("actor {id} failed: {failure}");
        let _ = self.inner.failures.send((id.clone(), failure));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::builtin::{self, Echo, EchoMsg};
    use super::super::returns::{self, Returns};
    use super::super::test_actors::{
        Fragile, FragileMsg, FragileParams, Sleeper, SleeperMsg, StuckStop, Tripwire,
    };
    use super::super::AskError;
    use super::{Proc, ProcConfig, ProcOutputs};
    use crate::id::ProcId;
    use crate::wire::codec;

    const SHORT: Duration = Duration::from_millis(200);
    /// Generous bound for things that take milliseconds.
    const SOON: Duration = Duration::from_secs(10);

    fn proc_with(stop_timeout: Duration) -> (Proc, ProcOutputs, Returns) {
        let config = ProcConfig {
            stop_timeout,
            ..ProcConfig::default()
        };
        let (tx, rx) = returns::returns(1 << 20);
        let (proc, outputs) = Proc::new(
            ProcId::new("test", 0),
            Arc::new(builtin::registry()),
            config,
            Some(tx),
        );
        (proc, outputs, rx)
    }

    fn fragile(panic_in_new: Option<&str>) -> FragileParams {
        FragileParams {
            decode: Tripwire(false),
            panic_in_new: panic_in_new.map(str::to_string),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_all_aborts_late_actors_and_returns_their_mail() {
        let (proc, _outputs, returned) = proc_with(SOON);
        let client = proc.client("tester").expect("client");
        let stuck = proc.spawn::<StuckStop>("stuck", ()).expect("spawn");
        let busy = proc.spawn::<Sleeper>("busy", ()).expect("spawn");
        let echo = proc.spawn::<Echo>("echo", ()).expect("spawn");
        let hour = 3_600_000;
        for _ in 0..2 {
            let msg = SleeperMsg::Sleep {
                ms: hour,
                reply: None,
            };
            busy.tell(&client, msg).await.expect("tell");
        }
        // The echo answers, so the proc delivers; the stuck actor's hook is not reached yet.
        let answer = echo
            .ask_within(&client, SOON, |p| EchoMsg::Echo(b"hi".to_vec(), p))
            .await;
        assert_eq!(answer, Ok(b"hi".to_vec()));

        let started = tokio::time::Instant::now();
        let mut aborted = proc.stop_all(started + SHORT).await;
        aborted.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(aborted, vec![busy.id().clone(), stuck.id().clone()]);
        assert!(
            started.elapsed() < SOON,
            "stop_all took {:?}",
            started.elapsed()
        );

        // The second sleep never ran: it comes back, saying the actor was aborted.
        let returned = tokio::time::timeout(SOON, returned.next())
            .await
            .expect("a return in time")
            .expect("returns open");
        assert_eq!(returned.recipient().to_string(), busy.id().to_string());
        assert!(
            returned.reason().to_string().contains("aborted"),
            "{}",
            returned.reason()
        );
        // Aborted actors are forgotten: nothing more is delivered to them.
        let after = stuck.ask_within(&client, SOON, |p| p).await;
        assert!(
            matches!(&after, Err(AskError::Undeliverable(why)) if why.to_string().contains("not found")),
            "{after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_actor_aborts_a_stop_hook_that_never_returns_and_reports_it() {
        let (proc, mut outputs, _returned) = proc_with(SHORT);
        let stuck = proc.spawn::<StuckStop>("stuck", ()).expect("spawn");
        let started = tokio::time::Instant::now();
        let result = proc.stop_actor("stuck").await;
        assert!(
            matches!(&result, Err(why) if why.to_string().contains("aborted")),
            "{result:?}"
        );
        assert!(started.elapsed() < SOON);
        let failure = tokio::time::timeout(SOON, outputs.failures.recv())
            .await
            .expect("a failure report in time")
            .expect("failures open");
        assert_eq!(&failure.0, stuck.id());
        assert!(failure.1.to_string().contains("aborted"), "{}", failure.1);
        // An actor that stops in order is not reported.
        proc.spawn::<Echo>("echo", ()).expect("spawn");
        assert_eq!(proc.stop_actor("echo").await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn constructor_and_parameter_panics_refuse_the_spawn() {
        let (proc, _outputs, _returned) = proc_with(SOON);
        let refused = proc.spawn::<Fragile>("f", fragile(Some("boom in new")));
        assert!(
            matches!(&refused, Err(why) if why.to_string().contains("fragile constructor panicked: boom in new")),
            "{refused:?}"
        );
        let armed = FragileParams {
            decode: Tripwire(true),
            panic_in_new: None,
        };
        let params = codec::encode(&armed).expect("encode");
        let refused = proc.spawn_registered("fragile", "f", &params);
        assert!(
            matches!(&refused, Err(why) if why.to_string().contains("decoding the parameters of fragile panicked: tripwire")),
            "{refused:?}"
        );
        // The name was not taken by the failed spawns.
        let params = codec::encode(&fragile(None)).expect("encode");
        assert!(proc.spawn_registered("fragile", "f", &params).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decoding_panic_fails_the_actor_and_returns_the_message() {
        let (proc, mut outputs, _returned) = proc_with(SOON);
        let client = proc.client("tester").expect("client");
        let f = proc.spawn::<Fragile>("f", fragile(None)).expect("spawn");
        let ok = f
            .ask_within(&client, SOON, |p| FragileMsg::Trip(Tripwire(false), p))
            .await;
        assert_eq!(ok, Ok(()));
        let tripped = f
            .ask_within(&client, SOON, |p| FragileMsg::Trip(Tripwire(true), p))
            .await;
        assert!(
            matches!(&tripped, Err(AskError::Undeliverable(why)) if why.to_string().contains("decoding a message panicked: tripwire")),
            "{tripped:?}"
        );
        let failure = tokio::time::timeout(SOON, outputs.failures.recv())
            .await
            .expect("a failure report in time")
            .expect("failures open");
        assert_eq!(&failure.0, f.id());
        assert!(failure
            .1
            .to_string()
            .contains("decoding a message panicked"));
        // The proc carries on: the name is free again and a new actor answers.
        let g = proc.spawn::<Fragile>("f", fragile(None)).expect("respawn");
        assert_eq!(g.ask_within(&client, SOON, FragileMsg::Ping).await, Ok(()));
    }
}
