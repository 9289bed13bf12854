//! `quicmesh demo`: a local mesh with generated certificates, start to stop.
//!
//! Generates certificates if absent, listens, launches workers (this same
//! executable, as `quicmesh worker`), shows the launch's progress, holds the
//! mesh up, stops everything with `StopAndExit(0)` and prints a summary. It
//! exits 0 only if every proc ran and stopped in order and every worker
//! exited 0.
//!
//! Every event is logged (one line each on stderr) for a mesh of up to
//! [`VERBOSE_UP_TO`] workers or with `--verbose`; a larger one logs only
//! warnings unless `RUST_LOG` says otherwise, and shows progress instead: a
//! bar on a terminal, else a plain line at most once a second.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quicmesh::actor::builtin::{Echo, EchoMsg, RingMsg, RingNode};
use quicmesh::ProcMesh;
use tokio_util::task::AbortOnDropHandle;

use clap::Parser;
use quicmesh::allocator::{
    AllocEvent, Allocator, AllocatorConfig, Launcher, ProcState, Progress, WorkerStatus,
    DEFAULT_LAUNCH_WINDOW,
};
use quicmesh::config::{self, LinkConfig};
use quicmesh::ExitReport;
use quicmesh::ProcId;

/// Flags of `quicmesh demo`.
#[derive(Parser, Debug)]
pub struct DemoArgs {
    /// Number of worker processes.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Procs started on each worker.
    #[arg(long, default_value_t = 2)]
    procs_per_worker: u32,
    /// Certificate directory; development certificates are generated there if absent.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Seconds to keep the mesh up once every proc runs.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Address to listen on (0.0.0.0:PORT or [::]:PORT for every interface).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address workers on other hosts dial, HOST or HOST:PORT (port 0 or
    /// none: the bound port); the allocator's certificate must name HOST.
    /// Default: the listen address, or for an unspecified one loopback for
    /// the local workers.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Seconds allowed for every proc to be running.
    #[arg(long, default_value_t = 60)]
    start_timeout: u64,
    /// Times the token goes round the ring of procs.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Round trips measured per proc.
    #[arg(long, default_value_t = 200)]
    pings: u32,
    /// Time between two heartbeats, e.g. 250ms (default 250ms); workers get
    /// it in their Welcome.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Silence after which a peer is dead, e.g. 5s (default 1500ms); at
    /// least twice the interval.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// Start each worker with this command followed by this executable's
    /// path and `worker --secrets-stdin`, e.g. `ssh node7` (split at blanks,
    /// no shell quoting); the settings go on its standard input. Workers are
    /// told the advertised address.
    #[arg(long, value_name = "CMD", conflicts_with = "group_launch")]
    launch: Option<String>,
    /// Start all workers with one command followed by this executable's
    /// path and `worker`, e.g. `srun -n {n} --overcommit` ({n}: the number
    /// of workers; split at blanks); the settings go in its environment.
    #[arg(long, value_name = "CMD")]
    group_launch: Option<String>,
    /// With --group-launch: the variable that gives each copy its index.
    #[arg(long, value_name = "VAR", default_value = "SLURM_PROCID")]
    index_from: String,
    /// Link setting of every connection: lan, wan, or changes such as
    /// wan,window=32MiB or lan,congestion=bbr.
    #[arg(long, value_name = "SETTING", default_value = "lan")]
    link: LinkConfig,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)
    /// and show a status table of the workers while the mesh is held.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Certificate revocation list (PEM) the allocator enforces; re-read
    /// with the certificates on SIGHUP.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Worker processes started by hand, besides the launched ones: each
    /// gets a mode-0600 file of its settings and a command to run, printed
    /// here; the ring waits until they have joined (within --start-timeout).
    #[arg(long, value_name = "N", default_value_t = 0)]
    external: u32,
    /// Most workers joining at once (started, not yet welcomed).
    #[arg(long, default_value_t = DEFAULT_LAUNCH_WINDOW)]
    launch_window: usize,
    /// Log every event (proc states, joins, exits) even for a large mesh.
    #[arg(long)]
    verbose: bool,
}

/// Most procs whose ask round trips are timed (`--pings` each).
const PINGED_PROCS: usize = 16;

