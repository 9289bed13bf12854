//! QUIC transport: endpoints with mutual TLS, and frames over streams.

pub mod endpoint;
pub mod framed;
pub(crate) mod priority;

pub use endpoint::{client_endpoint, connect, server_endpoint, ConnectError, TransportError};
pub use framed::{FramedRecv, FramedSend, StreamError};
