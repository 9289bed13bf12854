//! Length-prefixed frames over QUIC streams.
//!
//! [`FramedRecv`] feeds what a stream delivers to a [`FrameDecoder`] and
//! decodes each complete frame; [`FramedSend`] encodes into a reused buffer
//! and writes it. All decoding goes through [`crate::wire::codec`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::codec::{self, CodecError, FrameDecoder};

/// A frame could not be read from or written to a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading failed: the stream was reset or the connection lost.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed: the peer stopped the stream or the connection was lost.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The bytes are not a valid frame of the expected message.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// A mailbox frame used a stream-local route it may not use.
    #[error("{0}")]
    Route(#[from] crate::wire::routes::RouteError),
}

impl StreamError {
    /// Whether the peer stopped reading with code 0: it is done with the
    /// stream in order (e.g. a proc stopping), not failing.
    pub fn is_stopped_normally(&self) -> bool {
        matches!(self, StreamError::Write(quinn::WriteError::Stopped(code)) if code.into_inner() == 0)
    }

    /// Whether the peer broke the protocol (as opposed to the transport failing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            StreamError::Codec(_) | StreamError::Truncated(_) | StreamError::Route(_)
        )
    }
}

/// The receiving half of a stream, read one message at a time.
#[derive(Debug)]
pub struct FramedRecv {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
}

impl FramedRecv {
    /// Reads frames of at most `max_frame` bytes from `recv`.
    pub fn new(recv: quinn::RecvStream, max_frame: u32) -> Self {
        FramedRecv {
            recv,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// Changes the frame limit (raised once a peer is admitted).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.decoder.set_max_frame(max_frame);
    }

    /// Whether a whole frame is already buffered (the next read will not wait).
    pub fn frame_ready(&self) -> bool {
        self.decoder.has_frame()
    }

    /// Reads from the stream until `take` gets something out of the
    /// decoder; `None` when the peer finished the stream cleanly.
    ///
    /// Errors: those of `take`, [`StreamError::Truncated`] if the stream ends
    /// mid-frame, [`StreamError::Read`] if the transport fails.
    async fn read_until<R>(
        &mut self,
        mut take: impl FnMut(&mut FrameDecoder) -> Result<Option<R>, CodecError>,
    ) -> Result<Option<R>, StreamError> {
        loop {
            if let Some(got) = take(&mut self.decoder)? {
                return Ok(Some(got));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => return Err(StreamError::Truncated(self.decoder.buffered())),
            }
        }
    }

    /// Reads the next frame body; `None` when the peer finished the stream cleanly.
    ///
    /// Errors: [`StreamError::Codec`] for an oversized frame (detected from
    /// its prefix alone), [`StreamError::Truncated`] if the stream ends
    /// mid-frame, [`StreamError::Read`] if the transport fails.
    #[cfg(any(test, feature = "testkit"))]
    pub async fn next_frame(&mut self) -> Result<Option<bytes::Bytes>, StreamError> {
        self.read_until(FrameDecoder::next_frame).await
    }

    /// Reads and decodes the next message; `None` at a clean end of stream.
    ///
    /// Errors: as [`FramedRecv::next_frame`], plus [`StreamError::Codec`] when
    /// the body is not a `T`.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        self.read_until(FrameDecoder::decode_next).await
    }

    /// Reads and decodes the next frame of enum `T` as
    /// [`codec::decode_variant`] does: variant number `hot` as its content
    /// `V` alone, any other as a boxed `T`. `None` at a clean end of stream.
    ///
    /// Errors: as [`FramedRecv::next`].
    pub async fn next_variant<V: DeserializeOwned, T: DeserializeOwned>(
        &mut self,
        hot: u32,
    ) -> Result<Option<codec::Variant<V, T>>, StreamError> {
        self.read_until(|decoder| decoder.decode_next_variant(hot))
            .await
    }

    /// Stops the stream, telling the peer with `code` that no more will be read.
    pub fn stop(&mut self, code: quinn::VarInt) {
        let _ = self.recv.stop(code);
    }
}

/// The sending half of a stream, written one message at a time.
#[derive(Debug)]
pub struct FramedSend {
    send: quinn::SendStream,
    max_frame: u32,
    buf: Vec<u8>,
    /// Bytes written so far, shared with whoever watches the stream's progress.
    written: Option<Arc<AtomicU64>>,
    /// Finished or reset explicitly (else dropping resets the stream).
    ended: bool,
}

impl FramedSend {
    /// Writes frames of at most `max_frame` bytes to `send`.
    pub fn new(send: quinn::SendStream, max_frame: u32) -> Self {
        FramedSend {
            send,
            max_frame,
            buf: Vec::new(),
            written: None,
            ended: false,
        }
    }

    /// Counts every byte written from now on in `counter` (read by another
    /// task to tell a peer that takes data from one that does not).
    pub fn count_written(&mut self, counter: Arc<AtomicU64>) {
        self.written = Some(counter);
    }

    /// Changes the frame limit.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// Sets the stream's scheduling priority (higher is sent first).
    pub fn set_priority(&self, priority: i32) {
        let _ = self.send.set_priority(priority);
    }

    /// Encodes and writes one message.
    ///
    /// Errors: [`StreamError::Codec`] if the message exceeds the frame limit
    /// (nothing is written), [`StreamError::Write`] if the stream is gone.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), StreamError> {
        self.flush().await?;
        codec::encode_frame(msg, self.max_frame, &mut self.buf)?;
        self.flush().await
    }

    /// Encodes one message into the write buffer without writing it (see [`FramedSend::flush`]).
    ///
    /// Batching several frames into one write lets QUIC pack small messages
    /// into one packet. Errors: [`CodecError::TooLarge`] (nothing buffered).
    pub fn buffer<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        codec::encode_frame(msg, self.max_frame, &mut self.buf)
    }

    /// Bytes buffered and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything buffered.
    ///
    /// Errors: [`StreamError::Write`] if the stream is gone (what was not
    /// written stays buffered).
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        // Written piece by piece so that progress is counted as it happens:
        // one large frame on a slow link is still progress.
        let mut done = 0;
        while done < self.buf.len() {
            match self.send.write(&self.buf[done..]).await {
                Ok(n) => {
                    done += n;
                    if let Some(written) = &self.written {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.buf.drain(..done);
                    return Err(e.into());
                }
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Abandons the stream with `code`: unsent data is discarded.
    pub fn reset(&mut self, code: quinn::VarInt) {
        self.ended = true;
        let _ = self.send.reset(code);
    }

    /// Waits until the peer has received everything (after [`FramedSend::finish`]) or stopped the stream.
    pub async fn stopped(&mut self) {
        let _ = self.send.stopped().await;
    }

    /// Finishes the stream: the peer reads a clean end after the last frame.
    pub fn finish(&mut self) {
        self.ended = true;
        let _ = self.send.finish();
    }
}

impl Drop for FramedSend {
    /// A stream dropped without [`FramedSend::finish`] is reset, not finished:
    /// a writer that was abandoned part way (aborted, or its task cut off at a
    /// deadline) must not look to the peer like one that ended in order, for
    /// a clean end means "everything I meant to send, including my final
    /// acknowledgement, is there".
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.send.reset(crate::wire::close::ABANDONED);
        }
    }
}
