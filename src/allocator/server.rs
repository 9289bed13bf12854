//! The allocator's listener: address validation, handshakes, Hello, admission.
//!
//! Everything before admission is bounded, in this order:
//!
//! 1. **Address validation.** A connection attempt from an address that has
//!    not proved it can receive packets there gets a QUIC Retry and nothing
//!    else: no state is kept, no TLS work is done. A stranger who sends
//!    Initial packets (from spoofed or throw-away addresses) and never
//!    answers therefore costs one small Retry packet each and holds no
//!    handshake slot. quinn's own queue of attempts not yet looked at is
//!    bounded too (see [`crate::transport::endpoint`]).
//! 2. **Handshake slots.** A validated attempt needs a slot
//!    ([`HandshakeSlots`]): at most `max_pending_handshakes` at once, and at
//!    most a quarter of them per source. Without one it is refused (QUIC
//!    `CONNECTION_REFUSED`); workers retry with backoff, so a burst of workers
//!    larger than the cap, or many behind one address, all get in.
//! 3. **TLS deadline.** The slot holder has `tls_timeout` to complete TLS
//!    (it is still a stranger then), and the connection can hold at most
//!    [`crate::config::PRE_ADMISSION_RECEIVE_WINDOW`] unread bytes on one
//!    stream.
//! 4. **Hello deadline.** A peer that completed TLS holds a certificate of the
//!    mesh CA; it has `hello_timeout` more to send its Hello, of at most
//!    [`MAX_PRE_ADMISSION_FRAME`] bytes.
//!
//! So what a validated peer that then goes silent costs is one slot of its
//! source's share for at most `tls_timeout + hello_timeout`, and a few KiB.
//! Only after admission are the connection's stream and window limits raised
//! ([`crate::transport::endpoint::open_admitted`]). A hostile peer never
//! touches an admitted worker's state.
//!
//! Why refusals are not closed with [`close::BUSY`] and a reason: QUIC lets an
//! application close carry its code and reason only once the handshake is
//! done, and doing the handshake is exactly the work a refusal must avoid.
//! Before it, the only answer is the transport's `CONNECTION_REFUSED`, which a
//! worker reads as "busy" (and which also comes from quinn itself when its
//! queue of attempts is full). The reason is counted and reported like every
//! other refusal, at a limited rate (`Allocator::refusals`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::connection::WorkerSession;
use super::events::{AllocEvent, RefusalKind};
use super::handshakes::{Busy, HandshakeSlots, Source};
use super::Shared;
use crate::config::MAX_PRE_ADMISSION_FRAME;
use crate::sync::lock;
use crate::tls::CertIdentity;
use crate::transport::endpoint::open_admitted;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, WorkerToAllocator};
use rustls_pki_types::CertificateDer;

/// Accepts connections until the endpoint is closed.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let transport = &shared.config.transport;
    let slots = Arc::new(Mutex::new(HandshakeSlots::new(
        transport.max_pending_handshakes,
        transport.max_pending_per_source(),
    )));
    while let Some(incoming) = endpoint.accept().await {
        if !incoming.remote_address_validated() {
            // Stateless: the peer must echo the Retry token from this address.
            if let Err(e) = incoming.retry() {
                // Unreachable by quinn's contract (unvalidated implies retry
                // is allowed); refusing keeps no state either.
                e.into_incoming().refuse();
            }
            continue;
        }
        let addr = incoming.remote_address();
        let claim = match Claim::take(&slots, Source::of(addr.ip())) {
            Ok(claim) => claim,
            Err(busy) => {
                // Counted, and reported at a limited rate (see `Shared::connection_refused`).
                shared.connection_refused(addr, RefusalKind::Busy, format!("busy: {busy}"));
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let admitted = admit(&shared, incoming).await;
            drop(claim);
            match admitted {
                Ok(session) => session.run().await,
                Err((kind, reason)) => shared.connection_refused(addr, kind, reason),
            }
        });
    }
}

/// A handshake slot, given back when dropped (whatever way the handshake ends).
struct Claim {
    slots: Arc<Mutex<HandshakeSlots>>,
    source: Source,
}

