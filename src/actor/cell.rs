//! One actor's task: takes messages from its mailbox, runs its handler,
//! and contains its failures.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::stop::Stop;
use futures::FutureExt;

use super::proc::Proc;
use super::{Actor, Context};
use crate::id::ActorId;
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
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
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
    proc: Proc,
    id: ActorId,
    mailbox: QueueReceiver<Delivery>,
    pending: VecDeque<Envelope>,
    reason: Option<String>,
}

impl Leftovers {
    /// No new deliveries from here on: later ones are undeliverable.
    fn close(&mut self) {
        self.proc.forget_actor(&self.id);
        self.mailbox.close();
    }

    /// Ends the actor: what is left goes back to its senders with `reason`.
    fn finish(mut self, reason: String) {
        self.reason = Some(reason);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.close();
        let reason = self.reason.take().unwrap_or_else(|| {
            format!(
                "actor {} aborted: it did not stop within its stop timeout",
                self.id
            )
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
            self.proc
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
    proc: Proc,
) {
    let mut left = Leftovers {
        proc: proc.clone(),
        id: ctx.id().clone(),
        mailbox,
        pending: VecDeque::new(),
        reason: None,
    };
    let mut failure = match AssertUnwindSafe(actor.on_start(&ctx)).catch_unwind().await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("start hook failed: {e:#}")),
        Err(p) => Some(format!("start hook panicked: {}", panic_message(&*p))),
    };
    // The byte permit of the batch being handled.
    let mut _batch_permit = None;
    while failure.is_none() {
        if let Some(env) = left.pending.pop_front() {
            if stop.is_stopped() {
                left.pending.push_front(env);
                break;
            }
            failure = handle_envelope(&mut actor, &ctx, &proc, env).await;
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
            Delivery::Message(env) => failure = handle_envelope(&mut actor, &ctx, &proc, env).await,
            Delivery::Batch(envs) => {
                left.pending.extend(envs);
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
    left.close();
    if failure.is_none() {
        if let Err(p) = AssertUnwindSafe(actor.on_stop(&ctx)).catch_unwind().await {
            tracing::warn!("{}: stop hook panicked: {}", ctx.id(), panic_message(&*p))
        }
    }
    left.finish(match &failure {
        Some(why) => format!("actor {} failed: {why}", ctx.id()),
        None => format!("actor {} stopped", ctx.id()),
    });
    if let Some(why) = failure {
        proc.report_failure(ctx.id(), why);
    }
}

/// Decodes and handles one envelope; `Some(reason)` if the actor failed.
///
/// A message that does not decode goes back to its sender and the actor
/// carries on. A message whose decoding panics (a user `Deserialize` gone
/// wrong) fails the actor like a handler panic, and goes back to its sender,
/// since it was never handled. On a handler error or panic the envelope goes
/// back too if it was an ask, so the asker learns at once.
async fn handle_envelope<A: Actor>(
    actor: &mut A,
    ctx: &Context,
    proc: &Proc,
    mut env: Envelope,
) -> Option<String> {
    let payload = std::mem::take(&mut env.payload);
    let decoded = catch_unwind(AssertUnwindSafe(|| codec::decode::<A::Message>(&payload)));
    let msg = match decoded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            env.payload = payload;
            let reason = format!("message does not decode as {}: {e}", A::NAME);
            proc.bounce(Undeliverable::not_delivered(env, reason));
            return None;
        }
        Err(p) => {
            let why = format!("decoding a message panicked: {}", panic_message(&*p));
            env.payload = payload;
            let reason = format!("actor {} failed: {why}", ctx.id());
            proc.bounce(Undeliverable::not_delivered(env, reason));
            return Some(why);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::builtin::{
        self, Echo, EchoMsg, Fragile, FragileMsg, FragileParams, Sleeper, SleeperMsg, StuckStop,
        Tripwire,
    };
    use super::super::{AskError, Proc, ProcConfig, ProcOutputs};
    use crate::id::ProcId;
    use crate::wire::codec;

    const SHORT: Duration = Duration::from_millis(200);
    /// Generous bound for things that take milliseconds.
    const SOON: Duration = Duration::from_secs(10);

    fn proc_with(stop_timeout: Duration) -> (Proc, ProcOutputs) {
        let config = ProcConfig {
            stop_timeout,
            ..ProcConfig::default()
        };
        Proc::new(
            ProcId::new("test", 0),
            Arc::new(builtin::registry()),
            config,
        )
    }

    fn fragile(panic_in_new: Option<&str>) -> FragileParams {
        FragileParams {
            decode: Tripwire(false),
            panic_in_new: panic_in_new.map(str::to_string),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_all_aborts_late_actors_and_returns_their_mail() {
        let (proc, mut outputs) = proc_with(SOON);
        let client = proc.client("tester");
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
        let returned = tokio::time::timeout(SOON, outputs.returned.recv())
            .await
            .expect("a return in time")
            .expect("returns open");
        assert_eq!(returned.envelope.to.to_string(), busy.id().to_string());
        assert!(returned.reason.contains("aborted"), "{}", returned.reason);
        // Aborted actors are forgotten: nothing more is delivered to them.
        let after = stuck.ask_within(&client, SOON, |p| p).await;
        assert!(
            matches!(&after, Err(AskError::Undeliverable(why)) if why.contains("not found")),
            "{after:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_actor_aborts_a_stop_hook_that_never_returns_and_reports_it() {
        let (proc, mut outputs) = proc_with(SHORT);
        let stuck = proc.spawn::<StuckStop>("stuck", ()).expect("spawn");
        let started = tokio::time::Instant::now();
        let result = proc.stop_actor("stuck").await;
        assert!(
            matches!(&result, Err(why) if why.contains("aborted")),
            "{result:?}"
        );
        assert!(started.elapsed() < SOON);
        let failure = tokio::time::timeout(SOON, outputs.failures.recv())
            .await
            .expect("a failure report in time")
            .expect("failures open");
        assert_eq!(&failure.actor_id, stuck.id());
        assert!(failure.reason.contains("aborted"), "{}", failure.reason);
        // An actor that stops in order is not reported.
        proc.spawn::<Echo>("echo", ()).expect("spawn");
        assert_eq!(proc.stop_actor("echo").await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn constructor_and_parameter_panics_refuse_the_spawn() {
        let (proc, _outputs) = proc_with(SOON);
        let refused = proc.spawn::<Fragile>("f", fragile(Some("boom in new")));
        assert!(
            matches!(&refused, Err(why) if why.contains("fragile constructor panicked: boom in new")),
            "{refused:?}"
        );
        let armed = FragileParams {
            decode: Tripwire(true),
            panic_in_new: None,
        };
        let params = codec::encode(&armed).expect("encode");
        let refused = proc.spawn_registered("fragile", "f", &params);
        assert!(
            matches!(&refused, Err(why) if why.contains("decoding the parameters of fragile panicked: tripwire")),
            "{refused:?}"
        );
        // The name was not taken by the failed spawns.
        let params = codec::encode(&fragile(None)).expect("encode");
        assert!(proc.spawn_registered("fragile", "f", &params).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decoding_panic_fails_the_actor_and_returns_the_message() {
        let (proc, mut outputs) = proc_with(SOON);
        let client = proc.client("tester");
        let f = proc.spawn::<Fragile>("f", fragile(None)).expect("spawn");
        let ok = f
            .ask_within(&client, SOON, |p| FragileMsg::Trip(Tripwire(false), p))
            .await;
        assert_eq!(ok, Ok(()));
        let tripped = f
            .ask_within(&client, SOON, |p| FragileMsg::Trip(Tripwire(true), p))
            .await;
        assert!(
            matches!(&tripped, Err(AskError::Undeliverable(why)) if why.contains("decoding a message panicked: tripwire")),
            "{tripped:?}"
        );
        let failure = tokio::time::timeout(SOON, outputs.failures.recv())
            .await
            .expect("a failure report in time")
            .expect("failures open");
        assert_eq!(&failure.actor_id, f.id());
        assert!(failure.reason.contains("decoding a message panicked"));
        // The proc carries on: the name is free again and a new actor answers.
        let g = proc.spawn::<Fragile>("f", fragile(None)).expect("respawn");
        assert_eq!(g.ask_within(&client, SOON, FragileMsg::Ping).await, Ok(()));
    }
}
