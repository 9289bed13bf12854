//! A thread that ends a worker whose runtime can no longer run its heartbeats.
//!
//! A worker with the default layout ([`WorkerRuntime::Split`]) needs none:
//! its connection and heartbeats have a thread no actor can block, so a lost
//! allocator or lost heartbeats end it in time whatever its actors do. With
//! [`WorkerRuntime::Shared`] the heartbeat task shares the actors' threads,
//! and handlers that block all of them stop it: the allocator declares the
//! worker lost, but the worker itself would never notice (its heartbeat
//! judge, its connection's idle timer and its signal handlers all wait for
//! a thread) and would hang on for ever, procs and all.
//!
//! So a shared worker starts a [`Watchdog`] once it is welcomed: a plain OS
//! thread, outside every runtime, that every heartbeat interval reads when
//! the heartbeat task was last polled ([`Stamp`]). The task is polled at
//! least once an interval while its thread is free (its ticker), so a stamp
//! older than the heartbeat timeout means the runtime has not run it for as
//! long as the allocator waits before declaring the worker dead (the
//! allocator also counts the connection's acknowledgements, so its verdict
//! may come up to about an interval later, or not at all while another
//! thread still drives the connection): the
//! watchdog says why on stderr (log lines would go to the allocator through
//! the blocked runtime) and exits the process with
//! [`exit_code::HEARTBEAT_LOST`], as the heartbeat task itself would have.
//!
//! Like the heartbeat judge, the watchdog gives no verdict right after a
//! stall of its own (the whole process not scheduled, or stopped and
//! continued): when it wakes more than [`heartbeat::LOCAL_STALL`] intervals
//! late, it gives the runtime that many intervals to catch up before it
//! judges again. When the heartbeat task ends (the
//! session is over, or it is aborted), its stamp is disarmed and the
//! watchdog thread ends: a worker that is leaving is never cut short.
//!
//! [`WorkerRuntime::Split`]: super::WorkerRuntime::Split
//! [`WorkerRuntime::Shared`]: super::WorkerRuntime::Shared

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::log_forward;
use crate::exit_code;
use crate::heartbeat;

/// The stamp's value once the task it watches has ended.
const DISARMED: u64 = u64::MAX;

/// When the watched task was last polled, in microseconds since `epoch`.
#[derive(Clone)]
pub(super) struct Stamp {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Stamp {
    fn new() -> Stamp {
        Stamp {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(DISARMED - 1);
        self.last.store(us.min(DISARMED - 1), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.last.store(DISARMED, Ordering::Relaxed);
    }

    /// How long ago the task was last polled at `now`; `None` once disarmed.
    fn silent_for(&self, now: Instant) -> Option<Duration> {
        let last = self.last.load(Ordering::Relaxed);
        if last == DISARMED {
            return None;
        }
        let at = self.epoch + Duration::from_micros(last);
        Some(now.saturating_duration_since(at))
    }
}

/// The watchdog of one worker's heartbeat task.
pub(super) struct Watchdog;

impl Watchdog {
    /// Starts the watchdog thread for a heartbeat task beating every
    /// `interval` and judged dead after `timeout`; returns the stamp the
    /// task must carry (see [`stamp_polls`]).
    ///
    /// Errors: the thread could not be started (the text says so); the
    /// worker then runs without a watchdog, which the caller logs.
    pub(super) fn start(interval: Duration, timeout: Duration) -> Result<Stamp, String> {
        let stamp = Stamp::new();
        stamp.touch();
        let watched = stamp.clone();
        std::thread::Builder::new()
            .name("quicmesh-watchdog".into())
            .spawn(move || watch(&watched, interval, timeout))
            .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
        Ok(stamp)
    }
}

/// The watchdog thread's loop: returns when the stamp is disarmed, exits
/// the process when it is older than `timeout`.
fn watch(stamp: &Stamp, interval: Duration, timeout: Duration) {
    let stall = interval * heartbeat::LOCAL_STALL;
    let mut checked = Instant::now();
    let mut grace_until = checked;
    loop {
        std::thread::sleep(interval);
        let now = Instant::now();
        if now.saturating_duration_since(checked) > interval + stall {
            // Not scheduled ourselves: let the runtime catch up first.
            grace_until = now + stall;
        }
        checked = now;
        let Some(silent) = stamp.silent_for(now) else {
            return;
        };
        if now < grace_until {
            continue;
        }
        if silent >= timeout {
            // To the process's own stderr: log lines go to the allocator
            // through the runtime that is blocked.
            log_forward::write_local_stderr(&format!(
                "worker exiting: exit code {} (heartbeats lost): the worker's runtime has \
                 not run its heartbeats for {silent:?} (timeout {timeout:?}); with \
                 QUICMESH_WORKER_RUNTIME=shared, handlers that block every runtime thread \
                 silence the worker",
                exit_code::HEARTBEAT_LOST
            ));
            std::process::exit(exit_code::HEARTBEAT_LOST);
        }
    }
}

/// `task`, stamping `stamp` every time it is polled and disarming it when
/// it ends or is dropped.
pub(super) fn stamp_polls<F: Future>(task: F, stamp: Stamp) -> Stamped<F> {
    Stamped {
        task: Box::pin(task),
        stamp,
    }
}

/// The future of [`stamp_polls`].
pub(super) struct Stamped<F> {
    task: Pin<Box<F>>,
    stamp: Stamp,
}

impl<F: Future> Future for Stamped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.stamp.touch();
        self.task.as_mut().poll(cx)
    }
}

impl<F> Drop for Stamped<F> {
    fn drop(&mut self) {
        self.stamp.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_its_age_until_disarmed() {
        let stamp = Stamp::new();
        stamp.touch();
        let later = Instant::now() + Duration::from_secs(3);
        let silent = stamp.silent_for(later).expect("armed");
        assert!(silent >= Duration::from_secs(2), "{silent:?}");
        stamp.touch();
        assert!(stamp.silent_for(Instant::now()).expect("armed") < Duration::from_secs(1));
        stamp.disarm();
        assert_eq!(stamp.silent_for(later), None);
    }

    #[tokio::test]
    async fn a_stamped_task_stamps_when_polled_and_disarms_when_dropped() {
        // A stamp last touched ten seconds ago...
        let stamp = Stamp {
            epoch: Instant::now() - Duration::from_secs(10),
            last: Arc::new(AtomicU64::new(0)),
        };
        assert!(stamp.silent_for(Instant::now()).expect("armed") >= Duration::from_secs(9));
        // ...is fresh once the task it wraps is polled.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(stamp_polls(rx, stamp.clone()));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let silent = stamp.silent_for(Instant::now()).expect("armed");
        assert!(silent < Duration::from_secs(5), "{silent:?}");
        tx.send(()).expect("task waits");
        task.await.expect("task ends").expect("value");
        assert_eq!(
            stamp.silent_for(Instant::now()),
            None,
            "disarmed at the end"
        );
    }

    #[test]
    fn the_watch_ends_when_its_task_ends() {
        let stamp = Stamp::new();
        stamp.touch();
        stamp.disarm();
        // Returns after one interval instead of exiting the process.
        watch(&stamp, Duration::from_millis(10), Duration::from_millis(20));
    }
}
