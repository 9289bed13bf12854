//! Helpers of the engine tests (tests/engines_*.rs): a `quicmesh demo`
//! child whose output is kept, process lookups through /proc, and the
//! ring run through every proc.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use quicmesh::actor::builtin::{RingMsg, RingNode};
use quicmesh::allocator::Allocator;
use quicmesh::ProcMesh;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ChildGuard, TempDir, SOON};

/// A running `quicmesh demo` with its output lines, and its workers' pids.
pub struct Demo {
    pub child: ChildGuard,
    pub pids: Vec<u32>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Starts `quicmesh demo --hold 600 --workers N --procs-per-worker 1` with
/// `extra` flags, certificates in `dir`, and waits (SOON) for "mesh up" and
/// every worker's join line (its pid).
pub async fn start_demo(dir: &TempDir, workers: usize, extra: &[&str]) -> Demo {
    let mut child = tokio::process::Command::new(super::bin())
        .args([
            "demo",
            "--hold",
            "600",
            "--procs-per-worker",
            "1",
            "--rounds",
            "1",
        ])
        .args(["--pings", "5", "--workers"])
        .arg(workers.to_string())
        .arg("--certs")
        .arg(dir.path().join("certs"))
        .args(extra)
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
    let out_lines = Arc::new(Mutex::new(Vec::new()));
    let err_lines = Arc::new(Mutex::new(Vec::new()));
    {
        let err_lines = err_lines.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_lines.lock().expect("lines").push(line);
            }
        });
    }
    {
        let out_lines = out_lines.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                out_lines.lock().expect("lines").push(line);
            }
        });
    }
    let mut demo = Demo {
        child: guard,
        pids: Vec::new(),
        stdout: out_lines,
        stderr: err_lines,
    };
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let up = demo
            .stdout
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.starts_with("mesh up"));
        demo.pids = demo
            .stderr
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| !l.starts_with("[worker"))
            .filter_map(|l| l.split_once("joined (pid ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
            .collect();
        if up && demo.pids.len() == workers {
            return demo;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo did not bring up {workers} workers; stdout:\n{}\nstderr:\n{}",
            demo.stdout.lock().expect("lines").join("\n"),
            demo.stderr.lock().expect("lines").join("\n"),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The argument list of every live process, by pid.
pub fn all_cmdlines() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            out.push((pid, args));
        }
    }
    out
}

/// The initial environment of process `pid` (what /proc shows).
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `text` holds a run of 64 hex digits: the shape of a join token
/// or of a group secret.
pub fn has_secret_shape(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run += 1;
            if run >= 64 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Runs a token `rounds` times round a ring of one node per proc and checks
/// the sum: every proc took part.
pub async fn ring_through_every_proc(alloc: &Allocator, rounds: u32) {
    let client = alloc.client();
    let procs = ProcMesh::of(alloc);
    let n = procs.len();
    assert!(n > 0, "no procs");
    let ring = procs
        .spawn::<RingNode>(client, "ring", |rank| rank as u32)
        .await
        .expect("spawn ring");
    let links = ring.actors().iter().enumerate().map(|(rank, node)| {
        let next = ring.actors()[(rank + 1) % n].clone();
        node.ask(client, move |ack| RingMsg::Link(next, ack))
    });
    for linked in join_all(links).await {
        linked.expect("link ring");
    }
    let hops = rounds * n as u32;
    let sum: u64 = ring
        .get(0)
        .expect("first node")
        .ask(client, |done| RingMsg::Token { hops, sum: 0, done })
        .await
        .expect("token round");
    let expected: u64 = (0..=u64::from(hops)).map(|k| k % n as u64).sum();
    assert_eq!(sum, expected, "ring sum");
}
