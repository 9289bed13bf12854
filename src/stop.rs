//! A stop signal that is cheap to check on every message.
//!
//! `CancellationToken::is_cancelled` takes a lock; hot loops check this flag
//! instead, and wait on the token only when they have nothing to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A one-way stop signal shared by a task and whoever may stop it.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Stop {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether the signal was given (a plain atomic load).
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Waits for the signal.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
}
