//! A heartbeat datagram: one body, no length prefix.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::wire::Heartbeat;

fuzz_target!(|data: &[u8]| {
    let _ = common::decode_checked::<Heartbeat>(data);
});
