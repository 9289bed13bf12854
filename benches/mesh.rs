//! End-to-end benchmark of quicmesh, each case against a bare-quinn baseline measured in the same run.
//!
//! ```sh
//! cargo bench --bench mesh               # full run (about a minute and a half)
//! cargo bench --bench mesh -- --quick    # fewer iterations (about half a minute)
//! ```
//!
//! The WAN cases run the same measurements through the fault-injection relay
//! (`quicmesh::relay`), both quicmesh and bare quinn, at 50 ms each way and
//! 1 % loss: with the long-link settings (`LinkConfig::wan`) on both, and
//! again with the LAN defaults. Environment knobs, for measuring other
//! conditions:
//! - `QUICMESH_BENCH_WAN_DELAY_MS` (default 50) and `QUICMESH_BENCH_WAN_LOSS`
//!   (default 0.01): the relay's one-way delay and loss, both directions;
//! - `QUICMESH_BENCH_WAN_LINK` (default `wan`): the long-link setting of the
//!   WAN cases, to see which part of it does what (e.g. `lan,congestion=bbr`);
//! - `QUICMESH_BENCH_LINK` (default `lan`): the link setting of the loopback
//!   throughput cases, to measure what a setting costs on a LAN;
//! - `QUICMESH_BENCH_ONLY` (`lan` or `wan`): run only the loopback
//!   throughput cases or only the WAN cases;
//! - `QUICMESH_BENCH_TELL_ROUNDS` (a count): run nothing but that many
//!   rounds of quicmesh tells (64 B, 300,000 a round) and print each round's
//!   rate: for profiling the tell path, and for comparing two builds on more
//!   samples than the full run's three (no baseline, so no ratio).
//!
//! The round trip is measured twice on quicmesh, against one worker of each
//! layout: the default (connection on a thread of its own) and
//! `QUICMESH_WORKER_RUNTIME=shared` with one thread, in alternating chunks
//! with bare quinn's, so the table shows what the default's isolation costs.
//!
//! The proc-to-proc cases (`mesh/proc_paths.rs`) measure actors on two
//! workers talking through the allocator, and 8 workers telling one actor,
//! each against bare quinn forwarded through a middle process.
//!
//! This one executable plays five parts, chosen by its environment:
//! - a quicmesh worker, when an allocator launched it (`bootstrap_or_die` never returns then);
//! - the raw quinn peer (`QUICMESH_BENCH_RAW_PEER`): a bare quinn server with mutual TLS
//!   that echoes or counts length-prefixed frames encoded by `quicmesh::testkit::wire::codec`;
//! - a raw sender (`QUICMESH_BENCH_RAW_SENDER`): a bare quinn client of the
//!   proc-to-proc cases' middle, run one command of its stdin at a time;
//! - an allocator child (`QUICMESH_BENCH_ALLOC_CHILD`) that launches 2 workers and waits,
//!   to be frozen by the controller;
//! - the controller, which runs every case and prints a table, then one `name: value`
//!   line per figure.
//!
//! Every child process is held by a guard that kills it when dropped; children also
//! exit by themselves when their stdin (a pipe from the controller) closes.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use futures::future::join_all;
use quicmesh::actor::builtin::{self, Counter, CounterMsg, CounterReport, Echo, EchoMsg};
use quicmesh::allocator::{AllocEvent, Allocator, AllocatorConfig, Events, Launcher, ProcState};
use quicmesh::config::LinkConfig;
use quicmesh::config::{HeartbeatConfig, Limits, ENV_WORKER_RUNTIME, ENV_WORKER_THREADS};
use quicmesh::testkit::relay::{Conditions, Relay};
use quicmesh::testkit::transport::{self, FramedRecv, FramedSend};
use quicmesh::tls::{self, CertPaths};
use quicmesh::{ActorRef, Client, ProcId, ProcMesh};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[path = "mesh/proc_paths.rs"]
mod proc_paths;

/// Set in the raw quinn peer's environment.
const ENV_RAW_PEER: &str = "QUICMESH_BENCH_RAW_PEER";
/// Set in the allocator child's environment.
const ENV_ALLOC_CHILD: &str = "QUICMESH_BENCH_ALLOC_CHILD";
/// Certificate directory handed to the children.
const ENV_CERT_DIR: &str = "QUICMESH_BENCH_CERT_DIR";
/// The raw peer's link setting (set by the controller for each raw peer).
const ENV_RAW_LINK: &str = "QUICMESH_BENCH_RAW_LINK";
/// Optional: the WAN cases' one-way delay in milliseconds (default 50).
const ENV_WAN_DELAY_MS: &str = "QUICMESH_BENCH_WAN_DELAY_MS";
/// Optional: the WAN cases' loss probability, each direction (default 0.01).
const ENV_WAN_LOSS: &str = "QUICMESH_BENCH_WAN_LOSS";
/// Optional: the link setting of the loopback throughput cases (default lan).
const ENV_LAN_LINK: &str = "QUICMESH_BENCH_LINK";
/// Optional: the long-link setting of the WAN cases (default wan).
const ENV_WAN_LINK: &str = "QUICMESH_BENCH_WAN_LINK";
/// Optional: `lan` or `wan`, to run only that group of cases.
const ENV_ONLY: &str = "QUICMESH_BENCH_ONLY";
/// Set to a count: only that many rounds of quicmesh tells.
const ENV_TELL_ROUNDS: &str = "QUICMESH_BENCH_TELL_ROUNDS";
/// Tells in one round of [`ENV_TELL_ROUNDS`].
const TELL_ROUND: u64 = 300_000;

/// Payload of the small messages.
const SMALL: usize = 64;
/// Payload of the bulk messages.
const BULK: usize = 16 * 1024;
/// Bytes the raw client encodes before one write (the same batch as quicmesh's mailbox writer).
const RAW_BATCH: usize = 64 * 1024;
/// Alternating quicmesh/raw rounds of each one-way case (the median is reported).
const ROUNDS: usize = 3;
/// Round trips per path before switching to the other in the RTT case.
const RTT_CHUNK: usize = 50;
/// Time one case may take before it is abandoned.
const CASE_LIMIT: Duration = Duration::from_secs(180);
/// Time a proc start, stop or exit may take.
const EVENT_LIMIT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    // In a worker process this runs the worker and exits.
    quicmesh::bootstrap_or_die(&builtin::registry().with::<proc_paths::Driver>()?);
    if std::env::var_os(ENV_RAW_PEER).is_some() {
        return raw_peer_main();
    }
    if std::env::var_os(proc_paths::ENV_RAW_SENDER).is_some() {
        return proc_paths::raw_sender_main();
    }
    if std::env::var_os(ENV_ALLOC_CHILD).is_some() {
        return alloc_child_main();
    }
    init_logging();
    // cargo bench passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    if let Ok(rounds) = std::env::var(ENV_TELL_ROUNDS) {
        let rounds: usize = rounds
            .trim()
            .parse()
            .map_err(|e| anyhow!("{ENV_TELL_ROUNDS}={rounds:?}: {e}"))?;
        return runtime()?.block_on(tell_rounds(rounds));
    }
    runtime()?.block_on(controller(Sizes::new(quick)))
}

