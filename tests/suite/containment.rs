//! Containment: a worker that holds valid credentials (a [`FakeWorker`] in
//! this process, speaking the protocol by hand) attacks the allocator and
//! the other procs of the mesh, beside two real, healthy worker processes.
//!
//! Every test asserts the same three things besides its own: the healthy
//! workers are never failed, every message between healthy procs (from the
//! controller and from one healthy worker's actor to the other's) arrives,
//! in order, during and after the attack, and the allocator's resident
//! memory stays under a generous bound.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fake_worker::FakeWorker;
use common::{rss_bytes, TestMesh, SOON};
use compact_str::CompactString;
use quicmesh::actor::builtin::{Counter, CounterMsg, CounterReport, Echo, EchoMsg};
use quicmesh::actor::Client;
use quicmesh::actor::Recipient;
use quicmesh::allocator::{AllocEvent, AllocatorConfig, ProcState};
use quicmesh::testkit::actors::{Pump, PumpMsg};
use quicmesh::testkit::wire::{
    codec, DeliveryStatus, Dest, Envelope, MailboxFrame, SystemMsg, Undeliverable,
};
use quicmesh::{ActorId, ActorRef, FailureReason, ProcEnd, ProcId, ReturnReason};

/// How much the allocator's process may grow during an attack. The attacks
/// below would grow it by gigabytes without their bounds.
const RSS_GROWTH_LIMIT: u64 = 400 * 1024 * 1024;

/// Samples this process's resident memory until dropped; keeps the peak.
struct RssWatch {
    start: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start() -> RssWatch {
        let start = rss_bytes();
        let peak = Arc::new(AtomicU64::new(start));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssWatch { start, peak, stop }
    }

