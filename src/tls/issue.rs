//! What the CA key signs after the mesh is set up: one worker's credential
//! (`quicmesh certs issue NAME`) and revocation lists (`quicmesh certs
//! revoke CERT`).
//!
//! Every host of a mesh that spans machines should hold a certificate of its
//! own: then the allocator's log says which host connected, and one host's
//! key can be revoked without re-keying all the others. The CA key needed
//! for this is read here and nowhere else at run time.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, ExtendedKeyUsagePurpose, Issuer, KeyIdMethod, KeyPair,
    PublicKeyData, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use super::dev_certs::{leaf_params, parse_san, write_file, DEV_VALIDITY_DAYS};
use super::error::TlsError;
use rustls_pki_types::pem::PemObject;

use super::load::{load_certs, load_key, parse_cert};

/// The two files of an issued worker credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// The worker's certificate (`NAME.pem`).
    pub cert: PathBuf,
    /// The worker's private key (`NAME.key`, mode 0600).
    pub key: PathBuf,
}

/// Issues a worker (client) certificate and key for the host `name`, signed
/// by the CA in `ca_cert` / `ca_key`, and writes them as `NAME.pem` and
/// `NAME.key` into `out_dir` (created if missing).
///
/// `name` becomes the certificate's common name and its one subject
/// alternative name (an IP address if it parses as one, else a DNS name),
/// so that the allocator can report which host presented it. The
/// certificate carries ClientAuth only, is valid from a day ago to 825 days
/// from now (never past the CA's own end), and its key is ECDSA P-256,
/// written with mode 0600.
///
/// Errors: [`TlsError::Generate`] for a `name` that is neither a DNS name nor
/// an IP address; those of loading for the CA files (missing, malformed,
/// expired, a CA key readable by others: [`TlsError::KeyPermissions`]);
/// [`TlsError::KeyMismatch`] if the CA key does not belong to the CA
/// certificate; [`TlsError::Exists`] naming the file when either output
/// exists and `force` is false; [`TlsError::Write`] naming what could not be
/// written.
pub fn issue_worker_cert(
    ca_cert: &Path,
    ca_key: &Path,
    name: &str,
    out_dir: &Path,
    force: bool,
) -> Result<IssuedPaths, TlsError> {
    let san = parse_san(name)?;
    let file_stem = name.trim().trim_start_matches('[').trim_end_matches(']');
    // An IPv6 address holds ':', fine in a file name on Unix; '/' never
    // passes `parse_san`, so the name cannot leave `out_dir`.
    let paths = IssuedPaths {
        cert: out_dir.join(format!("{file_stem}.pem")),
        key: out_dir.join(format!("{file_stem}.key")),
    };
    if !force {
        if let Some(existing) = [&paths.cert, &paths.key].into_iter().find(|p| p.exists()) {
            return Err(TlsError::Exists {
                path: existing.clone(),
            });
        }
    }

    let (issuer, ca_end) = load_issuer(ca_cert, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let not_after = (now + time::Duration::days(DEV_VALIDITY_DAYS)).min(ca_end);
    let mut params = leaf_params(
        file_stem,
        ExtendedKeyUsagePurpose::ClientAuth,
        now - time::Duration::days(1),
        not_after,
    );
    params.subject_alt_names = vec![san];
    let key =
        KeyPair::generate().map_err(|e| TlsError::Generate(format!("generating the key: {e}")))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| TlsError::Generate(format!("signing the certificate for {name}: {e}")))?;

    fs::create_dir_all(out_dir).map_err(|source| TlsError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&paths.cert, cert.pem().as_bytes(), false)?;
    tracing::info!(name, cert = %paths.cert.display(), "issued a worker certificate");
    Ok(paths)
}

