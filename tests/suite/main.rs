//! quicmesh's integration tests: real `quicmesh` worker processes, real
//! sockets on 127.0.0.1 and real certificates.
//!
//! One test binary with a module per subject, so the crate and its test
//! scaffolding are compiled and linked once, and tests of every subject
//! share the test threads. Run one subject with `cargo test --test suite
//! MODULE::`, e.g. `cargo test --test suite containment::`.

mod common;

mod actors;
mod allocator_death;
mod cli;
mod containment;
mod credentials;
mod delivery;
mod engines_slurm;
mod engines_ssh;
mod faults;
mod flood;
mod hostile;
mod hostile_allocator;
mod hostile_mailbox;
mod launch_secrets;
mod lifecycle;
mod liveness;
mod mesh;
mod observe;
mod scale;
mod wan;
mod worker_settings;
