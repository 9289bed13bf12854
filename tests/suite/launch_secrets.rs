//! Secrets stay off command lines and out of a worker's environment; group
//! launches and an allocator listening on every interface, all with real
//! `quicmesh` processes on this host.

use crate::common;

use std::process::Stdio;

use common::{bin, certs, TempDir, TestMesh, SOON};
use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig, AllocatorError, Launcher};
use quicmesh::testkit::actors::{EnvProbe, EnvProbeMsg};
use quicmesh::ExitReport;

/// The environment an [`EnvProbe`] on worker `index`'s first proc reports:
/// its own variables, then (after `--- child`) those of a program it started.
async fn worker_env(mesh: &TestMesh, index: u32) -> (Vec<String>, Vec<String>) {
    let proc_id = mesh
        .alloc
        .procs()
        .into_iter()
        .find(|p| mesh.alloc.worker_of(p) == Some(index))
        .expect("a proc on the worker");
    let client = mesh.alloc.client();
    let probe = client
        .spawn::<EnvProbe>(&proc_id, "env", &())
        .await
        .expect("spawn env probe");
    let lines = probe
        .ask(client, EnvProbeMsg::Report)
        .await
        .expect("env report");
    let split = lines
        .iter()
        .position(|l| l == "--- child")
        .expect("child marker");
    (lines[..split].to_vec(), lines[split + 1..].to_vec())
}

