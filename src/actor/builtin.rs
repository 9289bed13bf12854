//! Actor types built into the `quicmesh` binary, for the demo, tests and benchmarks.
//!
//! [`registry`] returns them all; `quicmesh worker` can spawn any of them.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Actor, ActorRef, Context, PortRef, Registry};

/// Every built-in actor type.
pub fn registry() -> Registry {
    Registry::new()
        .with::<Echo>()
        .with::<Counter>()
        .with::<Sleeper>()
        .with::<Faulty>()
        .with::<RingNode>()
        .with::<Recorder>()
        .with::<StopProbe>()
        .with::<Pump>()
        .with::<Spinner>()
        .with::<StuckStop>()
        .with::<Fragile>()
}

/// Replies with what it is sent.
pub struct Echo;

/// Messages of [`Echo`].
#[derive(Debug, Serialize, Deserialize)]
pub enum EchoMsg {
    /// Reply with the same bytes.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>, PortRef<Vec<u8>>),
    /// Forward the bytes to another echo actor, then reply with its answer.
    Relay(
        #[serde(with = "serde_bytes")] Vec<u8>,
        ActorRef<Echo>,
        PortRef<Vec<u8>>,
    ),
    /// Reply with the same bytes after `ms` milliseconds (an ask that stays open a while).
    After(
        u64,
        #[serde(with = "serde_bytes")] Vec<u8>,
        PortRef<Vec<u8>>,
    ),
}

impl Actor for Echo {
    const NAME: &'static str = "echo";
    type Message = EchoMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Echo)
    }

    async fn handle(&mut self, msg: EchoMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            EchoMsg::Echo(bytes, reply) => reply.send(ctx.client(), bytes).await?,
            EchoMsg::Relay(bytes, other, reply) => {
                let answer = other
                    .ask(ctx.client(), |port| EchoMsg::Echo(bytes, port))
                    .await?;
                reply.send(ctx.client(), answer).await?;
            }
            EchoMsg::After(ms, bytes, reply) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.send(ctx.client(), bytes).await?;
            }
        }
        Ok(())
    }
}

/// Tells a [`Counter`] numbered messages in order: proc-to-proc traffic
/// that starts on a worker, for isolation tests.
#[derive(Default)]
pub struct Pump {
    returned: u64,
}

/// Messages of [`Pump`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PumpMsg {
    /// Tell `to` the numbers `from..from + n` (each padded with `pad` bytes),
    /// waiting while the path is full, then reply with how many were sent.
    Run {
        /// The counter to tell.
        to: ActorRef<Counter>,
        /// First number.
        from: u64,
        /// How many.
        n: u64,
        /// Padding bytes per message.
        pad: usize,
        /// Gets the count once every message was handed over.
        done: PortRef<u64>,
    },
    /// Reply with how many of this pump's messages came back undeliverable.
    Returned(PortRef<u64>),
}

impl Actor for Pump {
    const NAME: &'static str = "pump";
    type Message = PumpMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Pump::default())
    }

    async fn handle(&mut self, msg: PumpMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            PumpMsg::Run {
                to,
                from,
                n,
                pad,
                done,
            } => {
                for seq in from..from + n {
                    let pad = vec![0; pad];
                    to.tell(ctx.client(), CounterMsg::Count { seq, pad })
                        .await?;
                }
                done.send(ctx.client(), n).await?;
            }
            PumpMsg::Returned(port) => port.send(ctx.client(), self.returned).await?,
        }
        Ok(())
    }

    async fn on_undeliverable(&mut self, _: crate::wire::Undeliverable, _: &Context) {
        self.returned += 1;
    }
}

/// Counts numbered messages and checks they arrive in order, once each.
#[derive(Default)]
pub struct Counter {
    next: u64,
    received: u64,
    out_of_order: u64,
    bytes: u64,
}

/// Messages of [`Counter`].
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterMsg {
    /// The `seq`-th message of the sender (from 0); `pad` is ignored.
    Count {
        /// Sequence number.
        seq: u64,
        /// Payload to make the message bigger.
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    },
    /// Reply with the tally so far.
    Report(PortRef<CounterReport>),
}

/// What a [`Counter`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReport {
    /// Messages received.
    pub received: u64,
    /// Messages whose sequence number was not the next expected one.
    pub out_of_order: u64,
    /// Next expected sequence number.
    pub next: u64,
    /// Payload bytes received.
    pub bytes: u64,
}

