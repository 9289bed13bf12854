//! Long links: workers behind relays that add delay, jitter, loss,
//! duplication and reordering, as between datacenters.
//!
//! Every assertion is about behaviour (delivered, in order, once; no false
//! failure; a partition detected within its timeout plus a margin), never
//! about speed: throughput on long links is measured by `cargo bench --bench
//! mesh`.

use crate::common;

use std::time::{Duration, Instant};

use common::{spawn_worker, TestMesh, SOON};
use quicmesh::actor::builtin::{Counter, CounterReport, Echo, EchoMsg};
use quicmesh::allocator::AllocEvent;
use quicmesh::config;
use quicmesh::config::LinkConfig;
use quicmesh::testkit::actors::{Pump, PumpMsg};
use quicmesh::testkit::relay::{Conditions, Relay};
use quicmesh::ExitReport;
use quicmesh::{ActorRef, Client};

/// 50 ms each way with 10 ms of jitter and 2 % loss, both directions.
fn long_lossy_link() -> Conditions {
    Conditions {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(10),
        loss: 0.02,
        ..Conditions::default()
    }
}

/// Heartbeat timeout (default) plus a margin generous enough for a loaded machine.
const DETECT: Duration = Duration::from_millis(1500 + 8000);

/// Launches `n` workers with one proc each, each behind its own relay that
/// already applies `path`, so the mesh starts over the degraded link.
async fn launch_over(mesh: &mut TestMesh, n: u32, path: Conditions) -> (Vec<u32>, Vec<Relay>) {
    let mut workers = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..n {
        let relay = Relay::start(mesh.alloc.local_addr()).await.expect("relay");
        relay.set_path(path);
        workers.push(mesh.launch_via(relay.local_addr(), 1));
        relays.push(relay);
    }
    mesh.wait_running(n as usize).await;
    (workers, relays)
}

