//! Development certificates: a throw-away CA plus an allocator and a worker
//! certificate it signs, written as PEM files with private modes.
//!
//! This exists so that `quicmesh demo`, `quicmesh certs`, the examples and the
//! tests work without openssl or any PKI. A real deployment brings its own CA
//! and only needs [`load`](super::load) and [`rustls_config`](super::rustls_config).

use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use time::OffsetDateTime;

use super::error::TlsError;
use super::provider::short_fingerprint;

/// How long generated development certificates are valid, in days.
///
/// 825 days is the longest lifetime that Apple platforms accept for a TLS
/// server certificate; staying under it avoids surprises if a dev certificate
/// ends up inspected by such a client.
pub(super) const DEV_VALIDITY_DAYS: i64 = 825;

/// Common name of the generated worker (client) certificate.
const WORKER_CN: &str = "quicmesh-worker";
/// Common name of the generated allocator (server) certificate.
const ALLOCATOR_CN: &str = "quicmesh-allocator";
/// Common name of the generated development CA.
const CA_CN: &str = "quicmesh development CA";

/// The folder, inside the certificate folder, that holds the CA's private
/// key by default (created with mode 0700).
pub const CA_KEY_DIR: &str = "ca-private";
/// The file name of the CA's private key.
const CA_KEY_FILE: &str = "ca.key";
/// Where the CA key was kept before it got a folder of its own; found there,
/// [`ensure_dev_certs`] moves it.
const OLD_CA_KEY_FILE: &str = "ca.key";
/// The folder, inside the certificate folder, where `quicmesh certs issue`
/// writes per-host worker credentials by default.
pub const ISSUED_DIR: &str = "workers";

/// The PEM files of a development mesh: one directory of files handed out,
/// and the CA's private key in a folder of its own.
///
/// The allocator needs `ca_cert`, `server_cert` and `server_key`; a worker
/// needs `ca_cert`, `worker_cert` and `worker_key`. `ca_key` is only needed to
/// issue more certificates (`quicmesh certs issue`), so it lives apart, in
/// [`CA_KEY_DIR`] (mode 0700) or a folder given with
/// [`CertPaths::with_ca_key_dir`]: copying the certificate folder to a
/// worker machine, or mounting it into a container, never carries the key
/// that can mint new members of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate both sides trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA's private key (`ca-private/ca.key`).
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
    /// The standard file names inside `dir`: `ca.pem`, `allocator.pem`,
    /// `allocator.key`, `worker.pem`, `worker.key`, and the CA key
    /// `ca-private/ca.key`.
    ///
    /// Only builds paths; nothing is read or checked.
    pub fn in_dir(dir: &Path) -> CertPaths {
        CertPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join(CA_KEY_DIR).join(CA_KEY_FILE),
            server_cert: dir.join("allocator.pem"),
            server_key: dir.join("allocator.key"),
            worker_cert: dir.join("worker.pem"),
            worker_key: dir.join("worker.key"),
        }
    }

    /// The same paths with the CA key as `ca.key` in `ca_key_dir` instead.
    ///
    /// Only builds paths; nothing is read or checked.
    pub fn with_ca_key_dir(mut self, ca_key_dir: &Path) -> CertPaths {
        self.ca_key = ca_key_dir.join(CA_KEY_FILE);
        self
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

/// What [`generate_dev_certs`] generates besides the fixed parts: extra names
/// for the allocator certificate, and whether existing files may be replaced.
///
/// Built step by step so that options can be added without breaking callers:
///
/// ```no_run
/// use quicmesh::tls::{generate_dev_certs, DevCertOptions};
///
/// let options = DevCertOptions::new().san("mesh.example").san("10.1.2.3");
/// let paths = generate_dev_certs("certs", &options)?;
/// # Ok::<(), quicmesh::tls::TlsError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevCertOptions {
    extra_sans: Vec<String>,
    force: bool,
    ca_key_dir: Option<PathBuf>,
}

impl DevCertOptions {
    /// No extra names, never overwriting.
    pub fn new() -> DevCertOptions {
        DevCertOptions::default()
    }

    /// Adds a subject alternative name to the allocator certificate, besides
    /// `localhost`, `127.0.0.1` and `::1`: an IP address if it parses as one
    /// (also in brackets, `[::1]`), else a DNS name (a leading `*.` label is
    /// allowed). Checked when generating, see [`TlsError::Generate`].
    pub fn san(mut self, name: impl Into<String>) -> DevCertOptions {
        self.extra_sans.push(name.into());
        self
    }