impl Actor for Counter {
    const NAME: &'static str = "counter";
    type Message = CounterMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Counter::default())
    }

    async fn handle(&mut self, msg: CounterMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            CounterMsg::Count { seq, pad } => {
                self.received += 1;
                self.bytes += pad.len() as u64;
                if seq != self.next {
                    self.out_of_order += 1;
                }
                self.next = seq + 1;
            }
            CounterMsg::Report(port) => {
                let report = CounterReport {
                    received: self.received,
                    out_of_order: self.out_of_order,
                    next: self.next,
                    bytes: self.bytes,
                };
                port.send(ctx.client(), report).await?;
            }
        }
        Ok(())
    }
}

/// Takes its time over each message: for isolation and backpressure tests.
pub struct Sleeper;

/// Messages of [`Sleeper`].
#[derive(Debug, Serialize, Deserialize)]
pub enum SleeperMsg {
    /// Block this actor for `ms` milliseconds (async sleep), then reply.
    Sleep {
        /// Milliseconds.
        ms: u64,
        /// Optional reply port.
        reply: Option<PortRef<()>>,
    },
    /// Padding to fill the mailbox; takes `ms` milliseconds each.
    Fill {
        /// Milliseconds per message.
        ms: u64,
        /// Payload.
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    },
}

impl Actor for Sleeper {
    const NAME: &'static str = "sleeper";
    type Message = SleeperMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Sleeper)
    }

    async fn handle(&mut self, msg: SleeperMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            SleeperMsg::Sleep { ms, reply } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if let Some(reply) = reply {
                    reply.send(ctx.client(), ()).await?;
                }
            }
            SleeperMsg::Fill { ms, .. } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        Ok(())
    }
}

/// Fails on command: for failure-reporting tests.
pub struct Faulty;

/// Messages of [`Faulty`].
#[derive(Debug, Serialize, Deserialize)]
pub enum FaultyMsg {
    /// Panic with this message.
    Panic(String),
    /// Return an error with this message.
    Fail(String),
    /// Reply `()` (proves it is alive).
    Ping(PortRef<()>),
}

impl Actor for Faulty {
    const NAME: &'static str = "faulty";
    type Message = FaultyMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Faulty)
    }

    async fn handle(&mut self, msg: FaultyMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            FaultyMsg::Panic(why) => panic!("{why}"),
            FaultyMsg::Fail(why) => Err(anyhow::anyhow!(why)),
            FaultyMsg::Ping(port) => Ok(port.send(ctx.client(), ()).await?),
        }
    }
}

/// One node of a ring: passes a token to the next node, adding its rank.
pub struct RingNode {
    rank: u32,
    next: Option<ActorRef<RingNode>>,
}

/// Messages of [`RingNode`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RingMsg {
    /// Set the next node of the ring.
    Link(ActorRef<RingNode>, PortRef<()>),
    /// The token: `hops` left to go; `sum` of ranks seen; `done` gets the final sum.
    Token {
        /// Hops still to make.
        hops: u32,
        /// Sum of the ranks of the nodes visited.
        sum: u64,
        /// Where the final sum goes.
        done: PortRef<u64>,
    },
}

impl Actor for RingNode {
    const NAME: &'static str = "ring";
    type Message = RingMsg;
    type Params = u32;

    fn new(rank: u32) -> anyhow::Result<Self> {
        Ok(RingNode { rank, next: None })
    }

    async fn handle(&mut self, msg: RingMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            RingMsg::Link(next, ack) => {
                self.next = Some(next);
                ack.send(ctx.client(), ()).await?;
            }
            RingMsg::Token { hops, sum, done } => {
                let sum = sum + u64::from(self.rank);
                if hops == 0 {
                    done.send(ctx.client(), sum).await?;
                } else {
                    let next = self
                        .next
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("ring node {} not linked", self.rank))?;
                    next.tell(
                        ctx.client(),
                        RingMsg::Token {
                            hops: hops - 1,
                            sum,
                            done,
                        },
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// Keeps every line it is told, and reports them: a sink for notifications.
#[derive(Default)]
pub struct Recorder {
    lines: Vec<String>,
}

/// Messages of [`Recorder`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RecorderMsg {
    /// Keep this line.
    Record(String),
    /// Reply with every line kept so far.
    Report(PortRef<Vec<String>>),
}

impl Actor for Recorder {
    const NAME: &'static str = "recorder";
    type Message = RecorderMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Recorder::default())
    }

    async fn handle(&mut self, msg: RecorderMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            RecorderMsg::Record(line) => self.lines.push(line),
            RecorderMsg::Report(port) => port.send(ctx.client(), self.lines.clone()).await?,
        }
        Ok(())
    }
}

/// Tells a [`Recorder`] when its start and stop hooks run.
pub struct StopProbe {
    recorder: ActorRef<Recorder>,
}

impl Actor for StopProbe {
    const NAME: &'static str = "stop-probe";
    type Message = ();
    type Params = ActorRef<Recorder>;

