//! Workers join, run procs, and exit when and how they are told.

use crate::common;

use std::time::Duration;

use common::{is_state, TestMesh, SOON};
use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig};
use quicmesh::ExitReport;

/// Limits a worker would refuse in its Welcome are refused when the
/// allocator starts, naming the limit, instead of every worker exiting 76.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_refuses_limits_every_worker_would_refuse() {
    let (_dir, certs) = common::certs("limits");
    let mut config = AllocatorConfig::new(&certs);
    config.limits.max_frame = 1024;
    let err = Allocator::bind(config)
        .await
        .err()
        .expect("a 1 KiB frame limit must be refused");
    assert!(err.to_string().contains("limits.max_frame"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_run_then_exit_with_commanded_codes() {
    let mut mesh = TestMesh::new("lifecycle").await;
    let workers = mesh.launch(4, 2);
    mesh.wait_running(8).await;
    assert_eq!(mesh.alloc.connected_workers(), workers);

    // Exit(9) ends one worker at once; its procs stop (not fail).
    mesh.alloc
        .exit_worker(workers[0], 9)
        .expect("exit worker 0");
    assert_eq!(mesh.wait_exit(workers[0], SOON).await, ExitReport::Code(9));
    mesh.ensure(SOON, "worker 0 left", |e| {
        matches!(e, AllocEvent::WorkerLeft { index: 0, .. })
    })
    .await;
    let states = mesh.states_of(workers[0]);
    assert!(
        states.iter().all(|s| s.word() != "failed"),
        "Exit(9) is an orderly end, not a failure: {states:?}"
    );

    // The others keep running.
    mesh.collect_for(Duration::from_secs(1)).await;
    for &w in &workers[1..] {
        mesh.assert_healthy(w);
    }

    // StopAndExit(7): every remaining worker stops its procs and exits 7.
    mesh.stop_all_and_check(7).await;
    for &w in &workers[1..] {
        let states = mesh.states_of(w);
        let stopped = states.iter().filter(|s| s.word() == "stopped").count();
        assert_eq!(stopped, 2, "worker {w} states: {states:?}");
        assert!(
            states.iter().all(|s| s.word() != "failed"),
            "worker {w}: {states:?}"
        );
    }
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procs_can_be_added_to_a_running_worker() {
    let mut mesh = TestMesh::new("addproc").await;
    let w = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let extra = mesh.alloc.start_proc(w).expect("start proc");
    mesh.wait_for(SOON, "extra proc running", |e| {
        matches!(e, AllocEvent::Proc { proc_id, .. } if *proc_id == extra) && is_state(e, "running")
    })
    .await;
    assert!(
        mesh.alloc.start_proc(99).is_err(),
        "unknown worker must be refused"
    );
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_allocator_kills_its_workers() {
    let mut mesh = TestMesh::new("dropalloc").await;
    let workers = mesh.launch(2, 1);
    mesh.wait_running(2).await;
    let pids: Vec<u32> = workers.iter().map(|w| mesh.pid(*w)).collect();
    drop(mesh.alloc);
    common::assert_gone(&pids, Duration::from_secs(10)).await;
}
