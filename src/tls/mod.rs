//! Certificates and rustls configuration for quicmesh's mutual TLS.
//!
//! Every quicmesh connection is QUIC, and QUIC is always TLS 1.3. The allocator
//! (the server) and the workers (the clients) authenticate *each other*: the
//! allocator proves who it is with a server certificate, and every worker
//! proves it belongs to the mesh with a client certificate. Both are checked
//! against one certificate authority (CA), so trust in the mesh is exactly
//! "holds a key whose certificate the mesh CA signed".
//!
//! What a user needs from here is a set of development certificates
//! ([`ensure_dev_certs`], [`generate_dev_certs`], [`CertPaths`]) and the
//! error type; an allocator and its workers load and check their PEM files
//! themselves, from the paths in their configuration.
//!
//! One file per job, in layers that only look down:
//!
//! * `dev_certs`: **generating** a throw-away development CA plus an
//!   allocator and a worker certificate, written with private modes, so that
//!   a mesh works without openssl or any PKI.
//! * `rustls_config`: **building** the rustls configurations of both sides
//!   with quicmesh's policy (TLS 1.3, client certificates required, ALPN, no
//!   0-RTT); it takes what `load` produced.
//! * `load`: **loading and checking** PEM files, with errors that name the
//!   file and with the checks rustls would only make later and less
//!   helpfully (validity period, key matching its certificate).
//! * `issue`: **issuing** one host's worker credential from an existing CA
//!   (`quicmesh certs issue`).
//! * `revocation`: the **revocation list** (CRLs) the allocator checks
//!   new handshakes and connected workers against.
//! * `identity` ([`CertIdentity`]): who a peer's certificate names, for
//!   events and logs.
//! * `provider` (the *ring* crypto provider and its digest) and `error`
//!   ([`TlsError`]), used by all three.
//!
//! This module sits at the bottom of the crate: it uses std, rustls, rcgen
//! and x509-parser only, never another quicmesh module.

pub(crate) mod dev_certs;
mod error;
pub(crate) mod identity;
mod issue;
pub(crate) mod load;
mod provider;
pub(crate) mod revocation;
pub(crate) mod rustls_config;
#[cfg(test)]
mod test_support;

pub use dev_certs::{
    ensure_dev_certs, generate_dev_certs, CertPaths, DevCertOptions, CA_KEY_DIR, ISSUED_DIR,
};
pub use error::TlsError;
pub use identity::CertIdentity;
pub use issue::{issue_worker_cert, revoke_certs, IssuedPaths};
pub use revocation::{load_crls, Revocations};
