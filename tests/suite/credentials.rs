//! Credentials of a mesh that spans hosts, with real `quicmesh worker`
//! processes: a certificate per worker (`quicmesh certs issue`) and the
//! identity the allocator reports, private key permissions, rotation by
//! reload without dropping connected workers, and revocation (refused at
//! handshake, connected workers disconnected with their procs failed).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, TestMesh, SOON};
use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig, AllocatorError, Launcher};
use quicmesh::config::{ENV_CERT, ENV_KEY};
use quicmesh::tls::{CertPaths, TlsError};
use quicmesh::ExitReport;

/// Runs `quicmesh certs ARGS`; panics with its stderr unless it succeeds.
fn certs_cli(args: &[&str]) {
    let out = Command::new(common::bin())
        .arg("certs")
        .args(args)
        .output()
        .expect("run quicmesh certs");
    assert!(
        out.status.success(),
        "quicmesh certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issues a worker credential for `name` from the CA of `certs`, by the CLI.
fn issue(certs: &CertPaths, name: &str) -> (PathBuf, PathBuf) {
    let dir = certs.ca_cert.parent().expect("certs dir");
    certs_cli(&["issue", name, "--dir", &dir.display().to_string()]);
    let out = dir.join(quicmesh::tls::ISSUED_DIR);
    (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    )
}

/// A launcher whose worker presents `cert` / `key` instead of the shared
/// development certificate.
fn launcher_with(cert: &Path, key: &Path) -> Launcher {
    TestMesh::launcher()
        .env(ENV_CERT, cert.display().to_string())
        .env(ENV_KEY, key.display().to_string())
}

fn launch_one(mesh: &mut TestMesh, launcher: &Launcher) -> u32 {
    mesh.alloc.launch(launcher, 1, 1).expect("launch")[0]
}

async fn joined(mesh: &mut TestMesh, index: u32) -> AllocEvent {
    mesh.ensure(
        SOON,
        &format!("worker {index} joined"),
        |e| matches!(e, AllocEvent::WorkerJoined { index: i, .. } if *i == index),
    )
    .await
}

fn common_name(event: &AllocEvent) -> Option<String> {
    match event {
        AllocEvent::WorkerJoined { identity, .. } => identity.common_name.clone(),
        _ => None,
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_certificate_is_accepted_and_its_identity_reported() {
    let mut mesh = TestMesh::new("cred-issue").await;
    let (cert, key) = issue(&mesh.certs, "node-a.mesh.test");
    let issued = launch_one(&mut mesh, &launcher_with(&cert, &key));
    let shared = launch_one(&mut mesh, &TestMesh::launcher());
    let issued_event = joined(&mut mesh, issued).await;
    let shared_event = joined(&mut mesh, shared).await;
    mesh.wait_running(2).await;

    assert_eq!(
        common_name(&issued_event).as_deref(),
        Some("node-a.mesh.test")
    );
    assert_eq!(
        common_name(&shared_event).as_deref(),
        Some("quicmesh-worker")
    );
    let (
        AllocEvent::WorkerJoined { identity: a, .. },
        AllocEvent::WorkerJoined { identity: b, .. },
    ) = (&issued_event, &shared_event)
    else {
        unreachable!("matched above")
    };
    assert_eq!(a.sans, ["node-a.mesh.test"]);
    assert_eq!(a.sha256.len(), 64);
    assert_ne!(a.sha256, b.sha256, "two certificates, one fingerprint");
    // The line the allocator logs for the event names the certificate.
    let line = issued_event.to_string();
    assert!(
        line.contains("CN=node-a.mesh.test") && line.contains(&a.sha256[..16]),
        "{line}"
    );
    mesh.stop_all_and_check(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_readable_by_others_are_refused_on_both_sides() {
    // The allocator refuses its own key at bind.
    let (dir, certs) = common::certs("cred-perm");
    std::fs::set_permissions(&certs.server_key, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let err = Allocator::bind(AllocatorConfig::new(&certs))
        .await
        .map(|_| ())
        .expect_err("bind with a world-readable key");
    assert!(
        matches!(&err, AllocatorError::Tls(TlsError::KeyPermissions { path, .. }) if *path == certs.server_key),
        "{err:?}"
    );
    let fix = format!("chmod 600 {}", certs.server_key.display());
    assert!(err.to_string().contains(&fix), "{err}");
    std::fs::set_permissions(&certs.server_key, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");

    // A worker refuses its key and exits with the configuration code.
    let alloc = Allocator::bind(AllocatorConfig::new(&certs))
        .await
        .expect("bind");
    let ticket = alloc.reserve(1);
    let open_key = dir.path().join("open.key");
    copy(&certs.worker_key, &open_key);
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = tokio::process::Command::new(common::bin())
        .arg("worker")
        .envs(ticket.env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(ENV_KEY, &open_key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SOON, out)
        .await
        .expect("worker exits")
        .expect("run worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(quicmesh::exit_code::CONFIG),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("chmod 600 {}", open_key.display())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_to_a_new_ca_without_dropping_connected_workers() {
    let files = TempDir::new("cred-rotate-files");
    let bundle = files.path().join("bundle.pem");
    let server_cert = files.path().join("server.pem");
    let server_key = files.path().join("server.key");
    let (b, c, k) = (bundle.clone(), server_cert.clone(), server_key.clone());
    let mut mesh = TestMesh::with_config("cred-rotate", move |config| {
        copy(&config.ca, &b);
        copy(&config.cert, &c);
        copy(&config.key, &k);
        config.ca = b;
        config.cert = c;
        config.key = k;
    })
    .await;
    let old = mesh.launch(2, 1);
    mesh.wait_running(2).await;

    // Before the reload, a worker of the new CA is refused.
    let (_ca2_dir, ca2) = common::certs("cred-rotate-ca2");
    let refused = launch_one(&mut mesh, &launcher_with(&ca2.worker_cert, &ca2.worker_key));
    let status = mesh.wait_exit(refused, SOON).await;
    assert_eq!(
        status,
        ExitReport::Code(quicmesh::exit_code::UNREACHABLE),
        "{}",
        mesh.log()
    );

    // Bundle CA1 + CA2, and the allocator's certificate from CA2.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&mesh.certs.ca_cert).expect("read"),
        std::fs::read_to_string(&ca2.ca_cert).expect("read")
    );
    std::fs::write(&bundle, both).expect("write bundle");
    copy(&ca2.server_cert, &server_cert);
    copy(&ca2.server_key, &server_key);
    let revoked = mesh.alloc.reload_tls().expect("reload");
    assert!(revoked.is_empty());

    let moved = launch_one(&mut mesh, &launcher_with(&ca2.worker_cert, &ca2.worker_key));
    joined(&mut mesh, moved).await;
    mesh.wait_running(3).await;
    // A worker of the old CA still gets in too (the bundle trusts both).
    let late = launch_one(&mut mesh, &TestMesh::launcher());
    joined(&mut mesh, late).await;
    mesh.wait_running(4).await;
    for index in old {
        mesh.assert_healthy(index);
    }
    mesh.stop_all_and_check(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_broken_file_names_it_and_changes_nothing() {
    let files = TempDir::new("cred-broken-files");
    let server_key = files.path().join("server.key");
    let crl = files.path().join("revoked.crl");
    let (k, r) = (server_key.clone(), crl.clone());
    let mut mesh = TestMesh::with_config("cred-broken", move |config| {
        copy(&config.key, &k);
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        config.key = k;
        config.crl = Some(r);
        let ca_key = CertPaths::in_dir(config.ca.parent().expect("dir")).ca_key;
        quicmesh::tls::revoke_certs(&config.ca, &ca_key, &[], config.crl.as_ref().expect("crl"))
            .expect("empty CRL");
    })
    .await;
    let first = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let good_key = std::fs::read(&server_key).expect("read key");

    // A key that is not a key.
    std::fs::write(
        &server_key,
        "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let err = mesh.alloc.reload_tls().expect_err("broken key accepted");
    assert!(
        err.to_string().contains(&server_key.display().to_string()),
        "{err}"
    );
    std::fs::write(&server_key, &good_key).expect("restore");
    // A revocation list that is not one.
    std::fs::write(&crl, "not a CRL\n").expect("write");
    let err = mesh.alloc.reload_tls().expect_err("broken CRL accepted");
    assert!(
        matches!(&err, AllocatorError::Tls(TlsError::NoCrl { path }) if *path == crl),
        "{err:?}"
    );

    // Nothing changed: the connected worker stays, a new one joins with the
    // old material.
    let second = mesh.launch(1, 1)[0];
    joined(&mut mesh, second).await;
    mesh.wait_running(2).await;
    mesh.assert_healthy(first);
    mesh.stop_all_and_check(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_and_connected_holders_disconnected() {
    let files = TempDir::new("cred-revoke-files");
    let crl = files.path().join("revoked.crl");
    let r = crl.clone();
    let mut mesh = TestMesh::with_config("cred-revoke", move |config| {
        let ca_key = CertPaths::in_dir(config.ca.parent().expect("dir")).ca_key;
        quicmesh::tls::revoke_certs(&config.ca, &ca_key, &[], &r).expect("empty CRL");
        config.crl = Some(r);
    })
    .await;
    let (a_cert, a_key) = issue(&mesh.certs, "node-a");
    let (b_cert, b_key) = issue(&mesh.certs, "node-b");
    let a = launch_one(&mut mesh, &launcher_with(&a_cert, &a_key));
    let b = launch_one(&mut mesh, &launcher_with(&b_cert, &b_key));
    mesh.wait_running(2).await;
    let a_proc = mesh.alloc.procs()[0].clone();
    assert_eq!(mesh.alloc.worker_of(&a_proc), Some(a));

    // Revoke node-a by the CLI, then reload.
    let dir = mesh
        .certs
        .ca_cert
        .parent()
        .expect("dir")
        .display()
        .to_string();
    certs_cli(&[
        "revoke",
        &a_cert.display().to_string(),
        "--dir",
        &dir,
        "--crl",
        &crl.display().to_string(),
    ]);
    let revoked = mesh.alloc.reload_tls().expect("reload");
    assert_eq!(revoked, [a]);
    let reason = mesh.wait_failed(&a_proc, SOON).await;
    assert!(
        reason.contains("certificate revoked") && reason.contains("CN=node-a"),
        "{reason}"
    );
    let status = mesh.wait_exit(a, SOON).await;
    assert_eq!(
        status,
        ExitReport::Code(quicmesh::exit_code::REJECTED),
        "{}",
        mesh.log()
    );
    mesh.assert_healthy(b);

    // node-a cannot come back: its handshake is refused.
    let again = launch_one(&mut mesh, &launcher_with(&a_cert, &a_key));
    let status = mesh.wait_exit(again, SOON).await;
    assert_eq!(
        status,
        ExitReport::Code(quicmesh::exit_code::UNREACHABLE),
        "{}",
        mesh.log()
    );
    mesh.ensure(
        SOON,
        "a refused handshake",
        |e| matches!(e, AllocEvent::WorkerRejected { reason, .. } if reason.to_lowercase().contains("revoked")),
    )
    .await;
    // node-b's certificate still admits a new worker.
    let fresh = launch_one(&mut mesh, &launcher_with(&b_cert, &b_key));
    let _ = fresh;
    mesh.wait_running(3).await;
    mesh.stop_all_and_check(0).await;
}
