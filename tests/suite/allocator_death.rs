//! Workers never outlive their allocator: `quicmesh demo` killed or frozen.

use crate::common;

use std::time::Duration;

use common::{assert_gone, signal, ChildGuard, TempDir};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `quicmesh demo --hold 600` with `workers` workers and returns it with the workers' pids.
///
/// The pids come from the allocator's log (stderr: "worker 0 joined (pid
/// 1234 on host, from addr)"); "mesh up" comes on stdout.
async fn start_demo(dir: &TempDir, workers: usize) -> (ChildGuard, Vec<u32>) {
    let mut child = tokio::process::Command::new(common::bin())
        .args([
            "demo",
            "--hold",
            "600",
            "--procs-per-worker",
            "1",
            "--workers",
        ])
        .arg(workers.to_string())
        .arg("--certs")
        .arg(dir.path().join("certs"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("demo stdout");
    let stderr = child.stderr.take().expect("demo stderr");
    let guard = ChildGuard(Some(child));
    let (pid_tx, mut pid_rx) = tokio::sync::mpsc::unbounded_channel();
    // Keeps draining stderr for the demo's whole life, so it never blocks on a full pipe.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split_once("joined (pid ").map(|(_, r)| r) {
                let pid: Option<u32> = rest.split_whitespace().next().and_then(|p| p.parse().ok());
                let _ = pid_tx.send(pid.expect("pid in join line"));
            }
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let up = tokio::time::timeout(common::SOON, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("mesh up") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(up, Ok(true)), "demo did not bring the mesh up");
    let mut pids = Vec::new();
    while pids.len() < workers {
        match tokio::time::timeout(common::SOON, pid_rx.recv()).await {
            Ok(Some(pid)) => pids.push(pid),
            other => panic!("only {} of {workers} join lines ({other:?})", pids.len()),
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (guard, pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_allocator_leaves_no_worker_behind() {
    let dir = TempDir::new("allockill");
    let (mut demo, pids) = start_demo(&dir, 3).await;
    signal(demo.id(), libc::SIGKILL);
    demo.wait(common::SOON).await;
    assert_gone(&pids, Duration::from_millis(1500 + 8000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_allocator_loses_its_workers_to_heartbeat_timeout() {
    let dir = TempDir::new("allocstop");
    let (mut demo, pids) = start_demo(&dir, 3).await;
    signal(demo.id(), libc::SIGSTOP);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        assert_gone(&pids, Duration::from_millis(1500 + 8000)),
    )
    .await;
    signal(demo.id(), libc::SIGKILL);
    demo.wait(common::SOON).await;
    result.expect("assert_gone finished");
}
