//! Proc-to-proc cases: actors on different workers talking through the
//! allocator, the path a mesh's own traffic takes, each against bare quinn
//! doing the same hop in the same run.
//!
//! - **proc-to-proc**: a [`Driver`] actor on worker 0 tells (then asks) a
//!   `Counter`, and asks an `Echo`, on worker 1. Its limit: a raw sender
//!   process, connected to a *middle* (a bare quinn server in the controller
//!   process, as the allocator is), which decodes each frame and encodes it
//!   again onto a stream of its one connection to the raw peer process, and
//!   the same back.
//! - **fan-in**: 8 drivers on 8 workers tell one `Counter` on a ninth worker
//!   at once. Its limit: 8 raw sender processes, 8 connections into the
//!   middle, forwarded as 8 counting streams of one connection to the raw
//!   peer (each sender also holds an idle echo stream). The limit is
//!   generous to bare quinn: each of its 8 streams has its own window and
//!   its own counting task, where quicmesh's 8 senders share one mailbox
//!   stream into the ninth worker and one actor.
//!
//! Timing: in the proc-to-proc cases each sender times itself, from its
//! first message to the answer of a report asked after its last one (so
//! every message was counted at the far end); in fan-in the controller
//! times both sides, from its 8 requests to the last sender's answer.

use std::net::SocketAddr;

use quicmesh::PortRef;
use tokio::io::{AsyncWriteExt, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use super::*;

/// Set in a raw sender's environment: the address of the middle it connects to.
pub(crate) const ENV_RAW_SENDER: &str = "QUICMESH_BENCH_RAW_SENDER";
/// Senders of the fan-in case.
const FAN_IN: usize = 8;

// ---------------------------------------------------------------------------
// The quicmesh side

/// Runs a proc-to-proc case from a worker's proc, on the controller's request.
#[derive(Default)]
pub(crate) struct Driver {
    /// Sequence number of this driver's next tell.
    next: u64,
}

/// Messages of [`Driver`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum DriverMsg {
    /// Tell `to` the next `n` numbers, padded with `size` bytes, then ask it
    /// for a report; reply with the seconds from the first tell to the
    /// report. `alone`: this driver is the counter's only sender, so the
    /// report must show exactly its numbers, in order.
    Tells {
        to: ActorRef<Counter>,
        n: u64,
        size: usize,
        alone: bool,
        done: PortRef<f64>,
    },
    /// Ask `to` to echo 64 bytes `n` times, one at a time; reply with each round trip.
    Rtt {
        to: ActorRef<Echo>,
        n: u32,
        done: PortRef<Vec<Duration>>,
    },
}

impl quicmesh::Actor for Driver {
    const NAME: &'static str = "bench-driver";
    type Message = DriverMsg;

    async fn handle(&mut self, msg: DriverMsg, ctx: &quicmesh::Context) -> anyhow::Result<()> {
        match msg {
            DriverMsg::Tells {
                to,
                n,
                size,
                alone,
                done,
            } => {
                let start = Instant::now();
                for _ in 0..n {
                    let pad = vec![0; size];
                    let seq = self.next;
                    to.tell(ctx, CounterMsg::Count { seq, pad }).await?;
                    self.next += 1;
                }
                let report: CounterReport =
                    to.ask_within(ctx, CASE_LIMIT, CounterMsg::Report).await?;
                let secs = start.elapsed().as_secs_f64();
                if alone {
                    ensure!(
                        report.received == self.next && report.out_of_order == 0,
                        "counter saw {report:?} after {} messages",
                        self.next
                    );
                } else {
                    ensure!(
                        report.received >= self.next,
                        "counter saw {report:?} after this driver's {} messages",
                        self.next
                    );
                }
                done.send(ctx, secs).await?;
            }
            DriverMsg::Rtt { to, n, done } => {
                let mut samples = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let start = Instant::now();
                    let reply: Vec<u8> = to
                        .ask(ctx, |port| EchoMsg::Echo(vec![0; SMALL], port))
                        .await?;
                    samples.push(start.elapsed());
                    ensure!(reply.len() == SMALL, "echo returned {} bytes", reply.len());
                }
                done.send(ctx, samples).await?;
            }
        }
        Ok(())
    }
}

/// Asks `driver` for `n` tells to `to`; the driver's seconds.
async fn mesh_tells(
    client: &Client,
    driver: &ActorRef<Driver>,
    to: &ActorRef<Counter>,
    (n, alone): (u64, bool),
) -> anyhow::Result<f64> {
    let secs = driver
        .ask_within(client, CASE_LIMIT, |done| DriverMsg::Tells {
            to: to.clone(),
            n,
            size: SMALL,
            alone,
            done,
        })
        .await?;
    Ok(secs)
}

