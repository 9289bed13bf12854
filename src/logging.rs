//! Log output: one line per event on stderr, filtered by `RUST_LOG` (default `info`).
//!
//! In a worker the same subscriber also feeds the [`LogTap`]: once the
//! worker's log stream to its allocator is up (`worker/log_forward.rs`),
//! every event goes into the tap's bounded queue instead of stderr, so the
//! controller sees it exactly once, wherever the worker runs. Until then,
//! and after the stream is gone, events go to stderr as in any program.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::line_cut::{cut_line, MAX_LINE};
use crate::log_queue::{LogQueue, LOG_QUEUE_LINES};
use crate::sync::lock;
use crate::wire::{LogLevel, LogLine, LogSource};

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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(StderrUnlessTapped)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(TapLayer)
        .try_init();
}

/// The process's log tap: where log lines wait for the log stream.
pub(crate) struct LogTap {
    queue: Mutex<LogQueue>,
    ready: tokio::sync::Notify,
    active: AtomicBool,
}

/// The process's tap (one per process: a worker has one allocator).
pub(crate) fn tap() -> &'static LogTap {
    static TAP: OnceLock<LogTap> = OnceLock::new();
    TAP.get_or_init(|| LogTap {
        queue: Mutex::new(LogQueue::new(LOG_QUEUE_LINES)),
        ready: tokio::sync::Notify::new(),
        active: AtomicBool::new(false),
    })
}

impl LogTap {
    /// Whether lines go to the tap (the log stream is up).
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Starts or stops taking lines; stopping forgets what waits.
    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
        if !active {
            lock(&self.queue).clear();
        }
    }

    /// Queues a line without ever blocking on the stream (a full queue drops it).
    pub(crate) fn push(&self, level: LogLevel, source: LogSource, target: &str, text: &str) {
        let line = LogLine {
            level,
            source,
            target: cut_line(target, 128),
            text: cut_line(text, MAX_LINE),
        };
        if lock(&self.queue).push(line) {
            self.ready.notify_one();
        }
    }

    /// Up to `max` lines and the count dropped since the last take; waits
    /// until there is something.
    pub(crate) async fn take(&self, max: usize) -> (Vec<LogLine>, u64) {
        loop {
            let ready = self.ready.notified();
            {
                let mut queue = lock(&self.queue);
                if !queue.is_empty() {
                    return queue.take(max);
                }
            }
            ready.await;
        }
    }
}

/// Sends events to the tap while it is active.
struct TapLayer;

impl<S: tracing::Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let tap = tap();
        if !tap.is_active() {
            return;
        }
        let mut text = Message(String::new());
        event.record(&mut text);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        };
        tap.push(level, LogSource::Tracing, meta.target(), &text.0);
    }
}

/// An event's message, then its other fields as `name=value`.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// Stderr while the tap is inactive; nowhere while it is active (the tap has the event).
struct StderrUnlessTapped;

/// The writer [`StderrUnlessTapped`] makes for one event.
enum EventWriter {
    Stderr(Vec<u8>),
    Tapped,
}

impl<'a> MakeWriter<'a> for StderrUnlessTapped {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        if tap().is_active() {
            EventWriter::Tapped
        } else {
            EventWriter::Stderr(Vec::new())
        }
    }
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let EventWriter::Stderr(line) = self {
            line.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    /// The event's whole line leaves in one write, so lines written by other
    /// threads (or passed through from workers) cannot cut into it.
    fn drop(&mut self) {
        if let EventWriter::Stderr(line) = self {
            if !line.is_empty() {
                let _ = std::io::stderr().lock().write_all(line);
            }
        }
    }
}
