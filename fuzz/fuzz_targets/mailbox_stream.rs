//! A mailbox stream: length-prefixed frames (limit 16 MiB), the first decoded
//! as `StreamOpen` (a mailbox stream names its proc), every later one as the
//! readers decode it (a routed envelope alone, any other frame as a whole
//! `MailboxFrame`, see `codec::decode_variant`) and applied to a route table;
//! each is also decoded whole, re-encoded and decoded again.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::mailbox::routed_variant;
use quicmesh::testkit::wire::codec::{self, Variant};
use quicmesh::testkit::wire::routes::RouteTable;
use quicmesh::testkit::wire::{MailboxFrame, RoutedEnvelope, StreamOpen};

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
    for body in frames {
        let _ = common::decode_checked::<MailboxFrame>(body);
        let applied =
            match codec::decode_variant::<RoutedEnvelope, MailboxFrame>(body, routed_variant()) {
                Ok(Variant::Hot(routed)) => routes.envelope(routed).map(|_| ()),
                Ok(Variant::Other(frame)) => routes.resolve(*frame).map(|_| ()),
                Err(_) => break,
            };
        if applied.is_err() {
            break;
        }
    }
});
