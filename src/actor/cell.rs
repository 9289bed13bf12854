//! One actor's task: takes messages from its mailbox, runs its handler,
//! and contains its failures.
//!
//! It knows its proc only as a [`Host`]: where to hand back what it could
//! not handle, and where to report its end.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::context::Context;
use super::host::Host;
use super::returns::Returned;
use super::traits::Actor;
use crate::id::ActorId;
use crate::queue::QueueReceiver;
use crate::reason::{ActorFailure, ReturnReason};
use crate::stop::Stop;
use crate::wire::{codec, DeliveryStatus, Envelope, Undeliverable};

/// What arrives in an actor's mailbox.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A message for the actor.
    Message(Envelope),
    /// Consecutive messages for the actor, taken from the stream at once.
    Batch(Vec<Envelope>),
    /// A message the actor sent, returned undeliverable.
    Returned(Undeliverable),
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// An actor made and ready to run, its type erased (what a registry makes
/// from a name and encoded parameters).
pub(crate) trait Startable: Send {
    /// The future that runs the actor until it stops or fails.
    fn start(
        self: Box<Self>,
        ctx: Context,
        mailbox: QueueReceiver<Delivery>,
        stop: Stop,
        host: Arc<dyn Host>,
    ) -> BoxFuture<'static, ()>;
}

/// An actor of type `A`, ready to run.
pub(crate) struct Ready<A>(pub(crate) A);

impl<A: Actor> Startable for Ready<A> {
    fn start(
        self: Box<Self>,
        ctx: Context,
        mailbox: QueueReceiver<Delivery>,
        stop: Stop,
        host: Arc<dyn Host>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run(self.0, ctx, mailbox, stop, host))
    }
}

/// What an actor's task holds that must not be lost however the task ends:
/// its mailbox and the rest of a batch being handled.
///
/// When the task ends on its own it says why ([`Leftovers::finish`]); when
/// it is aborted (it did not stop in time) it is dropped without a word, and
/// `Drop` does the same cleanup with an "aborted" reason. Either way the
/// actor is forgotten by its proc, its mailbox closed, and every message
/// still waiting goes back to its sender.
struct Leftovers {
    host: Arc<dyn Host>,
    id: ActorId,
    mailbox: QueueReceiver<Delivery>,
    pending: VecDeque<Envelope>,
    reason: Option<ReturnReason>,
}

impl Leftovers {
    /// No new deliveries from here on: later ones are undeliverable.
    fn close(&mut self) {
        self.host.forget_actor(&self.id);
        self.mailbox.close();
    }

    /// Ends the actor: what is left goes back to its senders with `reason`.
    fn finish(mut self, reason: ReturnReason) {
        self.reason = Some(reason);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.close();
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| ReturnReason::ActorFailed {
                actor: self.id.clone(),
                failure: ActorFailure::Aborted(self.host.stop_timeout()),
            });
        let mut rest: Vec<Envelope> = self.pending.drain(..).collect();
        while let Some((delivery, _)) = self.mailbox.try_recv() {
            match delivery {
                Delivery::Message(env) => rest.push(env),
                Delivery::Batch(envs) => rest.extend(envs),
                Delivery::Returned(_) => {}
            }
        }
        // The handler never saw these: they go back as not delivered.
        for env in rest {
            self.host
                .bounce(Undeliverable::not_delivered(env, reason.clone()));
        }
    }
}

