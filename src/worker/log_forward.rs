//! Forwarding a worker's log lines to its allocator (docs/design.md §2.12).
//!
//! After the Welcome a worker that owns its process (`run_and_exit`,
//! `bootstrap_or_die`) opens one more stream, names it `StreamOpen::Logs`,
//! and from then on its `tracing` events (through the tap of
//! [`crate::logging`]) and every line written to its stdout and stderr go
//! there instead of to the local terminal. The stream has the lowest send priority of the connection.
//! Lines wait in a bounded queue; when the allocator reads slower than the
//! worker logs, new lines are dropped and counted, and the count follows as
//! a `LogFrame::Dropped`. Nothing that logs ever waits for the stream.
//!
//! When the forwarder is dropped (the session is over) the tap is switched
//! off and stdout and stderr are given back, so the worker's last line (its
//! exit) reaches the local stderr, and whoever launched it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use quinn::Connection;
use tokio_util::task::AbortOnDropHandle;

use crate::line_cut::{cut_bytes, MAX_LINE};
use crate::logging::tap;
use crate::transport::FramedSend;
use crate::wire::{LogFrame, LogLevel, LogSource, StreamOpen};

/// Largest frame on the log stream: one cut line and its target, with room.
pub(crate) const MAX_LOG_FRAME: u32 = 16 * 1024;

/// Lines taken from the queue per write.
const BATCH: usize = 64;

/// Most lines sent per second: what the allocator accepts from one worker
/// (`allocator/logs.rs: LOG_LINES_PER_SECOND`). Sending more would only
/// cost this worker's transport thread time for lines the allocator drops;
/// past it lines wait, and the queue drops (and counts) what does not fit.
const LINES_PER_SECOND: usize = 2000;

/// Set when this process is a worker and nothing else (so its stdout and
/// stderr are its own to capture).
static OWNS_PROCESS: AtomicBool = AtomicBool::new(false);

/// A copy of the process's own stderr, taken when fd 2 is first captured
/// and never closed (so a late writer never hits a closed or reused fd).
static LOCAL_STDERR: OnceLock<OwnedFd> = OnceLock::new();

/// Writes `line` (and a newline) to the process's own stderr, even while
/// stderr is captured for the allocator: for a last word that the
/// forwarder cannot deliver (the watchdog's, when the runtime that would
/// send it is blocked). Errors of the write are ignored: there is nowhere
/// left to report them.
pub(super) fn write_local_stderr(line: &str) {
    use std::io::Write as _;
    let fd = LOCAL_STDERR
        .get()
        .map_or(libc::STDERR_FILENO, |fd| fd.as_raw_fd());
    // SAFETY: `fd` is open for the life of the process (the copy in
    // LOCAL_STDERR is never closed), and ManuallyDrop keeps the File from
    // closing it.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let _ = out.write_all(format!("{line}\n").as_bytes());
}

/// Lets the forwarder capture stdout and stderr: only for a process that is
/// a worker and nothing else (`run_and_exit`, `bootstrap_or_die`).
pub(super) fn own_process() {
    OWNS_PROCESS.store(true, Ordering::Release);
}

/// The running forwarder; stops forwarding when dropped.
pub(super) struct LogForwarder {
    _task: AbortOnDropHandle<()>,
}

