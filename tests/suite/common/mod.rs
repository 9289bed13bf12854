//! Shared scaffolding of the integration tests: certificates in a temporary
//! directory, an allocator whose workers are real `quicmesh worker`
//! processes, event waiting with generous deadlines, and process checks.
#![allow(dead_code)]

pub mod engines;
pub mod fake_worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig, Events, Launcher, ProcState};
use quicmesh::tls::CertPaths;
use quicmesh::ExitReport;

/// Deadline for things that normally take milliseconds (generous for a loaded 2-core box).
pub const SOON: Duration = Duration::from_secs(30);

/// The `quicmesh` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_quicmesh")
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quicmesh-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fresh development certificates in their own directory.
pub fn certs(tag: &str) -> (TempDir, CertPaths) {
    let dir = TempDir::new(tag);
    let paths =
        quicmesh::tls::generate_dev_certs(dir.path(), &quicmesh::tls::DevCertOptions::new())
            .expect("generate certs");
    (dir, paths)
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z') | Some('X'))
        }
    }
}

/// Waits up to `within` for every pid to end; panics naming the survivors.
pub async fn assert_gone(pids: &[u32], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| !process_gone(*p)).collect();
        if alive.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            for pid in &alive {
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            panic!("processes still running after {within:?}: {alive:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// An allocator under test, with every event it reported kept in `seen`.
pub struct TestMesh {
    pub alloc: Allocator,
    pub certs: CertPaths,
    pub seen: Vec<AllocEvent>,
    /// Subscribed right after bind, so no event is missed.
    events: Events,
    launched: Vec<u32>,
    _dir: TempDir,
}

impl TestMesh {
    pub async fn new(tag: &str) -> TestMesh {
        Self::with_config(tag, |_| {}).await
    }

    pub async fn with_config(tag: &str, adjust: impl FnOnce(&mut AllocatorConfig)) -> TestMesh {
        let (dir, certs) = certs(tag);
        let mut config = AllocatorConfig::new(&certs);
        config.alloc_name = tag.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        adjust(&mut config);
        let alloc = Allocator::bind(config).await.expect("bind allocator");
        let events = alloc.events();
        TestMesh {
            alloc,
            certs,
            seen: Vec::new(),
            events,
            launched: Vec::new(),
            _dir: dir,
        }
    }

    /// The launcher for real worker processes of this crate's binary.
    pub fn launcher() -> Launcher {
        Launcher::program(bin())
            .arg("worker")
            .env("RUST_LOG", "info")
    }

    /// Launches `n` workers with `procs` procs each.
    pub fn launch(&mut self, n: u32, procs: u32) -> Vec<u32> {
        self.launch_with(&Self::launcher(), n, procs)
    }

    /// Launches `n` workers with `procs` procs each through `launcher`.
    pub fn launch_with(&mut self, launcher: &Launcher, n: u32, procs: u32) -> Vec<u32> {
        let idx = self
            .alloc
            .launch(launcher, n, procs)
            .expect("launch workers");
        self.launched.extend(&idx);
        idx
    }

    /// Launches one worker that dials `addr` (a relay) instead of the allocator.
    pub fn launch_via(&mut self, addr: std::net::SocketAddr, procs: u32) -> u32 {
        let launcher = Self::launcher().env(quicmesh::config::ENV_ALLOCATOR_ADDR, addr.to_string());
        let idx = self
            .alloc
            .launch(&launcher, 1, procs)
            .expect("launch worker");
        self.launched.extend(&idx);
        idx[0]
    }

    pub fn pid(&self, index: u32) -> u32 {
        self.alloc.worker_pid(index).expect("worker pid")
    }

    /// Waits for the first new event matching `pred`; panics with the log on timeout.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&AllocEvent) -> bool,
    ) -> AllocEvent {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => {
                    eprintln!("event: {e}");
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {within:?}; events so far:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Returns an already-seen event matching `pred`, or waits for one.
    pub async fn ensure(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&AllocEvent) -> bool,
    ) -> AllocEvent {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        self.wait_for(within, what, pred).await
    }

    /// Waits (or finds already seen) `proc_id` reported failed; returns the reason.
    pub async fn wait_failed(&mut self, proc_id: &quicmesh::ProcId, within: Duration) -> String {
        let event = self
            .ensure(within, &format!("{proc_id} failed"), |e| {
                matches!(e, AllocEvent::Proc { proc_id: p, state: ProcState::Failed { .. }, .. }
                    if p == proc_id)
            })
            .await;
        match event {
            AllocEvent::Proc {
                state: ProcState::Failed { reason },
                ..
            } => reason.to_string(),
            _ => unreachable!("ensure returns what matched"),
        }
    }

    /// Collects every event for `dur`.
    pub async fn collect_for(&mut self, dur: Duration) -> Vec<AllocEvent> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut got = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.next()).await {
            eprintln!("event: {e}");
            self.seen.push(e.clone());
            got.push(e);
        }
        got
    }

    pub fn log(&self) -> String {
        self.seen.iter().map(|e| format!("  {e}\n")).collect()
    }

    /// Waits until `n` procs (counted since the start) are running.
    pub async fn wait_running(&mut self, n: usize) {
        let mut count = self.seen.iter().filter(|e| is_state(e, "running")).count();
        while count < n {
            self.wait_for(SOON, &format!("{n} running procs"), |e| {
                is_state(e, "running")
            })
            .await;
            count += 1;
        }
    }

    /// Waits for worker `index`'s process to end and returns how.
    pub async fn wait_exit(&mut self, index: u32, within: Duration) -> ExitReport {
        if let Some(s) = self.exit_of(index) {
            return s;
        }
        match self
            .wait_for(
                within,
                &format!("exit of worker {index}"),
                |e| matches!(e, AllocEvent::WorkerExited { index: i, .. } if *i == index),
            )
            .await
        {
            AllocEvent::WorkerExited { status, .. } => status,
            _ => unreachable!(),
        }
    }

    /// How worker `index` exited, if it has been reported.
    pub fn exit_of(&self, index: u32) -> Option<ExitReport> {
        self.seen.iter().find_map(|e| match e {
            AllocEvent::WorkerExited { index: i, status } if *i == index => Some(*status),
            _ => None,
        })
    }

    /// Every proc state reported for worker `index`.
    pub fn states_of(&self, index: u32) -> Vec<ProcState> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                AllocEvent::Proc { worker, state, .. } if *worker == index => Some(state.clone()),
                _ => None,
            })
            .collect()
    }

    /// Asserts that worker `index` never had a proc fail, left, or exited.
    pub fn assert_healthy(&self, index: u32) {
        for e in &self.seen {
            let bad = match e {
                AllocEvent::Proc { worker, state, .. } => *worker == index && state.is_terminal(),
                AllocEvent::WorkerLeft { index: i, .. }
                | AllocEvent::WorkerExited { index: i, .. } => *i == index,
                _ => false,
            };
            assert!(
                !bad,
                "worker {index} was disturbed: {e}\nall events:\n{}",
                self.log()
            );
        }
        assert!(
            self.alloc.connected_workers().contains(&index),
            "worker {index} is no longer connected\n{}",
            self.log()
        );
    }

    /// Stops every worker with `StopAndExit(code)` and checks each exits with it.
    pub async fn stop_all_and_check(&mut self, code: i32) {
        let connected = self.alloc.connected_workers();
        self.alloc.stop_all(code);
        for index in connected {
            let status = self.wait_exit(index, SOON).await;
            assert_eq!(
                status,
                ExitReport::Code(code),
                "worker {index}\n{}",
                self.log()
            );
        }
    }

    /// Launches `n` workers, each behind its own fault-injection relay, with `procs` procs each.
    pub async fn launch_behind_relays(
        &mut self,
        n: u32,
        procs: u32,
    ) -> (Vec<u32>, Vec<quicmesh::testkit::relay::Relay>) {
        let mut workers = Vec::new();
        let mut relays = Vec::new();
        for _ in 0..n {
            let relay = quicmesh::testkit::relay::Relay::start(self.alloc.local_addr())
                .await
                .expect("relay");
            workers.push(self.launch_via(relay.local_addr(), procs));
            relays.push(relay);
        }
        (workers, relays)
    }

    /// Asserts that no proc has been reported failed.
    pub fn assert_no_failures(&self) {
        let failed = self.seen.iter().find(|e| is_state(e, "failed"));
        assert!(
            failed.is_none(),
            "unexpected failure: {failed:?}\n{}",
            self.log()
        );
    }

    /// Ends a test: checks for a second that `healthy` workers were never
    /// disturbed, stops every worker with `StopAndExit(0)`, checks each exits 0,
    /// and checks no launched process is left.
    pub async fn end_with_healthy(mut self, healthy: &[u32]) {
        self.collect_for(Duration::from_secs(1)).await;
        for &w in healthy {
            self.assert_healthy(w);
        }
        self.stop_all_and_check(0).await;
        self.finish().await;
    }

    /// Drops the allocator and checks that no worker process it launched is left.
    pub async fn finish(self) {
        let pids: Vec<u32> = self
            .launched
            .iter()
            .filter_map(|i| self.alloc.worker_pid(*i))
            .collect();
        drop(self.alloc);
        assert_gone(&pids, Duration::from_secs(10)).await;
    }
}

