//! A mailbox stream: length-prefixed frames (limit 16 MiB), the first decoded
//! as `StreamOpen` (a mailbox stream names its proc), every later one as
//! `MailboxFrame`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::wire::{MailboxFrame, StreamOpen};

fuzz_target!(|data: &[u8]| {
    let framed = common::frames_of(data, 16 * 1024 * 1024);
    let mut frames = framed.frames.iter();
    let Some(first) = frames.next() else {
        return;
    };
    if !matches!(common::decode_checked::<StreamOpen>(first), Some(StreamOpen::Mailbox(_))) {
        return;
    }
    for frame in frames {
        if common::decode_checked::<MailboxFrame>(frame).is_none() {
            break;
        }
    }
});
