//! Actors for the project's own tests and benchmarks: they sleep, fail,
//! spin, panic and record on command. Built only for tests and with the
//! `testkit` feature.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::builtin::{Counter, CounterMsg};
use super::{Actor, ActorRef, Context, DuplicateActorType, PortRef, Registry, Returned, Spawn};

/// Adds every test actor type to `registry`.
pub fn register(registry: Registry) -> Result<Registry, DuplicateActorType> {
    registry
        .with::<Sleeper>()?
        .with::<Faulty>()?
        .with::<Recorder>()?
        .with::<StopProbe>()?
        .with::<Pump>()?
        .with::<Spinner>()?
        .with::<StuckStop>()?
        .with::<Fragile>()?
        .with::<EnvProbe>()?
        .with::<Chatter>()
}

/// Reports the environment of the process it runs in, and of a program
/// it starts: how tests see that a worker scrubbed its `QUICMESH_*`
/// variables (`/proc/PID/environ` shows only the initial environment).
#[derive(Default)]
pub struct EnvProbe;

/// Messages of [`EnvProbe`].
#[derive(Debug, Serialize, Deserialize)]
pub enum EnvProbeMsg {
    /// Reply with `NAME=value` for every variable of this process
    /// (`std::env::vars_os`), then the lines `env` prints when started from
    /// here, after a line `--- child`.
    Report(PortRef<Vec<String>>),
}

impl Actor for EnvProbe {
    const NAME: &'static str = "env_probe";
    type Message = EnvProbeMsg;

    async fn handle(&mut self, msg: EnvProbeMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            EnvProbeMsg::Report(port) => {
                let mut lines: Vec<String> = std::env::vars_os()
                    .map(|(n, v)| format!("{}={}", n.to_string_lossy(), v.to_string_lossy()))
                    .collect();
                lines.push("--- child".into());
                let child = tokio::process::Command::new("env").output().await?;
                lines.extend(
                    String::from_utf8_lossy(&child.stdout)
                        .lines()
                        .map(str::to_owned),
                );
                port.send(ctx.client(), lines).await?
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

    async fn on_undeliverable(&mut self, _: Returned, _: &Context) {
        self.returned += 1;
    }
}

/// Takes its time over each message: for isolation and backpressure tests.
#[derive(Default)]
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
#[derive(Default)]
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

    async fn handle(&mut self, msg: FaultyMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            FaultyMsg::Panic(why) => panic!("{why}"),
            FaultyMsg::Fail(why) => Err(anyhow::anyhow!(why)),
            FaultyMsg::Ping(port) => Ok(port.send(ctx.client(), ()).await?),
        }
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

impl Spawn for StopProbe {
    type Params = ActorRef<Recorder>;

    fn new(recorder: ActorRef<Recorder>) -> anyhow::Result<Self> {
        Ok(StopProbe { recorder })
    }
}

impl Actor for StopProbe {
    const NAME: &'static str = "stop-probe";
    type Message = ();

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
#[derive(Default)]
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
#[derive(Default)]
pub struct StuckStop;

impl Actor for StuckStop {
    const NAME: &'static str = "stuck-stop";
    /// A port to answer: proves it is alive.
    type Message = PortRef<()>;

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

impl Spawn for Fragile {
    type Params = FragileParams;

    fn new(params: FragileParams) -> anyhow::Result<Self> {
        if let Some(why) = params.panic_in_new {
            panic!("{why}");
        }
        Ok(Fragile)
    }
}

impl Actor for Fragile {
    const NAME: &'static str = "fragile";
    type Message = FragileMsg;

    async fn handle(&mut self, msg: FragileMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            FragileMsg::Ping(port) | FragileMsg::Trip(_, port) => {
                Ok(port.send(ctx.client(), ()).await?)
            }
        }
    }
}

/// Logs and prints on command: for the tests of log forwarding.
#[derive(Default)]
pub struct Chatter;

/// Messages of [`Chatter`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ChatterMsg {
    /// Log `text` with `tracing::info!` (target `chatter`), print it on
    /// stdout and on stderr, with ` (stdout)` and ` (stderr)` appended, then
    /// reply.
    Say {
        /// What to log.
        text: String,
        /// Gets `()` once it was logged and printed.
        done: PortRef<()>,
    },
    /// Log `lines` numbered lines as fast as possible (on stdout if
    /// `stdout`, else with `tracing`), yielding every 256 lines, then reply
    /// with how many.
    Flood {
        /// How many lines.
        lines: u64,
        /// Print instead of logging.
        stdout: bool,
        /// Gets the count.
        done: PortRef<u64>,
    },
}

impl Actor for Chatter {
    const NAME: &'static str = "chatter";
    type Message = ChatterMsg;

    async fn handle(&mut self, msg: ChatterMsg, ctx: &Context) -> anyhow::Result<()> {
        match msg {
            ChatterMsg::Say { text, done } => {
                tracing::info!(target: "chatter", "{text}");
                println!("{text} (stdout)");
                eprintln!("{text} (stderr)");
                done.send(ctx.client(), ()).await?;
            }
            ChatterMsg::Flood {
                lines,
                stdout,
                done,
            } => {
                for i in 0..lines {
                    // Share the actor threads, so what the test measures
                    // is the logging, not a handler that never yields.
                    if i % 256 == 0 {
                        tokio::task::yield_now().await;
                    }
                    if stdout {
                        println!("flood line {i}");
                    } else {
                        tracing::info!(target: "chatter", "flood line {i}");
                    }
                }
                done.send(ctx.client(), lines).await?;
            }
        }
        Ok(())
    }
}