/// Runs `actor` until it is stopped or fails.
///
/// On a handler error or panic the actor is stopped at once (no stop hook:
/// its state may be broken); the envelope being handled goes back to its
/// sender if it was an ask, and so does everything still in the mailbox.
/// The stop hook has no deadline of its own: whoever stops the actor gives
/// the whole stop one, and aborts the task past it (see [`Leftovers`]).
pub(crate) async fn run<A: Actor>(
    mut actor: A,
    ctx: Context,
    mailbox: QueueReceiver<Delivery>,
    stop: Stop,
    host: Arc<dyn Host>,
) {
    let mut left = Leftovers {
        host: host.clone(),
        id: ctx.id().clone(),
        mailbox,
        pending: VecDeque::new(),
        reason: None,
    };
    let mut failure = match AssertUnwindSafe(actor.on_start(&ctx)).catch_unwind().await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(ActorFailure::StartFailed(format!("{e:#}"))),
        Err(p) => Some(ActorFailure::StartPanicked(panic_message(&*p))),
    };
    // The byte permit of the batch being handled.
    let mut _batch_permit = None;
    while failure.is_none() {
        if let Some(env) = left.pending.pop_front() {
            if stop.is_stopped() {
                left.pending.push_front(env);
                break;
            }
            failure = handle_envelope(&mut actor, &ctx, &*host, env).await;
            continue;
        }
        _batch_permit = None;
        // Fast path: a message is already waiting (no waker registration).
        let next = if stop.is_stopped() {
            None
        } else if let Some(d) = left.mailbox.try_recv() {
            Some(d)
        } else {
            tokio::select! {
                biased;
                _ = stop.stopped() => None,
                d = left.mailbox.recv() => d,
            }
        };
        let Some((delivery, permit)) = next else {
            break;
        };
        match delivery {
            Delivery::Message(env) => {
                failure = handle_envelope(&mut actor, &ctx, &*host, env).await
            }
            Delivery::Batch(envs) => {
                left.pending.extend(envs);
                _batch_permit = Some(permit);
            }
            Delivery::Returned(u) => {
                let returned = Returned::from_wire(u);
                if let Err(p) = AssertUnwindSafe(actor.on_undeliverable(returned, &ctx))
                    .catch_unwind()
                    .await
                {
                    failure = Some(ActorFailure::UndeliverableHookPanicked(panic_message(&*p)));
                }
            }
        }
    }
    // No new deliveries from here on; then the stop hook; then return the rest.
    left.close();
    if failure.is_none() {
        if let Err(p) = AssertUnwindSafe(actor.on_stop(&ctx)).catch_unwind().await {
            tracing::warn!("{}: stop hook panicked: {}", ctx.id(), panic_message(&*p))
        }
    }
    left.finish(match &failure {
        Some(why) => ReturnReason::ActorFailed {
            actor: ctx.id().clone(),
            failure: why.clone(),
        },
        None => ReturnReason::ActorStopped(ctx.id().clone()),
    });
    if let Some(why) = failure {
        host.report_failure(ctx.id(), why);
    }
}

/// Decodes and handles one envelope; `Some(failure)` if the actor failed.
///
/// A message that does not decode goes back to its sender and the actor
/// carries on. A message whose decoding panics (a user `Deserialize` gone
/// wrong) fails the actor like a handler panic, and goes back to its sender,
/// since it was never handled. On a handler error or panic the envelope goes
/// back too if it was an ask, so the asker learns at once.
async fn handle_envelope<A: Actor>(
    actor: &mut A,
    ctx: &Context,
    host: &dyn Host,
    mut env: Envelope,
) -> Option<ActorFailure> {
    let payload = std::mem::take(&mut env.payload);
    let decoded = catch_unwind(AssertUnwindSafe(|| codec::decode::<A::Message>(&payload)));
    let msg = match decoded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            env.payload = payload;
            let reason = ReturnReason::Undecodable {
                actor_type: A::NAME.to_string(),
                detail: e.to_string(),
            };
            host.bounce(Undeliverable::not_delivered(env, reason));
            return None;
        }
        Err(p) => {
            let failure = ActorFailure::DecodePanicked(panic_message(&*p));
            env.payload = payload;
            let reason = ReturnReason::ActorFailed {
                actor: ctx.id().clone(),
                failure: failure.clone(),
            };
            host.bounce(Undeliverable::not_delivered(env, reason));
            return Some(failure);
        }
    };
    let failure = match AssertUnwindSafe(actor.handle(msg, ctx))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => return None,
        Ok(Err(e)) => ActorFailure::HandlerError(format!("{e:#}")),
        Err(p) => ActorFailure::HandlerPanicked(panic_message(&*p)),
    };
    if env.return_port.is_some() {
        // The handler had it and failed part way: possibly delivered.
        env.payload = payload;
        host.bounce(Undeliverable {
            envelope: env,
            reason: ReturnReason::ActorFailed {
                actor: ctx.id().clone(),
                failure: failure.clone(),
            },
            status: DeliveryStatus::PossiblyDelivered,
        });
    }
    Some(failure)
}
