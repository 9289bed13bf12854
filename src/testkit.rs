//! Fixtures for the project's own tests, benchmarks and fuzz targets: the
//! fault-injection relay, test actors, and the wire-level pieces a test
//! needs to play a hostile peer by hand. Compiled only with the `testkit`
//! feature; not part of the public API, and free to change at any time.

/// The fault-injection UDP relay.
pub mod relay {
    pub use crate::relay::*;
}

/// Actors that sleep, fail, spin, panic and record on command.
pub mod actors {
    pub use crate::actor::test_actors::*;
}

/// The wire protocol: messages, codec, close codes.
pub mod wire {
    pub use crate::wire::*;
}

/// How a mailbox stream's readers decode its frames.
pub mod mailbox {
    pub use crate::mailbox::routed_variant;
}

/// QUIC endpoints and framed streams.
pub mod transport {
    pub use crate::transport::*;
}

/// Loading certificates and building rustls configurations by hand.
pub mod tls {
    pub use crate::tls::dev_certs::generate_dev_certs_with_validity;
    pub use crate::tls::load::{load_identity, load_roots, Identity};
    pub use crate::tls::rustls_config::{client_config, client_config_without_cert, server_config};
}

/// Largest frame accepted before a peer has been admitted.
pub const MAX_PRE_ADMISSION_FRAME: u32 = crate::config::MAX_PRE_ADMISSION_FRAME;

/// How long a worker's round trip must stay high before its link is
/// reported slow.
pub const SLOW_FOR: std::time::Duration = crate::rtt::SLOW_FOR;

/// Asks proc `proc_id` to spawn an actor by the name of its type, with
/// parameters as raw bytes: how a peer can ask for a type that does not
/// exist or send parameters that do not decode.
///
/// Errors: as [`crate::Client::spawn`].
pub async fn spawn_named(
    client: &crate::Client,
    proc_id: &crate::ProcId,
    actor_type: &str,
    name: &str,
    params: Vec<u8>,
) -> Result<crate::ActorId, crate::SpawnError> {
    client.spawn_named(proc_id, actor_type, name, params).await
}

/// Ends this process as soon as its stdin reaches its end: a benchmark's
/// or test's child process, given a pipe it never writes to, so that the
/// child goes when its parent does, even if the parent dies without
/// killing it.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}