/// `rounds` rounds of [`TELL_ROUND`] quicmesh tells of 64 B to one Counter
/// on one worker, each round's rate printed, then their median.
async fn tell_rounds(rounds: usize) -> anyhow::Result<()> {
    let dir = TempDir::new("certs")?;
    let certs = tls::generate_dev_certs(dir.path(), &tls::DevCertOptions::new())?;
    let mut w = Watch::new(bind_with(&certs, "tells", LinkConfig::lan()).await?);
    w.alloc.launch(&worker_launcher()?, 1, 1)?;
    w.running(1).await?;
    let proc_id = w.alloc.procs()[0].clone();
    let client = w.alloc.client().clone();
    let mut mesh = MeshCounter {
        actor: client.spawn::<Counter>(&proc_id, "tells", &()).await?,
        seq: 0,
    };
    mesh.batch(&client, TELL_ROUND / 10, SMALL).await?;
    let mut rates = Vec::new();
    for round in 0..rounds {
        let secs = mesh.batch(&client, TELL_ROUND, SMALL).await?;
        let rate = TELL_ROUND as f64 / secs;
        println!("round {round}: {rate:.0} msg/s");
        rates.push(rate);
    }
    println!(
        "tell_msgs_per_s median of {rounds}: {:.0}",
        median_f64(&mut rates)
    );
    w.stop_all(1).await?;
    Ok(())
}

/// The runtime every part uses: multi-thread, 2 worker threads (as a quicmesh worker's).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Warnings and errors of the controller's own allocators on stderr (RUST_LOG overrides).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Iteration counts.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    quick: bool,
    rtt_warmup: usize,
    rtt_samples: usize,
    tells: u64,
    bulk: u64,
    spawn_workers: u32,
    actor_spawns: usize,
    cast_rounds: usize,
    wan: WanSizes,
}