/// Whether `e` reports a proc entering the state named `word`.
pub fn is_state(e: &AllocEvent, word: &str) -> bool {
    matches!(e, AllocEvent::Proc { state, .. } if state.word() == word)
}

/// A child process killed (and reaped) when dropped, whatever the test did.
pub struct ChildGuard(pub Option<tokio::process::Child>);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().and_then(|c| c.id()).expect("child pid")
    }

    /// Waits up to `within` for the exit status.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("child");
        tokio::time::timeout(within, child.wait())
            .await
            .expect("child did not exit in time")
            .expect("wait for child")
    }

    /// Waits for the child to exit and returns its status and everything it wrote on stderr.
    pub async fn output(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let child = self.0.take().expect("child");
        let out = tokio::time::timeout(within, child.wait_with_output())
            .await
            .expect("child did not exit in time")
            .expect("collect child output");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
    }
}

/// An environment variable list as `spawn_worker` takes it.
pub type Env = Vec<(&'static str, String)>;

/// `env` with `name` set to `value` (replaced if present, added if not).
pub fn with_var(
    env: &[(&'static str, String)],
    name: &'static str,
    value: impl Into<String>,
) -> Env {
    let mut out = without_var(env, name);
    out.push((name, value.into()));
    out
}

/// `env` without `name`.
pub fn without_var(env: &[(&'static str, String)], name: &str) -> Env {
    env.iter().filter(|(k, _)| *k != name).cloned().collect()
}

/// Starts `quicmesh worker` with exactly `env` (nothing inherited but PATH), stderr captured.
pub fn spawn_worker(env: &[(&str, String)]) -> ChildGuard {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    ChildGuard(Some(cmd.spawn().expect("spawn quicmesh worker")))
}

/// Tells `counter` the numbers `0..n` in order, then checks it got exactly those, in order.
pub async fn count_in_order(
    client: &quicmesh::Client,
    counter: &quicmesh::ActorRef<quicmesh::actor::builtin::Counter>,
    n: u64,
    within: Duration,
) {
    count_in_order_from(client, counter, 0, n, within).await
}

/// Tells `counter` the numbers `from..to` (it has seen `0..from`), then checks its tally.
pub async fn count_in_order_from(
    client: &quicmesh::Client,
    counter: &quicmesh::ActorRef<quicmesh::actor::builtin::Counter>,
    from: u64,
    to: u64,
    within: Duration,
) {
    use quicmesh::actor::builtin::{CounterMsg, CounterReport};
    for seq in from..to {
        let msg = CounterMsg::Count {
            seq,
            pad: Vec::new(),
        };
        counter.tell(client, msg).await.expect("tell");
    }
    let report: CounterReport = counter
        .ask_within(client, within, CounterMsg::Report)
        .await
        .expect("report");
    let want = CounterReport {
        received: to,
        out_of_order: 0,
        next: to,
        bytes: 0,
    };
    assert_eq!(report, want);
}

/// `counter`'s report once it has received `total` messages, or its last
/// report when `within` has passed.
///
/// For messages another actor sent (a pump on a worker): they travel from
/// that actor's proc, the report ask from the controller, so an ask made
/// right after the sender finished may overtake the last of them.
pub async fn report_when_received(
    client: &quicmesh::Client,
    counter: &quicmesh::ActorRef<quicmesh::actor::builtin::Counter>,
    total: u64,
    within: Duration,
) -> quicmesh::actor::builtin::CounterReport {
    use quicmesh::actor::builtin::CounterMsg;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let report = counter
            .ask_within(client, within, CounterMsg::Report)
            .await
            .expect("report");
        if report.received >= total || tokio::time::Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message returned to the controller; panics if none comes in time.
pub async fn next_returned(returns: &quicmesh::allocator::Returns) -> quicmesh::Returned {
    tokio::time::timeout(SOON, returns.next())
        .await
        .expect("a message returned in time")
        .expect("returns stream open")
}

/// Resident memory of this process, in bytes (from `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// The name the test harness knows a test by, for re-running this test
/// binary with `--exact`: `module` is the caller's `module_path!()`
/// (`suite::liveness`), whose first part, the crate, is not in test names.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// A client endpoint and connection holding the mesh's valid worker
/// certificate, handshake completed, nothing sent: what a peer that then
/// says nothing looks like.
pub async fn valid_client(mesh: &TestMesh) -> (quinn::Endpoint, quinn::Connection) {
    use quicmesh::config::{Limits, LinkConfig};
    use quicmesh::testkit::transport;
    let roots = quicmesh::testkit::tls::load_roots(&mesh.certs.ca_cert).expect("load mesh CA");
    let identity =
        quicmesh::testkit::tls::load_identity(&mesh.certs.worker_cert, &mesh.certs.worker_key)
            .expect("load worker identity");
    let config = quicmesh::testkit::tls::client_config(roots, identity).expect("client TLS config");
    let addr = mesh.alloc.local_addr();
    let endpoint =
        transport::client_endpoint(config, addr, &Limits::default(), &LinkConfig::default())
            .expect("client endpoint");
    let conn = transport::connect(&endpoint, addr, "localhost", Duration::from_secs(10))
        .await
        .expect("handshake with a valid worker certificate");
    (endpoint, conn)
}
