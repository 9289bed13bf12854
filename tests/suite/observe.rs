//! Seeing the mesh: worker log lines over the connection, the metrics
//! endpoint, and whole lines on the controller's output. Real worker
//! processes, real sockets, real certificates.

use crate::common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{ChildGuard, TestMesh, SOON};
use quicmesh::actor::builtin::{Counter, CounterMsg, CounterReport, Echo, EchoMsg};
use quicmesh::allocator::{LogLevel, LogRecord, LogSource, Logs};
use quicmesh::testkit::actors::{Chatter, ChatterMsg};
use quicmesh::testkit::wire::codec;

/// Waits for a log record matching `pred`; panics with what came on timeout.
async fn wait_log(logs: &mut Logs, what: &str, pred: impl Fn(&LogRecord) -> bool) -> LogRecord {
    let deadline = tokio::time::Instant::now() + SOON;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, logs.next()).await {
            Ok(Some(r)) if pred(&r) => return r,
            Ok(Some(r)) => seen.push(r.to_string()),
            Ok(None) => panic!("log stream ended while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {SOON:?}; lines seen:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_worker_started_elsewhere_reach_the_controller() {
    let mut mesh = TestMesh::with_config("obs-elsewhere", |c| c.print_worker_logs = false).await;
    let mut logs = mesh.alloc.logs();
    let ticket = mesh.alloc.reserve(1);
    // Started by hand, its own output going nowhere: only the connection carries it.
    let mut cmd = tokio::process::Command::new(common::bin());
    cmd.arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(ticket.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = ChildGuard(Some(cmd.spawn().expect("spawn quicmesh worker")));
    mesh.wait_running(1).await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client();
    let chatter = client
        .spawn::<Chatter>(&proc_id, "chatter", &())
        .await
        .expect("spawn chatter");
    let text = "a line from a worker nobody launched";
    chatter
        .ask(client, |done| ChatterMsg::Say {
            text: text.into(),
            done,
        })
        .await
        .expect("say");
    let host = host_name();
    let from_worker = |r: &LogRecord| r.worker == ticket.index && r.host == host;
    let event = wait_log(&mut logs, "the tracing event", |r| {
        from_worker(r) && r.source == LogSource::Tracing && r.text == text
    })
    .await;
    assert_eq!(event.level, LogLevel::Info);
    assert_eq!(event.target, "chatter");
    assert_eq!(
        event.to_string(),
        format!("[worker {} {host}] INFO chatter: {text}", ticket.index)
    );
    let mut got = [false, false];
    while !(got[0] && got[1]) {
        let r = wait_log(&mut logs, "the stdout and stderr lines", from_worker).await;
        if r.source == LogSource::Stdout && r.text == format!("{text} (stdout)") {
            got[0] = true;
        }
        if r.source == LogSource::Stderr && r.text == format!("{text} (stderr)") {
            got[1] = true;
        }
    }
    mesh.alloc.stop_all(0);
    let status = child.wait(SOON).await;
    assert_eq!(status.code(), Some(0));
    mesh.finish().await;
}

/// Asks `echo` `n` times; returns the slowest round trip.
async fn asks(client: &quicmesh::Client, echo: &quicmesh::ActorRef<Echo>, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let back: Vec<u8> = echo
            .ask_within(client, Duration::from_secs(10), |port| {
                EchoMsg::Echo(vec![i as u8; 64], port)
            })
            .await
            .expect("ask during the flood");
        assert_eq!(back, vec![i as u8; 64]);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_worker_keeps_its_mailbox_moving_and_counts_the_drops() {
    let mut mesh = TestMesh::with_config("obs-flood", |c| c.print_worker_logs = false).await;
    let index = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client().clone();
    let echo = client
        .spawn::<Echo>(&proc_id, "echo", &())
        .await
        .expect("spawn echo");
    let chatter = client
        .spawn::<Chatter>(&proc_id, "chatter", &())
        .await
        .expect("spawn chatter");
    let quiet = asks(&client, &echo, 50).await;

    for stdout in [false, true] {
        let flood = {
            let (client, chatter) = (client.clone(), chatter.clone());
            tokio::spawn(async move {
                chatter
                    .ask_within(&client, SOON, |done| ChatterMsg::Flood {
                        lines: 200_000,
                        stdout,
                        done,
                    })
                    .await
            })
        };
        let started = Instant::now();
        let slowest = asks(&client, &echo, 200).await;
        let elapsed = started.elapsed();
        let flooded = flood.await.expect("flood task").expect("flood");
        assert_eq!(flooded, 200_000);
        println!(
            "flood (stdout: {stdout}): 200 asks in {elapsed:?}, slowest {slowest:?} (quiet: slowest {quiet:?})"
        );
        // Generous: a loaded 2-core machine; a blocked mailbox would time out the asks.
        assert!(
            elapsed < Duration::from_secs(30),
            "200 asks took {elapsed:?}"
        );
    }
    // The lines that did not fit were dropped and counted, on one side or the other.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let metrics = mesh.alloc.metrics();
        let w = &metrics.workers[index as usize];
        let dropped = w.log_lines_dropped_by_worker + w.log_lines_dropped_by_allocator;
        if dropped > 0 && w.log_lines > 0 {
            println!(
                "log lines: {} accepted, {} dropped by the worker, {} by the allocator",
                w.log_lines, w.log_lines_dropped_by_worker, w.log_lines_dropped_by_allocator
            );
            assert!(w.log_lines + dropped <= 400_000 + 1000, "{w:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drops counted: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.assert_healthy(index);
    mesh.end_with_healthy(&[index]).await;
}

/// `GET path` over plain HTTP/1.1; returns the status line and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(SOON)).expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the series `name{labels}` in a Prometheus text body.
fn series(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_what_the_test_did() {
    // A long heartbeat timeout, so that a worker stopped for a second
    // misses beats without being declared dead.
    let mut mesh = TestMesh::with_config("obs-metrics", |c| {
        c.print_worker_logs = false;
        c.heartbeat = quicmesh::config::HeartbeatConfig::new(
            Duration::from_millis(250),
            Duration::from_secs(10),
        );
    })
    .await;
    let server = mesh
        .alloc
        .serve_metrics("127.0.0.1:0".parse().unwrap())
        .await
        .expect("serve metrics");
    let addr = server.local_addr();
    let index = mesh.launch(1, 2)[0];
    mesh.wait_running(2).await;
    let procs = mesh.alloc.procs();
    let client = mesh.alloc.client();
    let counter = client
        .spawn::<Counter>(&procs[0], "counter", &())
        .await
        .expect("spawn counter");
    let delivered = || mesh.alloc.link_stats(&procs[0]).expect("link").delivered;
    let wait_delivered = |n: u64| async move {
        let deadline = tokio::time::Instant::now() + SOON;
        while delivered() < n {
            let now = delivered();
            assert!(
                tokio::time::Instant::now() < deadline,
                "acks did not come: {now} delivered, want {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The spawn request, acknowledged.
    wait_delivered(1).await;
    let before = mesh.alloc.link_stats(&procs[0]).expect("link");
    const TELLS: u64 = 37;
    let mut told_bytes = 0;
    for seq in 0..TELLS {
        let msg = CounterMsg::Count {
            seq,
            pad: vec![7; seq as usize],
        };
        told_bytes += codec::encode(&msg).expect("encode").len() as u64;
        counter.tell(client, msg).await.expect("tell");
    }
    // Counted when written, so exact once they are acknowledged.
    wait_delivered(1 + TELLS).await;
    let after = mesh.alloc.link_stats(&procs[0]).expect("link");
    assert_eq!(after.sent - before.sent, TELLS);
    assert_eq!(after.sent_bytes - before.sent_bytes, told_bytes);
    // The worker sent only the spawn's reply.
    assert_eq!(after.received, 1, "{after:?}");
    let report: CounterReport = counter
        .ask(client, CounterMsg::Report)
        .await
        .expect("report");
    assert_eq!(report.received, TELLS);
    // The spawn, the tells and the report ask.
    let want = 1 + TELLS + 1;
    wait_delivered(want).await;
    assert_eq!(delivered(), want);

    // A worker with the wrong token: refused at admission.
    let ticket = mesh.alloc.reserve(1);
    let env = common::with_var(&ticket.env, quicmesh::config::ENV_TOKEN, "0".repeat(64));
    let mut bad = common::spawn_worker(&env);
    let status = bad.wait(SOON).await;
    assert_eq!(status.code(), Some(quicmesh::exit_code::REJECTED));
    // And one naming an index never reserved.
    let env = common::with_var(&ticket.env, quicmesh::config::ENV_INDEX, "999");
    let mut stranger = common::spawn_worker(&env);
    let status = stranger.wait(SOON).await;
    assert_eq!(status.code(), Some(quicmesh::exit_code::REJECTED));

    // The worker stops for a second: it misses beats (the timeout is 10 s).
    let pid = mesh.alloc.worker_pid(index).expect("worker pid");
    assert_eq!(mesh.alloc.metrics().workers[index as usize].beats_missed, 0);
    common::signal(pid, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    common::signal(pid, libc::SIGCONT);
    let deadline = tokio::time::Instant::now() + SOON;
    while mesh.alloc.metrics().workers[index as usize].beats_missed < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no missed beats counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("scrape");
    assert!(status.contains("200"), "{status}\n{body}");
    let p0 = format!(
        "quicmesh_proc_stream_delivered_total{{proc=\"{}\",worker=\"{index}\"}}",
        procs[0]
    );
    assert_eq!(series(&body, &p0), Some(want as f64), "{p0}\n{body}");
    assert_eq!(
        series(&body, "quicmesh_procs{state=\"running\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        series(&body, "quicmesh_workers{state=\"connected\"}"),
        Some(1.0),
        "{body}"
    );
    // The bad worker's slot stays waiting; its refusal is counted.
    assert_eq!(
        series(&body, "quicmesh_workers{state=\"waiting\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        series(&body, "quicmesh_refused_total{kind=\"connection\"}"),
        Some(2.0),
        "{body}"
    );
    for (reason, n) in [("bad_token", 1.0), ("unknown_index", 1.0), ("busy", 0.0)] {
        let name = format!("quicmesh_handshakes_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(series(&body, &name), Some(n), "{name}\n{body}");
    }
    let missed = format!("quicmesh_heartbeats_missed_total{{worker=\"{index}\"}}");
    assert!(
        series(&body, &missed).is_some_and(|n| n >= 2.0),
        "{missed}\n{body}"
    );
    for (direction, n) in [("to_proc", want), ("from_proc", 2)] {
        let name = format!(
            "quicmesh_proc_stream_messages_total{{proc=\"{}\",worker=\"{index}\",direction=\"{direction}\"}}",
            procs[0]
        );
        assert_eq!(series(&body, &name), Some(n as f64), "{name}\n{body}");
    }
    let told = format!(
        "quicmesh_proc_stream_payload_bytes_total{{proc=\"{}\",worker=\"{index}\",direction=\"to_proc\"}}",
        procs[0]
    );
    assert!(
        series(&body, &told).is_some_and(|b| b >= told_bytes as f64),
        "{told}\n{body}"
    );
    let rtt = format!("quicmesh_worker_rtt_seconds{{worker=\"{index}\"}}");
    assert!(
        series(&body, &rtt).is_some_and(|s| s > 0.0 && s < 1.0),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    let (status, _) = tokio::task::spawn_blocking(move || http_get(addr, "/other"))
        .await
        .expect("scrape");
    assert!(status.contains("404"), "{status}");

    // The same numbers as data.
    let rows = mesh.alloc.status();
    assert_eq!(rows[index as usize].procs, 2);
    assert_eq!(rows[index as usize].state, "connected");

    // Dropping the handle stops the endpoint.
    drop(server);
    let deadline = tokio::time::Instant::now() + SOON;
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still listening after drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.end_with_healthy(&[index]).await;
}

/// Whether `line` is one whole line of the demo's output: one of its own
/// lines, a log line of the controller, or one line of one worker.
fn is_whole_line(line: &str) -> bool {
    let timestamps = line.matches("Z  ").count() + line.matches("Z ERROR").count();
    if line.matches("[worker ").count() > 1 || timestamps > 1 {
        return false;
    }
    let own = [
        "certificates: ",
        "listening on ",
        "metrics on ",
        "mesh up: ",
        "actors: ",
        "status: ",
        "stopping: ",
        "summary: ",
    ];
    if own.iter().any(|p| line.starts_with(p)) {
        return true;
    }
    let timestamp =
        |s: &str| s.len() > 20 && s.as_bytes()[4] == b'-' && s[..4].parse::<u32>().is_ok();
    if timestamp(line) {
        return true;
    }
    // `[worker N] <timestamp> ...` (passed through) or `[worker N host] ...` (forwarded).
    let Some(rest) = line.strip_prefix("[worker ") else {
        return false;
    };
    let Some((inside, after)) = rest.split_once("] ") else {
        return false;
    };
    let mut parts = inside.split(' ');
    let index_ok = parts.next().is_some_and(|i| i.parse::<u32>().is_ok());
    match parts.next() {
        None => index_ok && timestamp(after),
        Some(_host) => index_ok && parts.next().is_none() && !after.is_empty(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_eight_workers_and_the_controller_never_interleave() {
    let dir = common::TempDir::new("obs-lines");
    let certs = dir.path().join("certs");
    // stdout and stderr into one pipe, as `quicmesh demo ... 2>&1 | cat` does.
    let script = format!(
        "exec '{}' demo --workers 8 --procs-per-worker 2 --rounds 5 --pings 50 \
         --hold 1 --metrics 127.0.0.1:0 --certs '{}' 1>&2",
        common::bin(),
        certs.display()
    );
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", &script])
        .env("RUST_LOG", "info,quicmesh=debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = ChildGuard(Some(cmd.spawn().expect("spawn quicmesh demo")));
    let (status, output) = child.output(Duration::from_secs(120)).await;
    assert!(status.success(), "demo failed:\n{output}");
    let bad: Vec<&str> = output.lines().filter(|l| !is_whole_line(l)).collect();
    assert!(
        bad.is_empty(),
        "lines cut or mixed:\n{}\n\nwhole output:\n{output}",
        bad.join("\n")
    );
    // Every worker's lines came both ways: passed through before its log
    // stream was up, forwarded after.
    for i in 0..8 {
        assert!(
            output.contains(&format!("[worker {i}] ")),
            "worker {i} passed through nothing"
        );
        let forwarded = format!("[worker {i} ");
        assert!(
            output
                .lines()
                .any(|l| l.starts_with(&forwarded) && !l.starts_with(&format!("[worker {i}] "))),
            "worker {i} forwarded nothing"
        );
    }
    assert_eq!(
        output.lines().filter(|l| l.starts_with("status: ")).count(),
        9,
        "{output}"
    );
}

#[test]
fn the_line_check_rejects_mixed_lines() {
    assert!(is_whole_line("[worker 3 vm] INFO quicmesh::worker: x"));
    assert!(is_whole_line(
        "[worker 3] 2026-12-03T06:51:04.258736Z  INFO worker 3 joined"
    ));
    assert!(is_whole_line(
        "2026-12-03T06:51:04.258736Z  INFO proc demo[2] running"
    ));
    assert!(!is_whole_line("[worker proc demo[2] running (worker 1)"));
    assert!(!is_whole_line("1proc demo[3] running ..."));
    assert!(!is_whole_line(
        "[worker 1] 2026-12-03T06:51:04.258736Z  INFO a2026-12-03T06:51:04.258736Z  INFO b"
    ));
}