/// Meshes of at most this many workers log every event without `--verbose`.
pub const VERBOSE_UP_TO: u32 = 16;

impl DemoArgs {
    /// Whether every event is logged.
    fn verbose(&self) -> bool {
        self.verbose || self.workers <= VERBOSE_UP_TO
    }

    /// The log filter used when `RUST_LOG` is not set.
    pub fn log_default(&self) -> &'static str {
        if self.verbose() {
            "info"
        } else {
            "warn"
        }
    }
}

pub fn main(args: DemoArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quicmesh demo: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quicmesh demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the demo has seen so far.
#[derive(Default)]
struct Tally {
    procs: BTreeMap<ProcId, ProcState>,
    exits: BTreeMap<u32, ExitReport>,
    ever_failed: BTreeSet<ProcId>,
    /// Workers whose connection ended in order (what is known of workers
    /// this process did not start), and those whose connection failed.
    left_in_order: BTreeSet<u32>,
    left_failed: BTreeSet<u32>,
}

impl Tally {
    /// Records `event` (the allocator logs every event itself, on stderr).
    fn record(&mut self, event: &AllocEvent) {
        match event {
            AllocEvent::Proc { proc_id, state, .. } => {
                if matches!(state, ProcState::Failed { .. }) {
                    self.ever_failed.insert(proc_id.clone());
                }
                self.procs.insert(proc_id.clone(), state.clone());
            }
            AllocEvent::WorkerExited { index, status } => {
                self.exits.insert(*index, *status);
            }
            AllocEvent::WorkerLeft { index, end } => {
                if end.is_failure() {
                    self.left_failed.insert(*index);
                } else {
                    self.left_in_order.insert(*index);
                }
            }
            _ => {}
        }
    }

    fn running(&self) -> usize {
        self.procs
            .values()
            .filter(|s| **s == ProcState::Running)
            .count()
    }
}

/// Spawns a ring node and an echo actor on every proc, sends a token
/// `rounds` times round the ring and checks its sum, measures ask round trips.
async fn exercise_actors(alloc: &Allocator, rounds: u32, pings: u32) -> anyhow::Result<String> {
    let client = alloc.client();
    let procs = ProcMesh::of(alloc);
    let n = procs.len();
    anyhow::ensure!(n > 0, "no procs");
    let ring = procs
        .spawn::<RingNode>(client, "ring", |rank| rank as u32)
        .await?;
    let echo = procs.spawn::<Echo>(client, "echo", |_| ()).await?;
    let links = ring.actors().iter().enumerate().map(|(rank, node)| {
        let next = ring.actors()[(rank + 1) % n].clone();
        node.ask(client, move |ack| RingMsg::Link(next, ack))
    });
    for linked in join_all(links).await {
        linked?;
    }
    // The token starts at rank 0 and makes `hops` hops, visiting hops + 1 nodes.
    let hops = rounds * n as u32;
    let first = ring.get(0).ok_or_else(|| anyhow::anyhow!("empty ring"))?;
    let started = Instant::now();
    let sum: u64 = first
        .ask(client, |done| RingMsg::Token { hops, sum: 0, done })
        .await?;
    let ring_time = started.elapsed();
    let expected: u64 = (0..=u64::from(hops)).map(|k| k % n as u64).sum();
    anyhow::ensure!(sum == expected, "ring sum {sum}, expected {expected}");

    // Every echo actor answers once (so every proc is asked); round trips
    // are timed on at most PINGED_PROCS of them, spread over the mesh, so
    // that a mesh of thousands is checked in seconds.
    let stride = n.div_ceil(PINGED_PROCS).max(1);
    let mut rtts = Vec::with_capacity(PINGED_PROCS * pings as usize);
    for (rank, actor) in echo.actors().iter().enumerate() {
        let timed = rank % stride == 0;
        for i in 0..if timed { pings.max(1) } else { 1 } {
            let t = Instant::now();
            let back = actor
                .ask(client, |p| EchoMsg::Echo(i.to_le_bytes().to_vec(), p))
                .await?;
            if timed {
                rtts.push(t.elapsed());
            }
            anyhow::ensure!(
                back == i.to_le_bytes(),
                "echo from {} returned other bytes",
                actor.id()
            );
        }
    }
    rtts.sort();
    let pct = |q: f64| {
        rtts.get(((rtts.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0, |d| d.as_micros())
    };
    let timed_procs = n.div_ceil(stride);
    let asks = rtts.len() + (n - timed_procs);
    let messages = 2 * n as u64 + (u64::from(hops) + 2) + 2 * asks as u64;
    Ok(format!(
        "actors: {n} procs, {} actors, {messages} messages; ring of {n} procs x {rounds} rounds: sum {sum} checked in {:.1} ms; every echo answered; ask round trip ({timed_procs} procs) p50 {} us, p99 {} us",
        ring.len() + echo.len(),
        ring_time.as_secs_f64() * 1e3,
        pct(0.5),
        pct(0.99),
    ))
}

/// Prints the status table (header and one row per worker) in one write.
fn print_status(alloc: &Allocator) {
    use std::io::Write;
    let mut table = format!("status: {}\n", WorkerStatus::header());
    for row in alloc.status() {
        table.push_str(&format!("status: {row}\n"));
    }
    let _ = std::io::stdout().lock().write_all(table.as_bytes());
}

async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let had_certs = quicmesh::tls::CertPaths::in_dir(&args.certs).all_exist();
    let certs = quicmesh::tls::ensure_dev_certs(&args.certs)?;
    println!(
        "certificates: {} ({})",
        args.certs.display(),
        if had_certs { "existing" } else { "generated" }
    );
    let mut config = AllocatorConfig::new(&certs);
    config.listen = args.listen;
    config.advertise = args.advertise.clone();
    config.alloc_name = "demo".into();
    config.link = args.link;
    config.launch_window = args.launch_window;
    if let Some(interval) = args.heartbeat_interval {
        config.heartbeat.interval = interval;
    }
    if let Some(timeout) = args.heartbeat_timeout {
        config.heartbeat.timeout = timeout;
    }
    config.crl = args.crl.clone();
    let alloc = Arc::new(Allocator::bind(config).await?);
    println!(
        "listening on {} (advertised to other hosts as {})",
        alloc.local_addr(),
        alloc.advertised_addr()
    );
    // Dropped (and so stopped) before `alloc`, whose drop kills the workers.
    let _reloader = AbortOnDropHandle::new(tokio::spawn(reload_on_sighup(alloc.clone())));
    let metrics = match args.metrics {
        Some(addr) => {
            let server = alloc.serve_metrics(addr).await?;
            println!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let on_terminal = std::io::stdout().is_terminal();
    let mut events = alloc.events();

    let (external, _settings) = write_external_workers(&alloc, &args)?;
    let exe = std::env::current_exe()?.display().to_string();
    let split = |cmd: &str| -> anyhow::Result<(String, Vec<String>)> {
        let mut words = cmd.split_whitespace().map(str::to_owned);
        let program = words
            .next()
            .ok_or_else(|| anyhow::anyhow!("the launch command {cmd:?} is empty"))?;
        Ok((program, words.collect()))
    };
    // Workers log to their stderr, passed through: a large mesh quiets them too.
    let quiet = !args.verbose() && std::env::var_os("RUST_LOG").is_none();
    let quieted = |launcher: Launcher| {
        if quiet {
            launcher.env("RUST_LOG", "warn")
        } else {
            launcher
        }
    };
    let begun = Instant::now();
    if let Some(cmd) = &args.group_launch {
        let (program, words) = split(cmd)?;
        let launcher = Launcher::group(program)
            .args(words)
            .args([exe, "worker".into()])
            .index_from(&args.index_from);
        alloc.launch_group(&quieted(launcher), args.workers, args.procs_per_worker)?;
    } else if let Some(cmd) = &args.launch {
        let (program, words) = split(cmd)?;
        let launcher = Launcher::program(program)
            .args(words)
            .args([exe, "worker".into(), "--secrets-stdin".into()])
            .secrets_stdin()
            .remote();
        alloc.launch(&quieted(launcher), args.workers, args.procs_per_worker)?;
    } else {
        let launcher = Launcher::current_exe()?.arg("worker");
        alloc.launch(&quieted(launcher), args.workers, args.procs_per_worker)?;
    }
    let total_workers = args.workers + args.external;
    let expected = (total_workers * args.procs_per_worker) as usize;
    let mut tally = Tally::default();
    let mut shown = ProgressView::new(total_workers as usize, !args.verbose());

    let started = tokio::time::timeout(Duration::from_secs(args.start_timeout), async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut joined = 0;
        while tally.running() < expected && tally.ever_failed.is_empty() && tally.exits.is_empty() {
            tokio::select! {
                e = events.next() => match e {
                    Some(e) => {
                        if let AllocEvent::WorkerJoined { index, .. } = &e {
                            if external.contains(index) {
                                joined += 1;
                                println!(
                                    "external worker {index} joined ({joined} of {})",
                                    external.len()
                                );
                            }
                        }
                        tally.record(&e)
                    }
                    None => break,
                },
                _ = tick.tick() => shown.update(&alloc.progress(), begun.elapsed()),
            }
        }
    })
    .await;
    let all_running = started.is_ok() && tally.running() == expected;
    shown.finish(&alloc.progress(), begun.elapsed());
    let up_after = begun.elapsed();
    let mut actors_ok = true;
    if all_running {
        println!(
            "mesh up: {} workers, {expected} procs running after {:.1} s",
            args.workers,
            up_after.as_secs_f64()
        );
        match exercise_actors(&alloc, args.rounds, args.pings).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                println!("actors: FAILED: {e:#}");
                actors_ok = false;
            }
        }
        let hold = tokio::time::sleep(Duration::from_secs(args.hold));
        tokio::pin!(hold);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        let show_live = metrics.is_some() && on_terminal && args.hold > 0;
        // One listener for the whole hold: a `ctrl_c()` made anew at every
        // turn of the loop is not listening between one turn and the next,
        // and an interrupt that lands while an event is being handled (a
        // worker lost, say) would be missed and the hold run to its end.
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                _ = &mut hold => break,
                _ = status_tick.tick(), if show_live => print_status(&alloc),
                _ = &mut interrupted => { println!("interrupted, stopping"); break }
                e = events.next() => match e {
                    Some(e) => tally.record(&e),
                    None => break,
                },
            }
        }
    } else {
        println!(
            "mesh did not come up: {} of {expected} procs running",
            tally.running()
        );
    }

    if metrics.is_some() && !on_terminal && all_running {
        print_status(&alloc);
    }
    let told = alloc.stop_all(0);
    println!("stopping: StopAndExit(0) sent to {told} workers");
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        while tally.exits.len() < args.workers as usize
            || external
                .iter()
                .any(|i| !tally.left_in_order.contains(i) && !tally.left_failed.contains(i))
        {
            match events.next().await {
                Some(e) => tally.record(&e),
                None => break,
            }
        }
    })
    .await;
    if stopped.is_err() {
        println!("not every worker exited within 30 s");
    }
    // Launched workers report an exit status; external ones (not our
    // children) are seen leaving, in order or not.
    let launched_clean = tally.exits.values().filter(|s| s.is_success()).count();
    let external_clean = external
        .iter()
        .filter(|i| tally.left_in_order.contains(i))
        .count();
    let clean_exits = launched_clean + external_clean;
    let external_failed = external
        .iter()
        .filter(|i| tally.left_failed.contains(i))
        .count();
    let failed_exits = tally.exits.len() - launched_clean + external_failed;
    let stopped_procs = tally
        .procs
        .values()
        .filter(|s| matches!(s, ProcState::Stopped { .. }))
        .count();
    println!(
        "summary: {total_workers} workers ({clean_exits} exited 0, {failed_exits} exited otherwise, {} not seen exiting); \
         {expected} procs ({} running at peak, {stopped_procs} stopped in order, {} failed); {:.1} s",
        (total_workers as usize).saturating_sub(clean_exits + failed_exits),
        if all_running { expected } else { tally.running() },
        tally.ever_failed.len(),
        begun.elapsed().as_secs_f64()
    );
    Ok(all_running
        && actors_ok
        && tally.ever_failed.is_empty()
        && stopped_procs == expected
        && clean_exits == total_workers as usize)
}

