//! Micro-benchmarks of the wire codec: one mailbox envelope frame, encoded and decoded.
//!
//! ```sh
//! cargo bench --bench codec              # criterion's full measurement
//! cargo bench --bench codec -- --quick   # criterion's quick mode
//! ```

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quicmesh::testkit::wire::codec::{self, FrameDecoder};
use quicmesh::testkit::wire::{Dest, Envelope, MailboxFrame};
use quicmesh::ProcId;

const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// An envelope from the controller to an actor on a worker, as a tell sends it.
fn frame(payload: usize) -> MailboxFrame {
    let from = ProcId::new("mesh_ctl", 0).actor("controller", 0);
    let to = ProcId::new("mesh", 3).actor("counter", 1);
    MailboxFrame::Envelope(Envelope {
        id: 123_456,
        from,
        to: Dest::Actor(to),
        return_port: None,
        payload: vec![7; payload],
    })
}

fn codec_benches(c: &mut Criterion) {
    for (label, size) in [("64B", 64usize), ("16KiB", 16 * 1024)] {
        let msg = frame(size);
        let mut bytes = Vec::new();
        codec::encode_frame(&msg, MAX_FRAME, &mut bytes).expect("encode");

        let mut group = c.benchmark_group("envelope");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut buf = Vec::with_capacity(bytes.len());
        group.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| {
                buf.clear();
                codec::encode_frame(black_box(&msg), MAX_FRAME, &mut buf).expect("encode");
                black_box(buf.len())
            })
        });
        let mut decoder = FrameDecoder::new(MAX_FRAME);
        group.bench_function(BenchmarkId::new("decode", label), |b| {
            b.iter(|| {
                decoder.push(black_box(&bytes));
                let body = decoder.next_frame().expect("frame").expect("whole frame");
                let decoded: MailboxFrame = codec::decode(&body).expect("decode");
                black_box(decoded)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
