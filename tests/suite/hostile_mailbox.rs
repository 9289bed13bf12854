//! Hostile mailbox streams from an admitted worker: streams that name no
//! proc or a proc the worker does not host, and frames that break the
//! mailbox protocol on a proc's own stream. Each must cost the offender
//! that stream (or that proc) only: its other procs, its connection and the
//! healthy worker of the same allocation must not notice.
//!
//! The offender is a [`FakeWorker`]: an in-process QUIC client holding the
//! mesh's valid worker certificate and a genuine ticket, speaking the
//! protocol by hand so that it can also speak it wrongly.

use crate::common;

use std::time::Duration;

use common::fake_worker::FakeWorker;
use common::{TestMesh, SOON};
use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::actor::Client;
use quicmesh::allocator::AllocEvent;
use quicmesh::config::Limits;
use quicmesh::testkit::wire::{
    close, codec, AllocatorToWorker, Dest, Envelope, LogFrame, LogLevel, LogLine, LogSource,
    MailboxFrame, MailboxOpen, RoutedEnvelope, StreamOpen, MAX_ROUTES,
};
use quicmesh::{ActorRef, ProcId};

/// An allocation with one real, healthy worker running an echo actor.
struct Scene {
    mesh: TestMesh,
    real: u32,
    real_proc: ProcId,
    echo: ActorRef<Echo>,
    client: Client,
}

async fn scene(tag: &str) -> Scene {
    let mut mesh = TestMesh::new(tag).await;
    let real = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let real_proc = mesh
        .alloc
        .procs()
        .into_iter()
        .find(|p| mesh.alloc.worker_of(p) == Some(real))
        .expect("the real worker's proc");
    let client = mesh.alloc.client().clone();
    let echo = client
        .spawn::<Echo>(&real_proc, "echo", &())
        .await
        .expect("spawn echo on the real worker");
    let back = echo
        .ask(&client, |p| EchoMsg::Echo(vec![1], p))
        .await
        .expect("echo on the real worker answers before the test");
    assert_eq!(back, vec![1]);
    Scene {
        mesh,
        real,
        real_proc,
        echo,
        client,
    }
}

impl Scene {
    /// Waits for a `MailboxRejected` of worker `worker` whose reason contains `needle`.
    async fn wait_rejected(&mut self, worker: u32, needle: &str) -> String {
        let event = self
            .mesh
            .wait_for(
                SOON,
                &format!("a mailbox rejection mentioning {needle:?}"),
                |e| {
                    matches!(e, AllocEvent::MailboxRejected { worker: w, reason, .. }
                        if *w == worker && reason.contains(needle))
                },
            )
            .await;
        match event {
            AllocEvent::MailboxRejected { reason, .. } => reason,
            _ => unreachable!(),
        }
    }

    /// Asserts that `proc_id` never reached a terminal state.
    fn assert_not_ended(&self, proc_id: &ProcId) {
        for e in &self.mesh.seen {
            if let AllocEvent::Proc {
                proc_id: p, state, ..
            } = e
            {
                assert!(
                    !(p == proc_id && state.is_terminal()),
                    "{proc_id} ended: {e}\nall events:\n{}",
                    self.mesh.log()
                );
            }
        }
    }

    /// Asserts that the fake worker's connection is up and the allocator still counts it.
    fn assert_fake_connected(&self, fake: &FakeWorker) {
        if let Some(e) = fake.conn.close_reason() {
            panic!(
                "fake worker {} was disconnected: {e}\n{}",
                fake.index,
                self.mesh.log()
            );
        }
        for e in &self.mesh.seen {
            assert!(
                !matches!(e, AllocEvent::WorkerLeft { index, .. } if *index == fake.index),
                "fake worker left: {e}\nall events:\n{}",
                self.mesh.log()
            );
        }
        assert!(
            self.mesh.alloc.connected_workers().contains(&fake.index),
            "fake worker {} is no longer connected\n{}",
            fake.index,
            self.mesh.log()
        );
    }

