//! A proc: hosts actors and reply ports, delivers envelopes, sends them out.
//!
//! Delivery decisions are made here and nowhere else: an envelope for this
//! proc goes to its actor's mailbox, to a reply port, or to the proc itself
//! (spawn, stop, stats); anything that cannot be delivered is returned to its
//! sender with the reason, through [`Proc::return_to_sender`].
//!
//! Reply ports are capabilities: their numbers are random 64-bit values, so
//! only whoever was given a [`PortRef`](super::PortRef) (or its id) can
//! answer the ask, whoever and wherever that is.
//!
//! An envelope that reached its actor's mailbox and is then not handled
//! (the actor failed or stopped first, or the message did not decode) is
//! *bounced* ([`Proc::bounce`]): a sender on this proc gets it back as
//! before, and an ask from elsewhere fails at once through its reply port.
//! A worker never sends a delivered envelope back over the wire: the
//! allocator has already forgotten it, and could not tell a genuine return
//! from a forged one.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use crate::stop::Stop;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cell::{self, panic_message, Delivery};
use super::client::{Client, SendError};
use super::outlet::Outlet;
use super::refs::ActorRef;
use super::registry::Registry;
use super::{Actor, Context};
use crate::id::{is_valid_name, ActorId, PortId, ProcId};
use crate::mailbox::Outgoing;
use crate::queue::{self, QueueError, QueueReceiver, QueueSender};
use crate::wire::{bounded_text, codec, Dest, Envelope, ProcStats, SystemMsg, Undeliverable};

/// Longest reason kept from a failed ask's port failure, in bytes.
const MAX_PORT_FAILURE: usize = 512;

/// How long an aborted actor task gets to be dropped before its proc moves on.
const ABORT_GRACE: Duration = Duration::from_millis(100);

/// Why an actor that had to be aborted is reported failed.
fn aborted_reason(timeout: Duration) -> String {
    format!("did not stop within {timeout:?} of being told to: its task was aborted")
}

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

/// An actor that failed, as reported to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorFailure {
    /// The actor.
    pub actor_id: ActorId,
    /// Its error or panic message.
    pub reason: String,
}

/// Settings of a proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcConfig {
    /// Byte budget of each actor's mailbox and of the proc's outbound queue.
    pub mailbox_bytes: usize,
    /// How long an actor told to stop may take to finish the message it is
    /// handling and run its stop hook; past it, its task is aborted.
    pub stop_timeout: Duration,
    /// Default timeout of `ask`.
    pub ask_timeout: Duration,
}

impl Default for ProcConfig {
    fn default() -> Self {
        ProcConfig {
            mailbox_bytes: 8 * 1024 * 1024,
            stop_timeout: Duration::from_secs(5),
            ask_timeout: Duration::from_secs(30),
        }
    }
}

struct ActorSlot {
    pid: u64,
    mailbox: QueueSender<Delivery>,
    stop: Stop,
    task: Option<JoinHandle<()>>,
}

struct PortSlot {
    reply: oneshot::Sender<Result<Vec<u8>, String>>,
    target: ProcId,
}

struct Inner {
    id: ProcId,
    config: ProcConfig,
    registry: Arc<Registry>,
    outlet: Arc<dyn Outlet>,
    failures: mpsc::UnboundedSender<ActorFailure>,
    returned: mpsc::UnboundedSender<Undeliverable>,
    actors: Mutex<HashMap<String, ActorSlot>>,
    ports: Mutex<HashMap<u64, PortSlot>>,
    next_pid: AtomicU64,
    next_envelope: AtomicU64,
}

/// A proc: a set of actors with one way in and one way out; cheap to clone.
#[derive(Clone)]
pub struct Proc {
    inner: Arc<Inner>,
}

/// The receiving ends a proc's host drains.
pub struct ProcOutputs {
    /// Envelopes and returns leaving the proc (`None` when it has its own [`Outlet`]).
    pub outbound: Option<QueueReceiver<Outgoing>>,
    /// Actors that failed.
    pub failures: mpsc::UnboundedReceiver<ActorFailure>,
    /// Returned envelopes whose sender is not an actor here (e.g. the controller's client).
    pub returned: mpsc::UnboundedReceiver<Undeliverable>,
}

