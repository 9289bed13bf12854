//! Certificates and rustls configuration for quicmesh's mutual TLS.
//!
//! Every quicmesh connection is QUIC, and QUIC is always TLS 1.3. The allocator
//! (the server) and the workers (the clients) authenticate *each other*: the
//! allocator proves who it is with a server certificate, and every worker
//! proves it belongs to the mesh with a client certificate. Both are checked
//! against one certificate authority (CA), so trust in the mesh is exactly
//! "holds a key whose certificate the mesh CA signed".
//!
//! This module has three jobs:
//!
//! * **Generating** a throw-away development CA plus an allocator and a worker
//!   certificate ([`generate_dev_certs`], [`ensure_dev_certs`]), so that
//!   `quicmesh demo` and `quicmesh certs` work without openssl.
//! * **Loading** PEM files ([`load_certs`], [`load_key`], [`load_identity`],
//!   [`load_roots`]) with errors that name the offending file and say what is
//!   wrong with it, and with the checks rustls itself would only make later and
//!   less helpfully (expired certificate, key that belongs to another
//!   certificate).
//! * **Building** the rustls configurations ([`server_config`],
//!   [`client_config`]) with the policy quicmesh relies on: TLS 1.3 only, the
//!   *ring* provider passed explicitly (never a process-wide default), client
//!   certificates required, the [`ALPN`] id, and no 0-RTT.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

/// ALPN protocol id every quicmesh connection negotiates.
///
/// QUIC requires ALPN. Pinning our own id means a quicmesh endpoint never
/// completes a handshake with some other QUIC service (HTTP/3, say) that
/// happens to listen on the same port, and lets a future incompatible wire
/// protocol use `quicmesh/2` and be rejected cleanly by old peers.
pub const ALPN: &[u8] = b"quicmesh/1";

/// How long generated development certificates are valid, in days.
///
/// 825 days is the longest lifetime that Apple platforms accept for a TLS
/// server certificate; staying under it avoids surprises if a dev certificate
/// ends up inspected by such a client.
const DEV_VALIDITY_DAYS: i64 = 825;

/// Common name of the generated worker (client) certificate.
const WORKER_CN: &str = "quicmesh-worker";
/// Common name of the generated allocator (server) certificate.
const ALLOCATOR_CN: &str = "quicmesh-allocator";
/// Common name of the generated development CA.
const CA_CN: &str = "quicmesh development CA";

/// Everything that can go wrong loading or generating certificates.
///
/// Certificate problems are configuration problems that a person has to fix by
/// hand, so every variant that concerns a file names that file, and the
/// message says what is wrong with it rather than forwarding a bare parser
/// error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// A file that should hold certificates holds no `CERTIFICATE` PEM block.
    #[error("{} contains no PEM certificate", path.display())]
    NoCertificate {
        /// The file without certificates.
        path: PathBuf,
    },

    /// A file holds a PEM block that cannot be decoded, or whose DER contents
    /// are not a valid certificate or private key.
    #[error("{}: malformed PEM/DER: {detail}", path.display())]
    Malformed {
        /// The file with the broken contents.
        path: PathBuf,
        /// What exactly is broken.
        detail: String,
    },

    /// A file that should hold a private key holds no PKCS#8, SEC1 or PKCS#1
    /// PEM block.
    #[error("{} contains no PEM private key (PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoKey {
        /// The file without a key.
        path: PathBuf,
    },

    /// A certificate's validity period has ended.
    #[error("certificate {} expired on {not_after}", path.display())]
    Expired {
        /// The file holding the expired certificate.
        path: PathBuf,
        /// The end of its validity period, human readable.
        not_after: String,
    },

    /// A certificate's validity period has not started yet (often a clock
    /// problem on this machine or on the machine that issued it).
    #[error("certificate {} is not valid before {not_before}", path.display())]
    NotYetValid {
        /// The file holding the certificate.
        path: PathBuf,
        /// The start of its validity period, human readable.
        not_before: String,
    },

    /// The private key does not belong to the certificate it was paired with.
    #[error("key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// A certificate in a CA bundle cannot be used as a trust anchor.
    #[error("{}: unusable CA certificate: {detail}", path.display())]
    BadCa {
        /// The CA bundle.
        path: PathBuf,
        /// Why the certificate was rejected.
        detail: String,
    },

    /// Generating would overwrite an existing file and `force` was not given.
    #[error("refusing to overwrite {} (use --force)", path.display())]
    Exists {
        /// The first existing file.
        path: PathBuf,
    },

    /// Some, but not all, of the development certificate files exist, so they
    /// can neither be used nor silently regenerated (that would replace a CA
    /// other machines may trust).
    #[error(
        "{} holds an incomplete certificate set ({} is missing); regenerate it with `quicmesh certs --force`",
        dir.display(),
        missing.display()
    )]
    Incomplete {
        /// The certificate directory.
        dir: PathBuf,
        /// The first missing file.
        missing: PathBuf,
    },

    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// Certificate generation failed (bad subject alternative name, bad
    /// validity period, key generation failure).
    #[error("cannot generate certificates: {0}")]
    Generate(String),

    /// rustls refused to build a configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The PEM files of a development mesh in one directory.
