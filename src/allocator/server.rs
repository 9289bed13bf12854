//! The allocator's listener: handshakes, Hello, admission.
//!
//! Everything before admission is bounded: at most
//! `max_pending_handshakes` connections are being set up at once (more are
//! refused), each gets `hello_timeout` to complete TLS and send its Hello, and
//! the Hello frame may be at most [`MAX_PRE_ADMISSION_FRAME`] bytes. A hostile
//! peer therefore costs a bounded amount of memory and time, and never
//! touches an admitted worker's state.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::connection::WorkerSession;
use super::events::AllocEvent;
use super::Shared;
use crate::config::MAX_PRE_ADMISSION_FRAME;
use crate::transport::{FramedRecv, FramedSend, StreamError};
use crate::wire::{close, WorkerToAllocator};

/// Accepts connections until the endpoint is closed.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let pending = Arc::new(Semaphore::new(
        shared.config.transport.max_pending_handshakes,
    ));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(
                "refusing connection from {}: too many handshakes in progress",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let admitted = admit(&shared, incoming).await;
            drop(permit);
            match admitted {
                Ok(session) => session.run().await,
                Err(reason) => shared.connection_refused(addr, reason),
            }
        });
    }
}

/// Completes the handshake and admits the peer, or says why not.
///
/// Every refusal after the handshake closes the connection with a code and
/// the same reason, so the worker can exit with the right code and message.
async fn admit(shared: &Arc<Shared>, incoming: quinn::Incoming) -> Result<WorkerSession, String> {
    let timeout = shared.config.transport.hello_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let addr: SocketAddr = incoming.remote_address();
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(format!("handshake failed: {e}")),
        Err(_) => return Err(format!("handshake not completed within {timeout:?}")),
    };
    let refuse = |code: quinn::VarInt, reason: String| -> Result<WorkerSession, String> {
        conn.close(code, &close::reason_bytes(&reason));
        Err(reason)
    };
    if conn.max_datagram_size().is_none() {
        return refuse(
            close::PROTOCOL,
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
                format!("no Hello within {timeout:?} of the handshake"),
            )
        }
        Ok(Err(reason)) => return Err(reason),
        Ok(Ok(parts)) => parts,
    };
    let hello = match first {
        Ok(Some(WorkerToAllocator::Hello(h))) => h,
        Ok(Some(other)) => {
            return refuse(
                close::PROTOCOL,
                format!("first frame must be Hello, got {}", frame_name(&other)),
            )
        }
        Ok(None) => return refuse(close::PROTOCOL, "control stream ended before Hello".into()),
        Err(StreamError::Read(e)) => {
            return Err(format!("control stream failed before Hello: {e}"))
        }
        Err(e) => return refuse(close::PROTOCOL, format!("invalid Hello: {e}")),
    };
    let admitted = shared.lock_admission().admit(&hello);
    let procs = match admitted {
        Ok(procs) => procs,
        Err(rejection) => return refuse(close::REJECTED, rejection.to_string()),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    shared.worker_joined(hello.index, tx);
    tracing::info!(
        "worker {} admitted (pid {} on {}, from {addr})",
        hello.index,
        hello.pid,
        hello.host
    );
    shared.emit(AllocEvent::WorkerJoined {
        index: hello.index,
        pid: hello.pid,
        host: hello.host.clone(),
        addr,
    });
    Ok(WorkerSession {
        shared: shared.clone(),
        index: hello.index,
        conn,
        control_send: FramedSend::new(send, MAX_PRE_ADMISSION_FRAME),
        control_recv: recv,
        commands: rx,
        initial_procs: procs,
    })
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
