//! A userspace fault-injection UDP relay for tests and benchmarks.
//!
//! QUIC runs over UDP, and kernel tools such as netem are not available where
//! the tests run. Instead a test starts a [`Relay`] on 127.0.0.1 in front of the
//! allocator, lets the worker dial [`Relay::local_addr`], and then degrades the
//! path at will: random loss ([`Relay::set_loss`]), added latency
//! ([`Relay::set_delay`]), or the full set of WAN conditions per direction
//! (delay, jitter, loss, duplication, reordering: [`Relay::set_conditions`],
//! [`Relay::set_path`]), a total outage ([`Relay::set_blackhole`]) or a NAT
//! rebinding ([`Relay::rebind`]).
//!
//! The relay behaves like a small NAT: every distinct client source address
//! gets its own upstream-facing socket, so several workers behind one relay
//! remain distinct peers to the upstream, and replies arriving on that socket
//! go back to that client only.
//!
//! Each direction is a [`Lane`](lane::Lane): plain code that decides, for
//! each datagram as it is received, whether it is lost, duplicated or held
//! back and when it leaves (see [`lane`] for the model). One forwarder task
//! per direction sends what is due and then sleeps until the next datagram is
//! due or an earlier one arrives: a timer, never a polling loop. A setting
//! takes effect on the very next datagram; datagrams already waiting keep
//! their departure time. Each lane holds at most [`QUEUE_CAPACITY`] datagrams
//! and [`QUEUE_BYTES`] bytes; beyond that datagrams are dropped and counted
//! ([`RelayStats::overflowed`]), so a long delay cannot grow memory without
//! bound.
//!
//! I/O errors never stop the relay: they are logged with `tracing::debug!`, and
//! a datagram that could not be sent is counted as dropped.

pub mod lane;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use lane::{Conditions, MAX_DELAY};
use lane::{Lane, Verdict};

/// Largest datagram the relay can carry (the UDP maximum, rounded up).
const RECV_BUF_LEN: usize = 65536;

/// Most datagrams waiting in one direction; beyond it datagrams are dropped
/// and counted, so a long delay cannot grow memory without bound.
pub const QUEUE_CAPACITY: usize = 65536;

/// Most bytes waiting in one direction (datagrams are stored at their own
/// size); beyond it datagrams are dropped and counted.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// The address every relay socket binds to: loopback, any free port.
const BIND_ADDR: (Ipv4Addr, u16) = (Ipv4Addr::LOCALHOST, 0);

/// One direction of the relayed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the clients to the upstream (a worker to its allocator).
    Up,
    /// From the upstream to the clients (an allocator to its workers).
    Down,
}

/// A userspace UDP relay on 127.0.0.1 that forwards, drops, delays, jitters,
/// duplicates, reorders or blackholes packets.
///
/// Dropping the relay stops all of its tasks and closes its sockets.
pub struct Relay {
    /// State shared with the relay's tasks.
    shared: Arc<Shared>,
    /// The client receiver and the two forwarders; session receivers live in
    /// [`Shared::sessions`].
    tasks: Vec<JoinHandle<()>>,
}

/// Counters of what a relay has done since it started.
///
/// Every datagram the relay receives, and every duplicate it makes, is
/// eventually counted exactly once, as either forwarded or dropped; datagrams
/// still waiting in a queue are in neither count yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams sent on to their destination (either direction).
    pub forwarded: u64,
    /// Datagrams discarded by loss, blackhole, a full queue, a send error or an
    /// unexpected source address (either direction).
    pub dropped: u64,
    /// Extra copies made by duplication (each then forwarded or dropped).
    pub duplicated: u64,
    /// Of the dropped datagrams, those refused because a queue was full.
    pub overflowed: u64,
}