/// Asks `driver` for `n` round trips to `to`.
async fn mesh_rtts(
    client: &Client,
    driver: &ActorRef<Driver>,
    to: &ActorRef<Echo>,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let samples = driver
        .ask_within(client, CASE_LIMIT, |done| DriverMsg::Rtt {
            to: to.clone(),
            n: n as u32,
            done,
        })
        .await?;
    Ok(samples)
}

// ---------------------------------------------------------------------------
// The bare quinn side

/// The middle: a bare quinn server that forwards every stream of every
/// connection to a new stream of its one connection to the raw peer,
/// decoding and encoding each frame on the way, as the allocator does with
/// each envelope (it reads the header, then writes the frame again).
struct Middle {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl Middle {
    fn start(certs: &CertPaths, upstream: quinn::Connection) -> anyhow::Result<Middle> {
        let link = LinkConfig::lan();
        let endpoint = raw_server(certs, &link)?;
        let addr = endpoint.local_addr()?;
        tokio::spawn(serve_streams(
            endpoint.clone(),
            link,
            "middle",
            move |_, send, recv| {
                let upstream = upstream.clone();
                async move {
                    let (up_send, up_recv) = upstream.open_bi().await?;
                    let (there, back) =
                        tokio::join!(forward(recv, up_send), forward(up_recv, send));
                    match there.and(back) {
                        // Ended by the raw peer going away with the case.
                        Err(_) if upstream.close_reason().is_some() => Ok(()),
                        other => other,
                    }
                }
            },
        ));
        Ok(Middle { endpoint, addr })
    }

