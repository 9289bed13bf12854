//! The control stream: length-prefixed frames (pre-admission limit of 64 KiB)
//! decoded as `WorkerToAllocator` (allocator side) and `AllocatorToWorker`
//! (worker side).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use quicmesh::testkit::wire::{AllocatorToWorker, WorkerToAllocator};

fuzz_target!(|data: &[u8]| {
    let framed = common::frames_of(data, 65536);
    // Each side reads the stream until the first frame it cannot decode.
    let mut allocator_reads = true;
    let mut worker_reads = true;
    for frame in &framed.frames {
        if allocator_reads {
            allocator_reads = common::decode_checked::<WorkerToAllocator>(frame).is_some();
        }
        if worker_reads {
            worker_reads = common::decode_checked::<AllocatorToWorker>(frame).is_some();
        }
        if !allocator_reads && !worker_reads {
            break;
        }
    }
});