impl Relay {
    /// Binds 127.0.0.1:0 and relays every datagram between its clients and `upstream`.
    ///
    /// Must be called within a Tokio runtime; the relay's tasks run on it.
    pub async fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let front = UdpSocket::bind(BIND_ADDR).await?;
        let local_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            local_addr,
            front,
            blackhole: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            up: Way::new(),
            down: Way::new(),
            sessions: Mutex::new(Sessions::default()),
        });
        let tasks = vec![
            tokio::spawn(client_recv_loop(Arc::clone(&shared))),
            tokio::spawn(forward_loop(Arc::clone(&shared), Direction::Up)),
            tokio::spawn(forward_loop(Arc::clone(&shared), Direction::Down)),
        ];
        tracing::debug!(%local_addr, %upstream, "relay started");
        Ok(Relay { shared, tasks })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address every client's datagrams are forwarded to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Drops each datagram (both directions) with probability `fraction` (clamped to 0..=1).
    ///
    /// NaN is treated as 0 (no loss). The other conditions are kept.
    pub fn set_loss(&self, fraction: f64) {
        for dir in [Direction::Up, Direction::Down] {
            self.update(dir, |c| c.loss = fraction);
        }
    }

    /// Delays each datagram (both directions) by `delay` before forwarding, keeping order.
    ///
    /// The delay is fixed when a datagram arrives. Because order is preserved,
    /// lowering the delay lets new datagrams through only after those already
    /// waiting. Delays above one year are capped to one year. The other
    /// conditions (jitter included) are kept.
    pub fn set_delay(&self, delay: Duration) {
        for dir in [Direction::Up, Direction::Down] {
            self.update(dir, |c| c.delay = delay);
        }
    }

    /// Applies `conditions` to datagrams going in `direction` from now on.
    ///
    /// Probabilities are clamped to 0..=1 (NaN counts as 0) and durations
    /// capped at one year ([`Conditions::sanitized`]).
    pub fn set_conditions(&self, direction: Direction, conditions: Conditions) {
        lock(&self.shared.way(direction).lane).set_conditions(conditions);
    }

    /// Applies `conditions` to both directions (each direction draws its own
    /// random numbers: the same loss rate, not the same lost datagrams).
    pub fn set_path(&self, conditions: Conditions) {
        for dir in [Direction::Up, Direction::Down] {
            self.set_conditions(dir, conditions);
        }
    }

    /// The conditions in force in `direction`.
    pub fn conditions(&self, direction: Direction) -> Conditions {
        lock(&self.shared.way(direction).lane).conditions()
    }

    fn update(&self, direction: Direction, change: impl FnOnce(&mut Conditions)) {
        let mut lane = lock(&self.shared.way(direction).lane);
        let mut conditions = lane.conditions();
        change(&mut conditions);
        lane.set_conditions(conditions);
    }

    /// When on, drops everything in both directions.
    ///
    /// This also drops datagrams already waiting in a delay queue, so an outage
    /// starts at once even while a delay is set.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// Rebinds the upstream-facing socket to a new local port, as a NAT rebinding would.
    ///
    /// Every current client gets a fresh upstream-facing socket: the upstream
    /// sees a new source address for all subsequent datagrams (including those
    /// still waiting in the delay queue), and replies still reach the client as
    /// long as the upstream sends them to the new address. Datagrams the
    /// upstream sends to the old address are lost, as they would be behind a
    /// real NAT. On error, clients rebound before the failure keep their new
    /// socket and the others keep their old one.
    pub async fn rebind(&self) -> io::Result<()> {
        let sessions: Vec<Arc<Session>> = lock(&self.shared.sessions)
            .map
            .values()
            .map(|entry| Arc::clone(&entry.session))
            .collect();
        for session in sessions {
            let socket = Arc::new(UdpSocket::bind(BIND_ADDR).await?);
            let new_addr = socket.local_addr()?;
            let task = tokio::spawn(upstream_recv_loop(
                Arc::clone(&self.shared),
                session.client,
                Arc::clone(&socket),
            ));
            let mut sessions = lock(&self.shared.sessions);
            if sessions.closed {
                task.abort();
                continue;
            }
            match sessions.map.get_mut(&session.client) {
                Some(entry) => {
                    *lock(&entry.session.socket) = socket;
                    std::mem::replace(&mut entry.recv_task, task).abort();
                    tracing::debug!(client = %session.client, %new_addr, "relay rebound client");
                }
                None => task.abort(),
            }
        }
        Ok(())
    }

    /// Counts of datagrams forwarded, dropped and duplicated so far, both directions together.
    pub fn stats(&self) -> RelayStats {
        let shared = &self.shared;
        RelayStats {
            forwarded: shared.forwarded.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            duplicated: shared.duplicated.load(Ordering::Relaxed),
            overflowed: shared.overflowed.load(Ordering::Relaxed),
        }
    }

    /// Datagrams waiting to leave in `direction` now.
    pub fn queued(&self, direction: Direction) -> usize {
        lock(&self.shared.way(direction).lane).len()
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.shared.local_addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Closing under the lock means a session being created concurrently
        // either is drained here or sees `closed` and aborts its own task.
        let mut sessions = lock(&self.shared.sessions);
        sessions.closed = true;
        for (_, entry) in sessions.map.drain() {
            entry.recv_task.abort();
        }
    }
}

