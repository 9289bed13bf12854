//! `quicmesh demo`: a local mesh with generated certificates, start to stop.
//!
//! Generates certificates if absent, listens, launches workers (this same
//! executable, as `quicmesh worker`), prints every event, holds the mesh up,
//! stops everything with `StopAndExit(0)` and reports each exit status. It
//! exits 0 only if every proc ran and stopped in order and every worker
//! exited 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::future::join_all;
use quicmesh::actor::builtin::{Echo, EchoMsg, RingMsg, RingNode};
use quicmesh::ProcMesh;

use clap::Parser;
use quicmesh::allocator::{
    AllocEvent, Allocator, AllocatorConfig, Launcher, ProcState, WorkerStatus,
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
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
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
    /// Link setting of every connection: lan, wan, or changes such as
    /// wan,window=32MiB or lan,congestion=bbr.
    #[arg(long, value_name = "SETTING", default_value = "lan")]
    link: LinkConfig,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)
    /// and show a status table of the workers while the mesh is held.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
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

    let mut rtts = Vec::with_capacity(n * pings as usize);
    for actor in echo.actors() {
        for i in 0..pings {
            let t = Instant::now();
            let back = actor
                .ask(client, |p| EchoMsg::Echo(i.to_le_bytes().to_vec(), p))
                .await?;
            rtts.push(t.elapsed());
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
    let messages = 2 * n as u64 + (u64::from(hops) + 2) + 2 * rtts.len() as u64;
    Ok(format!(
        "actors: {n} procs, {} actors, {messages} messages; ring of {n} procs x {rounds} rounds: sum {sum} checked in {:.1} ms; ask round trip p50 {} us, p99 {} us",
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
    config.alloc_name = "demo".into();
    config.link = args.link;
    if let Some(interval) = args.heartbeat_interval {
        config.heartbeat.interval = interval;
    }
    if let Some(timeout) = args.heartbeat_timeout {
        config.heartbeat.timeout = timeout;
    }
    let alloc = Allocator::bind(config).await?;
    println!("listening on {}", alloc.local_addr());
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

    let launcher = Launcher::current_exe()?.arg("worker");
    alloc.launch(&launcher, args.workers, args.procs_per_worker)?;
    let expected = (args.workers * args.procs_per_worker) as usize;
    let mut tally = Tally::default();

    let started = tokio::time::timeout(Duration::from_secs(args.start_timeout), async {
        while tally.running() < expected && tally.ever_failed.is_empty() && tally.exits.is_empty() {
            match events.next().await {
                Some(e) => tally.record(&e),
                None => break,
            }
        }
    })
    .await;
    let all_running = started.is_ok() && tally.running() == expected;
    let mut actors_ok = true;
    if all_running {
        println!(
            "mesh up: {} workers, {expected} procs running",
            args.workers
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
        loop {
            tokio::select! {
                _ = &mut hold => break,
                _ = status_tick.tick(), if show_live => print_status(&alloc),
                _ = tokio::signal::ctrl_c() => { println!("interrupted, stopping"); break }
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
        while tally.exits.len() < args.workers as usize {
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
    let clean_exits = tally.exits.values().filter(|s| s.is_success()).count();
    let stopped_procs = tally
        .procs
        .values()
        .filter(|s| matches!(s, ProcState::Stopped { .. }))
        .count();
    println!(
        "summary: {expected} procs, {} running at peak, {stopped_procs} stopped in order, {} failed; {clean_exits}/{} workers exited 0",
        if all_running { expected } else { tally.running() },
        tally.ever_failed.len(),
        args.workers
    );
    Ok(all_running
        && actors_ok
        && tally.ever_failed.is_empty()
        && stopped_procs == expected
        && clean_exits == args.workers as usize)
}
