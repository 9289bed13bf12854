//! Floods before admission: strangers who only send first packets, a
//! stranger who proves its address and then stalls every handshake, and
//! bursts of real workers larger than the handshake cap. Real workers must
//! get in in every case, and the allocator must keep serving the mesh.

use crate::common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{spawn_worker, ChildGuard, TestMesh, SOON};
use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::allocator::{AllocEvent, ProcState};

/// A stranger without any certificate sending QUIC Initial packets, each
/// from a fresh source port that is closed right after: it never answers
/// anything (a Retry, a server handshake), exactly like an attacker using
/// spoofed or throw-away addresses. Stopped and joined when dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    count: u64,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Flood {
    /// Sends `count` Initials to `target`, evenly spread over `over`, unless stopped first.
    fn start(target: SocketAddr, ca: &Path, count: u64, over: Duration) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let ca = ca.to_path_buf();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || flood(target, &ca, count, over, &stop, &sent))
        };
        Flood {
            stop,
            sent,
            count,
            thread: Some(thread),
        }
    }

    /// Whether it is still sending (not stopped, not done).
    fn running(&self) -> bool {
        self.sent() < self.count && !self.stop.load(Ordering::Relaxed)
    }

    /// Initials sent so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns how many Initials it sent.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("flood thread");
        thread
            .join()
            .expect("flood thread panicked")
            .expect("flood could not send");
        self.sent()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flood(
    target: SocketAddr,
    ca: &Path,
    count: u64,
    over: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), String> {
    let roots = quicmesh::testkit::tls::load_roots(ca).map_err(|e| e.to_string())?;
    let tls =
        quicmesh::testkit::tls::client_config_without_cert(roots).map_err(|e| e.to_string())?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut endpoint = None;
    let mut buf = Vec::with_capacity(2048);
    let start = Instant::now();
    for i in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + over.mul_f64(i as f64 / count as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // A fresh sans-IO endpoint now and then keeps its bookkeeping small.
        if i % 100 == 0 {
            endpoint = Some(quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            ));
        }
        let ep = endpoint.as_mut().ok_or("no endpoint")?;
        let now = Instant::now();
        let (_, mut conn) = ep
            .connect(now, config.clone(), target, "localhost")
            .map_err(|e| e.to_string())?;
        buf.clear();
        let transmit = conn
            .poll_transmit(now, 1, &mut buf)
            .ok_or("no Initial to send")?;
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        socket
            .send_to(&buf[..transmit.size], target)
            .map_err(|e| e.to_string())?;
        sent.fetch_add(1, Ordering::Relaxed);
        // `socket` and `conn` are dropped: nothing ever answers from that port.
    }
    Ok(())
}

