//! The revocation list: certificates the allocator no longer accepts, read
//! from CRL files (PEM `X509 CRL` blocks, as `openssl ca -gencrl` or rcgen
//! write them).
//!
//! A CRL does two jobs here. rustls checks it in every new handshake (see
//! [`server_config_with_crls`](super::rustls_config::server_config_with_crls)),
//! and the allocator checks the certificates of workers that are *already
//! connected* against it when it loads a new list, because TLS checks a
//! certificate only once, in the handshake: without the second check a
//! revoked worker would stay in the mesh for as long as its connection
//! lasts.
//!
//! The second check matches a certificate by issuer name and serial number,
//! as a CRL names it. It does not check the CRL's signature; the handshake
//! check does (rustls refuses a CRL its CA did not sign), and whoever can
//! write the allocator's CRL file can equally replace its CA bundle.

use std::collections::HashSet;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use super::error::TlsError;

/// The certificates revoked by a set of CRLs.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// The CRLs as loaded, for rustls.
    pub(crate) crls: Vec<CertificateRevocationListDer<'static>>,
    /// (issuer name DER, serial without leading zeros) of each revoked certificate.
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
}

impl Revocations {
    /// No CRL: nothing is revoked.
    pub fn none() -> Revocations {
        Revocations::default()
    }

    /// How many certificates the lists revoke.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether the lists revoke nothing.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// Whether `cert` (its issuer and serial) is on one of the lists. A
    /// certificate that cannot be parsed is not on any (the handshake
    /// already refused such a certificate).
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        match x509_parser::parse_x509_certificate(cert) {
            Ok((_, parsed)) => self.revoked.contains(&(
                parsed.issuer().as_raw().to_vec(),
                trim_serial(parsed.raw_serial()),
            )),
            Err(_) => false,
        }
    }
}

/// Loads every CRL in the PEM file `path`.
///
/// Errors, naming the file: [`TlsError::Read`] if it cannot be read,
/// [`TlsError::NoCrl`] if it holds no `X509 CRL` block (an empty list is a
/// CRL with no entries, not an empty file: an empty file is more likely a
/// mistake), [`TlsError::Malformed`] if a block is not a valid CRL.
pub fn load_crls(path: &Path) -> Result<Revocations, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Revocations::default();
    for (index, item) in CertificateRevocationListDer::pem_slice_iter(&bytes).enumerate() {
        let crl = item.map_err(|e| TlsError::Malformed {
            path: path.to_path_buf(),
            detail: format!("CRL #{index}: {e}"),
        })?;
        match x509_parser::parse_x509_crl(&crl) {
            Ok(([], parsed)) => {
                let issuer = parsed.issuer().as_raw().to_vec();
                for revoked in parsed.iter_revoked_certificates() {
                    out.revoked
                        .insert((issuer.clone(), trim_serial(revoked.raw_serial())));
                }
            }
            Ok((rest, _)) => {
                return Err(TlsError::Malformed {
                    path: path.to_path_buf(),
                    detail: format!(
                        "CRL #{index} is followed by {} bytes of garbage",
                        rest.len()
                    ),
                })
            }
            Err(e) => {
                return Err(TlsError::Malformed {
                    path: path.to_path_buf(),
                    detail: format!("CRL #{index} is not a valid X.509 CRL: {e}"),
                })
            }
        }
        out.crls.push(crl);
    }
    if out.crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    tracing::debug!(path = %path.display(), crls = out.crls.len(), revoked = out.revoked.len(), "loaded revocation lists");
    Ok(out)
}

/// A serial number's bytes without the leading zero bytes DER may add.
fn trim_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::load::load_certs;
    use super::super::test_support::{mesh, revoke, TempDir};
    use super::*;

    #[test]
    fn a_crl_revokes_exactly_the_certificates_it_lists() {
        let (dir, paths) = mesh("crl");
        let crl = revoke(
            &paths,
            &[&paths.worker_cert],
            &dir.path().join("revoked.crl"),
        );
        let list = load_crls(&crl).expect("load CRL");
        assert_eq!(list.len(), 1);
        let worker = &load_certs(&paths.worker_cert).expect("worker")[0];
        let server = &load_certs(&paths.server_cert).expect("server")[0];
        assert!(list.is_revoked(worker));
        assert!(!list.is_revoked(server));
        // The same serial from another CA is another certificate.
        let (_other_dir, other) = mesh("crl-other");
        let theirs = &load_certs(&other.worker_cert).expect("other worker")[0];
        assert!(!list.is_revoked(theirs));
        assert!(!Revocations::none().is_revoked(worker));
    }

    #[test]
    fn bad_crl_files_are_named() {
        let dir = TempDir::new("crl-bad");
        let (_mesh_dir, paths) = mesh("crl-bad-mesh");
        let empty = dir.write("empty.crl", "");
        let cert = paths.worker_cert.clone();
        let garbage = dir.write(
            "garbage.crl",
            "-----BEGIN X509 CRL-----\naGVsbG8gd29ybGQ=\n-----END X509 CRL-----\n",
        );
        for path in [&empty, &cert] {
            match load_crls(path) {
                Err(TlsError::NoCrl { path: named }) => assert_eq!(&named, path),
                other => panic!("expected NoCrl, got {other:?}"),
            }
        }
        let err = load_crls(&garbage).expect_err("garbage");
        assert!(matches!(err, TlsError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.crl"), "{err}");
        assert!(matches!(
            load_crls(&dir.path().join("missing.crl")),
            Err(TlsError::Read { .. })
        ));
    }
}
