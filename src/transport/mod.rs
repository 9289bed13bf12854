//! QUIC transport: endpoints with mutual TLS, and frames over streams.

pub mod endpoint;
pub mod framed;
pub(crate) mod priority;

#[cfg(any(test, feature = "testkit"))]
pub use endpoint::server_endpoint;
pub use endpoint::{client_endpoint, connect, ConnectError, TransportError};
pub use framed::{FramedRecv, FramedSend, StreamError};