    fn new(recorder: ActorRef<Recorder>) -> anyhow::Result<Self> {
        Ok(StopProbe { recorder })
    }

    async fn on_start(&mut self, ctx: &Context) -> anyhow::Result<()> {
        let line = format!("{} started", ctx.id());
        Ok(self
            .recorder
            .tell(ctx.client(), RecorderMsg::Record(line))
            .await?)
    }

    async fn handle(&mut self, _: (), _ctx: &Context) -> anyhow::Result<()> {
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &Context) {
        let line = format!("{} stopped", ctx.id());
        if let Err(e) = self
            .recorder
            .tell(ctx.client(), RecorderMsg::Record(line))
            .await
        {
            tracing::warn!("{}: cannot report stop: {e}", ctx.id());
        }
    }
}

/// Takes its thread and never gives it back: for liveness tests.
///
/// Tokio cannot abort a task that never yields, so such an actor can only
/// end with its process; the runtime must still heartbeat, stop its other
/// actors and exit on time.
pub struct Spinner;

/// Messages of [`Spinner`].
#[derive(Debug, Serialize, Deserialize)]
pub enum SpinnerMsg {
    /// Reply `()` (proves it is alive and the proc delivers).
    Ping(PortRef<()>),
    /// Reply `()` if given a port, then busy-loop forever without yielding.
    Spin(Option<PortRef<()>>),
    /// Reply `()` if given a port, then block the thread forever in
    /// `std::thread::sleep` (no CPU used).
    BlockThread(Option<PortRef<()>>),
}

impl Actor for Spinner {
    const NAME: &'static str = "spinner";
    type Message = SpinnerMsg;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(Spinner)
    }

    async fn handle(&mut self, msg: SpinnerMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            SpinnerMsg::Ping(port) => Ok(port.send(ctx.client(), ()).await?),
            SpinnerMsg::Spin(port) => {
                if let Some(port) = port {
                    port.send(ctx.client(), ()).await?;
                }
                tracing::info!("{}: spinning forever", ctx.id());
                loop {
                    std::hint::spin_loop();
                }
            }
            SpinnerMsg::BlockThread(port) => {
                if let Some(port) = port {
                    port.send(ctx.client(), ()).await?;
                }
                tracing::info!("{}: blocking its thread forever", ctx.id());
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// An actor whose stop hook never returns (it waits forever, yielding).
pub struct StuckStop;

impl Actor for StuckStop {
    const NAME: &'static str = "stuck-stop";
    /// A port to answer: proves it is alive.
    type Message = PortRef<()>;
    type Params = ();

    fn new(_: ()) -> anyhow::Result<Self> {
        Ok(StuckStop)
    }

    async fn handle(&mut self, port: PortRef<()>, ctx: &Context) -> anyhow::Result<()> {
        Ok(port.send(ctx.client(), ()).await?)
    }

    async fn on_stop(&mut self, ctx: &Context) {
        tracing::info!("{}: stop hook waits forever", ctx.id());
        std::future::pending::<()>().await
    }
}

/// A value whose decoding panics when it is armed: a user `Deserialize` gone wrong.
///
/// It travels as a `bool`; `Tripwire(true)` encodes fine and panics when decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripwire(pub bool);

impl Serialize for Tripwire {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tripwire {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? {
            panic!("tripwire decoded");
        }
        Ok(Tripwire(false))
    }
}

/// Panics where it is told to: in its constructor, or while its parameters
/// or a message are decoded. For panic-containment tests.
pub struct Fragile;

/// Parameters of [`Fragile`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FragileParams {
    /// Armed: decoding these parameters panics.
    pub decode: Tripwire,
    /// `Some(text)`: the constructor panics with this text.
    pub panic_in_new: Option<String>,
}

/// Messages of [`Fragile`].
#[derive(Debug, Serialize, Deserialize)]
pub enum FragileMsg {
    /// Reply `()` (proves it is alive).
    Ping(PortRef<()>),
    /// Reply `()`; decoding this message panics if the tripwire is armed.
    Trip(Tripwire, PortRef<()>),
}

impl Actor for Fragile {
    const NAME: &'static str = "fragile";
    type Message = FragileMsg;
    type Params = FragileParams;

    fn new(params: FragileParams) -> anyhow::Result<Self> {
        if let Some(why) = params.panic_in_new {
            panic!("{why}");
        }
        Ok(Fragile)
    }

    async fn handle(&mut self, msg: FragileMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            FragileMsg::Ping(port) | FragileMsg::Trip(_, port) => {
                Ok(port.send(ctx.client(), ()).await?)
            }
        }
    }
}
