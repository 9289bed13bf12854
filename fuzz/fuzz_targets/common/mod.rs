//! Helpers shared by the fuzz targets (not a target itself).

#![allow(dead_code)]

use quicmesh::testkit::wire::codec::{self, FrameDecoder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Splits a fuzz input into chunk sizes and the stream bytes.
///
/// The first byte, modulo 8, says how many of the following bytes are chunk
/// sizes (each byte `b` is a chunk of `b + 1` bytes, cycled); with none, the
/// whole stream is pushed at once. The rest of the input is the stream.
pub fn split_plan(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    (sizes.iter().map(|&b| usize::from(b) + 1).collect(), stream)
}

/// What a [`FrameDecoder`] made of a stream: the complete frames in order,
/// and whether it stopped on an error (an oversized prefix).
#[derive(Debug, PartialEq, Eq)]
pub struct Framed {
    pub frames: Vec<Vec<u8>>,
    pub failed: bool,
}

/// Feeds `stream` to a `FrameDecoder::new(max_frame)` in chunks of the given
/// sizes (all at once when `sizes` is empty), draining every complete frame
/// after each push and stopping at the first decoder error, as
/// `FramedRecv` does.
pub fn run_decoder(stream: &[u8], sizes: &[usize], max_frame: u32) -> Framed {
    let mut dec = FrameDecoder::new(max_frame);
    let mut out = Framed {
        frames: Vec::new(),
        failed: false,
    };
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if sizes.is_empty() {
            rest.len()
        } else {
            sizes[i % sizes.len()].min(rest.len())
        };
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= max_frame as usize,
                        "frame of {} bytes passed a limit of {max_frame}",
                        frame.len()
                    );
                    out.frames.push(frame.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    out.failed = true;
                    return out;
                }
            }
        }
    }
    out
}

/// Splits the input as [`split_plan`] says, runs the decoder over it in those
/// chunks, and checks that the result does not depend on the split (same
/// frames as pushing the whole stream at once).
pub fn frames_of(data: &[u8], max_frame: u32) -> Framed {
    let (sizes, stream) = split_plan(data);
    let chunked = run_decoder(stream, &sizes, max_frame);
    if !sizes.is_empty() {
        let whole = run_decoder(stream, &[], max_frame);
        assert_eq!(chunked, whole, "framing depends on how the bytes arrive");
    }
    chunked
}

/// Decodes `body` as a `T`; on success checks that the message re-encodes
/// without error and that the re-encoding decodes to the same value.
pub fn decode_checked<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let msg = codec::decode::<T>(body).ok()?;
    let bytes = match codec::encode(&msg) {
        Ok(b) => b,
        Err(e) => panic!("decoded {msg:?} but cannot re-encode it: {e}"),
    };
    match codec::decode::<T>(&bytes) {
        Ok(again) => assert_eq!(again, msg, "re-encoded message decodes differently"),
        Err(e) => panic!("re-encoding of {msg:?} does not decode: {e}"),
    }
    Some(msg)
}