    /// Adds every name of `names`, as [`DevCertOptions::san`] does.
    pub fn sans<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> DevCertOptions {
        self.extra_sans.extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether existing files are replaced (default: no, generation refuses
    /// with [`TlsError::Exists`]).
    ///
    /// Replacing a CA locks out every machine holding a certificate from the
    /// old one, hence the explicit opt-in.
    pub fn force(mut self, force: bool) -> DevCertOptions {
        self.force = force;
        self
    }

    /// Keeps the CA private key in `dir` instead of [`CA_KEY_DIR`] inside the
    /// certificate folder (created with mode 0700 if missing).
    pub fn ca_key_dir(mut self, dir: impl Into<PathBuf>) -> DevCertOptions {
        self.ca_key_dir = Some(dir.into());
        self
    }

    /// The paths these options generate into `dir`.
    fn paths(&self, dir: &Path) -> CertPaths {
        let paths = CertPaths::in_dir(dir);
        match &self.ca_key_dir {
            Some(ca) => paths.with_ca_key_dir(ca),
            None => paths,
        }
    }
}

/// Generates a development CA and the allocator and worker certificates it
/// signs, writing the five PEM files handed out into `dir` and the CA key
/// into its own folder (see [`CertPaths`]).
///
/// This exists so that a mesh can be tried out (and tested) without any PKI:
/// the allocator certificate is valid for `localhost`, `127.0.0.1` and `::1`
/// plus the names of [`DevCertOptions::san`], and carries the ServerAuth
/// extended key usage; the worker certificate (CN `quicmesh-worker`) carries
/// ClientAuth. All keys are ECDSA P-256. Certificates are valid from one day
/// ago (tolerating clock skew) to 825 days from now.
///
/// `dir` is created if missing, the CA key's folder with mode 0700. Private
/// keys are created with mode 0600 on Unix. Each file is written to a temporary name and renamed into place, so
/// a reader never sees a half-written file.
///
/// Errors: [`TlsError::Exists`] (naming the first existing file) when any of
/// the six files already exists and [`DevCertOptions::force`] is not set;
/// [`TlsError::Generate`] for a name that is neither an IP address nor a DNS
/// name, or a failure of key generation or signing; [`TlsError::Write`]
/// naming the file or directory that could not be written.
pub fn generate_dev_certs(
    dir: impl AsRef<Path>,
    options: &DevCertOptions,
) -> Result<CertPaths, TlsError> {
    let dir = dir.as_ref();
    let now = OffsetDateTime::now_utc();
    generate_dev_certs_with_validity(
        dir,
        options,
        now - time::Duration::days(1),
        now + time::Duration::days(DEV_VALIDITY_DAYS),
    )
}

/// [`generate_dev_certs`] with an explicit validity period for all three
/// certificates.
///
/// A test fixture, for tests that need expired or not-yet-valid
/// certificates; not part of the user-facing API. Besides the errors of
/// [`generate_dev_certs`], a period that is empty or reaches outside the
/// years 0 to 9999 is [`TlsError::Generate`].
pub fn generate_dev_certs_with_validity(
    dir: &Path,
    options: &DevCertOptions,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertPaths, TlsError> {
    let paths = options.paths(dir);
    if !options.force {
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
        .chain(options.extra_sans.iter().map(String::as_str))
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
    if let Some(ca_dir) = paths.ca_key.parent() {
        create_private_dir(ca_dir)?;
    }
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
///
/// A folder made before the CA key got a folder of its own holds
/// `ca.key` next to the files handed out; it is moved into [`CA_KEY_DIR`]
/// (with a warning in the log that says from where to where), so that the
/// folder can be handed out as it is.
///
/// Errors: [`TlsError::Incomplete`] naming the first missing file,
/// [`TlsError::Write`] if the old CA key cannot be moved, or those of
/// [`generate_dev_certs`] when generating.
pub fn ensure_dev_certs(dir: impl AsRef<Path>) -> Result<CertPaths, TlsError> {
    let dir = dir.as_ref();
    let paths = CertPaths::in_dir(dir);
    migrate_old_ca_key(dir, &paths.ca_key)?;
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
        Some(_) => generate_dev_certs(dir, &DevCertOptions::new()),
    }
}

/// Moves `dir/ca.key` (the layout before the CA key had its own folder) to
/// `ca_key`, unless a key is there already.
fn migrate_old_ca_key(dir: &Path, ca_key: &Path) -> Result<(), TlsError> {
    let old = dir.join(OLD_CA_KEY_FILE);
    if old == ca_key || !old.is_file() || ca_key.exists() {
        return Ok(());
    }
    if let Some(parent) = ca_key.parent() {
        create_private_dir(parent)?;
    }
    fs::rename(&old, ca_key).map_err(|source| TlsError::Write {
        path: ca_key.to_path_buf(),
        source,
    })?;
    tracing::warn!(
        "moved the CA private key from {} to {}: it is only needed to issue certificates, \
         and {} can now be handed to workers without it",
        old.display(),
        ca_key.display(),
        dir.display()
    );
    Ok(())
}

/// Creates `dir` (and its parents) if missing, `dir` itself with mode 0700.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// A subject alternative name: an IP address if `name` parses as one (also
/// in brackets, `[::1]`), else a DNS name.
pub(super) fn parse_san(name: &str) -> Result<SanType, TlsError> {
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
pub(super) fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "quicmesh");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Parameters for an end-entity certificate with one extended key usage.
pub(super) fn leaf_params(
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
pub(super) fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
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

#[cfg(test)]
mod tests {
    use super::super::load::{describe_cert, load_certs, load_identity, parse_cert};
    use super::super::test_support::{mesh, TempDir};
    use super::*;

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
        match generate_dev_certs(dir.path(), &DevCertOptions::new()) {
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
        match generate_dev_certs(dir.path(), &DevCertOptions::new()) {
            Err(TlsError::Exists { path }) => assert_eq!(path, paths.server_cert),
            other => panic!("expected Exists, got {other:?}"),
        }

        let again =
            generate_dev_certs(dir.path(), &DevCertOptions::new().force(true)).expect("force");
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
        generate_dev_certs(dir.path(), &DevCertOptions::new().force(true)).expect("force");
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
        let paths = generate_dev_certs(&nested, &DevCertOptions::new()).expect("generate");
        assert!(paths.all_exist());
    }

    #[test]
    fn generate_rejects_bad_names_and_periods() {
        let dir = TempDir::new("badsan");
        for bad in ["", "bad name", "ünïcode.example", "a..b", "-x.example"] {
            match generate_dev_certs(dir.path(), &DevCertOptions::new().san(bad)) {
                Err(TlsError::Generate(msg)) => assert!(msg.contains("subject alternative name")),
                other => panic!("{bad:?}: expected Generate, got {other:?}"),
            }
        }
        // Nothing was written for the failed attempts.
        assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0);
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            generate_dev_certs_with_validity(dir.path(), &DevCertOptions::new(), now, now),
            Err(TlsError::Generate(_))
        ));
        // Brackets around IPv6 addresses and wildcards are accepted.
        let options = DevCertOptions::new().sans(["[fe80::1]", "*.mesh.test"]);
        generate_dev_certs(dir.path(), &options).expect("generate");
    }

    #[test]
    fn ensure_moves_an_old_ca_key_out_of_the_handed_out_folder() {
        let dir = TempDir::new("migrate");
        let paths = ensure_dev_certs(dir.path()).expect("first");
        // The layout before the CA key had a folder of its own.
        let old = dir.path().join("ca.key");
        fs::rename(&paths.ca_key, &old).expect("move back");
        fs::remove_dir(paths.ca_key.parent().expect("ca dir")).expect("rmdir");
        let key = fs::read(&old).expect("read");
        let ca = fs::read(&paths.ca_cert).expect("read");

        let again = ensure_dev_certs(dir.path()).expect("migrate");
        assert_eq!(again, paths);
        assert!(!old.exists(), "old CA key left among the handed-out files");
        assert_eq!(
            fs::read(&paths.ca_key).expect("read"),
            key,
            "not the same key"
        );
        assert_eq!(
            fs::read(&paths.ca_cert).expect("read"),
            ca,
            "CA regenerated"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ca_dir = paths.ca_key.parent().expect("ca dir");
            let mode = fs::metadata(ca_dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // The migrated CA still issues.
        super::super::issue::issue_worker_cert(
            &paths.ca_cert,
            &paths.ca_key,
            "after-move",
            &dir.path().join("workers"),
            false,
        )
        .expect("issue after the move");
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
}
