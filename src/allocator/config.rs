//! The settings of an allocator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::actor::{ProcConfig, Registry};
use crate::config::{HeartbeatConfig, Limits, LinkConfig, TransportConfig, DEFAULT_SERVER_NAME};
use crate::tls::CertPaths;

/// Settings of an allocator: start from [`AllocatorConfig::new`] and change
/// the fields that need changing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AllocatorConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port on loopback).
    pub listen: SocketAddr,
    /// `host:port` (or `host`) workers dial, a port of 0 or none meaning the
    /// bound port. Needed when listening on an unspecified address
    /// (`0.0.0.0`, `[::]`) for workers on other hosts to verify a name
    /// chosen on purpose: the allocator's certificate must name `host`
    /// (checked at bind). Default: the bound address; for an unspecified one,
    /// loopback for children on this host and [`routable_host`] for others.
    ///
    /// [`routable_host`]: super::routable_host
    pub advertise: Option<String>,
    /// Name workers verify in the allocator's certificate.
    pub server_name: String,
    /// Name of the allocation, the first part of every proc id.
    pub alloc_name: String,
    /// PEM path of the mesh CA (verifies workers; handed to workers).
    pub ca: PathBuf,
    /// PEM path of the allocator's certificate.
    pub cert: PathBuf,
    /// PEM path of the allocator's key.
    pub key: PathBuf,
    /// PEM path of certificate revocation lists (`X509 CRL` blocks, e.g.
    /// from `quicmesh certs revoke`): worker certificates they list are
    /// refused, and disconnected if connected. Read at bind and at every
    /// [`Allocator::reload_tls`](super::Allocator::reload_tls); default none.
    pub crl: Option<PathBuf>,
    /// PEM path of the certificate handed to launched workers.
    pub worker_cert: PathBuf,
    /// PEM path of the key handed to launched workers.
    pub worker_key: PathBuf,
    /// Heartbeat settings, sent to workers in Welcome.
    pub heartbeat: HeartbeatConfig,
    /// Limits, sent to workers in Welcome.
    pub limits: Limits,
    /// Handshake, Hello and stop timeouts.
    pub transport: TransportConfig,
    /// Flow-control windows and congestion controller of every worker
    /// connection (default [`LinkConfig::lan`]; [`LinkConfig::wan`] for links
    /// between datacenters). Launched workers and join tickets get the same
    /// setting in `QUICMESH_LINK`.
    pub link: LinkConfig,
    /// Actor types the controller's own proc can spawn on request.
    pub registry: Registry,
    /// Default timeout of the controller's `ask`s.
    pub ask_timeout: Duration,
    /// How long a proc may leave messages waiting for it without taking any
    /// off its stream before it is failed as stalled (default 30 s); also how
    /// long a worker has to open a new proc's stream.
    pub stall_timeout: Duration,
    /// Whether actors on one proc may ask another proc to spawn or stop
    /// actors or report its stats (default false: only the controller and
    /// actors on the same proc may; others get their request back, refused).
    pub remote_proc_requests: bool,
    /// Most launched workers joining at once: started but not yet welcomed
    /// (default 16). [`Allocator::launch`](super::Allocator::launch) starts
    /// the next worker when one is welcomed or ends; see docs/design.md
    /// (launch window) for why this is faster than starting all at once.
    /// Raise it for an allocator with many cores and workers on many hosts;
    /// it should stay below the handshake cap per source
    /// (a quarter of [`TransportConfig::max_pending_handshakes`]) when the
    /// workers share one address, or refused handshakes and retries make up
    /// the difference.
    pub launch_window: usize,
    /// Byte budget of the controller's returns stream (see
    /// [`Allocator::returns`](super::Allocator::returns)); default 32 MiB.
    pub returns_bytes: usize,
    /// Print every worker's forwarded log lines (see
    /// [`Allocator::logs`](super::Allocator::logs)) as `[worker N host] ...`:
    /// `tracing` events and stderr lines on stderr, stdout lines on stdout.
    /// Default on; turn it off to handle them yourself.
    pub print_worker_logs: bool,
}

/// Default of [`AllocatorConfig::launch_window`].
pub const DEFAULT_LAUNCH_WINDOW: usize = 16;

impl AllocatorConfig {
    /// Defaults for a mesh using the certificates in `certs`, on `127.0.0.1:0`.
    pub fn new(certs: &CertPaths) -> Self {
        AllocatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            server_name: DEFAULT_SERVER_NAME.into(),
            alloc_name: "mesh".into(),
            ca: certs.ca_cert.clone(),
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            crl: None,
            worker_cert: certs.worker_cert.clone(),
            worker_key: certs.worker_key.clone(),
            heartbeat: HeartbeatConfig::default(),
            limits: Limits::default(),
            transport: TransportConfig::default(),
            link: LinkConfig::default(),
            registry: Registry::new(),
            ask_timeout: ProcConfig::default().ask_timeout,
            stall_timeout: Duration::from_secs(30),
            remote_proc_requests: false,
            returns_bytes: 32 * 1024 * 1024,
            launch_window: DEFAULT_LAUNCH_WINDOW,
            print_worker_logs: true,
        }
    }
}
