//! One actor's task: takes messages from its mailbox, runs its handler,
//! and contains its failures.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use crate::stop::Stop;
use futures::FutureExt;

use super::proc::Proc;
use super::{Actor, Context};
use crate::queue::QueueReceiver;
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
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `actor` until it is stopped or fails.
///
/// On a handler error or panic the actor is stopped at once (no stop hook:
/// its state may be broken); the envelope being handled goes back to its
/// sender if it was an ask, and so does everything still in the mailbox.
pub(crate) async fn run<A: Actor>(
    mut actor: A,
    ctx: Context,
    mut mailbox: QueueReceiver<Delivery>,
    stop: Stop,
    proc: Proc,
) {
    let mut failure = match AssertUnwindSafe(actor.on_start(&ctx)).catch_unwind().await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("start hook failed: {e:#}")),
        Err(p) => Some(format!("start hook panicked: {}", panic_message(&*p))),
    };
    // The rest of a batch being handled, and the batch's byte permit.
    let mut pending: VecDeque<Envelope> = VecDeque::new();
    let mut _batch_permit = None;
    while failure.is_none() {
        if let Some(env) = pending.pop_front() {
            if stop.is_stopped() {
                pending.push_front(env);
                break;
            }
            failure = handle_envelope(&mut actor, &ctx, &proc, env).await;
            continue;
        }
        _batch_permit = None;
        // Fast path: a message is already waiting (no waker registration).
        let next = if stop.is_stopped() {
            None
        } else if let Some(d) = mailbox.try_recv() {
            Some(d)
        } else {
            tokio::select! {
                biased;
                _ = stop.stopped() => None,
                d = mailbox.recv() => d,
            }
        };
        let Some((delivery, permit)) = next else {
            break;
        };
        match delivery {
            Delivery::Message(env) => failure = handle_envelope(&mut actor, &ctx, &proc, env).await,
            Delivery::Batch(envs) => {
                pending.extend(envs);
                _batch_permit = Some(permit);
            }
            Delivery::Returned(u) => {
                if let Err(p) = AssertUnwindSafe(actor.on_undeliverable(u, &ctx))
                    .catch_unwind()
                    .await
                {
                    failure = Some(format!(
                        "undeliverable hook panicked: {}",
                        panic_message(&*p)
                    ));
                }
            }
        }
    }
    // No new deliveries from here on; then the stop hook; then return the rest.
    proc.forget_actor(ctx.id());
    mailbox.close();
    if failure.is_none() {
        let hook = AssertUnwindSafe(actor.on_stop(&ctx)).catch_unwind();
        match tokio::time::timeout(proc.config().stop_timeout, hook).await {
            Ok(Ok(())) => {}
            Ok(Err(p)) => {
                tracing::warn!("{}: stop hook panicked: {}", ctx.id(), panic_message(&*p))
            }
            Err(_) => tracing::warn!(
                "{}: stop hook exceeded {:?}",
                ctx.id(),
                proc.config().stop_timeout
            ),
        }
    }
    let reason = match &failure {
        Some(why) => format!("actor {} failed: {why}", ctx.id()),
        None => format!("actor {} stopped", ctx.id()),
    };
    let mut rest: Vec<Envelope> = pending.into_iter().collect();
    while let Some((delivery, _)) = mailbox.try_recv() {
        match delivery {
            Delivery::Message(env) => rest.push(env),
            Delivery::Batch(envs) => rest.extend(envs),
            Delivery::Returned(_) => {}
        }
    }
    // The handler never saw these: they go back as not delivered.
    for env in rest {
        proc.bounce(Undeliverable::not_delivered(env, reason.clone()));
    }
    if let Some(why) = failure {
        proc.report_failure(ctx.id(), why);
    }
}

/// Decodes and handles one envelope; `Some(reason)` if the actor failed.
///
/// A message that does not decode goes back to its sender and the actor
/// carries on; on a handler error or panic the envelope goes back too if it
/// was an ask, so the asker learns at once.
async fn handle_envelope<A: Actor>(
    actor: &mut A,
    ctx: &Context,
    proc: &Proc,
    mut env: Envelope,
) -> Option<String> {
    let payload = std::mem::take(&mut env.payload);
    let msg = match codec::decode::<A::Message>(&payload) {
        Ok(m) => m,
        Err(e) => {
            env.payload = payload;
            let reason = format!("message does not decode as {}: {e}", A::NAME);
            proc.bounce(Undeliverable::not_delivered(env, reason));
            return None;
        }
    };
    let why = match AssertUnwindSafe(actor.handle(msg, ctx))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => return None,
        Ok(Err(e)) => format!("handler error: {e:#}"),
        Err(p) => format!("handler panicked: {}", panic_message(&*p)),
    };
    if env.return_port.is_some() {
        // The handler had it and failed part way: possibly delivered.
        env.payload = payload;
        proc.bounce(Undeliverable {
            envelope: env,
            reason: format!("actor {} failed: {why}", ctx.id()),
            status: DeliveryStatus::PossiblyDelivered,
        });
    }
    Some(why)
}
