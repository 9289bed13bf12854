//! A hostile or overloaded allocator, faked in-process with the mesh's own
//! server certificate and the wire types, against real worker processes.
//!
//! A `Welcome` with absurd values must end the worker with exit 76 and a
//! message naming the field, never a panic. Busy refusals are retried until
//! the join deadline (then exit 69 with the last reason); a rejection is not
//! retried; a worker refused a few times still joins.

use crate::common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{certs, spawn_worker, ChildGuard, SOON};
use quicmesh::config::{self, HeartbeatConfig, Limits};
use quicmesh::exit_code;
use quicmesh::testkit::transport::{self, FramedRecv, FramedSend};
use quicmesh::testkit::wire::{close, AllocatorToWorker, Welcome, WorkerToAllocator};
use quicmesh::testkit::MAX_PRE_ADMISSION_FRAME;
use quicmesh::tls::CertPaths;

/// What the fake allocator does after reading the Hello of an attempt.
#[derive(Debug, Clone)]
enum Answer {
    /// Send this Welcome, then wait for the worker to close.
    Welcome(Welcome),
    /// Close the connection with this code and reason.
    Close(quinn::VarInt, &'static str),
    /// A sane Welcome, then `Exit { code }`.
    WelcomeThenExit(i32),
}

/// Chooses the answer from the worker's index and its attempt number (1, 2, ...).
type Script = Arc<dyn Fn(u32, u32) -> Answer + Send + Sync>;

/// An in-process "allocator" that follows a script; closed when dropped.
struct FakeAllocator {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    /// Attempts seen, by worker index.
    attempts: Arc<Mutex<HashMap<u32, u32>>>,
    /// How each connection the worker closed was closed (code, reason).
    closes: Arc<Mutex<HashMap<u32, (u64, String)>>>,
}

impl FakeAllocator {
    fn start(certs: &CertPaths, script: Script) -> FakeAllocator {
        let roots = quicmesh::testkit::tls::load_roots(&certs.ca_cert).expect("load CA");
        let identity = quicmesh::testkit::tls::load_identity(&certs.server_cert, &certs.server_key)
            .expect("server identity");
        let server_tls =
            quicmesh::testkit::tls::server_config(roots, identity).expect("server TLS");
        let endpoint = transport::server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            server_tls,
            &HeartbeatConfig::default(),
            &Limits::default(),
            &Default::default(),
        )
        .expect("fake allocator endpoint");
        let attempts = Arc::new(Mutex::new(HashMap::new()));
        let closes = Arc::new(Mutex::new(HashMap::new()));
        let task = {
            let (endpoint, attempts, closes) = (endpoint.clone(), attempts.clone(), closes.clone());
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let (script, attempts, closes) =
                        (script.clone(), attempts.clone(), closes.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve(incoming, script, attempts, closes).await {
                            eprintln!("fake allocator: {e}");
                        }
                    });
                }
            })
        };
        FakeAllocator {
            endpoint,
            task,
            attempts,
            closes,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("fake allocator address")
    }

    fn attempts_of(&self, index: u32) -> u32 {
        self.attempts
            .lock()
            .expect("attempts")
            .get(&index)
            .copied()
            .unwrap_or(0)
    }

    fn close_of(&self, index: u32) -> Option<(u64, String)> {
        self.closes.lock().expect("closes").get(&index).cloned()
    }

    /// The environment of worker `index` dialing this fake.
    fn worker_env(&self, certs: &CertPaths, index: u32) -> Vec<(&'static str, String)> {
        let path = |p: &std::path::Path| p.display().to_string();
        vec![
            (config::ENV_ALLOCATOR_ADDR, self.addr().to_string()),
            (config::ENV_SERVER_NAME, "localhost".into()),
            (config::ENV_INDEX, index.to_string()),
            (config::ENV_TOKEN, "fake-token".into()),
            (config::ENV_CA, path(&certs.ca_cert)),
            (config::ENV_CERT, path(&certs.worker_cert)),
            (config::ENV_KEY, path(&certs.worker_key)),
        ]
    }
}

impl Drop for FakeAllocator {
    fn drop(&mut self) {
        self.endpoint.close(close::SHUTDOWN, b"test done");
        self.task.abort();
    }
}

