//! What the allocator can tell about its mesh, as numbers: a plain
//! snapshot ([`Metrics`], `Allocator::metrics`) and, opt-in, an HTTP
//! endpoint serving it in the Prometheus text format
//! (`Allocator::serve_metrics`).
//!
//! Every label is something the allocator itself created (a worker index it
//! reserved, a proc id it handed out, a state or a kind from a fixed list),
//! so the number of series is bounded by what the allocator hosts and never
//! by anything a peer names. The one peer-chosen text, a worker's host
//! name, is cut short and appears only once per worker, in
//! `quicmesh_worker_info`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::task::AbortOnDropHandle;

use super::RefusalKind;
use super::Shared;
use crate::id::ProcId;
use crate::sync::lock;

/// A snapshot of the allocator's counters and states.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// Every worker slot reserved so far, by index.
    pub workers: Vec<WorkerMetrics>,
    /// Procs by state word (`created`, `running`, `stopped`, `failed`).
    pub procs_by_state: BTreeMap<&'static str, u64>,
    /// One entry per proc that has a mailbox link, by rank.
    pub proc_streams: Vec<ProcStreamMetrics>,
    /// Connections refused before admission (handshake slots, bad tokens,
    /// wrong protocol version, ...).
    pub refused_connections: u64,
    /// Streams of admitted workers rejected (mailbox or log streams opened wrongly).
    pub rejected_streams: u64,
    /// `refused_connections` by why (every kind present, zero or not).
    pub refused_by_kind: BTreeMap<RefusalKind, u64>,
}

/// One worker slot.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// Its index.
    pub index: u32,
    /// The host its Hello named, once it joined (cut to 64 bytes).
    pub host: Option<String>,
    /// `waiting` (reserved, not joined), `connected`, or `left`.
    pub state: &'static str,
    /// The round trip of its connection, while connected.
    pub rtt: Option<Duration>,
    /// Heartbeats from it that did not arrive in time (see docs/design.md §2.13).
    pub beats_missed: u64,
    /// Its procs that have not ended.
    pub live_procs: u32,
    /// Bytes queued or in flight towards its procs now.
    pub queued_bytes: u64,
    /// Log lines accepted from it.
    pub log_lines: u64,
    /// Log lines it reported dropping (its queue was full).
    pub log_lines_dropped_by_worker: u64,
    /// Log lines the allocator dropped from it (over the rate limit).
    pub log_lines_dropped_by_allocator: u64,
}

/// One proc's mailbox stream, as the allocator holds it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProcStreamMetrics {
    /// The proc.
    pub proc_id: ProcId,
    /// The worker hosting it.
    pub worker: u32,
    /// Its state word.
    pub state: &'static str,
    /// Envelopes the worker acknowledged as delivered.
    pub delivered: u64,
    /// Envelopes returned to their senders (undeliverable).
    pub returned: u64,
    /// Bytes queued or in flight towards it now.
    pub queued_bytes: u64,
    /// Most bytes ever queued towards it at once.
    pub peak_queued_bytes: u64,
    /// Bytes it sent that wait for a full destination now.
    pub parked_bytes: u64,
    /// Envelopes written towards it.
    pub sent: u64,
    /// Payload bytes of those envelopes.
    pub sent_bytes: u64,
    /// Envelopes it sent.
    pub received: u64,
    /// Payload bytes of those envelopes.
    pub received_bytes: u64,
}

