//! A worker's log stream as the allocator reads it: length-prefixed frames
//! (limit 16 KiB), the first decoded as `StreamOpen` (it must say `Logs`),
//! every later one as `LogFrame`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::wire::{LogFrame, StreamOpen};

fuzz_target!(|data: &[u8]| {
    let framed = common::frames_of(data, 16 * 1024);
    let mut frames = framed.frames.iter();
    let Some(first) = frames.next() else {
        return;
    };
    if !matches!(
        common::decode_checked::<StreamOpen>(first),
        Some(StreamOpen::Logs)
    ) {
        return;
    }
    for frame in frames {
        if common::decode_checked::<LogFrame>(frame).is_none() {
            break;
        }
    }
});
