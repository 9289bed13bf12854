//! Exit codes of a worker process (docs/design.md §6.3).
//!
//! A commanded exit (`StopAndExit`, `Exit`) uses the commanded code; every
//! other way a worker ends has its own code, so whoever started the worker
//! (a shell, Slurm, Kubernetes) can tell why without reading logs. The values
//! follow BSD `sysexits.h` where one fits.

/// Clean exit (also SIGTERM/SIGINT after an orderly stop).
pub const OK: i32 = 0;
/// Could not join: the allocator stayed busy or unreachable until the join
/// deadline (the last reason is given), or the QUIC/TLS handshake failed
/// (a certificate refused by either side, which retrying cannot fix).
pub const UNREACHABLE: i32 = 69;
/// The connection to the allocator was lost after joining.
pub const CONNECTION_LOST: i32 = 75;
/// The allocator broke the protocol (garbage, oversized frame...).
pub const PROTOCOL: i32 = 76;
/// The allocator rejected this worker (bad token, unknown or duplicate index,
/// or a revoked certificate).
pub const REJECTED: i32 = 77;
/// The worker's configuration (environment, flags, certificate files) is unusable.
pub const CONFIG: i32 = 78;
/// The allocator's heartbeats stopped arriving.
pub const HEARTBEAT_LOST: i32 = 79;

/// A short word for an exit code, for logs and reports.
pub fn describe(code: i32) -> &'static str {
    match code {
        OK => "ok",
        UNREACHABLE => "allocator unreachable or handshake failed",
        CONNECTION_LOST => "connection lost",
        PROTOCOL => "protocol violation by the allocator",
        REJECTED => "rejected by the allocator",
        CONFIG => "configuration error",
        HEARTBEAT_LOST => "heartbeats lost",
        _ => "commanded",
    }
}

/// Whether `code` is one of the failure codes above (not a clean or commanded exit).
pub fn is_failure(code: i32) -> bool {
    matches!(
        code,
        UNREACHABLE | CONNECTION_LOST | PROTOCOL | REJECTED | CONFIG | HEARTBEAT_LOST
    )
}
