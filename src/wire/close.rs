//! Application close codes, sent with a readable reason when a side closes.
//!
//! The worker maps the code it receives to its exit code, so a rejected
//! worker exits 77 and says why rather than guessing from a bare disconnect.

use quinn::VarInt;

/// Orderly close: the peer is done (after `Leaving`, or the allocator shut down).
pub const NORMAL: VarInt = VarInt::from_u32(0);
/// The Hello was refused: bad token, unknown or duplicate index, wrong version.
pub const REJECTED: VarInt = VarInt::from_u32(1);
/// The peer sent something the protocol does not allow.
pub const PROTOCOL: VarInt = VarInt::from_u32(2);
/// No Hello arrived in time after the handshake.
pub const HELLO_TIMEOUT: VarInt = VarInt::from_u32(3);
/// The closing side stopped hearing the peer's heartbeats.
pub const HEARTBEAT_LOST: VarInt = VarInt::from_u32(4);
/// The allocator is shutting down.
pub const SHUTDOWN: VarInt = VarInt::from_u32(5);
/// The allocator cannot take this worker now; the worker tries again later
/// (with backoff, until its join deadline).
///
/// An application close, and so this code and its reason, can only be sent
/// once the handshake is done. The allocator refuses attempts *before* any
/// handshake (that is the point of refusing), so those arrive as QUIC's
/// transport code `CONNECTION_REFUSED`, without a reason; a worker treats
/// both the same, as "busy", and the allocator logs the reason instead.
pub const BUSY: VarInt = VarInt::from_u32(6);
/// Stream reset code: the writer gave the stream up without ending it in
/// order (its task was cut off, or its side is going away).
pub const ABANDONED: VarInt = VarInt::from_u32(7);

/// The worker's certificate was revoked (the allocator loaded a revocation
/// list that names it); the reason names the certificate. The worker exits
/// as rejected: joining again with the same certificate cannot work.
pub const REVOKED: VarInt = VarInt::from_u32(8);

/// Reason text as sent in a close frame: bounded so it fits in one packet.
pub fn reason_bytes(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(200);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.as_bytes()[..end].to_vec()
}
