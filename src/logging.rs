//! Log output: one line per event on stderr, filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// Installs the default subscriber unless the program already installed one.
pub fn init() {
    init_with_default("info");
}

/// [`init`] with `default` as the filter when `RUST_LOG` is not set: for a
/// program that is quieter by default, such as `quicmesh demo` with many
/// workers.
pub fn init_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
