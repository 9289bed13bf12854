//! The one place where bytes become messages and messages become bytes.
//!
//! A *frame* on a stream is a 4-byte big-endian length followed by that many
//! bytes of body; the body is bincode 2.x (standard configuration, serde).
//! Datagrams carry one body with no length prefix. Swapping the format means
//! changing this file only.
//!
//! [`FrameDecoder`] is sans-IO: it is fed whatever bytes arrived and hands
//! back complete frames. It rejects a length above the limit as soon as the
//! 4-byte prefix is seen, before any memory is set aside for the body, so a
//! peer cannot make us allocate by announcing a huge frame.

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size of the length prefix of a frame.
pub const PREFIX_LEN: usize = 4;

/// Ceiling on what encoding may produce (frames are further limited by `max_frame`).
const ENCODE_LIMIT: usize = 256 * 1024 * 1024;

/// What went wrong turning bytes into a message or back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame's announced or encoded length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced or encoded length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The body does not decode as the expected message.
    #[error("undecodable body: {0}")]
    Decode(String),
    /// The body decoded but left bytes over, so it is not the expected message.
    #[error("body has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message cannot be encoded (a serde error in the value itself).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<ENCODE_LIMIT>()
}

/// Decodes with an allocation limit of `LIMIT` bytes in total.
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<LIMIT>())
        .map_err(|e| CodecError::Decode(e.to_string()))
}

/// Encodes `msg` as a body without a length prefix (used for datagrams).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    // Start with room for a typical small message, sparing the reallocations
    // of growing from empty.
    let mut out = Vec::with_capacity(128);
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a whole body as one `T`; trailing bytes are an error.
///
/// bincode allocates a string or byte vector at its *claimed* length before
/// reading it, so a 12-byte body could claim (and get) hundreds of MiB. The
/// decode is therefore limited to a small multiple of the body's own size
/// (at most 256 KiB for bodies up to 4 KiB, 64x for larger ones up to 1 MiB,
/// 16x beyond): real messages never come near it, since every allocation
/// stands for bytes actually present in the body.
///
/// Errors: [`CodecError::Decode`] when the bytes are not a `T` (or claim
/// more than the limit), [`CodecError::TrailingBytes`] when they hold more than one.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    const KIB: usize = 1024;
    let (msg, used) = match body.len() {
        0..=4096 => decode_limited::<T, { 256 * KIB }>(body)?,
        4097..=65536 => decode_limited::<T, { 4 * KIB * KIB }>(body)?,
        65537..=1048576 => decode_limited::<T, { 64 * KIB * KIB }>(body)?,
        _ => decode_limited::<T, { 256 * KIB * KIB }>(body)?,
    };
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(msg)
}

/// A body of an enum `T` decoded by [`decode_variant`]: the content of the
/// one variant asked for alone, or any other body as a whole `T`, boxed.
#[derive(Debug, PartialEq, Eq)]
pub enum Variant<V, T> {
    /// The body is the variant asked for; this is its content.
    Hot(V),
    /// Any other variant of `T`.
    Other(Box<T>),
}

/// The variant number a body of an enum starts with, and the bytes of the
/// variant's content after it; `None` if the body does not start with one.
///
/// With bincode's standard configuration an enum is its variant's number
/// (a varint) followed by the variant's content, encoded as the content's
/// own type would be.
pub fn variant_index(body: &[u8]) -> Option<(u32, &[u8])> {
    let (index, used): (u32, usize) = decode_limited::<u32, 16>(body).ok()?;
    Some((index, &body[used..]))
}

/// Decodes a body of enum `T` that is usually one variant, number `hot`,
/// whose content is a `V`: that variant is decoded as its content alone,
/// without building a `T` around it (a large enum is copied at every move;
/// its content alone is small). Find `hot` with [`variant_index`] on an
/// encoded sample, not by counting variants by hand.
///
/// The result is what [`decode`] as `T` gives, split by variant (a test
/// compares the two on arbitrary bodies). Errors: as [`decode`].
pub fn decode_variant<V: DeserializeOwned, T: DeserializeOwned>(
    body: &[u8],
    hot: u32,
) -> Result<Variant<V, T>, CodecError> {
    match variant_index(body) {
        Some((index, content)) if index == hot => decode(content).map(Variant::Hot),
        _ => decode(body).map(|t| Variant::Other(Box::new(t))),
    }
}

/// Appends `msg` as one frame (prefix and body) to `out`.
///
/// Errors: [`CodecError::TooLarge`] when the body exceeds `max_frame` (then
/// `out` is left as it was), [`CodecError::Encode`] when serde refuses the value.
pub fn encode_frame<T: Serialize>(
    msg: &T,
    max_frame: u32,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, out, config()) {
        out.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let len = out.len() - start - PREFIX_LEN;
    if len > max_frame as usize {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            len: len as u64,
            max: max_frame,
        });
    }
    out[start..start + PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes `msg` as one frame in a new buffer; errors as [`encode_frame`].
#[cfg(any(test, feature = "testkit"))]
pub fn frame<T: Serialize>(msg: &T, max_frame: u32) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_frame(msg, max_frame, &mut out)?;
    Ok(out)
}

