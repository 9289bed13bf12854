//! The payload of an envelope addressed to a proc (`Dest::Proc`): a system
//! request and the port its reply goes to.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::PortId;
use quicmesh::testkit::wire::SystemMsg;

fuzz_target!(|data: &[u8]| {
    let _ = common::decode_checked::<(SystemMsg, PortId)>(data);
});
