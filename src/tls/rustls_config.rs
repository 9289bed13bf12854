//! The rustls configurations of both sides, with the policy quicmesh relies
//! on: TLS 1.3 only, the *ring* provider passed explicitly (never a
//! process-wide default), client certificates required and verified against
//! the mesh CA, the [`ALPN`] id, and no 0-RTT.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::error::TlsError;
use super::load::Identity;
use super::provider::crypto_provider;

/// ALPN protocol id every quicmesh connection negotiates.
///
/// QUIC requires ALPN. Pinning our own id means a quicmesh endpoint never
/// completes a handshake with some other QUIC service (HTTP/3, say) that
/// happens to listen on the same port, and lets a future incompatible wire
/// protocol use `quicmesh/2` and be rejected cleanly by old peers.
pub(crate) const ALPN: &[u8] = b"quicmesh/1";

/// The rustls server configuration for the allocator.
///
/// TLS 1.3 only (QUIC requires it), *ring* provider, client certificates
/// **required** and verified against `roots` (so only workers holding a
/// certificate from the mesh CA can connect), ALPN = `quicmesh/1`, and
/// `max_early_data_size = 0`: 0-RTT data can be replayed by an attacker, and
/// nothing quicmesh sends is worth that.
#[cfg(any(test, feature = "testkit"))]
pub fn server_config(roots: RootCertStore, identity: Identity) -> Result<ServerConfig, TlsError> {
    server_config_with_crls(roots, identity, Vec::new())
}

