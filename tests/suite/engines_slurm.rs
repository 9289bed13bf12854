//! quicmesh on a real Slurm: one `srun -n 8 --overcommit` starts every
//! worker (the group form of the launcher), each reading its index from
//! `SLURM_PROCID` and its settings from the environment srun forwards; the
//! allocator listens on every interface.
//!
//! Needs a running Slurm whose slurm.conf is in `SLURM_CONF`:
//! `scripts/test-engines` starts one on this host, runs these tests with
//! `--include-ignored`, and stops it. Workers dial the advertised address
//! 127.0.0.1 (the allocator listens on 0.0.0.0): the single-node cluster
//! runs on this host, and tests send traffic only to loopback.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::engines::{ring_through_every_proc, start_demo};
use common::{assert_gone, signal, TempDir, TestMesh, SOON};
use quicmesh::allocator::{AllocEvent, Launcher, ProcState};
use quicmesh::ExitReport;

const WORKERS: u32 = 8;

/// The cluster's configuration, or a panic saying how to get one.
fn slurm_conf() -> String {
    let conf = std::env::var("SLURM_CONF").unwrap_or_default();
    assert!(
        !conf.is_empty() && std::path::Path::new(&conf).exists(),
        "SLURM_CONF does not name a slurm.conf ({conf:?}): run these tests through scripts/test-engines"
    );
    conf
}

/// A job name no other test uses.
fn job_name(tag: &str) -> String {
    format!("qm-{tag}-{}", std::process::id())
}

/// The ids of the jobs named `name` that squeue lists.
fn jobs_named(name: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%A", "-n", name])
        .output()
        .expect("run squeue");
    assert!(out.status.success(), "squeue failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Waits until no job named `name` is left.
async fn wait_no_job(name: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !jobs_named(name).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {name} still listed by squeue after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Cancels the jobs named `name` when dropped: nothing outlives a failed test.
struct CancelOnDrop(String);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("scancel").args(["-n", &self.0]).status();
    }
}

/// `srun -n {n} --overcommit` of this crate's `quicmesh worker`.
fn srun(name: &str) -> Launcher {
    Launcher::group("srun")
        .args([
            "-n",
            "{n}",
            "--overcommit",
            "--label",
            "--kill-on-bad-exit=0",
        ])
        .args(["-J", name, common::bin(), "worker"])
        .index_from("SLURM_PROCID")
        .env("RUST_LOG", "info")
}

/// An allocator on every interface that tells its workers 127.0.0.1.
async fn mesh(tag: &str) -> TestMesh {
    slurm_conf();
    TestMesh::with_config(tag, |c| {
        c.listen = "0.0.0.0:0".parse().expect("addr");
        c.advertise = Some("127.0.0.1".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Slurm: run scripts/test-engines"]
async fn one_srun_starts_every_worker_runs_the_ring_and_stops_in_order() {
    let name = job_name("ring");
    let _cancel = CancelOnDrop(name.clone());
    let mut mesh = mesh("slurm-ring").await;
    assert!(mesh.alloc.local_addr().ip().is_unspecified());
    let indexes = mesh
        .alloc
        .launch_group(&srun(&name), WORKERS, 1)
        .expect("srun");
    assert_eq!(indexes, (0..WORKERS).collect::<Vec<_>>());
    mesh.wait_running(WORKERS as usize).await;
    assert_eq!(mesh.alloc.connected_workers(), indexes);
    // Every worker is a task of the one job.
    assert_eq!(jobs_named(&name).len(), 1, "one job for all workers");

    ring_through_every_proc(&mesh.alloc, 3).await;

    let exits = mesh.alloc.stop_and_wait(0, SOON).await;
    assert_eq!(
        exits,
        indexes
            .iter()
            .map(|i| (*i, ExitReport::Code(0)))
            .collect::<Vec<_>>(),
        "srun exits 0 once every task exited 0"
    );
    mesh.collect_for(Duration::from_millis(200)).await;
    for index in &indexes {
        let left = mesh.seen.iter().find_map(|e| match e {
            AllocEvent::WorkerLeft { index: i, end } if i == index => Some(end.clone()),
            _ => None,
        });
        let left = left.unwrap_or_else(|| panic!("worker {index} never left\n{}", mesh.log()));
        assert!(!left.is_failure(), "worker {index}: {left:?}");
    }
    for p in mesh.alloc.procs() {
        assert!(
            matches!(mesh.alloc.proc_state(&p), Some(ProcState::Stopped { .. })),
            "{p}: {:?}",
            mesh.alloc.proc_state(&p)
        );
    }
    wait_no_job(&name, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Slurm: run scripts/test-engines"]
async fn scancel_makes_every_worker_leave() {
    let name = job_name("scancel");
    let _cancel = CancelOnDrop(name.clone());
    let mut mesh = mesh("slurm-scancel").await;
    let indexes = mesh
        .alloc
        .launch_group(&srun(&name), WORKERS, 1)
        .expect("srun");
    mesh.wait_running(WORKERS as usize).await;
    let jobs = jobs_named(&name);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let status = Command::new("scancel")
        .arg(&jobs[0])
        .status()
        .expect("scancel");
    assert!(status.success());

    for index in &indexes {
        mesh.wait_exit(*index, SOON).await;
    }
    // Every proc ended (failed: the workers were killed, not told), and
    // every worker left.
    mesh.collect_for(Duration::from_millis(200)).await;
    for p in mesh.alloc.procs() {
        let state = mesh.alloc.proc_state(&p);
        assert!(
            state.as_ref().is_some_and(|s| s.is_terminal()),
            "{p}: {state:?}\n{}",
            mesh.log()
        );
    }
    for index in &indexes {
        assert!(
            mesh.seen
                .iter()
                .any(|e| matches!(e, AllocEvent::WorkerLeft { index: i, .. } if i == index)),
            "worker {index} did not leave\n{}",
            mesh.log()
        );
    }
    assert!(mesh.alloc.connected_workers().is_empty());
    wait_no_job(&name, SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Slurm: run scripts/test-engines"]
async fn sigkill_of_the_allocator_leaves_no_task_running() {
    slurm_conf();
    let name = job_name("sigkill");
    let _cancel = CancelOnDrop(name.clone());
    let dir = TempDir::new("slurm-sigkill");
    let group = format!("srun -n {{n}} --overcommit --kill-on-bad-exit=0 -J {name}");
    let demo = start_demo(
        &dir,
        WORKERS as usize,
        &[
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "127.0.0.1",
            "--group-launch",
            &group,
        ],
    )
    .await;
    assert_eq!(jobs_named(&name).len(), 1);
    signal(demo.child.id(), libc::SIGKILL);
    // Heartbeat timeout (1.5 s) plus a generous margin.
    assert_gone(&demo.pids, Duration::from_secs(15)).await;
    wait_no_job(&name, Duration::from_secs(15)).await;
    let left: Vec<u32> = common::engines::all_cmdlines()
        .into_iter()
        .filter(|(pid, _)| {
            common::engines::environ(*pid)
                .iter()
                .any(|v| *v == format!("SLURM_JOB_NAME={name}"))
        })
        .map(|(pid, _)| pid)
        .collect();
    assert!(left.is_empty(), "processes of job {name} left: {left:?}");
}
