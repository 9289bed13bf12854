//! quicmesh through a real OpenSSH server: workers started with `ssh HOST
//! quicmesh worker --secrets-stdin`, their settings on standard input (a
//! stock server forwards no environment), the allocator listening on every
//! interface.
//!
//! Needs the private sshd of scripts/sshd-up, found through
//! `QUICMESH_SSH_DIR` (`ssh -F $QUICMESH_SSH_DIR/ssh_config quicmesh-test
//! CMD`): `scripts/test-engines` starts it, runs these tests with
//! `--include-ignored`, and stops it. The server listens on 127.0.0.1 and
//! workers dial the advertised 127.0.0.1: traffic stays on loopback.

use crate::common;

use std::time::Duration;

use common::engines::{
    all_cmdlines, environ, has_secret_shape, ring_through_every_proc, start_demo,
};
use common::{assert_gone, bin, signal, TempDir, TestMesh, SOON};
use quicmesh::allocator::Launcher;
use quicmesh::ExitReport;

/// The ssh_config of the test server, or a panic saying how to get one.
fn ssh_config() -> String {
    let dir = std::env::var("QUICMESH_SSH_DIR").unwrap_or_default();
    let config = format!("{dir}/ssh_config");
    assert!(
        !dir.is_empty() && std::path::Path::new(&config).exists(),
        "QUICMESH_SSH_DIR does not name a folder with ssh_config ({dir:?}): run these tests through scripts/test-engines"
    );
    config
}

/// A marker variable set on the remote command line (not a secret), to
/// tell this test's workers from any other.
fn tag(name: &str) -> String {
    format!("QM_TEST_TAG={name}-{}", std::process::id())
}

/// Pids of live processes whose initial environment holds `var`.
fn pids_with_env(var: &str) -> Vec<u32> {
    all_cmdlines()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| environ(*pid).iter().any(|v| v == var))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test sshd: run scripts/test-engines"]
async fn workers_through_ssh_get_their_secrets_on_stdin_and_none_in_argv() {
    let config = ssh_config();
    let tag = tag("argv");
    let mut mesh = TestMesh::with_config("ssh-argv", |c| {
        c.listen = "0.0.0.0:0".parse().expect("addr");
        c.advertise = Some("127.0.0.1".into());
    })
    .await;
    let launcher = Launcher::program("ssh")
        .args(["-F", &config, "quicmesh-test", "env", "RUST_LOG=info", &tag])
        .args([bin(), "worker", "--secrets-stdin"])
        .secrets_stdin()
        .remote();
    let indexes = mesh.alloc.launch(&launcher, 3, 1).expect("launch via ssh");
    mesh.wait_running(3).await;

    // While they run: no command line on the machine holds a secret, and
    // what was checked includes the three ssh clients and the three workers.
    let cmdlines = all_cmdlines();
    for (pid, args) in &cmdlines {
        let line = args.join(" ");
        assert!(
            !has_secret_shape(&line),
            "pid {pid} has a secret in its argv: {line}"
        );
        assert!(!line.contains("QUICMESH_"), "pid {pid}: {line}");
    }
    let clients = cmdlines
        .iter()
        .filter(|(_, a)| a.first().is_some_and(|p| p == "ssh") && a.contains(&tag))
        .count();
    assert_eq!(clients, 3, "ssh clients of this test");
    let workers = pids_with_env(&tag);
    let workers: Vec<u32> = workers
        .into_iter()
        .filter(|pid| {
            cmdlines
                .iter()
                .any(|(p, a)| p == pid && a.len() == 3 && a[0] == bin() && a[1] == "worker")
        })
        .collect();
    assert_eq!(workers.len(), 3, "workers of this test");
    for pid in &workers {
        let env = environ(*pid);
        assert!(env.iter().all(|v| !v.starts_with("QUICMESH_")), "{env:?}");
        assert!(
            env.iter().any(|v| v.starts_with("SSH_CONNECTION=")),
            "started by sshd"
        );
    }

    ring_through_every_proc(&mesh.alloc, 2).await;
    let exits = mesh.alloc.stop_and_wait(0, SOON).await;
    assert_eq!(
        exits,
        indexes
            .iter()
            .map(|i| (*i, ExitReport::Code(0)))
            .collect::<Vec<_>>(),
        "ssh exits with the remote worker's code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test sshd: run scripts/test-engines"]
async fn output_comes_back_prefixed_and_a_killed_allocator_leaves_no_worker() {
    let config = ssh_config();
    let tag = tag("kill");
    let dir = TempDir::new("ssh-kill");
    let launch = format!("ssh -F {config} quicmesh-test env RUST_LOG=info {tag}");
    let demo = start_demo(
        &dir,
        2,
        &[
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "127.0.0.1",
            "--launch",
            &launch,
        ],
    )
    .await;
    // Each worker's log, printed on the remote host, came back through ssh
    // with its index in front.
    let deadline = tokio::time::Instant::now() + SOON;
    for index in 0..2 {
        let prefix = format!("[worker {index}] ");
        loop {
            let found = demo
                .stderr
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains("joined"));
            if found {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line from worker {index} came back prefixed:\n{}",
                demo.stderr.lock().expect("lines").join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let workers = pids_with_env(&tag);
    for pid in &demo.pids {
        assert!(
            workers.contains(pid),
            "worker pid {pid} is not one ssh started"
        );
    }
    signal(demo.child.id(), libc::SIGKILL);
    // Heartbeat timeout (1.5 s) plus a generous margin.
    assert_gone(&demo.pids, Duration::from_secs(15)).await;
    let left = pids_with_env(&tag);
    assert!(left.is_empty(), "processes of this test left: {left:?}");
}
