//! The procs a worker hosts, each with its mailbox stream.
//!
//! For now a proc is its identity and the two halves of its mailbox stream;
//! the actor runtime hangs its actors off the same entry.

use std::collections::BTreeMap;

use crate::id::ProcId;
use crate::transport::{FramedRecv, FramedSend};

/// One proc hosted by this worker.
#[derive(Debug)]
pub struct ProcEntry {
    /// Sending half of the proc's mailbox stream.
    pub mailbox_send: FramedSend,
    /// Receiving half of the proc's mailbox stream.
    pub mailbox_recv: FramedRecv,
}

/// Why a proc cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcTableError {
    /// The allocator asked twice for the same proc.
    #[error("proc {0} already exists on this worker")]
    Duplicate(ProcId),
    /// The worker already hosts as many procs as the limit allows.
    #[error("worker already hosts the maximum of {0} procs")]
    Full(u32),
}

/// The procs of this worker, by id.
#[derive(Debug, Default)]
pub struct ProcTable {
    procs: BTreeMap<ProcId, ProcEntry>,
    max: u32,
}

impl ProcTable {
    /// An empty table holding at most `max` procs.
    pub fn new(max: u32) -> Self {
        ProcTable {
            procs: BTreeMap::new(),
            max,
        }
    }

    /// Checks whether `proc_id` could be added, before any stream is opened for it.
    pub fn check_new(&self, proc_id: &ProcId) -> Result<(), ProcTableError> {
        if self.procs.contains_key(proc_id) {
            return Err(ProcTableError::Duplicate(proc_id.clone()));
        }
        if self.procs.len() >= self.max as usize {
            return Err(ProcTableError::Full(self.max));
        }
        Ok(())
    }

    /// Adds a proc; errors as [`ProcTable::check_new`].
    pub fn insert(&mut self, proc_id: ProcId, entry: ProcEntry) -> Result<(), ProcTableError> {
        self.check_new(&proc_id)?;
        self.procs.insert(proc_id, entry);
        Ok(())
    }

    /// Removes and returns every proc, in id order.
    pub fn drain(&mut self) -> Vec<(ProcId, ProcEntry)> {
        std::mem::take(&mut self.procs).into_iter().collect()
    }

    /// Number of procs hosted.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no proc is hosted.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}
