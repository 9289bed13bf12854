//! Delivery guarantees under failure, loss and load: every envelope is
//! accounted for, order holds, queues stay bounded, procs stay isolated.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{signal, TestMesh, SOON};
use quicmesh::actor::builtin::{Counter, CounterMsg, CounterReport, Echo, EchoMsg};
use quicmesh::actor::{Recipient, SendError};
use quicmesh::testkit::actors::{Sleeper, SleeperMsg};
use quicmesh::testkit::relay::Relay;
use quicmesh::{DeliveryStatus, ReturnReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_tells_in_flight_accounts_for_every_envelope() {
    let mut mesh = TestMesh::new("accounting").await;
    let returned = mesh.alloc.returns();
    // The victim hosts two procs: tells go to one, the ask to the other, so
    // the tells' link counts nothing but tells.
    let victim = mesh.launch(1, 2)[0];
    let healthy = mesh.launch(1, 1)[0];
    mesh.wait_running(3).await;
    let client = mesh.alloc.client().clone();
    let victim_procs: Vec<_> = mesh
        .alloc
        .procs()
        .into_iter()
        .filter(|p| mesh.alloc.worker_of(p) == Some(victim))
        .collect();
    let victim_proc = victim_procs[0].clone();
    let counter = client
        .spawn::<Counter>(&victim_proc, "counter", &())
        .await
        .expect("spawn counter");
    let echo = client
        .spawn::<Echo>(&victim_procs[1], "echo", &())
        .await
        .expect("spawn echo");

    // The spawn request itself travelled on the link: wait for its ack and count from there.
    let baseline = {
        let deadline = Instant::now() + SOON;
        loop {
            let d = mesh.alloc.link_stats(&victim_proc).expect("link").delivered;
            if d >= 1 {
                break d;
            }
            assert!(
                Instant::now() < deadline,
                "spawn request never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    const SENT: u64 = 10_000;
    // Tells are accepted until the sender learns that the worker died;
    // from then on each is refused at once (nothing is queued for a proc
    // known to have ended). The sender stops at the first refusal and
    // reports how many were accepted: those are the ones to account for.
    let sender = {
        let (client, counter) = (client.clone(), counter.clone());
        let victim_proc = victim_proc.clone();
        tokio::spawn(async move {
            for seq in 0..SENT {
                let pad = vec![0u8; 512];
                match counter.tell(&client, CounterMsg::Count { seq, pad }).await {
                    Ok(()) => {}
                    Err(SendError::Refused(ReturnReason::ProcEnded { proc_id, end }))
                        if proc_id == victim_proc && end.is_failure() =>
                    {
                        return seq;
                    }
                    Err(e) => panic!("tell {seq} neither accepted nor refused as ended: {e:?}"),
                }
                if seq % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            SENT
        })
    };
    // Kill the worker while the tells are flowing.
    tokio::time::sleep(Duration::from_millis(30)).await;
    signal(mesh.pid(victim), libc::SIGKILL);

    // An ask to an actor of the dead worker fails well before its own timeout.
    let started = Instant::now();
    let ask = echo
        .ask_within(&client, Duration::from_secs(60), |p| {
            EchoMsg::Echo(vec![1], p)
        })
        .await;
    assert!(
        ask.is_err(),
        "ask to a killed worker must fail, got {ask:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ask took {:?}",
        started.elapsed()
    );
    let n = tokio::time::timeout(SOON, sender)
        .await
        .expect("sender finished")
        .expect("sender task");
    assert!(
        n > 0,
        "the first tell went out before the kill, so it was accepted"
    );

    // Everything sent is either acknowledged as delivered or comes back.
    let mut returned_seqs = BTreeSet::new();
    // Written but unacknowledged when the worker died: possibly delivered;
    // still queued in the allocator: certainly not.
    let mut possibly = BTreeSet::new();
    let deadline = Instant::now() + SOON;
    loop {
        let delivered = mesh.alloc.link_stats(&victim_proc).expect("link").delivered - baseline;
        if delivered + returned_seqs.len() as u64 >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} delivered + {} returned of {n}",
            returned_seqs.len()
        );
        if let Ok(Some(u)) = tokio::time::timeout(Duration::from_millis(200), returned.next()).await
        {
            if let Ok(CounterMsg::Count { seq, .. }) =
                u.decode::<CounterMsg>().map(|u| u.into_message())
            {
                assert!(returned_seqs.insert(seq), "seq {seq} returned twice");
                assert!(
                    matches!(u.reason(), ReturnReason::ProcEnded { proc_id, end } if *proc_id == victim_proc && end.is_failure()),
                    "{u}"
                );
                if u.status() == DeliveryStatus::PossiblyDelivered {
                    possibly.insert(seq);
                }
            }
        }
    }
    let delivered = mesh.alloc.link_stats(&victim_proc).expect("link").delivered - baseline;
    assert_eq!(
        delivered + returned_seqs.len() as u64,
        n,
        "exactly once: delivered + returned = sent"
    );
    // Delivery is in order, so the returned ones are exactly the tail.
    let first = returned_seqs.first().copied();
    let last = returned_seqs.last().copied();
    assert!(
        returned_seqs.len() as u64 == n - delivered && (delivered == n || (first == Some(delivered) && last == Some(n - 1))),
        "returned envelopes must be exactly seqs {delivered}..{n}; got {} from {first:?} to {last:?}",
        returned_seqs.len()
    );
    // What was written goes out before what was queued, so the possibly
    // delivered ones are a prefix of the returned ones.
    let not_delivered: Vec<u64> = returned_seqs.difference(&possibly).copied().collect();
    if let (Some(last_possibly), Some(first_not)) = (possibly.last(), not_delivered.first()) {
        assert!(
            last_possibly < first_not,
            "possibly delivered {last_possibly} after certainly not delivered {first_not}"
        );
    }
    eprintln!(
        "{delivered} delivered, {} returned ({} possibly delivered)",
        returned_seqs.len(),
        possibly.len()
    );
    assert_eq!(
        mesh.wait_exit(victim, SOON).await,
        quicmesh::ExitReport::Signal(libc::SIGKILL)
    );
    mesh.assert_healthy(healthy);
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_delivers_everything_in_order() {
    let mut mesh = TestMesh::new("lossy").await;
    let relay = Relay::start(mesh.alloc.local_addr()).await.expect("relay");
    let worker = mesh.launch_via(relay.local_addr(), 1);
    mesh.wait_running(1).await;
    relay.set_loss(0.10);
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let counter = client
        .spawn::<Counter>(&proc_id, "counter", &())
        .await
        .expect("spawn");
    common::count_in_order(&client, &counter, 100_000, Duration::from_secs(120)).await;
    assert!(
        relay.stats().dropped > 0,
        "the relay dropped nothing: {:?}",
        relay.stats()
    );
    mesh.collect_for(Duration::from_millis(500)).await;
    mesh.assert_healthy(worker);
    relay.set_loss(0.0);
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_proc_does_not_slow_another_on_the_same_worker() {
    // Small budgets so that the slow proc's whole path fills up quickly.
    let mut mesh = TestMesh::with_config("isolation", |c| c.limits.mailbox_bytes = 1 << 20).await;
    mesh.launch(1, 2);
    mesh.wait_running(2).await;
    let client = mesh.alloc.client().clone();
    let procs = mesh.alloc.procs();
    let sleeper = client
        .spawn::<Sleeper>(&procs[0], "sleeper", &())
        .await
        .expect("spawn sleeper");
    let echo = client
        .spawn::<Echo>(&procs[1], "echo", &())
        .await
        .expect("spawn echo");

    // Block the sleeper, then pile 64 KiB messages on it until its stream stalls.
    let blocked = {
        let (client, sleeper) = (client.clone(), sleeper.clone());
        tokio::spawn(async move {
            sleeper
                .ask_within(&client, Duration::from_secs(120), |p| SleeperMsg::Sleep {
                    ms: 4000,
                    reply: Some(p),
                })
                .await
                .expect("sleeper reply");
            Instant::now()
        })
    };
    let filler = {
        let (client, sleeper) = (client.clone(), sleeper.clone());
        tokio::spawn(async move {
            for _ in 0..200 {
                let msg = SleeperMsg::Fill {
                    ms: 0,
                    pad: vec![0; 64 * 1024],
                };
                if sleeper.tell(&client, msg).await.is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled = mesh.alloc.link_stats(&procs[0]).expect("link");
    assert!(
        stalled.queued_bytes > 0,
        "the slow proc's queue should be backed up: {stalled:?}"
    );

    // Meanwhile the other proc answers at once, many times over.
    for i in 0..200u32 {
        let back = echo
            .ask_within(&client, Duration::from_secs(60), |p| {
                EchoMsg::Echo(i.to_be_bytes().to_vec(), p)
            })
            .await
            .expect("echo on the other proc");
        assert_eq!(back, i.to_be_bytes());
    }
    let other_done = Instant::now();
    let sleeper_done = tokio::time::timeout(Duration::from_secs(120), blocked)
        .await
        .expect("sleeper")
        .expect("task");
    assert!(
        other_done < sleeper_done,
        "200 asks to the other proc finished only after the blocked proc woke up"
    );
    filler.abort();
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_producer_slow_consumer_stays_within_the_byte_budget() {
    const BUDGET: u32 = 1 << 20;
    let mut mesh = TestMesh::with_config("bounded", |c| c.limits.mailbox_bytes = BUDGET).await;
    mesh.launch(1, 1);
    mesh.wait_running(1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let sleeper = client
        .spawn::<Sleeper>(&proc_id, "slow", &())
        .await
        .expect("spawn");

    // Produce 64 KiB messages as fast as tell allows for 3 s; the consumer takes 5 ms each.
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        sleeper
            .tell(
                &client,
                SleeperMsg::Fill {
                    ms: 5,
                    pad: vec![7; 64 * 1024],
                },
            )
            .await
            .expect("tell");
        sent += 1;
    }
    // Unthrottled, 3 s of 64 KiB tells would be far more than the consumer's ~600.
    let link = mesh.alloc.link_stats(&proc_id).expect("link");
    assert!(
        link.peak_queued_bytes <= u64::from(BUDGET),
        "allocator queued {link:?}"
    );
    assert!(
        link.peak_queued_bytes >= u64::from(BUDGET) / 2,
        "bound never reached: {link:?}"
    );
    let stats = client
        .proc_stats(&proc_id)
        .await
        .expect("worker proc stats");
    assert!(
        stats.peak_queued_bytes <= u64::from(BUDGET),
        "worker queued {stats:?}"
    );
    eprintln!(
        "sent {sent} messages in 3 s; allocator peak {} B, worker peak {} B",
        link.peak_queued_bytes, stats.peak_queued_bytes
    );
    mesh.collect_for(Duration::from_millis(200)).await;
    mesh.assert_no_failures();
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_misaddressed_messages_are_refused_or_come_back_with_a_reason() {
    const MAX_FRAME: u32 = 256 * 1024;
    let mut mesh = TestMesh::with_config("returns", |c| c.limits.max_frame = MAX_FRAME).await;
    let returned = mesh.alloc.returns();
    let worker = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let client = mesh.alloc.client().clone();
    let proc_id = mesh.alloc.procs()[0].clone();
    let counter = client
        .spawn::<Counter>(&proc_id, "counter", &())
        .await
        .expect("spawn");

    // Tells a message of `pad` bytes to `to`, which the runtime accepts.
    let tell_pad = |to: quicmesh::ActorRef<Counter>, pad: Vec<u8>| {
        let client = client.clone();
        async move {
            let msg = CounterMsg::Count { seq: 0, pad };
            to.tell(&client, msg).await.expect("accepted");
        }
    };

    // Above the frame limit: refused at once, nothing sent; later messages still flow.
    let refused = counter
        .tell(
            &client,
            CounterMsg::Count {
                seq: 0,
                pad: vec![0u8; MAX_FRAME as usize + 1],
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(SendError::TooLarge { max, .. }) if *max == MAX_FRAME),
        "{refused:?}"
    );

    // To an actor that does not exist on a live proc.
    tell_pad(
        quicmesh::ActorRef::attest(proc_id.actor("ghost", 0)),
        vec![],
    )
    .await;
    let u = common::next_returned(&returned).await;
    assert!(
        matches!(u.reason(), ReturnReason::ActorNotFound(a) if a.name == "ghost"),
        "{u}"
    );
    assert_eq!(u.recipient(), &Recipient::Actor(proc_id.actor("ghost", 0)));
    assert_eq!(u.status(), DeliveryStatus::NotDelivered);

    // To a proc that does not exist: the controller knows at once.
    let nowhere = quicmesh::ProcId::new("nowhere", 1).actor("x", 0);
    let refused = quicmesh::ActorRef::<Counter>::attest(nowhere)
        .tell(
            &client,
            CounterMsg::Count {
                seq: 0,
                pad: vec![],
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(SendError::Refused(ReturnReason::UnknownProc(p))) if p.alloc == "nowhere"),
        "{refused:?}"
    );

    counter
        .tell(
            &client,
            CounterMsg::Count {
                seq: 0,
                pad: vec![1; 1000],
            },
        )
        .await
        .expect("tell");
    let report: CounterReport = counter
        .ask(&client, CounterMsg::Report)
        .await
        .expect("report");
    assert_eq!((report.received, report.bytes), (1, 1000));
    mesh.assert_healthy(worker);
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}
