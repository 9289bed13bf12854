//! Hostile and broken peers: wrong certificates, wrong tokens, garbage on
//! the control stream, silence. Each must be refused with a clear reason,
//! and the healthy worker of the same allocation must not notice.

use crate::common;
use common::{valid_client, with_var, without_var, Env};

use std::time::Duration;

use common::{certs, spawn_worker, ChildGuard, TestMesh, SOON};
use quicmesh::allocator::{AllocEvent, ProcState};
use quicmesh::config::LinkConfig;
use quicmesh::config::{self, Limits};
use quicmesh::exit_code;
use quicmesh::testkit::transport::{self, FramedRecv};
use quicmesh::testkit::wire::{
    close, codec, AllocatorToWorker, Hello, WorkerToAllocator, PROTOCOL_VERSION,
};
use quicmesh::testkit::MAX_PRE_ADMISSION_FRAME;

/// A mesh with one launched worker (one proc) that is running; returns its index.
async fn healthy_mesh(tag: &str) -> (TestMesh, u32) {
    healthy_mesh_with(tag, |_| {}).await
}

async fn healthy_mesh_with(
    tag: &str,
    adjust: impl FnOnce(&mut quicmesh::allocator::AllocatorConfig),
) -> (TestMesh, u32) {
    let mut mesh = TestMesh::with_config(tag, adjust).await;
    let healthy = mesh.launch(1, 1)[0];
    wait_running_on(&mut mesh, healthy).await;
    (mesh, healthy)
}

/// Waits until a proc of worker `index` is reported running.
async fn wait_running_on(mesh: &mut TestMesh, index: u32) {
    let already = mesh.seen.iter().any(|e| running_on(e, index));
    if !already {
        mesh.wait_for(SOON, &format!("a running proc on worker {index}"), |e| {
            running_on(e, index)
        })
        .await;
    }
}

fn running_on(e: &AllocEvent, index: u32) -> bool {
    matches!(e, AllocEvent::Proc { worker, state: ProcState::Running, .. } if *worker == index)
}

/// Waits for a `WorkerRejected` whose reason contains `needle`; returns the reason.
async fn wait_rejected(mesh: &mut TestMesh, needle: &str) -> String {
    let event = mesh
        .wait_for(
            SOON,
            &format!("a rejection mentioning {needle:?}"),
            |e| matches!(e, AllocEvent::WorkerRejected { reason, .. } if reason.contains(needle)),
        )
        .await;
    match event {
        AllocEvent::WorkerRejected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

/// Lets events arrive for a second, checks the healthy workers were not
/// disturbed, then shuts the allocation down.
async fn settle_and_finish(mut mesh: TestMesh, healthy: &[u32]) {
    mesh.collect_for(Duration::from_secs(1)).await;
    for index in healthy {
        mesh.assert_healthy(*index);
    }
    mesh.finish().await;
}

fn var(env: &Env, name: &str) -> String {
    env.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} missing from the ticket"))
}

/// Waits for a spawned worker to exit and checks its code; returns its stderr.
async fn exits_with(child: ChildGuard, code: i32, what: &str) -> String {
    let (status, stderr) = child.output(SOON).await;
    eprintln!("--- stderr of {what} ---\n{stderr}--- end ---");
    assert_eq!(
        status.code(),
        Some(code),
        "{what}: unexpected exit status {status}; stderr:\n{stderr}"
    );
    stderr
}

/// Waits for `conn` to be closed by the peer with an application close.
async fn app_close(conn: &quinn::Connection) -> quinn::ApplicationClose {
    let err = tokio::time::timeout(SOON, conn.closed())
        .await
        .expect("allocator did not close the connection in time");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => c,
        other => panic!("expected an application close, got: {other}"),
    }
}

fn reason_of(c: &quinn::ApplicationClose) -> String {
    String::from_utf8_lossy(&c.reason).into_owned()
}