async fn serve(
    incoming: quinn::Incoming,
    script: Script,
    attempts: Arc<Mutex<HashMap<u32, u32>>>,
    closes: Arc<Mutex<HashMap<u32, (u64, String)>>>,
) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
    let (send, recv) = conn
        .accept_bi()
        .await
        .map_err(|e| format!("accept_bi: {e}"))?;
    let mut recv = FramedRecv::new(recv, MAX_PRE_ADMISSION_FRAME);
    let mut send = FramedSend::new(send, MAX_PRE_ADMISSION_FRAME);
    let hello = match recv.next::<WorkerToAllocator>().await {
        Ok(Some(WorkerToAllocator::Hello(h))) => h,
        other => return Err(format!("expected Hello, got {other:?}")),
    };
    let attempt = {
        let mut attempts = attempts.lock().map_err(|e| e.to_string())?;
        let n = attempts.entry(hello.index).or_insert(0);
        *n += 1;
        *n
    };
    let sane = Welcome {
        heartbeat: HeartbeatConfig::default(),
        limits: Limits::default(),
        stop_timeout: Duration::from_secs(10),
    };
    let welcome = |w: Welcome| AllocatorToWorker::Welcome(w);
    match script(hello.index, attempt) {
        Answer::Close(code, reason) => {
            conn.close(code, reason.as_bytes());
            return Ok(());
        }
        Answer::Welcome(w) => {
            send.send(&welcome(w)).await.map_err(|e| e.to_string())?;
        }
        Answer::WelcomeThenExit(code) => {
            send.send(&welcome(sane)).await.map_err(|e| e.to_string())?;
            send.send(&AllocatorToWorker::Exit { code })
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let ended = tokio::time::timeout(SOON, conn.closed())
        .await
        .map_err(|_| "worker did not close".to_string())?;
    if let quinn::ConnectionError::ApplicationClosed(c) = ended {
        let reason = String::from_utf8_lossy(&c.reason).into_owned();
        closes
            .lock()
            .map_err(|e| e.to_string())?
            .insert(hello.index, (c.error_code.into_inner(), reason));
    }
    Ok(())
}

/// Waits for a worker and returns its exit code and stderr.
async fn outcome(child: ChildGuard) -> (Option<i32>, String) {
    let (status, stderr) = child.output(SOON).await;
    (status.code(), stderr)
}

fn assert_no_panic(what: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{what}: the worker panicked:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_welcome_values_are_protocol_violations_not_panics() {
    let (_dir, certs) = certs("fake-welcome");
    let secs = Duration::from_secs;
    let base = Welcome {
        heartbeat: HeartbeatConfig::default(),
        limits: Limits::default(),
        stop_timeout: secs(10),
    };
    // (field the message must name, the spoiled Welcome)
    let spoil = |f: &dyn Fn(&mut Welcome)| {
        let mut w = base.clone();
        f(&mut w);
        w
    };
    let cases: Vec<(&str, Welcome)> = vec![
        (
            "heartbeat.interval",
            spoil(&|w| w.heartbeat.interval = secs(u64::MAX)),
        ),
        (
            "heartbeat.interval",
            spoil(&|w| w.heartbeat.interval = Duration::ZERO),
        ),
        (
            "heartbeat.interval",
            spoil(&|w| w.heartbeat.interval = Duration::from_nanos(1)),
        ),
        (
            "heartbeat.timeout",
            spoil(&|w| w.heartbeat.timeout = Duration::ZERO),
        ),
        (
            "heartbeat.timeout",
            spoil(&|w| w.heartbeat.timeout = secs(u64::MAX)),
        ),
        (
            "limits.max_frame",
            spoil(&|w| w.limits.max_frame = u32::MAX),
        ),
        ("limits.max_frame", spoil(&|w| w.limits.max_frame = 0)),
        (
            "limits.mailbox_bytes",
            spoil(&|w| w.limits.mailbox_bytes = 0),
        ),
        (
            "limits.mailbox_bytes",
            spoil(&|w| w.limits.mailbox_bytes = u32::MAX),
        ),
        (
            "limits.max_procs_per_worker",
            spoil(&|w| w.limits.max_procs_per_worker = u32::MAX),
        ),
        ("stop_timeout", spoil(&|w| w.stop_timeout = Duration::MAX)),
        ("stop_timeout", spoil(&|w| w.stop_timeout = Duration::ZERO)),
    ];
    let table: Arc<Vec<Welcome>> = Arc::new(cases.iter().map(|(_, w)| w.clone()).collect());
    let fake = FakeAllocator::start(
        &certs,
        Arc::new(move |index, _| match table.get(index as usize) {
            Some(w) => Answer::Welcome(w.clone()),
            None => Answer::Close(close::REJECTED, "no such case"),
        }),
    );
    // One worker process per case, all at once.
    let children: Vec<ChildGuard> = (0..cases.len() as u32)
        .map(|i| spawn_worker(&fake.worker_env(&certs, i)))
        .collect();
    for (i, ((field, welcome), child)) in cases.iter().zip(children).enumerate() {
        let what = format!("case {i} ({field} in {welcome:?})");
        let (code, stderr) = outcome(child).await;
        eprintln!("--- {what} ---\n{stderr}");
        assert_no_panic(&what, &stderr);
        assert_eq!(code, Some(exit_code::PROTOCOL), "{what}:\n{stderr}");
        assert!(
            stderr.contains(field) && stderr.contains("out of range"),
            "{what}: stderr does not name the field:\n{stderr}"
        );
        assert_eq!(
            fake.attempts_of(i as u32),
            1,
            "{what}: a violation was retried"
        );
    }
    // The worker told the allocator why, with the PROTOCOL code.
    let deadline = tokio::time::Instant::now() + SOON;
    for (i, (field, _)) in cases.iter().enumerate() {
        let closed = loop {
            if let Some(c) = fake.close_of(i as u32) {
                break c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "case {i}: the worker's close never reached the allocator"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            closed.0,
            close::PROTOCOL.into_inner(),
            "case {i}: {closed:?}"
        );
        assert!(closed.1.contains(field), "case {i}: {closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_refusals_are_retried_until_the_join_deadline() {
    let (_dir, certs) = certs("fake-busy");
    let fake = FakeAllocator::start(
        &certs,
        Arc::new(|_, _| Answer::Close(close::BUSY, "fake allocator is busy")),
    );
    let mut env = fake.worker_env(&certs, 0);
    env.push((config::ENV_JOIN_TIMEOUT, "2s".into()));
    let start = Instant::now();
    let (code, stderr) = outcome(spawn_worker(&env)).await;
    let took = start.elapsed();
    eprintln!("{stderr}");
    assert_no_panic("busy", &stderr);
    assert_eq!(code, Some(exit_code::UNREACHABLE), "{stderr}");
    assert!(
        stderr.contains("join deadline") && stderr.contains("fake allocator is busy"),
        "the exit does not give the deadline and the last reason:\n{stderr}"
    );
    assert!(
        fake.attempts_of(0) >= 2,
        "only {} attempts in 2 s",
        fake.attempts_of(0)
    );
    // It may give up before the deadline (when the next wait would pass it),
    // never long after it.
    assert!(took < SOON, "gave up only after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_a_few_times_then_welcomed_the_worker_joins() {
    let (_dir, certs) = certs("fake-then-welcome");
    let fake = FakeAllocator::start(
        &certs,
        Arc::new(|_, attempt| match attempt {
            1 => Answer::Close(close::BUSY, "busy, come back later"),
            2 => Answer::Close(close::HELLO_TIMEOUT, "no Hello in time"),
            _ => Answer::WelcomeThenExit(42),
        }),
    );
    let (code, stderr) = outcome(spawn_worker(&fake.worker_env(&certs, 0))).await;
    eprintln!("{stderr}");
    assert_no_panic("retry then join", &stderr);
    assert_eq!(code, Some(42), "{stderr}");
    assert_eq!(fake.attempts_of(0), 3);
    assert!(stderr.contains("busy, come back later"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_not_retried() {
    let (_dir, certs) = certs("fake-rejected");
    let fake = FakeAllocator::start(
        &certs,
        Arc::new(|index, _| {
            Answer::Close(close::REJECTED, if index == 0 { "bad token" } else { "?" })
        }),
    );
    let (code, stderr) = outcome(spawn_worker(&fake.worker_env(&certs, 0))).await;
    assert_no_panic("rejected", &stderr);
    assert_eq!(code, Some(exit_code::REJECTED), "{stderr}");
    assert!(stderr.contains("bad token"), "{stderr}");
    assert_eq!(fake.attempts_of(0), 1, "a rejection was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocator_that_never_answers_is_retried_until_the_deadline() {
    let (_dir, certs) = certs("fake-silent");
    // A bound UDP socket nobody reads: packets vanish, like a dead host.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind silent socket");
    let addr = silent.local_addr().expect("silent address");
    let env = vec![
        (config::ENV_ALLOCATOR_ADDR, addr.to_string()),
        (config::ENV_SERVER_NAME, "localhost".into()),
        (config::ENV_INDEX, "0".into()),
        (config::ENV_TOKEN, "t".into()),
        (config::ENV_CA, certs.ca_cert.display().to_string()),
        (config::ENV_CERT, certs.worker_cert.display().to_string()),
        (config::ENV_KEY, certs.worker_key.display().to_string()),
        (config::ENV_JOIN_TIMEOUT, "1500ms".into()),
    ];
    let start = Instant::now();
    let (code, stderr) = outcome(spawn_worker(&env)).await;
    let took = start.elapsed();
    eprintln!("{stderr}");
    assert_no_panic("silent", &stderr);
    assert_eq!(code, Some(exit_code::UNREACHABLE), "{stderr}");
    assert!(
        stderr.contains("join deadline of 1.5s"),
        "the exit does not name the deadline:\n{stderr}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}, before its deadline"
    );
    assert!(took < SOON, "gave up only after {took:?}");
    drop(silent);
}
