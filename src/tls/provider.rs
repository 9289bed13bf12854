//! The crypto provider every quicmesh TLS configuration uses, and the digest
//! it provides for fingerprints.
//!
//! Both the loaders (which check that a private key is usable) and the
//! configuration builders need the provider, and the certificate generator
//! needs the digest; keeping them here lets those files depend on this one
//! instead of on each other.

use std::fmt::Write as _;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider all quicmesh TLS uses: *ring*, TLS 1.3 suites.
///
/// Passed explicitly to every rustls builder so that the behaviour never
/// depends on which provider some other crate in the process installed as the
/// default (or on none being installed, which would panic).
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The first `len` bytes of the SHA-256 digest of `data`, in lower-case hex.
pub(crate) fn short_fingerprint(data: &[u8], len: usize) -> String {
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
