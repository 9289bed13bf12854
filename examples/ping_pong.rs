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

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use quicmesh::allocator::{Allocator, AllocatorConfig, Launcher};
use quicmesh::{Actor, ActorRef, Context, PortRef, Registry, Spawn};
use serde::{Deserialize, Serialize};

const WORKERS: u32 = 2;

/// Answers every ping with its sequence number.
#[derive(Default)]
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

    async fn handle(&mut self, msg: PongMsg, ctx: &Context) -> anyhow::Result<()> {
        Ok(msg.reply.send(ctx, msg.seq).await?)
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

    async fn handle(&mut self, msg: PingMsg, ctx: &Context) -> anyhow::Result<()> {
        let mut rtts = Vec::with_capacity(msg.rounds as usize);
        for seq in 0..msg.rounds {
            let start = Instant::now();
            let echoed = self.pong.ask(ctx, |reply| PongMsg { seq, reply }).await?;
            rtts.push(start.elapsed());
            // An error here fails this actor, which fails the controller's ask at once.
            ensure!(echoed == seq, "pong answered {echoed} to ping {seq}");
        }
        Ok(msg.reply.send(ctx, rtts).await?)
    }
}

/// `Ping` needs parameters: refs are serializable, so its peer is handed over at spawn time.
impl Spawn for Ping {
    type Params = ActorRef<Pong>;

    fn new(pong: ActorRef<Pong>) -> anyhow::Result<Self> {
        Ok(Ping { pong })
    }
}

fn main() -> anyhow::Result<()> {
    let registry = Registry::new().with::<Ping>()?.with::<Pong>()?;
    // In a worker process this runs the worker and exits; here it returns.
    quicmesh::bootstrap_or_die(&registry);
    quicmesh::init_logging();
    let rounds: u32 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("bad round count {arg:?}"))?,
        None => 1000,
    };
    ensure!(rounds > 0, "need at least one round trip");
    tokio::runtime::Runtime::new()?.block_on(controller(rounds))
}

async fn controller(rounds: u32) -> anyhow::Result<()> {
    let certs = quicmesh::tls::ensure_dev_certs("certs")?;
    let alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
    alloc.launch(&Launcher::current_exe()?, WORKERS, 1)?;

    // Whatever happened while playing, stop the workers and collect their exits.
    let outcome = play(&alloc, rounds).await;
    let exits = alloc.stop_and_wait(0, Duration::from_secs(30)).await;
    let clean = exits.iter().filter(|(_, s)| s.is_success()).count();
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

/// Waits for both procs, spawns the pair (Pong first: Ping's parameters refer to it) and plays.
async fn play(alloc: &Allocator, rounds: u32) -> anyhow::Result<Vec<Duration>> {
    // Fails early if a proc fails or a worker exits.
    alloc.wait_running(Duration::from_secs(60)).await?;
    let client = alloc.client();
    let procs = alloc.procs(); // by rank: proc 0 is on worker 0, proc 1 on worker 1
    let pong = client.spawn::<Pong>(&procs[1], "pong", &()).await?;
    let ping = client.spawn::<Ping>(&procs[0], "ping", &pong).await?;
    // The default ask timeout (30 s) is for one reply; allow for many rounds.
    let timeout = Duration::from_secs(30) + Duration::from_millis(rounds.into());
    ping.ask_within(client, timeout, |reply| PingMsg { rounds, reply })
        .await
        .context("ping failed")
}

/// The nearest-rank percentile `pct` (1..=100) of `sorted`, which is not empty.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    sorted[(sorted.len() * pct).div_ceil(100).max(1) - 1]
}
