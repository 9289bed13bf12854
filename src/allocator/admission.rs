//! Who may join: the decision on a Hello, made without sockets.
//!
//! Every worker slot is reserved with a fresh random token before the worker
//! is started. A Hello is admitted only if its protocol version matches, its
//! index was reserved, its token is the one issued for that index (compared
//! in constant time), and no other connection holds that index. A slot is
//! used once: a worker that left cannot come back under the same index.

use std::collections::{BTreeMap, HashMap};

use subtle::ConstantTimeEq;

use crate::id::ProcId;
use crate::wire::{Hello, PROTOCOL_VERSION};

/// Why a Hello was refused; the text is sent to the peer as the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The worker speaks another protocol version.
    #[error("protocol version {got} not supported (this allocator speaks {expected})")]
    Version {
        /// The version in the Hello.
        got: u32,
        /// The version spoken here.
        expected: u32,
    },
    /// No slot was reserved for this index.
    #[error("unknown worker index {0}")]
    UnknownIndex(u32),
    /// The token is not the one issued for this index.
    #[error("bad token for worker index {0}")]
    BadToken(u32),
    /// Another connection already holds this index.
    #[error("worker index {0} is already connected")]
    Duplicate(u32),
    /// This index joined before and has left; slots are used once.
    #[error("worker index {0} has already left this allocation")]
    Finished(u32),
}