/// Writes to `out` a certificate revocation list, signed by the CA in
/// `ca_cert` / `ca_key`, that revokes every certificate in the files
/// `revoked` (their first certificate each) plus every entry of the list
/// already at `out`, if any.
///
/// Give the file to the allocator ([`AllocatorConfig::crl`], `--crl`) and
/// reload it: new handshakes with those certificates are refused and
/// connected workers holding them are disconnected. The list's number is
/// one more than that of the list it replaces, and it claims validity for
/// 825 days (quicmesh does not enforce a CRL's `nextUpdate`). Written
/// atomically, so an allocator reloading at that moment reads the old list
/// or the new one.
///
/// Errors: those of loading the CA (see [`issue_worker_cert`]), of loading
/// each revoked certificate, of reading the list at `out`
/// ([`TlsError::Malformed`] naming it if it is not a CRL); [`TlsError::BadCa`]
/// for a certificate the CA did not issue; [`TlsError::Write`].
///
/// [`AllocatorConfig::crl`]: crate::allocator::AllocatorConfig::crl
pub fn revoke_certs(
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[&Path],
    out: &Path,
) -> Result<PathBuf, TlsError> {
    let (issuer, _) = load_issuer(ca_cert, ca_key)?;
    let ca_der = load_certs(ca_cert)?.swap_remove(0);
    let ca = parse_cert(ca_cert, 0, &ca_der)?;
    let now = OffsetDateTime::now_utc();
    let mut serials: Vec<Vec<u8>> = Vec::new();
    let mut crl_number: u64 = 1;
    if out.exists() {
        let bytes = fs::read(out).map_err(|source| TlsError::Read {
            path: out.to_path_buf(),
            source,
        })?;
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&bytes).map_err(
            |e| TlsError::Malformed {
                path: out.to_path_buf(),
                detail: format!("not a PEM CRL: {e}"),
            },
        )?;
        let (_, old) = x509_parser::parse_x509_crl(&der).map_err(|e| TlsError::Malformed {
            path: out.to_path_buf(),
            detail: format!("not a valid X.509 CRL: {e}"),
        })?;
        if old.issuer().as_raw() != ca.subject().as_raw() {
            return Err(TlsError::BadCa {
                path: out.to_path_buf(),
                detail: format!("this CRL is from {}, not from this CA", old.issuer()),
            });
        }
        if let Some(n) = old.crl_number() {
            crl_number = u64::try_from(n).unwrap_or(u64::MAX - 1).saturating_add(1);
        }
        serials.extend(
            old.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
    }
    for path in revoked {
        let certs = load_certs(path)?;
        let parsed = parse_cert(path, 0, &certs[0])?;
        if parsed.issuer().as_raw() != ca.subject().as_raw() {
            return Err(TlsError::BadCa {
                path: path.to_path_buf(),
                detail: format!(
                    "issued by {}, not by this CA ({})",
                    parsed.issuer(),
                    ca.subject()
                ),
            });
        }
        let serial = parsed.raw_serial().to_vec();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(DEV_VALIDITY_DAYS),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: now - time::Duration::minutes(5),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| TlsError::Generate(format!("signing the revocation list: {e}")))?;
    let pem = crl
        .pem()
        .map_err(|e| TlsError::Generate(format!("encoding the revocation list: {e}")))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| TlsError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_file(out, pem.as_bytes(), false)?;
    tracing::info!(crl = %out.display(), "wrote the revocation list");
    Ok(out.to_path_buf())
}

/// Loads a CA certificate and its key as an rcgen issuer, checked: a valid
/// CA certificate, a key readable by its owner only that belongs to it.
/// Returns the issuer and the end of the CA's validity.
fn load_issuer(
    ca_cert: &Path,
    ca_key: &Path,
) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), TlsError> {
    let ca_certs = load_certs(ca_cert)?;
    let ca_der = ca_certs.first().ok_or_else(|| TlsError::NoCertificate {
        path: ca_cert.to_path_buf(),
    })?;
    let parsed = parse_cert(ca_cert, 0, ca_der)?;
    let now = OffsetDateTime::now_utc();
    let ca_end = parsed.validity().not_after.to_datetime();
    if ca_end <= now {
        return Err(TlsError::Expired {
            path: ca_cert.to_path_buf(),
            not_after: parsed.validity().not_after.to_string(),
        });
    }
    if !parsed.is_ca() {
        return Err(TlsError::BadCa {
            path: ca_cert.to_path_buf(),
            detail: "certificate #0 is not a CA certificate (no CA basic constraint)".into(),
        });
    }
    let key_der = load_key(ca_key)?;
    let signing_key = KeyPair::try_from(&key_der).map_err(|e| TlsError::Malformed {
        path: ca_key.to_path_buf(),
        detail: format!("cannot sign with this key: {e}"),
    })?;
    if signing_key.subject_public_key_info() != parsed.public_key().raw {
        return Err(TlsError::KeyMismatch {
            cert: ca_cert.to_path_buf(),
            key: ca_key.to_path_buf(),
        });
    }
    let issuer = Issuer::from_ca_cert_der(ca_der, signing_key).map_err(|e| TlsError::BadCa {
        path: ca_cert.to_path_buf(),
        detail: format!("cannot issue with this CA: {e}"),
    })?;
    Ok((issuer, ca_end))
}

