//! Loading and checking PEM files: certificates, private keys, identities
//! (a chain and its key) and CA bundles.
//!
//! Certificate problems are configuration problems a person fixes by hand,
//! so every error names the file and says what is wrong with it. The checks
//! rustls itself would only make later and less helpfully (an expired
//! certificate, a key that belongs to another certificate, a CA that is not
//! valid yet) are made here, at start-up, so that a mistake shows up as a
//! clear error on the side that made it rather than as a vague handshake
//! failure on its peer.

use std::fs;
use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::time::ASN1Time;

use super::error::TlsError;
use super::provider::{crypto_provider, short_fingerprint};

/// Loads every certificate in a PEM file.
///
/// Each certificate is also parsed as X.509, so that a corrupt file is
/// reported here, naming the file, instead of as an opaque handshake failure
/// later. Errors if the file has no `CERTIFICATE` block or any block is
/// malformed. Other PEM blocks (keys, say) are ignored.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
/// the file. On Unix a key file that its group or others may read is refused
/// ([`TlsError::KeyPermissions`]) before it is read, as ssh refuses such
/// keys: whoever else can read it can act as this side of the mesh.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_permissions(path)?;
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
/// another certificate, plus everything `load_certs` and `load_key`
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

/// A one-line description of a certificate for logs: its subject common name
/// and a short SHA-256 fingerprint, e.g. `CN=quicmesh-worker sha256:1a2b3c4d5e6f7a8b`.
///
/// Meant for the peer certificates of an established connection, so that logs
/// say *which* worker connected. Never fails: an unparseable certificate is
/// described as such.
pub(crate) fn describe_cert(cert: &CertificateDer<'_>) -> String {
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

/// Refuses a key file that its group or others may read (Unix only; the
/// permission bits of the file a symlink points to are what count).
fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
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
pub(super) fn parse_cert<'a>(
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
    use super::super::dev_certs::{generate_dev_certs_with_validity, DevCertOptions};
    use super::super::test_support::{mesh, TempDir};
    use super::*;
    use time::OffsetDateTime;

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

        // Also read as a key, so owner-only.
        let garbage_text = dir.write_key("garbage.pem", "this is not a certificate\n");
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
        let bad_key = dir.write_key(
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

        // A key where a certificate belongs and vice versa (the certificate
        // made owner-only, else its mode is what is refused).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&paths.worker_cert, fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        assert!(matches!(
            load_certs(&paths.worker_key),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_key(&paths.worker_cert),
            Err(TlsError::NoKey { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn keys_readable_by_others_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, paths) = mesh("perms");
        for mode in [0o640, 0o604, 0o644, 0o666] {
            fs::set_permissions(&paths.worker_key, fs::Permissions::from_mode(mode))
                .expect("chmod");
            let err = load_identity(&paths.worker_cert, &paths.worker_key)
                .map(|_| ())
                .expect_err("readable key accepted");
            match &err {
                TlsError::KeyPermissions { path, mode: seen } => {
                    assert_eq!(path, &paths.worker_key);
                    assert_eq!(*seen, mode);
                }
                other => panic!("expected KeyPermissions, got {other:?}"),
            }
            let msg = err.to_string();
            let fix = format!("chmod 600 {}", paths.worker_key.display());
            assert!(msg.contains(&fix), "{msg}");
        }
        // Owner-only modes are fine, read-only included.
        for mode in [0o600, 0o400] {
            fs::set_permissions(&paths.worker_key, fs::Permissions::from_mode(mode))
                .expect("chmod");
            load_identity(&paths.worker_cert, &paths.worker_key).expect("private key refused");
        }
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
        let none = DevCertOptions::new();

        let expired = TempDir::new("expired");
        let paths =
            generate_dev_certs_with_validity(expired.path(), &none, now - 30 * day, now - day)
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
            generate_dev_certs_with_validity(future.path(), &none, now + day, now + 30 * day)
                .expect("generate future");
        match load_identity(&paths.server_cert, &paths.server_key) {
            Err(TlsError::NotYetValid { path, .. }) => assert_eq!(path, paths.server_cert),
            other => panic!("expected NotYetValid, got {other:?}"),
        }
    }
}