    /// Waits until the allocator counts `n` envelopes to `proc_id` as delivered.
    async fn wait_delivered(&self, proc_id: &ProcId, n: u64) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let stats = self
                .mesh
                .alloc
                .link_stats(proc_id)
                .unwrap_or_else(|| panic!("no link for {proc_id}"));
            if stats.delivered >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{proc_id}: {} delivered after {SOON:?}, expected {n}: {stats:?}",
                stats.delivered
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets the fake worker leave, checks the real worker is untouched, and shuts down.
    async fn finish(mut self, fake: FakeWorker) {
        let fake_index = fake.index;
        let back = self
            .echo
            .ask(&self.client, |p| EchoMsg::Echo(vec![1], p))
            .await
            .expect("echo on the real worker still answers");
        assert_eq!(back, vec![1]);
        fake.leave().await;
        let left = self
            .mesh
            .ensure(
                SOON,
                "the fake worker leaving",
                |e| matches!(e, AllocEvent::WorkerLeft { index, .. } if *index == fake_index),
            )
            .await;
        assert!(
            matches!(&left, AllocEvent::WorkerLeft { end, .. } if !end.is_failure()),
            "the fake worker's orderly leave was reported as a failure: {left}"
        );
        self.mesh.collect_for(Duration::from_millis(500)).await;
        self.mesh.assert_healthy(self.real);
        self.assert_not_ended(&self.real_proc);
        self.mesh.finish().await;
    }
}

