//! A worker's settings as a user meets them: `quicmesh worker --help`, the
//! errors of `quicmesh worker` and of `bootstrap_or_die` for missing and
//! invalid values (exit 78, naming the variable and the flag), and the
//! default server name joining a real allocator.

use crate::common;

use common::{spawn_worker, with_var, without_var, ChildGuard, TestMesh, SOON};
use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::allocator::{AllocEvent, ProcState};
use quicmesh::config;
use quicmesh::exit_code;

/// Every variable a worker reads, with the flag that sets the same thing.
const SETTINGS: [(&str, &str); 16] = [
    (config::ENV_ALLOCATOR_ADDR, "--allocator"),
    (config::ENV_SERVER_NAME, "--server-name"),
    (config::ENV_INDEX, "--index"),
    (config::ENV_TOKEN, "--token"),
    (config::ENV_CA, "--ca"),
    (config::ENV_CERT, "--cert"),
    (config::ENV_KEY, "--key"),
    (config::ENV_JOIN_TIMEOUT, "--join-timeout"),
    (config::ENV_WORKER_THREADS, "--worker-threads"),
    (config::ENV_WORKER_RUNTIME, "--worker-runtime"),
    (config::ENV_LINK, "--link"),
    (config::ENV_HEARTBEAT_INTERVAL, "--heartbeat-interval"),
    (config::ENV_HEARTBEAT_TIMEOUT, "--heartbeat-timeout"),
    (config::ENV_INDEX_FROM, "--index-from"),
    (config::ENV_INDEX_OFFSET, "--index-offset"),
    (config::ENV_SECRETS_STDIN, "--secrets-stdin"),
];

/// Marks the re-run of this test binary that acts as a user's program
/// calling `bootstrap_or_die` (see [`bootstrap_child`]).
const CHILD_MARK: &str = "QUICMESH_TEST_BOOTSTRAP_CHILD";

/// A complete, well-formed environment whose files do not exist: the
/// settings pass, loading the CA then fails with exit 78 naming its path.
fn valid_env() -> Vec<(&'static str, String)> {
    vec![
        (config::ENV_ALLOCATOR_ADDR, "127.0.0.1:9".into()),
        (config::ENV_INDEX, "0".into()),
        (config::ENV_TOKEN, "t".into()),
        (config::ENV_CA, "/nonexistent/quicmesh-test/ca.pem".into()),
        (
            config::ENV_CERT,
            "/nonexistent/quicmesh-test/worker.pem".into(),
        ),
        (
            config::ENV_KEY,
            "/nonexistent/quicmesh-test/worker.key".into(),
        ),
    ]
}

