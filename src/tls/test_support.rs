//! Fixtures shared by the unit tests of this module's files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::dev_certs::{generate_dev_certs, CertPaths, DevCertOptions};

/// A unique directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
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

    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    pub(super) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write test file");
        path
    }

    /// Writes a private key file, readable by its owner only.
    pub(super) fn write_key(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.write(name, contents);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fresh mesh in its own temp dir.
pub(super) fn mesh(tag: &str) -> (TempDir, CertPaths) {
    let dir = TempDir::new(tag);
    let options = DevCertOptions::new().san("mesh.test").san("10.9.8.7");
    let paths = generate_dev_certs(dir.path(), &options).expect("generate dev certs");
    (dir, paths)
}

/// Writes a CRL at `out`, signed by the mesh's CA, revoking the given
/// certificates; returns `out`.
pub(super) fn revoke(paths: &CertPaths, certs: &[&Path], out: &Path) -> PathBuf {
    super::issue::revoke_certs(&paths.ca_cert, &paths.ca_key, certs, out).expect("write CRL")
}