/// Reloads the allocator's certificates, CA bundle and revocation list on
/// every SIGHUP, saying what happened.
async fn reload_on_sighup(alloc: Arc<Allocator>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quicmesh demo: cannot watch SIGHUP, reloading disabled: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match alloc.reload_tls() {
            Ok(revoked) if revoked.is_empty() => println!("SIGHUP: TLS material reloaded"),
            Ok(revoked) => {
                println!("SIGHUP: TLS material reloaded; revoked workers disconnected: {revoked:?}")
            }
            Err(e) => println!("SIGHUP: reload failed, the old material stays in force: {e}"),
        }
    }
}

/// Reserves the `--external` workers and writes each one's settings, secret
/// token included, to a file only its owner may read; prints the command
/// that starts it. Returns their indexes.
fn write_external_workers(
    alloc: &Allocator,
    args: &DemoArgs,
) -> anyhow::Result<(Vec<u32>, Option<RemovedOnDrop>)> {
    if args.external == 0 {
        return Ok((Vec::new(), None));
    }
    let dir = std::env::temp_dir().join(format!("quicmesh-demo-{}", std::process::id()));
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    builder
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let guard = RemovedOnDrop(dir.clone());
    println!(
        "external workers: settings in {} (each file holds a secret token)",
        dir.display()
    );
    let exe = std::env::current_exe()?;
    let mut indexes = Vec::new();
    for _ in 0..args.external {
        let ticket = alloc.reserve(args.procs_per_worker);
        let path = dir.join(format!("worker-{}.env", ticket.index));
        let mut body = String::new();
        for (name, value) in &ticket.env {
            body.push_str(&format!("{name}={}\n", shell_quote(value)));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, body.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!(
            "external worker {}: run: sh -c 'set -a; . {}; set +a; exec {} worker'",
            ticket.index,
            shell_quote(&path.display().to_string()),
            shell_quote(&exe.display().to_string())
        );
        indexes.push(ticket.index);
    }
    println!(
        "waiting up to {} s for {} external workers to join",
        args.start_timeout, args.external
    );
    Ok((indexes, Some(guard)))
}

/// A folder of secrets, removed when the demo ends (however it ends).
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `value` quoted for a POSIX shell: inside double quotes, with `"`, `\`,
/// `$` and backquote escaped (so that it can also sit inside the printed
/// single-quoted `sh -c` command).
fn shell_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// How the launch's progress is shown: a bar on a terminal, plain lines
/// (at most one a second, and only when something changed) otherwise, or
/// nothing when every event is logged anyway.
struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_line: Option<(Instant, Progress)>,
}

impl ProgressView {
    fn new(workers: usize, show: bool) -> Self {
        let on_terminal = std::io::stderr().is_terminal();
        let bar = (show && on_terminal).then(|| {
            let bar = indicatif::ProgressBar::new(workers as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:30}] {pos}/{len} running  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        ProgressView {
            bar,
            plain: show && !on_terminal,
            last_line: None,
        }
    }

    fn line(p: &Progress, elapsed: Duration) -> String {
        format!(
            "launch: {} joined, {} running, {} failed of {} workers; {:.1} s",
            p.joined,
            p.procs_running,
            p.workers_failed() + p.procs_failed,
            p.workers,
            elapsed.as_secs_f64()
        )
    }

    fn update(&mut self, p: &Progress, elapsed: Duration) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.procs_running as u64);
            bar.set_length(p.procs as u64);
            bar.set_message(format!(
                "{} joined, {} failed of {} workers",
                p.joined,
                p.workers_failed() + p.procs_failed,
                p.workers
            ));
        } else if self.plain {
            let due = self.last_line.map_or(true, |(at, last)| {
                last != *p && at.elapsed() >= Duration::from_secs(1)
            });
            if due {
                println!("{}", Self::line(p, elapsed));
                self.last_line = Some((Instant::now(), *p));
            }
        }
    }

    fn finish(&mut self, p: &Progress, elapsed: Duration) {
        let had_bar = match self.bar.take() {
            Some(bar) => {
                bar.finish_and_clear();
                true
            }
            None => false,
        };
        if had_bar || self.plain {
            println!("{}", Self::line(p, elapsed));
        }
    }
}