/// Runs `quicmesh worker ARGS` with exactly `env`; returns its exit code and stderr.
async fn quicmesh_worker(args: &[&str], env: &[(&'static str, String)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(common::bin());
    cmd.arg("worker")
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = ChildGuard(Some(cmd.spawn().expect("spawn quicmesh worker")));
    let (status, stderr) = child.output(SOON).await;
    (status.code(), stderr)
}

/// Starts this test binary again, running only [`bootstrap_child`], with
/// exactly `env`: a user's program whose `main` calls `bootstrap_or_die`.
fn spawn_bootstrap_child(env: &[(&'static str, String)]) -> ChildGuard {
    let exe = std::env::current_exe().expect("path of this test binary");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "--exact",
        common::test_name(module_path!(), "bootstrap_child").as_str(),
        "--nocapture",
        "--test-threads=1",
    ])
    .env_clear()
    .env(CHILD_MARK, "1")
    .env("RUST_LOG", "info")
    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    ChildGuard(Some(cmd.spawn().expect("spawn bootstrap child")))
}

/// In a normal run, does nothing. Re-run by [`spawn_bootstrap_child`] with
/// the mark set, it is a program's `main`: `bootstrap_or_die` runs the
/// worker and ends the process (or, without `QUICMESH_ALLOCATOR_ADDR`,
/// returns, which this reports as exit 3).
#[test]
fn bootstrap_child() {
    if std::env::var_os(CHILD_MARK).is_none() {
        return;
    }
    quicmesh::bootstrap_or_die(&quicmesh::Registry::new());
    std::process::exit(3);
}

#[tokio::test]
async fn help_lists_every_variable_and_hides_the_token() {
    let mut cmd = tokio::process::Command::new(common::bin());
    cmd.args(["worker", "--help"])
        .env_clear()
        .env(config::ENV_TOKEN, "do-not-print-me")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // kill_on_drop: a child that hangs is killed when the timeout drops it.
    let child = cmd.spawn().expect("spawn quicmesh worker --help");
    let out = tokio::time::timeout(SOON, child.wait_with_output())
        .await
        .expect("help in time")
        .expect("help output");
    assert!(out.status.success(), "{}", out.status);
    let help = String::from_utf8_lossy(&out.stdout);

    for (var, flag) in SETTINGS {
        // Each option is one line: flag, text, then the variable.
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from the help:\n{help}"));
        assert!(
            line.contains(&format!("[env: {var}")),
            "{var} not on the line of {flag}:\n{help}"
        );
    }
    // No variable the settings do not define.
    let listed = help.matches("[env: QUICMESH_").count();
    assert_eq!(listed, SETTINGS.len(), "{help}");
    assert!(help.contains("[default: localhost]"), "{help}");
    assert!(
        !help.contains("do-not-print-me"),
        "the token's value is shown:\n{help}"
    );
    assert!(
        help.contains("Never on a command line"),
        "the token's help does not keep it off command lines:\n{help}"
    );
    // The group secret has no flag worth showing: it is never typed.
    assert!(!help.contains("--group-secret"), "{help}");

    // The README documents every one of them.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    for (var, _) in SETTINGS {
        assert!(readme.contains(var), "README.md does not mention {var}");
    }
}

#[tokio::test]
async fn missing_allocator_address_names_variable_and_flag() {
    let (code, stderr) = quicmesh_worker(&[], &[]).await;
    assert_eq!(code, Some(exit_code::CONFIG), "{stderr}");
    assert!(
        stderr.contains("QUICMESH_ALLOCATOR_ADDR") && stderr.contains("--allocator"),
        "{stderr}"
    );

    // Each other required setting too, with all the rest given.
    for (var, flag) in SETTINGS
        .iter()
        .filter(|(v, _)| valid_env().iter().any(|(k, _)| k == v))
    {
        let (code, stderr) = quicmesh_worker(&[], &without_var(&valid_env(), var)).await;
        assert_eq!(code, Some(exit_code::CONFIG), "without {var}: {stderr}");
        assert!(
            stderr.contains(&format!("{var} is not set and {flag} is not given")),
            "without {var}: {stderr}"
        );
    }
}

#[tokio::test]
async fn invalid_value_of_each_variable_names_variable_and_flag() {
    let cases = [
        (config::ENV_ALLOCATOR_ADDR, "nonsense"),
        (config::ENV_SERVER_NAME, "not a name!"),
        (config::ENV_INDEX, "abc"),
        (config::ENV_TOKEN, "   "),
        (config::ENV_CA, ""),
        (config::ENV_CERT, ""),
        (config::ENV_KEY, " "),
        (config::ENV_JOIN_TIMEOUT, "soon"),
        (config::ENV_WORKER_THREADS, "0"),
        (config::ENV_WORKER_RUNTIME, "single"),
        (config::ENV_LINK, "satellite"),
        (config::ENV_HEARTBEAT_INTERVAL, "often"),
        (config::ENV_HEARTBEAT_TIMEOUT, "31s"),
        (config::ENV_INDEX_FROM, "NOT-A-NAME"),
        (config::ENV_INDEX_OFFSET, "minus one"),
        (config::ENV_SECRETS_STDIN, "maybe"),
    ];
    assert_eq!(cases.len(), SETTINGS.len(), "a case for every variable");
    // The index comes from an engine's variable only when none is given.
    let group_env = with_var(
        &with_var(
            &without_var(&valid_env(), config::ENV_INDEX),
            config::ENV_INDEX_FROM,
            "QM_TEST_RANK",
        ),
        "QM_TEST_RANK",
        "1",
    );
    for (var, value) in cases {
        let flag = SETTINGS
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, f)| *f)
            .expect("known variable");
        let base = if var == config::ENV_INDEX_FROM || var == config::ENV_INDEX_OFFSET {
            &group_env
        } else {
            &valid_env()
        };
        let (code, stderr) = quicmesh_worker(&[], &with_var(base, var, value)).await;
        assert_eq!(code, Some(exit_code::CONFIG), "{var}={value:?}: {stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(flag),
            "{var}={value:?}: stderr names not both {var} and {flag}:\n{stderr}"
        );
    }

    // A bad flag is named the same way, and a flag wins over its variable.
    let (code, stderr) = quicmesh_worker(
        &["--index=-1"],
        &with_var(&valid_env(), config::ENV_INDEX, "0"),
    )
    .await;
    assert_eq!(code, Some(exit_code::CONFIG), "{stderr}");
    assert!(
        stderr.contains("invalid value \"-1\" for QUICMESH_INDEX (or --index)"),
        "{stderr}"
    );
    let (code, stderr) = quicmesh_worker(
        &["--index", "7"],
        &with_var(&valid_env(), config::ENV_INDEX, "abc"),
    )
    .await;
    assert_eq!(code, Some(exit_code::CONFIG), "{stderr}");
    assert!(
        !stderr.contains("QUICMESH_INDEX"),
        "the flag did not win:\n{stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/quicmesh-test/ca.pem"),
        "{stderr}"
    );

    // An unknown flag of a worker is a configuration error too.
    let (code, stderr) = quicmesh_worker(&["--no-such-flag"], &valid_env()).await;
    assert_eq!(code, Some(exit_code::CONFIG), "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[tokio::test]
async fn bootstrap_or_die_exits_78_naming_variable_and_flag() {
    let cases = [
        (
            with_var(&valid_env(), config::ENV_INDEX, "abc"),
            "invalid value \"abc\" for QUICMESH_INDEX (or --index)",
        ),
        (
            without_var(&valid_env(), config::ENV_TOKEN),
            "QUICMESH_TOKEN is not set and --token is not given",
        ),
        (
            with_var(&valid_env(), config::ENV_JOIN_TIMEOUT, "1h"),
            "for QUICMESH_JOIN_TIMEOUT (or --join-timeout)",
        ),
    ];
    let children: Vec<ChildGuard> = cases
        .iter()
        .map(|(env, _)| spawn_bootstrap_child(env))
        .collect();
    for ((_, needle), child) in cases.iter().zip(children) {
        let (status, stderr) = child.output(SOON).await;
        assert_eq!(status.code(), Some(exit_code::CONFIG), "{needle}: {stderr}");
        assert!(
            stderr.contains(needle),
            "stderr does not say {needle:?}:\n{stderr}"
        );
    }
}

/// Waits until a proc of worker `index` runs.
async fn wait_running_on(mesh: &mut TestMesh, index: u32) {
    mesh.ensure(SOON, &format!("a running proc on worker {index}"), |e| {
        matches!(e, AllocEvent::Proc { worker, state: ProcState::Running, .. } if *worker == index)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_name_a_worker_expects_localhost() {
    // The development certificate names localhost (and 127.0.0.1, ::1); the
    // allocator listens on 127.0.0.1. Both kinds of worker join it without
    // being told a server name.
    let mut mesh = TestMesh::new("settings-localhost").await;
    let by_command = mesh.alloc.reserve(1);
    let by_bootstrap = mesh.alloc.reserve(1);
    let mut command_worker = spawn_worker(&without_var(&by_command.env, config::ENV_SERVER_NAME));
    let mut bootstrap_worker =
        spawn_bootstrap_child(&without_var(&by_bootstrap.env, config::ENV_SERVER_NAME));
    wait_running_on(&mut mesh, by_command.index).await;
    wait_running_on(&mut mesh, by_bootstrap.index).await;

    for (index, child) in [
        (by_command.index, &mut command_worker),
        (by_bootstrap.index, &mut bootstrap_worker),
    ] {
        mesh.alloc.stop_worker(index, 0).expect("stop worker");
        let status = child.wait(SOON).await;
        assert_eq!(status.code(), Some(0), "worker {index}: {status}");
    }

    // A name the certificate does not carry is refused: the default above
    // was really used, not ignored.
    let wrong = mesh.alloc.reserve(1);
    let env = with_var(&wrong.env, config::ENV_SERVER_NAME, "elsewhere.test");
    let env = with_var(&env, config::ENV_JOIN_TIMEOUT, "5s");
    let (status, stderr) = spawn_worker(&env).output(SOON).await;
    assert_eq!(status.code(), Some(exit_code::UNREACHABLE), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    mesh.finish().await;
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the worker's tasks");
    let mut names: Vec<String> = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runtime_shared_puts_the_connection_on_the_actor_threads() {
    let mut mesh = TestMesh::new("settings-runtime").await;
    let split = mesh.launch(1, 1)[0];
    mesh.wait_running(1).await;
    let shared_launcher = TestMesh::launcher()
        .env(config::ENV_WORKER_RUNTIME, "shared")
        .env(config::ENV_WORKER_THREADS, "3");
    let shared = mesh.launch_with(&shared_launcher, 1, 1)[0];
    mesh.wait_running(2).await;

    // The default keeps the connection on a thread of its own; shared has
    // no such thread, only its runtime's, and a watchdog. (A runtime's
    // blocking-pool threads carry its name too, so its thread count is a
    // lower bound: name lookups and file reads may have added some.)
    let split_threads = thread_names(mesh.pid(split));
    assert!(
        split_threads.iter().any(|n| n == "quicmesh-transp"),
        "{split_threads:?}"
    );
    let named = |threads: &[String], name: &str| threads.iter().filter(|n| *n == name).count();
    assert!(
        named(&split_threads, "quicmesh-actor") >= 2,
        "{split_threads:?}"
    );
    assert_eq!(
        named(&split_threads, "quicmesh-watchd"),
        0,
        "a split worker needs no watchdog: {split_threads:?}"
    );
    let shared_threads = thread_names(mesh.pid(shared));
    assert!(
        !shared_threads
            .iter()
            .any(|n| n.starts_with("quicmesh-transp") || n == "quicmesh-actor"),
        "{shared_threads:?}"
    );
    assert!(
        named(&shared_threads, "quicmesh-worker") >= 3,
        "{shared_threads:?}"
    );
    assert_eq!(
        named(&shared_threads, "quicmesh-watchd"),
        1,
        "one watchdog: {shared_threads:?}"
    );

    // Both serve asks, and both leave in order.
    let client = mesh.alloc.client().clone();
    for proc_id in mesh.alloc.procs() {
        let echo = client
            .spawn::<Echo>(&proc_id, "echo", &())
            .await
            .unwrap_or_else(|e| panic!("spawn on {proc_id}: {e}"));
        for i in 0..100u8 {
            let back = echo
                .ask_within(&client, SOON, |p| EchoMsg::Echo(vec![i; 16], p))
                .await;
            assert_eq!(back, Ok(vec![i; 16]), "{proc_id}");
        }
    }
    // A healthy shared worker outlives three heartbeat timeouts: its
    // watchdog sees the heartbeats run.
    mesh.collect_for(quicmesh::config::HeartbeatConfig::default().timeout * 3)
        .await;
    assert!(
        !common::process_gone(mesh.pid(shared)),
        "the shared worker is gone"
    );
    mesh.assert_healthy(split);
    mesh.assert_healthy(shared);
    mesh.stop_all_and_check(0).await;
    mesh.finish().await;
}