    fn assert_bounded(&self) {
        let peak = self.peak.load(Ordering::Relaxed).max(rss_bytes());
        let growth = peak.saturating_sub(self.start);
        eprintln!(
            "allocator RSS: start {} MiB, peak {} MiB",
            self.start >> 20,
            peak >> 20
        );
        assert!(
            growth < RSS_GROWTH_LIMIT,
            "the allocator's process grew by {} MiB (limit {} MiB)",
            growth >> 20,
            RSS_GROWTH_LIMIT >> 20
        );
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Two healthy workers with traffic between them, and a hostile one.
struct Scene {
    mesh: TestMesh,
    client: Client,
    healthy: [u32; 2],
    procs: [ProcId; 2],
    /// Counter on healthy proc 0 (told by the controller).
    counter0: ActorRef<Counter>,
    /// Counter on healthy proc 1 (told by the pump on proc 0).
    counter1: ActorRef<Counter>,
    pump: ActorRef<Pump>,
    echo1: ActorRef<Echo>,
    /// Messages sent so far to counter0 and counter1.
    sent: [u64; 2],
    rss: RssWatch,
}

async fn scene(tag: &str, adjust: impl FnOnce(&mut AllocatorConfig)) -> Scene {
    let mut mesh = TestMesh::with_config(tag, adjust).await;
    let healthy = mesh.launch(2, 1);
    mesh.wait_running(2).await;
    let proc_of = |w: u32| {
        mesh.alloc
            .procs()
            .into_iter()
            .find(|p| mesh.alloc.worker_of(p) == Some(w))
            .expect("the healthy worker's proc")
    };
    let procs = [proc_of(healthy[0]), proc_of(healthy[1])];
    let client = mesh.alloc.client().clone();
    let counter0 = client
        .spawn::<Counter>(&procs[0], "counter", &())
        .await
        .expect("spawn on a healthy worker");
    let pump = client
        .spawn::<Pump>(&procs[0], "pump", &())
        .await
        .expect("spawn on a healthy worker");
    let counter1 = client
        .spawn::<Counter>(&procs[1], "counter", &())
        .await
        .expect("spawn on a healthy worker");
    let echo1 = client
        .spawn::<Echo>(&procs[1], "echo", &())
        .await
        .expect("spawn on a healthy worker");
    let mut s = Scene {
        mesh,
        client,
        healthy: [healthy[0], healthy[1]],
        procs,
        counter0,
        counter1,
        pump,
        echo1,
        sent: [0, 0],
        rss: RssWatch::start(),
    };
    s.healthy_traffic(200).await;
    s
}

impl Scene {
    /// `n` more messages from the controller to counter0 and from the pump on
    /// healthy proc 0 to counter1; checks both counters got everything, in order.
    async fn healthy_traffic(&mut self, n: u64) {
        let from = self.sent;
        let pump = {
            let (client, pump, counter1) = (
                self.client.clone(),
                self.pump.clone(),
                self.counter1.clone(),
            );
            tokio::spawn(async move {
                pump.ask_within(&client, SOON, |done| PumpMsg::Run {
                    to: counter1,
                    from: from[1],
                    n,
                    pad: 64,
                    done,
                })
                .await
            })
        };
        common::count_in_order_from(&self.client, &self.counter0, from[0], from[0] + n, SOON).await;
        let pumped = pump
            .await
            .expect("pump task")
            .expect("the pump on a healthy worker answers");
        assert_eq!(pumped, n);
        let total = from[1] + n;
        let report = common::report_when_received(&self.client, &self.counter1, total, SOON).await;
        assert_eq!(
            report,
            CounterReport {
                received: total,
                out_of_order: 0,
                next: total,
                bytes: total * 64,
            },
            "proc-to-proc traffic between healthy workers"
        );
        self.sent = [from[0] + n, total];
    }

    /// A fake worker with `procs` procs, all attached and running.
    async fn attacker(&mut self, procs: u32) -> FakeWorker {
        let mut fake = FakeWorker::join(&self.mesh, procs).await;
        for i in 0..procs as usize {
            let p = fake.proc(i);
            fake.attach(&mut self.mesh, &p).await;
        }
        fake
    }

    /// Ends the test: the attacker leaves, more healthy traffic, memory
    /// bound, healthy workers untouched, then everything stopped in order.
    async fn finish(mut self, fake: FakeWorker) {
        fake.leave().await;
        self.healthy_traffic(500).await;
        self.rss.assert_bounded();
        let back = self
            .echo1
            .ask(&self.client, |p| EchoMsg::Echo(vec![7], p))
            .await
            .expect("echo on a healthy worker");
        assert_eq!(back, vec![7]);
        let healthy = self.healthy;
        self.mesh.end_with_healthy(&healthy).await;
    }
}

/// An actor id on `proc_id` with a name of `len` bytes, built without the
/// checks (as a hostile peer would).
fn actor_with_name_len(proc_id: &ProcId, len: usize) -> ActorId {
    ActorId {
        proc_id: proc_id.clone(),
        name: CompactString::from("a".repeat(len)),
        pid: 0,
    }
}

/// An envelope from the fake worker's actor on `from_proc`.
fn envelope(from_proc: &ProcId, id: u64, to: Dest, payload: Vec<u8>) -> Envelope {
    Envelope {
        id,
        from: from_proc.actor("fake", 0),
        to,
        return_port: None,
        payload,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_flood_to_unknown_procs_while_never_reading() {
    let mut s = scene("cont-flood", |_| {}).await;
    let mut fake = s.attacker(2).await;
    let (a, b) = (fake.proc(0), fake.proc(1));
    // 1 MiB envelopes to a proc that does not exist, never reading A's stream:
    // every one comes back as a return the allocator owes A.
    let nowhere = Dest::Actor(ProcId::new("nowhere", 7).actor("x", 0));
    let payload = vec![0u8; 1 << 20];
    let attack = async {
        let mut sent = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let env = envelope(&a, sent, nowhere.clone(), payload.clone());
            let frame = codec::frame(&MailboxFrame::Envelope(env), fake.max_frame)
                .expect("encode envelope");
            let write = fake.mailbox(&a).send.write_all(&frame);
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(())) => sent += 1,
                // The allocator stopped reading: it will not take more.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        sent
    };
    let (sent, _) = tokio::join!(attack, s.healthy_traffic(1000));
    eprintln!("the attacker wrote {sent} MiB of envelopes to nowhere");
    let reason = s.mesh.wait_failed(&a, SOON).await;
    assert!(
        reason.contains("returned messages not read"),
        "A failed for another reason: {reason}"
    );
    // The attacker's other proc and its connection are untouched.
    let back = fake.echo_via(&b, &s.echo1, b"b still works").await;
    assert_eq!(back, b"b still works");
    assert!(
        fake.conn.close_reason().is_none(),
        "the attacker was disconnected"
    );
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_with_oversized_ids() {
    let mut s = scene("cont-ids", |_| {}).await;
    let mut fake = s.attacker(3).await;
    let (a, b, c) = (fake.proc(0), fake.proc(1), fake.proc(2));
    // An 8 MiB actor name as the destination, empty payload: it fails to
    // decode (names are at most 128 bytes), so it costs A its stream.
    let huge_to = Dest::Actor(actor_with_name_len(&s.procs[1], 8 << 20));
    let env = envelope(&a, 0, huge_to, Vec::new());
    fake.send_frame(&a, &MailboxFrame::Envelope(env)).await;
    let reason = s.mesh.wait_failed(&a, SOON).await;
    assert!(reason.contains("invalid name"), "A: {reason}");
    // The same as the sender.
    let mut env = envelope(&b, 0, Dest::Actor(s.echo1.id().clone()), Vec::new());
    env.from = actor_with_name_len(&b, 8 << 20);
    fake.send_frame(&b, &MailboxFrame::Envelope(env)).await;
    let reason = s.mesh.wait_failed(&b, SOON).await;
    assert!(reason.contains("invalid name"), "B: {reason}");
    s.healthy_traffic(500).await;
    // C was not involved and still carries messages both ways.
    let back = fake.echo_via(&c, &s.echo1, b"c").await;
    assert_eq!(back, b"c");
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_bogus_returns() {
    let mut s = scene("cont-forged", |_| {}).await;
    let mut fake = s.attacker(4).await;
    let procs: Vec<ProcId> = (0..4).map(|i| fake.proc(i)).collect();
    // A return the worker invents: an envelope "from" the controller, with
    // a reply port, sent back as if undeliverable.
    let forged = Undeliverable::not_delivered(
        Envelope {
            id: 0,
            from: s.client.id().clone(),
            to: Dest::Actor(procs[0].actor("x", 0)),
            return_port: Some(1),
            payload: Vec::new(),
        },
        ReturnReason::PortClosed(s.client.id().port(1)),
    );
    fake.send_frame(&procs[0], &MailboxFrame::Undeliverable(forged))
        .await;
    let reason = s.mesh.wait_failed(&procs[0], SOON).await;
    assert!(reason.contains("refusing them"), "{reason}");
    // A refusal of an envelope never sent.
    let bogus = MailboxFrame::Refused {
        seq: 5,
        reason: ReturnReason::ProcClosing(procs[1].clone()),
    };
    fake.send_frame(&procs[1], &bogus).await;
    let reason = s.mesh.wait_failed(&procs[1], SOON).await;
    assert!(reason.contains("refusal of envelope 5"), "{reason}");
    // A refusal of an envelope already acknowledged: one genuine envelope
    // from the controller, acknowledged, then refused.
    let sink: ActorRef<Counter> = ActorRef::attest(procs[2].actor("sink", 0));
    sink.tell(
        &s.client,
        CounterMsg::Count {
            seq: 0,
            pad: vec![],
        },
    )
    .await
    .expect("tell the attacker's proc");
    match fake.next_mailbox_frame(&procs[2]).await {
        MailboxFrame::Envelope(_) => {}
        other => panic!("expected the controller's envelope, got {other:?}"),
    }
    fake.send_frame(&procs[2], &MailboxFrame::Ack { processed: 1 })
        .await;
    fake.send_frame(
        &procs[2],
        &MailboxFrame::Refused {
            seq: 0,
            reason: ReturnReason::ProcClosing(procs[2].clone()),
        },
    )
    .await;
    let reason = s.mesh.wait_failed(&procs[2], SOON).await;
    assert!(reason.contains("already acknowledged"), "{reason}");
    // A genuine refusal before the ack: the controller gets its own copy back,
    // certainly not delivered, with the worker's (bounded) reason.
    let returned = s.mesh.alloc.returns();
    let sink: ActorRef<Counter> = ActorRef::attest(procs[3].actor("sink", 0));
    sink.tell(
        &s.client,
        CounterMsg::Count {
            seq: 42,
            pad: vec![],
        },
    )
    .await
    .expect("tell the attacker's proc");
    match fake.next_mailbox_frame(&procs[3]).await {
        MailboxFrame::Envelope(_) => {}
        other => panic!("expected the controller's envelope, got {other:?}"),
    }
    let long = "no such actor ".repeat(1000);
    fake.send_frame(
        &procs[3],
        &MailboxFrame::Refused {
            seq: 0,
            reason: ReturnReason::Undecodable {
                actor_type: long.clone(),
                detail: long,
            },
        },
    )
    .await;
    let back = common::next_returned(&returned).await;
    assert_eq!(back.status(), DeliveryStatus::NotDelivered);
    assert_eq!(
        back.recipient(),
        &Recipient::Actor(procs[3].actor("sink", 0))
    );
    let ReturnReason::Undecodable { actor_type, detail } = back.reason() else {
        panic!("the worker's reason, bounded: {back}");
    };
    assert!(actor_type.starts_with("no such actor"), "{back}");
    assert!(
        actor_type.len() < 300 && detail.len() < 300,
        "reason not bounded: {} + {} bytes",
        actor_type.len(),
        detail.len()
    );
    let msg = back.decode::<CounterMsg>().expect("the original payload");
    assert!(matches!(msg.message(), CounterMsg::Count { seq: 42, .. }));
    fake.send_frame(&procs[3], &MailboxFrame::Ack { processed: 1 })
        .await;
    s.healthy_traffic(500).await;
    assert!(
        !matches!(
            s.mesh.alloc.proc_state(&procs[3]),
            Some(ProcState::Failed { .. })
        ),
        "a genuine refusal is no violation"
    );
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_reply_ports_cannot_answer_a_pending_ask() {
    let mut s = scene("cont-ports", |_| {}).await;
    let mut fake = s.attacker(1).await;
    let a = fake.proc(0);
    // The controller asks a healthy echo that answers after 3 s.
    let ask = {
        let (client, echo) = (s.client.clone(), s.echo1.clone());
        tokio::spawn(async move {
            echo.ask_within(&client, SOON, |p| {
                EchoMsg::After(3000, b"genuine".to_vec(), p)
            })
            .await
        })
    };
    // Meanwhile the attacker answers every small port number and thousands
    // of random ones, with a forged value and with forged failures.
    let forged = codec::encode(&b"forged".to_vec()).expect("encode");
    let failure = codec::encode(&"forged failure".to_string()).expect("encode");
    let me = s.client.id().clone();
    let mut id = 0;
    for port in (0..=1024u64).chain((0..4000).map(|_| rand::random::<u64>())) {
        for (to, payload) in [
            (Dest::Port(me.port(port)), &forged),
            (Dest::PortFailure(me.port(port)), &failure),
        ] {
            let env = envelope(&a, id, to, payload.clone());
            id += 1;
            fake.send_frame(&a, &MailboxFrame::Envelope(env)).await;
        }
    }
    let answer = ask
        .await
        .expect("ask task")
        .expect("the genuine reply arrives");
    assert_eq!(answer, b"genuine".to_vec());
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_and_stop_requests_from_another_proc_are_refused() {
    let mut s = scene("cont-system", |_| {}).await;
    let mut fake = s.attacker(1).await;
    let a = fake.proc(0);
    let controller_proc = s.mesh.alloc.controller_proc().id().clone();
    let actors_before = s.mesh.alloc.controller_proc().stats().actors;
    let reply_to = a.actor("fake", 0).port(1);
    let requests = [
        (
            s.procs[1].clone(),
            SystemMsg::Spawn {
                actor_type: "echo".into(),
                name: "evil".into(),
                params: codec::encode(&()).expect("encode"),
            },
        ),
        (
            s.procs[1].clone(),
            SystemMsg::StopActor {
                name: "echo".into(),
            },
        ),
        (
            controller_proc.clone(),
            SystemMsg::Spawn {
                actor_type: "echo".into(),
                name: "evil".into(),
                params: codec::encode(&()).expect("encode"),
            },
        ),
        (
            s.procs[0].clone(),
            SystemMsg::StopActor {
                name: "pump".into(),
            },
        ),
    ];
    for (i, (target, msg)) in requests.iter().enumerate() {
        let payload = codec::encode(&(msg.clone(), reply_to.clone())).expect("encode request");
        let env = envelope(&a, i as u64, Dest::Proc(target.clone()), payload);
        fake.send_frame(&a, &MailboxFrame::Envelope(env)).await;
    }
    // Each comes back to the attacker, refused, with the reason.
    let mut refused = 0;
    while refused < requests.len() {
        match fake.next_mailbox_frame(&a).await {
            MailboxFrame::Undeliverable(u) => {
                assert!(
                    matches!(&u.reason, ReturnReason::RequestRefused { from, .. } if *from == a),
                    "{}",
                    u.reason
                );
                assert!(matches!(u.envelope.to, Dest::Proc(_)));
                refused += 1;
            }
            MailboxFrame::Ack { .. } => {}
            other => panic!("unexpected frame to the attacker: {other:?}"),
        }
    }
    // Nothing happened: the echo and the pump still answer, no "evil" actor
    // exists (the controller can create one by that name on both procs).
    let back = s
        .echo1
        .ask(&s.client, |p| EchoMsg::Echo(vec![1], p))
        .await
        .expect("the healthy echo was not stopped");
    assert_eq!(back, vec![1]);
    assert_eq!(
        s.mesh.alloc.controller_proc().stats().actors,
        actors_before,
        "an actor was created on the controller's proc"
    );
    s.client
        .spawn::<Echo>(&s.procs[1], "evil", &())
        .await
        .expect("no actor named evil existed on the healthy proc");
    s.healthy_traffic(500).await;
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_proc_delays_only_its_senders_and_is_failed() {
    const STALL: Duration = Duration::from_secs(8);
    let mut s = scene("cont-stall", |c| {
        c.limits.mailbox_bytes = 1 << 20;
        c.stall_timeout = STALL;
    })
    .await;
    let fake = s.attacker(1).await;
    let a = fake.proc(0);
    let started = tokio::time::Instant::now();
    // The attacker never reads A's stream. The pump on healthy proc 0 sends
    // A more than its queue holds, from the same stream as its traffic to
    // healthy proc 1; the controller too.
    let sink: ActorRef<Counter> = ActorRef::attest(a.actor("sink", 0));
    let to_a = {
        let (client, pump, sink) = (s.client.clone(), s.pump.clone(), sink.clone());
        tokio::spawn(async move {
            pump.ask_within(&client, SOON * 2, |done| PumpMsg::Run {
                to: sink,
                from: 0,
                n: 2000,
                pad: 200,
                done,
            })
            .await
        })
    };
    let returned = s.mesh.alloc.returns();
    let mut told = 0u64;
    loop {
        let msg = CounterMsg::Count {
            seq: told,
            pad: vec![0; 256],
        };
        match sink
            .tell_within(&s.client, Duration::from_millis(200), msg)
            .await
        {
            Ok(()) => told += 1,
            Err(quicmesh::actor::SendError::Timeout(_)) => break,
            Err(e) => panic!("tell to the stalled proc: {e}"),
        }
    }
    eprintln!("controller told the stalled proc {told} messages before it was full");
    // Healthy traffic flows while A is stalled and not yet failed.
    s.healthy_traffic(2000).await;
    assert!(
        !matches!(s.mesh.alloc.proc_state(&a), Some(ProcState::Failed { .. })),
        "healthy traffic took until the stalled proc was failed ({:?})",
        started.elapsed()
    );
    let reason = s.mesh.wait_failed(&a, STALL + SOON).await;
    assert!(reason.contains("stalled"), "{reason}");
    assert!(
        started.elapsed() >= STALL,
        "failed as stalled after {:?}, before the stall timeout",
        started.elapsed()
    );
    // Everything the controller told A comes back, each marked honestly.
    let mut back = 0;
    while back < told {
        let u = common::next_returned(&returned).await;
        assert!(
            matches!(
                u.reason(),
                ReturnReason::ProcEnded {
                    end: ProcEnd::Failed(FailureReason::Stalled { .. }),
                    ..
                }
            ),
            "{u}"
        );
        // A never acknowledged anything and did not end its stream in order.
        assert!(
            matches!(
                u.status(),
                DeliveryStatus::NotDelivered | DeliveryStatus::PossiblyDelivered
            ),
            "{:?}",
            u.status()
        );
        back += 1;
    }
    // The pump finished handing over (its messages to A came back to it).
    let pumped = to_a
        .await
        .expect("pump task")
        .expect("the pump finished after A failed");
    assert_eq!(pumped, 2000);
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let pump_returned: u64 = s
            .pump
            .ask(&s.client, PumpMsg::Returned)
            .await
            .expect("pump reports its returns");
        if pump_returned == 2000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pump_returned} of the pump's 2000 messages to the stalled proc came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_and_reported_at_a_limited_rate() {
    use quicmesh::testkit::wire::{Hello, WorkerToAllocator, PROTOCOL_VERSION};
    const ATTEMPTS: u64 = 60;
    let mut s = scene("cont-refusals", |_| {}).await;
    let roots = quicmesh::testkit::tls::load_roots(&s.mesh.certs.ca_cert).expect("mesh CA");
    let identity =
        quicmesh::testkit::tls::load_identity(&s.mesh.certs.worker_cert, &s.mesh.certs.worker_key)
            .expect("worker identity");
    let tls = quicmesh::testkit::tls::client_config(roots, identity).expect("client TLS");
    let addr = s.mesh.alloc.local_addr();
    let limits = quicmesh::config::Limits::default();
    let endpoint =
        quicmesh::testkit::transport::client_endpoint(tls, addr, &limits, &Default::default())
            .expect("endpoint");
    let started = tokio::time::Instant::now();
    // Valid certificate, a reserved index, the wrong token, many times over.
    let ticket = s.mesh.alloc.reserve(1);
    for i in 0..ATTEMPTS {
        let conn = quicmesh::testkit::transport::connect(&endpoint, addr, "localhost", SOON)
            .await
            .expect("handshake with a valid certificate");
        let (mut send, _recv) = conn.open_bi().await.expect("control stream");
        let hello = WorkerToAllocator::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            index: ticket.index,
            token: format!("wrong-{i}"),
            pid: 1,
            host: "x".repeat(10_000),
        });
        let frame =
            codec::frame(&hello, quicmesh::testkit::MAX_PRE_ADMISSION_FRAME).expect("encode Hello");
        send.write_all(&frame).await.expect("send Hello");
        let closed = tokio::time::timeout(SOON, conn.closed())
            .await
            .expect("refused in time");
        assert!(closed.to_string().contains("bad token"), "{closed}");
    }
    s.mesh.collect_for(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    let stats = s.mesh.alloc.refusals();
    assert_eq!(stats.connections, ATTEMPTS, "{stats:?}");
    assert!(
        stats
            .last_connection_reason
            .as_deref()
            .is_some_and(|r| r.contains("bad token")),
        "{stats:?}"
    );
    let events: Vec<u64> = s
        .mesh
        .seen
        .iter()
        .filter_map(|e| match e {
            AllocEvent::WorkerRejected { suppressed, .. } => Some(*suppressed),
            _ => None,
        })
        .collect();
    let allowed = 10 * (elapsed.as_secs() + 1);
    assert!(
        (events.len() as u64) <= allowed,
        "{} refusal events in {elapsed:?} (at most {allowed})",
        events.len()
    );
    assert!(!events.is_empty(), "refusals are still reported");
    let accounted: u64 = events.iter().map(|n| n + 1).sum();
    assert!(accounted <= ATTEMPTS);
    endpoint.close(quicmesh::testkit::wire::close::NORMAL, b"done");
    // The reserved index was never taken: a worker with the right token joins.
    s.healthy_traffic(200).await;
    let dummy = FakeWorker::join(&s.mesh, 1).await;
    s.finish(dummy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proc_that_only_reads_returns_is_not_stalled() {
    // Returns are never acknowledged; a worker that takes them off its
    // stream is making progress all the same.
    let mut s = scene("cont-returns-only", |c| {
        c.stall_timeout = Duration::from_secs(1)
    })
    .await;
    let nowhere: ActorRef<Counter> = ActorRef::attest(ProcId::new("nowhere", 3).actor("x", 0));
    let started = tokio::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let sent = s
            .pump
            .ask_within(&s.client, SOON, |done| PumpMsg::Run {
                to: nowhere.clone(),
                from: 0,
                n: 5000,
                pad: 1000,
                done,
            })
            .await
            .expect("the pump sends to nowhere");
        assert_eq!(sent, 5000);
        rounds += 1;
    }
    eprintln!("{rounds} rounds of 5000 returns in {:?}", started.elapsed());
    s.mesh.collect_for(Duration::from_secs(2)).await;
    s.mesh.assert_healthy(s.healthy[0]);
    let dummy = FakeWorker::join(&s.mesh, 1).await;
    s.finish(dummy).await;
}

/// Tells `sink` (on a proc that does not read) until the path to it is full;
/// returns how many were accepted.
async fn fill(client: &Client, sink: &ActorRef<Counter>) -> u64 {
    let mut told = 0u64;
    loop {
        let msg = CounterMsg::Count {
            seq: told,
            pad: vec![0; 256],
        };
        match sink
            .tell_within(client, Duration::from_millis(200), msg)
            .await
        {
            Ok(()) => told += 1,
            Err(quicmesh::actor::SendError::Timeout(_)) => return told,
            Err(e) => panic!("tell: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_cover_nothing_new_do_not_hide_a_stall() {
    const STALL: Duration = Duration::from_secs(2);
    let mut s = scene("cont-dupack", |c| {
        c.limits.mailbox_bytes = 1 << 20;
        c.stall_timeout = STALL;
    })
    .await;
    let mut fake = s.attacker(1).await;
    let a = fake.proc(0);
    let sink: ActorRef<Counter> = ActorRef::attest(a.actor("sink", 0));
    let told = fill(&s.client, &sink).await;
    // A never reads its stream; it only repeats `Ack { processed: 0 }`.
    let started = tokio::time::Instant::now();
    let nothing_new =
        codec::frame(&MailboxFrame::Ack { processed: 0 }, fake.max_frame).expect("encode ack");
    let failed = loop {
        if let Some(ProcState::Failed { reason }) = s.mesh.alloc.proc_state(&a) {
            break reason;
        }
        // Once A is failed the allocator stops reading: a write may fail then.
        let _ = fake.mailbox(&a).send.write_all(&nothing_new).await;
        assert!(
            started.elapsed() < STALL + SOON,
            "A read nothing for {:?} with {told} messages waiting, yet it is {:?}",
            started.elapsed(),
            s.mesh.alloc.proc_state(&a)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(matches!(failed, FailureReason::Stalled { .. }), "{failed}");
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_returned_to_a_sender_that_does_not_read_cost_the_destination_nothing() {
    let mut s = scene("cont-pin", |c| {
        c.limits.mailbox_bytes = 1 << 20;
        c.stall_timeout = Duration::from_secs(5);
    })
    .await;
    let mut fake = s.attacker(2).await;
    let (a, b) = (fake.proc(0), fake.proc(1));
    // To an actor that does not exist on healthy proc 1: its worker refuses
    // each one, and the allocator hands each back to A, which never reads.
    let ghost = Dest::Actor(s.procs[1].actor("ghost", 0));
    for i in 0..64u64 {
        let env = envelope(&a, i, ghost.clone(), vec![0u8; 64 << 10]);
        let frame = codec::frame(&MailboxFrame::Envelope(env), fake.max_frame).expect("encode");
        let write = fake.mailbox(&a).send.write_all(&frame);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(2), write).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
    // Healthy proc 1 keeps its whole budget: traffic to it flows.
    s.healthy_traffic(500).await;
    let reason = s.mesh.wait_failed(&a, SOON).await;
    assert!(reason.contains("returned messages not read"), "{reason}");
    let back = fake.echo_via(&b, &s.echo1, b"b").await;
    assert_eq!(back, b"b");
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_destination_never_stops_a_senders_other_traffic() {
    const STALL: Duration = Duration::from_secs(8);
    let mut s = scene("cont-parkfull", |c| {
        c.limits.mailbox_bytes = 1 << 20;
        c.stall_timeout = STALL;
    })
    .await;
    let fake = s.attacker(1).await;
    let a = fake.proc(0);
    // A second pump on healthy proc 0 sends A far more than A's queue and
    // proc 0's parking budget hold, from the same stream as proc 0's traffic
    // to healthy proc 1.
    let flood_pump = s
        .client
        .spawn::<Pump>(&s.procs[0], "flood", &())
        .await
        .expect("spawn a second pump");
    let sink: ActorRef<Counter> = ActorRef::attest(a.actor("sink", 0));
    let flood = {
        let (client, pump) = (s.client.clone(), flood_pump.clone());
        tokio::spawn(async move {
            pump.ask_within(&client, SOON * 2, |done| PumpMsg::Run {
                to: sink,
                from: 0,
                n: 10_000,
                pad: 1000,
                done,
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Proc 0's other traffic flows while A is full and not yet failed.
    s.healthy_traffic(500).await;
    assert!(
        !matches!(s.mesh.alloc.proc_state(&a), Some(ProcState::Failed { .. })),
        "healthy traffic only flowed once the full destination was failed"
    );
    // The flood was not all parked: what did not fit came back as "full".
    let sent = flood
        .await
        .expect("flood task")
        .expect("the flooding pump finished handing over");
    assert_eq!(sent, 10_000);
    let reason = s.mesh.wait_failed(&a, STALL + SOON).await;
    assert!(reason.contains("stalled"), "{reason}");
    // Everything the flood sent comes back to it (full, or A failed); proc 0
    // is not failed for the returns it is owed.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let returned: u64 = flood_pump
            .ask(&s.client, PumpMsg::Returned)
            .await
            .expect("pump reports its returns");
        if returned == 10_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{returned} of 10000 came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proc_whose_stream_never_opens_is_failed() {
    const STALL: Duration = Duration::from_secs(2);
    let mut s = scene("cont-noattach", |c| {
        c.limits.mailbox_bytes = 1 << 20;
        c.stall_timeout = STALL;
    })
    .await;
    // Joins, but never opens its proc's mailbox stream.
    let fake = FakeWorker::join(&s.mesh, 1).await;
    let a = fake.proc(0);
    let sink: ActorRef<Counter> = ActorRef::attest(a.actor("sink", 0));
    let told = fill(&s.client, &sink).await;
    let reason = s.mesh.wait_failed(&a, STALL + SOON).await;
    assert!(reason.contains("not opened"), "{reason}");
    // What waited for it comes back.
    let returned = s.mesh.alloc.returns();
    for _ in 0..told {
        let u = common::next_returned(&returned).await;
        assert!(
            matches!(
                u.reason(),
                ReturnReason::ProcEnded {
                    end: ProcEnd::Failed(FailureReason::MailboxNotOpened(_)),
                    ..
                }
            ),
            "{u}"
        );
    }
    s.finish(fake).await;
}
