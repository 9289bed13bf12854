//! Actors on worker processes: ask/tell, reply ports, remote spawn, ordering, failures.

use crate::common;

use std::time::Duration;

use common::{TestMesh, SOON};
use quicmesh::actor::builtin::{Counter, Echo, EchoMsg};
use quicmesh::actor::{AskError, SendError, SpawnError};
use quicmesh::allocator::AllocEvent;
use quicmesh::testkit::actors::{Faulty, FaultyMsg};
use quicmesh::ProcMesh;
use quicmesh::{ActorFailure, ReturnReason, SpawnRefusal};

async fn mesh_with(tag: &str, workers: u32, procs: u32) -> TestMesh {
    let mut mesh = TestMesh::new(tag).await;
    mesh.launch(workers, procs);
    mesh.wait_running((workers * procs) as usize).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_tell_and_proc_to_proc_across_workers() {
    let mut mesh = mesh_with("askecho", 3, 1).await;
    let client = mesh.alloc.client().clone();
    let procs = ProcMesh::of(&mesh.alloc);
    let echoes = procs
        .spawn::<Echo>(&client, "echo", |_| ())
        .await
        .expect("spawn echo mesh");
    assert_eq!(echoes.len(), 3);
    for (rank, echo) in echoes.actors().iter().enumerate() {
        let payload = vec![rank as u8; 64];
        let back = echo
            .ask(&client, |port| EchoMsg::Echo(payload.clone(), port))
            .await
            .expect("echo");
        assert_eq!(back, payload);
    }
    // Proc to proc: echo 0 asks echo 2 (through the allocator) and replies to us.
    let other = echoes.get(2).expect("rank 2").clone();
    let back = echoes
        .get(0)
        .expect("rank 0")
        .ask(&client, |port| EchoMsg::Relay(b"via".to_vec(), other, port))
        .await
        .expect("relay");
    assert_eq!(back, b"via");
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_spawn_errors_are_clear() {
    let mut mesh = mesh_with("spawnerr", 1, 1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let err = quicmesh::testkit::spawn_named(&client, &proc_id, "no-such-type", "x", vec![])
        .await
        .expect_err("unknown type must be refused");
    assert!(
        matches!(&err, SpawnError::Refused(SpawnRefusal::UnknownType { actor_type, registered })
            if actor_type == "no-such-type" && registered.iter().any(|t| t == "echo")),
        "{err}"
    );
    let err = quicmesh::testkit::spawn_named(&client, &proc_id, "ring", "x", vec![0xff; 9])
        .await
        .expect_err("bad params");
    assert!(
        matches!(&err, SpawnError::Refused(SpawnRefusal::BadParams { actor_type, .. }) if actor_type == "ring"),
        "{err}"
    );
    client
        .spawn::<Echo>(&proc_id, "e", &())
        .await
        .expect("first spawn");
    let err = client
        .spawn::<Echo>(&proc_id, "e", &())
        .await
        .expect_err("duplicate name");
    assert!(
        matches!(&err, SpawnError::Refused(SpawnRefusal::NameTaken { name, .. }) if name == "e"),
        "{err}"
    );
    let unknown = quicmesh::ProcId::new("nowhere", 7);
    let err = client
        .spawn::<Echo>(&unknown, "e", &())
        .await
        .expect_err("unknown proc");
    assert!(
        matches!(&err, SpawnError::Ask(AskError::Send(SendError::Refused(ReturnReason::UnknownProc(p)))) if *p == unknown),
        "{err}"
    );
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_tells_arrive_in_order_exactly_once() {
    let mut mesh = mesh_with("order", 1, 1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let counter = client
        .spawn::<Counter>(&proc_id, "counter", &())
        .await
        .expect("spawn");
    common::count_in_order(&client, &counter, 100_000, SOON).await;
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_actor_is_reported_and_its_proc_keeps_running() {
    let mut mesh = mesh_with("panic", 1, 1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let faulty = client
        .spawn::<Faulty>(&proc_id, "faulty", &())
        .await
        .expect("spawn faulty");
    let bystander = client
        .spawn::<Faulty>(&proc_id, "bystander", &())
        .await
        .expect("spawn bystander");
    faulty
        .tell(&client, FaultyMsg::Panic("boom".into()))
        .await
        .expect("tell");
    let event = mesh
        .wait_for(SOON, "actor failure", |e| {
            matches!(e, AllocEvent::ActorFailed { .. })
        })
        .await;
    match event {
        AllocEvent::ActorFailed { actor_id, reason } => {
            assert_eq!(&actor_id, faulty.id());
            assert!(
                matches!(&reason, ActorFailure::HandlerPanicked(m) if m.contains("boom")),
                "{reason}"
            );
        }
        _ => unreachable!(),
    }
    // Messages to the failed actor come back; an ask fails promptly.
    let err = faulty
        .ask_within(&client, Duration::from_secs(20), FaultyMsg::Ping)
        .await
        .expect_err("dead actor");
    assert!(
        matches!(&err, AskError::Undeliverable(ReturnReason::ActorNotFound(a)) if a == faulty.id()),
        "{err}"
    );
    // The proc and its other actor are fine.
    bystander
        .ask(&client, FaultyMsg::Ping)
        .await
        .expect("bystander alive");
    // A handler error is a failure too.
    bystander
        .tell(&client, FaultyMsg::Fail("bad state".into()))
        .await
        .expect("tell");
    mesh.wait_for(
        SOON,
        "second actor failure",
        |e| matches!(e, AllocEvent::ActorFailed { reason: ActorFailure::HandlerError(m), .. } if m.contains("bad state")),
    )
    .await;
    let index = mesh.alloc.worker_of(&proc_id).expect("worker");
    mesh.assert_healthy(index);
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}