impl Rejection {
    /// The kind the metrics count this rejection as.
    pub fn kind(&self) -> super::RefusalKind {
        use super::RefusalKind as K;
        match self {
            Rejection::Version { .. } => K::ProtocolVersion,
            Rejection::UnknownIndex(_) => K::UnknownIndex,
            Rejection::BadToken(_) => K::BadToken,
            Rejection::Duplicate(_) => K::DuplicateIndex,
            Rejection::Finished(_) => K::IndexFinished,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Waiting,
    Joined,
    Finished,
}

#[derive(Debug)]
struct Slot {
    token: String,
    procs: Vec<ProcId>,
    state: SlotState,
}

/// The reserved worker slots of one allocation and their states.
#[derive(Debug, Default)]
pub struct Admission {
    slots: BTreeMap<u32, Slot>,
    /// The slot of every proc: a mesh of thousands asks this on every event.
    by_proc: HashMap<ProcId, u32>,
}

impl Admission {
    /// An allocation with no slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves slot `index` for a worker holding `token`, to host `procs`.
    pub fn reserve(&mut self, index: u32, token: String, procs: Vec<ProcId>) {
        for p in &procs {
            self.by_proc.insert(p.clone(), index);
        }
        self.slots.insert(
            index,
            Slot {
                token,
                procs,
                state: SlotState::Waiting,
            },
        );
    }

    /// The next index never reserved.
    pub fn next_index(&self) -> u32 {
        self.slots.keys().next_back().map_or(0, |i| i + 1)
    }

    /// Decides on a Hello; on success the slot is taken and its procs returned.
    ///
    /// The token is checked before the slot's state, so a peer without the
    /// token learns nothing about whether the index is in use.
    pub fn admit(&mut self, hello: &Hello) -> Result<Vec<ProcId>, Rejection> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Rejection::Version {
                got: hello.protocol_version,
                expected: PROTOCOL_VERSION,
            });
        }
        let slot = self
            .slots
            .get_mut(&hello.index)
            .ok_or(Rejection::UnknownIndex(hello.index))?;
        let token_ok: bool = slot.token.as_bytes().ct_eq(hello.token.as_bytes()).into();
        if !token_ok {
            return Err(Rejection::BadToken(hello.index));
        }
        match slot.state {
            SlotState::Waiting => {
                slot.state = SlotState::Joined;
                Ok(slot.procs.clone())
            }
            SlotState::Joined => Err(Rejection::Duplicate(hello.index)),
            SlotState::Finished => Err(Rejection::Finished(hello.index)),
        }
    }

    /// Whether slot `index` is reserved and its worker has not joined yet.
    pub fn is_waiting(&self, index: u32) -> bool {
        self.slots
            .get(&index)
            .is_some_and(|s| s.state == SlotState::Waiting)
    }

    /// Marks slot `index` as finished: its worker has left.
    pub fn finish(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.state = SlotState::Finished;
        }
    }

    /// The index of the slot whose worker hosts `proc_id`.
    pub fn worker_of(&self, proc_id: &ProcId) -> Option<u32> {
        self.by_proc.get(proc_id).copied()
    }

    /// How many procs the slots hold in all.
    pub fn proc_count(&self) -> usize {
        self.by_proc.len()
    }

    /// Every proc of every slot, by rank.
    pub fn procs(&self) -> Vec<ProcId> {
        let mut procs: Vec<ProcId> = self
            .slots
            .values()
            .flat_map(|s| s.procs.iter().cloned())
            .collect();
        procs.sort_by_key(|p| p.rank);
        procs
    }

    /// Adds a proc to a slot (for procs started after reservation).
    pub fn add_proc(&mut self, index: u32, proc_id: ProcId) {
        if let Some(slot) = self.slots.get_mut(&index) {
            self.by_proc.insert(proc_id.clone(), index);
            slot.procs.push(proc_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(index: u32, token: &str) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            index,
            token: token.into(),
            pid: 1,
            host: "h".into(),
        }
    }

    fn table() -> Admission {
        let mut a = Admission::new();
        a.reserve(0, "t0".into(), vec![ProcId::new("a", 0)]);
        a.reserve(1, "t1".into(), vec![]);
        a
    }

    #[test]
    fn right_token_is_admitted_once() {
        let mut a = table();
        assert_eq!(a.admit(&hello(0, "t0")), Ok(vec![ProcId::new("a", 0)]));
        assert_eq!(a.admit(&hello(0, "t0")), Err(Rejection::Duplicate(0)));
        a.finish(0);
        assert_eq!(a.admit(&hello(0, "t0")), Err(Rejection::Finished(0)));
    }

    #[test]
    fn wrong_token_unknown_index_and_version_are_refused() {
        let mut a = table();
        assert_eq!(a.admit(&hello(1, "t0")), Err(Rejection::BadToken(1)));
        assert_eq!(a.admit(&hello(1, "")), Err(Rejection::BadToken(1)));
        assert_eq!(a.admit(&hello(7, "t1")), Err(Rejection::UnknownIndex(7)));
        let mut h = hello(1, "t1");
        h.protocol_version = 99;
        assert!(matches!(
            a.admit(&h),
            Err(Rejection::Version { got: 99, .. })
        ));
        // None of these consumed the slot.
        assert_eq!(a.admit(&hello(1, "t1")), Ok(vec![]));
    }

    #[test]
    fn bad_token_does_not_reveal_that_index_is_taken() {
        let mut a = table();
        a.admit(&hello(0, "t0")).unwrap();
        assert_eq!(a.admit(&hello(0, "guess")), Err(Rejection::BadToken(0)));
    }

    #[test]
    fn procs_are_found_by_worker_and_listed_by_rank() {
        let mut a = table();
        a.add_proc(1, ProcId::new("a", 5));
        a.reserve(2, "t2".into(), vec![ProcId::new("a", 2)]);
        assert_eq!(a.worker_of(&ProcId::new("a", 5)), Some(1));
        assert_eq!(a.worker_of(&ProcId::new("a", 0)), Some(0));
        assert_eq!(a.worker_of(&ProcId::new("a", 9)), None);
        let ranks: Vec<u32> = a.procs().iter().map(|p| p.rank).collect();
        assert_eq!(ranks, vec![0, 2, 5]);
    }

    #[test]
    fn a_group_slot_admits_the_derived_token_once_and_no_other() {
        let secret = crate::join_token::random_secret();
        let mut a = Admission::new();
        for i in 4..7 {
            a.reserve(i, crate::join_token::derive_token(&secret, i), vec![]);
        }
        let token5 = crate::join_token::derive_token(&secret, 5);
        // Index 4's slot refuses index 5's token: a worker's token opens only its own slot.
        assert_eq!(a.admit(&hello(4, &token5)), Err(Rejection::BadToken(4)));
        assert_eq!(a.admit(&hello(4, &secret)), Err(Rejection::BadToken(4)));
        assert!(a.is_waiting(5));
        assert_eq!(a.admit(&hello(5, &token5)), Ok(vec![]));
        assert!(!a.is_waiting(5));
        assert_eq!(a.admit(&hello(5, &token5)), Err(Rejection::Duplicate(5)));
        // A slot finished before its worker joined (its group command ended) stays closed.
        a.finish(6);
        let token6 = crate::join_token::derive_token(&secret, 6);
        assert_eq!(a.admit(&hello(6, &token6)), Err(Rejection::Finished(6)));
    }

    #[test]
    fn next_index_follows_reservations() {
        assert_eq!(Admission::new().next_index(), 0);
        assert_eq!(table().next_index(), 2);
    }
}