/// [`server_config`] that also refuses client certificates revoked by one
/// of `crls`.
///
/// Only the worker's own certificate is checked (quicmesh CAs issue
/// workers directly), and a certificate whose issuer has no CRL in `crls`
/// is accepted: with a bundle of an old and a new CA, a CRL for one of them
/// must not lock out the workers of the other. The CRLs' `nextUpdate` is not
/// enforced: an old list still revokes what it lists. rustls checks each
/// CRL's signature against its CA, so a handshake with a certificate from
/// a CA whose CRL is forged fails.
pub(crate) fn server_config_with_crls(
    roots: RootCertStore,
    identity: Identity,
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| {
            TlsError::Config(format!("cannot build the client certificate verifier: {e}"))
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(format!("cannot select TLS 1.3: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| TlsError::Config(format!("cannot use the allocator certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The rustls client configuration for a worker.
///
/// TLS 1.3 only, *ring* provider, the allocator verified against `roots`,
/// the worker authenticating with `identity`, ALPN = `quicmesh/1`, and
/// `enable_early_data = false` (no replayable 0-RTT data).
pub fn client_config(roots: RootCertStore, identity: Identity) -> Result<ClientConfig, TlsError> {
    let mut config = client_builder(roots)?
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(|e| TlsError::Config(format!("cannot use the worker certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Like [`client_config`] but without a client certificate.
///
/// A correctly configured allocator rejects such a client; tests use this to
/// prove that it does.
#[cfg(any(test, feature = "testkit"))]
pub fn client_config_without_cert(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let mut config = client_builder(roots)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

// ---------------------------------------------------------------------------
// Internals.

/// The common part of both client configurations.
fn client_builder(
    roots: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no trusted CA certificates to verify the allocator with".to_owned(),
        ));
    }
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(format!("cannot select TLS 1.3: {e}")))?
        .with_root_certificates(roots))
}

#[cfg(test)]
mod tests {
    use super::super::dev_certs::CertPaths;
    use super::super::load::{describe_cert, load_identity, load_roots};
    use super::super::test_support::{mesh, TempDir};
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use std::fs;
    use std::path::Path;

    fn server_cfg(paths: &CertPaths) -> ServerConfig {
        server_config(
            load_roots(&paths.ca_cert).expect("roots"),
            load_identity(&paths.server_cert, &paths.server_key).expect("server identity"),
        )
        .expect("server config")
    }

    fn client_cfg(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
        client_config(
            load_roots(ca).expect("roots"),
            load_identity(cert, key).expect("worker identity"),
        )
        .expect("client config")
    }

    #[derive(Debug)]
    enum Failure {
        Client(rustls::Error),
        Server(rustls::Error),
        Stalled,
    }

    /// Runs a complete in-memory TLS handshake, pumping records between the
    /// two sides until both are done, one fails, or nothing moves.
    fn handshake(
        client_config: ClientConfig,
        server_config: ServerConfig,
        server_name: &str,
    ) -> Result<(ClientConnection, ServerConnection), Failure> {
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let mut client =
            ClientConnection::new(Arc::new(client_config), name).map_err(Failure::Client)?;
        let mut server = ServerConnection::new(Arc::new(server_config)).map_err(Failure::Server)?;
        for _ in 0..64 {
            let mut moved = false;
            while client.wants_write() {
                let mut buf = Vec::new();
                client.write_tls(&mut buf).expect("client write_tls");
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd).expect("server read_tls");
                }
                server.process_new_packets().map_err(Failure::Server)?;
                moved = true;
            }
            while server.wants_write() {
                let mut buf = Vec::new();
                server.write_tls(&mut buf).expect("server write_tls");
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).expect("client read_tls");
                }
                client.process_new_packets().map_err(Failure::Client)?;
                moved = true;
            }
            if !client.is_handshaking() && !server.is_handshaking() && !moved {
                return Ok((client, server));
            }
            if !moved {
                return Err(Failure::Stalled);
            }
        }
        Err(Failure::Stalled)
    }

    #[test]
    fn configs_build_with_the_quicmesh_policy() {
        let (_dir, paths) = mesh("configs");
        let server = server_cfg(&paths);
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.max_early_data_size, 0);

        let client = client_cfg(&paths.ca_cert, &paths.worker_cert, &paths.worker_key);
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(!client.enable_early_data);
        assert!(client.client_auth_cert_resolver.has_certs());

        let anon =
            client_config_without_cert(load_roots(&paths.ca_cert).expect("roots")).expect("anon");
        assert!(!anon.client_auth_cert_resolver.has_certs());

        // An empty trust store is a configuration error, not a panic.
        let identity = load_identity(&paths.server_cert, &paths.server_key).expect("identity");
        assert!(matches!(
            server_config(RootCertStore::empty(), identity.clone()),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            client_config(RootCertStore::empty(), identity),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            client_config_without_cert(RootCertStore::empty()),
            Err(TlsError::Config(_))
        ));
    }

    #[test]
    fn configs_are_accepted_for_quic() {
        // rustls' QUIC connections (what quinn builds on) reject configs that
        // allow TLS 1.2 or a max_early_data_size other than 0 or u32::MAX.
        let (_dir, paths) = mesh("quic");
        let client = client_cfg(&paths.ca_cert, &paths.worker_cert, &paths.worker_key);
        let name = ServerName::try_from("localhost").expect("name");
        rustls::quic::ClientConnection::new(
            Arc::new(client),
            rustls::quic::Version::V1,
            name,
            b"params".to_vec(),
        )
        .expect("QUIC client connection");
        rustls::quic::ServerConnection::new(
            Arc::new(server_cfg(&paths)),
            rustls::quic::Version::V1,
            b"params".to_vec(),
        )
        .expect("QUIC server connection");
    }

    #[test]
    fn handshake_succeeds_within_one_mesh() {
        let (_dir, paths) = mesh("hs-ok");
        for name in ["localhost", "127.0.0.1", "::1", "mesh.test", "10.9.8.7"] {
            let client = client_cfg(&paths.ca_cert, &paths.worker_cert, &paths.worker_key);
            let (client, server) = handshake(client, server_cfg(&paths), name)
                .unwrap_or_else(|e| panic!("handshake with {name} failed: {e:?}"));
            assert_eq!(client.alpn_protocol(), Some(ALPN));
            assert_eq!(server.alpn_protocol(), Some(ALPN));
            assert_eq!(
                client.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            let peer = server
                .peer_certificates()
                .expect("client presented a certificate");
            assert!(describe_cert(&peer[0]).starts_with("CN=quicmesh-worker "));
            let peer = client
                .peer_certificates()
                .expect("server presented a certificate");
            assert!(describe_cert(&peer[0]).starts_with("CN=quicmesh-allocator "));
        }
    }

    #[test]
    fn handshake_fails_for_a_name_not_in_the_certificate() {
        let (_dir, paths) = mesh("hs-name");
        let client = client_cfg(&paths.ca_cert, &paths.worker_cert, &paths.worker_key);
        match handshake(client, server_cfg(&paths), "elsewhere.test") {
            Err(Failure::Client(rustls::Error::InvalidCertificate(_))) => {}
            other => panic!(
                "expected the client to reject the name, got {:?}",
                other.map(|_| ())
            ),
        }
    }

    #[test]
    fn handshake_fails_for_a_worker_from_another_mesh() {
        let (_dir, paths) = mesh("hs-ours");
        let (_other_dir, other) = mesh("hs-theirs");
        // The intruder trusts our CA (so it accepts our allocator) but its
        // client certificate comes from its own CA.
        let client = client_cfg(&paths.ca_cert, &other.worker_cert, &other.worker_key);
        match handshake(client, server_cfg(&paths), "localhost") {
            Err(Failure::Server(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))) => {}
            other => panic!(
                "expected UnknownIssuer on the server, got {:?}",
                other.map(|_| ())
            ),
        }

        // Trusting both CAs on the server admits both meshes' workers.
        let bundle = TempDir::new("bundle");
        let both = format!(
            "{}{}",
            fs::read_to_string(&paths.ca_cert).expect("read"),
            fs::read_to_string(&other.ca_cert).expect("read")
        );
        let both = bundle.write("both.pem", &both);
        let roots = load_roots(&both).expect("bundle");
        assert_eq!(roots.len(), 2);
        let server = server_config(
            roots,
            load_identity(&paths.server_cert, &paths.server_key).expect("identity"),
        )
        .expect("server");
        let client = client_cfg(&paths.ca_cert, &other.worker_cert, &other.worker_key);
        handshake(client, server, "localhost").expect("bundle handshake");
    }

    #[test]
    fn handshake_fails_without_a_client_certificate() {
        let (_dir, paths) = mesh("hs-anon");
        let client =
            client_config_without_cert(load_roots(&paths.ca_cert).expect("roots")).expect("anon");
        match handshake(client, server_cfg(&paths), "localhost") {
            Err(Failure::Server(rustls::Error::NoCertificatesPresented)) => {}
            other => panic!(
                "expected NoCertificatesPresented, got {:?}",
                other.map(|_| ())
            ),
        }
    }

    #[test]
    fn handshake_fails_when_the_client_does_not_trust_the_allocator() {
        let (_dir, paths) = mesh("hs-srv-ours");
        let (_other_dir, other) = mesh("hs-srv-theirs");
        let client = client_cfg(&other.ca_cert, &other.worker_cert, &other.worker_key);
        match handshake(client, server_cfg(&paths), "localhost") {
            Err(Failure::Client(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))) => {}
            other => panic!(
                "expected UnknownIssuer on the client, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
