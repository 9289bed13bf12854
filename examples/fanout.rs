//! Fan-out / fan-in (map-reduce): the sum of the squares of 0..1_000_000,
//! computed by one `Mapper` actor on every proc of a 3 x 2 mesh.
//!
//! ```sh
//! cargo run --example fanout
//! ```
//!
//! The same binary is the controller and the workers: the allocator re-runs
//! it with the worker environment, and `bootstrap_or_die` turns that process
//! into a worker. The controller spawns a `Mapper` on every proc, sends each
//! one chunk of the numbers, asks all of them at once, adds up the partial
//! sums and checks the total against the closed form.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure};
use futures::future::join_all;
use quicmesh::allocator::{
    AllocEvent, Allocator, AllocatorConfig, ExitReport, Launcher, ProcState,
};
use quicmesh::{Actor, Context, PortRef, ProcMesh, Registry};
use serde::{Deserialize, Serialize};

const WORKERS: u32 = 3;
const PROCS_PER_WORKER: u32 = 2;
const PROCS: usize = (WORKERS * PROCS_PER_WORKER) as usize;
const N: u64 = 1_000_000;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Maps a chunk of numbers to the sum of their squares.
struct Mapper;

/// A chunk to map; the partial sum goes to `reply`.
#[derive(Serialize, Deserialize)]
struct MapMsg {
    chunk: Vec<u64>,
    reply: PortRef<u128>,
}

impl Actor for Mapper {
    const NAME: &'static str = "mapper";
    type Message = MapMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Mapper)
    }

    async fn handle(&mut self, msg: MapMsg, ctx: &Context) -> anyhow::Result<()> {
        // u128: the squares of large u64s overflow u64.
        let sum: u128 = msg
            .chunk
            .iter()
            .map(|&x| u128::from(x) * u128::from(x))
            .sum();
        msg.reply.send(ctx.client(), sum).await?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let registry = Registry::new().with::<Mapper>();
    // In a worker process this runs the worker and exits; here it returns.
    quicmesh::bootstrap_or_die(&registry);
    quicmesh::logging::init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(controller())
}

async fn controller() -> anyhow::Result<()> {
    let certs = quicmesh::tls::ensure_dev_certs(Path::new("certs"))?;
    let mut alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
    alloc.launch(&Launcher::current_exe()?, WORKERS, PROCS_PER_WORKER)?;

    let mut tally = Tally::default();
    // Wait until every proc runs; give up early if anything fails or exits.
    wait_until(&mut alloc, &mut tally, START_TIMEOUT, |t| {
        t.running == PROCS || !t.problems.is_empty() || t.exited > 0
    })
    .await;
    let outcome = if tally.running == PROCS {
        map_reduce(&alloc).await
    } else {
        Err(anyhow!("only {} of {PROCS} procs running", tally.running))
    };
    if let Ok(sum) = &outcome {
        println!("fanout: {PROCS} procs, sum of squares = {sum} (checked)");
    }

    // Always stop the workers, even after a failure, and wait for their exits.
    alloc.stop_all(0);
    wait_until(&mut alloc, &mut tally, STOP_TIMEOUT, |t| {
        t.exited == WORKERS as usize
    })
    .await;
    println!(
        "fanout: stopped, {}/{WORKERS} workers exited 0",
        tally.exited_ok
    );

    let mut problems = tally.problems;
    if let Err(e) = outcome {
        problems.insert(0, format!("{e:#}"));
    }
    if tally.exited < WORKERS as usize {
        problems.push(format!("only {} of {WORKERS} workers exited", tally.exited));
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// Fans the chunks out to one mapper per proc, fans the partial sums in, checks the total.
async fn map_reduce(alloc: &Allocator) -> anyhow::Result<u128> {
    let client = alloc.client();
    let mappers = ProcMesh::of(alloc)
        .spawn::<Mapper>(client, "mapper", |_rank| ())
        .await?;

    let numbers: Vec<u64> = (0..N).collect();
    let chunk_len = numbers.len().div_ceil(mappers.len());
    // One ask per mapper, all in flight at once; each carries its own reply port.
    let asks = mappers
        .actors()
        .iter()
        .zip(numbers.chunks(chunk_len))
        .map(|(mapper, chunk)| {
            mapper.ask(client, |reply| MapMsg {
                chunk: chunk.to_vec(),
                reply,
            })
        });
    let mut total: u128 = 0;
    for (rank, partial) in join_all(asks).await.into_iter().enumerate() {
        total += partial.map_err(|e| anyhow!("mapper {rank}: {e}"))?;
    }

    // Sum of k^2 for k in 0..N is (N-1) N (2N-1) / 6.
    let n = u128::from(N);
    let expected = (n - 1) * n * (2 * n - 1) / 6;
    if total != expected {
        bail!("sum of squares is {total}, expected {expected}");
    }
    Ok(total)
}

/// What the allocator has reported so far.
#[derive(Default)]
struct Tally {
    running: usize,
    exited: usize,
    exited_ok: usize,
    problems: Vec<String>,
}

impl Tally {
    fn record(&mut self, event: AllocEvent) {
        match &event {
            AllocEvent::Proc {
                state: ProcState::Running,
                ..
            } => self.running += 1,
            AllocEvent::Proc {
                state: ProcState::Failed { .. },
                ..
            }
            | AllocEvent::ActorFailed { .. } => self.problems.push(event.to_string()),
            AllocEvent::WorkerExited { status, .. } => {
                self.exited += 1;
                if *status == ExitReport::Code(0) {
                    self.exited_ok += 1;
                } else {
                    self.problems.push(event.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Records events until `done` holds, `limit` has passed or the allocator shut down.
async fn wait_until(
    alloc: &mut Allocator,
    tally: &mut Tally,
    limit: Duration,
    done: impl Fn(&Tally) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done(tally) {
        match tokio::time::timeout_at(deadline, alloc.next_event()).await {
            Ok(Some(event)) => tally.record(event),
            _ => return,
        }
    }
}