    /// A raw peer and a middle in front of it.
    async fn with_peer(certs: &CertPaths) -> anyhow::Result<(RawClient, Middle)> {
        let raw = RawClient::start(certs, &LinkConfig::lan(), None)
            .await
            .context("raw quinn peer")?;
        let middle = Middle::start(certs, raw.conn.clone())?;
        Ok((raw, middle))
    }
}

impl Drop for Middle {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// Copies frames from `recv` to `send`, up to [`RAW_BATCH`] bytes per write,
/// until `recv` ends.
async fn forward(recv: quinn::RecvStream, send: quinn::SendStream) -> anyhow::Result<()> {
    let max = Limits::default().max_frame;
    let (mut rx, mut tx) = (FramedRecv::new(recv, max), FramedSend::new(send, max));
    while let Some(msg) = rx.next::<RawMsg>().await? {
        tx.buffer(&msg)?;
        while rx.frame_ready() && tx.buffered() < RAW_BATCH {
            match rx.next::<RawMsg>().await? {
                Some(msg) => tx.buffer(&msg)?,
                None => break,
            }
        }
        tx.flush().await?;
    }
    tx.finish();
    Ok(())
}

/// A raw sender process, commanded one line at a time over its stdin.
struct RawSender {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    _child: ChildGuard,
}

impl RawSender {
    /// Starts a sender connected to the middle at `middle`; returns once it is connected.
    async fn start(certs: &CertPaths, middle: SocketAddr) -> anyhow::Result<RawSender> {
        let dir = certs.ca_cert.parent().context("cert dir")?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env(ENV_RAW_SENDER, middle.to_string())
            .env(ENV_CERT_DIR, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(cmd)?;
        let stdin = child.child.stdin.take().context("sender stdin")?;
        let stdout = child.child.stdout.take().context("sender stdout")?;
        let mut sender = RawSender {
            stdin,
            lines: BufReader::new(stdout).lines(),
            _child: child,
        };
        let ready = sender.reply().await?;
        ensure!(ready == "ready", "raw sender said {ready:?}");
        Ok(sender)
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let send = async {
            self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
            self.stdin.flush().await
        };
        send.await
            .with_context(|| format!("sending {line:?} to the raw sender"))
    }

    async fn reply(&mut self) -> anyhow::Result<String> {
        let line = tokio::time::timeout(EVENT_LIMIT, self.lines.next_line())
            .await
            .with_context(|| format!("raw sender did not answer within {EVENT_LIMIT:?}"))?
            .context("reading the raw sender's answer")?
            .context("raw sender exited before answering")?;
        Ok(line)
    }

    /// Seconds for `n` 64-byte messages and a report, as the sender measured them.
    async fn tells_reply(&mut self) -> anyhow::Result<f64> {
        let line = self.reply().await?;
        let secs = line
            .strip_prefix("secs ")
            .with_context(|| format!("raw sender answered {line:?}, not `secs S`"))?;
        secs.parse()
            .with_context(|| format!("raw sender's seconds {secs:?}"))
    }

    async fn tells(&mut self, n: u64) -> anyhow::Result<f64> {
        self.command(&format!("tells {n}")).await?;
        self.tells_reply().await
    }

    async fn rtts(&mut self, n: usize) -> anyhow::Result<Vec<Duration>> {
        self.command(&format!("rtt {n}")).await?;
        let line = self.reply().await?;
        let nanos = line
            .strip_prefix("rtt ")
            .with_context(|| format!("raw sender answered {line:?}, not `rtt NS...`"))?;
        let samples = nanos
            .split_whitespace()
            .map(|v| v.parse().map(Duration::from_nanos))
            .collect::<Result<Vec<_>, _>>()
            .context("raw sender's round trips")?;
        ensure!(samples.len() == n, "{} samples, asked {n}", samples.len());
        Ok(samples)
    }
}

/// The raw sender process: connects to the middle, then runs each command
/// of its stdin (`tells N`, `rtt N`) and prints the result; exits when
/// stdin closes.
pub(crate) fn raw_sender_main() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let middle: SocketAddr = std::env::var(ENV_RAW_SENDER)
            .context(ENV_RAW_SENDER)?
            .parse()
            .context(ENV_RAW_SENDER)?;
        let dir = PathBuf::from(std::env::var(ENV_CERT_DIR).context(ENV_CERT_DIR)?);
        let certs = CertPaths::in_dir(&dir);
        let (_endpoint, conn) = connect_raw(&certs, middle, &LinkConfig::lan()).await?;
        let mut counter = raw_counter(&conn).await?;
        let mut echo = raw_echo(&conn).await?;
        println!("ready");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["tells", n] => {
                    let n = n.parse().with_context(|| format!("tell count {n:?}"))?;
                    let secs = counter.batch(n, SMALL).await?;
                    println!("secs {secs}");
                }
                ["rtt", n] => {
                    let n = n
                        .parse()
                        .with_context(|| format!("round trip count {n:?}"))?;
                    let samples = echo.rtt(n).await?;
                    let nanos: Vec<String> =
                        samples.iter().map(|d| d.as_nanos().to_string()).collect();
                    println!("rtt {}", nanos.join(" "));
                }
                _ => bail!("raw sender: unknown command {line:?}"),
            }
        }
        conn.close(0u32.into(), b"done");
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The cases

/// Proc-to-proc round trips and tells between two workers, against a raw
/// sender through the middle.
pub(crate) async fn proc_to_proc(
    certs: &CertPaths,
    sizes: &Sizes,
    r: &mut Results,
) -> anyhow::Result<()> {
    let (raw, middle) = Middle::with_peer(certs).await?;
    let mut sender = RawSender::start(certs, middle.addr).await?;

    let mut w = Watch::new(bind(certs, "p2p").await?);
    w.alloc.launch(&worker_launcher()?, 2, 1)?;
    w.running(2).await?;
    let client = w.alloc.client().clone();
    let procs = w.alloc.procs(); // by rank: proc 0 on worker 0, proc 1 on worker 1
    let counter = client.spawn::<Counter>(&procs[1], "counter", &()).await?;
    let echo = client.spawn::<Echo>(&procs[1], "echo", &()).await?;
    let driver = client.spawn::<Driver>(&procs[0], "driver", &()).await?;

    mesh_rtts(&client, &driver, &echo, sizes.rtt_warmup).await?;
    sender.rtts(sizes.rtt_warmup).await?;
    let (mut rtts, mut raw_rtts) = (Vec::new(), Vec::new());
    while rtts.len() < sizes.rtt_samples {
        let n = RTT_CHUNK.min(sizes.rtt_samples - rtts.len());
        rtts.extend(mesh_rtts(&client, &driver, &echo, n).await?);
        raw_rtts.extend(sender.rtts(n).await?);
    }
    r.figure("p2p_rtt_p50_us", Some(percentile_us(&mut rtts, 50)), 1);
    r.figure(
        "quinn_p2p_rtt_p50_us",
        Some(percentile_us(&mut raw_rtts, 50)),
        1,
    );

    let n = sizes.tells;
    mesh_tells(&client, &driver, &counter, ((n / 10).max(1), true)).await?;
    sender.tells((n / 10).max(1)).await?;
    let (mut mesh_secs, mut raw_secs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        mesh_secs.push(mesh_tells(&client, &driver, &counter, (n, true)).await?);
        raw_secs.push(sender.tells(n).await?);
    }
    r.figure(
        "p2p_tell_msgs_per_s",
        Some(n as f64 / median_f64(&mut mesh_secs)),
        0,
    );
    r.figure(
        "quinn_p2p_msgs_per_s",
        Some(n as f64 / median_f64(&mut raw_secs)),
        0,
    );
    drop((sender, middle));
    raw.close();
    w.stop_all(2).await?;
    Ok(())
}

/// 8 drivers on 8 workers telling one counter on a ninth at once, against 8
/// raw senders through the middle; aggregate messages per second, from the
/// controller's request to the last sender's answer.
pub(crate) async fn fan_in(
    certs: &CertPaths,
    sizes: &Sizes,
    r: &mut Results,
) -> anyhow::Result<()> {
    let (raw, middle) = Middle::with_peer(certs).await?;
    let mut senders = Vec::new();
    for _ in 0..FAN_IN {
        senders.push(RawSender::start(certs, middle.addr).await?);
    }

    let workers = FAN_IN as u32 + 1;
    let mut w = Watch::new(bind(certs, "fan-in").await?);
    w.alloc.launch(&worker_launcher()?, workers, 1)?;
    w.running(workers as usize).await?;
    let client = w.alloc.client().clone();
    let procs = w.alloc.procs();
    let counter = client
        .spawn::<Counter>(&procs[FAN_IN], "counter", &())
        .await?;
    let mut drivers = Vec::new();
    for p in &procs[..FAN_IN] {
        drivers.push(client.spawn::<Driver>(p, "driver", &()).await?);
    }

    // Each sender's share of one round.
    let each = (sizes.tells / FAN_IN as u64).max(1);
    fan_in_mesh(&client, &drivers, &counter, (each / 10).max(1)).await?;
    fan_in_raw(&mut senders, (each / 10).max(1)).await?;
    let (mut mesh_secs, mut raw_secs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        mesh_secs.push(fan_in_mesh(&client, &drivers, &counter, each).await?);
        raw_secs.push(fan_in_raw(&mut senders, each).await?);
    }
    // Every driver's tells of every round reached the one counter.
    let report: CounterReport = counter.ask(&client, CounterMsg::Report).await?;
    let sent = FAN_IN as u64 * ((each / 10).max(1) + ROUNDS as u64 * each);
    ensure!(
        report.received == sent,
        "fan-in counter saw {report:?}, {sent} were sent"
    );
    let total = (FAN_IN as u64 * each) as f64;
    r.figure(
        "fanin_msgs_per_s",
        Some(total / median_f64(&mut mesh_secs)),
        0,
    );
    r.figure(
        "quinn_fanin_msgs_per_s",
        Some(total / median_f64(&mut raw_secs)),
        0,
    );
    drop((senders, middle));
    raw.close();
    w.stop_all(workers as usize).await?;
    Ok(())
}

/// One fan-in round: every driver tells `counter` `n` messages at once;
/// seconds until the last has its report.
async fn fan_in_mesh(
    client: &Client,
    drivers: &[ActorRef<Driver>],
    counter: &ActorRef<Counter>,
    n: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let runs = drivers
        .iter()
        .map(|d| mesh_tells(client, d, counter, (n, false)));
    for run in join_all(runs).await {
        run?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One fan-in round of the raw senders, as [`fan_in_mesh`].
async fn fan_in_raw(senders: &mut [RawSender], n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    for s in senders.iter_mut() {
        s.command(&format!("tells {n}")).await?;
    }
    for s in senders.iter_mut() {
        s.tells_reply().await?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The table rows and ratios of the proc-to-proc cases.
pub(crate) fn rows(r: &mut Results, sizes: &Sizes) {
    let cases = [
        (
            "proc-to-proc ask rtt p50, 64 B".to_string(),
            ("p2p_rtt_p50_us", "quinn_p2p_rtt_p50_us", "p2p_rtt_ratio"),
            ("us", 1),
        ),
        (
            format!(
                "proc-to-proc tell, 64 B x {}, median of {ROUNDS}",
                sizes.tells
            ),
            (
                "p2p_tell_msgs_per_s",
                "quinn_p2p_msgs_per_s",
                "p2p_tell_ratio",
            ),
            ("msg/s", 0),
        ),
        (
            format!(
                "fan-in: {FAN_IN} workers tell 1 actor, 64 B x {}, median of {ROUNDS}",
                (sizes.tells / FAN_IN as u64) * FAN_IN as u64
            ),
            ("fanin_msgs_per_s", "quinn_fanin_msgs_per_s", "fanin_ratio"),
            ("msg/s", 0),
        ),
    ];
    for (case, (mesh, raw, ratio_name), (unit, decimals)) in cases {
        let (m, q) = (r.get(mesh), r.get(raw));
        let rt = ratio(m, q);
        r.figure(ratio_name, rt, 2);
        r.row(
            &case,
            fmt(m, decimals, unit),
            fmt(q, decimals, unit),
            fmt(rt, 2, ""),
            "",
        );
    }
}
