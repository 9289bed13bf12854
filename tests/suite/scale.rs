//! Many workers on one allocator: the launch window keeps start-up bounded,
//! refused handshakes are retried, and everything comes up and ends cleanly.

use crate::common;

use std::time::Duration;

use common::TestMesh;
use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::ExitReport;
use quicmesh::ProcMesh;

const WORKERS: u32 = 200;
const WINDOW: usize = 16;

/// 200 real worker processes through a launch window of 16 and a handshake
/// cap of 8 (2 per source: every worker dials from 127.0.0.1), so that
/// refusals and retries really happen: never more than 16 joining at once,
/// every proc running, an ask answered by every proc, every worker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_workers_start_through_a_small_window() {
    let mut mesh = TestMesh::with_config("scale", |c| {
        c.launch_window = WINDOW;
        c.transport.max_pending_handshakes = 8;
        c.transport.hello_timeout = Duration::from_secs(2);
    })
    .await;
    // Two silent peers hold both of 127.0.0.1's handshake slots until their
    // Hello is 2 s late, so the first workers are certainly refused and must
    // retry (left to timing, a quiet machine might never overlap 3 handshakes).
    let silent = [
        common::valid_client(&mesh).await,
        common::valid_client(&mesh).await,
    ];
    let indexes = mesh.launch(WORKERS, 1);
    assert_eq!(indexes.len(), WORKERS as usize);
    // Only the first window is started before `launch` returns.
    assert_eq!(mesh.alloc.progress().started, WINDOW);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut most_joining = 0;
    loop {
        let p = mesh.alloc.progress();
        assert_eq!(p.workers_failed() + p.procs_failed, 0, "{p}");
        let joining = p.started.saturating_sub(p.joined + p.exited);
        most_joining = most_joining.max(joining);
        assert!(joining <= WINDOW, "{joining} joining at once: {p}");
        if p.procs_running == WORKERS as usize {
            assert_eq!((p.joined, p.started, p.procs), (200, 200, 200), "{p}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all running in time: {p}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        most_joining > 1,
        "the window was never used: {most_joining}"
    );
    let refused = mesh.alloc.refusals();
    assert!(
        refused
            .connections_by_kind
            .get(&quicmesh::allocator::RefusalKind::Busy)
            .is_some_and(|n| *n > 0),
        "the handshake cap never refused anyone, so no retry was tested: {refused:?}"
    );
    for (endpoint, _) in silent {
        endpoint.close(0u32.into(), b"test done");
    }

    let client = mesh.alloc.client().clone();
    let procs = ProcMesh::of(&mesh.alloc);
    assert_eq!(procs.len(), WORKERS as usize);
    let echo = procs
        .spawn::<Echo>(&client, "echo", |_| ())
        .await
        .expect("spawn");
    let asks = echo.actors().iter().enumerate().map(|(rank, actor)| {
        let client = client.clone();
        let actor = actor.clone();
        async move {
            let bytes = (rank as u32).to_le_bytes().to_vec();
            let back = actor
                .ask(&client, |p| EchoMsg::Echo(bytes.clone(), p))
                .await
                .expect("echo");
            assert_eq!(back, bytes, "rank {rank}");
        }
    });
    futures::future::join_all(asks).await;

    let exits = mesh.alloc.stop_and_wait(0, Duration::from_secs(60)).await;
    assert_eq!(exits.len(), WORKERS as usize, "not every worker exited");
    for (index, status) in &exits {
        assert_eq!(*status, ExitReport::Code(0), "worker {index}");
    }
    let p = mesh.alloc.progress();
    assert_eq!(
        (p.exited, p.exited_failed, p.procs_failed),
        (200, 0, 0),
        "{p}"
    );
    mesh.finish().await;
}