/// Asks `echo` `n` times, each with its own bytes, and checks every answer.
async fn asks_work(client: &Client, echo: &ActorRef<Echo>, n: u32) {
    for i in 0..n {
        let sent = format!("ask {i}").into_bytes();
        let back: Vec<u8> = echo
            .ask_within(client, SOON, |port| EchoMsg::Echo(sent.clone(), port))
            .await
            .expect("ask answered");
        assert_eq!(back, sent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_over_a_long_lossy_jittery_link_loses_nothing_and_fails_nothing() {
    let mut mesh = TestMesh::with_config("wan-traffic", |c| c.link = LinkConfig::wan()).await;
    let (workers, relays) = launch_over(&mut mesh, 2, long_lossy_link()).await;
    let client = mesh.alloc.client().clone();
    let procs = mesh.alloc.procs();
    let mut counters = Vec::new();
    let mut echoes = Vec::new();
    for proc_id in &procs {
        counters.push(
            client
                .spawn::<Counter>(proc_id, "counter", &())
                .await
                .expect("spawn counter"),
        );
        echoes.push(
            client
                .spawn::<Echo>(proc_id, "echo", &())
                .await
                .expect("spawn echo"),
        );
    }

    // 10,000 tells to each worker at once, through both relays.
    let started = Instant::now();
    futures::future::join_all(
        counters
            .iter()
            .map(|counter| common::count_in_order(&client, counter, 10_000, SOON)),
    )
    .await;
    eprintln!("20,000 tells delivered in {:?}", started.elapsed());
    for echo in &echoes {
        asks_work(&client, echo, 20).await;
    }

    // The allocator measured each worker's round trip over the long link.
    for &w in &workers {
        let rtt = mesh.alloc.worker_rtt(w).expect("round trip measured");
        assert!(
            rtt >= Duration::from_millis(80),
            "worker {w}: round trip {rtt:?} is less than the relay's delay"
        );
    }
    for relay in &relays {
        let stats = relay.stats();
        assert!(
            stats.dropped > 0 && stats.forwarded > 20 * stats.dropped,
            "the relay did not apply its loss: {stats:?}"
        );
        assert_eq!(stats.overflowed, 0, "{stats:?}");
    }
    mesh.assert_no_failures();
    // No failure for a while yet, then an orderly stop over the same link.
    mesh.end_with_healthy(&workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_a_long_link_ends_the_worker_within_the_timeout() {
    // LAN link settings on purpose: detection must not depend on them.
    let mut mesh = TestMesh::new("wan-partition").await;
    let (workers, relays) = launch_over(&mut mesh, 2, long_lossy_link()).await;
    // Let heartbeats flow over the long link for a while first.
    mesh.collect_for(Duration::from_secs(2)).await;
    mesh.assert_no_failures();

    let victim = workers[1];
    let start = Instant::now();
    relays[1].set_blackhole(true);
    mesh.wait_for(DETECT, "heartbeat-lost failure", |e| {
        matches!(e, AllocEvent::Proc { worker, state, .. }
            if *worker == victim && state.end().is_some_and(|r| r.to_string().contains("heartbeat lost")))
    })
    .await;
    let detected = start.elapsed();
    assert!(
        detected >= Duration::from_millis(1000),
        "declared dead too early: {detected:?}"
    );
    let status = mesh.wait_exit(victim, DETECT).await;
    assert_eq!(
        status,
        ExitReport::Code(quicmesh::exit_code::HEARTBEAT_LOST),
        "{}",
        mesh.log()
    );
    assert!(
        start.elapsed() < DETECT,
        "the cut-off worker took {:?} to end",
        start.elapsed()
    );
    mesh.end_with_healthy(&[workers[0]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_packets_change_nothing_between_workers() {
    let path = Conditions {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        loss: 0.01,
        // High enough that a relay certainly duplicates some of the few
        // hundred packets the run needs (at 2 %, 281 packets made none once).
        duplicate: 0.1,
        reorder: 0.02,
        reorder_gap: Duration::from_millis(10),
    };
    let mut mesh = TestMesh::with_config("wan-dup", |c| c.link = LinkConfig::wan()).await;
    let (workers, relays) = launch_over(&mut mesh, 2, path).await;
    let client = mesh.alloc.client().clone();
    let procs = mesh.alloc.procs();
    // A pump on worker 0 tells a counter on worker 1: every message crosses
    // both relays (worker 0 -> allocator -> worker 1).
    let pump = client
        .spawn::<Pump>(&procs[0], "pump", &())
        .await
        .expect("spawn pump");
    let counter = client
        .spawn::<Counter>(&procs[1], "counter", &())
        .await
        .expect("spawn counter");
    let n = 5_000;
    let sent: u64 = pump
        .ask_within(&client, SOON, |done| PumpMsg::Run {
            to: counter.clone(),
            from: 0,
            n,
            pad: 32,
            done,
        })
        .await
        .expect("pump ran");
    assert_eq!(sent, n);
    let report = common::report_when_received(&client, &counter, n, SOON).await;
    assert_eq!(
        report,
        CounterReport {
            received: n,
            out_of_order: 0,
            next: n,
            bytes: 32 * n,
        }
    );
    let returned: u64 = pump
        .ask_within(&client, SOON, PumpMsg::Returned)
        .await
        .expect("returned count");
    assert_eq!(returned, 0, "nothing came back undeliverable");
    for relay in &relays {
        let stats = relay.stats();
        assert!(stats.duplicated > 0, "no duplicates made: {stats:?}");
    }
    mesh.end_with_healthy(&workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_by_hand_uses_the_allocators_heartbeat_and_is_warned_about_a_short_timeout(
) {
    // 150 ms each way: a 300 ms round trip, for which 1 s is a short
    // timeout (four round trips are 1.2 s), though long enough not to fail.
    let mut mesh = TestMesh::with_config("wan-hand", |c| {
        c.heartbeat.interval = Duration::from_millis(100);
        c.heartbeat.timeout = Duration::from_secs(1);
    })
    .await;
    let relay = Relay::start(mesh.alloc.local_addr()).await.expect("relay");
    relay.set_path(Conditions {
        delay: Duration::from_millis(150),
        ..Conditions::default()
    });
    // What the worker logs once joined comes over its log stream.
    let mut logs = mesh.alloc.logs();
    let ticket = mesh.alloc.reserve(1);
    let link = ticket
        .env
        .iter()
        .find(|(k, _)| *k == config::ENV_LINK)
        .map(|(_, v)| v.clone());
    assert_eq!(
        link.as_deref(),
        Some("lan"),
        "the ticket carries the link setting"
    );
    let mut env: Vec<(&str, String)> = ticket
        .env
        .iter()
        .filter(|(k, _)| *k != config::ENV_ALLOCATOR_ADDR)
        .cloned()
        .collect();
    env.push((config::ENV_ALLOCATOR_ADDR, relay.local_addr().to_string()));
    env.push((config::ENV_HEARTBEAT_INTERVAL, "100ms".into()));
    env.push((config::ENV_HEARTBEAT_TIMEOUT, "2s".into()));
    let worker = spawn_worker(&env);
    mesh.wait_running(1).await;
    // Longer than the round trip must stay slow before a warning.
    mesh.collect_for(quicmesh::testkit::SLOW_FOR + Duration::from_secs(2))
        .await;
    mesh.assert_no_failures();
    let rtt = mesh.alloc.worker_rtt(ticket.index).expect("round trip");
    assert!(rtt >= Duration::from_millis(290), "round trip {rtt:?}");
    mesh.alloc.stop_worker(ticket.index, 0).expect("stop");
    let (status, stderr) = worker.output(SOON).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the allocator's heartbeat settings apply")
            && stderr.contains("QUICMESH_HEARTBEAT_TIMEOUT=2s"),
        "the worker does not say whose heartbeat settings apply:\n{stderr}"
    );
    let warned = tokio::time::timeout(SOON, async {
        while let Some(line) = logs.next().await {
            if line.worker == ticket.index
                && line
                    .text
                    .contains("heartbeat timeout 1s is less than 4 round trips")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        warned,
        Ok(true),
        "the worker did not warn about a timeout short for its round trip:\n{stderr}"
    );
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_link_and_heartbeat_variables_end_a_worker_with_78_naming_them() {
    let mesh = TestMesh::new("wan-badenv").await;
    let ticket = mesh.alloc.reserve(1);
    for (name, value) in [
        (config::ENV_LINK, "metro"),
        (config::ENV_LINK, "wan,window=1KiB"),
        (config::ENV_HEARTBEAT_INTERVAL, "soon"),
        (config::ENV_HEARTBEAT_TIMEOUT, "100ms"),
    ] {
        let mut env: Vec<(&str, String)> = ticket
            .env
            .iter()
            .filter(|(k, _)| *k != name)
            .cloned()
            .collect();
        env.push((name, value.into()));
        let (status, stderr) = spawn_worker(&env).output(SOON).await;
        assert_eq!(
            status.code(),
            Some(quicmesh::exit_code::CONFIG),
            "{name}={value}: {stderr}"
        );
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
    mesh.finish().await;
}