impl LogForwarder {
    /// Opens the log stream on `conn` and forwards lines until dropped;
    /// `None` when the worker shares its process with other code (the
    /// process's log events are not all the worker's then, and its stdout
    /// and stderr are not the worker's to take).
    pub(super) fn start(conn: Connection, index: u32) -> Option<LogForwarder> {
        if !OWNS_PROCESS.load(Ordering::Acquire) {
            return None;
        }
        let task = tokio::spawn(async move {
            let mut send = match open(&conn).await {
                Ok(send) => send,
                Err(e) => {
                    tracing::warn!("worker {index}: no log stream ({e}); logging locally");
                    return;
                }
            };
            let _tapped = Tapped::start();
            // Ends when the stream fails (the connection is going); the
            // tap is switched off when `_tapped` drops.
            let mut window = (tokio::time::Instant::now(), 0usize);
            loop {
                if window.1 >= LINES_PER_SECOND {
                    tokio::time::sleep_until(window.0 + std::time::Duration::from_secs(1)).await;
                }
                if window.0.elapsed() >= std::time::Duration::from_secs(1) {
                    window = (tokio::time::Instant::now(), 0);
                }
                let (lines, dropped) = tap().take(BATCH).await;
                window.1 += lines.len();
                if dropped > 0
                    && send
                        .send(&LogFrame::Dropped { count: dropped })
                        .await
                        .is_err()
                {
                    return;
                }
                for line in lines {
                    if send.send(&LogFrame::Line(line)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Some(LogForwarder {
            _task: AbortOnDropHandle::new(task),
        })
    }
}

/// Opens and names the log stream.
async fn open(conn: &Connection) -> Result<FramedSend, String> {
    let (send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut send = FramedSend::new(send, MAX_LOG_FRAME);
    send.set_priority(crate::transport::priority::LOGS);
    send.send(&StreamOpen::Logs)
        .await
        .map_err(|e| e.to_string())?;
    Ok(send)
}

/// The tap switched on, and stdout and stderr captured; all undone when dropped.
struct Tapped {
    captured: Vec<Captured>,
}

impl Tapped {
    fn start() -> Tapped {
        tap().set_active(true);
        let mut captured = Vec::new();
        for (fd, source) in [(1, LogSource::Stdout), (2, LogSource::Stderr)] {
            match Captured::start(fd, source) {
                Ok(c) => captured.push(c),
                Err(e) => tracing::warn!("cannot capture fd {fd}: {e}"),
            }
        }
        Tapped { captured }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        self.captured.clear();
        tap().set_active(false);
    }
}

/// One of the process's standard streams, redirected into a pipe read by a
/// thread that feeds the tap. Dropping it puts the original back; the
/// thread then reads the end of the pipe and ends.
struct Captured {
    fd: RawFd,
    saved: OwnedFd,
}

impl Captured {
    fn start(fd: RawFd, source: LogSource) -> std::io::Result<Captured> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl duplicates a descriptor of this process.
        let saved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `saved` is a fresh descriptor owned from here on.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        // SAFETY: dup2 replaces `fd` with the pipe's write end.
        if unsafe { libc::dup2(write.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(write);
        if fd == libc::STDERR_FILENO && LOCAL_STDERR.get().is_none() {
            // SAFETY: fcntl duplicates a descriptor of this process.
            let copy = unsafe { libc::fcntl(saved.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if copy >= 0 {
                // SAFETY: `copy` is a fresh descriptor, owned from here on.
                let _ = LOCAL_STDERR.set(unsafe { OwnedFd::from_raw_fd(copy) });
            }
        }
        std::thread::Builder::new()
            .name(format!("quicmesh-capture-{fd}"))
            .spawn(move || read_lines(std::fs::File::from(read), source))?;
        Ok(Captured { fd, saved })
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        // SAFETY: dup2 puts the saved descriptor back in place.
        unsafe { libc::dup2(self.saved.as_raw_fd(), self.fd) };
    }
}

/// Reads lines from a captured stream into the tap, each bounded to
/// [`MAX_LINE`] bytes (the rest of a longer line is skipped).
fn read_lines(pipe: std::fs::File, source: LogSource) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let complete = line.ends_with(b"\n");
        if !complete && line.len() > MAX_LINE {
            // Skip the rest of an overlong line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut reader).take(64 * 1024).read_until(b'\n', &mut rest) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if rest.ends_with(b"\n") => break,
                    Ok(_) => {}
                }
            }
        }
        tap().push(LogLevel::Info, source, "", &cut_bytes(&line, MAX_LINE));
    }
}
