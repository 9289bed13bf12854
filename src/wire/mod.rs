//! The wire protocol: messages, how they are encoded, and close codes.

pub mod close;
pub mod codec;
pub mod messages;
pub mod routes;

pub use codec::CodecError;
pub use messages::*;