impl Claim {
    fn take(slots: &Arc<Mutex<HandshakeSlots>>, source: Source) -> Result<Claim, Busy> {
        lock(slots).claim(source)?;
        Ok(Claim {
            slots: slots.clone(),
            source,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.slots).release(self.source);
    }
}

/// Completes the handshake and admits the peer, or says why not.
///
/// Every refusal after the handshake closes the connection with a code and
/// the same reason, so the worker can exit with the right code and message.
async fn admit(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
) -> Result<WorkerSession, (RefusalKind, String)> {
    let tls_timeout = shared.config.transport.tls_timeout;
    let addr: SocketAddr = incoming.remote_address();
    // Dropping the handshake at the deadline closes it.
    let conn = match tokio::time::timeout(tls_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err((RefusalKind::TlsFailed, format!("handshake failed: {e}"))),
        Err(_) => {
            return Err((
                RefusalKind::TlsTimeout,
                format!("TLS handshake not completed within {tls_timeout:?}"),
            ))
        }
    };
    let timeout = shared.config.transport.hello_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let refuse = |code: quinn::VarInt,
                  kind: RefusalKind,
                  reason: String|
     -> Result<WorkerSession, (RefusalKind, String)> {
        conn.close(code, &close::reason_bytes(&reason));
        Err((kind, reason))
    };
    // TLS required a client certificate, so there is one; say so if not.
    let Some(peer_cert) = peer_certificate(&conn) else {
        return refuse(
            close::PROTOCOL,
            RefusalKind::BadHello,
            "no client certificate".into(),
        );
    };
    let identity = CertIdentity::of(&peer_cert);
    // A handshake that began before a reload ran with the old revocation
    // list (quinn keeps an attempt's configuration): check the current one.
    if shared.revocations().is_revoked(&peer_cert) {
        return refuse(
            close::REVOKED,
            RefusalKind::Revoked,
            format!("certificate revoked: {identity}"),
        );
    }
    if conn.max_datagram_size().is_none() {
        return refuse(
            close::PROTOCOL,
            RefusalKind::NoDatagrams,
            "peer does not accept datagrams; heartbeats impossible".into(),
        );
    }
    let hello = tokio::time::timeout_at(deadline, async {
        let (send, recv) = conn
            .accept_bi()
            .await
            .map_err(|e| format!("connection lost before Hello: {e}"))?;
        let mut recv = FramedRecv::new(recv, MAX_PRE_ADMISSION_FRAME);
        let first = recv.next::<WorkerToAllocator>().await;
        Ok::<_, String>((send, recv, first))
    })
    .await;
    let (send, recv, first) = match hello {
        Err(_) => {
            return refuse(
                close::HELLO_TIMEOUT,
                RefusalKind::HelloTimeout,
                format!("no Hello within {timeout:?} of the handshake"),
            )
        }
        Ok(Err(reason)) => return Err((RefusalKind::LostBeforeHello, reason)),
        Ok(Ok(parts)) => parts,
    };
    let hello = match first {
        Ok(Some(WorkerToAllocator::Hello(h))) => h,
        Ok(Some(other)) => {
            return refuse(
                close::PROTOCOL,
                RefusalKind::BadHello,
                format!("first frame must be Hello, got {}", frame_name(&other)),
            )
        }
        Ok(None) => {
            return refuse(
                close::PROTOCOL,
                RefusalKind::BadHello,
                "control stream ended before Hello".into(),
            )
        }
        Err(StreamError::Read(e)) => {
            return Err((
                RefusalKind::LostBeforeHello,
                format!("control stream failed before Hello: {e}"),
            ))
        }
        Err(e) => {
            return refuse(
                close::PROTOCOL,
                RefusalKind::BadHello,
                format!("invalid Hello: {e}"),
            )
        }
    };
    let admitted = shared.lock_admission().admit(&hello);
    let procs = match admitted {
        Ok(procs) => procs,
        Err(rejection) => return refuse(close::REJECTED, rejection.kind(), rejection.to_string()),
    };
    // Admitted: its procs may now open their streams and fill their windows.
    open_admitted(
        &conn,
        &shared.config.limits,
        procs.len(),
        &shared.config.link,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    shared.worker_joined(hello.index, tx.clone());
    shared.set_peer_cert(hello.index, peer_cert.clone());
    crate::sync::lock(&shared.hosts)
        .insert(hello.index, crate::line_cut::cut_line(&hello.host, 64));
    tracing::info!(
        "worker {} admitted (pid {} on {}, from {addr}, certificate {identity})",
        hello.index,
        hello.pid,
        hello.host
    );
    shared.emit(AllocEvent::WorkerJoined {
        index: hello.index,
        pid: hello.pid,
        host: hello.host.clone(),
        addr,
        identity: identity.clone(),
    });
    // A list loaded between the check above and the registration just now
    // did not see this worker: check again (see `Shared::set_revocations`).
    if shared.revocations().is_revoked(&peer_cert) {
        let _ = tx.send(super::session::WorkerCommand::Revoked(identity.to_string()));
    }
    Ok(WorkerSession {
        shared: shared.clone(),
        index: hello.index,
        host: hello.host.clone(),
        conn,
        control_send: FramedSend::new(send, MAX_PRE_ADMISSION_FRAME),
        control_recv: recv,
        commands: rx,
        initial_procs: procs,
    })
}

/// The leaf certificate the peer presented in the handshake.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.into_iter().next()
}

/// The variant name of a frame, for error messages (never its contents: tokens are secret).
fn frame_name(msg: &WorkerToAllocator) -> &'static str {
    match msg {
        WorkerToAllocator::Hello(_) => "Hello",
        WorkerToAllocator::StartedProc { .. } => "StartedProc",
        WorkerToAllocator::ProcFailed { .. } => "ProcFailed",
        WorkerToAllocator::ProcStopped { .. } => "ProcStopped",
        WorkerToAllocator::Leaving { .. } => "Leaving",
        WorkerToAllocator::ActorFailed { .. } => "ActorFailed",
    }
}
