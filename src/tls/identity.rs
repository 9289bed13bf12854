//! [`CertIdentity`]: who a peer's certificate says it is, for events and
//! logs.

use std::fmt;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;

use super::provider::short_fingerprint;

/// The identity a worker presented: its certificate's subject common name,
/// subject alternative names and SHA-256 fingerprint.
///
/// Reported when a worker joins, so that an operator can tell which host's
/// credential was used (and so which one to revoke). It describes the
/// certificate the TLS handshake verified; it is not proof of anything the
/// worker claims in its Hello (host name, pid), which the worker chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CertIdentity {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The DNS names and IP addresses of the subject alternative name
    /// extension, in order.
    pub sans: Vec<String>,
    /// The SHA-256 digest of the whole certificate (DER), lower-case hex.
    pub sha256: String,
    /// The certificate's serial number, lower-case hex (what a CRL lists).
    pub serial: String,
}

impl CertIdentity {
    /// The identity of `cert`. Never fails: the parts of a certificate that
    /// cannot be parsed are left empty (the fingerprint always is there).
    pub(crate) fn of(cert: &CertificateDer<'_>) -> CertIdentity {
        let sha256 = short_fingerprint(cert, 32);
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            return CertIdentity {
                common_name: None,
                sans: Vec::new(),
                sha256,
                serial: String::new(),
            };
        };
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = parsed.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(s) => sans.push(s.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            sans.push(IpAddr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            sans.push(IpAddr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        CertIdentity {
            common_name,
            sans,
            sha256,
            serial: parsed.raw_serial_as_string().replace(':', ""),
        }
    }
}

impl fmt::Display for CertIdentity {
    /// `CN=node-7 [node-7] sha256:1a2b3c4d5e6f7a8b` (the fingerprint cut to
    /// 16 digits, as in logs; the field holds all of it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.common_name {
            Some(cn) => write!(f, "CN={cn}")?,
            None => write!(f, "no CN")?,
        }
        if !self.sans.is_empty() {
            write!(f, " [{}]", self.sans.join(", "))?;
        }
        let short = self.sha256.get(..16).unwrap_or(&self.sha256);
        write!(f, " sha256:{short}")
    }
}
