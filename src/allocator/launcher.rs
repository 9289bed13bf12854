//! Starting worker processes: local children or any command template.
//!
//! A [`Launcher`] is a program and its arguments. Arguments may contain
//! placeholders that are filled in per worker: `{index}`, `{addr}`,
//! `{server_name}`, `{token}`, `{ca}`, `{cert}`, `{key}`, and `{env}`, which
//! expands to one `NAME=value` argument per variable of docs/design.md §6.1 (handy
//! after `ssh host env`). The child always gets the same variables in its
//! environment, so a local child needs no placeholders at all.
//!
//! Children are tied to the allocator: they are killed when the allocator
//! is dropped, and on Linux they get a parent-death signal so that even a
//! SIGKILLed allocator leaves no orphan. Every line a child prints on stdout
//! or stderr until its log stream is up is passed through, prefixed with
//! `[worker N]`, each line whole in one write. Each child has a
//! supervisor task ([`supervise`]) that reaps it, kills it when its worker
//! is lost and does not exit by itself, and reports how it ended.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::AllocEvent;
use super::session::WorkerCommand;
use super::shared::{ChildSlot, Shared};
use crate::reason::ExitReport;
use crate::sync::lock;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::line_cut::{cut_bytes, MAX_LINE};

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Launcher {
    /// Re-runs the current executable as worker (its `main` must call
    /// [`crate::bootstrap_or_die`] first).
    ///
    /// Errors: the current executable cannot be determined.
    pub fn current_exe() -> std::io::Result<Launcher> {
        Ok(Launcher::program(std::env::current_exe()?))
    }

    /// Runs `program` as worker, with no arguments so far.
    pub fn program(program: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Adds an argument (placeholders allowed).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments (placeholders allowed).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an extra environment variable for every worker.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// The argument list for one worker, placeholders filled from `vars`.
    pub(crate) fn expand_args(&self, index: u32, vars: &[(&'static str, String)]) -> Vec<String> {
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for arg in &self.args {
            if arg == "{env}" {
                out.extend(vars.iter().map(|(n, v)| format!("{n}={v}")));
                continue;
            }
            let expanded = arg
                .replace("{index}", &index.to_string())
                .replace("{addr}", &get(crate::config::ENV_ALLOCATOR_ADDR))
                .replace("{server_name}", &get(crate::config::ENV_SERVER_NAME))
                .replace("{token}", &get(crate::config::ENV_TOKEN))
                .replace("{ca}", &get(crate::config::ENV_CA))
                .replace("{cert}", &get(crate::config::ENV_CERT))
                .replace("{key}", &get(crate::config::ENV_KEY));
            out.push(expanded);
        }
        out
    }

    /// Starts one worker with the given variables (docs/design.md §6.1).
    pub(crate) fn spawn(
        &self,
        index: u32,
        vars: &[(&'static str, String)],
    ) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(self.expand_args(index, vars))
            .envs(
                vars.iter()
                    .map(|(n, v)| (OsString::from(n), OsString::from(v))),
            )
            .envs(self.envs.iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn()?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pass_through(out, index, false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pass_through(err, index, true));
        }
        Ok(child)
    }
}

/// Takes charge of launched worker `index`: records its pid, SIGKILLs it
/// when asked (after the grace period the request carries, so a worker that
/// is merely cut off can still exit with its own code), reaps it, fails its
/// procs at once (its connection is dead too) and reports how it ended.
pub(crate) fn supervise(
    shared: Arc<Shared>,
    index: u32,
    mut child: tokio::process::Child,
) -> JoinHandle<()> {
    let (kill, mut kill_requests) = mpsc::unbounded_channel::<Duration>();
    lock(&shared.children).insert(
        index,
        ChildSlot {
            pid: child.id(),
            kill,
        },
    );
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            Some(grace) = kill_requests.recv() => tokio::select! {
                status = child.wait() => status,
                _ = tokio::time::sleep(grace) => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            },
        };
        if let Some(slot) = lock(&shared.children).get_mut(&index) {
            slot.pid = None;
        }
        let status = ExitReport::from(status);
        // Its connection is dead too: fail its procs now rather than after
        // the heartbeat timeout.
        shared.command(index, WorkerCommand::ProcessExited(status));
        shared.emit(AllocEvent::WorkerExited { index, status });
    })
}

/// Asks Linux to SIGKILL the child when the thread that spawned it dies.
///
/// Also exits at once if the parent died before the signal was armed. The
/// death signal fires when the spawning *thread* exits: spawn from a
/// long-lived runtime thread (any tokio worker or the main thread), not from
/// a short-lived blocking-pool thread.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(crate::exit_code::CONNECTION_LOST);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut tokio::process::Command) {}

/// Copies a child's output line by line, prefixed with its worker index.
///
/// Each line leaves whole, prefix and line end included, in one write on
/// the locked handle, so lines of several children and of the controller
/// never interleave. A line longer than [`MAX_LINE`] is cut with a marker
/// and the rest of it skipped: nothing is buffered without bound. Once the
/// child's log stream is up its output goes there instead (see
/// `worker/log_forward.rs`), so this only carries what it prints before
/// (and after) that, and no line arrives twice.
async fn pass_through(stream: impl AsyncRead + Unpin, index: u32, is_stderr: bool) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") && line.len() > MAX_LINE && !skip_rest_of_line(&mut reader).await
        {
            // The stream ended inside the skipped part: print what was kept.
            write_line(index, is_stderr, &line);
            return;
        }
        write_line(index, is_stderr, &line);
    }
}

/// Reads and forgets up to the end of the current line; false at the end of the stream.
async fn skip_rest_of_line(reader: &mut (impl AsyncBufReadExt + Unpin)) -> bool {
    let mut rest = Vec::new();
    loop {
        rest.clear();
        match reader.take(64 * 1024).read_until(b'\n', &mut rest).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if rest.ends_with(b"\n") => return true,
            Ok(_) => {}
        }
    }
}

/// Writes `[worker N] text` and its newline in one write.
fn write_line(index: u32, is_stderr: bool, raw: &[u8]) {
    let line = format!("[worker {index}] {}\n", cut_bytes(raw, MAX_LINE));
    let _ = if is_stderr {
        std::io::stderr().lock().write_all(line.as_bytes())
    } else {
        std::io::stdout().lock().write_all(line.as_bytes())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_per_worker() {
        let l = Launcher::program("ssh").args([
            "node{index}",
            "env",
            "{env}",
            "quicmesh",
            "worker",
            "--token={token}",
        ]);
        let vars = vec![
            (crate::config::ENV_ALLOCATOR_ADDR, "10.0.0.1:9".to_string()),
            (crate::config::ENV_TOKEN, "abc".to_string()),
        ];
        assert_eq!(
            l.expand_args(4, &vars),
            vec![
                "node4",
                "env",
                "QUICMESH_ALLOCATOR_ADDR=10.0.0.1:9",
                "QUICMESH_TOKEN=abc",
                "quicmesh",
                "worker",
                "--token=abc"
            ]
        );
    }
}
