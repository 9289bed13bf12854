//! quinn endpoints configured the way every quicmesh connection needs.
//!
//! Both sides: TLS 1.3 with mutual authentication (see [`crate::tls`]), ALPN
//! `quicmesh/1`, no 0-RTT, datagrams on (heartbeats), and an idle timeout
//! well above the heartbeat timeout so that heartbeats, not the idle timer,
//! decide when a peer is dead. quinn has no handshake timeout of its own, so
//! [`connect`] adds one.
//!
//! Flow control is explicit and starts small. Until a peer is admitted (the
//! allocator has checked its Hello; the worker has checked the Welcome) it may
//! open one stream (the control stream; none towards a worker, whose
//! allocator never opens streams) and have at most
//! [`PRE_ADMISSION_RECEIVE_WINDOW`] bytes unread on the connection. Once
//! admitted, [`open_admitted`] raises the allocator's limits to what the
//! admitted worker's procs need, still a fixed bound per connection
//! (see [`LinkConfig::connection_window`]); each side grows its window with
//! each proc started on the worker ([`fit_receive_window`]).
//!
//! The stream windows, the send window and the congestion controller follow
//! the side's [`LinkConfig`] (see [`crate::link`]): they are fixed when the
//! connection is created, which is why each side uses its own setting.
//!
//! The allocator validates every source address with a QUIC Retry before it
//! keeps any state for it (see `allocator::server`); the endpoint here only
//! sets how long a Retry token lives and how much quinn may buffer for
//! connection attempts the listener has not yet looked at.
//!
//! The allocator's one UDP socket carries every worker's packets, so its
//! kernel receive buffer is raised ([`ALLOCATOR_RECV_BUFFER`]): at the
//! default (about 200 KiB on Linux) a few hundred milliseconds in which the
//! allocator does not read, common while a thousand workers start on the
//! same cores, overflow it, and the kernel drops heartbeats by the thousand.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, VarInt};

use crate::config::{split_host_port, HeartbeatConfig, Limits, PRE_ADMISSION_RECEIVE_WINDOW};
use crate::link::{Congestion, LinkConfig};

/// How long a Retry token is accepted after it was issued.
///
/// A worker echoes it one round trip after receiving it; 10 s covers slow
/// links and loaded machines while keeping the window for replaying a
/// captured token (from the same address only) short.
const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(10);

/// Connection attempts quinn keeps waiting for the listener to look at them.
///
/// The listener decides on each one at once (Retry, refuse or start the
/// handshake), so this only matters if it falls behind; beyond it quinn
/// refuses new attempts itself. 4096 first packets of at most ~1.5 KB each:
/// about 6 MiB.
const MAX_INCOMING: usize = 4096;

/// Receive buffer asked for the allocator's socket: room for about a second
/// of 1,000 workers' heartbeats, acknowledgements and handshakes (a small
/// datagram takes about 1 KiB of buffer). The kernel caps it at
/// `net.core.rmem_max`; the allocator warns when it gets less than half.
pub const ALLOCATOR_RECV_BUFFER: usize = 8 * 1024 * 1024;

/// Bytes quinn buffers for one attempt after its first packet, before the
/// listener has decided on it (0-RTT is off, so legitimate peers send
/// little), and for all attempts together.
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// Which side a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The allocator: the worker opens the control stream and one stream per proc.
    Allocator,
    /// A worker: the allocator opens no streams at all.
    Worker,
}

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

/// The transport parameters of one side, as they stand before admission.
///
/// `idle_timeout` must exceed the heartbeat timeout; the effective idle
/// timeout is the smaller of the two sides' values. `link` sets the stream
/// windows, the send window and the congestion controller; the connection
/// window starts at [`PRE_ADMISSION_RECEIVE_WINDOW`] whatever it says.
fn transport_config(
    side: Side,
    idle_timeout: Duration,
    link: &LinkConfig,
) -> Result<quinn::TransportConfig, TransportError> {
    link.validate()
        .map_err(|e| TransportError::Setting(e.to_string()))?;
    let mut t = quinn::TransportConfig::default();
    let idle = IdleTimeout::try_from(idle_timeout).map_err(|_| {
        TransportError::Setting(format!("idle timeout {idle_timeout:?} is too large"))
    })?;
    t.max_idle_timeout(Some(idle));
    // Before admission: the control stream only (raised by `open_admitted`).
    // Towards a worker: none ever, the allocator opens no streams.
    t.max_concurrent_bidi_streams(VarInt::from_u32(match side {
        Side::Allocator => 1,
        Side::Worker => 0,
    }));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(PRE_ADMISSION_RECEIVE_WINDOW));
    t.stream_receive_window(VarInt::from_u32(link.window));
    t.send_window(link.send_window());
    t.congestion_controller_factory(match link.congestion {
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
    });
    // Heartbeats keep the connection busy; QUIC keep-alives would only hide a dead peer.
    t.keep_alive_interval(None);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t.datagram_send_buffer_size(64 * 1024);
    Ok(t)
}