/// Takes the snapshot.
pub(crate) fn snapshot(shared: &Shared) -> Metrics {
    let (reserved, procs) = {
        let admission = shared.lock_admission();
        let procs: Vec<(ProcId, Option<u32>)> = admission
            .procs()
            .into_iter()
            .map(|p| {
                let w = admission.worker_of(&p);
                (p, w)
            })
            .collect();
        (admission.next_index(), procs)
    };
    let connected = shared.connected_workers();
    let hosts = lock(&shared.hosts).clone();
    let logs = shared.logs.counts();
    let mut workers: Vec<WorkerMetrics> = (0..reserved)
        .map(|index| {
            let counts = logs.get(&index).copied().unwrap_or_default();
            let state = if connected.contains(&index) {
                "connected"
            } else if hosts.contains_key(&index) {
                "left"
            } else {
                "waiting"
            };
            WorkerMetrics {
                index,
                host: hosts.get(&index).cloned(),
                state,
                rtt: shared.worker_rtt(index),
                beats_missed: shared.beats_missed(index),
                live_procs: 0,
                queued_bytes: 0,
                log_lines: counts.lines,
                log_lines_dropped_by_worker: counts.dropped_by_worker,
                log_lines_dropped_by_allocator: counts.dropped_by_allocator,
            }
        })
        .collect();
    let mut procs_by_state = BTreeMap::new();
    let mut proc_streams = Vec::new();
    for (proc_id, worker) in procs {
        let Some(worker) = worker else { continue };
        let Some(state) = shared.proc_state(&proc_id) else {
            continue;
        };
        *procs_by_state.entry(state.word()).or_insert(0) += 1;
        let stats = shared.router.link(&proc_id).map(|l| l.stats());
        if let Some(w) = workers.get_mut(worker as usize) {
            if !state.is_terminal() {
                w.live_procs += 1;
            }
            w.queued_bytes += stats.map_or(0, |s| s.queued_bytes);
        }
        if let Some(s) = stats {
            proc_streams.push(ProcStreamMetrics {
                proc_id,
                worker,
                state: state.word(),
                delivered: s.delivered,
                returned: s.returned,
                queued_bytes: s.queued_bytes,
                peak_queued_bytes: s.peak_queued_bytes,
                parked_bytes: s.parked_bytes,
                sent: s.sent,
                sent_bytes: s.sent_bytes,
                received: s.received,
                received_bytes: s.received_bytes,
            });
        }
    }
    let refusals = shared.refusals();
    Metrics {
        workers,
        procs_by_state,
        proc_streams,
        refused_connections: refusals.connections,
        rejected_streams: refusals.streams,
        refused_by_kind: RefusalKind::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    refusals.connections_by_kind.get(k).copied().unwrap_or(0),
                )
            })
            .collect(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerInfoLabels {
    worker: String,
    host: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcLabels {
    proc: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcDirectionLabels {
    proc: String,
    worker: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    worker: String,
    side: String,
}

impl Metrics {
    /// The snapshot in the Prometheus text format (OpenMetrics flavour, as
    /// `prometheus-client` encodes it), every name prefixed `quicmesh_`.
    pub fn to_prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("quicmesh");
        let workers = Family::<StateLabel, Gauge>::default();
        let info = Family::<WorkerInfoLabels, Gauge>::default();
        let rtt = Family::<WorkerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let live = Family::<WorkerLabel, Gauge>::default();
        let worker_queued = Family::<WorkerLabel, Gauge>::default();
        let log_lines = Family::<WorkerLabel, Counter>::default();
        let log_dropped = Family::<DropLabels, Counter>::default();
        let procs = Family::<StateLabel, Gauge>::default();
        let delivered = Family::<ProcLabels, Counter>::default();
        let returned = Family::<ProcLabels, Counter>::default();
        let queued = Family::<ProcLabels, Gauge>::default();
        let parked = Family::<ProcLabels, Gauge>::default();
        let refused = Family::<KindLabel, Counter>::default();
        let refused_by = Family::<ReasonLabel, Counter>::default();
        let missed = Family::<WorkerLabel, Counter>::default();
        let messages = Family::<ProcDirectionLabels, Counter>::default();
        let bytes = Family::<ProcDirectionLabels, Counter>::default();
        for state in ["waiting", "connected", "left"] {
            let n = self.workers.iter().filter(|w| w.state == state).count();
            workers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        for w in &self.workers {
            let worker = WorkerLabel {
                worker: w.index.to_string(),
            };
            info.get_or_create(&WorkerInfoLabels {
                worker: worker.worker.clone(),
                host: w.host.clone().unwrap_or_default(),
                state: w.state.into(),
            })
            .set(1);
            if let Some(r) = w.rtt {
                rtt.get_or_create(&worker).set(r.as_secs_f64());
            }
            live.get_or_create(&worker).set(w.live_procs.into());
            missed.get_or_create(&worker).inc_by(w.beats_missed);
            worker_queued
                .get_or_create(&worker)
                .set(saturating_i64(w.queued_bytes));
            log_lines.get_or_create(&worker).inc_by(w.log_lines);
            for (side, n) in [
                ("worker", w.log_lines_dropped_by_worker),
                ("allocator", w.log_lines_dropped_by_allocator),
            ] {
                log_dropped
                    .get_or_create(&DropLabels {
                        worker: worker.worker.clone(),
                        side: side.into(),
                    })
                    .inc_by(n);
            }
        }
        for state in ["created", "running", "stopped", "failed"] {
            let n = self.procs_by_state.get(state).copied().unwrap_or(0);
            procs
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(saturating_i64(n));
        }
        for p in &self.proc_streams {
            let labels = ProcLabels {
                proc: p.proc_id.to_string(),
                worker: p.worker.to_string(),
            };
            delivered.get_or_create(&labels).inc_by(p.delivered);
            returned.get_or_create(&labels).inc_by(p.returned);
            queued
                .get_or_create(&labels)
                .set(saturating_i64(p.queued_bytes));
            parked
                .get_or_create(&labels)
                .set(saturating_i64(p.parked_bytes));
            for (direction, n, b) in [
                ("to_proc", p.sent, p.sent_bytes),
                ("from_proc", p.received, p.received_bytes),
            ] {
                let labels = ProcDirectionLabels {
                    proc: labels.proc.clone(),
                    worker: labels.worker.clone(),
                    direction: direction.into(),
                };
                messages.get_or_create(&labels).inc_by(n);
                bytes.get_or_create(&labels).inc_by(b);
            }
        }
        for (kind, n) in [
            ("connection", self.refused_connections),
            ("stream", self.rejected_streams),
        ] {
            refused
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(n);
        }
        for (kind, n) in &self.refused_by_kind {
            refused_by
                .get_or_create(&ReasonLabel {
                    reason: kind.label().into(),
                })
                .inc_by(*n);
        }
        registry.register("workers", "Worker slots by state", workers);
        registry.register(
            "heartbeats_missed",
            "Heartbeats from each worker that did not arrive in time",
            missed,
        );
        registry.register(
            "proc_stream_messages",
            "Envelopes on each proc's stream, by direction",
            messages,
        );
        registry.register(
            "proc_stream_payload_bytes",
            "Payload bytes of the envelopes on each proc's stream, by direction",
            bytes,
        );
        registry.register(
            "handshakes_refused",
            "Connections refused before admission, by reason",
            refused_by,
        );
        registry.register(
            "worker_info",
            "Each worker's host and state (value 1)",
            info,
        );
        registry.register(
            "worker_rtt_seconds",
            "Round trip of each connected worker's path (QUIC's smoothed estimate)",
            rtt,
        );
        registry.register(
            "worker_live_procs",
            "Procs of each worker that have not ended",
            live,
        );
        registry.register(
            "worker_queued_bytes",
            "Bytes queued or in flight towards each worker's procs",
            worker_queued,
        );
        registry.register(
            "log_lines",
            "Log lines accepted from each worker",
            log_lines,
        );
        registry.register(
            "log_lines_dropped",
            "Forwarded log lines dropped, by the worker (queue full) or the allocator (rate limit)",
            log_dropped,
        );
        registry.register("procs", "Procs by state", procs);
        registry.register(
            "proc_stream_delivered",
            "Envelopes each proc's worker acknowledged as delivered",
            delivered,
        );
        registry.register(
            "proc_stream_returned",
            "Envelopes towards or from each proc returned undeliverable",
            returned,
        );
        registry.register(
            "proc_stream_queued_bytes",
            "Bytes queued or in flight towards each proc",
            queued,
        );
        registry.register(
            "proc_stream_parked_bytes",
            "Bytes each proc sent that wait for a full destination",
            parked,
        );
        registry.register(
            "refused",
            "Connections refused before admission and streams of admitted workers rejected",
            refused,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Most scrapes served at once; more connections wait for the listener.
const MAX_SCRAPERS: usize = 16;

/// How long a scraper has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics endpoint; stops serving (and closes its listener) when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    _task: AbortOnDropHandle<()>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` and serves `GET /metrics` from `shared` until dropped.
pub(crate) async fn serve(
    shared: Weak<Shared>,
    addr: SocketAddr,
) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Dropped with the task: every connection ends with the server.
        let mut scrapes = tokio::task::JoinSet::new();
        loop {
            while scrapes.len() >= MAX_SCRAPERS {
                scrapes.join_next().await;
            }
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        // Out of descriptors or the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    scrapes.spawn(serve_connection(shared.clone(), stream));
                }
                Some(_) = scrapes.join_next(), if !scrapes.is_empty() => {}
            }
        }
    });
    Ok(MetricsServer {
        addr,
        _task: AbortOnDropHandle::new(task),
    })
}

type Body = http_body_util::Full<bytes::Bytes>;

async fn serve_connection(shared: Weak<Shared>, stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&shared, &req)) }
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
    )
    .await;
}

fn respond(
    shared: &Weak<Shared>,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let reply = |status: u16, body: String| {
        let mut response = hyper::Response::new(Body::from(body));
        *response.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(404, "only GET /metrics is served\n".into());
    }
    match shared.upgrade() {
        Some(shared) => reply(200, snapshot(&shared).to_prometheus()),
        None => reply(503, "the allocator is gone\n".into()),
    }
}