/// State shared between a [`Relay`] handle and its tasks.
struct Shared {
    upstream: SocketAddr,
    local_addr: SocketAddr,
    /// The client-facing socket.
    front: UdpSocket,
    blackhole: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    overflowed: AtomicU64,
    /// Client datagrams bound for the upstream.
    up: Way,
    /// Upstream datagrams bound for clients.
    down: Way,
    sessions: Mutex<Sessions>,
}

/// One direction: its lane, and the bell that wakes its forwarder when a
/// datagram arrives that is due before the one it sleeps for.
struct Way {
    lane: Mutex<Lane<Packet>>,
    wake: Notify,
}

impl Way {
    fn new() -> Way {
        Way {
            lane: Mutex::new(Lane::new(QUEUE_CAPACITY, QUEUE_BYTES)),
            wake: Notify::new(),
        }
    }
}

/// The NAT table: one entry per client source address.
#[derive(Default)]
struct Sessions {
    /// Set when the relay is dropped; no session may be added afterwards.
    closed: bool,
    map: HashMap<SocketAddr, SessionEntry>,
}

struct SessionEntry {
    session: Arc<Session>,
    /// Receives the upstream's replies on the session's current socket.
    recv_task: JoinHandle<()>,
}

/// One client's mapping to its own upstream-facing socket.
struct Session {
    client: SocketAddr,
    /// Replaced by [`Relay::rebind`]; read at send time so queued datagrams
    /// leave from the current socket.
    socket: Mutex<Arc<UdpSocket>>,
}

impl Session {
    fn socket(&self) -> Arc<UdpSocket> {
        Arc::clone(&lock(&self.socket))
    }
}

/// A datagram waiting in a lane.
#[derive(Clone)]
struct Packet {
    data: Arc<[u8]>,
    route: Route,
}

#[derive(Clone)]
enum Route {
    /// From a client to the upstream, via the client's session socket.
    ToUpstream(Arc<Session>),
    /// From the upstream to this client, via the client-facing socket.
    ToClient(SocketAddr),
}

