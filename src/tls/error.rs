//! [`TlsError`]: what can go wrong with certificates, for all three jobs of
//! this module.

use std::io;
use std::path::PathBuf;

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

    /// A private key file can be read by its group or by others. Like ssh,
    /// quicmesh refuses to use it: a key anyone on the machine can copy
    /// proves nothing about who holds it.
    #[error(
        "private key {} is readable by group or others (mode {mode:03o}); fix it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A file that should hold certificate revocation lists holds no
    /// `X509 CRL` PEM block.
    #[error("{} contains no PEM certificate revocation list (X509 CRL)", path.display())]
    NoCrl {
        /// The file without a CRL.
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
