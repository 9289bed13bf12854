//! The `quicmesh certs` command, as a user runs it.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn certs_writes_a_mesh_refuses_to_overwrite_and_forces() {
    let dir = common::TempDir::new("cli-certs");
    let certs = dir.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(common::bin())
            .arg("certs")
            .arg("--dir")
            .arg(&certs)
            .args(["--san", "mesh.example", "--san", "10.1.2.3"])
            .args(extra)
            .output()
            .expect("run quicmesh certs")
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let paths = quicmesh::tls::CertPaths::in_dir(&certs);
    assert!(paths.all_exist());
    for key in [&paths.ca_key, &paths.server_key, &paths.worker_key] {
        let mode = std::fs::metadata(key)
            .expect("key metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
    }
    quicmesh::testkit::tls::load_identity(&paths.server_cert, &paths.server_key)
        .expect("allocator identity loads");
    let before = std::fs::read(&paths.ca_cert).expect("read CA");

    let second = run(&[]);
    assert!(!second.status.success(), "overwrite must be refused");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&paths.ca_cert).expect("read CA"),
        before,
        "refused run changed files"
    );

    let forced = run(&["--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(
        std::fs::read(&paths.ca_cert).expect("read CA"),
        before,
        "--force regenerates"
    );
}

#[test]
fn worker_with_unreadable_certificate_exits_78_naming_the_file() {
    let dir = common::TempDir::new("cli-badcert");
    let bogus = dir.path().join("worker.pem");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let out = Command::new(common::bin())
        .arg("worker")
        .env_clear()
        .env("QUICMESH_ALLOCATOR_ADDR", "127.0.0.1:9")
        .env("QUICMESH_SERVER_NAME", "localhost")
        .env("QUICMESH_INDEX", "0")
        .env("QUICMESH_TOKEN", "t")
        .env("QUICMESH_CA", &bogus)
        .env("QUICMESH_CERT", &bogus)
        .env("QUICMESH_KEY", dir.path().join("missing.key"))
        .output()
        .expect("run worker");
    assert_eq!(out.status.code(), Some(quicmesh::exit_code::CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bogus.display().to_string()), "{err}");
}