/// Splits a byte stream into frames, without I/O.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: u32,
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder that rejects frames whose body exceeds `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder {
            max_frame,
            buf: BytesMut::new(),
        }
    }

    /// Changes the limit (e.g. once a peer has been admitted).
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// Adds bytes that arrived from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The body length of the next frame once its whole body is buffered.
    ///
    /// `Ok(None)` if more bytes are needed; [`CodecError::TooLarge`] as soon
    /// as the prefix announces a body above the limit.
    fn complete_len(&self) -> Result<Option<usize>, CodecError> {
        let Some(prefix) = self.buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; PREFIX_LEN];
        bytes.copy_from_slice(prefix);
        let len = u32::from_be_bytes(bytes);
        if len > self.max_frame {
            return Err(CodecError::TooLarge {
                len: len.into(),
                max: self.max_frame,
            });
        }
        Ok((self.buf.len() >= PREFIX_LEN + len as usize).then_some(len as usize))
    }

    /// Whether a complete frame (or an oversized prefix) is buffered, so the next read will not wait.
    pub fn has_frame(&self) -> bool {
        !matches!(self.complete_len(), Ok(None))
    }

    /// Decodes the next complete frame in place as a `T`, `None` if more bytes are needed.
    ///
    /// Unlike [`FrameDecoder::next_frame`] nothing is split off the buffer,
    /// so it stays unshared and its memory is reused for the next frames
    /// instead of being reallocated. Errors: as `next_frame`, and
    /// [`CodecError::Decode`] / [`CodecError::TrailingBytes`] as [`decode`].
    pub fn decode_next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        self.decode_body(decode)
    }

    /// Hands the next complete frame's body, in place, to `decode` and
    /// consumes the frame whatever `decode` says; `None` if more bytes are
    /// needed. Errors: those of [`FrameDecoder::next_frame`] and of `decode`.
    fn decode_body<R>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<R, CodecError>,
    ) -> Result<Option<R>, CodecError> {
        let Some(len) = self.complete_len()? else {
            return Ok(None);
        };
        let msg = decode(&self.buf[PREFIX_LEN..PREFIX_LEN + len]);
        self.buf.advance(PREFIX_LEN + len);
        msg.map(Some)
    }

    /// Decodes the next complete frame in place as [`decode_variant`] does,
    /// `None` if more bytes are needed. Errors: as [`FrameDecoder::decode_next`].
    pub fn decode_next_variant<V: DeserializeOwned, T: DeserializeOwned>(
        &mut self,
        hot: u32,
    ) -> Result<Option<Variant<V, T>>, CodecError> {
        self.decode_body(|body| decode_variant(body, hot))
    }

    /// Returns the next complete frame body, `None` if more bytes are needed.
    ///
    /// Errors: [`CodecError::TooLarge`] as soon as a prefix announces a body
    /// above the limit; the stream cannot be resynchronised after that.
    #[cfg(any(test, feature = "testkit"))]
    pub fn next_frame(&mut self) -> Result<Option<bytes::Bytes>, CodecError> {
        let Some(len) = self.complete_len()? else {
            return Ok(None);
        };
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// A `#[serde(with = ...)]` for byte fields of the wire's own messages
/// (an envelope's payload): the same encoding as `serde_bytes`, decoded by
/// copying the bytes out of the body.
///
/// Why not `serde_bytes`: bincode decodes a byte buffer it is asked to own
/// by zeroing a new vector (`calloc`) and reading into it, and glibc's
/// `calloc` skips its per-thread cache, taking the arena lock every time.
/// Borrowing the bytes from the body and copying them is a plain `malloc`
/// and a `memcpy`. Every envelope a worker receives is decoded this way, so
/// the difference is per message. The copy is never larger than the body:
/// it stands for bytes actually present, as the decode limit requires.
pub(crate) mod byte_buf {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Encodes as `serde_bytes` does: a length and the bytes.
    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Decodes what [`serialize`] (or `serde_bytes`) encoded.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats that write bytes as a sequence; the size hint is not
        /// trusted beyond a small start.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        A { x: u32, s: String },
        B(Vec<u8>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct WithSerdeBytes {
        id: u64,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct WithByteBuf {
        id: u64,
        #[serde(with = "super::byte_buf")]
        payload: Vec<u8>,
    }

    proptest! {
        /// `byte_buf` is `serde_bytes` on the wire, both ways, and a cut
        /// body is an error, not a panic or a short payload.
        #[test]
        fn byte_buf_is_serde_bytes_on_the_wire(
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let ours = encode(&WithByteBuf { id, payload: payload.clone() }).unwrap();
            let theirs = encode(&WithSerdeBytes { id, payload: payload.clone() }).unwrap();
            prop_assert_eq!(&ours, &theirs);
            let back: WithByteBuf = decode(&theirs).unwrap();
            prop_assert_eq!(&back.payload, &payload);
            for cut in 0..ours.len() {
                prop_assert!(decode::<WithByteBuf>(&ours[..cut]).is_err());
            }
        }
    }

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let msgs = vec![
            Msg::A {
                x: 7,
                s: "hi".into(),
            },
            Msg::B(vec![1; 1000]),
            Msg::B(vec![]),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode_frame(m, 1 << 20, &mut bytes).unwrap();
        }
        for chunk in [1, 2, 3, 5, 100, 4096] {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                dec.push(piece);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(decode::<Msg>(&f).unwrap());
                }
            }
            assert_eq!(got, msgs);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&(1025u32).to_be_bytes());
        let err = dec.next_frame().unwrap_err();
        assert!(matches!(
            err,
            CodecError::TooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert!(
            dec.buf.capacity() < 1024,
            "must not reserve space for the announced body"
        );
    }

    #[test]
    fn oversized_message_is_refused_and_buffer_untouched() {
        let mut out = vec![9];
        let err = encode_frame(&Msg::B(vec![0; 2000]), 1000, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 1000, .. }));
        assert_eq!(out, vec![9]);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode::<Msg>(&[0xff, 0xff, 0xff]),
            Err(CodecError::Decode(_))
        ));
        let mut body = encode(&Msg::B(vec![1])).unwrap();
        body.push(0);
        assert!(matches!(
            decode::<Msg>(&body),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn small_body_claiming_a_huge_string_hits_the_limit_before_allocating() {
        // Found by fuzzing: a Hello whose host name claims 240 MiB, in 8 bytes.
        let body = [0x00, 0x01, 0x00, 0xfc, 0x00, 0x00, 0x00, 0x0f];
        let err = decode::<crate::wire::WorkerToAllocator>(&body).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("limit"), "{err}");
        let spawn = [0x00, 0x00, 0xfc, 0x02, 0xf9, 0xfc, 0x08];
        let err = decode::<(crate::wire::SystemMsg, crate::id::PortId)>(&spawn).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("limit"), "{err}");
    }

    #[test]
    fn large_legitimate_bodies_still_decode() {
        // A varint-packed Vec<u64> claims 8 bytes per 1-byte element: 8x its size.
        let many: Vec<u64> = vec![1; 200_000];
        assert_eq!(decode::<Vec<u64>>(&encode(&many).unwrap()).unwrap(), many);
        let strings: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        assert_eq!(
            decode::<Vec<String>>(&encode(&strings).unwrap()).unwrap(),
            strings
        );
    }

    #[test]
    fn huge_claimed_vec_length_does_not_allocate_or_panic() {
        // Variant B, then a varint length of u64::MAX, then nothing.
        let body = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Msg>(&body).is_err());
    }

    /// The hot variant of [`Msg`] and its content.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct MsgA {
        x: u32,
        s: String,
    }

    /// What `decode_variant` must agree with: `decode` as a whole `Msg`.
    fn split(msg: Result<Msg, CodecError>) -> Result<Variant<MsgA, Msg>, CodecError> {
        msg.map(|m| match m {
            Msg::A { x, s } => Variant::Hot(MsgA { x, s }),
            other => Variant::Other(Box::new(other)),
        })
    }

    #[test]
    fn the_hot_variant_index_is_read_from_a_sample() {
        let a = encode(&Msg::A {
            x: 1,
            s: "a".into(),
        })
        .unwrap();
        let b = encode(&Msg::B(vec![2])).unwrap();
        assert_eq!(variant_index(&a).map(|(i, _)| i), Some(0));
        assert_eq!(variant_index(&b).map(|(i, _)| i), Some(1));
        assert_eq!(variant_index(&[]), None);
        assert_eq!(variant_index(&[0xfb]), None, "a varint cut short");
    }

    proptest! {
        #[test]
        fn decoding_a_variant_alone_agrees_with_decoding_the_enum(
            msg in prop_oneof![
                (any::<u32>(), ".{0,40}").prop_map(|(x, s)| Msg::A { x, s }),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(Msg::B),
            ],
            cut in 0usize..80,
            junk in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let body = encode(&msg).unwrap();
            // The whole body, a body cut short, and one with bytes after it.
            let mut longer = body.clone();
            longer.extend_from_slice(&junk);
            for bytes in [&body[..], &body[..cut.min(body.len())], &longer[..]] {
                let whole = split(decode::<Msg>(bytes));
                let alone = decode_variant::<MsgA, Msg>(bytes, 0);
                match (&whole, &alone) {
                    (Ok(w), Ok(a)) => prop_assert_eq!(w, a),
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "{:?} against {:?} for {:?}", whole, alone, bytes),
                }
            }
        }

        #[test]
        fn decoding_a_variant_of_arbitrary_bytes_agrees_with_the_enum(
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let whole = split(decode::<Msg>(&data));
            let alone = decode_variant::<MsgA, Msg>(&data, 0);
            prop_assert_eq!(whole.is_ok(), alone.is_ok(), "{:?} against {:?}", whole, alone);
            if let (Ok(w), Ok(a)) = (whole, alone) {
                prop_assert_eq!(w, a);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&data);
            let mut dec = FrameDecoder::new(64);
            dec.push(&data);
            while let Ok(Some(f)) = dec.next_frame() {
                let _ = decode::<Msg>(&f);
            }
        }
    }
}