fn assert_scrubbed(own: &[String], child: &[String]) {
    for line in own.iter().chain(child) {
        assert!(
            !line.starts_with("QUICMESH_"),
            "left in the worker's environment: {line}"
        );
    }
    // The probe did read an environment: the launcher's own variable is there.
    assert!(own.iter().any(|l| l == "RUST_LOG=info"), "{own:?}");
    assert!(child.iter().any(|l| l == "RUST_LOG=info"), "{child:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_scrub_quicmesh_variables_with_either_delivery() {
    let mut mesh = TestMesh::new("scrub").await;
    let by_env = mesh
        .alloc
        .launch(&TestMesh::launcher(), 1, 1)
        .expect("launch with environment");
    let by_stdin = mesh
        .alloc
        .launch(&TestMesh::launcher().secrets_stdin(), 1, 1)
        .expect("launch with stdin");
    mesh.wait_running(2).await;
    for index in [by_env[0], by_stdin[0]] {
        let (own, child) = worker_env(&mesh, index).await;
        assert_scrubbed(&own, &child);
    }
    // The stdin worker started with only the marker variable: its initial
    // environment (what /proc shows) holds no token either.
    let pid = mesh.pid(by_stdin[0]);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    let names: Vec<&str> = environ
        .split('\0')
        .filter(|v| v.starts_with("QUICMESH_"))
        .collect();
    assert_eq!(names, vec!["QUICMESH_SECRETS_STDIN=1"]);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert_eq!(cmdline, format!("{}\0worker\0", bin()).into_bytes());
    mesh.stop_all_and_check(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_that_ask_for_a_secret_are_refused_before_anything_starts() {
    let (_dir, certs) = certs("refuse");
    let alloc = Allocator::bind(AllocatorConfig::new(&certs))
        .await
        .expect("bind");
    for (launcher, says) in [
        (
            Launcher::program("ssh").args(["node", "quicmesh", "worker", "--token={token}"]),
            "{token}",
        ),
        (
            Launcher::program("ssh").args(["node", "env", "{env}", "w"]),
            "{env}",
        ),
        (Launcher::group("srun").arg("w"), "index_from"),
    ] {
        let err = alloc.launch(&launcher, 2, 1).expect_err(says);
        assert!(matches!(err, AllocatorError::Launch(_)), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
    }
    let err = alloc
        .launch_group(&Launcher::program(bin()).arg("worker"), 2, 1)
        .expect_err("per-worker form");
    assert!(err.to_string().contains("Launcher::group"), "{err}");
    assert!(alloc.procs().is_empty(), "nothing was reserved");
    assert_eq!(alloc.reserve(0).index, 0, "no index was used");
}

/// A shell as the "engine": it starts `{n}` copies of `quicmesh worker`,
/// each with its rank in `MY_RANK`, as srun does with `SLURM_PROCID`.
fn shell_group() -> Launcher {
    let script = format!(
        "i=0; while [ $i -lt {{n}} ]; do MY_RANK=$i {} worker & i=$((i+1)); done; wait",
        bin()
    );
    Launcher::group("sh")
        .args(["-c", &script])
        .index_from("MY_RANK")
        .env("RUST_LOG", "info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_launch_admits_every_index_once_with_derived_tokens() {
    let mut mesh = TestMesh::new("group").await;
    // One worker first, so the group's indexes do not start at 0.
    mesh.launch(1, 1);
    let group = mesh
        .alloc
        .launch_group(&shell_group(), 3, 2)
        .expect("launch group");
    assert_eq!(group, vec![1, 2, 3]);
    mesh.wait_running(7).await;
    let mut joined = mesh.alloc.connected_workers();
    joined.sort_unstable();
    assert_eq!(joined, vec![0, 1, 2, 3]);
    let (own, child) = worker_env(&mesh, 2).await;
    assert_scrubbed(&own, &child);
    assert!(own.iter().any(|l| l == "MY_RANK=1"), "{own:?}");

    // The shell exits once its copies have: every index is reported.
    let exits = mesh.alloc.stop_and_wait(0, SOON).await;
    assert_eq!(
        exits,
        (0..4).map(|i| (i, ExitReport::Code(0))).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_command_that_ends_reports_the_workers_that_never_joined() {
    let mut mesh = TestMesh::new("group-gone").await;
    // Copies 0 and 1 start; the "engine" then fails without starting copy 2.
    let script = format!(
        "MY_RANK=0 {bin} worker & MY_RANK=1 {bin} worker & sleep 2; kill -9 $(jobs -p); exit 3",
        bin = bin()
    );
    let launcher = Launcher::group("bash")
        .args(["-c", &script])
        .index_from("MY_RANK");
    let group = mesh.alloc.launch_group(&launcher, 3, 1).expect("launch");
    for index in &group {
        let status = mesh.wait_exit(*index, SOON).await;
        assert_eq!(status, ExitReport::Code(3), "worker {index}");
    }
    // Index 2 never joined, and its slot is closed.
    assert!(!mesh
        .seen
        .iter()
        .any(|e| matches!(e, AllocEvent::WorkerJoined { index: 2, .. })));
    let left: Vec<u32> = mesh
        .seen
        .iter()
        .filter_map(|e| match e {
            AllocEvent::WorkerLeft { index, end } if end.is_failure() => Some(*index),
            _ => None,
        })
        .collect();
    for index in &left {
        assert!(*index < 2, "{left:?}");
    }
}

#[test]
fn demo_listening_on_every_interface_works() {
    let dir = TempDir::new("demo-any");
    let out = std::process::Command::new(bin())
        .args([
            "demo",
            "--workers",
            "2",
            "--procs-per-worker",
            "1",
            "--rounds",
            "1",
        ])
        .args(["--pings", "5", "--listen", "0.0.0.0:0", "--certs"])
        .arg(dir.path().join("certs"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("summary: 2 workers (2 exited 0, 0 exited otherwise, 0 not seen exiting)"),
        "{stdout}"
    );
    assert!(stdout.contains("listening on 0.0.0.0:"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_name_the_certificate_lacks_fails_the_bind_naming_the_fix() {
    let (_dir, certs) = certs("advertise");
    let mut config = AllocatorConfig::new(&certs);
    config.listen = "0.0.0.0:0".parse().expect("addr");
    config.advertise = Some("mesh.example:0".into());
    let err = match Allocator::bind(config.clone()).await {
        Ok(_) => panic!("bind succeeded although the certificate lacks mesh.example"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mesh.example"), "{err}");
    assert!(
        err.contains("quicmesh certs --san mesh.example --force"),
        "{err}"
    );
    // A name the certificate has is accepted, with the bound port.
    config.advertise = Some("127.0.0.1".into());
    let alloc = Allocator::bind(config).await.expect("bind");
    assert_eq!(
        alloc.advertised_addr(),
        format!("127.0.0.1:{}", alloc.local_addr().port())
    );
    assert_eq!(alloc.advertised_server_name(), "127.0.0.1");
    let ticket = alloc.reserve(1);
    let addr = ticket
        .env
        .iter()
        .find(|(n, _)| *n == quicmesh::config::ENV_ALLOCATOR_ADDR)
        .map(|(_, v)| v.clone());
    assert_eq!(addr, Some(alloc.advertised_addr()));
}

#[test]
fn a_bad_line_on_stdin_is_named_by_number_without_its_value() {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["worker", "--secrets-stdin"])
        .env_remove("QUICMESH_ALLOCATOR_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"QUICMESH_INDEX=0\nhunter2-not-a-line\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn settings_that_never_come_on_stdin_end_the_worker_after_the_join_timeout() {
    let started = std::time::Instant::now();
    // stdin is a pipe this test keeps open and never writes to.
    let mut child = std::process::Command::new(bin())
        .args(["worker", "--secrets-stdin", "--join-timeout", "1s"])
        .env_remove("QUICMESH_ALLOCATOR_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker");
    let stdin = child.stdin.take();
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("within 1s"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