/// The TLS configuration of a stranger: trusts the mesh CA, has no certificate.
fn stranger_config(ca: &Path) -> Result<quinn::ClientConfig, String> {
    let roots = quicmesh::testkit::tls::load_roots(ca).map_err(|e| e.to_string())?;
    let tls =
        quicmesh::testkit::tls::client_config_without_cert(roots).map_err(|e| e.to_string())?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// A stranger's connection attempt driven by hand: it answers the Retry (so
/// its address is validated) and then never answers again.
struct Stall {
    socket: UdpSocket,
    endpoint: quinn_proto::Endpoint,
    conn: quinn_proto::Connection,
    target: SocketAddr,
}

/// What the allocator did with a validated attempt.
#[derive(Debug, PartialEq)]
enum Stalled {
    /// It started the handshake: the attempt holds a slot.
    Held,
    /// It refused the attempt (CONNECTION_REFUSED).
    Refused,
}

impl Stall {
    /// Sends an Initial from `source`, answers the Retry, and reports what
    /// the allocator did with the validated attempt.
    fn start(
        target: SocketAddr,
        source: IpAddr,
        config: &quinn::ClientConfig,
    ) -> Result<(Stall, Stalled), String> {
        let socket = UdpSocket::bind((source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        );
        let (_, conn) = endpoint
            .connect(Instant::now(), config.clone(), target, "localhost")
            .map_err(|e| e.to_string())?;
        let mut stall = Stall {
            socket,
            endpoint,
            conn,
            target,
        };
        stall.send()?; // the first Initial
        stall.receive()?; // the Retry
        if stall.lost().is_some() {
            return Err("closed instead of a Retry".into());
        }
        stall.send()?; // the Initial with the Retry token: validated
        stall.receive()?; // the allocator's handshake, or its refusal
        let outcome = match stall.lost() {
            None => Stalled::Held,
            Some(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Stalled::Refused
            }
            Some(other) => return Err(format!("unexpected answer: {other}")),
        };
        Ok((stall, outcome))
    }

    fn send(&mut self) -> Result<(), String> {
        let mut buf = Vec::with_capacity(4096);
        let transmit = self
            .conn
            .poll_transmit(Instant::now(), 1, &mut buf)
            .ok_or("nothing to send")?;
        self.socket
            .send_to(&buf[..transmit.size], self.target)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Reads one datagram and hands it to the connection.
    fn receive(&mut self) -> Result<(), String> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = self
            .socket
            .recv_from(&mut buf)
            .map_err(|e| format!("no answer: {e}"))?;
        let mut response = Vec::new();
        let data = bytes::BytesMut::from(&buf[..n]);
        if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) =
            self.endpoint
                .handle(Instant::now(), from, None, None, data, &mut response)
        {
            self.conn.handle_event(event);
        }
        Ok(())
    }

    /// Why the connection ended, if it did.
    fn lost(&mut self) -> Option<quinn::ConnectionError> {
        while let Some(event) = self.conn.poll() {
            if let quinn_proto::Event::ConnectionLost { reason } = event {
                return Some(reason);
            }
        }
        None
    }

    /// Reads (without ever answering) until the allocator abandons the
    /// handshake; returns how it closed it.
    fn wait_abandoned(&mut self) -> Result<quinn::ConnectionError, String> {
        loop {
            self.receive()?;
            if let Some(reason) = self.lost() {
                return Ok(reason);
            }
        }
    }
}

/// Spawns an echo actor on `proc_id` and checks it answers.
async fn echo_on(
    client: &quicmesh::Client,
    proc_id: &quicmesh::ProcId,
    name: &str,
) -> quicmesh::ActorRef<Echo> {
    let echo = client
        .spawn::<Echo>(proc_id, name, &())
        .await
        .unwrap_or_else(|e| panic!("spawn echo on {proc_id}: {e}"));
    ask_echo(client, &echo).await;
    echo
}

/// One echo round trip; returns how long it took.
async fn ask_echo(client: &quicmesh::Client, echo: &quicmesh::ActorRef<Echo>) -> Duration {
    let start = Instant::now();
    let back: Vec<u8> = echo
        .ask_within(client, SOON, |port| EchoMsg::Echo(b"ping".to_vec(), port))
        .await
        .unwrap_or_else(|e| panic!("echo {}: {e}", echo.id()));
    assert_eq!(back, b"ping");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_launched_during_an_initial_flood_joins() {
    // 200 Initials a second (2,000 over 10 s reproduce the problem on an
    // allocator without address validation: its 256 handshake slots are all
    // held by strangers after about 1.3 s), for as long as the test needs it.
    const PER_SECOND: u64 = 200;
    const AT_MOST: Duration = Duration::from_secs(60);
    let mut mesh = TestMesh::new("flood-initials").await;
    let healthy = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let client = mesh.alloc.client().clone();
    let procs = mesh.alloc.procs();
    let echo = echo_on(&client, &procs[0], "echo-healthy").await;

    let flood = Flood::start(
        mesh.alloc.local_addr(),
        &mesh.certs.ca_cert,
        PER_SECOND * AT_MOST.as_secs(),
        AT_MOST,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent_before = flood.sent();
    assert!(
        sent_before > 300,
        "flood too slow to matter: {sent_before} Initials in 3 s"
    );
    let late = mesh.launch(1, 1)[0];

    // While the flood goes on, the healthy worker keeps answering and the
    // late one joins.
    let mut slowest = Duration::ZERO;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {late} did not join during the flood\n{}",
            mesh.log()
        );
        slowest = slowest.max(ask_echo(&client, &echo).await);
        let events = mesh.collect_for(Duration::from_millis(200)).await;
        let exited =
            |e: &&AllocEvent| matches!(e, AllocEvent::WorkerExited { index, .. } if *index == late);
        if let Some(e) = events.iter().find(exited) {
            panic!("worker {late} launched during the flood exited: {e}");
        }
        let running = |e: &AllocEvent| matches!(e, AllocEvent::Proc { worker, state: ProcState::Running, .. } if *worker == late);
        if events.iter().any(running) {
            break;
        }
    }
    let late_proc = mesh
        .alloc
        .procs()
        .into_iter()
        .find(|p| mesh.alloc.worker_of(p) == Some(late))
        .expect("the late worker's proc");
    let late_echo = echo_on(&client, &late_proc, "echo-late").await;
    slowest = slowest.max(ask_echo(&client, &echo).await);
    let still_flooding = flood.running();
    let total = flood.stop();
    eprintln!(
        "flood: {sent_before} Initials before the late worker was launched, {total} in all; \
         slowest echo during the flood {slowest:?}"
    );
    assert!(
        still_flooding,
        "the flood ended before the late worker answered ({total} Initials)"
    );
    // Strangers who never answer a Retry never reach a handshake: nothing was
    // started for them, so nothing had to be refused or timed out.
    let rejected = mesh
        .seen
        .iter()
        .filter(|e| matches!(e, AllocEvent::WorkerRejected { .. }))
        .count();
    assert_eq!(
        rejected,
        0,
        "handshakes were started for strangers\n{}",
        mesh.log()
    );
    ask_echo(&client, &late_echo).await;
    mesh.end_with_healthy(&[healthy, late]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_workers_larger_than_the_handshake_cap_all_join() {
    const WORKERS: usize = 24;
    let mut mesh = TestMesh::with_config("flood-burst", |c| {
        // A quarter per source, at least one: from loopback, one at a time.
        c.transport.max_pending_handshakes = 4;
    })
    .await;
    let tickets: Vec<_> = (0..WORKERS).map(|_| mesh.alloc.reserve(1)).collect();
    // All at once, each with its stderr kept to count its retries.
    let children: Vec<ChildGuard> = tickets.iter().map(|t| spawn_worker(&t.env)).collect();
    mesh.wait_running(WORKERS).await;

    let client = mesh.alloc.client().clone();
    let procs = mesh.alloc.procs();
    assert_eq!(procs.len(), WORKERS);
    for (i, proc_id) in procs.iter().enumerate() {
        echo_on(&client, proc_id, &format!("echo-{i}")).await;
    }
    mesh.assert_no_failures();

    let told = mesh.alloc.stop_all(0);
    assert_eq!(told, WORKERS);
    let mut retries = 0;
    for (ticket, child) in tickets.iter().zip(children) {
        let (status, stderr) = child.output(SOON).await;
        assert_eq!(
            status.code(),
            Some(0),
            "worker {}: {status}\n{stderr}",
            ticket.index
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        retries += stderr.matches("retrying in").count();
    }
    eprintln!("{WORKERS} workers joined through 4 handshake slots with {retries} retries");
    // 24 workers started together through one slot per source: refusals are
    // certain, and each was followed by a retry that succeeded.
    assert!(
        retries > 0,
        "no worker was ever refused: the cap was not exercised"
    );
    let exits: Vec<_> = mesh
        .seen
        .iter()
        .filter(|e| matches!(e, AllocEvent::WorkerExited { .. }))
        .collect();
    assert!(exits.is_empty(), "{exits:?}");
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_stranger_gets_only_its_share_and_only_until_the_tls_deadline() {
    const TLS_TIMEOUT: Duration = Duration::from_secs(3);
    let mut mesh = TestMesh::with_config("flood-share", |c| {
        c.transport.max_pending_handshakes = 8; // 2 per source
        c.transport.tls_timeout = TLS_TIMEOUT;
    })
    .await;
    let target = mesh.alloc.local_addr();
    let config = stranger_config(&mesh.certs.ca_cert).expect("stranger TLS config");
    // Another loopback address: a different source from the worker's 127.0.0.1.
    let attacker: IpAddr = "127.0.0.2".parse().expect("address");

    // The stranger answers Retries (so it is validated) and then stalls
    // every handshake, trying to hold all 8 slots.
    let mut held = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    for _ in 0..8 {
        let (stall, outcome) =
            tokio::task::block_in_place(|| Stall::start(target, attacker, &config))
                .expect("stall a handshake");
        match outcome {
            Stalled::Held => held.push(stall),
            Stalled::Refused => refused += 1,
        }
    }
    let took = started.elapsed();
    assert!(
        took < TLS_TIMEOUT,
        "stalling took {took:?}, longer than the TLS deadline: nothing was measured"
    );
    assert_eq!(
        (held.len(), refused),
        (2, 6),
        "a single source held more than its quarter of the handshake slots"
    );

    // While it holds its share, a worker from another address gets in on its
    // first attempt.
    let ticket = mesh.alloc.reserve(1);
    let worker = spawn_worker(&ticket.env);
    mesh.wait_running(1).await;

    // The stranger's slots are given back at the TLS deadline: the allocator
    // abandons each stalled handshake.
    let mut first = held.remove(0);
    let closed = tokio::task::block_in_place(|| first.wait_abandoned()).expect("abandoned");
    let after = started.elapsed();
    assert!(
        matches!(&closed, quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR),
        "{closed}"
    );
    assert!(
        after >= TLS_TIMEOUT && after < SOON,
        "stalled handshake abandoned after {after:?}"
    );
    // Its share is free again.
    let (_again, outcome) =
        tokio::task::block_in_place(|| Stall::start(target, attacker, &config)).expect("stall");
    assert_eq!(outcome, Stalled::Held);

    mesh.alloc.stop_all(0);
    let (status, stderr) = worker.output(SOON).await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("retrying"),
        "the worker was refused while a stranger held its share:\n{stderr}"
    );
    mesh.finish().await;
}
