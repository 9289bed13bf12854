//! quinn endpoints configured the way every quicmesh connection needs.
//!
//! Both sides: TLS 1.3 with mutual authentication (see [`crate::tls`]), ALPN
//! `quicmesh/1`, no 0-RTT, datagrams on (heartbeats), stream limits high
//! enough for many procs per worker, and an idle timeout well above the
//! heartbeat timeout so that heartbeats, not the idle timer, decide when a
//! peer is dead. quinn has no handshake timeout of its own, so [`connect`]
//! adds one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, VarInt};

use crate::config::{split_host_port, HeartbeatConfig, Limits};

/// An endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration is unusable for QUIC (e.g. no TLS 1.3 suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    /// A transport setting is out of range.
    #[error("invalid transport setting: {0}")]
    Setting(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A connection to the allocator could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `host:port` or the host does not resolve.
    #[error("cannot resolve allocator address {addr:?}: {detail}")]
    Resolve {
        /// The address given.
        addr: String,
        /// What went wrong.
        detail: String,
    },
    /// quinn refused to start the connection (bad server name, endpoint stopping...).
    #[error("cannot start connection to {addr}: {source}")]
    Start {
        /// The resolved address.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The handshake did not complete within the connect timeout.
    #[error("no handshake with {addr} within {timeout:?} (allocator unreachable?)")]
    Timeout {
        /// The resolved address.
        addr: SocketAddr,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The handshake failed: refused, TLS error, or the connection was lost.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The resolved address.
        addr: SocketAddr,
        /// quinn's reason (a TLS alert names the certificate problem).
        source: quinn::ConnectionError,
    },
}

/// The transport parameters both sides use.
///
/// `idle_timeout` must exceed the heartbeat timeout; the effective idle
/// timeout is the smaller of the two sides' values.
fn transport_config(
    limits: &Limits,
    idle_timeout: Duration,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let idle = IdleTimeout::try_from(idle_timeout).map_err(|_| {
        TransportError::Setting(format!("idle timeout {idle_timeout:?} is too large"))
    })?;
    t.max_idle_timeout(Some(idle));
    // One bidi stream per proc plus the control stream, with headroom.
    t.max_concurrent_bidi_streams(VarInt::from_u32(
        limits.max_procs_per_worker.saturating_add(8),
    ));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Heartbeats keep the connection busy; QUIC keep-alives would only hide a dead peer.
    t.keep_alive_interval(None);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t.datagram_send_buffer_size(64 * 1024);
    Ok(t)
}

/// The idle timeout the allocator uses for a given heartbeat setting.
///
/// Twice the heartbeat timeout, and at least 10 s: long enough that the
/// heartbeat judge always decides first, short enough that a peer that
/// vanished mid-handshake is dropped.
pub fn idle_timeout_for(heartbeat: &HeartbeatConfig) -> Duration {
    (heartbeat.timeout * 2).max(Duration::from_secs(10))
}

/// Creates the allocator's endpoint listening on `addr`.
///
/// Errors: [`TransportError::Tls`] if `tls` cannot be used for QUIC,
/// [`TransportError::Bind`] if the address is taken or not local.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    heartbeat: &HeartbeatConfig,
    limits: &Limits,
) -> Result<Endpoint, TransportError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        limits,
        idle_timeout_for(heartbeat),
    )?));
    // Make a client prove its address before we hold handshake state for it.
    config.retry_token_lifetime(Duration::from_secs(15));
    Endpoint::server(config, addr).map_err(|source| TransportError::Bind { addr, source })
}

/// Creates a client endpoint able to reach `peer` (binds the matching address family).
///
/// The worker's idle timeout is generous (60 s); the allocator's, being
/// smaller, is the one in force.
pub fn client_endpoint(
    tls: rustls::ClientConfig,
    peer: SocketAddr,
    limits: &Limits,
) -> Result<Endpoint, TransportError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(limits, Duration::from_secs(60))?));
    let bind = match peer.ip() {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    };
    let mut endpoint =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Resolves `host:port` to one socket address (the first the resolver returns).
///
/// Errors: [`ConnectError::Resolve`] when the text is not `host:port` or the
/// host has no address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ConnectError> {
    let err = |detail: String| ConnectError::Resolve {
        addr: addr.to_string(),
        detail,
    };
    let (host, port) = split_host_port(addr).ok_or_else(|| err("expected host:port".into()))?;
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no address found".into()))
}

/// Connects `endpoint` to `addr`, verifying the peer's certificate carries `server_name`.
///
/// Errors: [`ConnectError::Start`] if quinn will not start (e.g. invalid
/// server name), [`ConnectError::Timeout`] if there is no answer within
/// `timeout`, [`ConnectError::Handshake`] if the peer refused or TLS failed.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|source| ConnectError::Start { addr, source })?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(ConnectError::Handshake { addr, source }),
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    }
}
