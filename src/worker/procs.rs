//! The procs a worker hosts, by id, with a limit on their number.

use std::collections::BTreeMap;

use super::hosted::HostedProc;
use crate::id::ProcId;

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
#[derive(Default)]
pub struct ProcTable {
    procs: BTreeMap<ProcId, HostedProc>,
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
    pub fn insert(&mut self, proc_id: ProcId, entry: HostedProc) -> Result<(), ProcTableError> {
        self.check_new(&proc_id)?;
        self.procs.insert(proc_id, entry);
        Ok(())
    }

    /// Removes one proc.
    pub fn remove(&mut self, proc_id: &ProcId) -> Option<HostedProc> {
        self.procs.remove(proc_id)
    }

    /// Removes and returns every proc, in id order.
    pub fn drain(&mut self) -> Vec<(ProcId, HostedProc)> {
        std::mem::take(&mut self.procs).into_iter().collect()
    }

    /// Number of procs hosted.
    pub fn len(&self) -> usize {
        self.procs.len()
    }
}