impl Proc {
    /// A new proc with no actors, and the outputs its host must drain.
    pub fn new(id: ProcId, registry: Arc<Registry>, config: ProcConfig) -> (Proc, ProcOutputs) {
        let (outbound_tx, outbound_rx) = queue::bounded(config.mailbox_bytes);
        let (proc, mut outputs) = Self::with_outlet(id, registry, config, Arc::new(outbound_tx));
        outputs.outbound = Some(outbound_rx);
        (proc, outputs)
    }

    /// A new proc whose outgoing envelopes go to `outlet`.
    pub fn with_outlet(
        id: ProcId,
        registry: Arc<Registry>,
        config: ProcConfig,
        outlet: Arc<dyn Outlet>,
    ) -> (Proc, ProcOutputs) {
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        let (returned_tx, returned_rx) = mpsc::unbounded_channel();
        let proc = Proc {
            inner: Arc::new(Inner {
                id,
                config,
                registry,
                outlet,
                failures: failures_tx,
                returned: returned_tx,
                actors: Mutex::new(HashMap::new()),
                ports: Mutex::new(HashMap::new()),
                next_pid: AtomicU64::new(0),
                next_envelope: AtomicU64::new(0),
            }),
        };
        let outputs = ProcOutputs {
            outbound: None,
            failures: failures_rx,
            returned: returned_rx,
        };
        (proc, outputs)
    }

    /// This proc's id.
    pub fn id(&self) -> &ProcId {
        &self.inner.id
    }

    /// This proc's settings.
    pub fn config(&self) -> &ProcConfig {
        &self.inner.config
    }

    /// A client sending as `name` from this proc (not an actor: returns go to [`ProcOutputs::returned`]).
    pub fn client(&self, name: &str) -> Client {
        Client::new(self.clone(), self.id().actor(name, 0))
    }

    /// Spawns actor `A` named `name` here.
    ///
    /// Errors (as text, returned to remote spawners): invalid or taken name,
    /// or the actor's constructor failed or panicked.
    pub fn spawn<A: Actor>(&self, name: &str, params: A::Params) -> Result<ActorRef<A>, String> {
        if !is_valid_name(name) {
            return Err(format!(
                "invalid actor name {name:?}: use 1-128 characters of [A-Za-z0-9_-]"
            ));
        }
        // A panicking constructor is user code failing like any other: it
        // refuses the spawn, it must not take down the task that asked.
        let actor = match catch_unwind(AssertUnwindSafe(|| A::new(params))) {
            Ok(Ok(actor)) => actor,
            Ok(Err(e)) => return Err(format!("{} constructor failed: {e:#}", A::NAME)),
            Err(panic) => {
                let why = format!(
                    "{} constructor panicked: {}",
                    A::NAME,
                    panic_message(&*panic)
                );
                tracing::warn!("spawn of {name} on {} refused: {why}", self.id());
                return Err(why);
            }
        };
        let mut actors = lock(&self.inner.actors);
        if actors.contains_key(name) {
            return Err(format!("actor {name} already exists on {}", self.id()));
        }
        let pid = self.inner.next_pid.fetch_add(1, Ordering::Relaxed);
        let id = self.id().actor(name, pid);
        let (mailbox, rx) = queue::bounded(self.inner.config.mailbox_bytes);
        let stop = Stop::new();
        let stop_rx = stop.clone();
        let ctx = Context::new(Client::new(self.clone(), id.clone()));
        let task = tokio::spawn(cell::run(actor, ctx, rx, stop_rx, self.clone()));
        actors.insert(
            name.to_string(),
            ActorSlot {
                pid,
                mailbox,
                stop,
                task: Some(task),
            },
        );
        Ok(ActorRef::attest(id))
    }

    /// Spawns the actor type registered as `actor_type` from encoded parameters.
    pub(crate) fn spawn_registered(
        &self,
        actor_type: &str,
        name: &str,
        params: &[u8],
    ) -> Result<ActorId, String> {
        let registry = self.inner.registry.clone();
        registry.spawn(self, actor_type, name, params)
    }

