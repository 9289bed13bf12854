//! Meshes: spawn on every proc, cast, get(rank), stop with hooks; and the demo end to end.

use crate::common;

use std::time::Duration;

use common::{is_state, TestMesh, SOON};
use quicmesh::actor::builtin::{Counter, CounterMsg, CounterReport};
use quicmesh::actor::SendError;
use quicmesh::testkit::actors::{Recorder, RecorderMsg, StopProbe};
use quicmesh::{ProcEnd, ProcMesh, ReturnReason};

/// Asks the recorder until it holds `n` lines ending in `suffix`.
async fn wait_lines(
    recorder: &quicmesh::ActorRef<Recorder>,
    client: &quicmesh::Client,
    suffix: &str,
    n: usize,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let lines: Vec<String> = recorder
            .ask(client, RecorderMsg::Report)
            .await
            .expect("recorder report");
        let matching: Vec<String> = lines.into_iter().filter(|l| l.ends_with(suffix)).collect();
        if matching.len() >= n {
            return matching;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} lines {suffix:?}: {matching:?}",
            matching.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_reaches_every_actor_and_get_addresses_one() {
    let mut mesh = TestMesh::new("cast").await;
    mesh.launch(2, 2);
    mesh.wait_running(4).await;
    let client = mesh.alloc.client().clone();
    let procs = ProcMesh::of(&mesh.alloc);
    assert_eq!(procs.len(), 4);
    let counters = procs
        .spawn::<Counter>(&client, "counter", |_| ())
        .await
        .expect("spawn mesh");
    for seq in 0..3 {
        counters
            .cast(&client, CounterMsg::Count { seq, pad: vec![] })
            .await
            .expect("cast");
    }
    // One more to rank 2 only.
    let two = counters.get(2).expect("rank 2");
    assert_eq!(two.id().proc_id, procs.procs()[2]);
    two.tell(
        &client,
        CounterMsg::Count {
            seq: 3,
            pad: vec![],
        },
    )
    .await
    .expect("tell");
    for (rank, c) in counters.actors().iter().enumerate() {
        let report: CounterReport = c.ask(&client, CounterMsg::Report).await.expect("report");
        let want = if rank == 2 { 4 } else { 3 };
        assert_eq!(
            (report.received, report.out_of_order),
            (want, 0),
            "rank {rank}"
        );
    }
    assert!(counters.get(4).is_none());
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_meshes_runs_stop_hooks() {
    let mut mesh = TestMesh::new("stophooks").await;
    mesh.launch(2, 2);
    mesh.wait_running(4).await;
    let client = mesh.alloc.client().clone();
    // The recorder lives on the controller's own proc.
    let recorder = mesh
        .alloc
        .controller_proc()
        .spawn::<Recorder>("recorder", ())
        .expect("local recorder");
    let procs = ProcMesh::of(&mesh.alloc);
    let probes = procs
        .spawn::<StopProbe>(&client, "probe", |_| recorder.clone())
        .await
        .expect("spawn probes");
    wait_lines(&recorder, &client, "started", 4).await;

    // Stopping the actor mesh runs each actor's stop hook; the procs stay up.
    probes.stop(&client).await.expect("stop actor mesh");
    let stopped = wait_lines(&recorder, &client, "stopped", 4).await;
    for p in probes.actors() {
        assert!(
            stopped.contains(&format!("{} stopped", p.id())),
            "{stopped:?}"
        );
    }
    mesh.collect_for(Duration::from_millis(300)).await;
    assert!(
        !mesh.seen.iter().any(|e| is_state(e, "stopped")),
        "procs must still run"
    );

    // Stopping the proc mesh stops procs, running the hooks of their actors.
    let again = procs
        .spawn::<StopProbe>(&client, "probe2", |_| recorder.clone())
        .await
        .expect("spawn probes again");
    procs.stop(&mesh.alloc, SOON).await.expect("stop proc mesh");
    for _ in 0..4 {
        mesh.wait_for(SOON, "proc stopped", |e| is_state(e, "stopped"))
            .await;
    }
    let stopped = wait_lines(&recorder, &client, "stopped", 8).await;
    for p in again.actors() {
        assert!(
            stopped.contains(&format!("{} stopped", p.id())),
            "{stopped:?}"
        );
    }
    // A message to a stopped proc is refused at once, saying how it ended.
    let err = again.get(0).expect("rank 0").tell(&client, ()).await;
    assert!(
        matches!(
            &err,
            Err(SendError::Refused(ReturnReason::ProcEnded {
                end: ProcEnd::Stopped(_),
                ..
            }))
        ),
        "{err:?}"
    );
    mesh.assert_no_failures();
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_ring_and_exits_zero() {
    let dir = common::TempDir::new("demo");
    let out = tokio::process::Command::new(common::bin())
        .args([
            "demo",
            "--workers",
            "2",
            "--procs-per-worker",
            "2",
            "--rounds",
            "3",
            "--pings",
            "20",
            "--certs",
        ])
        .arg(dir.path().join("certs"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("demo finished")
        .expect("demo ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ring of 4 procs x 3 rounds: sum 18 checked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("summary: 2 workers (2 exited 0, 0 exited otherwise, 0 not seen exiting)")
            && stdout.contains("4 stopped in order, 0 failed)"),
        "{stdout}"
    );
    // A small mesh logs every event.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("proc demo[3] running"), "{stderr}");
}

/// Above 16 workers the demo logs no per-proc lines (without `--verbose`),
/// shows progress as plain lines when its output is not a terminal, and
/// always ends with a summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_of_many_workers_shows_progress_not_every_event() {
    let dir = common::TempDir::new("demo-many");
    let out = tokio::process::Command::new(common::bin())
        .args([
            "demo",
            "--workers",
            "20",
            "--procs-per-worker",
            "1",
            "--rounds",
            "1",
            "--pings",
            "2",
            "--certs",
        ])
        .arg(dir.path().join("certs"))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("demo finished")
        .expect("demo ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("launch: "))
        .collect();
    assert!(
        progress
            .last()
            .is_some_and(|l| l.starts_with("launch: 20 joined, 20 running, 0 failed of 20 workers")),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("summary: 20 workers (20 exited 0, 0 exited otherwise, 0 not seen exiting)")
            && stdout.contains("20 stopped in order, 0 failed)"),
        "{stdout}"
    );
    assert!(
        !stderr.contains("proc demo[") && !stderr.contains(" joined (pid "),
        "per-proc lines without --verbose:\n{stderr}"
    );
}