/// Opens the control stream, writes `bytes` (without finishing the stream)
/// and returns the close the allocator answers with.
async fn send_raw_and_get_close(mesh: &TestMesh, bytes: &[u8]) -> quinn::ApplicationClose {
    let (endpoint, conn) = valid_client(mesh).await;
    let (mut send, _recv) = conn.open_bi().await.expect("open control stream");
    send.write_all(bytes)
        .await
        .expect("write to control stream");
    // `send` stays open (not finished) until the allocator closes the connection.
    let closed = app_close(&conn).await;
    drop(send);
    endpoint.close(close::NORMAL, b"test done");
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cert_from_another_ca() {
    let (mut mesh, healthy) = healthy_mesh("hostile-other-ca").await;
    let (_other_dir, other) = certs("other");
    let ticket = mesh.alloc.reserve(1);
    let env = with_var(
        &ticket.env,
        config::ENV_CERT,
        other.worker_cert.display().to_string(),
    );
    let env = with_var(
        &env,
        config::ENV_KEY,
        other.worker_key.display().to_string(),
    );

    let stderr = exits_with(
        spawn_worker(&env),
        exit_code::UNREACHABLE,
        "worker with a foreign certificate",
    )
    .await;
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("handshake"),
        "stderr does not mention the handshake:\n{stderr}"
    );
    assert!(
        lower.contains("certificate") || lower.contains("unknown ca") || lower.contains("issuer"),
        "stderr does not mention the certificate problem:\n{stderr}"
    );

    let reason = wait_rejected(&mut mesh, "handshake failed").await;
    assert!(
        reason.contains("certificate") || reason.contains("Issuer"),
        "rejection does not name the certificate problem: {reason}"
    );
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate() {
    let (mut mesh, healthy) = healthy_mesh("hostile-no-cert").await;
    let ticket = mesh.alloc.reserve(1);
    let roots = quicmesh::testkit::tls::load_roots(&mesh.certs.ca_cert).expect("load mesh CA");
    let config = quicmesh::testkit::tls::client_config_without_cert(roots)
        .expect("client TLS config without certificate");
    let addr = mesh.alloc.local_addr();
    let endpoint =
        transport::client_endpoint(config, addr, &Limits::default(), &LinkConfig::default())
            .expect("client endpoint");

    match transport::connect(&endpoint, addr, "localhost", Duration::from_secs(10)).await {
        Err(e) => eprintln!("connect failed as it may: {e}"),
        Ok(conn) => {
            // TLS 1.3: the client may consider the handshake done before the
            // server has checked (and refused) the missing certificate. Try a
            // genuine Hello anyway: no Welcome may come back.
            let hello = WorkerToAllocator::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                index: ticket.index,
                token: var(&ticket.env, config::ENV_TOKEN),
                pid: std::process::id(),
                host: "hostile".into(),
            });
            let frame = codec::frame(&hello, MAX_PRE_ADMISSION_FRAME).expect("encode Hello");
            let answer = tokio::time::timeout(SOON, async {
                let (mut send, recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
                send.write_all(&frame)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let mut recv = FramedRecv::new(recv, MAX_PRE_ADMISSION_FRAME);
                let got = recv.next::<AllocatorToWorker>().await;
                drop(send);
                match got {
                    Ok(Some(msg)) => Ok(msg),
                    Ok(None) => Err("control stream ended".to_string()),
                    Err(e) => Err(format!("read: {e}")),
                }
            })
            .await
            .expect("connection without a client certificate neither answered nor closed");
            match answer {
                Ok(msg) => panic!("a client without a certificate got an answer: {msg:?}"),
                Err(e) => eprintln!("no answer, as expected: {e}"),
            }
            let err = tokio::time::timeout(SOON, conn.closed())
                .await
                .expect("connection without a client certificate was not closed");
            eprintln!("closed: {err}");
            assert!(
                !matches!(err, quinn::ConnectionError::LocallyClosed),
                "the test closed the connection itself"
            );
        }
    }
    endpoint.close(close::NORMAL, b"test done");

    let reason = wait_rejected(&mut mesh, "handshake failed").await;
    assert!(
        reason.contains("certificate"),
        "rejection does not say the certificate is missing: {reason}"
    );
    assert!(
        !mesh
            .seen
            .iter()
            .any(|e| matches!(e, AllocEvent::WorkerJoined { index, .. } if *index == ticket.index)),
        "a worker without a certificate was admitted\n{}",
        mesh.log()
    );
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token() {
    let (mut mesh, healthy) = healthy_mesh("hostile-wrong-token").await;
    let ticket = mesh.alloc.reserve(1);
    let bad = with_var(&ticket.env, config::ENV_TOKEN, "0".repeat(64));

    let stderr = exits_with(
        spawn_worker(&bad),
        exit_code::REJECTED,
        "worker with a wrong token",
    )
    .await;
    assert!(
        stderr.contains("bad token"),
        "stderr does not say bad token:\n{stderr}"
    );
    let reason = wait_rejected(&mut mesh, "bad token").await;
    // Tokens are secrets: neither the offered nor the issued one is ever echoed.
    let issued = var(&ticket.env, config::ENV_TOKEN);
    for secret in [var(&bad, config::ENV_TOKEN), issued] {
        assert!(
            !stderr.contains(&secret),
            "worker log leaks a token:\n{stderr}"
        );
        assert!(
            !reason.contains(&secret),
            "rejection leaks a token: {reason}"
        );
    }

    // The slot is still free: the right token is admitted.
    let mut good = spawn_worker(&ticket.env);
    wait_running_on(&mut mesh, ticket.index).await;
    mesh.collect_for(Duration::from_secs(1)).await;
    mesh.assert_healthy(ticket.index);
    mesh.assert_healthy(healthy);

    mesh.alloc
        .stop_worker(ticket.index, 0)
        .expect("stop the admitted worker");
    let status = good.wait(SOON).await;
    assert_eq!(status.code(), Some(0), "admitted worker: {status}");
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_index() {
    let (mut mesh, healthy) = healthy_mesh("hostile-unknown-index").await;
    let ticket = mesh.alloc.reserve(1);
    let env = with_var(&ticket.env, config::ENV_INDEX, "999");

    let stderr = exits_with(
        spawn_worker(&env),
        exit_code::REJECTED,
        "worker with index 999",
    )
    .await;
    assert!(
        stderr.contains("unknown worker index 999"),
        "stderr does not name the index:\n{stderr}"
    );
    wait_rejected(&mut mesh, "unknown worker index 999").await;
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_index() {
    let (mut mesh, healthy) = healthy_mesh("hostile-duplicate").await;
    let ticket = mesh.alloc.reserve(1);
    let a = ticket.index;
    let mut worker_a = spawn_worker(&ticket.env);
    wait_running_on(&mut mesh, a).await;

    let stderr = exits_with(
        spawn_worker(&ticket.env),
        exit_code::REJECTED,
        "second worker with the same index",
    )
    .await;
    assert!(
        stderr.contains("already connected"),
        "stderr does not say already connected:\n{stderr}"
    );
    wait_rejected(&mut mesh, "already connected").await;

    mesh.collect_for(Duration::from_secs(1)).await;
    mesh.assert_healthy(a);
    mesh.assert_healthy(healthy);

    mesh.alloc.stop_worker(a, 0).expect("stop worker A");
    let status = worker_a.wait(SOON).await;
    assert_eq!(status.code(), Some(0), "worker A: {status}");
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_malformed_environment() {
    let (mesh, healthy) = healthy_mesh("hostile-env").await;
    let ticket = mesh.alloc.reserve(1);
    // Every required variable (QUICMESH_SERVER_NAME is not: it defaults to
    // localhost, see tests/suite/worker_settings.rs).
    let all = [
        config::ENV_ALLOCATOR_ADDR,
        config::ENV_INDEX,
        config::ENV_TOKEN,
        config::ENV_CA,
        config::ENV_CERT,
        config::ENV_KEY,
    ];
    let missing_ca = std::env::temp_dir()
        .join("quicmesh-test-no-such-dir/ca.pem")
        .display()
        .to_string();
    // (what, environment, text stderr must contain)
    let mut cases: Vec<(String, Env, String)> = all
        .iter()
        .map(|name| {
            (
                format!("without {name}"),
                without_var(&ticket.env, name),
                name.to_string(),
            )
        })
        .collect();
    cases.push((
        "QUICMESH_INDEX=abc".into(),
        with_var(&ticket.env, config::ENV_INDEX, "abc"),
        config::ENV_INDEX.into(),
    ));
    cases.push((
        "QUICMESH_CA missing file".into(),
        with_var(&ticket.env, config::ENV_CA, missing_ca.clone()),
        missing_ca,
    ));
    cases.push((
        "QUICMESH_ALLOCATOR_ADDR=nonsense".into(),
        with_var(&ticket.env, config::ENV_ALLOCATOR_ADDR, "nonsense"),
        config::ENV_ALLOCATOR_ADDR.into(),
    ));

    // All at once: each must fail on its own within the deadline.
    let children: Vec<ChildGuard> = cases.iter().map(|(_, env, _)| spawn_worker(env)).collect();
    for ((what, _, needle), child) in cases.iter().zip(children) {
        let stderr = exits_with(child, exit_code::CONFIG, what).await;
        assert!(
            stderr.contains(needle.as_str()),
            "{what}: stderr does not name {needle}:\n{stderr}"
        );
    }
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_control_stream() {
    let (mut mesh, healthy) = healthy_mesh("hostile-garbage").await;

    // A small, plausible length prefix, then 60 bytes that are no message
    // ('t' = 116 is not a variant of WorkerToAllocator).
    let mut junk = vec![0, 0, 0, 60];
    junk.extend_from_slice(b"this is not a quicmesh frame, only junk bytes on the stream!");
    assert_eq!(junk.len(), 64);
    let c = send_raw_and_get_close(&mesh, &junk).await;
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::PROTOCOL, "junk frame: {reason}");
    assert!(
        reason.contains("invalid Hello"),
        "junk frame reason: {reason}"
    );
    assert!(
        reason.contains("undecodable"),
        "junk frame reason: {reason}"
    );
    wait_rejected(&mut mesh, "undecodable").await;

    // Plain text from another protocol: "GET " read as a length is far over the limit.
    let mut http = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: hostile\r\n\r\n".to_vec();
    http.resize(64, b'.');
    let c = send_raw_and_get_close(&mesh, &http).await;
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::PROTOCOL, "HTTP request: {reason}");
    assert!(
        reason.contains("exceeds the limit"),
        "HTTP request reason: {reason}"
    );
    wait_rejected(&mut mesh, "exceeds the limit").await;

    // A prefix announcing more than follows, then the end of the stream.
    let (endpoint, conn) = valid_client(&mesh).await;
    let (mut send, _recv) = conn.open_bi().await.expect("open control stream");
    send.write_all(&[0, 0, 0, 100, 1, 2, 3])
        .await
        .expect("write truncated frame");
    send.finish().expect("finish control stream");
    let c = app_close(&conn).await;
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::PROTOCOL, "truncated frame: {reason}");
    assert!(
        reason.contains("ended inside a frame"),
        "truncated frame reason: {reason}"
    );
    endpoint.close(close::NORMAL, b"test done");
    wait_rejected(&mut mesh, "ended inside a frame").await;

    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix() {
    let (mut mesh, healthy) = healthy_mesh("hostile-oversized").await;
    // Only the prefix: no body is ever sent, so the refusal cannot have waited for it.
    let c = send_raw_and_get_close(&mesh, &[0xff, 0xff, 0xff, 0xff]).await;
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::PROTOCOL, "reason: {reason}");
    assert!(reason.contains("exceeds the limit"), "reason: {reason}");
    assert!(
        reason.contains(&MAX_PRE_ADMISSION_FRAME.to_string()),
        "reason does not give the limit: {reason}"
    );
    assert!(
        reason.contains(&u32::MAX.to_string()),
        "reason does not give the announced length: {reason}"
    );
    wait_rejected(&mut mesh, "exceeds the limit").await;
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_silence() {
    let (mut mesh, healthy) = healthy_mesh_with("hostile-silence", |c| {
        c.transport.hello_timeout = Duration::from_secs(2);
    })
    .await;
    let (endpoint, conn) = valid_client(&mesh).await;
    let start = tokio::time::Instant::now();
    // No stream at all: quinn's accept_bi on the allocator never returns.
    let c = app_close(&conn).await;
    let elapsed = start.elapsed();
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::HELLO_TIMEOUT, "reason: {reason}");
    assert!(reason.contains("no Hello"), "reason: {reason}");
    assert!(
        elapsed < Duration::from_secs(20),
        "closed only after {elapsed:?}"
    );
    endpoint.close(close::NORMAL, b"test done");
    wait_rejected(&mut mesh, "no Hello").await;
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_before_hello() {
    let (mut mesh, healthy) = healthy_mesh("hostile-leaving-first").await;
    let leaving = WorkerToAllocator::Leaving {
        code: 0,
        reason: "bye before hello".into(),
    };
    let frame = codec::frame(&leaving, MAX_PRE_ADMISSION_FRAME).expect("encode Leaving");
    let c = send_raw_and_get_close(&mesh, &frame).await;
    let reason = reason_of(&c);
    assert_eq!(c.error_code, close::PROTOCOL, "reason: {reason}");
    assert!(
        reason.contains("first frame must be Hello"),
        "reason: {reason}"
    );
    assert!(
        reason.contains("Leaving"),
        "reason does not name the frame: {reason}"
    );
    wait_rejected(&mut mesh, "first frame must be Hello").await;
    settle_and_finish(mesh, &[healthy]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_stream_before_admission() {
    let (mut mesh, healthy) = healthy_mesh_with("hostile-streams", |c| {
        c.transport.hello_timeout = Duration::from_secs(3);
    })
    .await;
    let (endpoint, conn) = valid_client(&mesh).await;
    // The control stream may be opened (and is, once written to)...
    let (mut control, _control_recv) = conn.open_bi().await.expect("open control stream");
    control
        .write_all(&[0, 0])
        .await
        .expect("half a length prefix");
    // ...but nothing else until a Hello is admitted: the allocator grants
    // one stream before admission, so opening a second one waits.
    let second = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await;
    assert!(
        second.is_err(),
        "a second stream was opened before admission"
    );
    let c = app_close(&conn).await;
    assert_eq!(c.error_code, close::HELLO_TIMEOUT, "{}", reason_of(&c));
    drop(control);
    endpoint.close(close::NORMAL, b"test done");
    wait_rejected(&mut mesh, "no Hello").await;
    settle_and_finish(mesh, &[healthy]).await;
}
