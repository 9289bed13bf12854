//! Reply ports: one-shot inboxes an `ask` waits on.
//!
//! A port's number is random (64 bits, never 0), so it cannot be guessed:
//! holding it (in a [`PortRef`](super::PortRef)) is the right to answer.
//! Each port also remembers which proc its ask went to, so that the asks to
//! a proc that ends can all be failed at once.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::host::PortAnswer;
use crate::id::ProcId;
use crate::reason::ReturnReason;
use crate::sync::lock;

struct Slot {
    reply: oneshot::Sender<PortAnswer>,
    target: ProcId,
}

/// The open reply ports of one proc.
#[derive(Default)]
pub(crate) struct Ports {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Ports {
    /// Opens a port for an ask to `target`; returns its number and where the answer comes.
    pub(crate) fn open(&self, target: ProcId) -> (u64, oneshot::Receiver<PortAnswer>) {
        let (tx, rx) = oneshot::channel();
        let mut slots = lock(&self.slots);
        let port = loop {
            let candidate: u64 = rand::random();
            if candidate != 0 && !slots.contains_key(&candidate) {
                break candidate;
            }
        };
        slots.insert(port, Slot { reply: tx, target });
        (port, rx)
    }

    /// Closes `port` (its ask is over).
    pub(crate) fn close(&self, port: u64) {
        lock(&self.slots).remove(&port);
    }

    /// Answers `port` once (it closes); false if it was not open.
    pub(crate) fn answer(&self, port: u64, answer: PortAnswer) -> bool {
        match lock(&self.slots).remove(&port) {
            Some(slot) => {
                let _ = slot.reply.send(answer);
                true
            }
            None => false,
        }
    }

    /// Fails every open port whose ask went to `target`, with `reason`.
    pub(crate) fn fail_all_to(&self, target: &ProcId, reason: &ReturnReason) {
        let mut slots = lock(&self.slots);
        let doomed: Vec<u64> = slots
            .iter()
            .filter(|(_, s)| s.target == *target)
            .map(|(p, _)| *p)
            .collect();
        for port in doomed {
            if let Some(slot) = slots.remove(&port) {
                let _ = slot.reply.send(PortAnswer::Failed(reason.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unguessable_answered_once_and_failed_by_target() {
        let ports = Ports::default();
        let (a, mut ra) = ports.open(ProcId::new("m", 1));
        let (b, mut rb) = ports.open(ProcId::new("m", 2));
        assert!(a != 0 && b != 0 && a != b);
        assert!(!ports.answer(a.wrapping_add(1), PortAnswer::Reply(vec![])));
        assert!(ports.answer(a, PortAnswer::Reply(vec![7])));
        assert!(
            !ports.answer(a, PortAnswer::Reply(vec![8])),
            "answered once"
        );
        assert!(matches!(ra.try_recv(), Ok(PortAnswer::Reply(v)) if v == vec![7]));
        ports.fail_all_to(
            &ProcId::new("m", 2),
            &ReturnReason::ProcClosing(ProcId::new("m", 2)),
        );
        assert!(matches!(rb.try_recv(), Ok(PortAnswer::Failed(_))));
        assert!(!ports.answer(b, PortAnswer::Reply(vec![])));
    }
}