#[cfg(test)]
mod tests {
    use super::super::identity::CertIdentity;
    use super::super::load::load_identity;
    use super::super::test_support::{mesh, TempDir};
    use super::*;

    #[test]
    fn issued_certificates_name_their_host_and_load() {
        let (dir, paths) = mesh("issue");
        let out = dir.path().join("workers");
        let issued = issue_worker_cert(
            &paths.ca_cert,
            &paths.ca_key,
            "node-7.mesh.test",
            &out,
            false,
        )
        .expect("issue");
        let identity = load_identity(&issued.cert, &issued.key).expect("issued identity loads");
        let id = CertIdentity::of(&identity.chain[0]);
        assert_eq!(id.common_name.as_deref(), Some("node-7.mesh.test"));
        assert_eq!(id.sans, ["node-7.mesh.test"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&issued.key)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Not again without force; the files stay as they were.
        let before = fs::read(&issued.cert).expect("read");
        match issue_worker_cert(
            &paths.ca_cert,
            &paths.ca_key,
            "node-7.mesh.test",
            &out,
            false,
        ) {
            Err(TlsError::Exists { path }) => assert_eq!(path, issued.cert),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&issued.cert).expect("read"), before);
        issue_worker_cert(
            &paths.ca_cert,
            &paths.ca_key,
            "node-7.mesh.test",
            &out,
            true,
        )
        .expect("forced");
        assert_ne!(fs::read(&issued.cert).expect("read"), before);
        // An IP address is a SAN of type IP.
        let ip = issue_worker_cert(&paths.ca_cert, &paths.ca_key, "10.0.0.9", &out, false)
            .expect("issue ip");
        let identity = load_identity(&ip.cert, &ip.key).expect("load");
        assert_eq!(CertIdentity::of(&identity.chain[0]).sans, ["10.0.0.9"]);
    }

    #[test]
    fn bad_names_and_wrong_ca_keys_are_refused() {
        let (dir, paths) = mesh("issue-bad");
        let (_other_dir, other) = mesh("issue-other");
        let out = dir.path().join("workers");
        for bad in ["", "../escape", "a/b", "bad name"] {
            assert!(
                matches!(
                    issue_worker_cert(&paths.ca_cert, &paths.ca_key, bad, &out, false),
                    Err(TlsError::Generate(_))
                ),
                "{bad:?} accepted"
            );
        }
        match issue_worker_cert(&paths.ca_cert, &other.ca_key, "host", &out, false) {
            Err(TlsError::KeyMismatch { cert, key }) => {
                assert_eq!(cert, paths.ca_cert);
                assert_eq!(key, other.ca_key);
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        // A leaf certificate is not a CA.
        match issue_worker_cert(&paths.worker_cert, &paths.worker_key, "host", &out, false) {
            Err(TlsError::BadCa { path, .. }) => assert_eq!(path, paths.worker_cert),
            other => panic!("expected BadCa, got {other:?}"),
        }
        let empty = TempDir::new("issue-none");
        let missing = empty.path().join("ca.key");
        assert!(matches!(
            issue_worker_cert(&paths.ca_cert, &missing, "host", &out, false),
            Err(TlsError::Read { .. })
        ));
        assert!(!out.exists(), "a refused issue wrote files");
    }
}