///
/// The allocator needs `ca_cert`, `server_cert` and `server_key`; a worker
/// needs `ca_cert`, `worker_cert` and `worker_key`. `ca_key` is only needed to
/// issue more certificates and should not be copied to any machine that runs
/// the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate both sides trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA's private key (`ca.key`).
    pub ca_key: PathBuf,
    /// The allocator's server certificate (`allocator.pem`).
    pub server_cert: PathBuf,
    /// The allocator's private key (`allocator.key`).
    pub server_key: PathBuf,
    /// The workers' client certificate (`worker.pem`).
    pub worker_cert: PathBuf,
    /// The workers' private key (`worker.key`).
    pub worker_key: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir`: `ca.pem`, `ca.key`,
    /// `allocator.pem`, `allocator.key`, `worker.pem`, `worker.key`.
    ///
    /// Only builds paths; nothing is read or checked.
    pub fn in_dir(dir: &Path) -> CertPaths {
        CertPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("allocator.pem"),
            server_key: dir.join("allocator.key"),
            worker_cert: dir.join("worker.pem"),
            worker_key: dir.join("worker.key"),
        }
    }

    /// All six paths, CA first, in a fixed order (the order in which
    /// "first existing" and "first missing" files are reported).
    pub fn all(&self) -> [&Path; 6] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.worker_cert,
            &self.worker_key,
        ]
    }

    /// True when every file exists.
    pub fn all_exist(&self) -> bool {
        self.all().iter().all(|p| p.exists())
    }
}

/// The crypto provider all quicmesh TLS uses: *ring*, TLS 1.3 suites.
///
/// Passed explicitly to every rustls builder so that the behaviour never
/// depends on which provider some other crate in the process installed as the
/// default (or on none being installed, which would panic).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates a development CA and the allocator and worker certificates it
/// signs, writing the six PEM files of [`CertPaths::in_dir`] into `dir`.
///
/// This exists so that a mesh can be tried out (and tested) without any PKI:
/// the allocator certificate is valid for `localhost`, `127.0.0.1` and `::1`
/// plus `extra_sans` (each taken as an IP address if it parses as one, else
/// as a DNS name), and carries the ServerAuth extended key usage; the worker
/// certificate (CN `quicmesh-worker`) carries ClientAuth. All keys are ECDSA
/// P-256. Certificates are valid from one day ago (tolerating clock skew) to
/// 825 days from now.
///
/// `dir` is created if missing. Private keys are created with mode 0600 on
/// Unix. Each file is written to a temporary name and renamed into place, so
/// a reader never sees a half-written file.
///
/// Unless `force` is set, refuses with [`TlsError::Exists`] (naming the first
/// existing file) when any of the six files already exists: silently replacing
/// a CA would lock out every machine holding a certificate from the old one.
pub fn generate_dev_certs(
    dir: &Path,
    extra_sans: &[String],
    force: bool,
) -> Result<CertPaths, TlsError> {
    let now = OffsetDateTime::now_utc();
    generate_dev_certs_with_validity(
        dir,
        extra_sans,
        force,
        now - time::Duration::days(1),
        now + time::Duration::days(DEV_VALIDITY_DAYS),
    )
}

/// [`generate_dev_certs`] with an explicit validity period for all three
/// certificates.
///
/// Only meant for tests that need expired or not-yet-valid certificates.
#[doc(hidden)]
pub fn generate_dev_certs_with_validity(
    dir: &Path,
    extra_sans: &[String],
    force: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertPaths, TlsError> {
    let paths = CertPaths::in_dir(dir);
    if !force {
        if let Some(existing) = paths.all().into_iter().find(|p| p.exists()) {
            return Err(TlsError::Exists {
                path: existing.to_path_buf(),
            });
        }
    }

    let not_before = not_before.to_offset(time::UtcOffset::UTC);
    let not_after = not_after.to_offset(time::UtcOffset::UTC);
    // rcgen's DER writer can only encode years 0..=9999 and would panic
    // outside that range.
    for t in [not_before, not_after] {
        if !(0..10_000).contains(&t.year()) {
            return Err(TlsError::Generate(format!(
                "validity date {t} is outside the years 0 to 9999"
            )));
        }
    }
    if not_before >= not_after {
        return Err(TlsError::Generate(format!(
            "validity period is empty: not before {not_before}, not after {not_after}"
        )));
    }

    let mut sans = Vec::new();
    for name in ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .chain(extra_sans.iter().map(String::as_str))
    {
        let san = parse_san(name)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }

    let gen_err = |what: &str, e: rcgen::Error| TlsError::Generate(format!("{what}: {e}"));

    // The CA. Key usages limited to what a CA does; no EKU so it constrains
    // nothing below it.
    let ca_key = KeyPair::generate().map_err(|e| gen_err("generating the CA key", e))?;
    let mut ca_params = CertificateParams::default();
    // Every dev CA gets its own name. Two CAs with the same subject would make
    // a certificate from the wrong mesh fail with "bad signature" (the
    // verifier finds a same-named issuer) instead of "unknown issuer", and
    // would be indistinguishable in logs.
    ca_params.distinguished_name = name(&format!(
        "{CA_CN} {}",
        short_fingerprint(&ca_key.subject_public_key_info(), 4)
    ));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| gen_err("self-signing the CA certificate", e))?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    // The allocator: a server certificate for the loopback names plus extras.
    let server_key = KeyPair::generate().map_err(|e| gen_err("generating the allocator key", e))?;
    let mut server_params = leaf_params(
        ALLOCATOR_CN,
        ExtendedKeyUsagePurpose::ServerAuth,
        not_before,
        not_after,
    );
    server_params.subject_alt_names = sans;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|e| gen_err("signing the allocator certificate", e))?;

    // The worker: a client certificate. webpki does not check client names,
    // the CN is for logs.
    let worker_key = KeyPair::generate().map_err(|e| gen_err("generating the worker key", e))?;
    let worker_params = leaf_params(
        WORKER_CN,
        ExtendedKeyUsagePurpose::ClientAuth,
        not_before,
        not_after,
    );
    let worker_cert = worker_params
        .signed_by(&worker_key, &issuer)
        .map_err(|e| gen_err("signing the worker certificate", e))?;

    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // Keys first, certificates last: a crash part-way leaves an incomplete set
    // that `ensure_dev_certs` reports instead of using.
    write_file(&paths.ca_key, ca_key_pem.as_bytes(), true)?;
    write_file(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(
        &paths.worker_key,
        worker_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&paths.ca_cert, ca_cert_pem.as_bytes(), false)?;
    write_file(&paths.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(&paths.worker_cert, worker_cert.pem().as_bytes(), false)?;

    tracing::info!(dir = %dir.display(), "generated development CA, allocator and worker certificates");
    Ok(paths)
}

/// Like [`generate_dev_certs`] (no extra names, never overwriting), but only
/// generates when the files are missing; returns the paths either way.
///
/// This is what `quicmesh demo` uses so that the first run just works and
/// later runs keep the same CA. When only some of the six files exist it
/// returns [`TlsError::Incomplete`] rather than regenerating, because
/// regenerating would replace a CA that other processes may already trust.
/// Existing files are not validated here; loading them does that.
pub fn ensure_dev_certs(dir: &Path) -> Result<CertPaths, TlsError> {
    let paths = CertPaths::in_dir(dir);
    let missing: Vec<&Path> = paths.all().into_iter().filter(|p| !p.exists()).collect();
    match missing.first() {
        None => {
            tracing::debug!(dir = %dir.display(), "using existing development certificates");
            Ok(paths)
        }
        Some(first) if missing.len() < paths.all().len() => Err(TlsError::Incomplete {
            dir: dir.to_path_buf(),
            missing: first.to_path_buf(),
        }),
        Some(_) => generate_dev_certs(dir, &[], false),
    }
}

/// Loads every certificate in a PEM file.
///
/// Each certificate is also parsed as X.509, so that a corrupt file is
/// reported here, naming the file, instead of as an opaque handshake failure
/// later. Errors if the file has no `CERTIFICATE` block or any block is
/// malformed. Other PEM blocks (keys, say) are ignored.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        let cert = item.map_err(|e| malformed(path, pem_error_detail(&e)))?;
        parse_cert(path, certs.len(), &cert)?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    tracing::debug!(path = %path.display(), count = certs.len(), "loaded certificates");
    Ok(certs)
}

/// Loads the first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
///
/// The key is also loaded once with the *ring* provider, so that a key that
/// is corrupt or of a type rustls cannot sign with is reported here, naming
/// the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    let key = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(malformed(path, pem_error_detail(&e))),
    };
    crypto_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| malformed(path, format!("unusable private key: {e}")))?;
    Ok(key)
}

/// A certificate chain and its private key, checked: the leaf (first)
/// certificate is inside its validity period and the key matches the leaf's
/// public key.
///
/// This is what one side of the mesh presents to the other. Building it
/// through [`load_identity`] moves the two most common deployment mistakes,
/// an expired certificate and a key/certificate mix-up, from a vague
/// handshake failure on the *peer* to a clear error at startup.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Loads and checks an identity from a certificate chain file and a key file.
///
/// Errors name the file: [`TlsError::Expired`] or [`TlsError::NotYetValid`]
/// for the certificate file when the leaf is outside its validity period,
/// [`TlsError::KeyMismatch`] naming both files when the key belongs to
/// another certificate, plus everything [`load_certs`] and [`load_key`]
/// report.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    // `load_certs` never returns an empty list, but don't index.
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert.to_path_buf(),
    })?;
    check_validity(cert, &parse_cert(cert, 0, leaf)?)?;

    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| malformed(key, format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(vec![leaf.clone()], signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // The provider could not derive a public key from this key type; the
        // handshake will still fail if they don't belong together.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            tracing::warn!(cert = %cert.display(), key = %key.display(),
                "cannot check that the private key matches the certificate");
        }
        Err(e) => return Err(malformed(cert, format!("leaf certificate: {e}"))),
    }
    tracing::debug!(cert = %cert.display(), leaf = %describe_cert(leaf), "loaded identity");
    Ok(Identity {
        chain,
        key: key_der,
    })
}

/// Loads a CA bundle into a [`RootCertStore`], the set of CAs whose
/// certificates this side accepts from its peer.
///
/// Errors, naming the file, if the file holds no certificate, if a
/// certificate is malformed or rejected as a trust anchor, or if a CA
/// certificate is expired or not yet valid (an expired CA would otherwise
/// show up as every peer being rejected).
pub fn load_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(ca)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        let parsed = parse_cert(ca, index, &cert)?;
        check_validity(ca, &parsed)?;
        if !parsed.is_ca() {
            tracing::warn!(path = %ca.display(), cert = %describe_cert(&cert),
                "trusted certificate is not marked as a CA");
        }
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: ca.to_path_buf(),
            detail: format!("certificate #{index}: {e}"),
        })?;
    }
    Ok(roots)
}

/// The rustls server configuration for the allocator.
///
/// TLS 1.3 only (QUIC requires it), *ring* provider, client certificates
/// **required** and verified against `roots` (so only workers holding a
/// certificate from the mesh CA can connect), ALPN = [`ALPN`], and
/// `max_early_data_size = 0`: 0-RTT data can be replayed by an attacker, and
/// nothing quicmesh sends is worth that.
pub fn server_config(roots: RootCertStore, identity: Identity) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
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
/// the worker authenticating with `identity`, ALPN = [`ALPN`], and
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
pub fn client_config_without_cert(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let mut config = client_builder(roots)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// A one-line description of a certificate for logs: its subject common name
/// and a short SHA-256 fingerprint, e.g. `CN=quicmesh-worker sha256:1a2b3c4d5e6f7a8b`.
///
/// Meant for the peer certificates of an established connection, so that logs
/// say *which* worker connected. Never fails: an unparseable certificate is
/// described as such.
pub fn describe_cert(cert: &CertificateDer<'_>) -> String {
    let subject = match x509_parser::parse_x509_certificate(cert) {
        Ok((_, parsed)) => {
            let cn = parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned);
            match cn {
                Some(cn) => format!("CN={cn}"),
                None => format!("subject \"{}\"", parsed.subject()),
            }
        }
        Err(_) => "unparseable certificate".to_owned(),
    };
    format!("{subject} sha256:{}", short_fingerprint(cert, 8))
}

// ---------------------------------------------------------------------------
// Internals.

/// The first `len` bytes of the SHA-256 digest of `data`, in lower-case hex.
fn short_fingerprint(data: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(2 * len);
    // The suite is a compile-time constant that always is a TLS 1.3 suite.
    if let Some(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() {
        let digest = suite.common.hash_provider.hash(data);
        for byte in digest.as_ref().iter().take(len) {
            // Writing to a String cannot fail.
            let _ = write!(out, "{byte:02x}");
        }
    }
    out
}

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

/// A subject alternative name: an IP address if `name` parses as one (also
/// in brackets, `[::1]`), else a DNS name.
fn parse_san(name: &str) -> Result<SanType, TlsError> {
    let trimmed = name.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        });
    if !valid_dns {
        return Err(TlsError::Generate(format!(
            "subject alternative name {name:?} is neither an IP address nor a DNS name"
        )));
    }
    let ia5 = rcgen::string::Ia5String::try_from(trimmed)
        .map_err(|e| TlsError::Generate(format!("subject alternative name {name:?}: {e}")))?;
    Ok(SanType::DnsName(ia5))
}

/// A distinguished name with an organization and the given common name.
fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "quicmesh");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters for an end-entity certificate with one extended key usage.
fn leaf_params(
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// Writes `contents` to `path` atomically: into a fresh temporary file in the
/// same directory (mode 0600 for secrets, 0644 otherwise, set at creation so
/// a secret is never readable by others, not even briefly), then renamed over
/// `path`.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    // A leftover from a crashed run of a process with the same id.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TlsError::Write { path: tmp, source });
        }
    }

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;

    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    let result = result.and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(source));
    }
    Ok(())
}

/// Reads a whole file, naming it on error.
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::Malformed {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// A readable description of a PEM decoding error (the library's own
/// `Display` prints raw byte arrays).
fn pem_error_detail(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "PEM block has no end line {:?}",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("illegal PEM begin line {:?}", String::from_utf8_lossy(line))
        }
        Error::Base64Decode(detail) => format!("PEM block body is not valid base64: {detail}"),
        other => other.to_string(),
    }
}

/// Parses certificate number `index` of the file `path` as X.509.
fn parse_cert<'a>(
    path: &Path,
    index: usize,
    cert: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(cert) {
        Ok(([], parsed)) => Ok(parsed),
        Ok((rest, _)) => Err(malformed(
            path,
            format!(
                "certificate #{index} is followed by {} bytes of garbage",
                rest.len()
            ),
        )),
        Err(e) => Err(malformed(
            path,
            format!("certificate #{index} is not valid X.509: {e}"),
        )),
    }
}

/// Checks that `cert` (from the file `path`) is valid now.
fn check_validity(path: &Path, cert: &X509Certificate<'_>) -> Result<(), TlsError> {
    let validity = cert.validity();
    let now = ASN1Time::now();
    if now > validity.not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "quicmesh-tls-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, contents).expect("write test file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A fresh mesh in its own temp dir.
    fn mesh(tag: &str) -> (TempDir, CertPaths) {
        let dir = TempDir::new(tag);
        let paths = generate_dev_certs(
            dir.path(),
            &["mesh.test".to_owned(), "10.9.8.7".to_owned()],
            false,
        )
        .expect("generate dev certs");
        (dir, paths)
    }

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
    fn generate_creates_six_files_with_private_keys() {
        let (_dir, paths) = mesh("gen");
        assert!(paths.all_exist());
        for p in paths.all() {
            assert!(p.is_file(), "{} missing", p.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&paths.ca_key, &paths.server_key, &paths.worker_key] {
                let mode = fs::metadata(key).expect("stat").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
            for cert in [&paths.ca_cert, &paths.server_cert, &paths.worker_cert] {
                let mode = fs::metadata(cert).expect("stat").permissions().mode() & 0o777;
                assert_eq!(mode & 0o022, 0, "{} is writable by others", cert.display());
            }
        }
        // No temporary files left behind.
        let count = fs::read_dir(paths.ca_cert.parent().expect("dir"))
            .expect("read dir")
            .count();
        assert_eq!(count, 6);
    }

    #[test]
    fn generated_certificates_have_expected_contents() {
        let (_dir, paths) = mesh("contents");
        let ca = load_certs(&paths.ca_cert).expect("ca");
        let ca = parse_cert(&paths.ca_cert, 0, &ca[0]).expect("parse ca");
        assert!(ca.is_ca());

        let worker = load_certs(&paths.worker_cert).expect("worker");
        assert!(describe_cert(&worker[0]).starts_with("CN=quicmesh-worker sha256:"));
        let worker = parse_cert(&paths.worker_cert, 0, &worker[0]).expect("parse worker");
        assert!(!worker.is_ca());
        let eku = worker
            .extended_key_usage()
            .expect("eku")
            .expect("has eku")
            .value;
        assert!(eku.client_auth && !eku.server_auth);

        let server = load_certs(&paths.server_cert).expect("server");
        let server = parse_cert(&paths.server_cert, 0, &server[0]).expect("parse server");
        let eku = server
            .extended_key_usage()
            .expect("eku")
            .expect("has eku")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        let sans = server
            .subject_alternative_name()
            .expect("san")
            .expect("has san");
        let sans: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(s) => s.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        IpAddr::from(v4).to_string()
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        IpAddr::from(v6).to_string()
                    } else {
                        format!("bad IP {b:?}")
                    }
                }
                other => format!("{other}"),
            })
            .collect();
        assert_eq!(
            sans,
            ["localhost", "127.0.0.1", "::1", "mesh.test", "10.9.8.7"],
            "SANs"
        );

        // Valid from about a day ago to about 825 days from now.
        let validity = server.validity();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        assert!((validity.not_before.timestamp() - (now - day)).abs() < 60);
        assert!((validity.not_after.timestamp() - (now + 825 * day)).abs() < 60);
    }

    #[test]
    fn generate_refuses_to_overwrite_without_force() {
        let (dir, paths) = mesh("exists");
        let before = fs::read(&paths.ca_cert).expect("read ca");
        match generate_dev_certs(dir.path(), &[], false) {
            Err(e @ TlsError::Exists { .. }) => {
                let TlsError::Exists { path } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &paths.ca_cert);
                assert_eq!(
                    e.to_string(),
                    format!(
                        "refusing to overwrite {} (use --force)",
                        paths.ca_cert.display()
                    )
                );
            }
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&paths.ca_cert).expect("read ca"), before);

        // A single leftover file is enough to refuse, and it is the one named.
        fs::remove_file(&paths.ca_cert).expect("rm");
        fs::remove_file(&paths.ca_key).expect("rm");
        match generate_dev_certs(dir.path(), &[], false) {
            Err(TlsError::Exists { path }) => assert_eq!(path, paths.server_cert),
            other => panic!("expected Exists, got {other:?}"),
        }

        let again = generate_dev_certs(dir.path(), &[], true).expect("force");
        assert_eq!(again, paths);
        assert!(paths.all_exist());
        assert_ne!(fs::read(&paths.ca_cert).expect("read ca"), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.worker_key)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        load_identity(&paths.worker_cert, &paths.worker_key).expect("regenerated identity");
    }

    #[test]
    fn force_replaces_a_world_readable_key_with_a_private_one() {
        let dir = TempDir::new("perm");
        let paths = CertPaths::in_dir(dir.path());
        dir.write("worker.key", "old");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&paths.worker_key, fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        generate_dev_certs(dir.path(), &[], true).expect("force");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.worker_key)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn generate_creates_missing_directories() {
        let dir = TempDir::new("mkdir");
        let nested = dir.path().join("a").join("b");
        let paths = generate_dev_certs(&nested, &[], false).expect("generate");
        assert!(paths.all_exist());
    }

    #[test]
    fn generate_rejects_bad_names_and_periods() {
        let dir = TempDir::new("badsan");
        for bad in ["", "bad name", "ünïcode.example", "a..b", "-x.example"] {
            match generate_dev_certs(dir.path(), &[bad.to_owned()], false) {
                Err(TlsError::Generate(msg)) => assert!(msg.contains("subject alternative name")),
                other => panic!("{bad:?}: expected Generate, got {other:?}"),
            }
        }
        // Nothing was written for the failed attempts.
        assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0);
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            generate_dev_certs_with_validity(dir.path(), &[], false, now, now),
            Err(TlsError::Generate(_))
        ));
        // Brackets around IPv6 addresses and wildcards are accepted.
        generate_dev_certs(
            dir.path(),
            &["[fe80::1]".to_owned(), "*.mesh.test".to_owned()],
            false,
        )
        .expect("generate");
    }

    #[test]
    fn ensure_generates_once_and_reports_incomplete_sets() {
        let dir = TempDir::new("ensure");
        let paths = ensure_dev_certs(dir.path()).expect("first");
        assert!(paths.all_exist());
        let ca = fs::read(&paths.ca_cert).expect("read");
        let again = ensure_dev_certs(dir.path()).expect("second");
        assert_eq!(again, paths);
        assert_eq!(
            fs::read(&paths.ca_cert).expect("read"),
            ca,
            "CA was regenerated"
        );

        fs::remove_file(&paths.worker_key).expect("rm");
        let err = ensure_dev_certs(dir.path()).expect_err("incomplete");
        match &err {
            TlsError::Incomplete { missing, .. } => assert_eq!(missing, &paths.worker_key),
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(err.to_string().contains("worker.key"));
        assert_eq!(
            fs::read(&paths.ca_cert).expect("read"),
            ca,
            "CA was regenerated"
        );
    }

    #[test]
    fn load_identity_accepts_generated_identities() {
        let (_dir, paths) = mesh("ident");
        let worker = load_identity(&paths.worker_cert, &paths.worker_key).expect("worker");
        assert_eq!(worker.chain.len(), 1);
        let server = load_identity(&paths.server_cert, &paths.server_key).expect("server");
        assert_eq!(server.chain.len(), 1);
        let roots = load_roots(&paths.ca_cert).expect("roots");
        assert_eq!(roots.len(), 1);
        // SEC1 / PKCS#8 / PKCS#1 are all accepted by load_key; ours is PKCS#8.
        assert!(matches!(
            load_key(&paths.worker_key).expect("key"),
            PrivateKeyDer::Pkcs8(_)
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let missing = dir.path().join("nope.pem");
        let errors = [
            load_certs(&missing).map(|_| ()).expect_err("certs"),
            load_key(&missing).map(|_| ()).expect_err("key"),
            load_roots(&missing).map(|_| ()).expect_err("roots"),
            load_identity(&missing, &missing)
                .map(|_| ())
                .expect_err("identity"),
        ];
        for err in errors {
            assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&missing.display().to_string()), "{msg}");
            assert!(msg.contains("No such file"), "{msg}");
        }

        // The key file is named when only the key is missing.
        let (_mesh_dir, paths) = mesh("missing-key");
        let err = load_identity(&paths.worker_cert, &missing)
            .map(|_| ())
            .expect_err("identity");
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = TempDir::new("malformed");
        let (_mesh_dir, paths) = mesh("malformed-src");
        let real = fs::read_to_string(&paths.worker_cert).expect("read");
        let lines: Vec<&str> = real.lines().collect();
        let mut truncated: Vec<&str> = Vec::new();
        truncated.extend_from_slice(&lines[..3]);
        truncated.push(lines[lines.len() - 1]);
        let truncated = truncated.join("\n");

        let garbage_text = dir.write("garbage.pem", "this is not a certificate\n");
        let bad_base64 = dir.write(
            "bad-base64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
        );
        let bad_der = dir.write(
            "bad-der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let no_end = dir.write(
            "no-end.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n",
        );
        let truncated = dir.write("truncated.pem", &truncated);
        let bad_key = dir.write(
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        );

        let err = load_certs(&garbage_text).expect_err("garbage");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} contains no PEM certificate", garbage_text.display())
        );
        let err = load_key(&garbage_text).expect_err("garbage key");
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"));

        for path in [&bad_base64, &bad_der, &no_end, &truncated] {
            let err = load_certs(path).expect_err("malformed");
            assert!(
                matches!(err, TlsError::Malformed { .. }),
                "{}: {err:?}",
                path.display()
            );
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{}: malformed PEM/DER: ", path.display())),
                "{msg}"
            );
            // The same file as a CA bundle or an identity fails the same way.
            assert!(matches!(load_roots(path), Err(TlsError::Malformed { .. })));
            assert!(matches!(
                load_identity(path, &paths.worker_key),
                Err(TlsError::Malformed { .. })
            ));
        }

        let err = load_key(&bad_key).expect_err("bad key");
        assert!(matches!(err, TlsError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("bad.key"), "{err}");
        let err = load_identity(&paths.worker_cert, &bad_key)
            .map(|_| ())
            .expect_err("identity");
        assert!(err.to_string().contains("bad.key"), "{err}");

        // A key where a certificate belongs and vice versa.
        assert!(matches!(
            load_certs(&paths.worker_key),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_key(&paths.worker_cert),
            Err(TlsError::NoKey { .. })
        ));
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let (_dir, paths) = mesh("mismatch");
        let err = load_identity(&paths.worker_cert, &paths.server_key)
            .map(|_| ())
            .expect_err("mismatch");
        match &err {
            TlsError::KeyMismatch { cert, key } => {
                assert_eq!(cert, &paths.worker_cert);
                assert_eq!(key, &paths.server_key);
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "key {} does not match certificate {}",
                paths.server_key.display(),
                paths.worker_cert.display()
            )
        );
    }

    #[test]
    fn expired_and_future_certificates_are_rejected() {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);

        let expired = TempDir::new("expired");
        let paths =
            generate_dev_certs_with_validity(expired.path(), &[], false, now - 30 * day, now - day)
                .expect("generate expired");
        let err = load_identity(&paths.worker_cert, &paths.worker_key)
            .map(|_| ())
            .expect_err("expired");
        match &err {
            TlsError::Expired { path, .. } => assert_eq!(path, &paths.worker_cert),
            other => panic!("expected Expired, got {other:?}"),
        }
        assert!(err.to_string().contains("worker.pem"), "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
        match load_roots(&paths.ca_cert) {
            Err(TlsError::Expired { path, .. }) => assert_eq!(path, paths.ca_cert),
            other => panic!("expected Expired, got {other:?}"),
        }

        let future = TempDir::new("future");
        let paths =
            generate_dev_certs_with_validity(future.path(), &[], false, now + day, now + 30 * day)
                .expect("generate future");
        match load_identity(&paths.server_cert, &paths.server_key) {
            Err(TlsError::NotYetValid { path, .. }) => assert_eq!(path, paths.server_cert),
            other => panic!("expected NotYetValid, got {other:?}"),
        }
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