impl Shared {
    fn way(&self, direction: Direction) -> &Way {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a just-received datagram survives the blackhole; counts it as
    /// dropped if not.
    fn admit(&self) -> bool {
        if self.blackhole.load(Ordering::Relaxed) {
            self.count_drop();
            return false;
        }
        true
    }

    /// Hands a datagram to its direction's lane, which decides its fate;
    /// counts it as dropped if lost or refused, wakes the forwarder if it
    /// is now the first due.
    fn enqueue(&self, direction: Direction, data: &[u8], route: Route) {
        let way = self.way(direction);
        let packet = Packet {
            data: Arc::from(data),
            route,
        };
        let now = std::time::Instant::now();
        let verdict = lock(&way.lane).push(packet, data.len(), now, &mut rand::rng());
        match verdict {
            Verdict::Queued { copies, earliest } => {
                if copies > 1 {
                    self.duplicated
                        .fetch_add(u64::from(copies - 1), Ordering::Relaxed);
                }
                if earliest {
                    way.wake.notify_one();
                }
            }
            Verdict::Lost => self.count_drop(),
            Verdict::Overflow => {
                tracing::debug!(?direction, "relay queue full, datagram dropped");
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                self.count_drop();
            }
        }
    }

    /// The session for `client`, creating it (socket and receiver task) on
    /// first use. `None` if the socket cannot be bound or the relay is closing.
    async fn session_for(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<Session>> {
        if let Some(entry) = lock(&self.sessions).map.get(&client) {
            return Some(Arc::clone(&entry.session));
        }
        let socket = match UdpSocket::bind(BIND_ADDR).await {
            Ok(socket) => Arc::new(socket),
            Err(err) => {
                tracing::debug!(%client, error = %err, "relay failed to bind upstream socket");
                return None;
            }
        };
        let session = Arc::new(Session {
            client,
            socket: Mutex::new(Arc::clone(&socket)),
        });
        let recv_task = tokio::spawn(upstream_recv_loop(Arc::clone(self), client, socket));
        let mut sessions = lock(&self.sessions);
        if sessions.closed {
            recv_task.abort();
            return None;
        }
        tracing::debug!(%client, "relay created session");
        sessions.map.insert(
            client,
            SessionEntry {
                session: Arc::clone(&session),
                recv_task,
            },
        );
        Some(session)
    }
}

/// Receives datagrams from clients and queues them for the upstream.
async fn client_recv_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; RECV_BUF_LEN];
    loop {
        let (len, client) = match shared.front.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                recv_error_pause(&err, "client-facing").await;
                continue;
            }
        };
        if !shared.admit() {
            continue;
        }
        match shared.session_for(client).await {
            Some(session) => {
                shared.enqueue(Direction::Up, &buf[..len], Route::ToUpstream(session));
            }
            None => shared.count_drop(),
        }
    }
}

/// Receives the upstream's datagrams on one session socket and queues them
/// for that session's client.
async fn upstream_recv_loop(shared: Arc<Shared>, client: SocketAddr, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; RECV_BUF_LEN];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                recv_error_pause(&err, "upstream-facing").await;
                continue;
            }
        };
        if from != shared.upstream {
            tracing::debug!(%from, %client, "relay ignored datagram from unexpected source");
            shared.count_drop();
            continue;
        }
        if shared.admit() {
            shared.enqueue(Direction::Down, &buf[..len], Route::ToClient(client));
        }
    }
}

/// Logs a receive error. Errors such as `ConnectionRefused` (an ICMP report
/// about an earlier send) are harmless; for anything unexpected, pause briefly
/// so a persistent error cannot spin the loop.
async fn recv_error_pause(err: &io::Error, side: &str) {
    tracing::debug!(side, error = %err, "relay receive error");
    match err.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => {}
        _ => tokio::time::sleep(Duration::from_millis(1)).await,
    }
}

/// Sends one direction's datagrams as they fall due, then sleeps until the
/// next is due or an earlier one arrives.
async fn forward_loop(shared: Arc<Shared>, direction: Direction) {
    let way = shared.way(direction);
    let mut due = Vec::new();
    loop {
        let next = {
            let mut lane = lock(&way.lane);
            let now = std::time::Instant::now();
            while let Some(packet) = lane.pop_due(now) {
                due.push(packet);
            }
            lane.next_due()
        };
        for packet in due.drain(..) {
            send(&shared, packet).await;
        }
        match next {
            Some(at) => {
                let at = tokio::time::Instant::from_std(at);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = way.wake.notified() => {}
                }
            }
            None => way.wake.notified().await,
        }
    }
}