/// The idle timeout a worker proposes; the allocator's is smaller and decides.
///
/// Twice the longest heartbeat timeout accepted
/// ([`crate::config::MAX_HEARTBEAT_TIMEOUT`]), so that heartbeats, not the
/// idle timer, end the connection.
pub const WORKER_IDLE_TIMEOUT: Duration =
    Duration::from_secs(2 * crate::config::MAX_HEARTBEAT_TIMEOUT.as_secs());

/// The idle timeout the allocator uses for a given heartbeat setting.
///
/// Twice the heartbeat timeout, and at least 10 s: long enough that the
/// heartbeat judge always decides first, short enough that a peer that
/// vanished mid-handshake is dropped.
pub fn idle_timeout_for(heartbeat: &HeartbeatConfig) -> Duration {
    heartbeat
        .timeout
        .saturating_mul(2)
        .max(Duration::from_secs(10))
}

/// Raises the allocator's limits on a worker's connection once its Hello is admitted.
///
/// The worker may then open one stream per proc (plus the control stream and
/// some headroom for streams being closed), and have one stream window
/// unread per proc it hosts now (see [`fit_receive_window`]). `link` must be
/// the setting the allocator's endpoint was created with.
pub fn open_admitted(conn: &Connection, limits: &Limits, procs: usize, link: &LinkConfig) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(
        limits.max_procs_per_worker.saturating_add(8),
    ));
    fit_receive_window(conn, procs, link);
}

/// Sets the receive window of a connection that carries the mailbox
/// streams of `procs` procs: [`LinkConfig::connection_window`] of that
/// many, so one proc whose data is not read right away never takes the
/// credit of the others or of the control stream, and the peer can make
/// this side buffer only what those procs are entitled to. `link` must be
/// the setting this side's endpoint was created with (it fixed the stream
/// windows).
pub fn fit_receive_window(conn: &Connection, procs: usize, link: &LinkConfig) {
    let procs = u32::try_from(procs).unwrap_or(u32::MAX);
    conn.set_receive_window(VarInt::from_u64(link.connection_window(procs)).unwrap_or(VarInt::MAX));
}

/// Creates the allocator's endpoint listening on `addr`.
///
/// `_limits` are applied per connection once a worker is admitted
/// ([`open_admitted`]); until then every peer gets the small pre-admission
/// limits. `link` sets the windows and congestion controller of every
/// connection.
///
/// Errors: [`TransportError::Tls`] if `tls` cannot be used for QUIC,
/// [`TransportError::Setting`] if `link` is out of bounds,
/// [`TransportError::Bind`] if the address is taken or not local.
#[cfg(any(test, feature = "testkit"))]
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    heartbeat: &HeartbeatConfig,
    _limits: &Limits,
    link: &LinkConfig,
) -> Result<Endpoint, TransportError> {
    let config = server_quic_config(tls, heartbeat, link)?;
    bind_server(addr, config)
}

/// The QUIC TLS part of a server configuration: what a reload replaces.
///
/// Errors: [`TransportError::Tls`] if `tls` cannot be used for QUIC.
pub(crate) fn quic_server_crypto(
    tls: rustls::ServerConfig,
) -> Result<Arc<QuicServerConfig>, TransportError> {
    QuicServerConfig::try_from(tls)
        .map(Arc::new)
        .map_err(|e| TransportError::Tls(e.to_string()))
}

