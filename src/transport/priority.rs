//! Send priorities of the streams on a worker's connection.
//!
//! QUIC sends the data of higher-priority streams first when the connection
//! is congestion- or flow-limited. Both ends use these values for the
//! streams they write, so a proc pushing bulk data can slow only the other
//! mailbox streams, never a command or a `StartedProc` on the control stream,
//! and a worker's log lines yield to every message.

/// The control stream: above every mailbox stream, so bulk traffic cannot
/// delay commands.
pub(crate) const CONTROL: i32 = 100;

/// Every mailbox stream: equal, so the connection shares its sending
/// round-robin between procs.
pub(crate) const MAILBOX: i32 = 0;

/// A worker's log stream: below every mailbox stream, so a worker that logs
/// heavily slows none of its own messages; its lines wait (and are dropped
/// in the worker when its queue is full) instead.
pub(crate) const LOGS: i32 = -10;