/// Sends one datagram that is due, unless the path is blackholed.
async fn send(shared: &Shared, packet: Packet) {
    if shared.blackhole.load(Ordering::Relaxed) {
        shared.count_drop();
        return;
    }
    let result = match &packet.route {
        Route::ToUpstream(session) => {
            let socket = session.socket();
            socket.send_to(&packet.data, shared.upstream).await
        }
        Route::ToClient(client) => shared.front.send_to(&packet.data, *client).await,
    };
    match result {
        Ok(_) => {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        Err(err) => {
            tracing::debug!(error = %err, "relay send failed");
            shared.count_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// Upper bound on any single wait in these tests.
    const WAIT: Duration = Duration::from_secs(3);

    async fn bind() -> UdpSocket {
        UdpSocket::bind(BIND_ADDR).await.expect("bind test socket")
    }

    /// Receives one datagram, or `None` after `within`.
    async fn recv_within(socket: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; RECV_BUF_LEN];
        match tokio::time::timeout(within, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, from))) => Some((buf[..len].to_vec(), from)),
            Ok(Err(err)) => panic!("test socket receive failed: {err}"),
            Err(_) => None,
        }
    }

    async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        recv_within(socket, WAIT)
            .await
            .expect("timed out waiting for a datagram")
    }

    /// An upstream that echoes every datagram back to its sender and reports
    /// each sender's address on the returned channel.
    struct Echo {
        addr: SocketAddr,
        sources: mpsc::UnboundedReceiver<SocketAddr>,
        task: JoinHandle<()>,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo() -> Echo {
        let socket = bind().await;
        let addr = socket.local_addr().expect("echo addr");
        let (tx, sources) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; RECV_BUF_LEN];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let _ = tx.send(from);
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Echo {
            addr,
            sources,
            task,
        }
    }

    /// Waits until the relay's stats equal `want`, failing after [`WAIT`].
    async fn wait_stats(relay: &Relay, want: RelayStats) {
        let deadline = Instant::now() + WAIT;
        while relay.stats() != want {
            assert!(
                Instant::now() < deadline,
                "stats {:?}, wanted {want:?}",
                relay.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the relay has accounted for `total` datagrams.
    async fn wait_total(relay: &Relay, total: u64) -> RelayStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = relay.stats();
            if stats.forwarded + stats.dropped >= total {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "stats {stats:?}, wanted {total} total"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn relay_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Relay>();
    }

    #[tokio::test]
    async fn forwards_both_directions() {
        let mut upstream = echo().await;
        let relay = Relay::start(upstream.addr).await.expect("start relay");
        assert_eq!(relay.upstream_addr(), upstream.addr);
        let client = bind().await;
        client
            .send_to(b"hello", relay.local_addr())
            .await
            .expect("send");
        let (reply, from) = recv(&client).await;
        assert_eq!(reply, b"hello");
        assert_eq!(from, relay.local_addr(), "reply comes from the relay");
        let seen = upstream.sources.recv().await.expect("source");
        assert_ne!(
            seen,
            client.local_addr().expect("addr"),
            "relay sits between"
        );
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 2,
                dropped: 0,
                ..RelayStats::default()
            },
        )
        .await;
    }

    #[tokio::test]
    async fn blackhole_drops_everything_and_counts_it() {
        // A manual upstream so the test can also send unsolicited datagrams.
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        let client = bind().await;

        // Establish the session so the upstream knows where to send.
        client
            .send_to(b"open", relay.local_addr())
            .await
            .expect("send");
        let (_, session_addr) = recv(&upstream).await;

        relay.set_blackhole(true);
        for _ in 0..10 {
            client
                .send_to(b"up", relay.local_addr())
                .await
                .expect("send");
            upstream.send_to(b"down", session_addr).await.expect("send");
        }
        assert!(recv_within(&upstream, Duration::from_millis(300))
            .await
            .is_none());
        assert!(recv_within(&client, Duration::from_millis(10))
            .await
            .is_none());
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 1,
                dropped: 20,
                ..RelayStats::default()
            },
        )
        .await;

        relay.set_blackhole(false);
        client
            .send_to(b"again", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&upstream).await.0, b"again");
        upstream.send_to(b"back", session_addr).await.expect("send");
        assert_eq!(recv(&client).await.0, b"back");
    }

    #[tokio::test]
    async fn blackhole_also_drops_queued_datagrams() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        let client = bind().await;
        relay.set_delay(Duration::from_millis(200));
        client
            .send_to(b"late", relay.local_addr())
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        relay.set_blackhole(true);
        assert!(recv_within(&upstream, Duration::from_millis(400))
            .await
            .is_none());
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 0,
                dropped: 1,
                ..RelayStats::default()
            },
        )
        .await;
    }

    #[tokio::test]
    async fn full_loss_drops_everything() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        relay.set_loss(1.0);
        let client = bind().await;
        for _ in 0..50 {
            client
                .send_to(b"x", relay.local_addr())
                .await
                .expect("send");
        }
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 0,
                dropped: 50,
                ..RelayStats::default()
            },
        )
        .await;
        assert!(recv_within(&upstream, Duration::from_millis(100))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn half_loss_drops_about_half() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        relay.set_loss(0.5);
        let client = bind().await;
        let total: u64 = 2000;
        for i in 1..=total {
            client
                .send_to(b"x", relay.local_addr())
                .await
                .expect("send");
            // Pace the sender so no datagram is lost in a kernel buffer, which
            // would go uncounted and skew the ratio.
            if i % 100 == 0 {
                wait_total(&relay, i).await;
            }
        }
        let stats = wait_total(&relay, total).await;
        assert_eq!(stats.forwarded + stats.dropped, total);
        let ratio = stats.dropped as f64 / total as f64;
        assert!((0.3..0.7).contains(&ratio), "dropped {ratio} of datagrams");
    }

    #[tokio::test]
    async fn loss_is_clamped() {
        let mut upstream = echo().await;
        let relay = Relay::start(upstream.addr).await.expect("start relay");
        let client = bind().await;
        relay.set_loss(7.0);
        for _ in 0..20 {
            client
                .send_to(b"x", relay.local_addr())
                .await
                .expect("send");
        }
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 0,
                dropped: 20,
                ..RelayStats::default()
            },
        )
        .await;
        for fraction in [f64::NAN, -3.0] {
            relay.set_loss(fraction);
            client
                .send_to(b"y", relay.local_addr())
                .await
                .expect("send");
            assert_eq!(recv(&client).await.0, b"y");
        }
        assert!(upstream.sources.try_recv().is_ok());
    }

    #[tokio::test]
    async fn delay_delays_both_directions_and_keeps_order() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        let delay = Duration::from_millis(200);
        relay.set_delay(delay);
        let client = bind().await;
        let count: u8 = 20;

        let sent_at = Instant::now();
        for i in 0..count {
            client
                .send_to(&[i], relay.local_addr())
                .await
                .expect("send");
        }
        let mut session_addr = None;
        for i in 0..count {
            let (data, from) = recv(&upstream).await;
            if i == 0 {
                assert!(
                    sent_at.elapsed() >= delay,
                    "arrived after {:?}",
                    sent_at.elapsed()
                );
            }
            assert_eq!(data, [i], "upstream direction keeps order");
            session_addr = Some(from);
        }
        // Delays overlap rather than add up: receiving kept going meanwhile.
        assert!(
            sent_at.elapsed() < delay * 5,
            "took {:?}",
            sent_at.elapsed()
        );

        let session_addr = session_addr.expect("session address");
        let replied_at = Instant::now();
        for i in 0..count {
            upstream.send_to(&[i], session_addr).await.expect("send");
        }
        for i in 0..count {
            let (data, _) = recv(&client).await;
            if i == 0 {
                assert!(
                    replied_at.elapsed() >= delay,
                    "arrived after {:?}",
                    replied_at.elapsed()
                );
            }
            assert_eq!(data, [i], "client direction keeps order");
        }
        assert!(
            replied_at.elapsed() < delay * 5,
            "took {:?}",
            replied_at.elapsed()
        );
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 2 * u64::from(count),
                dropped: 0,
                ..RelayStats::default()
            },
        )
        .await;
    }

    #[tokio::test]
    async fn conditions_apply_to_their_direction_only() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        let slow = Conditions {
            delay: Duration::from_millis(400),
            ..Conditions::default()
        };
        relay.set_conditions(Direction::Up, slow);
        assert_eq!(relay.conditions(Direction::Up), slow);
        assert_eq!(relay.conditions(Direction::Down), Conditions::default());
        let client = bind().await;
        let sent = Instant::now();
        client
            .send_to(b"up", relay.local_addr())
            .await
            .expect("send");
        let (_, session_addr) = recv(&upstream).await;
        assert!(sent.elapsed() >= slow.delay, "{:?}", sent.elapsed());
        let sent = Instant::now();
        upstream.send_to(b"down", session_addr).await.expect("send");
        assert_eq!(recv(&client).await.0, b"down");
        assert!(
            sent.elapsed() < slow.delay,
            "the other direction is not delayed: {:?}",
            sent.elapsed()
        );
    }

    #[tokio::test]
    async fn duplicated_datagrams_arrive_twice_and_are_counted() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        relay.set_conditions(
            Direction::Up,
            Conditions {
                duplicate: 1.0,
                ..Conditions::default()
            },
        );
        let client = bind().await;
        for i in 0..5u8 {
            client
                .send_to(&[i], relay.local_addr())
                .await
                .expect("send");
        }
        for i in 0..5u8 {
            assert_eq!(recv(&upstream).await.0, [i]);
            assert_eq!(recv(&upstream).await.0, [i], "copy right behind");
        }
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 10,
                dropped: 0,
                duplicated: 5,
                overflowed: 0,
            },
        )
        .await;
    }

    #[tokio::test]
    async fn reordering_and_jitter_deliver_everything_some_out_of_order() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        relay.set_path(Conditions {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            reorder: 0.5,
            reorder_gap: Duration::from_millis(100),
            ..Conditions::default()
        });
        let client = bind().await;
        let count: u8 = 40;
        for i in 0..count {
            client
                .send_to(&[i], relay.local_addr())
                .await
                .expect("send");
        }
        let mut got = Vec::new();
        for _ in 0..count {
            got.push(recv(&upstream).await.0[0]);
        }
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "each exactly once");
        assert_ne!(got, sorted, "some datagrams were overtaken");
        assert_eq!(relay.queued(Direction::Up), 0);
    }

    #[tokio::test]
    async fn two_clients_are_distinct_upstream() {
        let mut upstream = echo().await;
        let relay = Relay::start(upstream.addr).await.expect("start relay");
        let a = bind().await;
        let b = bind().await;

        a.send_to(b"from a", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&a).await.0, b"from a");
        b.send_to(b"from b", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&b).await.0, b"from b");
        let seen_a = upstream.sources.recv().await.expect("source a");
        let seen_b = upstream.sources.recv().await.expect("source b");
        assert_ne!(seen_a, seen_b);

        // Each client keeps its own mapping and only gets its own replies.
        a.send_to(b"a again", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&a).await.0, b"a again");
        assert_eq!(upstream.sources.recv().await, Some(seen_a));
        assert!(recv_within(&b, Duration::from_millis(100)).await.is_none());
    }

    #[tokio::test]
    async fn rebind_changes_source_port_and_replies_still_arrive() {
        let mut upstream = echo().await;
        let relay = Relay::start(upstream.addr).await.expect("start relay");
        let client = bind().await;

        client
            .send_to(b"before", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&client).await.0, b"before");
        let before = upstream.sources.recv().await.expect("source");

        relay.rebind().await.expect("rebind");
        client
            .send_to(b"after", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&client).await.0, b"after");
        let after = upstream.sources.recv().await.expect("source");
        assert_ne!(
            before.port(),
            after.port(),
            "upstream sees a new source port"
        );
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 4,
                dropped: 0,
                ..RelayStats::default()
            },
        )
        .await;
    }

    #[tokio::test]
    async fn rebind_without_clients_is_a_no_op() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        relay.rebind().await.expect("rebind");
        assert_eq!(relay.stats(), RelayStats::default());
    }

    #[tokio::test]
    async fn datagrams_from_strangers_are_dropped() {
        let upstream = bind().await;
        let relay = Relay::start(upstream.local_addr().expect("addr"))
            .await
            .expect("start relay");
        let client = bind().await;
        client
            .send_to(b"open", relay.local_addr())
            .await
            .expect("send");
        let (_, session_addr) = recv(&upstream).await;
        let stranger = bind().await;
        stranger
            .send_to(b"spoof", session_addr)
            .await
            .expect("send");
        assert!(recv_within(&client, Duration::from_millis(100))
            .await
            .is_none());
        wait_stats(
            &relay,
            RelayStats {
                forwarded: 1,
                dropped: 1,
                ..RelayStats::default()
            },
        )
        .await;
    }

    #[tokio::test]
    async fn survives_an_unreachable_upstream() {
        // Reserve a port, then close it so sends to it draw ICMP port
        // unreachable. Linux reports those on unconnected sockets only with
        // IP_RECVERR, but other platforms (e.g. Windows) surface them as
        // receive errors, which must not stop the relay.
        let port_holder = bind().await;
        let upstream_addr = port_holder.local_addr().expect("addr");
        drop(port_holder);
        let relay = Relay::start(upstream_addr).await.expect("start relay");
        let client = bind().await;
        for _ in 0..5 {
            client
                .send_to(b"void", relay.local_addr())
                .await
                .expect("send");
        }
        wait_total(&relay, 5).await;
        // Let the ICMP errors reach the session socket.
        tokio::time::sleep(Duration::from_millis(50)).await;

        // The upstream comes back on the same port; the relay still works.
        let upstream = UdpSocket::bind(upstream_addr)
            .await
            .expect("rebind upstream port");
        client
            .send_to(b"hello", relay.local_addr())
            .await
            .expect("send");
        let (data, session_addr) = recv(&upstream).await;
        assert_eq!(data, b"hello");
        upstream.send_to(b"back", session_addr).await.expect("send");
        assert_eq!(recv(&client).await.0, b"back");
    }

    #[tokio::test]
    async fn drop_stops_all_tasks() {
        let mut upstream = echo().await;
        let relay = Relay::start(upstream.addr).await.expect("start relay");
        let client = bind().await;
        client
            .send_to(b"hi", relay.local_addr())
            .await
            .expect("send");
        assert_eq!(recv(&client).await.0, b"hi");
        relay.rebind().await.expect("rebind");
        assert!(upstream.sources.recv().await.is_some());

        let relay_addr = relay.local_addr();
        let shared = Arc::downgrade(&relay.shared);
        drop(relay);
        // Every task holds the shared state; it is freed once all are gone.
        let deadline = Instant::now() + WAIT;
        while shared.upgrade().is_some() {
            assert!(Instant::now() < deadline, "relay tasks still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // And its sockets are closed, so nothing comes back any more.
        client.send_to(b"gone", relay_addr).await.ok();
        assert!(recv_within(&client, Duration::from_millis(100))
            .await
            .is_none());
    }
}
