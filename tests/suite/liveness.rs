//! Liveness does not depend on actors: a worker whose handlers are stuck
//! (busy loops, blocked threads, stop hooks that never return) keeps its
//! heartbeats, its other actors keep answering, it exits on time when told
//! to, when signalled or when its allocator dies, and it says which actors
//! had to be aborted. Panics in constructors and decoding are contained.

use crate::common;

use std::time::Duration;

use common::{spawn_worker, with_var, ChildGuard, TempDir, TestMesh, SOON};
use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::actor::{AskError, SpawnError};
use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig, ProcState};
use quicmesh::config::{self, HeartbeatConfig};
use quicmesh::exit_code;
use quicmesh::testkit::actors::{
    Fragile, FragileMsg, FragileParams, Spinner, SpinnerMsg, StuckStop, Tripwire,
};
use quicmesh::ExitReport;
use quicmesh::{
    ActorFailure, ActorId, ActorRef, Client, ProcEnd, ProcId, ReturnReason, SpawnRefusal,
    StopReason,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// Stop timeout given to the workers of these tests (the default is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Slack on top of a timeout before a late exit counts as a failure (a loaded 2-core box).
const MARGIN: Duration = Duration::from_secs(5);

/// A mesh whose workers get [`STOP_TIMEOUT`].
async fn mesh(tag: &str) -> TestMesh {
    TestMesh::with_config(tag, |c| c.transport.stop_timeout = STOP_TIMEOUT).await
}

async fn spawn<A: quicmesh::Actor + Default>(
    client: &Client,
    proc_id: &ProcId,
    name: &str,
) -> ActorRef<A> {
    client
        .spawn::<A>(proc_id, name, &())
        .await
        .unwrap_or_else(|e| panic!("spawn {name} on {proc_id}: {e}"))
}

async fn echo_answers(client: &Client, echo: &ActorRef<Echo>) {
    let answer = echo
        .ask_within(client, SOON, |p| EchoMsg::Echo(b"alive".to_vec(), p))
        .await;
    assert_eq!(answer, Ok(b"alive".to_vec()), "echo {}", echo.id());
}

/// Checks what the allocator reported about a worker stopped while `aborted` were stuck.
///
/// Each aborted actor is reported failed, named in its proc's `Stopped`
/// reason and in the worker's leaving reason; `fine` actors are named nowhere;
/// no proc failed and the worker left in order.
async fn assert_aborted_reported(
    mesh: &mut TestMesh,
    worker: u32,
    aborted: &[&ActorId],
    fine: &[&ActorId],
) {
    for id in aborted {
        let id = (*id).clone();
        let event = mesh
            .ensure(
                SOON,
                &format!("failure of {id}"),
                |e| matches!(e, AllocEvent::ActorFailed { actor_id, .. } if *actor_id == id),
            )
            .await;
        assert!(
            matches!(
                &event,
                AllocEvent::ActorFailed {
                    reason: ActorFailure::Aborted(_),
                    ..
                }
            ),
            "{event}"
        );
        let proc_id = id.proc_id.clone();
        let stopped = mesh
            .ensure(SOON, &format!("proc {proc_id} stopped"), |e| {
                matches!(e, AllocEvent::Proc { proc_id: p, state, .. } if *p == proc_id && state.is_terminal())
            })
            .await;
        let AllocEvent::Proc { state, .. } = &stopped else {
            unreachable!()
        };
        assert!(
            matches!(state, ProcState::Stopped { reason: StopReason::ReportedByWorker(why) } if why.contains(&id.to_string())),
            "proc {proc_id} should be stopped naming {id}: {state:?}\n{}",
            mesh.log()
        );
    }
    let left = mesh
        .ensure(
            SOON,
            "worker left",
            |e| matches!(e, AllocEvent::WorkerLeft { index, .. } if *index == worker),
        )
        .await;
    let AllocEvent::WorkerLeft {
        end: ProcEnd::Stopped(StopReason::WorkerLeft { reason, .. }),
        ..
    } = &left
    else {
        panic!("worker {worker} should have left in order: {left}")
    };
    for id in aborted {
        assert!(reason.contains(&id.to_string()), "{id} not named: {left}");
    }
    for id in fine {
        assert!(
            !mesh.log().contains(&format!("{id} failed")) && !reason.contains(&id.to_string()),
            "{id} stopped in order but was reported:\n{}",
            mesh.log()
        );
    }
    assert!(
        mesh.states_of(worker).iter().all(|s| s.word() != "failed"),
        "{}",
        mesh.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_handler_harms_no_one_else_and_is_aborted_at_stop() {
    let mut mesh = mesh("spin-isolated").await;
    let w = mesh.launch(1, 2)[0];
    mesh.wait_running(2).await;
    let procs = mesh.alloc.procs();
    let client = mesh.alloc.client().clone();
    let spinner = spawn::<Spinner>(&client, &procs[0], "spinner").await;
    let near = spawn::<Echo>(&client, &procs[0], "echo").await;
    let far = spawn::<Echo>(&client, &procs[1], "echo").await;
    spinner
        .ask_within(&client, SOON, |p| SpinnerMsg::Spin(Some(p)))
        .await
        .expect("spinner starts spinning");

    // Three heartbeat timeouts and more: no failure, and the actors beside
    // the spinner (same proc, other proc) keep answering.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        echo_answers(&client, &near).await;
        echo_answers(&client, &far).await;
        mesh.collect_for(Duration::from_millis(200)).await;
    }
    mesh.assert_healthy(w);

    // StopAndExit: the spinner cannot stop, so it is aborted and named,
    // and the worker still exits with the commanded code in time.
    let told = Instant::now();
    mesh.alloc.stop_worker(w, 5).expect("stop worker");
    let status = mesh.wait_exit(w, STOP_TIMEOUT + MARGIN).await;
    let took = told.elapsed();
    eprintln!("worker {status} {took:?} after StopAndExit");
    assert_eq!(status, ExitReport::Code(5), "{}", mesh.log());
    assert!(took < STOP_TIMEOUT + MARGIN, "exit took {took:?}");
    assert_aborted_reported(&mut mesh, w, &[spinner.id()], &[near.id(), far.id()]).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_exit_cuts_off_a_stop_hook_that_never_returns_and_a_blocked_thread() {
    let mut mesh = mesh("stuck-stop").await;
    let w = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client().clone();
    let stuck = spawn::<StuckStop>(&client, &proc_id, "stuck").await;
    let blocker = spawn::<Spinner>(&client, &proc_id, "blocker").await;
    let echo = spawn::<Echo>(&client, &proc_id, "echo").await;
    stuck.ask_within(&client, SOON, |p| p).await.expect("alive");
    blocker
        .ask_within(&client, SOON, |p| SpinnerMsg::BlockThread(Some(p)))
        .await
        .expect("blocker blocks its thread");
    echo_answers(&client, &echo).await;

    let told = Instant::now();
    mesh.alloc.stop_worker(w, 6).expect("stop worker");
    let status = mesh.wait_exit(w, STOP_TIMEOUT + MARGIN).await;
    let took = told.elapsed();
    eprintln!("worker {status} {took:?} after StopAndExit");
    assert_eq!(status, ExitReport::Code(6), "{}", mesh.log());
    assert!(took < STOP_TIMEOUT + MARGIN, "exit took {took:?}");
    assert_aborted_reported(&mut mesh, w, &[stuck.id(), blocker.id()], &[echo.id()]).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_worker_whose_every_actor_thread_is_blocked() {
    let mut mesh = mesh("stuck-sigterm").await;
    let w = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client().clone();
    let spinner = spawn::<Spinner>(&client, &proc_id, "spinner").await;
    let blocker = spawn::<Spinner>(&client, &proc_id, "blocker").await;
    let echo = spawn::<Echo>(&client, &proc_id, "echo").await;
    blocker
        .ask_within(&client, SOON, |p| SpinnerMsg::BlockThread(Some(p)))
        .await
        .expect("blocker blocks its thread");
    // The reply may never come: the spinner takes the last actor thread.
    spinner
        .tell(&client, SpinnerMsg::Spin(None))
        .await
        .expect("tell spin");
    // Wait until no actor thread is left: then an ask goes unanswered.
    let mut starved = false;
    for _ in 0..10 {
        let answer = echo
            .ask_within(&client, Duration::from_secs(1), |p| {
                EchoMsg::Echo(b"x".to_vec(), p)
            })
            .await;
        if matches!(answer, Err(AskError::Timeout(_))) {
            starved = true;
            break;
        }
    }
    assert!(starved, "the actor threads never all blocked");

    // No actor thread is free, yet heartbeats flow: the worker is not failed.
    mesh.collect_for(Duration::from_secs(3)).await;
    mesh.assert_healthy(w);

    let pid = mesh.pid(w);
    let signalled = Instant::now();
    common::signal(pid, libc::SIGTERM);
    let status = mesh.wait_exit(w, STOP_TIMEOUT + MARGIN).await;
    let took = signalled.elapsed();
    eprintln!("worker {status} {took:?} after SIGTERM");
    assert_eq!(status, ExitReport::Code(0), "{}", mesh.log());
    assert!(took < STOP_TIMEOUT + MARGIN, "exit took {took:?}");
    assert_aborted_reported(&mut mesh, w, &[spinner.id(), blocker.id()], &[]).await;
    mesh.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_constructors_and_decoding_are_reported_and_the_proc_keeps_working() {
    let mut mesh = mesh("panics").await;
    let w = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client().clone();
    let params = |decode: bool, panic_in_new: Option<&str>| FragileParams {
        decode: Tripwire(decode),
        panic_in_new: panic_in_new.map(str::to_string),
    };

    let refused = client
        .spawn::<Fragile>(&proc_id, "f", &params(false, Some("no way")))
        .await;
    assert!(
        matches!(&refused, Err(SpawnError::Refused(SpawnRefusal::ConstructorPanicked { detail, .. })) if detail.contains("no way")),
        "{refused:?}"
    );
    let refused = client
        .spawn::<Fragile>(&proc_id, "f", &params(true, None))
        .await;
    assert!(
        matches!(&refused, Err(SpawnError::Refused(SpawnRefusal::ParamsPanicked { detail, .. })) if detail.contains("tripwire")),
        "{refused:?}"
    );

    let fragile = client
        .spawn::<Fragile>(&proc_id, "f", &params(false, None))
        .await
        .expect("spawn fragile");
    let tripped = fragile
        .ask_within(&client, SOON, |p| FragileMsg::Trip(Tripwire(true), p))
        .await;
    assert!(
        matches!(
            &tripped,
            Err(AskError::Undeliverable(ReturnReason::ActorFailed {
                failure: ActorFailure::DecodePanicked(_),
                ..
            }))
        ),
        "{tripped:?}"
    );
    let id = fragile.id().clone();
    let failed = mesh
        .ensure(
            SOON,
            "fragile's failure",
            |e| matches!(e, AllocEvent::ActorFailed { actor_id, .. } if *actor_id == id),
        )
        .await;
    assert!(failed.to_string().contains("tripwire"), "{failed}");

    // The proc keeps working: spawns succeed and actors answer.
    let again = client
        .spawn::<Fragile>(&proc_id, "f", &params(false, None))
        .await
        .expect("respawn fragile");
    assert_eq!(
        again.ask_within(&client, SOON, FragileMsg::Ping).await,
        Ok(())
    );
    let echo = spawn::<Echo>(&client, &proc_id, "echo").await;
    echo_answers(&client, &echo).await;
    mesh.end_with_healthy(&[w]).await;
}

/// Environment variable that makes [`allocator_host`] act: the directory to work in.
const HOST_DIR: &str = "QUICMESH_TEST_ALLOCATOR_HOST";

/// Not a test of its own: the allocator process that
/// `allocator_sigkilled_while_every_actor_thread_is_stuck` kills.
///
/// It admits one externally started worker (whose ticket it prints), makes
/// both of that worker's actor threads stuck, prints `stuck`, and waits to
/// be killed (it gives up after a minute, should its parent be gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by allocator_sigkilled_while_every_actor_thread_is_stuck in a child process"]
async fn allocator_host() {
    let Some(dir) = std::env::var_os(HOST_DIR) else {
        return;
    };
    let certs = quicmesh::tls::generate_dev_certs(&dir, &quicmesh::tls::DevCertOptions::new())
        .expect("certs");
    let mut config = AllocatorConfig::new(&certs);
    config.alloc_name = "host".into();
    let alloc = Allocator::bind(config).await.expect("bind");
    let ticket = alloc.reserve(1);
    for (name, value) in &ticket.env {
        println!("env {name}={value}");
    }
    println!("ticket done");
    alloc.wait_running(SOON).await.expect("worker running");
    let proc_id = alloc.procs()[0].clone();
    let client = alloc.client().clone();
    let blocker = spawn::<Spinner>(&client, &proc_id, "blocker").await;
    let spinner = spawn::<Spinner>(&client, &proc_id, "spinner").await;
    blocker
        .ask_within(&client, SOON, |p| SpinnerMsg::BlockThread(Some(p)))
        .await
        .expect("blocker blocks its thread");
    spinner
        .tell(&client, SpinnerMsg::Spin(None))
        .await
        .expect("tell spin");
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("stuck");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocator_sigkilled_while_every_actor_thread_is_stuck() {
    let dir = TempDir::new("host-kill");
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        common::test_name(module_path!(), "allocator_host").as_str(),
        "--exact",
        "--ignored",
        "--nocapture",
    ])
    .env(HOST_DIR, dir.path())
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start allocator host");
    let stdout = child.stdout.take().expect("host stdout");
    let mut host = ChildGuard(Some(child));
    let mut lines = BufReader::new(stdout).lines();

    let mut env = Vec::new();
    loop {
        let line = next_line(&mut lines).await;
        if line == "ticket done" {
            break;
        }
        if let Some((name, value)) = line.strip_prefix("env ").and_then(|l| l.split_once('=')) {
            env.push((name.to_string(), value.to_string()));
        }
    }
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let worker = common::spawn_worker(&env);
    while next_line(&mut lines).await != "stuck" {}

    common::signal(host.id(), libc::SIGKILL);
    let killed = Instant::now();
    host.wait(SOON).await;
    let (status, stderr) = worker.output(SOON).await;
    let took = killed.elapsed();
    eprintln!("worker {status} {took:?} after its allocator was killed");
    let code = status.code();
    assert!(
        matches!(code, Some(75) | Some(79)),
        "worker should exit 79 (heartbeat lost) or 75 (connection lost), got {status}\n{stderr}"
    );
    // Heartbeat timeout (1.5 s) plus a generous margin.
    assert!(
        took < Duration::from_secs(10),
        "worker took {took:?} to exit\n{stderr}"
    );
    assert!(stderr.contains("worker exiting"), "{stderr}");
}

/// The next line the allocator host prints.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(SOON, lines.next_line())
        .await
        .expect("allocator host is silent")
        .expect("read host output")
        .expect("allocator host ended early")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_runtime_worker_whose_only_thread_blocks_ends_itself() {
    // Started by hand, so the allocator cannot kill it: only the worker's
    // own watchdog can end it once its one runtime thread is blocked.
    let mut mesh = mesh("shared-blocked").await;
    let ticket = mesh.alloc.reserve(1);
    let env = with_var(&ticket.env, config::ENV_WORKER_RUNTIME, "shared");
    let env = with_var(&env, config::ENV_WORKER_THREADS, "1");
    let worker = spawn_worker(&env);
    mesh.ensure(SOON, "the shared worker's proc running", |e| {
        matches!(e, AllocEvent::Proc { worker, state: ProcState::Running, .. } if *worker == ticket.index)
    })
    .await;
    let proc_id = mesh.alloc.procs()[0].clone();
    let client = mesh.alloc.client().clone();
    let spinner = spawn::<Spinner>(&client, &proc_id, "blocker").await;
    spinner
        .ask_within(&client, SOON, SpinnerMsg::Ping)
        .await
        .expect("alive before blocking");

    let told = Instant::now();
    spinner
        .tell(&client, SpinnerMsg::BlockThread(None))
        .await
        .expect("tell");
    let timeout = HeartbeatConfig::default().timeout;
    let reason = mesh.wait_failed(&proc_id, timeout + MARGIN).await;
    assert!(reason.contains("heartbeat"), "{reason}");
    let (status, stderr) = worker.output(timeout + MARGIN).await;
    let took = told.elapsed();
    assert_eq!(status.code(), Some(exit_code::HEARTBEAT_LOST), "{stderr}");
    assert!(
        stderr.contains("has not run its heartbeats"),
        "the exit does not say why:\n{stderr}"
    );
    assert!(
        took < timeout * 2 + MARGIN,
        "ended {took:?} after the block"
    );
    mesh.finish().await;
}
