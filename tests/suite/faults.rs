//! Workers under faults: lost packets, partitions, signals.

use crate::common;

use std::time::{Duration, Instant};

use common::{is_state, signal, TestMesh, SOON};
use quicmesh::allocator::AllocEvent;
use quicmesh::ExitReport;

/// Heartbeat timeout (default) plus a margin generous enough for a loaded machine.
const DETECT: Duration = Duration::from_millis(1500 + 8000);

fn failed_with(e: &AllocEvent, worker: u32, reason: &str) -> bool {
    matches!(e, AllocEvent::Proc { worker: w, state, .. }
        if *w == worker && state.word() == "failed" && state.end().is_some_and(|r| r.to_string().contains(reason)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_worker_exits_on_lost_heartbeats_others_unaffected() {
    let mut mesh = TestMesh::new("blackhole").await;
    let (workers, relays) = mesh.launch_behind_relays(3, 1).await;
    mesh.wait_running(3).await;

    let start = Instant::now();
    relays[1].set_blackhole(true);
    let victim = workers[1];
    mesh.wait_for(DETECT, "heartbeat-lost failure", |e| {
        failed_with(e, victim, "heartbeat lost")
    })
    .await;
    let detected = start.elapsed();
    let status = mesh.wait_exit(victim, DETECT).await;
    assert_eq!(
        status,
        ExitReport::Code(quicmesh::exit_code::HEARTBEAT_LOST),
        "{}",
        mesh.log()
    );
    assert!(
        detected >= Duration::from_millis(1000),
        "declared dead too early: {detected:?}"
    );
    assert!(
        start.elapsed() < DETECT,
        "worker exit took {:?}",
        start.elapsed()
    );

    mesh.end_with_healthy(&[workers[0], workers[2]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_loss_for_twenty_seconds_is_survived() {
    let mut mesh = TestMesh::new("loss").await;
    let (workers, relays) = mesh.launch_behind_relays(2, 1).await;
    mesh.wait_running(2).await;
    for r in &relays {
        r.set_loss(0.2);
    }
    mesh.collect_for(Duration::from_secs(20)).await;
    for &w in &workers {
        mesh.assert_healthy(w);
    }
    for r in &relays {
        let s = r.stats();
        assert!(
            s.dropped > 0 && s.forwarded > s.dropped,
            "relay did not apply loss: {s:?}"
        );
    }
    // Orderly stop still works through the lossy path.
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_procs_in_order_and_exits_zero() {
    let mut mesh = TestMesh::new("sigterm").await;
    let workers = mesh.launch(2, 2);
    mesh.wait_running(4).await;
    signal(mesh.pid(workers[0]), libc::SIGTERM);
    assert_eq!(
        mesh.wait_exit(workers[0], SOON).await,
        ExitReport::Code(0),
        "{}",
        mesh.log()
    );
    let states = mesh.states_of(workers[0]);
    assert_eq!(
        states.iter().filter(|s| s.word() == "stopped").count(),
        2,
        "{states:?}"
    );
    assert!(states.iter().all(|s| s.word() != "failed"), "{states:?}");
    mesh.end_with_healthy(&[workers[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_is_reported_failed_and_others_keep_running() {
    let mut mesh = TestMesh::new("sigkill").await;
    let workers = mesh.launch(3, 1);
    mesh.wait_running(3).await;
    signal(mesh.pid(workers[1]), libc::SIGKILL);
    let victim = workers[1];
    mesh.wait_for(DETECT, "failure of the killed worker", |e| {
        matches!(e, AllocEvent::Proc { worker, .. } if *worker == victim) && is_state(e, "failed")
    })
    .await;
    assert_eq!(
        mesh.wait_exit(victim, SOON).await,
        ExitReport::Signal(libc::SIGKILL)
    );
    mesh.end_with_healthy(&[workers[0], workers[2]]).await;
}

/// Whether, in `seen`, each of worker `index`'s `procs` procs ended and the
/// worker left before its exit was reported (and the exit was reported).
fn ended_before_exit(seen: &[AllocEvent], index: u32, procs: usize) -> Result<(), String> {
    let exit = seen
        .iter()
        .position(|e| matches!(e, AllocEvent::WorkerExited { index: i, .. } if *i == index))
        .ok_or(format!("worker {index}: no exit reported"))?;
    let before = &seen[..exit];
    let ended = before
        .iter()
        .filter(|e| matches!(e, AllocEvent::Proc { worker, state, .. } if *worker == index && state.is_terminal()))
        .count();
    if ended != procs {
        return Err(format!(
            "worker {index}: exit reported after {ended} of {procs} proc ends"
        ));
    }
    if !before
        .iter()
        .any(|e| matches!(e, AllocEvent::WorkerLeft { index: i, .. } if *i == index))
    {
        return Err(format!("worker {index}: exit reported before WorkerLeft"));
    }
    Ok(())
}

/// A worker's exit comes after the end of each of its procs and after its
/// `WorkerLeft`, so a reader that stops at the exit (as the demo's summary
/// does) has seen how every proc ended: for a SIGKILLed worker (reaped at
/// once, before its session has noticed anything) and for workers stopped
/// in order (whose sessions end while the reaper may already hold the exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_exit_comes_after_the_end_of_its_procs() {
    let mut mesh = TestMesh::new("exit-order").await;
    let workers = mesh.launch(4, 3);
    mesh.wait_running(12).await;
    let victim = workers[0];
    signal(mesh.pid(victim), libc::SIGKILL);
    assert_eq!(
        mesh.wait_exit(victim, DETECT).await,
        ExitReport::Signal(libc::SIGKILL)
    );
    // Checked on what was seen up to and including the exit.
    if let Err(e) = ended_before_exit(&mesh.seen, victim, 3) {
        panic!("{e}\n{}", mesh.log());
    }
    mesh.stop_all_and_check(0).await;
    for &w in &workers[1..] {
        if let Err(e) = ended_before_exit(&mesh.seen, w, 3) {
            panic!("{e}\n{}", mesh.log());
        }
    }
    mesh.finish().await;
}

/// The same for workers started by one group command (as `srun` starts
/// them): when the command ends, each of its workers' exits comes after
/// the end of that worker's procs and its `WorkerLeft`. The command here is
/// a shell that starts 3 workers with an index variable, as an engine
/// would, and writes their pids; they are SIGKILLed, so only the reaper of
/// the group tells their sessions anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commands_exits_come_after_the_end_of_its_workers_procs() {
    let dir = common::TempDir::new("exit-order-group");
    let pids = dir.path().join("pids");
    let mut mesh = TestMesh::new("exit-order-group").await;
    let script = r#"i=0; while [ $i -lt {n} ]; do GROUP_INDEX=$i "$0" worker & echo $! >> "$1"; i=$((i+1)); done; wait"#;
    let launcher = quicmesh::allocator::Launcher::group("sh")
        .args(["-c", script, common::bin()])
        .arg(pids.display().to_string())
        .index_from("GROUP_INDEX");
    let workers = mesh.alloc.launch_group(&launcher, 3, 2).expect("group");
    mesh.wait_running(6).await;
    let listed = std::fs::read_to_string(&pids).expect("pid file");
    let listed: Vec<u32> = listed
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for &pid in &listed {
        signal(pid, libc::SIGKILL);
    }
    for &w in &workers {
        mesh.wait_exit(w, DETECT).await;
    }
    for &w in &workers {
        if let Err(e) = ended_before_exit(&mesh.seen, w, 2) {
            panic!("{e}\n{}", mesh.log());
        }
    }
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_worker_is_detected_killed_and_reaped() {
    let mut mesh = TestMesh::new("sigstop").await;
    let workers = mesh.launch(2, 1);
    mesh.wait_running(2).await;
    let victim = workers[0];
    let pid = mesh.pid(victim);
    signal(pid, libc::SIGSTOP);
    mesh.wait_for(DETECT, "heartbeat-lost failure", |e| {
        failed_with(e, victim, "heartbeat lost")
    })
    .await;
    // A frozen worker cannot exit by itself: the allocator kills and reaps it.
    assert_eq!(
        mesh.wait_exit(victim, DETECT).await,
        ExitReport::Signal(libc::SIGKILL)
    );
    assert!(common::process_gone(pid));
    mesh.end_with_healthy(&[workers[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_and_a_short_partition_are_survived() {
    let mut mesh = TestMesh::new("rebind").await;
    let (workers, relays) = mesh.launch_behind_relays(1, 1).await;
    mesh.wait_running(1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let counter = client
        .spawn::<quicmesh::actor::builtin::Counter>(&proc_id, "counter", &())
        .await
        .expect("spawn");
    common::count_in_order(&client, &counter, 1_000, SOON).await;

    // The worker's address changes, as behind a NAT that rebinds.
    relays[0].rebind().await.expect("rebind");
    common::count_in_order_from(&client, &counter, 1_000, 2_000, SOON).await;

    // A partition shorter than the heartbeat timeout heals without a failure.
    relays[0].set_blackhole(true);
    tokio::time::sleep(Duration::from_millis(700)).await;
    relays[0].set_blackhole(false);
    common::count_in_order_from(&client, &counter, 2_000, 3_000, SOON).await;

    mesh.end_with_healthy(&[workers[0]]).await;
}
