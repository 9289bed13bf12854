//! A mailbox stream: length-prefixed frames (limit 16 MiB), the first decoded
//! as `StreamOpen` (a mailbox stream names its proc), every later one as
//! `MailboxFrame` and applied to a route table as the readers do.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::wire::routes::RouteTable;
use quicmesh::testkit::wire::{MailboxFrame, StreamOpen};

fuzz_target!(|data: &[u8]| {
    let framed = common::frames_of(data, 16 * 1024 * 1024);
    let mut frames = framed.frames.iter();
    let Some(first) = frames.next() else {
        return;
    };
    if !matches!(
        common::decode_checked::<StreamOpen>(first),
        Some(StreamOpen::Mailbox(_))
    ) {
        return;
    }
    let mut routes = RouteTable::default();
    for frame in frames {
        let Some(frame) = common::decode_checked::<MailboxFrame>(frame) else {
            break;
        };
        if routes.resolve(frame).is_err() {
            break;
        }
    }
});
