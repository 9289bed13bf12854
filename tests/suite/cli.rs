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

#[test]
fn certs_keeps_the_ca_key_apart_and_issues_per_host_credentials() {
    let dir = common::TempDir::new("cli-issue");
    let certs = dir.path().join("certs");
    let quicmesh = |args: &[&str]| {
        Command::new(common::bin())
            .arg("certs")
            .args(args)
            .output()
            .expect("run quicmesh certs")
    };
    let d = certs.display().to_string();
    let made = quicmesh(&["--dir", &d]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The CA key is in its own 0700 folder, not among the files handed out.
    let ca_dir = certs.join(quicmesh::tls::CA_KEY_DIR);
    let mode = std::fs::metadata(&ca_dir)
        .expect("ca dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    assert!(ca_dir.join("ca.key").is_file());
    assert!(!certs.join("ca.key").exists());
    let mut handed_out: Vec<String> = std::fs::read_dir(&certs)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    handed_out.sort();
    assert_eq!(
        handed_out,
        [
            "allocator.key",
            "allocator.pem",
            "ca.pem",
            "worker.key",
            "worker.pem"
        ]
    );

    let issued = quicmesh(&["issue", "host-1.example", "--dir", &d]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let cert = certs.join("workers/host-1.example.pem");
    let key = certs.join("workers/host-1.example.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    quicmesh::testkit::tls::load_identity(&cert, &key).expect("issued identity loads");
    let stdout = String::from_utf8_lossy(&issued.stdout);
    assert!(stdout.contains(&cert.display().to_string()), "{stdout}");

    // Not twice without --force.
    let before = std::fs::read(&cert).expect("read");
    let again = quicmesh(&["issue", "host-1.example", "--dir", &d]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("host-1.example"),
        "{err}"
    );
    assert_eq!(std::fs::read(&cert).expect("read"), before);
    let forced = quicmesh(&["issue", "host-1.example", "--dir", &d, "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_ne!(std::fs::read(&cert).expect("read"), before);

    // A name that cannot be a host, and a CA key that is not there.
    let bad = quicmesh(&["issue", "no/such host", "--dir", &d]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("subject alternative name"));
    let elsewhere = dir.path().join("nowhere");
    let missing = quicmesh(&[
        "issue",
        "host-2",
        "--dir",
        &d,
        "--ca-key-dir",
        &elsewhere.display().to_string(),
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&elsewhere.join("ca.key").display().to_string()),
        "{err}"
    );

    // --ca-key-dir puts the CA key where it is told, and issue finds it there.
    let other = dir.path().join("other");
    let vault = dir.path().join("vault");
    let (o, v) = (other.display().to_string(), vault.display().to_string());
    let made = quicmesh(&["--dir", &o, "--ca-key-dir", &v]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(vault.join("ca.key").is_file());
    assert!(!other.join(quicmesh::tls::CA_KEY_DIR).exists());
    let issued = quicmesh(&["issue", "host-3", "--dir", &o, "--ca-key-dir", &v]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
}

/// Kills and reaps a child process when dropped (also when the test fails).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_external_workers_join_by_the_printed_commands() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = common::TempDir::new("cli-external");
    let mut demo = Reaped(
        Command::new(common::bin())
            .args([
                "demo",
                "--workers",
                "1",
                "--external",
                "2",
                "--procs-per-worker",
                "1",
            ])
            .args(["--rounds", "2", "--pings", "5", "--start-timeout", "60"])
            .arg("--certs")
            .arg(dir.path().join("certs"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    let stdout = demo.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = |what: &str| -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("demo printed no {what} in time"))
    };
    // Read until the demo says it is waiting; collect the commands.
    let mut commands = Vec::new();
    let mut settings_dir = None;
    loop {
        let line = next("external worker commands");
        if let Some(rest) = line.strip_prefix("external workers: settings in ") {
            settings_dir = rest.split(' ').next().map(std::path::PathBuf::from);
        }
        if let Some((_, cmd)) = line.split_once(": run: ") {
            commands.push(cmd.to_owned());
        }
        if line.starts_with("waiting up to") {
            break;
        }
    }
    assert_eq!(commands.len(), 2, "{commands:?}");
    // The settings (tokens) are in files only their owner can read, not on the line.
    let settings_dir = settings_dir.expect("settings folder printed");
    for entry in std::fs::read_dir(&settings_dir).expect("settings dir") {
        let path = entry.expect("entry").path();
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let body = std::fs::read_to_string(&path).expect("read");
        let token = body
            .lines()
            .find_map(|l| l.strip_prefix("QUICMESH_TOKEN="))
            .expect("token in the file");
        let token = token.trim_matches('"');
        assert!(
            commands.iter().all(|c| !c.contains(token)),
            "token on a command line"
        );
    }
    // Run them as a user would paste them.
    let _workers: Vec<Reaped> = commands
        .iter()
        .map(|cmd| {
            Reaped(
                Command::new("sh")
                    .args(["-c", cmd])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start external worker"),
            )
        })
        .collect();
    let mut joined = 0;
    let mut lines = Vec::new();
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if line.starts_with("external worker ") && line.contains(" joined ") {
                    joined += 1;
                }
                lines.push(line);
            }
            Err(_) => {
                if let Some(status) = demo.0.try_wait().expect("wait demo") {
                    break status;
                }
                assert!(Instant::now() < deadline, "demo did not finish: {lines:#?}");
            }
        }
    };
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    assert_eq!(joined, 2, "{lines:#?}");
    assert!(status.success(), "demo failed: {lines:#?}");
    assert!(
        lines.iter().any(|l| l
            .contains("summary: 3 workers (3 exited 0, 0 exited otherwise, 0 not seen exiting)")),
        "{lines:#?}"
    );
}

#[test]
fn demo_reloads_on_sighup_and_disconnects_revoked_workers() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let dir = common::TempDir::new("cli-sighup");
    let certs = dir.path().join("certs");
    let paths = quicmesh::tls::generate_dev_certs(&certs, &quicmesh::tls::DevCertOptions::new())
        .expect("certs");
    let crl = dir.path().join("revoked.crl");
    quicmesh::tls::revoke_certs(&paths.ca_cert, &paths.ca_key, &[], &crl).expect("empty CRL");
    let mut demo = Reaped(
        Command::new(common::bin())
            .args([
                "demo",
                "--workers",
                "1",
                "--procs-per-worker",
                "1",
                "--hold",
                "120",
            ])
            .args(["--rounds", "1", "--pings", "1"])
            .arg("--certs")
            .arg(&certs)
            .arg("--crl")
            .arg(&crl)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    let pid = demo.0.id();
    let stdout = demo.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut wait_line = |prefix: &str| -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {prefix:?} in time; got {seen:#?}"),
            }
        }
    };
    wait_line("actors:");

    // A broken list: the reload fails, names the file, and nothing changes.
    std::fs::write(&crl, "not a CRL\n").expect("write");
    common::signal(pid, libc::SIGHUP);
    let line = wait_line("SIGHUP:");
    assert!(
        line.contains("reload failed") && line.contains(&crl.display().to_string()),
        "{line}"
    );

    // The shared worker certificate revoked: the worker is disconnected.
    std::fs::remove_file(&crl).expect("rm");
    quicmesh::tls::revoke_certs(&paths.ca_cert, &paths.ca_key, &[&paths.worker_cert], &crl)
        .expect("CRL");
    common::signal(pid, libc::SIGHUP);
    let line = wait_line("SIGHUP:");
    assert!(line.contains("revoked workers disconnected: [0]"), "{line}");

    // The demo then reports the failure and exits non-zero.
    common::signal(pid, libc::SIGINT);
    let summary = wait_line("summary:");
    assert!(summary.contains("1 failed"), "{summary}");
    let status = demo.0.wait().expect("wait demo");
    assert!(!status.success());
}