/// The server configuration of [`server_endpoint`].
///
/// Errors: [`TransportError::Tls`] if `tls` cannot be used for QUIC,
/// [`TransportError::Setting`] if `link` is out of bounds.
pub(crate) fn server_quic_config(
    tls: rustls::ServerConfig,
    heartbeat: &HeartbeatConfig,
    link: &LinkConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = quic_server_crypto(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(crypto);
    config.transport_config(Arc::new(transport_config(
        Side::Allocator,
        idle_timeout_for(heartbeat),
        link,
    )?));
    config.retry_token_lifetime(RETRY_TOKEN_LIFETIME);
    // Workers never reconnect, so tokens for a later connection (NEW_TOKEN)
    // would be an unused credential: address validation is by Retry only.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    config.validation_token_config(tokens);
    config.max_incoming(MAX_INCOMING);
    config.incoming_buffer_size(INCOMING_BUFFER);
    config.incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

/// Binds the allocator's endpoint on `addr` with `config`, its socket's
/// receive buffer raised to [`ALLOCATOR_RECV_BUFFER`].
///
/// Errors: [`TransportError::Bind`] if the address is taken or not local,
/// or no async runtime is running.
pub(crate) fn bind_server(
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<Endpoint, TransportError> {
    let bind_err = |source| TransportError::Bind { addr, source };
    let (socket, short) = bind_with_recv_buffer(addr, ALLOCATOR_RECV_BUFFER).map_err(bind_err)?;
    if let Some(warning) = short {
        tracing::warn!("{warning}");
    }
    let runtime = quinn::default_runtime().ok_or_else(|| {
        bind_err(std::io::Error::other(
            "no async runtime found (call from within tokio)",
        ))
    })?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(bind_err)
}

/// Binds a UDP socket on `addr` with a receive buffer of `wanted` bytes, or
/// as much as the kernel allows; with the socket, a warning to log when the
/// kernel granted less than half of `wanted`.
fn bind_with_recv_buffer(
    addr: SocketAddr,
    wanted: usize,
) -> std::io::Result<(std::net::UdpSocket, Option<String>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let warning = match socket.set_recv_buffer_size(wanted) {
        Err(e) => Some(format!(
            "cannot raise the UDP receive buffer to {wanted} bytes: {e}"
        )),
        Ok(()) => {
            let got = socket.recv_buffer_size().unwrap_or(0);
            // Linux reports twice what it grants (the rest is its
            // bookkeeping): the grant itself is what compares with `wanted`.
            let granted = if cfg!(target_os = "linux") {
                got / 2
            } else {
                got
            };
            (granted < wanted / 2).then(|| {
                format!(
                    "UDP receive buffer is {granted} bytes, not the {wanted} asked for: with \
                     many workers, heartbeats may be dropped; raise net.core.rmem_max"
                )
            })
        }
    };
    socket.bind(&addr.into())?;
    Ok((socket.into(), warning))
}

/// Creates a client endpoint able to reach `peer` (binds the matching address family).
///
/// The worker's idle timeout is generous ([`WORKER_IDLE_TIMEOUT`]); the
/// allocator's, being smaller, is the one in force. `_limits` are unused:
/// the worker's limits come from the Welcome. `link`
/// sets the windows and congestion controller of its connections.
///
/// Errors: [`TransportError::Tls`] if `tls` cannot be used for QUIC,
/// [`TransportError::Setting`] if `link` is out of bounds,
/// [`TransportError::Bind`] if no local UDP socket can be bound.
pub fn client_endpoint(
    tls: rustls::ClientConfig,
    peer: SocketAddr,
    _limits: &Limits,
    link: &LinkConfig,
) -> Result<Endpoint, TransportError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        Side::Worker,
        WORKER_IDLE_TIMEOUT,
        link,
    )?));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's cap on a socket's receive buffer, `net.core.rmem_max`.
    fn rmem_max() -> usize {
        let text = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("read /proc/sys/net/core/rmem_max");
        text.trim().parse().expect("net.core.rmem_max is a number")
    }

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().expect("address")
    }

    #[test]
    fn a_receive_buffer_capped_below_half_of_what_was_asked_is_warned_about() {
        let cap = rmem_max();
        // Three times the cap: the kernel grants a third, less than half.
        let wanted = cap * 3;
        assert!(
            wanted <= i32::MAX as usize,
            "net.core.rmem_max = {cap} is too large for this test to exceed"
        );
        let (socket, warning) = bind_with_recv_buffer(local(), wanted).expect("bind");
        let warning = warning.expect("no warning for a buffer capped at a third of the request");
        assert!(
            warning.contains(&format!("is {cap} bytes, not the {wanted}"))
                && warning.contains("net.core.rmem_max"),
            "{warning}"
        );
        assert!(socket.local_addr().expect("bound").port() != 0);
    }

    #[test]
    fn a_receive_buffer_granted_in_full_is_not_warned_about() {
        let wanted = (rmem_max() / 2).max(4096);
        let (_socket, warning) = bind_with_recv_buffer(local(), wanted).expect("bind");
        assert_eq!(warning, None);
    }
}
