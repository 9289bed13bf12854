//! A worker in the test process, driven by hand: it holds the mesh's valid
//! worker certificate and a genuine ticket, and speaks the protocol with the
//! wire types, so that it can also speak it wrongly (hostile tests).

use std::collections::HashMap;
use std::time::Duration;

use quicmesh::actor::builtin::{Echo, EchoMsg};
use quicmesh::actor::PortRef;
use quicmesh::allocator::{AllocEvent, ProcState};
use quicmesh::config::{self, Limits};
use quicmesh::testkit::transport::{self, FramedRecv};
use quicmesh::testkit::wire::routes::RouteTable;
use quicmesh::testkit::wire::{
    close, codec, AllocatorToWorker, Dest, Envelope, Heartbeat, Hello, MailboxFrame, MailboxOpen,
    StreamOpen, WorkerToAllocator, PROTOCOL_VERSION,
};
use quicmesh::testkit::MAX_PRE_ADMISSION_FRAME;
use quicmesh::{ActorRef, ProcId};

use super::{TestMesh, SOON};

/// How often the fake worker sends a heartbeat datagram (the real worker's default).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// `name`'s value in a ticket's environment.
pub fn var(env: &[(&'static str, String)], name: &str) -> String {
    env.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} missing from the ticket"))
}

/// One proc's mailbox stream, as the fake worker holds it.
pub struct Mailbox {
    pub send: quinn::SendStream,
    pub recv: FramedRecv,
    /// Id of the next envelope sent from this proc.
    pub next_id: u64,
    /// Envelopes received from the allocator on this stream (for acks).
    pub received: u64,
    /// The routes the allocator defined on its direction of the stream.
    pub routes: RouteTable,
}

impl Mailbox {
    /// The next frame from the allocator with routes applied: definitions
    /// are kept, routed envelopes come back as `MailboxFrame::Envelope`.
    pub async fn next_frame(&mut self) -> Result<Option<MailboxFrame>, String> {
        loop {
            let Some(frame) = self
                .recv
                .next::<MailboxFrame>()
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            if let Some(frame) = self.routes.resolve(frame).map_err(|e| e.to_string())? {
                return Ok(Some(frame));
            }
        }
    }
}

/// An admitted worker in this process, driven by hand.
pub struct FakeWorker {
    pub index: u32,
    pub procs: Vec<ProcId>,
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub control_send: quinn::SendStream,
    pub control_recv: FramedRecv,
    pub max_frame: u32,
    pub mailboxes: HashMap<ProcId, Mailbox>,
    pub heartbeats: tokio::task::JoinHandle<()>,
}

impl FakeWorker {
    /// Reserves a ticket for `procs` procs and joins with it: Hello, then
    /// Welcome and one StartProc per proc. Heartbeats flow from the start.
    pub async fn join(mesh: &TestMesh, procs: u32) -> FakeWorker {
        let ticket = mesh.alloc.reserve(procs);
        let index: u32 = var(&ticket.env, config::ENV_INDEX)
            .parse()
            .expect("QUICMESH_INDEX of the ticket is a number");
        assert_eq!(
            index, ticket.index,
            "ticket index and QUICMESH_INDEX differ"
        );
        let token = var(&ticket.env, config::ENV_TOKEN);

        let roots = quicmesh::testkit::tls::load_roots(&mesh.certs.ca_cert).expect("load mesh CA");
        let identity =
            quicmesh::testkit::tls::load_identity(&mesh.certs.worker_cert, &mesh.certs.worker_key)
                .expect("load worker identity");
        let tls_config =
            quicmesh::testkit::tls::client_config(roots, identity).expect("client TLS config");
        let addr = mesh.alloc.local_addr();
        let limits = Limits::default();
        let endpoint = transport::client_endpoint(tls_config, addr, &limits, &Default::default())
            .expect("client endpoint");
        let conn = transport::connect(&endpoint, addr, "localhost", Duration::from_secs(10))
            .await
            .expect("handshake with the valid worker certificate");

        // Beats before admission are simply read once the session starts.
        let heartbeats = {
            let conn = conn.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
                for seq in 0u64.. {
                    ticker.tick().await;
                    let beat = Heartbeat {
                        seq,
                        sent_at_micros: start.elapsed().as_micros() as u64,
                    };
                    let bytes = codec::encode(&beat).expect("encode heartbeat");
                    if conn.send_datagram(bytes.into()).is_err() {
                        break;
                    }
                }
            })
        };

        let (mut control_send, control_recv) = conn.open_bi().await.expect("open control stream");
        let hello = WorkerToAllocator::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            index,
            token,
            pid: std::process::id(),
            host: "fake".into(),
        });
        let hello = codec::frame(&hello, MAX_PRE_ADMISSION_FRAME).expect("encode Hello");
        control_send.write_all(&hello).await.expect("send Hello");

        let mut fake = FakeWorker {
            index,
            procs: Vec::new(),
            endpoint,
            conn,
            control_send,
            control_recv: FramedRecv::new(control_recv, limits.max_frame),
            max_frame: limits.max_frame,
            mailboxes: HashMap::new(),
            heartbeats,
        };
        match fake.next_control().await {
            AllocatorToWorker::Welcome(welcome) => {
                transport::endpoint::fit_receive_window(
                    &fake.conn,
                    welcome.limits.max_procs_per_worker as usize,
                    &Default::default(),
                );
                fake.max_frame = welcome.limits.max_frame;
                fake.control_recv.set_max_frame(welcome.limits.max_frame);
            }
            other => panic!("fake worker {index}: expected Welcome, got {other:?}"),
        }
        while fake.procs.len() < procs as usize {
            match fake.next_control().await {
                AllocatorToWorker::StartProc { proc_id } => fake.procs.push(proc_id),
                other => panic!("fake worker {index}: expected StartProc, got {other:?}"),
            }
        }
        eprintln!("fake worker {index} joined with procs {:?}", fake.procs);
        fake
    }

    /// The `i`-th proc the allocator started on this worker.
    pub fn proc(&self, i: usize) -> ProcId {
        self.procs
            .get(i)
            .cloned()
            .unwrap_or_else(|| panic!("fake worker {} has no proc #{i}", self.index))
    }

    /// The next frame on the control stream (panics after `SOON`).
    pub async fn next_control(&mut self) -> AllocatorToWorker {
        match tokio::time::timeout(SOON, self.control_recv.next::<AllocatorToWorker>()).await {
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => panic!("fake worker {}: control stream ended", self.index),
            Ok(Err(e)) => panic!("fake worker {}: control stream failed: {e}", self.index),
            Err(_) => panic!(
                "fake worker {}: no control frame within {SOON:?}",
                self.index
            ),
        }
    }

    /// Reads control frames until one matches `pred`.
    pub async fn wait_control(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&AllocatorToWorker) -> bool,
    ) -> AllocatorToWorker {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.next_control())
                .await
                .unwrap_or_else(|_| {
                    panic!("fake worker {}: no {what} within {SOON:?}", self.index)
                });
            eprintln!("fake worker {}: control frame {msg:?}", self.index);
            if pred(&msg) {
                return msg;
            }
        }
    }

    /// Writes one frame on the control stream.
    pub async fn send_control(&mut self, msg: &WorkerToAllocator) {
        let bytes = codec::frame(msg, self.max_frame).expect("encode control frame");
        self.control_send
            .write_all(&bytes)
            .await
            .expect("write on the control stream");
    }

    /// Reports `proc_id` as started, as a real worker does once its mailbox stream is open.
    pub async fn started(&mut self, proc_id: &ProcId) {
        self.send_control(&WorkerToAllocator::StartedProc {
            proc_id: proc_id.clone(),
            agent: format!("fake:{}", std::process::id()),
        })
        .await;
    }

    /// Opens a bidi stream and writes `bytes` on it (which need not be a MailboxOpen).
    pub async fn open_raw_stream(&self, bytes: &[u8]) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.conn.open_bi().await.expect("open a bidi stream");
        send.write_all(bytes)
            .await
            .expect("write the first bytes of a stream");
        (send, recv)
    }

    /// Opens a stream whose first frame is `MailboxOpen { proc_id }`, kept as `proc_id`'s mailbox.
    pub async fn open_mailbox(&mut self, proc_id: &ProcId) {
        let open = MailboxOpen {
            proc_id: proc_id.clone(),
        };
        let bytes =
            codec::frame(&StreamOpen::Mailbox(open), self.max_frame).expect("encode MailboxOpen");
        let (send, recv) = self.open_raw_stream(&bytes).await;
        let mailbox = Mailbox {
            send,
            recv: FramedRecv::new(recv, self.max_frame),
            next_id: 0,
            received: 0,
            routes: RouteTable::default(),
        };
        assert!(
            self.mailboxes.insert(proc_id.clone(), mailbox).is_none(),
            "fake worker opened two mailboxes for {proc_id}"
        );
    }

    /// Opens `proc_id`'s mailbox stream, reports it started, and waits until
    /// the allocator reports it running.
    pub async fn attach(&mut self, mesh: &mut TestMesh, proc_id: &ProcId) {
        self.open_mailbox(proc_id).await;
        self.started(proc_id).await;
        let worker = self.index;
        mesh.ensure(SOON, &format!("{proc_id} running"), |e| {
            matches!(e, AllocEvent::Proc { proc_id: p, worker: w, state: ProcState::Running }
                if p == proc_id && *w == worker)
        })
        .await;
    }

    pub fn mailbox(&mut self, proc_id: &ProcId) -> &mut Mailbox {
        let index = self.index;
        self.mailboxes
            .get_mut(proc_id)
            .unwrap_or_else(|| panic!("fake worker {index} has no mailbox stream for {proc_id}"))
    }

    /// The next frame the allocator sent on `proc_id`'s mailbox stream
    /// (panics after `SOON`); counts envelopes, for acks.
    pub async fn next_mailbox_frame(&mut self, proc_id: &ProcId) -> MailboxFrame {
        let mailbox = self.mailbox(proc_id);
        let frame = match tokio::time::timeout(SOON, mailbox.next_frame()).await {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => panic!("mailbox stream of {proc_id} ended"),
            Ok(Err(e)) => panic!("mailbox stream of {proc_id} failed: {e}"),
            Err(_) => panic!("no frame on the stream of {proc_id} within {SOON:?}"),
        };
        if matches!(frame, MailboxFrame::Envelope(_)) {
            mailbox.received += 1;
        }
        frame
    }

    /// Writes raw bytes on `proc_id`'s mailbox stream.
    pub async fn send_raw(&mut self, proc_id: &ProcId, bytes: &[u8]) {
        self.mailbox(proc_id)
            .send
            .write_all(bytes)
            .await
            .expect("write on a mailbox stream");
    }

    /// Writes one frame on `proc_id`'s mailbox stream.
    pub async fn send_frame(&mut self, proc_id: &ProcId, frame: &MailboxFrame) {
        let bytes = codec::frame(frame, self.max_frame).expect("encode mailbox frame");
        self.send_raw(proc_id, &bytes).await;
    }

    /// Asks `echo` to echo `bytes` from an actor of `proc_id`, entirely over
    /// `proc_id`'s mailbox stream, acknowledges the reply and returns it.
    pub async fn echo_via(
        &mut self,
        proc_id: &ProcId,
        echo: &ActorRef<Echo>,
        bytes: &[u8],
    ) -> Vec<u8> {
        let me = proc_id.actor("fake", 0);
        let id = {
            let mailbox = self.mailbox(proc_id);
            mailbox.next_id += 1;
            mailbox.next_id - 1
        };
        let port = me.port(1000 + id);
        let msg = EchoMsg::Echo(bytes.to_vec(), PortRef::attest(port.clone()));
        let env = Envelope {
            id,
            from: me,
            to: Dest::Actor(echo.id().clone()),
            return_port: None,
            payload: codec::encode(&msg).expect("encode EchoMsg"),
        };
        self.send_frame(proc_id, &MailboxFrame::Envelope(env)).await;

        let deadline = tokio::time::Instant::now() + SOON;
        let mailbox = self.mailbox(proc_id);
        loop {
            let frame = match tokio::time::timeout_at(deadline, mailbox.next_frame()).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => panic!("mailbox stream of {proc_id} ended before the echo reply"),
                Ok(Err(e)) => {
                    panic!("mailbox stream of {proc_id} failed before the echo reply: {e}")
                }
                Err(_) => panic!("no echo reply on the stream of {proc_id} within {SOON:?}"),
            };
            match frame {
                MailboxFrame::Ack { .. } => {}
                MailboxFrame::Undeliverable(u) => {
                    panic!("echo request from {proc_id} came back: {}", u.reason)
                }
                MailboxFrame::Refused { seq, reason } => {
                    panic!("the allocator sent a refusal ({seq}: {reason}) to {proc_id}")
                }
                MailboxFrame::Route { .. } | MailboxFrame::Routed(_) => {
                    panic!("next_frame returned a route frame unresolved")
                }
                MailboxFrame::Envelope(env) => {
                    mailbox.received += 1;
                    let processed = mailbox.received;
                    assert_eq!(
                        env.to,
                        Dest::Port(port.clone()),
                        "unexpected envelope on the stream of {proc_id}"
                    );
                    let reply: Vec<u8> = codec::decode(&env.payload).expect("decode echo reply");
                    self.send_frame(proc_id, &MailboxFrame::Ack { processed })
                        .await;
                    return reply;
                }
            }
        }
    }

    /// Waits until the allocator stops reading `proc_id`'s stream; returns the code.
    pub async fn wait_stopped(&mut self, proc_id: &ProcId) -> Option<quinn::VarInt> {
        let stopped = self.mailbox(proc_id).send.stopped();
        tokio::time::timeout(SOON, stopped)
            .await
            .unwrap_or_else(|_| panic!("the allocator did not stop the stream of {proc_id}"))
            .unwrap_or_else(|e| panic!("stream of {proc_id}: {e}"))
    }

    /// Leaves in order: finishes every mailbox stream, sends `Leaving` and
    /// waits for the allocator to close the connection.
    pub async fn leave(mut self) {
        for mailbox in self.mailboxes.values_mut() {
            let _ = mailbox.send.finish();
        }
        self.send_control(&WorkerToAllocator::Leaving {
            code: 0,
            reason: "fake worker done".into(),
        })
        .await;
        let _ = self.control_send.finish();
        let closed = tokio::time::timeout(SOON, self.conn.closed())
            .await
            .expect("the allocator did not close the fake worker's connection after Leaving");
        eprintln!("fake worker {}: connection closed: {closed}", self.index);
        assert!(
            !matches!(closed, quinn::ConnectionError::LocallyClosed),
            "the fake worker closed its connection itself"
        );
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.heartbeats.abort();
        self.conn.close(close::NORMAL, b"fake worker gone");
        self.endpoint.close(close::NORMAL, b"fake worker gone");
    }
}
