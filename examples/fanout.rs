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

use std::time::Duration;

use anyhow::{ensure, Context as _};
use futures::future::try_join_all;
use quicmesh::allocator::{Allocator, AllocatorConfig, Launcher};
use quicmesh::{Actor, Context, PortRef, ProcMesh, Registry};
use serde::{Deserialize, Serialize};

const WORKERS: u32 = 3;
const PROCS_PER_WORKER: u32 = 2;
const N: u64 = 1_000_000;

/// Maps a chunk of numbers to the sum of their squares.
#[derive(Default)]
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

    async fn handle(&mut self, msg: MapMsg, ctx: &Context) -> anyhow::Result<()> {
        // u128: the squares of large u64s overflow u64.
        let sum: u128 = msg
            .chunk
            .iter()
            .map(|&x| u128::from(x) * u128::from(x))
            .sum();
        Ok(msg.reply.send(ctx, sum).await?)
    }
}

fn main() -> anyhow::Result<()> {
    let registry = Registry::new().with::<Mapper>()?;
    // In a worker process this runs the worker and exits; here it returns.
    quicmesh::bootstrap_or_die(&registry);
    quicmesh::init_logging();
    tokio::runtime::Runtime::new()?.block_on(controller())
}

async fn controller() -> anyhow::Result<()> {
    let certs = quicmesh::tls::ensure_dev_certs("certs")?;
    let alloc = Allocator::bind(AllocatorConfig::new(&certs)).await?;
    alloc.launch(&Launcher::current_exe()?, WORKERS, PROCS_PER_WORKER)?;

    // Whatever happened while computing, stop the workers and collect their exits.
    let outcome = map_reduce(&alloc).await;
    let exits = alloc.stop_and_wait(0, Duration::from_secs(30)).await;
    let clean = exits.iter().filter(|(_, s)| s.is_success()).count();

    let sum = outcome?;
    let procs = WORKERS * PROCS_PER_WORKER;
    println!("fanout: {procs} procs, sum of squares = {sum} (checked)");
    println!("fanout: stopped, {clean}/{WORKERS} workers exited 0");
    ensure!(
        clean == WORKERS as usize,
        "workers did not all exit 0: {exits:?}"
    );
    Ok(())
}

/// Fans the chunks out to one mapper per proc, fans the partial sums in, checks the total.
async fn map_reduce(alloc: &Allocator) -> anyhow::Result<u128> {
    // Fails early if a proc fails or a worker exits.
    alloc.wait_running(Duration::from_secs(60)).await?;
    let client = alloc.client();
    let mappers = ProcMesh::of(alloc)
        .spawn::<Mapper>(client, "mapper", |_rank| ())
        .await?;

    let numbers: Vec<u64> = (0..N).collect();
    let chunks = numbers.chunks(numbers.len().div_ceil(mappers.len()));
    // One ask per mapper, all in flight at once; each carries its own reply port.
    let asks = mappers.actors().iter().zip(chunks).map(|(mapper, chunk)| {
        mapper.ask(client, |reply| MapMsg {
            chunk: chunk.to_vec(),
            reply,
        })
    });
    let partials = try_join_all(asks)
        .await
        .context("a mapper did not answer")?;
    let total: u128 = partials.into_iter().sum();

    // Sum of k^2 for k in 0..N is (N-1) N (2N-1) / 6.
    let n = u128::from(N);
    let expected = (n - 1) * n * (2 * n - 1) / 6;
    ensure!(
        total == expected,
        "sum of squares is {total}, expected {expected}"
    );
    Ok(total)
}