    /// Makes an envelope from `from` to `to` with a fresh id.
    pub(crate) fn envelope(
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

    /// Like [`Proc::send`], giving up after `timeout` (the envelope is then not sent).
    pub(crate) async fn send_within(
        &self,
        env: Envelope,
        timeout: Duration,
    ) -> Result<(), SendError> {
        match tokio::time::timeout(timeout, self.send(env)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    /// Sends an envelope: delivered here if it is for this proc, else queued out (waiting for room).
    pub(crate) async fn send(&self, env: Envelope) -> Result<(), SendError> {
        if env.to.proc_id() == self.id() {
            if let Err(u) = self.deliver(env).await {
                self.return_to_sender(u);
            }
            return Ok(());
        }
        // Fast path without waiting (and without boxing a future): room now.
        let item = match self.inner.outlet.try_send(Outgoing::Envelope(env)) {
            Ok(()) => return Ok(()),
            Err(QueueError::Closed(_)) => return Err(SendError::Closed),
            Err(QueueError::Full(item)) => item,
        };
        match self.inner.outlet.send(item).await {
            Ok(()) => Ok(()),
            Err(_) => Err(SendError::Closed),
        }
    }

    /// Sends an envelope if there is room now.
    pub(crate) fn try_send(&self, env: Envelope) -> Result<(), SendError> {
        if env.to.proc_id() == self.id() {
            return match self.try_deliver(env) {
                Ok(()) => Ok(()),
                Err(NotDelivered::Full(_)) => Err(SendError::Full),
                Err(NotDelivered::Undeliverable(u)) => {
                    self.return_to_sender(u);
                    Ok(())
                }
            };
        }
        match self.inner.outlet.try_send(Outgoing::Envelope(env)) {
            Ok(()) => Ok(()),
            Err(QueueError::Full(_)) => Err(SendError::Full),
            Err(QueueError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn undeliverable(env: Envelope, reason: impl Into<String>) -> Undeliverable {
        Undeliverable::not_delivered(env, reason)
    }

    /// The mailbox of `actor`, if it lives here under that name and pid; else why not.
    fn mailbox_of(&self, actor: &ActorId) -> Result<QueueSender<Delivery>, String> {
        if actor.proc_id != *self.id() {
            return Err(format!("not for this proc ({})", self.id()));
        }
        match lock(&self.inner.actors).get(actor.name.as_str()) {
            Some(slot) if slot.pid == actor.pid => Ok(slot.mailbox.clone()),
            _ => Err(format!("actor {actor} not found")),
        }
    }

    /// Delivers an envelope addressed to this proc, waiting for room in the actor's mailbox.
    ///
    /// Errors: the envelope back, with why it cannot be delivered (actor not
    /// found or stopped, port closed, not for this proc).
    pub async fn deliver(&self, env: Envelope) -> Result<(), Undeliverable> {
        match &env.to {
            Dest::Actor(actor) => {
                let mailbox = match self.mailbox_of(actor) {
                    Ok(mailbox) => mailbox,
                    Err(reason) => return Err(Self::undeliverable(env, reason)),
                };
                let cost = env.wire_size();
                match mailbox.send(Delivery::Message(env), cost).await {
                    Ok(()) => Ok(()),
                    Err(
                        QueueError::Closed(Delivery::Message(env))
                        | QueueError::Full(Delivery::Message(env)),
                    ) => {
                        let reason = format!("actor {} stopped", env.to);
                        Err(Self::undeliverable(env, reason))
                    }
                    Err(_) => Ok(()),
                }
            }
            Dest::Port(_) | Dest::PortFailure(_) | Dest::Proc(_) => self.deliver_now(env),
        }
    }

    /// Delivers consecutive envelopes for one actor as one mailbox item.
    ///
    /// All of `envs` must be addressed to the same actor. Returns those that
    /// cannot be delivered, each with its index in `envs` and the reason.
    pub async fn deliver_batch(&self, mut envs: Vec<Envelope>) -> Vec<(usize, Undeliverable)> {
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
        let mailbox = match self.mailbox_of(&actor) {
            Ok(mailbox) => mailbox,
            Err(reason) => {
                return envs
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (i, Self::undeliverable(e, reason.clone())))
                    .collect();
            }
        };
        let cost = envs.iter().map(|e| e.wire_size()).sum();
        match mailbox.send(Delivery::Batch(envs), cost).await {
            Ok(()) => Vec::new(),
            Err(
                QueueError::Closed(Delivery::Batch(envs)) | QueueError::Full(Delivery::Batch(envs)),
            ) => {
                let reason = format!("actor {actor} stopped");
                envs.into_iter()
                    .enumerate()
                    .map(|(i, e)| (i, Self::undeliverable(e, reason.clone())))
                    .collect()
            }
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
                return Err(NotDelivered::Undeliverable(Self::undeliverable(
                    env, reason,
                )))
            }
        };
        let cost = env.wire_size();
        match mailbox.try_send(Delivery::Message(env), cost) {
            Ok(()) => Ok(()),
            Err(QueueError::Full(Delivery::Message(env))) => Err(NotDelivered::Full(env)),
            Err(QueueError::Closed(Delivery::Message(env))) => {
                let reason = format!("actor {} stopped", env.to);
                Err(NotDelivered::Undeliverable(Self::undeliverable(
                    env, reason,
                )))
            }
            Err(_) => Ok(()),
        }
    }

    /// Delivers to a port or to the proc itself.
    fn deliver_now(&self, env: Envelope) -> Result<(), Undeliverable> {
        match &env.to {
            Dest::Port(port) | Dest::PortFailure(port) if port.actor_id.proc_id == *self.id() => {
                let slot = lock(&self.inner.ports).remove(&port.port);
                let Some(slot) = slot else {
                    let reason = format!("port {port} is closed");
                    return Err(Self::undeliverable(env, reason));
                };
                let answer = match env.to {
                    Dest::PortFailure(_) => Err(port_failure_reason(&env.payload)),
                    _ => Ok(env.payload),
                };
                let _ = slot.reply.send(answer);
                Ok(())
            }
            Dest::Proc(p) if p == self.id() => self.system(env),
            _ => {
                let reason = format!("not for this proc ({})", self.id());
                Err(Self::undeliverable(env, reason))
            }
        }
    }

    /// Handles a request addressed to the proc itself and answers its port.
    ///
    /// Errors: the envelope back if it is not a proc request.
    fn system(&self, env: Envelope) -> Result<(), Undeliverable> {
        let (msg, reply) = match codec::decode::<(SystemMsg, PortId)>(&env.payload) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("not a proc request: {e}");
                return Err(Self::undeliverable(env, reason));
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
                    self.envelope(&self.id().actor("proc", 0), Dest::Port(port), payload, None);
                let this = self.clone();
                tokio::spawn(async move {
                    let _ = this.send(env).await;
                });
            }
            Err(e) => tracing::error!("cannot encode proc reply: {e}"),
        }
    }

    /// Returns an undeliverable envelope to its sender, wherever that is.
    ///
    /// Over a worker's stream, which carries no returns (see the module
    /// docs), this is [`Proc::bounce`]; a worker's reader refuses what it
    /// could not deliver by position instead (see `mailbox::Outgoing::Refused`).
    pub fn return_to_sender(&self, u: Undeliverable) {
        if u.envelope.from.proc_id == *self.id() {
            self.returned(u);
        } else if self.inner.outlet.carries_returns() {
            if let Err(Outgoing::Returned(u)) =
                self.inner.outlet.send_unbudgeted(Outgoing::Returned(u))
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
    /// once through its reply port; a tell was delivered and is only logged.
    pub fn bounce(&self, u: Undeliverable) {
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
        let reason = bounded_text(&u.reason, MAX_PORT_FAILURE);
        let payload = match codec::encode(&reason) {
            Ok(p) => p,
            Err(e) => return tracing::error!("cannot encode ask failure: {e}"),
        };
        let from = match &u.envelope.to {
            Dest::Actor(actor) => actor.clone(),
            _ => self.id().actor("proc", 0),
        };
        let to = Dest::PortFailure(u.envelope.from.port(port));
        let env = self.envelope(&from, to, payload, None);
        // Within the proc's outbound budget: a peer sending many asks that
        // fail here must not grow this worker's memory. If there is no room,
        // the ask is left to its timeout.
        if let Err(e) = self.inner.outlet.try_send(Outgoing::Envelope(env)) {
            let why = match e {
                QueueError::Full(_) => "outbound queue full",
                QueueError::Closed(_) => "proc closed",
            };
            tracing::debug!("cannot fail ask of {} at once: {why}", u.envelope.from);
        }
    }

    /// Tells the sender of the envelope at stream position `seq` that it was
    /// not delivered (a worker's reader, before acknowledging it).
    pub(crate) fn refuse(&self, seq: u64, reason: &str) {
        let reason = bounded_text(reason, MAX_PORT_FAILURE);
        if self
            .inner
            .outlet
            .send_unbudgeted(Outgoing::Refused { seq, reason })
            .is_err()
        {
            tracing::debug!("cannot refuse envelope {seq} of {}: proc closed", self.id());
        }
    }

    /// Takes back an envelope sent from this proc: fails its ask, or hands it to its sender.
    pub fn returned(&self, u: Undeliverable) {
        if let Some(port) = u.envelope.return_port {
            if let Some(slot) = lock(&self.inner.ports).remove(&port) {
                let _ = slot.reply.send(Err(u.reason));
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
        if u.envelope.return_port.is_none() {
            let _ = self.inner.returned.send(u);
        }
    }

    /// Opens a one-shot reply port for an ask to an actor on `target`.
    ///
    /// The port number is random (and never 0), so it cannot be guessed:
    /// holding it is the right to answer.
    pub(crate) fn open_port(
        &self,
        target: ProcId,
    ) -> (u64, oneshot::Receiver<Result<Vec<u8>, String>>) {
        let (tx, rx) = oneshot::channel();
        let mut ports = lock(&self.inner.ports);
        let port = loop {
            let candidate: u64 = rand::random();
            if candidate != 0 && !ports.contains_key(&candidate) {
                break candidate;
            }
        };
        ports.insert(port, PortSlot { reply: tx, target });
        (port, rx)
    }

    /// Closes a reply port (the ask is over).
    pub(crate) fn close_port(&self, port: u64) {
        lock(&self.inner.ports).remove(&port);
    }

    /// Fails every pending ask to an actor on `target` (that proc has failed).
    pub fn fail_asks_to(&self, target: &ProcId, reason: &str) {
        let mut ports = lock(&self.inner.ports);
        let doomed: Vec<u64> = ports
            .iter()
            .filter(|(_, s)| s.target == *target)
            .map(|(p, _)| *p)
            .collect();
        for port in doomed {
            if let Some(slot) = ports.remove(&port) {
                let _ = slot.reply.send(Err(reason.to_string()));
            }
        }
    }

    /// Called by an actor's task when it stops taking messages: later ones are undeliverable.
    pub(crate) fn forget_actor(&self, id: &ActorId) {
        let mut actors = lock(&self.inner.actors);
        if actors
            .get(id.name.as_str())
            .is_some_and(|s| s.pid == id.pid)
        {
            actors.remove(id.name.as_str());
        }
    }

    /// Reports that actor `id` failed (after its queued messages were returned).
    pub(crate) fn report_failure(&self, id: &ActorId, reason: String) {
        tracing::warn!("actor {id} failed: {reason}");
        let _ = self.inner.failures.send(ActorFailure {
            actor_id: id.clone(),
            reason,
        });
    }

    /// Stops actor `name` (its stop hook runs) and waits for it, at most the stop timeout.
    ///
    /// Errors: no such actor; or it did not stop within
    /// [`ProcConfig::stop_timeout`], so its task was aborted (that is also
    /// reported as the actor's failure). A task that never yields cannot be
    /// aborted: it keeps its thread, but the actor no longer gets messages.
    pub async fn stop_actor(&self, name: &str) -> Result<(), String> {
        let (id, task) = {
            let mut actors = lock(&self.inner.actors);
            match actors.get_mut(name) {
                Some(slot) => {
                    slot.stop.stop();
                    (self.id().actor(name, slot.pid), slot.task.take())
                }
                None => return Err(format!("actor {name} not found on {}", self.id())),
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
                let why = aborted_reason(timeout);
                self.report_failure(&id, why.clone());
                Err(format!("actor {id} {why}"))
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
    pub async fn stop_all(&self, deadline: tokio::time::Instant) -> Vec<ActorId> {
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
            self.forget_actor(id);
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

/// The reason carried by a port failure, cut to a bounded length.
fn port_failure_reason(payload: &[u8]) -> String {
    match codec::decode::<String>(payload) {
        Ok(reason) => bounded_text(&reason, MAX_PORT_FAILURE),
        Err(e) => format!("ask failed (reason undecodable: {e})"),
    }
}
