//! Ping-pong between two actors on two worker processes, timing each round trip.
//!
//! ```sh
//! cargo run --example ping_pong -- 1000   # number of round trips (default 1000)
//! ```
//!
//! The same binary is the controller and the workers: the allocator re-runs
//! it with the worker environment, and `bootstrap_or_die` turns that process
//! into a worker. The controller launches 2 workers with 1 proc each, spawns
//! `Pong` on proc 1 and `Ping` (holding a reference to `Pong`) on proc 0, then
//! asks `Ping` to play N rounds. `Ping` times each ask to `Pong` and replies
//! with the round-trip times, of which the controller prints p50 and p99.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use quicmesh::allocator::{Allocator, AllocatorConfig, ExitReport, Launcher};
use quicmesh::{Actor, ActorRef, Context, PortRef, Registry};
use serde::{Deserialize, Serialize};

const WORKERS: u32 = 2;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers every ping with its sequence number.
struct Pong;

/// A ping: `Pong` sends `seq` back to `reply`.
#[derive(Serialize, Deserialize)]
struct PongMsg {
    seq: u32,
    reply: PortRef<u32>,
}

impl Actor for Pong {
    const NAME: &'static str = "pong";
    type Message = PongMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Pong)
    }

    async fn handle(&mut self, msg: PongMsg, ctx: &Context) -> anyhow::Result<()> {
        msg.reply.send(ctx.client(), msg.seq).await?;
        Ok(())
    }
}

/// Plays rounds against the `Pong` it was created with.
struct Ping {
    pong: ActorRef<Pong>,
}

/// Play `rounds` round trips, then send the round-trip times to `reply`.
#[derive(Serialize, Deserialize)]
struct PingMsg {
    rounds: u32,
    reply: PortRef<Vec<Duration>>,
}

impl Actor for Ping {
    const NAME: &'static str = "ping";
    type Message = PingMsg;
    // Refs are serializable, so the peer can be handed over at spawn time.
    type Params = ActorRef<Pong>;

    fn new(pong: ActorRef<Pong>) -> anyhow::Result<Self> {
        Ok(Ping { pong })
    }

    async fn handle(&mut self, msg: PingMsg, ctx: &Context) -> anyhow::Result<()> {
        let mut rtts = Vec::with_capacity(msg.rounds as usize);
        for seq in 0..msg.rounds {
            let start = Instant::now();
            let echoed = self
                .pong
                .ask(ctx.client(), |reply| PongMsg { seq, reply })
                .await?;
            rtts.push(start.elapsed());
            // An error here fails this actor, which fails the controller's ask at once.
            ensure!(echoed == seq, "pong answered {echoed} to ping {seq}");
        }
        msg.reply.send(ctx.client(), rtts).await?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let registry = Registry::new().with::<Ping>().with::<Pong>();
    // In a worker process this runs the worker and exits; here it returns.
    quicmesh::bootstrap_or_die(&registry);
    quicmesh::logging::init();
    let rounds: u32 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("bad round count {arg:?}"))?,
        None => 1000,
    };
    ensure!(rounds > 0, "need at least one round trip");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(controller(rounds))
}

async fn controller(rounds: u32) -> anyhow::Result<()> {
    let certs = quicmesh::tls::ensure_dev_certs(Path::new("certs"))?;
    let mut alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
    alloc.launch(&Launcher::current_exe()?, WORKERS, 1)?;

    // Wait until every proc runs (fails early if a proc fails or a worker exits),
    // then play; whatever happened, stop the workers and collect their exits.
    let outcome = match alloc.wait_running(START_TIMEOUT).await {
        Ok(()) => play(&alloc, rounds).await,
        Err(e) => Err(e.into()),
    };
    let exits = alloc.stop_and_wait(0, STOP_TIMEOUT).await;
    let clean = exits
        .iter()
        .filter(|(_, s)| *s == ExitReport::Code(0))
        .count();
    println!("ping_pong: stopped, {clean}/{WORKERS} workers exited 0");

    let mut rtts = outcome?;
    ensure!(
        clean == WORKERS as usize,
        "workers did not all exit 0: {exits:?}"
    );
    rtts.sort();
    println!(
        "ping_pong: {} round trips, p50 = {:.1} us, p99 = {:.1} us",
        rtts.len(),
        percentile(&rtts, 50).as_secs_f64() * 1e6,
        percentile(&rtts, 99).as_secs_f64() * 1e6,
    );
    Ok(())
}

/// Spawns the pair (Pong first: Ping's parameters refer to it) and plays.
async fn play(alloc: &Allocator, rounds: u32) -> anyhow::Result<Vec<Duration>> {
    let client = alloc.client();
    let procs = alloc.procs(); // by rank: proc 0 is on worker 0, proc 1 on worker 1
    let pong = client.spawn::<Pong>(&procs[1], "pong", &()).await?;
    let ping = client.spawn::<Ping>(&procs[0], "ping", &pong).await?;
    // The default ask timeout (30 s) is for one reply; allow for many rounds.
    let timeout = Duration::from_secs(30) + Duration::from_millis(rounds.into());
    let rtts = ping
        .ask_within(client, timeout, |reply| PingMsg { rounds, reply })
        .await
        .context("ping failed")?;
    Ok(rtts)
}

/// The nearest-rank percentile `pct` (1..=100) of sorted, non-empty `values`.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    sorted[(sorted.len() * pct).div_ceil(100).max(1) - 1]
}
