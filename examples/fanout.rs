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
use quicmesh::allocator::{Allocator, AllocatorConfig, ExitReport, Launcher};
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

    // Wait until every proc runs (fails early if a proc fails or a worker exits),
    // then compute; whatever happened, stop the workers and collect their exits.
    let outcome = match alloc.wait_running(START_TIMEOUT).await {
        Ok(()) => map_reduce(&alloc).await,
        Err(e) => Err(e.into()),
    };
    let exits = alloc.stop_and_wait(0, STOP_TIMEOUT).await;
    let clean = exits
        .iter()
        .filter(|(_, s)| *s == ExitReport::Code(0))
        .count();

    let sum = outcome?;
    println!("fanout: {PROCS} procs, sum of squares = {sum} (checked)");
    println!("fanout: stopped, {clean}/{WORKERS} workers exited 0");
    ensure!(
        clean == WORKERS as usize,
        "workers did not all exit 0: {exits:?}"
    );
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