/// Expects the allocator to abandon a refused stream: reset towards us, stopped from us.
async fn expect_refused(what: &str, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    match tokio::time::timeout(SOON, recv.read_chunk(1024, true)).await {
        Ok(Err(quinn::ReadError::Reset(code))) => {
            assert_eq!(
                code,
                close::PROTOCOL,
                "{what}: reset with an unexpected code"
            )
        }
        Ok(Err(e)) => panic!("{what}: reading failed, but not by a reset: {e}"),
        Ok(Ok(Some(chunk))) => panic!(
            "{what}: the allocator sent {} bytes on a refused stream",
            chunk.bytes.len()
        ),
        Ok(Ok(None)) => {
            panic!("{what}: the allocator finished a refused stream instead of resetting it")
        }
        Err(_) => panic!("{what}: the refused stream was not reset within {SOON:?}"),
    }
    match tokio::time::timeout(SOON, send.stopped()).await {
        Ok(Ok(Some(code))) => assert_eq!(
            code,
            close::PROTOCOL,
            "{what}: stopped with an unexpected code"
        ),
        Ok(Ok(None)) => panic!("{what}: the allocator read the refused stream to its end"),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: the refused stream was not stopped within {SOON:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_stream_naming_no_proc() {
    let mut s = scene("hmb-naming").await;
    let mut fake = FakeWorker::join(&s.mesh, 2).await;
    let a = fake.proc(0);
    fake.attach(&mut s.mesh, &a).await;

    // Text of another protocol: "GET " read as a length is far over the frame limit.
    let (mut send, mut recv) = fake
        .open_raw_stream(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let reason = s
        .wait_rejected(fake.index, "does not start with a proc name")
        .await;
    assert!(reason.contains("exceeds the limit"), "reason: {reason}");
    expect_refused("stream opened with HTTP", &mut send, &mut recv).await;

    // A well-formed frame whose body is no MailboxOpen.
    let mut junk = vec![0, 0, 0, 8];
    junk.extend_from_slice(&[0xff; 8]);
    let (mut send, mut recv) = fake.open_raw_stream(&junk).await;
    let reason = s
        .wait_rejected(fake.index, "does not start with a proc name")
        .await;
    assert!(reason.contains("undecodable"), "reason: {reason}");
    expect_refused("stream opened with a junk frame", &mut send, &mut recv).await;

    // The worker and its proc A are untouched: A's stream still carries messages both ways.
    let back = fake.echo_via(&a, &s.echo, b"still here").await;
    assert_eq!(back, b"still here");
    s.wait_delivered(&a, 1).await;
    s.mesh.collect_for(Duration::from_secs(1)).await;
    s.assert_fake_connected(&fake);
    s.assert_not_ended(&a);
    s.assert_not_ended(&fake.proc(1));
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_stream_for_a_proc_not_owned() {
    let mut s = scene("hmb-not-owned").await;
    let mut fake = FakeWorker::join(&s.mesh, 1).await;
    let a = fake.proc(0);
    fake.attach(&mut s.mesh, &a).await;

    // The real worker's proc: hijacking it must not work.
    let open = MailboxOpen {
        proc_id: s.real_proc.clone(),
    };
    let bytes =
        codec::frame(&StreamOpen::Mailbox(open), fake.max_frame).expect("encode MailboxOpen");
    let (mut send, mut recv) = fake.open_raw_stream(&bytes).await;
    let reason = s.wait_rejected(fake.index, "does not host").await;
    assert!(
        reason.contains(&s.real_proc.to_string()),
        "reason does not name the proc: {reason}"
    );
    expect_refused("stream for the real worker's proc", &mut send, &mut recv).await;

    // A proc that does not exist at all.
    let nowhere = ProcId::new("other", 99);
    let open = MailboxOpen {
        proc_id: nowhere.clone(),
    };
    let bytes =
        codec::frame(&StreamOpen::Mailbox(open), fake.max_frame).expect("encode MailboxOpen");
    let (mut send, mut recv) = fake.open_raw_stream(&bytes).await;
    let reason = s.wait_rejected(fake.index, "does not host").await;
    assert!(
        reason.contains(&nowhere.to_string()),
        "reason does not name the proc: {reason}"
    );
    expect_refused("stream for an unknown proc", &mut send, &mut recv).await;

    // A second stream for the worker's own, already attached proc.
    let open = MailboxOpen { proc_id: a.clone() };
    let bytes =
        codec::frame(&StreamOpen::Mailbox(open), fake.max_frame).expect("encode MailboxOpen");
    let (mut send, mut recv) = fake.open_raw_stream(&bytes).await;
    let reason = s.wait_rejected(fake.index, "second mailbox stream").await;
    assert!(reason.contains(&a.to_string()), "reason: {reason}");
    expect_refused("second stream for its own proc", &mut send, &mut recv).await;

    // The real proc is still reached through its own worker, and A still works.
    let back = s
        .echo
        .ask(&s.client, |p| EchoMsg::Echo(vec![2], p))
        .await
        .expect("echo on the real worker after the hijack attempt");
    assert_eq!(back, vec![2]);
    let back = fake.echo_via(&a, &s.echo, b"mine").await;
    assert_eq!(back, b"mine");
    s.mesh.collect_for(Duration::from_secs(1)).await;
    s.assert_fake_connected(&fake);
    s.assert_not_ended(&a);
    s.finish(fake).await;
}

/// Fake worker with procs A and B, both attached and running; `bad` is
/// written on A's stream. A must fail with a reason containing every
/// needle; B, the fake worker's connection and the real worker must not notice.
async fn violation_on_a(tag: &str, bad: impl FnOnce(&Scene) -> Vec<u8>, needles: &[&str]) {
    let mut s = scene(tag).await;
    let mut fake = FakeWorker::join(&s.mesh, 2).await;
    let (a, b) = (fake.proc(0), fake.proc(1));
    fake.attach(&mut s.mesh, &a).await;
    fake.attach(&mut s.mesh, &b).await;
    let back = fake.echo_via(&b, &s.echo, b"before").await;
    assert_eq!(back, b"before");

    let bytes = bad(&s);
    fake.send_raw(&a, &bytes).await;
    let reason = s.mesh.wait_failed(&a, SOON).await;
    for needle in needles {
        assert!(
            reason.contains(needle),
            "failure of {a} does not mention {needle:?}: {reason}"
        );
    }
    // The allocator stops reading A's stream and tells the worker to stop A.
    let code = fake.wait_stopped(&a).await;
    assert_eq!(code, Some(close::PROTOCOL), "stream of {a}");
    let stop_a = AllocatorToWorker::StopProc { proc_id: a.clone() };
    fake.wait_control("StopProc for A", |m| *m == stop_a).await;

    // B still carries messages both ways; nothing else ended.
    let back = fake.echo_via(&b, &s.echo, b"after").await;
    assert_eq!(back, b"after");
    s.wait_delivered(&b, 2).await;
    s.mesh.collect_for(Duration::from_secs(1)).await;
    s.assert_fake_connected(&fake);
    s.assert_not_ended(&b);
    s.finish(fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_claiming_another_sender() {
    violation_on_a(
        "hmb-claim",
        |s| {
            let env = Envelope {
                id: 0,
                from: s.echo.id().clone(),
                to: Dest::Actor(s.echo.id().clone()),
                return_port: None,
                payload: vec![],
            };
            codec::frame(&MailboxFrame::Envelope(env), Limits::default().max_frame)
                .expect("encode envelope")
        },
        &["protocol violation", "claims to come from"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_envelope() {
    violation_on_a(
        "hmb-undecodable",
        |_| {
            let mut bytes = vec![0, 0, 0, 8];
            bytes.extend_from_slice(&[0xff; 8]);
            bytes
        },
        &["protocol violation", "undecodable"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_for_more_than_sent() {
    violation_on_a(
        "hmb-ack",
        |_| {
            codec::frame(
                &MailboxFrame::Ack { processed: 1000 },
                Limits::default().max_frame,
            )
            .expect("encode ack")
        },
        &["protocol violation", "ack", "1000"],
    )
    .await;
}

fn routed(route: u32) -> RoutedEnvelope {
    RoutedEnvelope {
        route,
        id: 0,
        return_port: None,
        payload: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_on_a_route_never_defined() {
    violation_on_a(
        "hmb-route-undefined",
        |_| {
            codec::frame(
                &MailboxFrame::Routed(routed(3)),
                Limits::default().max_frame,
            )
            .expect("encode routed envelope")
        },
        &["protocol violation", "route 3", "never defined"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_beyond_the_limit() {
    violation_on_a(
        "hmb-route-limit",
        |s| {
            let define = MailboxFrame::Route {
                route: MAX_ROUTES,
                from: s.echo.id().clone(),
                to: Dest::Actor(s.echo.id().clone()),
            };
            codec::frame(&define, Limits::default().max_frame).expect("encode route")
        },
        &[
            "protocol violation",
            &format!("route {MAX_ROUTES}"),
            "limit",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_claiming_another_sender() {
    violation_on_a(
        "hmb-route-claim",
        |s| {
            let define = MailboxFrame::Route {
                route: 0,
                from: s.echo.id().clone(),
                to: Dest::Actor(s.echo.id().clone()),
            };
            let max = Limits::default().max_frame;
            let mut bytes = codec::frame(&define, max).expect("encode route");
            bytes.extend(codec::frame(&MailboxFrame::Routed(routed(0)), max).expect("encode"));
            bytes
        },
        &["protocol violation", "claims to come from"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stream_with_garbage_or_opened_twice() {
    let mut s = scene("hmb-logs").await;
    let mut logs = s.mesh.alloc.logs();
    let mut fake = FakeWorker::join(&s.mesh, 1).await;
    let a = fake.proc(0);
    fake.attach(&mut s.mesh, &a).await;

    // A proper log stream: its line reaches the controller, cut to one line.
    let mut first = codec::frame(&StreamOpen::Logs, fake.max_frame).expect("encode StreamOpen");
    let line = LogFrame::Line(LogLine {
        level: LogLevel::Warn,
        source: LogSource::Tracing,
        target: "fake".into(),
        text: format!("two\nlines{}", "x".repeat(10_000)),
    });
    first.extend(codec::frame(&line, fake.max_frame).expect("encode LogFrame"));
    let (mut send, mut recv) = fake.open_raw_stream(&first).await;
    let index = fake.index;
    let record = tokio::time::timeout(SOON, async {
        loop {
            match logs.next().await {
                Some(r) if r.worker == index => return r,
                Some(_) => continue, // the real worker's lines
                None => panic!("log stream ended"),
            }
        }
    })
    .await
    .expect("the fake worker's line in time");
    assert_eq!(record.worker, fake.index);
    assert!(record.text.starts_with("two lines"), "{}", record.text);
    assert!(record.text.ends_with(" [line cut]"), "{}", record.text);
    assert!(record.text.len() < 4200, "{}", record.text.len());

    // A second log stream is refused; the first is not disturbed.
    let second = codec::frame(&StreamOpen::Logs, fake.max_frame).expect("encode StreamOpen");
    let (mut send2, mut recv2) = fake.open_raw_stream(&second).await;
    s.wait_rejected(fake.index, "second log stream").await;
    expect_refused("second log stream", &mut send2, &mut recv2).await;

    // Garbage on the first one: that stream is refused, nothing else.
    let mut junk = vec![0, 0, 0, 8];
    junk.extend_from_slice(&[0xff; 8]);
    send.write_all(&junk).await.expect("write junk");
    let reason = s.wait_rejected(fake.index, "log stream").await;
    assert!(reason.contains("undecodable"), "reason: {reason}");
    expect_refused("log stream with a junk frame", &mut send, &mut recv).await;

    let back = fake.echo_via(&a, &s.echo, b"still here").await;
    assert_eq!(back, b"still here");
    s.mesh.collect_for(Duration::from_millis(500)).await;
    s.assert_fake_connected(&fake);
    s.assert_not_ended(&a);
    s.finish(fake).await;
}