/// Iteration counts of the WAN cases (each message crosses a 100 ms round trip).
#[derive(Debug, Clone, Copy)]
struct WanSizes {
    rtt_samples: usize,
    /// Tells and bulk messages with the long-link settings, per round.
    tells: u64,
    bulk: u64,
    /// Alternating rounds with the long-link settings.
    rounds: usize,
    /// Tells and bulk messages with the LAN defaults, per round.
    lan_tells: u64,
    lan_bulk: u64,
    /// Alternating rounds with the LAN defaults (their speed varies a lot:
    /// Cubic halves its rate at every loss).
    lan_rounds: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                rtt_warmup: 50,
                rtt_samples: 300,
                tells: 100_000,
                bulk: 2_000,
                spawn_workers: 8,
                actor_spawns: 200,
                cast_rounds: 5,
                wan: WanSizes {
                    rtt_samples: 10,
                    tells: 10_000,
                    bulk: 500,
                    rounds: 1,
                    lan_tells: 1_000,
                    lan_bulk: 32,
                    lan_rounds: 1,
                },
            }
        } else {
            Sizes {
                quick,
                rtt_warmup: 200,
                rtt_samples: 2_000,
                tells: 200_000,
                bulk: 20_000,
                spawn_workers: 32,
                actor_spawns: 2_000,
                cast_rounds: 30,
                wan: WanSizes {
                    rtt_samples: 40,
                    tells: 40_000,
                    bulk: 2_000,
                    rounds: ROUNDS,
                    lan_tells: 3_000,
                    lan_bulk: 64,
                    lan_rounds: ROUNDS,
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Results

/// A figure: a `name: value` line, and what the table shows.
struct Results {
    figures: Vec<(String, Option<f64>, usize)>,
    rows: Vec<[String; 5]>,
    failures: Vec<String>,
}

impl Results {
    fn new() -> Results {
        Results {
            figures: Vec::new(),
            rows: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Records figure `name` with `decimals` decimals (`None`: the case failed).
    fn figure(&mut self, name: &str, value: Option<f64>, decimals: usize) {
        self.figures.push((name.to_string(), value, decimals));
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, v, _)| *v)
    }

    fn row(&mut self, case: &str, mesh: String, raw: String, ratio: String, goal: &str) {
        self.rows
            .push([case.to_string(), mesh, raw, ratio, goal.to_string()]);
    }

    fn failed(&mut self, case: &str, e: &anyhow::Error) {
        eprintln!("bench: case {case} failed: {e:#}");
        self.failures.push(format!("{case}: {e:#}"));
    }

    fn print(&self, sizes: &Sizes, elapsed: Duration) {
        let header = [
            "case".to_string(),
            "quicmesh".to_string(),
            "bare quinn".to_string(),
            "ratio".to_string(),
            "goal".to_string(),
        ];
        let mut widths = [0usize; 5];
        for row in std::iter::once(&header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mode = if sizes.quick { "quick" } else { "full" };
        println!();
        println!(
            "quicmesh mesh benchmark ({mode} run, {:.1} s; MB = 10^6 payload bytes)",
            elapsed.as_secs_f64()
        );
        for (i, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", line.join("  ").trim_end());
            if i == 0 {
                println!("{}", "-".repeat(widths.iter().sum::<usize>() + 8));
            }
        }
        println!();
        for (name, value, decimals) in &self.figures {
            match value {
                Some(v) => println!("{name}: {v:.decimals$}"),
                None => println!("{name}: failed"),
            }
        }
    }
}

fn fmt(v: Option<f64>, decimals: usize, unit: &str) -> String {
    match v {
        Some(v) => format!("{v:.decimals$} {unit}").trim_end().to_string(),
        None => "failed".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The nearest-rank percentile `pct` of `samples` (sorted here), in microseconds.
fn percentile_us(samples: &mut [Duration], pct: usize) -> f64 {
    samples.sort_unstable();
    let i = (samples.len() * pct).div_ceil(100).max(1) - 1;
    samples[i].as_secs_f64() * 1e6
}

fn median_f64(samples: &mut [f64]) -> f64 {
    samples.sort_unstable_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

// ---------------------------------------------------------------------------
// The controller

async fn controller(sizes: Sizes) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = TempDir::new("certs")?;
    let certs = tls::generate_dev_certs(dir.path(), &tls::DevCertOptions::new())?;
    let mut r = Results::new();
    let only = std::env::var(ENV_ONLY).ok();
    let only = only.as_deref();
    ensure!(
        matches!(only, None | Some("lan") | Some("wan")),
        "{ENV_ONLY} must be lan or wan"
    );

    if only != Some("wan") {
        // Throughput cases: one worker with one proc against one raw peer process.
        let t = Instant::now();
        match timed(throughput(&certs, &sizes, &mut r)).await {
            Ok(()) => eprintln!("bench: throughput cases done in {:.1?}", t.elapsed()),
            Err(e) => r.failed("throughput", &e),
        }
        for name in [
            "rtt_p50_us",
            "rtt_p99_us",
            "rtt_shared_p50_us",
            "quinn_rtt_p50_us",
            "tell_msgs_per_s",
            "quinn_msgs_per_s",
            "bulk_mb_per_s",
            "quinn_bulk_mb_per_s",
            "worker_peak_rss_kb",
        ] {
            if !r.figures.iter().any(|(n, _, _)| n == name) {
                r.figure(name, None, 0);
            }
        }
        let (p50, p99, q50) = (
            r.get("rtt_p50_us"),
            r.get("rtt_p99_us"),
            r.get("quinn_rtt_p50_us"),
        );
        let rtt_ratio = ratio(p50, q50);
        r.figure("rtt_ratio", rtt_ratio, 2);
        let quinn_p99 = r.get("quinn_rtt_p99_us");
        r.row(
            "ask rtt p50, 64 B",
            fmt(p50, 1, "us"),
            fmt(q50, 1, "us"),
            fmt(rtt_ratio, 2, ""),
            "ratio <= 1.2",
        );
        r.row(
            "ask rtt p99, 64 B",
            fmt(p99, 1, "us"),
            fmt(quinn_p99, 1, "us"),
            fmt(ratio(p99, quinn_p99), 2, ""),
            "",
        );
        let shared = r.get("rtt_shared_p50_us");
        let shared_ratio = ratio(shared, q50);
        r.figure("rtt_shared_ratio", shared_ratio, 2);
        r.row(
            "ask rtt p50, 64 B, worker runtime shared, 1 thread",
            fmt(shared, 1, "us"),
            fmt(q50, 1, "us"),
            fmt(shared_ratio, 2, ""),
            "",
        );
        let (tell, quinn_tell) = (r.get("tell_msgs_per_s"), r.get("quinn_msgs_per_s"));
        let tell_ratio = ratio(tell, quinn_tell);
        r.figure("tell_ratio", tell_ratio, 2);
        r.row(
            &format!("tell one-way, 64 B x {}, median of {}", sizes.tells, ROUNDS),
            fmt(tell, 0, "msg/s"),
            fmt(quinn_tell, 0, "msg/s"),
            fmt(tell_ratio, 2, ""),
            "ratio >= 0.5",
        );
        let (bulk, quinn_bulk) = (r.get("bulk_mb_per_s"), r.get("quinn_bulk_mb_per_s"));
        let bulk_ratio = ratio(bulk, quinn_bulk);
        r.figure("bulk_ratio", bulk_ratio, 2);
        r.row(
            &format!(
                "bulk one-way, 16 KiB x {}, median of {}",
                sizes.bulk, ROUNDS
            ),
            fmt(bulk, 1, "MB/s"),
            fmt(quinn_bulk, 1, "MB/s"),
            fmt(bulk_ratio, 2, ""),
            "ratio >= 0.7",
        );
        // Measured after the throughput cases, as asked.
        let alloc_rss = peak_rss_kb("self").ok();
        r.figure("allocator_peak_rss_kb", alloc_rss.map(|v| v as f64), 0);
        r.row(
            "allocator peak RSS (VmHWM)",
            fmt(alloc_rss.map(|v| v as f64), 0, "kB"),
            String::new(),
            String::new(),
            "",
        );
        let worker_rss = r.get("worker_peak_rss_kb");
        r.row(
            "worker peak RSS (VmHWM)",
            fmt(worker_rss, 0, "kB"),
            String::new(),
            String::new(),
            "",
        );
        // After the RSS figures: these cases run bare quinn's middle in this
        // process too.
        let t = Instant::now();
        match timed(proc_paths::proc_to_proc(&certs, &sizes, &mut r)).await {
            Ok(()) => eprintln!("bench: proc-to-proc cases done in {:.1?}", t.elapsed()),
            Err(e) => r.failed("proc-to-proc", &e),
        }
        let t = Instant::now();
        match timed(proc_paths::fan_in(&certs, &sizes, &mut r)).await {
            Ok(()) => eprintln!("bench: fan-in case done in {:.1?}", t.elapsed()),
            Err(e) => r.failed("fan-in", &e),
        }
        proc_paths::rows(&mut r, &sizes);
    }

    if only.is_none() {
        // Launching workers.
        let spawn_ms = match timed(spawn_workers(&certs, sizes.spawn_workers)).await {
            Ok(ms) => Some(ms),
            Err(e) => {
                r.failed("spawn_workers", &e);
                None
            }
        };
        r.figure("spawn_workers_ms", spawn_ms, 1);
        r.row(
            &format!("launch {} workers x 1 proc to running", sizes.spawn_workers),
            fmt(spawn_ms, 1, "ms"),
            String::new(),
            String::new(),
            "",
        );

        // Remote actor spawns, then failure detection on the same mesh.
        let (spawns, kill_ms, freeze_ms) = match timed(spawns_and_detection(&certs, &sizes)).await {
            Ok(v) => v,
            Err(e) => {
                r.failed("actor_spawns / detection", &e);
                (None, None, None)
            }
        };
        r.figure("actor_spawns_per_s", spawns, 0);
        r.row(
            &format!("remote Echo spawns x {} (4x2 procs)", sizes.actor_spawns),
            fmt(spawns, 0, "spawns/s"),
            String::new(),
            String::new(),
            "",
        );
        let goal = "<= 1750 ms (timeout 1500 + interval 250)";
        r.figure("detect_kill_ms", kill_ms, 1);
        r.row(
            "detect SIGKILLed worker",
            fmt(kill_ms, 1, "ms"),
            String::new(),
            String::new(),
            goal,
        );
        r.figure("detect_freeze_ms", freeze_ms, 1);
        r.row(
            "detect SIGSTOPped worker",
            fmt(freeze_ms, 1, "ms"),
            String::new(),
            String::new(),
            goal,
        );

        // Casting to 64 procs.
        let (cast, seq) = match timed(cast_64(&certs, &sizes)).await {
            Ok((c, s)) => (Some(c), Some(s)),
            Err(e) => {
                r.failed("cast_64", &e);
                (None, None)
            }
        };
        r.figure("cast_64_us", cast, 1);
        r.figure("seq_tells_64_us", seq, 1);
        r.row(
            "cast to 64 procs + 64 reports (median)",
            fmt(cast, 1, "us"),
            String::new(),
            String::new(),
            "",
        );
        r.row(
            "64 sequential tells + 64 reports (median)",
            fmt(seq, 1, "us"),
            String::new(),
            String::new(),
            "",
        );

        // Workers of a frozen allocator.
        let exit_ms = match timed(exit_after_allocator_freeze(dir.path())).await {
            Ok(ms) => Some(ms),
            Err(e) => {
                r.failed("exit_after_allocator_freeze", &e);
                None
            }
        };
        r.figure("exit_after_allocator_freeze_ms", exit_ms, 1);
        r.row(
            "workers gone after allocator SIGSTOP",
            fmt(exit_ms, 1, "ms"),
            String::new(),
            String::new(),
            goal,
        );
    }

    if only != Some("lan") {
        let t = Instant::now();
        match timed(wan_cases(&certs, &sizes, &mut r)).await {
            Ok(()) => eprintln!("bench: WAN cases done in {:.1?}", t.elapsed()),
            Err(e) => r.failed("wan", &e),
        }
        let long_link = env_or(ENV_WAN_LINK, LinkConfig::wan()).unwrap_or(LinkConfig::wan());
        wan_rows(&mut r, &long_link.to_string());
    }

    // Put the figures in the order of the brief.
    let order = [
        "rtt_p50_us",
        "rtt_p99_us",
        "quinn_rtt_p50_us",
        "rtt_ratio",
        "rtt_shared_p50_us",
        "rtt_shared_ratio",
        "tell_msgs_per_s",
        "quinn_msgs_per_s",
        "tell_ratio",
        "bulk_mb_per_s",
        "quinn_bulk_mb_per_s",
        "bulk_ratio",
        "p2p_rtt_p50_us",
        "quinn_p2p_rtt_p50_us",
        "p2p_rtt_ratio",
        "p2p_tell_msgs_per_s",
        "quinn_p2p_msgs_per_s",
        "p2p_tell_ratio",
        "fanin_msgs_per_s",
        "quinn_fanin_msgs_per_s",
        "fanin_ratio",
        "spawn_workers_ms",
        "actor_spawns_per_s",
        "detect_kill_ms",
        "detect_freeze_ms",
        "exit_after_allocator_freeze_ms",
        "cast_64_us",
        "seq_tells_64_us",
        "allocator_peak_rss_kb",
        "worker_peak_rss_kb",
        "wan_delay_ms",
        "wan_loss_pct",
        "wan_rtt_p50_ms",
        "quinn_wan_rtt_p50_ms",
        "wan_rtt_ratio",
        "wan_tell_msgs_per_s",
        "quinn_wan_msgs_per_s",
        "wan_tell_ratio",
        "wan_bulk_mb_per_s",
        "quinn_wan_bulk_mb_per_s",
        "wan_bulk_ratio",
        "wan_lan_tell_msgs_per_s",
        "quinn_wan_lan_msgs_per_s",
        "wan_lan_bulk_mb_per_s",
        "quinn_wan_lan_bulk_mb_per_s",
    ];
    r.figures.retain(|(n, _, _)| order.contains(&n.as_str()));
    r.figures
        .sort_by_key(|(n, _, _)| order.iter().position(|o| o == n));
    r.print(&sizes, started.elapsed());
    if !r.failures.is_empty() {
        bail!(
            "{} case(s) failed: {}",
            r.failures.len(),
            r.failures.join("; ")
        );
    }
    Ok(())
}

/// Runs a case with the case time limit.
async fn timed<T>(case: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(CASE_LIMIT, case)
        .await
        .map_err(|_| anyhow!("case took longer than {CASE_LIMIT:?}"))?
}

/// The launcher of worker processes: this executable, no arguments.
fn worker_launcher() -> anyhow::Result<Launcher> {
    let mut launcher = Launcher::program(std::env::current_exe()?);
    if std::env::var_os("RUST_LOG").is_none() {
        // Keep 32 workers' info lines out of the table.
        launcher = launcher.env("RUST_LOG", "warn");
    }
    Ok(launcher)
}

async fn bind(certs: &CertPaths, name: &str) -> anyhow::Result<Allocator> {
    bind_with(certs, name, LinkConfig::lan()).await
}

async fn bind_with(certs: &CertPaths, name: &str, link: LinkConfig) -> anyhow::Result<Allocator> {
    let mut config = AllocatorConfig::new(certs);
    config.alloc_name = name.into();
    config.link = link;
    Ok(Allocator::bind(config).await?)
}

/// An allocator and what it has reported so far.
struct Watch {
    alloc: Allocator,
    /// Subscribed when the allocator was bound: no event is missed.
    events: Events,
    running: usize,
    /// First proc failure per worker, with the time it was seen.
    failed: HashMap<u32, (Instant, String)>,
    exited: HashSet<u32>,
    log: Vec<String>,
}

impl Watch {
    fn new(alloc: Allocator) -> Watch {
        Watch {
            events: alloc.events(),
            alloc,
            running: 0,
            failed: HashMap::new(),
            exited: HashSet::new(),
            log: Vec::new(),
        }
    }

    fn record(&mut self, e: AllocEvent) {
        match &e {
            AllocEvent::Proc {
                state: ProcState::Running,
                ..
            } => self.running += 1,
            AllocEvent::Proc {
                worker,
                state: ProcState::Failed { reason },
                ..
            } => {
                self.failed
                    .entry(*worker)
                    .or_insert_with(|| (Instant::now(), reason.to_string()));
            }
            AllocEvent::WorkerExited { index, .. } => {
                self.exited.insert(*index);
            }
            _ => {}
        }
        self.log.push(e.to_string());
    }

    /// Waits until `done` holds; errors after `within`, or at once when `bad` names a problem.
    async fn until(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(&Watch) -> bool,
        bad: impl Fn(&Watch) -> Option<String>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(self) {
                return Ok(());
            }
            if let Some(problem) = bad(self) {
                bail!(
                    "{problem} while waiting for {what}; events: {:?}",
                    self.tail()
                );
            }
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(e)) => self.record(e),
                Ok(None) => bail!("allocator event stream ended while waiting for {what}"),
                Err(_) => bail!("no {what} within {within:?}; events: {:?}", self.tail()),
            }
        }
    }

    fn tail(&self) -> &[String] {
        &self.log[self.log.len().saturating_sub(10)..]
    }

    /// Waits for `n` procs to run; fails at once if a proc fails or a worker exits.
    async fn running(&mut self, n: usize) -> anyhow::Result<()> {
        self.until(
            EVENT_LIMIT,
            &format!("{n} running procs"),
            |w| w.running >= n,
            |w| {
                let failed = w.failed.iter().next();
                let failed =
                    failed.map(|(i, (_, why))| format!("a proc of worker {i} failed ({why})"));
                failed.or_else(|| w.exited.iter().next().map(|i| format!("worker {i} exited")))
            },
        )
        .await
    }

    /// Tells every worker to stop and waits until `n` workers (in all) have exited.
    async fn stop_all(&mut self, n: usize) -> anyhow::Result<()> {
        self.alloc.stop_all(0);
        self.until(
            EVENT_LIMIT,
            &format!("exit of {n} workers"),
            |w| w.exited.len() >= n,
            |_| None,
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// Throughput cases

async fn throughput(certs: &CertPaths, sizes: &Sizes, r: &mut Results) -> anyhow::Result<()> {
    let link: LinkConfig = env_or(ENV_LAN_LINK, LinkConfig::lan())?;
    if link != LinkConfig::lan() {
        eprintln!("bench: loopback throughput cases with link setting {link}");
    }
    let raw = RawClient::start(certs, &link, None)
        .await
        .context("raw quinn peer")?;
    let mut w = Watch::new(bind_with(certs, "tput", link).await?);
    let index = w.alloc.launch(&worker_launcher()?, 1, 1)?[0];
    w.running(1).await?;
    // A second worker, launched after the first so its proc is rank 1, with
    // the connection and actors on one runtime thread: what the two-runtime
    // split costs a round trip, measured beside it. (With two shared threads
    // the runtime's work stealing moves tasks between them and most of the
    // gain is lost.)
    let shared_launcher = worker_launcher()?
        .env(ENV_WORKER_RUNTIME, "shared")
        .env(ENV_WORKER_THREADS, "1");
    w.alloc.launch(&shared_launcher, 1, 1)?;
    w.running(2).await?;
    let worker_pid = w.alloc.worker_pid(index).context("worker pid")?;
    let procs = w.alloc.procs();
    let (proc_id, shared_proc) = (procs[0].clone(), procs[1].clone());
    let client = w.alloc.client().clone();
    let echo = client.spawn::<Echo>(&proc_id, "echo", &()).await?;
    let shared_echo = client.spawn::<Echo>(&shared_proc, "echo", &()).await?;

    // Round trips: a warm-up each, then alternating chunks, so that every
    // path sees the same machine (a loaded 2-core box drifts within seconds).
    let mut raw_echo = raw.echo().await?;
    mesh_rtt(&client, &echo, sizes.rtt_warmup).await?;
    mesh_rtt(&client, &shared_echo, sizes.rtt_warmup).await?;
    raw_echo.rtt(sizes.rtt_warmup).await?;
    let (mut rtts, mut shared_rtts, mut raw_rtts) = (Vec::new(), Vec::new(), Vec::new());
    while rtts.len() < sizes.rtt_samples {
        let n = RTT_CHUNK.min(sizes.rtt_samples - rtts.len());
        rtts.extend(mesh_rtt(&client, &echo, n).await?);
        shared_rtts.extend(mesh_rtt(&client, &shared_echo, n).await?);
        raw_rtts.extend(raw_echo.rtt(n).await?);
    }
    raw_echo.tx.finish();
    r.figure("rtt_p50_us", Some(percentile_us(&mut rtts, 50)), 1);
    r.figure("rtt_p99_us", Some(percentile_us(&mut rtts, 99)), 1);
    r.figure(
        "rtt_shared_p50_us",
        Some(percentile_us(&mut shared_rtts, 50)),
        1,
    );
    r.figure(
        "quinn_rtt_p50_us",
        Some(percentile_us(&mut raw_rtts, 50)),
        1,
    );
    r.figure(
        "quinn_rtt_p99_us",
        Some(percentile_us(&mut raw_rtts, 99)),
        1,
    );

    // One-way messages: a warm-up of n/10, then alternating rounds of n.
    let cases = [
        (
            sizes.tells,
            SMALL,
            "tells",
            "tell_msgs_per_s",
            "quinn_msgs_per_s",
        ),
        (
            sizes.bulk,
            BULK,
            "bulk",
            "bulk_mb_per_s",
            "quinn_bulk_mb_per_s",
        ),
    ];
    for (n, size, name, mesh_name, raw_name) in cases {
        let target = (&client, &proc_id, &raw);
        one_way(target, name, n, size, ROUNDS, (mesh_name, raw_name), r).await?;
    }

    r.figure(
        "worker_peak_rss_kb",
        Some(peak_rss_kb(&worker_pid.to_string())? as f64),
        0,
    );
    raw.close();
    w.stop_all(2).await?;
    Ok(())
}

/// One-way messages to a fresh Counter on `proc_id` and to a raw count
/// stream: a warm-up of n/10 each, then `rounds` alternating rounds of `n`
/// messages of `size` bytes; records the median rate of each under `names`
/// (messages per second, or MB per second for bulk).
async fn one_way(
    (client, proc_id, raw): (&Client, &ProcId, &RawClient),
    name: &str,
    n: u64,
    size: usize,
    rounds: usize,
    names: (&str, &str),
    r: &mut Results,
) -> anyhow::Result<()> {
    let mut mesh = MeshCounter {
        actor: client.spawn::<Counter>(proc_id, name, &()).await?,
        seq: 0,
    };
    let mut raw_counter = raw.counter().await?;
    mesh.batch(client, (n / 10).max(1), size).await?;
    raw_counter.batch((n / 10).max(1), size).await?;
    let (mut mesh_secs, mut raw_secs) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        mesh_secs.push(mesh.batch(client, n, size).await?);
        raw_secs.push(raw_counter.batch(n, size).await?);
    }
    let amount = if size == SMALL {
        n as f64
    } else {
        (n * size as u64) as f64 / 1e6
    };
    let decimals = if size == SMALL { 0 } else { 2 };
    r.figure(names.0, Some(amount / median_f64(&mut mesh_secs)), decimals);
    r.figure(names.1, Some(amount / median_f64(&mut raw_secs)), decimals);
    raw_counter.tx.finish();
    Ok(())
}

// ---------------------------------------------------------------------------
// WAN cases

/// Reads `name` from the environment, or `default` when it is not set.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| anyhow!("{name}={text:?}: {e}")),
        Err(_) => Ok(default),
    }
}

/// The path of the WAN cases, both directions: 50 ms one way and 1 % loss
/// unless the environment says otherwise.
fn wan_path() -> anyhow::Result<Conditions> {
    let delay_ms: u64 = env_or(ENV_WAN_DELAY_MS, 50)?;
    let loss: f64 = env_or(ENV_WAN_LOSS, 0.01)?;
    ensure!((0.0..1.0).contains(&loss), "{ENV_WAN_LOSS} must be in 0..1");
    Ok(Conditions {
        delay: Duration::from_millis(delay_ms),
        loss,
        ..Conditions::default()
    })
}

/// An allocator using `link` with one worker (one proc) behind a relay applying `path`.
async fn wan_mesh(
    certs: &CertPaths,
    name: &str,
    link: LinkConfig,
    path: Conditions,
) -> anyhow::Result<(Watch, Relay)> {
    let mut w = Watch::new(bind_with(certs, name, link).await?);
    let relay = Relay::start(w.alloc.local_addr()).await?;
    relay.set_path(path);
    let launcher = worker_launcher()?.env(
        quicmesh::config::ENV_ALLOCATOR_ADDR,
        relay.local_addr().to_string(),
    );
    w.alloc.launch(&launcher, 1, 1)?;
    w.running(1).await?;
    Ok((w, relay))
}

/// quicmesh and bare quinn through the same relay conditions: with the
/// long-link settings (round trips, tells, bulk), then with the LAN defaults
/// (tells, bulk).
async fn wan_cases(certs: &CertPaths, sizes: &Sizes, r: &mut Results) -> anyhow::Result<()> {
    let path = wan_path()?;
    let s = sizes.wan;
    r.figure("wan_delay_ms", Some(path.delay.as_secs_f64() * 1e3), 0);
    r.figure("wan_loss_pct", Some(path.loss * 100.0), 1);
    let long_link: LinkConfig = env_or(ENV_WAN_LINK, LinkConfig::wan())?;
    if long_link != LinkConfig::wan() {
        eprintln!("bench: WAN cases with long-link setting {long_link}");
    }
    for (long, link) in [(true, long_link), (false, LinkConfig::lan())] {
        let raw = RawClient::start(certs, &link, Some(path))
            .await
            .context("raw quinn peer")?;
        let name = if long { "wan-long" } else { "wan-lan" };
        let (mut w, relay) = wan_mesh(certs, name, link, path).await?;
        let proc_id = w.alloc.procs()[0].clone();
        let client = w.alloc.client().clone();
        let target = (&client, &proc_id, &raw);
        if long {
            let echo = client.spawn::<Echo>(&proc_id, "echo", &()).await?;
            let mut raw_echo = raw.echo().await?;
            mesh_rtt(&client, &echo, 2).await?;
            raw_echo.rtt(2).await?;
            let (mut rtts, mut raw_rtts) = (Vec::new(), Vec::new());
            while rtts.len() < s.rtt_samples {
                let n = 10.min(s.rtt_samples - rtts.len());
                rtts.extend(mesh_rtt(&client, &echo, n).await?);
                raw_rtts.extend(raw_echo.rtt(n).await?);
            }
            raw_echo.tx.finish();
            let ms = |samples: &mut Vec<Duration>| Some(percentile_us(samples, 50) / 1e3);
            r.figure("wan_rtt_p50_ms", ms(&mut rtts), 1);
            r.figure("quinn_wan_rtt_p50_ms", ms(&mut raw_rtts), 1);
            let names = ("wan_tell_msgs_per_s", "quinn_wan_msgs_per_s");
            one_way(target, "tells", s.tells, SMALL, s.rounds, names, r).await?;
            let names = ("wan_bulk_mb_per_s", "quinn_wan_bulk_mb_per_s");
            one_way(target, "bulk", s.bulk, BULK, s.rounds, names, r).await?;
        } else {
            let names = ("wan_lan_tell_msgs_per_s", "quinn_wan_lan_msgs_per_s");
            one_way(target, "tells", s.lan_tells, SMALL, s.lan_rounds, names, r).await?;
            let names = ("wan_lan_bulk_mb_per_s", "quinn_wan_lan_bulk_mb_per_s");
            one_way(target, "bulk", s.lan_bulk, BULK, s.lan_rounds, names, r).await?;
        }
        let stats = relay.stats();
        eprintln!("bench: WAN relay with link {link}: {stats:?}");
        raw.close();
        w.stop_all(1).await?;
    }
    Ok(())
}

/// The table rows of the WAN cases.
fn wan_rows(r: &mut Results, long_link: &str) {
    let (delay, loss) = (r.get("wan_delay_ms"), r.get("wan_loss_pct"));
    let path = match (delay, loss) {
        (Some(d), Some(l)) => format!("{d:.0} ms each way, {l:.1} % loss"),
        _ => "WAN".into(),
    };
    let lan = "lan".to_string();
    let rows = [
        (
            "ask rtt p50",
            "wan_rtt_p50_ms",
            "quinn_wan_rtt_p50_ms",
            "wan_rtt_ratio",
            "ms",
            1,
        ),
        (
            "tell one-way 64 B",
            "wan_tell_msgs_per_s",
            "quinn_wan_msgs_per_s",
            "wan_tell_ratio",
            "msg/s",
            0,
        ),
        (
            "bulk one-way 16 KiB",
            "wan_bulk_mb_per_s",
            "quinn_wan_bulk_mb_per_s",
            "wan_bulk_ratio",
            "MB/s",
            2,
        ),
        (
            "tell one-way 64 B",
            "wan_lan_tell_msgs_per_s",
            "quinn_wan_lan_msgs_per_s",
            "",
            "msg/s",
            0,
        ),
        (
            "bulk one-way 16 KiB",
            "wan_lan_bulk_mb_per_s",
            "quinn_wan_lan_bulk_mb_per_s",
            "",
            "MB/s",
            2,
        ),
    ];
    for (i, (case, mesh, raw, ratio_name, unit, decimals)) in rows.into_iter().enumerate() {
        let link = if i < 3 { long_link } else { &lan };
        let (m, q) = (r.get(mesh), r.get(raw));
        let rt = ratio(m, q);
        if !ratio_name.is_empty() {
            r.figure(ratio_name, rt, 2);
        }
        r.row(
            &format!("{path}: {case} (link {link})"),
            fmt(m, decimals, unit),
            fmt(q, decimals, unit),
            fmt(rt, 2, ""),
            "",
        );
    }
}

async fn mesh_rtt(
    client: &Client,
    echo: &ActorRef<Echo>,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let reply: Vec<u8> = echo
            .ask(client, |port| EchoMsg::Echo(vec![0; SMALL], port))
            .await?;
        samples.push(start.elapsed());
        ensure!(reply.len() == SMALL, "echo returned {} bytes", reply.len());
    }
    Ok(samples)
}

/// A Counter actor and the next sequence number to tell it.
struct MeshCounter {
    actor: ActorRef<Counter>,
    seq: u64,
}

impl MeshCounter {
    /// Tells `count` messages of `size` bytes, then asks for a report;
    /// returns the seconds from the first tell to the report.
    async fn batch(&mut self, client: &Client, count: u64, size: usize) -> anyhow::Result<f64> {
        let start = Instant::now();
        for seq in self.seq..self.seq + count {
            self.actor
                .tell(
                    client,
                    CounterMsg::Count {
                        seq,
                        pad: vec![0; size],
                    },
                )
                .await?;
        }
        let report: CounterReport = self.actor.ask(client, CounterMsg::Report).await?;
        let secs = start.elapsed().as_secs_f64();
        self.seq += count;
        ensure!(
            report.received == self.seq && report.out_of_order == 0,
            "counter saw {report:?} after {} messages",
            self.seq
        );
        Ok(secs)
    }
}

// ---------------------------------------------------------------------------
// The raw quinn baseline

/// Frames of the raw baseline, encoded with `quicmesh::testkit::wire::codec` like quicmesh's own.
#[derive(Debug, Serialize, Deserialize)]
enum RawMsg {
    /// First frame of a stream: what the peer does with the rest.
    Hello(RawMode),
    /// A numbered payload (echoed back, or counted).
    Data {
        seq: u64,
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    },
    /// Reply with the tally (count mode).
    Report,
    /// The tally.
    Counted {
        count: u64,
        bytes: u64,
        out_of_order: u64,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum RawMode {
    Echo,
    Count,
}

/// The raw peer: serves every bidi stream of every connection until stdin closes.
fn raw_peer_main() -> anyhow::Result<()> {
    quicmesh::testkit::exit_when_stdin_closes();
    runtime()?.block_on(async {
        let dir = PathBuf::from(std::env::var(ENV_CERT_DIR).context(ENV_CERT_DIR)?);
        let link: LinkConfig = match std::env::var(ENV_RAW_LINK) {
            Ok(text) => text.parse().map_err(|e| anyhow!("{ENV_RAW_LINK}: {e}"))?,
            Err(_) => LinkConfig::lan(),
        };
        let endpoint = raw_server(&CertPaths::in_dir(&dir), &link)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", endpoint.local_addr()?.port())?;
        out.flush()?;
        drop(out);
        serve_streams(endpoint, link, "raw peer", |_, send, recv| {
            serve_raw_stream(send, recv)
        })
        .await;
        Ok(())
    })
}

/// A bare quinn server on 127.0.0.1 with the allocator's certificate.
fn raw_server(certs: &CertPaths, link: &LinkConfig) -> anyhow::Result<quinn::Endpoint> {
    let roots = quicmesh::testkit::tls::load_roots(&certs.ca_cert)?;
    let identity = quicmesh::testkit::tls::load_identity(&certs.server_cert, &certs.server_key)?;
    Ok(transport::server_endpoint(
        "127.0.0.1:0".parse()?,
        quicmesh::testkit::tls::server_config(roots, identity)?,
        &HeartbeatConfig::default(),
        &Limits::default(),
        link,
    )?)
}

/// Accepts connections on `endpoint` until it is closed, gives each the
/// stream and window limits an admitted worker with one proc gets, and runs
/// `serve` on each of their bidi streams in a task of its own. A stream's
/// error is printed (as `who`) unless its connection was closing anyway: a
/// client closes its connection when it is done.
async fn serve_streams<F, Fut>(
    endpoint: quinn::Endpoint,
    link: LinkConfig,
    who: &'static str,
    serve: F,
) where
    F: Fn(&quinn::Connection, quinn::SendStream, quinn::RecvStream) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    while let Some(incoming) = endpoint.accept().await {
        let serve = serve.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return eprintln!("{who}: handshake failed: {e}"),
            };
            transport::endpoint::open_admitted(&conn, &Limits::default(), 1, &link);
            while let Ok((send, recv)) = conn.accept_bi().await {
                let (conn, stream) = (conn.clone(), serve(&conn, send, recv));
                tokio::spawn(async move {
                    if let Err(e) = stream.await {
                        if conn.close_reason().is_none() {
                            eprintln!("{who}: stream failed: {e:#}");
                        }
                    }
                });
            }
        });
    }
}

async fn serve_raw_stream(send: quinn::SendStream, recv: quinn::RecvStream) -> anyhow::Result<()> {
    let max = Limits::default().max_frame;
    let (mut tx, mut rx) = (FramedSend::new(send, max), FramedRecv::new(recv, max));
    let mode = match rx.next::<RawMsg>().await? {
        Some(RawMsg::Hello(mode)) => mode,
        other => bail!("expected Hello, got {other:?}"),
    };
    let (mut count, mut bytes, mut next, mut out_of_order) = (0u64, 0u64, 0u64, 0u64);
    while let Some(msg) = rx.next::<RawMsg>().await? {
        match (mode, msg) {
            (RawMode::Echo, RawMsg::Data { seq, pad }) => {
                tx.send(&RawMsg::Data { seq, pad }).await?
            }
            (RawMode::Count, RawMsg::Data { seq, pad }) => {
                count += 1;
                bytes += pad.len() as u64;
                if seq != next {
                    out_of_order += 1;
                }
                next = seq + 1;
            }
            (_, RawMsg::Report) => {
                tx.send(&RawMsg::Counted {
                    count,
                    bytes,
                    out_of_order,
                })
                .await?
            }
            (_, other) => bail!("unexpected {other:?}"),
        }
    }
    tx.finish();
    Ok(())
}

/// The controller's end of the raw baseline: a connection to the raw peer
/// process, through a relay for the WAN cases.
struct RawClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _relay: Option<Relay>,
    _peer: ChildGuard,
}

impl RawClient {
    /// Starts a raw peer with `link` settings (the client uses them too),
    /// behind a relay applying `path` if given.
    async fn start(
        certs: &CertPaths,
        link: &LinkConfig,
        path: Option<Conditions>,
    ) -> anyhow::Result<RawClient> {
        let dir = certs.ca_cert.parent().context("cert dir")?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env(ENV_RAW_PEER, "1")
            .env(ENV_CERT_DIR, dir)
            .env(ENV_RAW_LINK, link.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut peer = ChildGuard::spawn(cmd)?;
        let stdout = peer.child.stdout.take().context("peer stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("raw peer did not print its port")??
            .context("raw peer exited before printing its port")?;
        let port: u16 = line.trim().parse().context("raw peer port")?;
        let mut addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let relay = match path {
            Some(path) => {
                let relay = Relay::start(addr).await?;
                relay.set_path(path);
                addr = relay.local_addr();
                Some(relay)
            }
            None => None,
        };
        let (endpoint, conn) = connect_raw(certs, addr, link).await?;
        Ok(RawClient {
            endpoint,
            conn,
            _relay: relay,
            _peer: peer,
        })
    }

    async fn echo(&self) -> anyhow::Result<RawEcho> {
        raw_echo(&self.conn).await
    }

    async fn counter(&self) -> anyhow::Result<RawCounter> {
        raw_counter(&self.conn).await
    }

    fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// A client connection to a raw peer (or a middle forwarding to one) at
/// `addr`, with the worker certificate and the receive window a welcomed
/// worker with one proc gets.
async fn connect_raw(
    certs: &CertPaths,
    addr: std::net::SocketAddr,
    link: &LinkConfig,
) -> anyhow::Result<(quinn::Endpoint, quinn::Connection)> {
    let roots = quicmesh::testkit::tls::load_roots(&certs.ca_cert)?;
    let identity = quicmesh::testkit::tls::load_identity(&certs.worker_cert, &certs.worker_key)?;
    let endpoint = transport::client_endpoint(
        quicmesh::testkit::tls::client_config(roots, identity)?,
        addr,
        &Limits::default(),
        link,
    )?;
    let conn = transport::connect(&endpoint, addr, "localhost", Duration::from_secs(10)).await?;
    transport::endpoint::fit_receive_window(
        &conn,
        Limits::default().max_procs_per_worker as usize,
        link,
    );
    Ok((endpoint, conn))
}

/// Opens a raw stream in `mode` on `conn`.
async fn raw_open(
    conn: &quinn::Connection,
    mode: RawMode,
) -> anyhow::Result<(FramedSend, FramedRecv)> {
    let (send, recv) = conn.open_bi().await?;
    let max = Limits::default().max_frame;
    let mut tx = FramedSend::new(send, max);
    tx.send(&RawMsg::Hello(mode)).await?;
    Ok((tx, FramedRecv::new(recv, max)))
}

async fn raw_echo(conn: &quinn::Connection) -> anyhow::Result<RawEcho> {
    let (tx, rx) = raw_open(conn, RawMode::Echo).await?;
    Ok(RawEcho { tx, rx, seq: 0 })
}

async fn raw_counter(conn: &quinn::Connection) -> anyhow::Result<RawCounter> {
    let (tx, rx) = raw_open(conn, RawMode::Count).await?;
    Ok(RawCounter { tx, rx, seq: 0 })
}

/// An echo stream to the raw peer and the next sequence number.
struct RawEcho {
    tx: FramedSend,
    rx: FramedRecv,
    seq: u64,
}

impl RawEcho {
    /// Round trips of `n` single 64-byte frames, one at a time.
    async fn rtt(&mut self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            self.tx
                .send(&RawMsg::Data {
                    seq: self.seq,
                    pad: vec![0; SMALL],
                })
                .await?;
            let reply = self.rx.next::<RawMsg>().await?;
            samples.push(start.elapsed());
            match reply {
                Some(RawMsg::Data { seq, pad }) if seq == self.seq && pad.len() == SMALL => {}
                other => bail!("raw echo returned {other:?}"),
            }
            self.seq += 1;
        }
        Ok(samples)
    }
}

/// A count stream to the raw peer and the next sequence number.
struct RawCounter {
    tx: FramedSend,
    rx: FramedRecv,
    seq: u64,
}

impl RawCounter {
    /// As [`MeshCounter::batch`], over a raw stream: frames are encoded into
    /// one buffer and written 64 KiB at a time (quicmesh's mailbox batch).
    async fn batch(&mut self, count: u64, size: usize) -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..count {
            self.tx.buffer(&RawMsg::Data {
                seq: self.seq,
                pad: vec![0; size],
            })?;
            self.seq += 1;
            if self.tx.buffered() >= RAW_BATCH {
                self.tx.flush().await?;
            }
        }
        self.tx.send(&RawMsg::Report).await?;
        let reply = self.rx.next::<RawMsg>().await?;
        let secs = start.elapsed().as_secs_f64();
        match reply {
            Some(RawMsg::Counted {
                count,
                out_of_order: 0,
                ..
            }) if count == self.seq => Ok(secs),
            other => bail!("raw peer reported {other:?} after {} frames", self.seq),
        }
    }
}

// ---------------------------------------------------------------------------
// Worker launch, actor spawns, failure detection, cast

/// Milliseconds from launching `n` workers x 1 proc to all procs running.
async fn spawn_workers(certs: &CertPaths, n: u32) -> anyhow::Result<f64> {
    let mut w = Watch::new(bind(certs, "launch").await?);
    let launcher = worker_launcher()?;
    let start = Instant::now();
    w.alloc.launch(&launcher, n, 1)?;
    w.running(n as usize).await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    w.stop_all(n as usize).await?;
    Ok(ms)
}

/// Remote spawns per second on a 4x2 mesh, then the time to detect a SIGKILLed
/// and a SIGSTOPped worker (milliseconds).
async fn spawns_and_detection(
    certs: &CertPaths,
    sizes: &Sizes,
) -> anyhow::Result<(Option<f64>, Option<f64>, Option<f64>)> {
    let mut w = Watch::new(bind(certs, "spawns").await?);
    let workers = w.alloc.launch(&worker_launcher()?, 4, 2)?;
    w.running(8).await?;
    let procs = w.alloc.procs();
    let client = w.alloc.client().clone();
    let start = Instant::now();
    let names: Vec<usize> = (0..sizes.actor_spawns).collect();
    for batch in names.chunks(64) {
        let spawns = batch.iter().map(|&i| {
            let (client, proc_id) = (&client, &procs[i % procs.len()]);
            async move {
                client
                    .spawn::<Echo>(proc_id, &format!("echo-{i}"), &())
                    .await
            }
        });
        for result in join_all(spawns).await {
            result?;
        }
    }
    let spawns = sizes.actor_spawns as f64 / start.elapsed().as_secs_f64();

    let kill = detect(&mut w, workers[0], libc::SIGKILL).await;
    let freeze = detect(&mut w, workers[1], libc::SIGSTOP).await;
    // The frozen worker is SIGKILLed by the allocator after its grace period;
    // the others are stopped in order.
    let stopped = w.stop_all(4).await;
    let (kill, freeze) = (kill?, freeze?);
    stopped?;
    Ok((Some(spawns), Some(kill), Some(freeze)))
}

/// Milliseconds from sending `sig` to worker `index` until the allocator reports one of its procs failed.
async fn detect(w: &mut Watch, index: u32, sig: libc::c_int) -> anyhow::Result<f64> {
    let pid = w
        .alloc
        .worker_pid(index)
        .with_context(|| format!("pid of worker {index}"))?;
    let start = Instant::now();
    signal(pid, sig)?;
    w.until(
        Duration::from_secs(15),
        &format!("failure of worker {index}"),
        |w| w.failed.contains_key(&index),
        |_| None,
    )
    .await?;
    let (seen, reason) = &w.failed[&index];
    eprintln!("bench: worker {index} (signal {sig}) reported failed: {reason}");
    Ok(seen.duration_since(start).as_secs_f64() * 1e3)
}

/// Median microseconds of: a cast to 64 Counters + a Report from each; 64 sequential tells + reports.
async fn cast_64(certs: &CertPaths, sizes: &Sizes) -> anyhow::Result<(f64, f64)> {
    let mut w = Watch::new(bind(certs, "cast").await?);
    w.alloc.launch(&worker_launcher()?, 8, 8)?;
    w.running(64).await?;
    let client = w.alloc.client().clone();
    let mesh = ProcMesh::of(&w.alloc)
        .spawn::<Counter>(&client, "cast", |_| ())
        .await?;
    ensure!(mesh.len() == 64, "mesh has {} actors", mesh.len());
    let reports = |expected: u64| {
        let client = &client;
        let mesh = &mesh;
        async move {
            let asks = mesh
                .actors()
                .iter()
                .map(|a| a.ask(client, CounterMsg::Report));
            for report in join_all(asks).await {
                let report = report?;
                ensure!(
                    report.received == expected && report.out_of_order == 0,
                    "counter saw {report:?}, expected {expected}"
                );
            }
            anyhow::Ok(())
        }
    };
    let (mut casts, mut seqs) = (Vec::new(), Vec::new());
    let mut seq = 0u64;
    let warmup = 3;
    for round in 0..warmup + sizes.cast_rounds {
        let start = Instant::now();
        let msg = CounterMsg::Count {
            seq,
            pad: vec![0; SMALL],
        };
        mesh.cast(&client, msg).await?;
        reports(seq + 1).await?;
        let cast = start.elapsed();
        seq += 1;

        let start = Instant::now();
        for a in mesh.actors() {
            let msg = CounterMsg::Count {
                seq,
                pad: vec![0; SMALL],
            };
            a.tell(&client, msg).await?;
        }
        reports(seq + 1).await?;
        let seq_tells = start.elapsed();
        seq += 1;
        if round >= warmup {
            casts.push(cast);
            seqs.push(seq_tells);
        }
    }
    w.stop_all(8).await?;
    Ok((
        median(&mut casts).as_secs_f64() * 1e6,
        median(&mut seqs).as_secs_f64() * 1e6,
    ))
}

// ---------------------------------------------------------------------------
// Workers of a frozen allocator

/// The allocator child: launches 2 workers, prints their pids and "ready", waits.
fn alloc_child_main() -> anyhow::Result<()> {
    quicmesh::testkit::exit_when_stdin_closes();
    runtime()?.block_on(async {
        let dir = PathBuf::from(std::env::var(ENV_CERT_DIR).context(ENV_CERT_DIR)?);
        let mut w = Watch::new(bind(&CertPaths::in_dir(&dir), "frozen").await?);
        let workers = w.alloc.launch(&worker_launcher()?, 2, 1)?;
        w.running(2).await?;
        let mut out = std::io::stdout().lock();
        for index in workers {
            let pid = w.alloc.worker_pid(index).context("worker pid")?;
            writeln!(out, "bench-pid {pid}")?;
        }
        writeln!(out, "bench-ready")?;
        out.flush()?;
        drop(out);
        // Keep the allocator alive until killed.
        while w.events.next().await.is_some() {}
        std::future::pending::<anyhow::Result<()>>().await
    })
}

/// Milliseconds from SIGSTOPping an allocator child until both its workers are gone.
async fn exit_after_allocator_freeze(cert_dir: &Path) -> anyhow::Result<f64> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env(ENV_ALLOC_CHILD, "1")
        .env(ENV_CERT_DIR, cert_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    let mut child = ChildGuard::spawn(cmd)?;
    let child_pid = child.child.id().context("allocator child pid")?;
    let stdout = child.child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut pids = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(pid) = line.strip_prefix("bench-pid ") {
                pids.push(pid.trim().parse::<u32>()?);
            } else if line == "bench-ready" {
                return anyhow::Ok(());
            }
        }
        bail!("allocator child exited before it was ready")
    };
    tokio::time::timeout(EVENT_LIMIT, read)
        .await
        .context("allocator child not ready in time")??;
    ensure!(pids.len() == 2, "allocator child reported {pids:?}");

    let start = Instant::now();
    signal(child_pid, libc::SIGSTOP)?;
    let result = loop {
        if pids.iter().all(|&p| process_gone(p)) {
            break Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        if start.elapsed() > Duration::from_secs(20) {
            for &p in &pids {
                let _ = signal(p, libc::SIGKILL);
            }
            break Err(anyhow!(
                "workers {pids:?} still alive 20 s after the allocator froze"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    signal(child_pid, libc::SIGKILL)?;
    tokio::time::timeout(Duration::from_secs(10), child.child.wait())
        .await
        .context("allocator child not reaped")??;
    result
}

// ---------------------------------------------------------------------------
// Processes

/// A child process, killed when dropped.
struct ChildGuard {
    child: tokio::process::Child,
}

impl ChildGuard {
    fn spawn(mut cmd: tokio::process::Command) -> anyhow::Result<ChildGuard> {
        cmd.kill_on_drop(true);
        Ok(ChildGuard {
            child: cmd.spawn().context("spawn child process")?,
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    ensure!(
        rc == 0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Whether `pid` has ended: gone, or a zombie nobody reaped yet.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z') | Some('X'))
        }
    }
}

/// VmHWM of `/proc/<who>/status` in kB (`who` is a pid or "self").
fn peak_rss_kb(who: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("quicmesh-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
